"""adapterkit adapters -> AdapterHub (``adapters``) folders: the bottleneck family, LoRA, IA3,
prefix and prompt tuning, their heads, and fusions with the adapters they fuse.

The folders are what AdapterHub's ``save_adapter`` / ``save_adapter_fusion`` write with
``use_safetensors=True`` (adapterkit writes no pickle), so load them with
``model.load_adapter(path, use_safetensors=True)`` (a fusion: each adapter's folder, then
``load_adapter_fusion(path/fusion, use_safetensors=True)``). Configs hold AdapterHub's fields with
the values that give adapterkit's computation (``adapterhub.py`` has the correspondence); keys are
the flex-head model's (``bert.encoder.layer.0.output.adapters.<name>.adapter_down.0.weight``). A
fusion is written as ``<directory>/fusion/`` plus ``<directory>/<adapter>/`` per fused adapter.

What AdapterHub cannot represent is refused with the reason: trained layer norms beside a
bottleneck (Houlsby's ``train_layer_norms``), cross-attention adapters, output projections (``o``)
as LoRA targets, input scaling IA3 (the paper's and peft's ``l_ff``), several ranks in one LoRA,
unions, deep prompts, prompts before the embedding layer, prefixes that shift positions, fusions
with other temperatures or penalties, heads AdapterHub has no form of, decoder models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..atomic import atomic_directory
from .adapterhub import ACTIVATIONS
from .layout import Converted, Member, ModelLayout, NotConvertible, SiteRef, prefix_values, split_members

VERSION = "adapters.1.3.0"
_ACTIVATION_NAMES = {ours: peer for peer, ours in ACTIVATIONS.items() if peer != "silu"} | {"silu": "swish"}
_LORA_ROLES = {"q": "q", "k": "k", "v": "v"}
_BLOCKS = {"ffn_in": "intermediate_lora", "ffn_out": "output_lora"}
FUSION_FOLDER = "fusion"


def write_adapterhub(directory: Path, adapter: Converted, members: list[Converted], layout: ModelLayout) -> Path:
    """Write ``adapter`` (and, for a fusion, the adapters it fuses) as AdapterHub folders in
    ``directory``, atomically.

    Raises:
        NotConvertible: what AdapterHub cannot represent, with why.
    """
    if layout.decoder:
        raise NotConvertible(f"adapter {adapter.name!r}: adapterkit exports AdapterHub adapters for encoder models only")
    folders = {FUSION_FOLDER: _fusion(adapter, members, layout)} if adapter.config["method"] == "fusion" else {}
    for one in members if folders else [adapter]:
        folders[one.name] = _adapter(one, layout)
    with atomic_directory(directory) as tmp:
        for name, files in folders.items():
            target = tmp / name if adapter.config["method"] == "fusion" else tmp
            target.mkdir(exist_ok=True)
            for filename, content in files.items():
                if filename.endswith(".safetensors"):
                    save_file({k: t.contiguous() for k, t in content.items()}, str(target / filename))
                else:
                    (target / filename).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    return directory


def _meta(layout: ModelLayout, name: str, config: dict[str, Any]) -> dict[str, Any]:
    family = (layout.config.get("architectures") or ["BertModel"])[0].removesuffix("Model")
    return {"config": config, "hidden_size": layout.hidden_size, "model_class": f"{family}AdapterModel",
            "model_name": layout.config.get("_name_or_path") or None, "model_type": layout.model_type, "name": name, "version": VERSION}


def _path(layout: ModelLayout, ref: SiteRef) -> str:
    return layout.task_path(layout.name_of(ref), wrapped=True)


def _adapter(adapter: Converted, layout: ModelLayout) -> dict[str, Any]:
    """The files of one adapter's folder: config and tensors (and its head's)."""
    where = f"adapter {adapter.name!r}"
    members = split_members(adapter.config, adapter.tensors)
    if len(members) != 1:
        raise NotConvertible(f"{where}: a union of {[m.config['method'] for m in members]} has no AdapterHub form adapterkit writes")
    member, name = members[0], adapter.name
    method = member.config["method"]
    if "sublayers" in member.config and "parallel" in member.config:
        config, tensors = _bottleneck(member, name, layout, where)
    elif method == "lora":
        config, tensors = _lora(member, name, layout, where)
    elif method == "ia3":
        config, tensors = _ia3(member, name, layout, where)
    elif method == "prefix":
        config, tensors = _prefix(member, name, layout, where)
    elif method == "prompt":
        config, tensors = _prompt(member, name, layout, where)
    else:
        raise NotConvertible(f"{where}: AdapterHub has no equivalent of {method!r}; adapterkit exports the bottleneck family, "
                             "lora, ia3, prefix, prompt and fusion adapters to AdapterHub")
    files: dict[str, Any] = {"adapter_config.json": _meta(layout, name, config), "adapter.safetensors": tensors}
    files.update(_head(adapter, name, layout, prompt=method == "prompt", where=where))
    return files


def _layers(member: Member, layout: ModelLayout) -> list[int]:
    layers = member.config.get("layers")
    return list(range(layout.num_layers)) if layers is None else list(layers)


def _leave_out(member: Member, layout: ModelLayout) -> list[int]:
    return sorted(set(range(layout.num_layers)) - set(_layers(member, layout)))


def _bottleneck(member: Member, name: str, layout: ModelLayout, where: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    config = member.config
    if config.get("train_layer_norms"):
        raise NotConvertible(f"{where}: it trains the sublayers' layer norms (train_layer_norms); AdapterHub's bottleneck adapters leave them frozen")
    if set(config["sublayers"]) - {"attn", "ffn"}:
        raise NotConvertible(f"{where}: cross-attention adapters are not exported to AdapterHub")
    tensors: dict[str, torch.Tensor] = {}
    size = None
    for layer in _layers(member, layout):
        for position in config["sublayers"]:
            path = f"{_path(layout, SiteRef('sublayer', layer, position))}.adapters.{name}"
            ours = f"layers.{layer}.{position}"
            size = member.tensors[f"{ours}.down.weight"].shape[0]
            for peer, key in (("adapter_down.0", "down"), ("adapter_up", "up")):
                tensors[f"{path}.{peer}.weight"] = member.tensors[f"{ours}.{key}.weight"]
                tensors[f"{path}.{peer}.bias"] = member.tensors[f"{ours}.{key}.bias"]
            if config.get("scaling") == "learned":
                tensors[f"{path}.scaling"] = member.tensors[f"{ours}.scaling"].reshape(1)
    factor = layout.hidden_size / size
    if int(layout.hidden_size // factor) != size:
        raise NotConvertible(f"{where}: AdapterHub sizes bottlenecks as hidden // reduction_factor, which cannot give {size}")
    scaling = config.get("scaling", 1.0)
    peer = {
        "mh_adapter": "attn" in config["sublayers"], "output_adapter": "ffn" in config["sublayers"], "reduction_factor": factor,
        "non_linearity": _ACTIVATION_NAMES[config.get("non_linearity", "relu")], "original_ln_before": bool(config.get("original_ln_before")),
        "original_ln_after": True, "residual_before_ln": True, "adapter_residual_before_ln": False, "ln_before": False, "ln_after": False,
        "is_parallel": bool(config.get("parallel")), "scaling": scaling if isinstance(scaling, str) else float(scaling),
        "use_gating": False, "leave_out": _leave_out(member, layout), "dropout": 0.0, "phm_layer": False, "cross_adapter": False,
        "inv_adapter": None, "init_weights": "mam_adapter" if config.get("parallel") else "bert", "stochastic_depth": 0.0,
    }
    return peer, tensors


def _projections(member: Member, layout: ModelLayout, roles, where: str) -> dict[str, str]:
    """adapterkit key prefix -> AdapterHub module path, for every projection of ``roles``."""
    bad = [r for r in roles if r not in _LORA_ROLES and r not in _BLOCKS]
    if bad:
        raise NotConvertible(f"{where}: AdapterHub's LoRA and IA3 reach q, k, v, ffn_in and ffn_out, not {bad}")
    found = {}
    for layer in _layers(member, layout):
        for role in roles:
            for position in layout.positions.get((layer, role), ()):
                found[f"layers.{layer}.{position}"] = _path(layout, SiteRef("linear", layer, position, role))
    return found


def _lora_flags(roles, layout: ModelLayout, member: Member) -> dict[str, Any]:
    attn = [r for r in roles if r in _LORA_ROLES]
    return {"selfattn_lora": bool(attn), "attn_matrices": attn, "leave_out": _leave_out(member, layout),
            **{flag: role in roles for role, flag in _BLOCKS.items()}, "use_gating": False, "use_dora": False,
            "vera_b": None, "vera_d": None, "dtype": None}


def _lora(member: Member, name: str, layout: ModelLayout, where: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    config = member.config
    if config.get("use_dora"):
        raise NotConvertible(f"{where}: DoRA is exported to peft, not AdapterHub (whose DoRA adapterkit does not reproduce)")
    r = config["r"]
    scaling = config["alpha"] / (r ** 0.5 if config.get("use_rslora") else r)
    tensors = {}
    for ours, path in _projections(member, layout, config["targets"], where).items():
        tensors[f"{path}.loras.{name}.lora_A"] = member.tensors[f"{ours}.lora_A"]
        tensors[f"{path}.loras.{name}.lora_B"] = member.tensors[f"{ours}.lora_B"]
    peer = {"architecture": "lora", "r": r, "alpha": scaling * r, "dropout": config.get("dropout", 0.0), "composition_mode": "add",
            "init_weights": "lora", **_lora_flags(config["targets"], layout, member)}
    return peer, tensors


def _ia3(member: Member, name: str, layout: ModelLayout, where: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    config = member.config
    if config.get("input_targets"):
        raise NotConvertible(
            f"{where}: it scales the inputs of {list(config['input_targets'])} (the paper's and peft's l_ff); AdapterHub's IA3 "
            "scales projection outputs only"
        )
    tensors = {f"{path}.loras.{name}.lora_B": member.tensors[f"{ours}.scale"][:, None]
               for ours, path in _projections(member, layout, config["targets"], where).items()}
    peer = {"architecture": "lora", "r": 1, "alpha": 1, "dropout": 0.0, "composition_mode": "scale", "init_weights": "ia3",
            **_lora_flags(config["targets"], layout, member)}
    return peer, tensors


def _prefix(member: Member, name: str, layout: ModelLayout, where: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    config = member.config
    if config.get("shift_positions"):
        raise NotConvertible(f"{where}: the prefix shifts the tokens' positions (peft's numbering); AdapterHub's keeps them")
    if config.get("layers") is not None and list(config["layers"]) != list(range(layout.num_layers)):
        raise NotConvertible(f"{where}: AdapterHub's prefix covers every layer (leave_out is not exported)")
    reparameterized = config.get("reparameterize", True)
    if reparameterized:
        params = {"wte.weight": "reparam.embedding", "control_trans.0.weight": "reparam.down.weight",
                  "control_trans.0.bias": "reparam.down.bias", "control_trans.2.weight": "reparam.up.weight",
                  "control_trans.2.bias": "reparam.up.bias"}
        values = {peer: member.tensors[ours] for peer, ours in params.items()}
    else:
        values = {"control_trans": prefix_values(member.tensors, config, layout).reshape(-1)}
    paths = [f"{layout.base_prefix}.prefix_tuning.prefix_tunings.{name}.self_prefix"]
    paths += [f"{_path(layout, SiteRef('attention', i, 'attention'))}.prefix_tuning.pool.prefix_tunings.{name}.self_prefix"
              for i in range(layout.num_layers)]
    tensors = {f"{path}.{k}": t.clone() for path in paths for k, t in values.items()}  # AdapterHub lists its pool under each
    length = member.tensors["reparam.embedding" if reparameterized else "layers.0.prefix.key"].shape[0]
    peer = {"architecture": "prefix_tuning", "encoder_prefix": True, "cross_prefix": True, "leave_out": [], "flat": not reparameterized,
            "prefix_length": length, "bottleneck_size": config.get("reparam_hidden", 512), "non_linearity": "tanh", "dropout": 0.0,
            "use_gating": False, "shared_gating": True}
    return peer, tensors


def _prompt(member: Member, name: str, layout: ModelLayout, where: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if member.config.get("insert_at", "input") != "embedding_output":
        raise NotConvertible(
            f"{where}: the prompt is inserted before the embedding layer (insert_at='input'); AdapterHub inserts it after "
            "(insert_at='embedding_output')"
        )
    prompt = member.tensors["prompt"]
    tensors = {f"{layout.base_prefix}.prompt_tuning.prompt_tunings.{name}.prompt_embedding.weight": prompt}
    return {"architecture": "prompt_tuning", "prompt_length": prompt.shape[0], "combine": "prefix", "prompt_init": "random_uniform"}, tensors


def _head(adapter: Converted, name: str, layout: ModelLayout, prompt: bool, where: str) -> dict[str, Any]:
    """``head_config.json`` and ``model_head.safetensors`` of the adapter's head (none: nothing)."""
    head = adapter.head
    if head is None:
        return {}
    kind = head["kind"]
    reads = ("first",) if prompt else ("cls", "first")
    if kind not in ("classification", "regression", "tagging") or (kind != "tagging" and head.get("pooling") not in reads):
        raise NotConvertible(
            f"{where}: its {kind} head (pooling={head.get('pooling')!r}) has no AdapterHub form; AdapterHub's classification "
            f"heads read the first position (pooling {' or '.join(reads)} here), its tagging heads every token"
        )
    layers = 2 if head.get("mlp") else 1
    indices = {"0": "1", "3": "4"} if layers == 2 else {"0": "1"}
    tensors = {}
    for key, tensor in adapter.tensors.items():
        if key.startswith("head.layers."):
            index, _, param = key.removeprefix("head.layers.").partition(".")
            tensors[f"heads.{name}.{indices[index]}.{param}"] = tensor
    labels = list(head.get("label_names") or [f"LABEL_{i}" for i in range(head.get("num_labels", 1))])
    config = {"head_type": "tagging" if kind == "tagging" else "classification", "num_labels": 1 if kind == "regression" else head["num_labels"],
              "layers": layers, "activation_function": "tanh", "label2id": {label: i for i, label in enumerate(labels)},
              "dropout_prob": head.get("dropout")}
    if kind != "tagging":
        config.update(use_pooler=False, bias=True)
    return {"head_config.json": _meta(layout, name, config), "model_head.safetensors": tensors}


def _sites(tensors: dict[str, torch.Tensor], suffix: str) -> set[tuple[str, str]]:
    """``(layer, position)`` of every ``adapter.layers.<layer>.<position>...<suffix>`` key."""
    return {tuple(k.removeprefix("adapter.").split(".")[1:3]) for k in tensors if k.startswith("adapter.layers.") and k.endswith(suffix)}


def _check_covered(adapter: Converted, members: list[Converted], layout: ModelLayout, where: str) -> None:
    """AdapterHub puts a fusion's layers wherever one of its adapters acts; refuse a fusion
    whose layers are elsewhere."""
    acting = set().union(*(_sites(m.tensors, ".down.weight") for m in members))
    if _sites(adapter.tensors, ".query.weight") != acting:
        raise NotConvertible(f"{where}: its layers are not exactly where its adapters act, which is where AdapterHub puts them")


def _fusion(adapter: Converted, members: list[Converted], layout: ModelLayout) -> dict[str, Any]:
    """The files of a fusion's folder (its head included)."""
    config, where = adapter.config, f"fusion {adapter.name!r}"
    if config.get("temperature", 1.0) != 1.0 or config.get("regularization", 0.01) not in (0.0, 0.01):
        raise NotConvertible(f"{where}: AdapterHub's fusion has temperature 1 and a penalty of 0.01 or none")
    name = ",".join(config["adapters"])
    _check_covered(adapter, members, layout, where)
    tensors: dict[str, torch.Tensor] = {}
    for key in [k for k in adapter.tensors if k.endswith(".query.weight")]:
        ours = key.removesuffix(".query.weight")
        _, layer, position = ours.removeprefix("adapter.").split(".")
        path = f"{_path(layout, SiteRef('sublayer', int(layer), position))}.adapter_fusion_layer.{name}"
        if adapter.tensors[f"{ours}.value.bias"].abs().max() > 0:
            raise NotConvertible(f"{where}: its value matrix has a bias; AdapterHub's has none")
        value = adapter.tensors[f"{ours}.value.weight"]
        tensors.update({f"{path}.query.weight": adapter.tensors[f"{ours}.query.weight"], f"{path}.query.bias": adapter.tensors[f"{ours}.query.bias"],
                        f"{path}.key.weight": adapter.tensors[f"{ours}.key.weight"], f"{path}.key.bias": torch.zeros(value.shape[0]),
                        f"{path}.value.weight": value})
    peer = {"key": True, "query": True, "value": True, "query_before_ln": False, "regularization": config.get("regularization", 0.01) > 0,
            "residual_before": bool(config.get("residual_before", True)), "temperature": False, "value_before_softmax": True,
            "value_initialized": True, "dropout_prob": None}
    files: dict[str, Any] = {"adapter_fusion_config.json": {**_meta(layout, name, peer), "adapter_names": list(config["adapters"])},
                             "model_adapter_fusion.safetensors": tensors}
    files.update(_head(adapter, name, layout, prompt=False, where=where))
    return files
