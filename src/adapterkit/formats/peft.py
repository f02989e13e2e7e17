"""peft adapter folders -> adapterkit adapters (LoRA, DoRA, rsLoRA, IA3, prefix and prompt tuning).

A peft folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` (or a pickled
``adapter_model.bin``) for its first adapter, and ``<name>/`` with the same for each further one.
Tensor keys are the task model's module paths behind ``base_model.model.`` (LoRA, IA3, their
``modules_to_save`` copies) or ``base_model.`` (the heads of prompt learning), with the adapter's
name removed: ``base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight``.

What a LoRA or IA3 adapter adapts is read from its tensors (one ``lora_A`` per adapted module),
so ``target_modules`` as a list or a regex, ``layers_to_transform`` and ``exclude_modules`` need no
re-implementation; ranks come from the tensor shapes and alphas from ``alpha_pattern`` as peft
resolves it (``get_pattern_key``: the first pattern ``p`` with ``re.match(rf"(.*\\.)?({p})$",
module)``). adapterkit targets projections by role and layer, so modules are resolved to sites
through the :class:`~adapterkit.formats.layout.ModelLayout` and grouped: one ``lora`` config per
(rank, alpha) and set of layers, a ``union`` of them when there are several; ``bias="lora_only"``
adds ``bitfit`` deltas on the adapted projections (the trained bias minus the base's).

Heads (``modules_to_save``) become adapterkit heads with the same outputs (``peft_heads.py``).
Sources: peft 0.21.2 ``tuners/lora``, ``tuners/ia3``, ``peft_model.py`` (``get_prompt``,
``PeftModelForSequenceClassification``), ``utils/save_and_load.py``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from ..placement import LINEAR_ROLES
from .detect import CONFIG_FILE, read_json, subfolders
from .layout import Converted, Member, ModelLayout, NotConvertible, assemble, members_by_layers
from .peft_heads import head_from_peft
from .peft_options import check_options
from .sitemap import check_whole_roles, grouped_members, linear_site, site_tensors
from .weights import find_weights, read_weights

WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MAIN_ADAPTER = "default"
DORA_MAGNITUDE = "magnitude"  # LoraDelta's DoRA parameter
IA3_SCALE = "scale"  # IA3Scale's parameter
_LORA_PARAMS = ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector", "base_layer.bias")
_IA3_SIDES = (("output", "targets"), ("input", "input_targets"))


def read_peft(directory: str | Path, layout: ModelLayout) -> list[Converted]:
    """Every adapter of the peft folder ``directory``: the one at its top (named ``default``, as
    peft names it) first, then one per subfolder.

    Raises:
        NotConvertible: see :func:`from_peft`.
        FileNotFoundError: a config without its weight file.
    """
    directory = Path(directory)
    folders = [(MAIN_ADAPTER, directory)] if (directory / CONFIG_FILE).is_file() else []
    folders += [(sub.name, sub) for sub in subfolders(directory)]
    return [from_peft(read_json(folder / CONFIG_FILE), _weights(folder), layout, name, str(folder)) for name, folder in folders]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    path = find_weights(folder, *WEIGHTS)
    if path is None:
        raise FileNotFoundError(f"{folder}: no {' or '.join(WEIGHTS)} beside {CONFIG_FILE}")
    return read_weights(path)


def from_peft(config: dict[str, Any], tensors: dict[str, torch.Tensor], layout: ModelLayout, name: str, where: str) -> Converted:
    """One peft adapter as an adapterkit adapter.

    Args:
        config: its ``adapter_config.json``.
        tensors: its saved tensors, by peft key.
        layout: the base model it is loaded into.
        name: the adapter's name.
        where: the folder, for messages.

    Raises:
        NotConvertible: an option without an exact equivalent (``peft_options.py``), a module that
            is no adapterkit site, a role adapted only in part, or a head adapterkit has no form of.
    """
    check_options(config, where)
    stripped = {_strip(key): tensor for key, tensor in tensors.items()}
    saved = tuple(config.get("modules_to_save") or ())
    head_tensors = {k.removeprefix(f"{layout.base_prefix}."): t for k, t in stripped.items() if _module_to_save(k, saved)}
    own = {k: t for k, t in stripped.items() if not _module_to_save(k, saved)}
    notes: list[str] = []
    peft_type = config["peft_type"]
    pooler: dict[str, torch.Tensor] = {}
    if peft_type == "LORA":
        members = _lora(config, own, layout, pooler, where)
    elif peft_type == "IA3":
        members = _ia3(config, own, layout, where)
    elif peft_type == "PREFIX_TUNING":
        members = [_prefix(config, own, layout, where)]
    else:
        members = [_prompt(config, own, layout, where)]
    head, head_saved = head_from_peft(config, head_tensors, layout, pooler, where)
    if pooler and head is None:
        notes.append(
            f"{where}: the LoRA on the base's pooler ({layout.pooler}) was left out: it changes only the pooler output, "
            "which adapterkit does not compute (the outputs it computes are unchanged)"
        )
    method_config, adapter_saved = assemble(members)
    return Converted(name, method_config, head, {**adapter_saved, **head_saved}, notes)


def _module_to_save(key: str, names: tuple[str, ...]) -> bool:
    """Whether ``key`` is a tensor of a ``modules_to_save`` copy (peft matches those names as
    module-path suffixes: ``classifier``, ``pooler`` for ``bert.pooler``)."""
    return any(f".{name}." in f".{key}" for name in names)


def _strip(key: str) -> str:
    return key.removeprefix("base_model.model.").removeprefix("base_model.")


def _by_module(tensors: dict[str, torch.Tensor], params: tuple[str, ...], where: str) -> dict[str, dict[str, torch.Tensor]]:
    """``{module path: {param: tensor}}`` for keys ``<module path>.<param>``."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        param = next((p for p in params if key.endswith(f".{p}")), None)
        if param is None:
            raise NotConvertible(f"{where}: peft tensor {key!r} is not one adapterkit converts (known: {', '.join(params)})")
        modules.setdefault(key[: -len(param) - 1], {})[param] = tensor
    return modules


def pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's per-module value (``rank_pattern``, ``alpha_pattern``): that of the first pattern
    matching the end of ``module`` on a dot boundary, else ``default`` (``get_pattern_key``)."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def _lora(config: dict[str, Any], tensors: dict[str, torch.Tensor], layout: ModelLayout, pooler: dict, where: str) -> list[Member]:
    """LoRA (``use_dora``, ``use_rslora``, ``bias="lora_only"``) as ``lora`` (+ ``bitfit``) members;
    a LoRA on the base's pooler goes to ``pooler`` (``weight`` and ``bias`` updates) instead."""
    modules = _by_module(tensors, _LORA_PARAMS, where)
    dora, rslora = bool(config.get("use_dora")), bool(config.get("use_rslora"))
    found: dict[tuple[int, str], dict[str, tuple[int, float]]] = {}
    placed: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    biases: dict[tuple[int, str], dict[str, str]] = {}
    for path, params in sorted(modules.items()):
        if "lora_A.weight" not in params or "lora_B.weight" not in params:
            raise NotConvertible(f"{where}: {path!r} has {sorted(params)} but not both lora_A and lora_B")
        rank = params["lora_A.weight"].shape[0]
        if rank != pattern_value(config.get("rank_pattern"), path, config["r"]):
            raise NotConvertible(f"{where}: {path!r} has rank {rank} saved, but its config (r, rank_pattern) says otherwise")
        alpha = pattern_value(config.get("alpha_pattern"), path, config["lora_alpha"])
        if layout.pooler and path.removeprefix(f"{layout.base_prefix}.") == f"{layout.pooler}.dense":
            if dora:
                raise NotConvertible(f"{where}: a DoRA adapter on the pooler ({path!r}) has no adapterkit equivalent")
            scale = alpha / (math.sqrt(rank) if rslora else rank)
            pooler["weight"] = scale * params["lora_B.weight"] @ params["lora_A.weight"]
            if "base_layer.bias" in params:
                pooler["bias"] = params["base_layer.bias"]
            continue
        ref = linear_site(layout, path, "LoRA", where)
        found.setdefault((ref.layer, ref.role), {})[ref.position] = (rank, alpha)
        placed[(ref.layer, ref.position)] = params
        if "base_layer.bias" in params:
            biases.setdefault((ref.layer, ref.role), {})[ref.position] = "bias"
            params["bias delta"] = params["base_layer.bias"] - layout.base_tensors[f"{layout.name_of(ref)}.bias"]
    check_whole_roles(found, layout, "LoRA", where)
    dropout = config.get("lora_dropout", 0.0)
    extra = {k: True for k, on in (("use_dora", dora), ("use_rslora", rslora)) if on}

    def lora(setting, roles, layers):
        rank, alpha = setting
        return {"method": "lora", "r": rank, "alpha": alpha, "dropout": dropout, "targets": list(roles), "layers": layers, **extra}

    def bitfit(setting, roles, layers):
        return {"method": "bitfit", "targets": list(roles), "include_norms": False, "layers": layers}

    members = grouped_members(found, placed, layout, _LORA_NAMES, lora)
    members += grouped_members(biases, placed, layout, {"bias delta": "bias"}, bitfit)
    if not members:
        raise NotConvertible(f"{where}: the adapter adapts nothing adapterkit computes")
    return members


_LORA_NAMES = {"lora_A.weight": "lora_A", "lora_B.weight": "lora_B", "lora_magnitude_vector": DORA_MAGNITUDE}


def _ia3(config: dict[str, Any], tensors: dict[str, torch.Tensor], layout: ModelLayout, where: str) -> list[Member]:
    """IA3: ``ia3_l`` of shape ``(d_out, 1)`` scales a projection's output, ``(1, d_in)`` (peft's
    ``feedforward_modules``) its input."""
    modules = _by_module(tensors, ("ia3_l",), where)
    feedforward = config.get("feedforward_modules") or []
    found: dict[tuple[int, str], dict[str, str]] = {}
    placed: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for path, params in sorted(modules.items()):
        vector = params["ia3_l"]
        side = "input" if vector.shape[0] == 1 else "output"
        listed = _listed(feedforward, path)
        if listed != (side == "input"):
            raise NotConvertible(f"{where}: {path!r}'s ia3_l has shape {tuple(vector.shape)}, which disagrees with feedforward_modules")
        ref = linear_site(layout, path, "IA3", where)
        found.setdefault((ref.layer, ref.role), {})[ref.position] = side
        placed[(ref.layer, ref.position)] = params
    check_whole_roles(found, layout, "IA3", where)
    sides = {(side, role): {pair[0] for pair in found if pair[1] == role and next(iter(found[pair].values())) == side}
             for side, _ in _IA3_SIDES for role in LINEAR_ROLES}
    groups = members_by_layers({(layer, label) for label, layers in sides.items() for layer in layers}, list(sides))
    members = []
    for labels, layers in groups:
        ia3_config = {"method": "ia3", "layers": layout.all_layers(layers)}
        for side, option in _IA3_SIDES:
            ia3_config[option] = [role for s, role in labels if s == side]
        roles = [role for _, role in labels]
        members.append(Member(ia3_config, site_tensors(layout, roles, layers, placed, {"ia3_l": IA3_SCALE})))
    return members


def _listed(patterns: list[str] | str, path: str) -> bool:
    """Whether peft's ``target_modules``-style ``patterns`` (a regex, or names matched as suffixes)
    select module ``path``."""
    if isinstance(patterns, str):
        return re.fullmatch(patterns, path) is not None
    return any(path == p or path.endswith(f".{p}") for p in patterns)


def _prompt_tensor(tensors: dict[str, torch.Tensor], width: int, config: dict[str, Any], where: str) -> torch.Tensor:
    if set(tensors) != {"prompt_embeddings"}:
        raise NotConvertible(f"{where}: expected only prompt_embeddings besides the head, found {sorted(tensors)}")
    prompt = tensors["prompt_embeddings"]
    if tuple(prompt.shape) != (config["num_virtual_tokens"], width):
        raise NotConvertible(f"{where}: prompt_embeddings has shape {tuple(prompt.shape)}, expected ({config['num_virtual_tokens']}, {width})")
    return prompt


def _prefix(config: dict[str, Any], tensors: dict[str, torch.Tensor], layout: ModelLayout, where: str) -> Member:
    """Prefix tuning: ``prompt_embeddings`` ``(l, layers * 2 * d_kv)`` holds each layer's keys then
    values (peft saves the prefixes themselves, also when trained through ``prefix_projection``).
    peft passes them as a cache, so the tokens' positions start at ``l``: ``shift_positions``."""
    width = layout.kv_width
    if config["num_layers"] != layout.num_layers:
        raise NotConvertible(f"{where}: num_layers={config['num_layers']}, but the model has {layout.num_layers} layers")
    prefixes = _prompt_tensor(tensors, layout.num_layers * 2 * width, config, where)
    pairs = prefixes.view(prefixes.shape[0], layout.num_layers, 2, width)
    saved = {f"layers.{i}.prefix.{kv}": pairs[:, i, j].clone() for i in range(layout.num_layers) for j, kv in enumerate(("key", "value"))}
    prefix = {"method": "prefix", "prefix_length": config["num_virtual_tokens"], "reparameterize": False, "init": "random",
              "shift_positions": True}
    return Member(prefix, saved)


def _prompt(config: dict[str, Any], tensors: dict[str, torch.Tensor], layout: ModelLayout, where: str) -> Member:
    """Prompt tuning: ``prompt_embeddings`` ``(k, d)`` in front of the token embeddings."""
    prompt = _prompt_tensor(tensors, layout.hidden_size, config, where)
    return Member({"method": "prompt", "prompt_length": prompt.shape[0], "init": "random", "insert_at": "input"}, {"prompt": prompt})
