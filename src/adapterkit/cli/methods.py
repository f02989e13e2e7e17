"""``adapterkit methods``: the registered methods, their default learning rates (with where each
comes from), their capabilities and their options."""

from __future__ import annotations

import argparse
import dataclasses


def register(subparsers) -> None:
    parser = subparsers.add_parser("methods", help="list the registered methods and their options")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import methods  # noqa: F401  (importing the package registers every method)
    from ..registry import REGISTRY

    for name in sorted(REGISTRY):
        spec = REGISTRY[name]
        config_cls = spec.config_cls
        print(f"{name}  (default learning rate {config_cls.default_learning_rate:g})")
        print(f"    learning rate source: {config_cls.learning_rate_source}")
        if spec.capabilities:
            print(f"    capabilities: {', '.join(sorted(spec.capabilities))}")
        fields = dataclasses.fields(config_cls)
        for field in fields:
            default = field.default if field.default is not dataclasses.MISSING else "(required)"
            print(f"    {field.name} = {default!r}")
        if not fields:
            print("    (no options)")
    return 0
