"""``adapterkit methods``: the registered methods, their options and default learning rates."""

from __future__ import annotations

import argparse
import dataclasses


def register(subparsers) -> None:
    parser = subparsers.add_parser("methods", help="list the registered methods and their options")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import methods  # noqa: F401  (importing the package registers every method)
    from ..registry import REGISTRY
    from ..training import default_learning_rate

    for name in sorted(REGISTRY):
        config_cls = REGISTRY[name].config_cls
        print(f"{name}  (default learning rate {default_learning_rate(name):g})")
        fields = dataclasses.fields(config_cls)
        for field in fields:
            default = field.default if field.default is not dataclasses.MISSING else "(required)"
            print(f"    {field.name} = {default!r}")
        if not fields:
            print("    (no options)")
    return 0
