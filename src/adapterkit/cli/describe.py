"""Writes ``manifest.py``: what the command line must know before it imports torch (the methods,
their options, the task names and the bundled image models), read from the method registry, the
task catalog and ``vision_models``.

``python -m adapterkit.cli.describe`` rewrites it after a method, an option or a task changes;
``tests/test_cli_fast.py`` fails while the two disagree.
"""

from __future__ import annotations

import dataclasses
import pprint
import re
import sys
import typing
from pathlib import Path
from typing import Any

MANIFEST = Path(__file__).with_name("manifest.py")

HEADER = '''"""What the command line knows before it imports torch: every method with its options, and every
task name. Generated from the registry and the task catalog by ``python -m adapterkit.cli.describe``
(do not edit; ``tests/test_cli_fast.py`` fails when it is out of date).

``METHODS[name]``: ``learning_rate`` and its ``learning_rate_source``, ``capabilities``, ``summary``,
and ``options``: one dict per option with ``name``, ``type`` (the annotation), ``default``,
``values`` (the allowed values of a string option, or of each item of a list option; None: any)
and ``meaning`` (from the config class's docstring). ``VISION_MODELS[name]``: ``description``,
``install`` and the ``packages`` it imports.
"""

'''


def build_manifest() -> dict[str, Any]:
    """``{"METHODS": ..., "TASKS": ..., "VISION_MODELS": ...}`` from the registered methods, the task
    catalog and the bundled image models (imports torch)."""
    from .. import methods  # noqa: F401  (registers every method)
    from ..data import available_tasks, knowledge_tasks
    from ..data.lm_tasks import generation_tasks
    from ..registry import REGISTRY
    from ..vision_models import VISION_MODELS

    described = {name: describe_method(REGISTRY[name].config_cls, REGISTRY[name].capabilities) for name in sorted(REGISTRY)}
    return {
        "METHODS": described,
        "TASKS": tuple(available_tasks() + knowledge_tasks() + generation_tasks()),
        "VISION_MODELS": {
            name: {"description": spec.description, "install": spec.install, "packages": spec.packages}
            for name, spec in VISION_MODELS.items()
        },
    }


def describe_method(config_cls: type, capabilities: frozenset[str]) -> dict[str, Any]:
    """A method's entry: learning rate and its source, capabilities, summary and options."""
    hints = typing.get_type_hints(config_cls)
    meanings = option_meanings(config_cls)
    options = []
    for field in dataclasses.fields(config_cls):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        values = config_cls.option_values.get(field.name)
        options.append({
            "name": field.name,
            "type": type_name(hints[field.name]),
            "default": default,
            "values": tuple(values) if values is not None else None,
            "meaning": meanings.get(field.name, ""),
        })
    return {
        "learning_rate": float(config_cls.default_learning_rate),
        "learning_rate_source": config_cls.learning_rate_source,
        "capabilities": tuple(sorted(capabilities)),
        "summary": summary(config_cls),
        "options": tuple(options),
    }


def type_name(hint: Any) -> str:
    """``int``, ``float | str``, ``tuple[int, ...] | None``, ``tuple[MethodConfig, ...]``."""
    if isinstance(hint, type) and typing.get_origin(hint) is None:
        return "None" if hint is type(None) else hint.__name__
    return re.sub(r"\b[\w.]+\.(\w+)", r"\1", str(hint)).replace("NoneType", "None")


def option_meanings(config_cls: type) -> dict[str, str]:
    """Each option's entry in the ``Args:`` sections of the config class's docstring and its bases'
    (an entry may name several options: ``a, b: ...``), joined to one line."""
    meanings: dict[str, str] = {}
    for cls in reversed(config_cls.__mro__):
        doc = cls.__dict__.get("__doc__") or ""
        _, found, args = doc.partition("Args:")
        if not found:
            continue
        entries: list[tuple[list[str], list[str]]] = []
        indent = None
        for line in args.splitlines():
            if not line.strip():
                continue
            depth = len(line) - len(line.lstrip())
            match = re.match(r"\s*([\w, ]+):\s(.*)", line)
            if match and (indent is None or depth == indent):
                indent = depth
                entries.append(([n.strip() for n in match.group(1).split(",")], [match.group(2)]))
            elif indent is not None and depth > indent:
                entries[-1][1].append(line.strip())
            else:
                break
        for names, text in entries:
            for name in names:
                meanings[name] = re.sub(r"[;,]? \(?see the module docstring\)?", "", " ".join(text)).replace("``", "")
    return meanings


def summary(config_cls: type) -> str:
    """The first line of the config class's own docstring, or else of its module's."""
    own = (config_cls.__dict__.get("__doc__") or "").strip()
    if own.startswith(f"{config_cls.__name__}(") or own.startswith("Args:"):
        own = ""
    text = own or (sys.modules[config_cls.__module__].__doc__ or "").strip()
    return text.split("\n\n")[0].replace("\n", " ").replace("``", "")


def write_manifest(path: Path = MANIFEST) -> None:
    """Rewrite ``manifest.py`` from :func:`build_manifest`."""
    lines = [HEADER]
    for key, value in build_manifest().items():
        lines.append(f"{key} = {pprint.pformat(value, width=110, sort_dicts=False)}\n")
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    write_manifest()
    print(f"wrote {MANIFEST}")
