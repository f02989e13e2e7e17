"""adapterkit adapters -> peft folders: LoRA (DoRA, rsLoRA; a union of LoRAs with their
``bitfit`` biases), IA3, prefix and prompt tuning, with heads as ``modules_to_save``.

The folder is what peft's ``save_pretrained`` writes and ``PeftModel.from_pretrained`` loads:
``adapter_config.json`` with only fields peft 0.21 knows, and ``adapter_model.safetensors`` with
peft's keys (``base_model.model.<task model path>.lora_A.weight``). Targets are listed as full
module paths of the task model (``bert.encoder.layer.0.attention.self.query``), which peft matches
exactly, so no short name reaches another module (BERT's ``dense`` would also match the pooler);
ranks and alphas that differ between projections go into ``rank_pattern``/``alpha_pattern`` under
the same escaped paths. The head's form is the task class's (``peft_heads.py``): load the folder
into ``AutoModelForSequenceClassification(base, num_labels=n)`` (``TOKEN_CLS``: token
classification; ``CAUSAL_LM``: the causal LM; no head: ``AutoModel``).

What peft cannot represent is refused with the reason: bottleneck adapters, fusions, unions of
other methods, deep prompts, prompts after the embedding layer (peft prepends them to the input
embeddings), prefixes that do not shift the tokens' positions (peft's cache does), heads other than
the task classes', a pooling other than the one peft's classifier reads.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..atomic import atomic_directory
from .layout import Converted, Member, ModelLayout, NotConvertible, SiteRef, prefix_values, split_members
from .peft_heads import CLASSIFICATION_HEAD_FAMILIES, POOLER_FAMILIES

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
PEFT_VERSION = "0.21.2"
PROMPT_LEARNING = ("prefix", "prompt")


def write_peft(directory: Path, adapter: Converted, members: list[Converted], layout: ModelLayout) -> Path:
    """Write ``adapter`` as a peft folder in ``directory`` (atomically); ``members`` must be empty
    (peft has no fusion).

    Raises:
        NotConvertible: what peft cannot represent, with why.
    """
    config, tensors = peft_adapter(adapter, layout)
    with atomic_directory(directory) as tmp:
        save_file({k: t.contiguous() for k, t in tensors.items()}, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def peft_adapter(adapter: Converted, layout: ModelLayout) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(peft ``adapter_config.json``, peft tensors) of one adapterkit adapter."""
    where = f"adapter {adapter.name!r}"
    members = split_members(adapter.config, adapter.tensors)
    methods = {m.config["method"] for m in members}
    head_tensors = {k.removeprefix("head."): t for k, t in adapter.tensors.items() if k.startswith("head.")}
    if methods <= {"lora", "bitfit"} and "lora" in methods:
        peft_type, wrapped = "LORA", True
    elif methods == {"ia3"}:
        peft_type, wrapped = "IA3", True
    elif len(members) == 1 and members[0].config["method"] in PROMPT_LEARNING:
        peft_type, wrapped = ("PREFIX_TUNING" if "prefix" in methods else "PROMPT_TUNING"), False
    else:
        raise NotConvertible(
            f"{where}: peft has no equivalent of {adapter.config['method']!r}"
            f"{' (' + ', '.join(sorted(methods)) + ')' if adapter.config['method'] == 'union' else ''}; adapterkit exports "
            "lora (DoRA, rsLoRA; with bitfit biases of its projections), ia3, prefix and prompt adapters to peft"
        )
    task, head_config, head_saved = _head(adapter.head, head_tensors, layout, peft_type, where)
    prefix = "base_model.model." if wrapped else "base_model."
    task_wrapped = task in ("SEQ_CLS", "TOKEN_CLS")
    config: dict[str, Any] = {"peft_type": peft_type, "task_type": task, "inference_mode": True, "peft_version": PEFT_VERSION,
                              "base_model_name_or_path": layout.config.get("_name_or_path") or None, **head_config}
    if peft_type == "LORA":
        options, saved = _lora(members, layout, task_wrapped, where)
    elif peft_type == "IA3":
        options, saved = _ia3(members, layout, task_wrapped)
    elif peft_type == "PREFIX_TUNING":
        options, saved = _prefix(members[0], layout, where)
    else:
        options, saved = _prompt(members[0], layout, where)
    config.update(options)
    tensors = {(k if k == "prompt_embeddings" else prefix + k): t for k, t in saved.items()}
    tensors.update({prefix + layout.task_path(k, task_wrapped) if k.startswith("pooler") else prefix + k: t for k, t in head_saved.items()})
    return config, tensors


def _path(layout: ModelLayout, layer: int, position: str, role: str, wrapped: bool) -> str:
    return layout.task_path(layout.name_of(SiteRef("linear", layer, position, role)), wrapped)


def _each_projection(member: Member, layout: ModelLayout):
    """``(layer, position, role)`` of every projection a ``lora``/``ia3``/``bitfit`` member adapts."""
    config = member.config
    layers = config.get("layers")
    roles = [*(config.get("targets") or ()), *(config.get("input_targets") or ())]
    for layer in range(layout.num_layers) if layers is None else layers:
        for role in roles:
            for position in layout.positions.get((layer, role), ()):
                yield layer, position, role


def _lora(members: list[Member], layout: ModelLayout, wrapped: bool, where: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    loras = [m for m in members if m.config["method"] == "lora"]
    shared = {(m.config.get("dropout", 0.0), m.config.get("use_dora", False), m.config.get("use_rslora", False)) for m in loras}
    if len(shared) > 1:
        raise NotConvertible(f"{where}: its LoRAs differ in dropout, use_dora or use_rslora, which peft holds once per adapter")
    dropout, dora, rslora = shared.pop()
    saved: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for member in loras:
        for layer, position, role in _each_projection(member, layout):
            path = _path(layout, layer, position, role, wrapped)
            ours = f"layers.{layer}.{position}"
            saved[f"{path}.lora_A.weight"] = member.tensors[f"{ours}.lora_A"]
            saved[f"{path}.lora_B.weight"] = member.tensors[f"{ours}.lora_B"]
            if dora:
                saved[f"{path}.lora_magnitude_vector"] = member.tensors[f"{ours}.magnitude"]
            ranks[path], alphas[path] = member.config["r"], member.config["alpha"]
    lora_paths = set(ranks)
    bias = "none"
    for member in (m for m in members if m.config["method"] == "bitfit"):
        if member.config.get("include_norms", True):
            raise NotConvertible(f"{where}: its bitfit member trains layer-norm biases; peft's LoRA trains biases of projections only")
        for layer, position, role in _each_projection(member, layout):
            path = _path(layout, layer, position, role, wrapped)
            base = layout.base_tensors.get(f"{layout.name_of(SiteRef('linear', layer, position, role))}.bias")
            if path not in lora_paths or base is None:
                raise NotConvertible(
                    f"{where}: its bitfit member trains the bias of {path!r}, which its LoRA does not adapt (or which has none); "
                    "peft's bias='lora_only' trains exactly the adapted projections' biases"
                )
            saved[f"{path}.base_layer.bias"] = base + member.tensors[f"layers.{layer}.{position}.bias"]
            bias = "lora_only"
    if bias == "lora_only" and len([k for k in saved if k.endswith(".base_layer.bias")]) != len(lora_paths):
        raise NotConvertible(f"{where}: its bitfit member covers only some of the LoRA's projections; peft's bias='lora_only' covers all")
    rank = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    options = {
        "r": rank, "lora_alpha": alpha, "lora_dropout": dropout, "use_dora": dora, "use_rslora": rslora, "bias": bias,
        "target_modules": sorted(ranks), "init_lora_weights": True, "fan_in_fan_out": False,
        "rank_pattern": {re.escape(p): r for p, r in sorted(ranks.items()) if r != rank},
        "alpha_pattern": {re.escape(p): a for p, a in sorted(alphas.items()) if a != alpha},
    }
    return options, saved


def _ia3(members: list[Member], layout: ModelLayout, wrapped: bool) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    saved: dict[str, torch.Tensor] = {}
    feedforward: list[str] = []
    for member in members:
        inputs = set(member.config.get("input_targets") or ())
        for layer, position, role in _each_projection(member, layout):
            path = _path(layout, layer, position, role, wrapped)
            scale = member.tensors[f"layers.{layer}.{position}.scale"]
            saved[f"{path}.ia3_l"] = scale[None, :] if role in inputs else scale[:, None]
            if role in inputs:
                feedforward.append(path)
    targets = sorted(k.removesuffix(".ia3_l") for k in saved)
    return {"target_modules": targets, "feedforward_modules": sorted(feedforward), "fan_in_fan_out": False, "init_ia3_weights": True}, saved


def _prompt_options(layout: ModelLayout, length: int) -> dict[str, Any]:
    return {"num_virtual_tokens": length, "token_dim": layout.hidden_size, "num_transformer_submodules": 1,
            "num_attention_heads": layout.config.get("num_attention_heads"), "num_layers": layout.num_layers}


def _prefix(member: Member, layout: ModelLayout, where: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    config = member.config
    if not config.get("shift_positions"):
        raise NotConvertible(
            f"{where}: peft passes prefixes as a cache, so the tokens' positions start after them; this prefix keeps the "
            "tokens' positions (shift_positions=False), which peft cannot represent"
        )
    if config.get("layers") not in (None, list(range(layout.num_layers))) or layout.kv_width != layout.hidden_size:
        raise NotConvertible(f"{where}: peft's prefix tuning covers every layer with keys as wide as the hidden size")
    values = prefix_values(member.tensors, config, layout)  # (l, layers, 2, d_kv)
    options = {**_prompt_options(layout, values.shape[0]), "encoder_hidden_size": layout.hidden_size, "prefix_projection": False}
    return options, {"prompt_embeddings": values.reshape(values.shape[0], -1)}


def _prompt(member: Member, layout: ModelLayout, where: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if member.config.get("insert_at", "input") != "input":
        raise NotConvertible(
            f"{where}: the prompt is inserted after the embedding layer (insert_at={member.config['insert_at']!r}); peft "
            "prepends it to the input embeddings (insert_at='input')"
        )
    prompt = member.tensors["prompt"]
    return {**_prompt_options(layout, prompt.shape[0]), "prompt_tuning_init": "RANDOM"}, {"prompt_embeddings": prompt}


def _head(
    head: dict[str, Any] | None, tensors: dict[str, torch.Tensor], layout: ModelLayout, peft_type: str, where: str
) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """(task_type, ``modules_to_save`` option, head tensors by task-model path)."""
    if head is None:
        return ("CAUSAL_LM" if layout.decoder else "FEATURE_EXTRACTION"), {}, {}
    kind = head["kind"]
    if kind == "causal_lm":
        if not head.get("own_lm_head"):
            return "CAUSAL_LM", {}, {}
        return "CAUSAL_LM", {"modules_to_save": ["lm_head"]}, {f"lm_head.{k}": t for k, t in tensors.items()}
    if kind == "tagging" and not head.get("mlp"):
        return "TOKEN_CLS", {"modules_to_save": ["classifier"]}, {f"classifier.{k.removeprefix('layers.0.')}": t for k, t in tensors.items()}
    # peft's classifier reads position 0 of what the model ran: the first virtual token with prompt tuning
    reads = ("first",) if peft_type == "PROMPT_TUNING" else ("cls", "first")
    if kind not in ("classification", "regression") or not head.get("mlp") or head.get("pooling") not in reads:
        raise NotConvertible(
            f"{where}: its {kind} head (mlp={head.get('mlp')}, pooling={head.get('pooling')!r}) is no peft task head; peft's "
            f"sequence classifiers are a tanh MLP on the first position (pooling {' or '.join(reads)} for a {peft_type} "
            "adapter), its token classifiers a linear layer on every token"
        )
    first = {"weight": tensors["layers.0.weight"], "bias": tensors["layers.0.bias"]}
    last = {"weight": tensors["layers.3.weight"], "bias": tensors["layers.3.bias"]}
    if layout.model_type in CLASSIFICATION_HEAD_FAMILIES:
        saved = {**{f"classifier.dense.{k}": t for k, t in first.items()}, **{f"classifier.out_proj.{k}": t for k, t in last.items()}}
        return "SEQ_CLS", {"modules_to_save": ["classifier"]}, saved
    if layout.model_type not in POOLER_FAMILIES or not layout.pooler:
        raise NotConvertible(f"{where}: peft's sequence classification head on a {layout.model_type!r} model is not one adapterkit writes")
    saved = {f"classifier.{k}": t for k, t in last.items()}
    pooler = {k: layout.base_tensors[f"{layout.pooler}.dense.{k}"] for k in first}
    if all(torch.equal(first[k], pooler[k].to(first[k].dtype)) for k in first):
        return "SEQ_CLS", {"modules_to_save": ["classifier"]}, saved
    saved.update({f"{layout.pooler}.dense.{k}": t for k, t in first.items()})
    return "SEQ_CLS", {"modules_to_save": ["classifier", layout.pooler]}, saved
