"""AdapterHub (``adapters``) folders -> adapterkit adapters: bottleneck adapters (``seq_bn``,
``double_seq_bn``, ``par_bn``, ``scaled_par_bn``), LoRA, IA3, prefix and prompt tuning, their
heads, and fusions with the adapters they fuse.

An adapter folder holds ``adapter_config.json`` (``{"config": {...}, "name", "model_type",
"hidden_size", "version"}``), ``adapter.safetensors`` or ``pytorch_adapter.bin``, and with a head
``head_config.json`` and ``model_head.safetensors`` or ``pytorch_model_head.bin``. A fusion folder
holds ``adapter_fusion_config.json`` and ``model_adapter_fusion.safetensors`` or
``pytorch_model_adapter_fusion.bin`` (and its head); its adapters are folders beside it. A folder
of such folders (a fusion and its adapters, ``save_adapter_setup``) loads them all, fusions last;
the setup a ``save_adapter_setup`` folder records (``adapter_setup.json``: ``Stack``, ``Fuse``,
``Parallel``) becomes adapterkit's (:func:`read_setup`).
Pickled ``.bin`` files are read with ``torch.load(weights_only=True)`` (``weights.py``).

Keys are the flex-head model's module paths: ``bert.encoder.layer.0.output.adapters.<name>.
adapter_down.0.weight`` (the sublayer's adapters live in the module holding its dense, dropout
and LayerNorm: ``BertOutput``, ``BertSelfOutput``), ``...attention.self.query.loras.<name>.lora_A``,
``bert.prefix_tuning.prefix_tunings.<name>.self_prefix.wte.weight``,
``bert.prompt_tuning.prompt_tunings.<name>.prompt_embedding.weight``,
``...output.adapter_fusion_layer.<a,b>.query.weight``, ``heads.<name>.<i>.weight``. They are
resolved to sites through the :class:`~adapterkit.formats.layout.ModelLayout`.

How each form maps (``adapters`` 1.3 ``methods/modeling.py``, ``methods/lora.py``,
``methods/prefix_tuning.py``, ``methods/prompt_tuning.py``; adapterkit's side in the methods'
docstrings):

* sequential, ``residual_before_ln`` True: ``LN(x + h + s A(z))`` with ``z = LN(x + h)`` when
  ``original_ln_before`` (``pfeiffer``) else ``h`` (``houlsby`` with frozen norms); parallel:
  ``LN(x + h + s A(x))`` (``parallel``/``scaled_parallel``); ``scaling`` a number or ``"learned"``;
* LoRA (``composition_mode="add"``): ``+ (α/r) B A x``; IA3 (``"scale"``): outputs times
  ``α lora_B`` (``ia3`` with output ``targets``);
* prefix tuning: the MLP ``wte -> Linear -> tanh -> Linear`` whose output holds every layer's keys
  and values, as adapterkit's reparameterised ``prefix``; tokens keep their positions;
* prompt tuning (``combine="prefix"``): after the embedding layer (``insert_at="embedding_output"``);
* fusion: ``r + Σ s_n V u_n`` (``residual_before`` False) or ``Σ s_n V z_n``; the key bias cancels
  in the softmax and the value matrix has none.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from .adapterhub_heads import head_from_adapterhub
from .adapterhub_options import check_options
from .detect import CONFIG_FILE, FUSION_CONFIG_FILE, read_json, subfolders
from .layout import Converted, Member, ModelLayout, NotConvertible, assemble
from .sitemap import check_whole_roles, grouped_members, linear_site
from .weights import find_weights, read_weights

WEIGHTS = {"adapter": ("adapter.safetensors", "pytorch_adapter.bin"), "head": ("model_head.safetensors", "pytorch_model_head.bin"),
           "fusion": ("model_adapter_fusion.safetensors", "pytorch_model_adapter_fusion.bin")}
HEAD_CONFIG_FILE = "head_config.json"
ACTIVATIONS = {"relu": "relu", "swish": "swish", "silu": "silu", "gelu": "gelu", "tanh": "tanh"}
"""AdapterHub non-linearity (``transformers.activations.get_activation``) -> adapterkit's (the same function)."""


def adapter_name(name: str) -> str:
    """An adapterkit name for an AdapterHub one (a fusion is named ``"a,b"``): other characters
    than letters, digits, ``_`` and ``-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


SETUP_FILE = "adapter_setup.json"
_BLOCKS = {"Stack": "stack", "Fuse": "fuse", "Parallel": "parallel"}


def read_setup(directory: str | Path) -> dict[str, Any] | str | None:
    """The setup a ``save_adapter_setup`` folder records (``adapter_setup.json``), in adapterkit's
    JSON form (``composition.setup_from_dict``), or None when the folder records none.

    Raises:
        NotConvertible: a block adapterkit has no equivalent of (``Split``, ``BatchSplit``, ``Average``).
    """
    data = read_json(Path(directory) / SETUP_FILE)
    return None if data is None else _setup(data["adapter_setup"], str(directory))


def _setup(block: dict[str, Any], where: str) -> dict[str, Any] | str:
    kind, children = block["type"], block.get("children", [])
    if kind == "single":
        return adapter_name(children[0])
    if kind not in _BLOCKS or block.get("kwargs"):
        raise NotConvertible(f"{where}: the saved setup's {kind} block has no adapterkit equivalent (Stack, Fuse and Parallel do)")
    items = [_setup(child, where) for child in children]
    if kind == "Fuse":
        return {"fuse": items, "fusion": adapter_name(",".join(_names(block)))}
    return {_BLOCKS[kind]: items}


def _names(block: dict[str, Any]) -> list[str]:
    return block["children"] if block["type"] == "single" else [n for child in block["children"] for n in _names(child)]


def setup_head(setup: dict[str, Any] | str) -> str:
    """The adapter whose head answers a setup (the last of a Stack, the fusion of a Fuse)."""
    if isinstance(setup, str):
        return setup
    if "fuse" in setup:
        return setup["fusion"]
    return setup_head(next(iter(setup.values()))[-1])


def read_adapterhub(directory: str | Path, layout: ModelLayout) -> list[Converted]:
    """Every adapter of an AdapterHub folder, fused adapters before their fusions (see the module
    docstring). A fusion folder given alone finds its adapters in the folders beside it."""
    directory = Path(directory)
    if (directory / CONFIG_FILE).is_file():
        return [_adapter(directory, layout)]
    folders = subfolders(directory)
    if (directory / FUSION_CONFIG_FILE).is_file():
        names = set(read_json(directory / FUSION_CONFIG_FILE)["adapter_names"])
        siblings = [f for f in subfolders(directory.parent) if (f / CONFIG_FILE).is_file() and read_json(f / CONFIG_FILE).get("name") in names]
        return [_adapter(f, layout) for f in siblings] + [_fusion(directory, layout)]
    plain = [_adapter(f, layout) for f in folders if (f / CONFIG_FILE).is_file()]
    return plain + [_fusion(f, layout) for f in folders if (f / FUSION_CONFIG_FILE).is_file()]


def _tensors(folder: Path, kind: str, required: bool = True) -> dict[str, torch.Tensor]:
    path = find_weights(folder, *WEIGHTS[kind])
    if path is None:
        if required:
            raise FileNotFoundError(f"{folder}: no {' or '.join(WEIGHTS[kind])}")
        return {}
    return read_weights(path)


def _check_base(saved: dict[str, Any], layout: ModelLayout, where: str) -> None:
    if saved.get("model_type") != layout.model_type or saved.get("hidden_size", layout.hidden_size) != layout.hidden_size:
        raise NotConvertible(
            f"{where} was saved for a {saved.get('model_type')!r} model of hidden size {saved.get('hidden_size')}; "
            f"this model is {layout.model_type!r} with hidden size {layout.hidden_size}: load it into the model it was trained on"
        )


def _adapter(folder: Path, layout: ModelLayout) -> Converted:
    """One adapter folder (with its head, if saved)."""
    saved = read_json(folder / CONFIG_FILE)
    where = str(folder)
    _check_base(saved, layout, where)
    config, name = saved["config"], saved["name"]
    tensors = _tensors(folder, "adapter")
    architecture = config.get("architecture")
    if architecture is None:
        members = [_bottleneck(config, tensors, name, layout, where)]
    elif architecture == "lora":
        members = _lora(config, tensors, name, layout, where)
    elif architecture == "prefix_tuning":
        members = [_prefix(config, tensors, name, layout, where)]
    elif architecture == "prompt_tuning":
        members = [_prompt(config, tensors, name, layout, where)]
    else:
        raise NotConvertible(
            f"{where}: AdapterHub architecture {architecture!r} has no adapterkit equivalent; adapterkit converts bottleneck "
            "adapters, lora (and ia3), prefix_tuning and prompt_tuning"
        )
    head, head_tensors = _head(folder, layout, prompt=architecture == "prompt_tuning")
    method_config, adapter_tensors = assemble(members)
    return Converted(adapter_name(name), method_config, head, {**adapter_tensors, **head_tensors})


def _head(folder: Path, layout: ModelLayout, prompt: bool) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor]]:
    saved = read_json(folder / HEAD_CONFIG_FILE)
    if saved is None:
        return None, {}
    return head_from_adapterhub(saved, _tensors(folder, "head"), layout, prompt, str(folder / HEAD_CONFIG_FILE))


def _own(tensors: dict[str, torch.Tensor], marker: str, where: str) -> dict[str, dict[str, torch.Tensor]]:
    """``{module path: {param: tensor}}`` for keys ``<module path>.<marker>.<param>``.

    Raises:
        NotConvertible: a key without ``marker`` (a tensor of another kind of module).
    """
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        path, sep, param = key.partition(f".{marker}.")
        if not sep:
            raise NotConvertible(f"{where}: tensor {key!r} is not one of this adapter's ({marker})")
        found.setdefault(path, {})[param] = tensor
    return found


def _layers_kept(config: dict[str, Any], layout: ModelLayout) -> set[int]:
    return set(range(layout.num_layers)) - set(config.get("leave_out") or ())


def _bottleneck(config: dict[str, Any], tensors: dict[str, torch.Tensor], name: str, layout: ModelLayout, where: str) -> Member:
    check_options("bottleneck", config, where)
    if config.get("non_linearity", "").lower() not in ACTIVATIONS:
        raise NotConvertible(f"{where}: non_linearity {config.get('non_linearity')!r} is not one adapterkit has ({', '.join(ACTIVATIONS)})")
    parallel = bool(config.get("is_parallel"))
    if parallel and layout.norm_first:
        raise NotConvertible(
            f"{where}: AdapterHub's parallel adapter reads the residual x on this pre-LN {layout.model_type!r} model; "
            "adapterkit's reads the sublayer's normalised input LN(x) there (methods/bottleneck.py)"
        )
    if not parallel and config.get("residual_before_ln", True) is not True:
        raise NotConvertible(
            f"{where}: residual_before_ln={config['residual_before_ln']!r} makes the adapter's skip connection start "
            "after the Add & Norm; adapterkit's sequential adapters add to the sublayer output (residual_before_ln=True)"
        )
    scaling = config.get("scaling", 1.0)
    if isinstance(scaling, str) and scaling != "learned":
        raise NotConvertible(f"{where}: scaling={scaling!r} is not converted; adapterkit's is a number or 'learned'")
    saved: dict[str, torch.Tensor] = {}
    sublayers, layers, sizes = set(), set(), set()
    names = {"adapter_down.0.weight": "down.weight", "adapter_down.0.bias": "down.bias", "adapter_up.weight": "up.weight",
             "adapter_up.bias": "up.bias", "scaling": "scaling"}
    for path, params in _own(tensors, f"adapters.{name}", where).items():
        ref = layout.site(path, "sublayer")
        if ref is None or set(params) - set(names):
            raise NotConvertible(f"{where}: {path!r} ({sorted(params)}) is no sublayer adapter adapterkit has")
        sublayers.add(ref.position)
        layers.add(ref.layer)
        sizes.add(params["adapter_down.0.weight"].shape[0])
        for peer, ours in names.items():
            if peer in params:
                saved[f"layers.{ref.layer}.{ref.position}.{ours}"] = params[peer].reshape(()) if peer == "scaling" else params[peer]
    wanted = {s for s, on in (("attn", config.get("mh_adapter")), ("ffn", config.get("output_adapter"))) if on}
    if sublayers != wanted or layers != _layers_kept(config, layout) or len(sizes) != 1:
        raise NotConvertible(
            f"{where}: the saved adapters (sublayers {sorted(sublayers)}, layers {sorted(layers)}, sizes {sorted(sizes)}) do not "
            "match mh_adapter/output_adapter/leave_out with one reduction_factor; adapterkit converts one size per adapter"
        )
    method = ("scaled_parallel" if scaling != 1.0 else "parallel") if parallel else ("pfeiffer" if config.get("original_ln_before") else "houlsby")
    bottleneck = {"method": method, "sublayers": [s for s in ("attn", "ffn") if s in sublayers], "parallel": parallel,
                  "bottleneck_size": sizes.pop(), "non_linearity": ACTIVATIONS[config["non_linearity"].lower()],
                  "scaling": scaling, "train_layer_norms": False, "layers": layout.all_layers(layers),
                  "original_ln_before": bool(config.get("original_ln_before")) and not parallel}
    return Member(bottleneck, saved)


def _lora(config: dict[str, Any], tensors: dict[str, torch.Tensor], name: str, layout: ModelLayout, where: str) -> list[Member]:
    """LoRA (``composition_mode="add"``) or IA3 (``"scale"``: ``lora_B`` only, times ``alpha``)."""
    check_options("lora", config, where)
    mode = config.get("composition_mode", "add")
    if mode not in ("add", "scale"):
        raise NotConvertible(f"{where}: composition_mode={mode!r}; adapterkit converts 'add' (LoRA) and 'scale' (IA3)")
    method = "LoRA" if mode == "add" else "IA3"
    found: dict[tuple[int, str], dict[str, Any]] = {}
    placed: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for path, params in sorted(_own(tensors, f"loras.{name}", where).items()):
        ref = linear_site(layout, path, method, where)
        if mode == "scale":
            params = {"scale": params["lora_B"] * config.get("alpha", 1)}
        setting = (params["lora_A"].shape[0],) if mode == "add" else ("output",)
        found.setdefault((ref.layer, ref.role), {})[ref.position] = setting
        placed[(ref.layer, ref.position)] = params
    check_whole_roles(found, layout, method, where)
    if {layer for layer, _ in found} - _layers_kept(config, layout):
        raise NotConvertible(f"{where}: tensors in layers leave_out excludes")
    if mode == "scale":
        return grouped_members(found, placed, layout, {"scale": "scale"},
                               lambda _, roles, layers: {"method": "ia3", "targets": list(roles), "input_targets": [], "layers": layers})

    def lora(setting, roles, layers):
        return {"method": "lora", "r": setting[0], "alpha": config.get("alpha", 8), "dropout": config.get("dropout", 0.0),
                "targets": list(roles), "layers": layers}

    return grouped_members(found, placed, layout, {"lora_A": "lora_A", "lora_B": "lora_B"}, lora)


def _pool(tensors: dict[str, torch.Tensor], marker: str, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a model-wide module saved under several paths (AdapterHub lists its one
    prefix pool under every layer too), by the part of the key after ``marker``; the copies must
    be equal."""
    found: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        _, sep, param = key.partition(marker)
        if not sep:
            raise NotConvertible(f"{where}: tensor {key!r} is not one of this adapter's")
        if param in found and not torch.equal(found[param], tensor):
            raise NotConvertible(f"{where}: the copies of {param!r} differ")
        found[param] = tensor
    return found


def _prefix(config: dict[str, Any], tensors: dict[str, torch.Tensor], name: str, layout: ModelLayout, where: str) -> Member:
    check_options("prefix_tuning", config, where)
    params = _pool(tensors, f"prefix_tunings.{name}.self_prefix.", where)
    length = config["prefix_length"]
    width = layout.kv_width
    prefix = {"method": "prefix", "prefix_length": length, "init": "random", "shift_positions": False}
    if config.get("flat"):
        values = params["control_trans"].view(length, layout.num_layers, 2, width)
        saved = {f"layers.{i}.prefix.{kv}": values[:, i, j].clone() for i in range(layout.num_layers) for j, kv in enumerate(("key", "value"))}
        return Member({**prefix, "reparameterize": False}, saved)
    if config.get("non_linearity", "tanh").lower() != "tanh":
        raise NotConvertible(f"{where}: non_linearity={config['non_linearity']!r}; adapterkit's prefix MLP uses tanh (Li & Liang)")
    if params["control_trans.2.weight"].shape[0] != layout.num_layers * 2 * width:
        raise NotConvertible(f"{where}: the prefix MLP's output does not hold keys and values for the {layout.num_layers} layers")
    saved = {"reparam.embedding": params["wte.weight"], "reparam.down.weight": params["control_trans.0.weight"],
             "reparam.down.bias": params["control_trans.0.bias"], "reparam.up.weight": params["control_trans.2.weight"],
             "reparam.up.bias": params["control_trans.2.bias"]}
    return Member({**prefix, "reparameterize": True, "reparam_hidden": config["bottleneck_size"]}, saved)


def _prompt(config: dict[str, Any], tensors: dict[str, torch.Tensor], name: str, layout: ModelLayout, where: str) -> Member:
    check_options("prompt_tuning", config, where)
    params = _pool(tensors, f"prompt_tunings.{name}.", where)
    prompt = params["prompt_embedding.weight"]
    if tuple(prompt.shape) != (config["prompt_length"], layout.hidden_size):
        raise NotConvertible(f"{where}: the prompt has shape {tuple(prompt.shape)}, expected ({config['prompt_length']}, {layout.hidden_size})")
    return Member({"method": "prompt", "prompt_length": config["prompt_length"], "init": "random", "insert_at": "embedding_output"},
                  {"prompt": prompt})


def _fusion(folder: Path, layout: ModelLayout) -> Converted:
    """A fusion folder: its layers and its head (the adapters it fuses are separate folders)."""
    saved = read_json(folder / FUSION_CONFIG_FILE)
    where = str(folder)
    _check_base(saved, layout, where)
    config, name = saved["config"], saved["name"]
    check_options("fusion", config, where)
    out: dict[str, torch.Tensor] = {}
    sublayers, layers = set(), set()
    for path, params in _own(_tensors(folder, "fusion"), f"adapter_fusion_layer.{name}", where).items():
        ref = layout.site(path, "sublayer")
        if ref is None:
            raise NotConvertible(f"{where}: {path!r} is no sublayer adapterkit's fusion can sit at")
        sublayers.add(ref.position)
        layers.add(ref.layer)
        prefix = f"adapter.layers.{ref.layer}.{ref.position}"
        out.update({f"{prefix}.query.weight": params["query.weight"], f"{prefix}.query.bias": params["query.bias"],
                    f"{prefix}.key.weight": params["key.weight"], f"{prefix}.value.weight": params["value.weight"],
                    f"{prefix}.value.bias": torch.zeros(params["value.weight"].shape[0])})  # the key bias cancels
    fusion = {"method": "fusion", "adapters": [adapter_name(a) for a in saved["adapter_names"]],
              "sublayers": [s for s in ("attn", "ffn") if s in sublayers], "layers": layout.all_layers(layers),
              "regularization": 0.01 if config.get("regularization") else 0.0, "residual_before": bool(config.get("residual_before"))}
    head, head_tensors = _head(folder, layout, prompt=False)
    return Converted(adapter_name(name), fusion, head, {**out, **head_tensors})
