"""What identifies the checkpoint a base model was loaded from, whatever dtype it was loaded in.

An adapter only means something on the weights it was trained on, so a saved adapter records
their identity and loading it into another base model is refused. One checkpoint is often loaded
in several dtypes (trained in bfloat16 on a GPU, evaluated in float32 on a CPU), so the identity
must not depend on the dtype, yet it must tell two checkpoints apart:

* The **fingerprint** hashes the model type, every parameter's name and shape, and an evenly
  strided sample of each parameter's values *rounded to bfloat16*. A bfloat16 load holds exactly
  the checkpoint's values rounded to bfloat16 (round to nearest even, as ``from_pretrained(dtype=
  torch.bfloat16)`` casts), and a float32 or float64 load holds them exactly, so these loads of
  one checkpoint hash equal, while any difference in the sampled values beyond bfloat16 rounding
  changes the hash.
* A **float16** load rounds first to float16 and then, here, to bfloat16: that can land one
  bfloat16 step away, and float16 loses precision below 6e-5. So the identity also records the
  dtype, an **architecture** hash (model type, names and shapes) and a **probe**: two values of
  each of the first 64 parameters. When the fingerprints differ, :func:`compare_bases` says
  what differs: the architecture, or the weights (the probed values that disagree); probed values
  that all agree within half-precision rounding accept a float16 load.

Nothing here imports the rest of adapterkit: it works on any ``torch.nn.Module`` with a
``config.model_type`` (a Hugging Face model) and on the plain dicts saved with adapters.
:func:`refusal` words the error when an adapter meets another base model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

#: Values hashed per parameter (evenly strided over the flattened tensor).
SAMPLE_SIZE = 4096
#: Parameters (the first ones, in ``named_parameters`` order) whose values the probe records.
PROBE_TENSORS = 64
#: 1: values hashed as loaded (adapterkit before the dtype was ignored); 2: rounded to bfloat16.
FINGERPRINT_VERSION = 2
#: Probed values agree when ``|a - b| <= RTOL * max(|a|, |b|) + ATOL``: bfloat16 rounding is at
#: most 2^-9 relative and float16 rounding 2^-11 (2^-25 absolute below float16's normal range).
RTOL, ATOL = 2.0**-7, 2.0**-24
#: Loads whose values are not the checkpoint's values rounded once to bfloat16 or better.
_LOSSY_DTYPES = {"float16"}


def _layout(name: str, param: torch.Tensor) -> bytes:
    return f"{name}:{tuple(param.shape)}".encode()


def _sample(param: torch.Tensor) -> torch.Tensor:
    flat = param.detach().reshape(-1)
    return flat[:: max(1, flat.numel() // SAMPLE_SIZE)][:SAMPLE_SIZE]


def base_fingerprint(model: nn.Module, version: int = FINGERPRINT_VERSION) -> str:
    """16 hex digits identifying ``model``'s architecture and weights (see the module docstring).

    Cheap: milliseconds for 100M parameters. ``version=1`` computes the fingerprint the way
    adapterkit did before version 2 (the sampled values as loaded, so it depends on the dtype),
    to check adapters saved then.

    Raises:
        ValueError: an unknown ``version`` (an adapter saved by a newer adapterkit).
    """
    if version not in (1, 2):
        raise ValueError(
            f"unknown base-model fingerprint version {version}; this adapterkit knows versions 1 and 2: "
            "upgrade adapterkit to load this adapter"
        )
    digest = hashlib.sha256(model.config.model_type.encode())
    for name, param in model.named_parameters():
        digest.update(_layout(name, param))
        sample = _sample(param)
        if version == 1:
            digest.update(sample.to(torch.float32).cpu().numpy().tobytes())
        else:
            digest.update(sample.to(torch.bfloat16).contiguous().view(torch.int16).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def checkpoint_identity(model: nn.Module) -> dict[str, Any]:
    """The identity of ``model``'s weights as saved with an adapter (JSON-ready).

    Keys: ``fingerprint`` and ``fingerprint_version`` (:func:`base_fingerprint`),
    ``architecture`` (16 hex digits of model type, parameter names and shapes), ``num_tensors``
    (parameter tensors), ``dtype`` (of the parameters, e.g. ``"bfloat16"``; several joined by
    ``+``) and ``probe``: for each of the first :data:`PROBE_TENSORS` parameters,
    ``{"shape": [...], "values": [first, middle]}`` (floats, the flattened tensor's first and
    middle values as loaded).
    """
    params = list(model.named_parameters())
    architecture = hashlib.sha256(model.config.model_type.encode())
    for name, param in params:
        architecture.update(_layout(name, param))
    probe = {}
    for name, param in params[:PROBE_TENSORS]:
        flat = param.detach().reshape(-1)
        values = flat[[0, flat.numel() // 2]].float().tolist() if flat.numel() else []
        probe[name] = {"shape": list(param.shape), "values": values}
    return {
        "fingerprint": base_fingerprint(model),
        "fingerprint_version": FINGERPRINT_VERSION,
        "architecture": architecture.hexdigest()[:16],
        "num_tensors": len(params),
        "dtype": "+".join(sorted({str(p.dtype).removeprefix("torch.") for _, p in params})),
        "probe": probe,
    }


def compare_bases(saved: Mapping[str, Any], here: Mapping[str, Any]) -> str | None:
    """None when two base identities are the same checkpoint, else what differs, in words.

    ``saved`` and ``here`` are :func:`checkpoint_identity` dicts, optionally with
    ``model_type``, ``num_layers`` and ``hidden_size`` (what adapterkit saves with an adapter),
    of the same ``fingerprint_version``. Keys that an older identity lacks are left out of the
    comparison: only what both record is compared.

    Equal fingerprints are the same checkpoint. Otherwise: a different architecture (model type,
    sizes, parameter count, names or shapes) is named as such; with the same architecture, the
    weights differ unless one side is a float16 load and every probed value agrees within
    half-precision rounding (``RTOL``, ``ATOL``).
    """
    if saved.get("fingerprint") == here.get("fingerprint"):
        return None
    return _architecture_difference(saved, here) or _weights_difference(saved, here)


_ARCHITECTURE_KEYS = ("model_type", "num_layers", "hidden_size", "num_tensors", "architecture")


def _architecture_difference(saved: Mapping[str, Any], here: Mapping[str, Any]) -> str | None:
    if all(saved[key] == here[key] for key in _ARCHITECTURE_KEYS if key in saved and key in here):
        return None
    example = _layout_example(saved.get("probe") or {}, here.get("probe") or {})
    return f"different architecture (saved: {_sizes(saved)}; here: {_sizes(here)}{example})"


def _sizes(identity: Mapping[str, Any]) -> str:
    parts = [
        str(identity.get("model_type", "model type not recorded")),
        *([f"{identity['num_layers']} layers"] if "num_layers" in identity else []),
        *([f"hidden {identity['hidden_size']}"] if "hidden_size" in identity else []),
        *([f"{identity['num_tensors']} parameter tensors"] if "num_tensors" in identity else []),
    ]
    return ", ".join(parts)


def _layout_example(saved: Mapping[str, Any], here: Mapping[str, Any]) -> str:
    """The first probed parameter that only one side has or whose shape differs, as a clause."""
    for name in [*saved, *(n for n in here if n not in saved)]:
        if name not in here:
            return f"; e.g. `{name}` is only in the saved model"
        if name not in saved:
            return f"; e.g. `{name}` is only in this model"
        if saved[name]["shape"] != here[name]["shape"]:
            return f"; e.g. `{name}` has shape {tuple(saved[name]['shape'])} saved, {tuple(here[name]['shape'])} here"
    return ""


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= RTOL * max(abs(a), abs(b)) + ATOL


def _weights_difference(saved: Mapping[str, Any], here: Mapping[str, Any]) -> str | None:
    saved_probe, here_probe = saved.get("probe"), here.get("probe")
    if not saved_probe or not here_probe:
        return (
            f"same architecture, different weights (fingerprint {saved.get('fingerprint')} saved, "
            f"{here.get('fingerprint')} here; an adapter saved before adapterkit recorded the dtype only matches "
            "the base loaded in the dtype it was trained in)"
        )
    pairs = [
        (name, a, b)
        for name, entry in saved_probe.items()
        if name in here_probe
        for a, b in zip(entry["values"], here_probe[name]["values"])
    ]
    differing = [(name, a, b) for name, a, b in pairs if not _close(a, b)]
    if differing:
        name, a, b = differing[0]
        return (
            f"same architecture, different weights ({len(differing)} of {len(pairs)} probed values differ, "
            f"e.g. `{name}`: saved {a:.6g}, here {b:.6g})"
        )
    dtypes = set(str(saved.get("dtype", "")).split("+")) | set(str(here.get("dtype", "")).split("+"))
    if dtypes & _LOSSY_DTYPES:
        return None  # a float16 load: rounding twice moved the bfloat16 sample, the probe agrees
    return (
        f"same architecture, different weights (all {len(pairs)} probed values agree, but the sampled "
        f"weights differ: fingerprint {saved['fingerprint']} saved, {here['fingerprint']} here)"
    )


def refusal(saved: Mapping[str, Any], here: Mapping[str, Any], difference: str, where: Any) -> str:
    """The message refusing the adapter at ``where`` (see :func:`compare_bases` for ``difference``)."""
    return (
        f"adapter {where} was trained on base model {_named(saved)}, but this model is {_named(here)}: "
        f"{difference}; load it into the model it was trained on"
    )


def _named(identity: Mapping[str, Any]) -> str:
    return f"{identity.get('name_or_path') or identity['model_type']} ({identity.get('dtype', 'dtype not recorded')})"
