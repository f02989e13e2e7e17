"""The identity of a base model, recorded with every saved adapter and checked when one loads.

An adapter's weights only mean something on top of the exact base weights it was trained with,
so a saved adapter records its base model's identity and loading it into any other base model
is refused with a message naming both.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn


def base_fingerprint(model: nn.Module) -> str:
    """A short digest identifying a base model's architecture and weights.

    Hashes every parameter's name and shape plus an evenly strided sample of up to 4096 values of
    each parameter: cheap (milliseconds for 100M parameters) and different for any two
    checkpoints that differ in more than a few scattered weights.
    """
    digest = hashlib.sha256(model.config.model_type.encode())
    for name, param in model.named_parameters():
        flat = param.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)][:4096].to(torch.float32).cpu()
        digest.update(f"{name}:{tuple(param.shape)}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def base_identity(model: nn.Module, name_or_path: str | None, num_layers: int, hidden_size: int, fingerprint: str) -> dict[str, Any]:
    """What a saved adapter records of its base model."""
    return {
        "model_type": model.config.model_type,
        "name_or_path": name_or_path,
        "num_layers": num_layers,
        "hidden_size": hidden_size,
        "fingerprint": fingerprint,
    }


def check_base(saved: dict[str, Any], here: dict[str, Any], where: str | Path) -> None:
    """Refuse an adapter (at ``where``) trained on another base model than ``here``.

    Raises:
        ValueError: naming both base models and what to do.
    """
    if saved["fingerprint"] != here["fingerprint"]:
        raise ValueError(
            f"adapter {where} was trained on base model {saved['name_or_path'] or saved['model_type']} "
            f"({saved['model_type']}, {saved['num_layers']} layers, hidden {saved['hidden_size']}, "
            f"fingerprint {saved['fingerprint']}), but this model is {here['name_or_path'] or here['model_type']} "
            f"({here['model_type']}, {here['num_layers']} layers, hidden {here['hidden_size']}, fingerprint "
            f"{here['fingerprint']}); load it into the model it was trained on"
        )
