"""``adapterkit methods [NAME]``: the registered methods, their default learning rates (with where
each comes from), their capabilities and their options (meaning, type, default, allowed values),
read from ``manifest.py``: no torch import, so it answers at once."""

from __future__ import annotations

import argparse
from typing import Any

from .manifest import METHODS
from .names import UNION_EXAMPLE, check_method, syntax

DESCRIPTION = """List every method with its default learning rate and options, each as
NAME = DEFAULT (TYPE) and what it does; give a method's NAME to see its options in detail, with how to
write each value. A method's options are given to `adapterkit train` as --option NAME=VALUE
(repeatable); list options take NAME=a,b or NAME=[a,b] or a JSON list."""

WRITING = f"""Options are given as --option NAME=VALUE (repeatable): numbers, true/false and null as such, lists as
a,b or [a,b] or one item (--option targets=q,v), text as it is. A union of methods takes its members as
a JSON list of configs, each with its method and options: --option {UNION_EXAMPLE}
(`mam` is the union of prefix and scaled_parallel with its own options)."""


def register(subparsers) -> None:
    parser = subparsers.add_parser("methods", help="list the registered methods and their options", description=DESCRIPTION)
    parser.add_argument("name", nargs="?", metavar="NAME", help="one method, shown in detail")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.name:
        print("\n".join(describe(args.name, check_method(args.name), detailed=True)))
        return 0
    for name, entry in METHODS.items():
        print("\n".join(describe(name, entry, detailed=False)))
    print(f"\n{WRITING}")
    return 0


def describe(name: str, entry: dict[str, Any], detailed: bool) -> list[str]:
    """The lines that present one method (with each option's syntax when ``detailed``)."""
    lines = [f"{name}  (default learning rate {entry['learning_rate']:g})", f"    {entry['summary']}"]
    lines.append(f"    learning rate source: {entry['learning_rate_source']}")
    if entry["capabilities"]:
        lines.append(f"    capabilities: {', '.join(entry['capabilities'])}")
    for option in entry["options"]:
        kind = option["type"] + (f": {', '.join(option['values'])}" if option["values"] else "")
        lines.append(f"    {option['name']} = {written(option['default'])}  ({kind})  {option['meaning']}")
        if detailed:
            lines.append(f"        --option {option['name']}=...: {syntax(option)}")
    if not entry["options"]:
        lines.append("    (no options)")
    return lines


def written(value: Any) -> str:
    """A default as it would be written after ``--option NAME=``."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, tuple):
        return f"[{','.join(written(v) for v in value)}]"
    return str(value)
