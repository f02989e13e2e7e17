"""Nested training state (optimizer, scheduler, RNG) as safetensors + JSON, never pickle.

``torch.save`` pickles, and unpickling a checkpoint runs whatever code it names; the project
therefore stores every tensor in safetensors and everything else in JSON. An optimizer's
``state_dict`` is a tree of dicts (with integer keys), lists, tuples (AdamW's ``betas``),
scalars and tensors. :func:`flatten` walks such a tree, moves each tensor into a flat
``{path: tensor}`` dict and leaves a JSON-able skeleton that points at them; :func:`unflatten`
rebuilds the identical tree, with int keys, tuples and tensor dtypes/shapes restored exactly.

Skeleton encoding: JSON scalars stay as they are; a tensor becomes ``{"__tensor__": path}``; a
tuple ``{"__tuple__": [...]}``; a dict whose keys are not all strings
``{"__items__": [[key, value], ...]}``; a non-finite float ``{"__float__": "nan"}``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

_MARKERS = ("__tensor__", "__tuple__", "__items__", "__float__")


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def flatten(tree: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """The JSON-able skeleton of ``tree``; its tensors are added to ``tensors`` by path."""
    if isinstance(tree, torch.Tensor):
        key = path or "value"
        tensors[key] = tree.detach().to("cpu").clone().contiguous()
        return {"__tensor__": key}
    if isinstance(tree, bool) or tree is None or isinstance(tree, (int, str)):
        return tree
    if isinstance(tree, float):
        return tree if math.isfinite(tree) else {"__float__": repr(tree)}
    if isinstance(tree, tuple):
        return {"__tuple__": [flatten(v, tensors, _join(path, i)) for i, v in enumerate(tree)]}
    if isinstance(tree, list):
        return [flatten(v, tensors, _join(path, i)) for i, v in enumerate(tree)]
    if isinstance(tree, dict):
        if all(isinstance(k, str) for k in tree) and not any(k in _MARKERS for k in tree):
            return {k: flatten(v, tensors, _join(path, k)) for k, v in tree.items()}
        return {"__items__": [[flatten(k, {}, ""), flatten(v, tensors, _join(path, k))] for k, v in tree.items()]}
    raise TypeError(f"cannot store a {type(tree).__name__} at {path or 'the root'} in a checkpoint")


def unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten`."""
    if isinstance(skeleton, list):
        return [unflatten(v, tensors) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if "__tuple__" in skeleton:
        return tuple(unflatten(v, tensors) for v in skeleton["__tuple__"])
    if "__items__" in skeleton:
        return {unflatten(k, {}): unflatten(v, tensors) for k, v in skeleton["__items__"]}
    if "__float__" in skeleton:
        return float(skeleton["__float__"])
    return {k: unflatten(v, tensors) for k, v in skeleton.items()}


def save_tree(tree: Any, directory: Path, stem: str) -> None:
    """Write ``tree`` as ``<stem>.safetensors`` (its tensors) plus ``<stem>.json`` (the rest)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten(tree, tensors)
    save_file(tensors, str(directory / f"{stem}.safetensors"))
    (directory / f"{stem}.json").write_text(json.dumps(skeleton, indent=1) + "\n")


def load_tree(directory: Path, stem: str) -> Any:
    skeleton = json.loads((directory / f"{stem}.json").read_text())
    return unflatten(skeleton, load_file(str(directory / f"{stem}.safetensors")))
