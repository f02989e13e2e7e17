"""Checks of the names a user types (method, task, method options and their values), made from
``manifest.py`` before torch is imported, so a typo fails in a fraction of a second and names the
closest valid name. The library checks everything again when it builds the config.

Option values arrive as ``parse_option`` made them (JSON where the text parses, else the text);
list options also take the forms people write: ``targets=q,v``, ``targets=[q,v]``, ``targets=q``.
"""

from __future__ import annotations

import json
from typing import Any

from .common import options_dict
from .manifest import METHODS, TASKS
from ..spelling import did_you_mean

UNION_EXAMPLE = """'configs=[{"method": "lora", "r": 4}, {"method": "pfeiffer", "reduction_factor": 32}]'"""
"""How a union's members are written on the command line: a JSON list of configs, each with its
``method`` and any of that method's options (quoted for the shell)."""


def check_method(name: str) -> dict[str, Any]:
    """The manifest entry of method ``name``.

    Raises:
        ValueError: no such method (naming the closest one and listing all).
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}{did_you_mean(name, METHODS)} (available methods: {', '.join(METHODS)})")
    return METHODS[name]


def check_task(name: str) -> None:
    """Raises ValueError if ``name`` is no task ``load_task`` knows (naming the closest one)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}{did_you_mean(name, TASKS)} (available tasks: {', '.join(TASKS)})")


def method_options(method: str, pairs: list[tuple[str, Any]] | None) -> dict[str, Any]:
    """``--option`` pairs as keyword options of ``method``: names checked, list options read from
    their written forms, types and fixed value sets checked.

    Raises:
        ValueError: an unknown method or option (naming the closest), an option given twice, a
            value of the wrong type (showing how to write one) or outside the option's values.
    """
    known = {option["name"]: option for option in check_method(method)["options"]}
    options = options_dict(pairs)
    unknown = [name for name in options if name not in known]
    if unknown:
        hint = did_you_mean(unknown[0], known)
        raise ValueError(
            f"method {method!r} has no option(s) {', '.join(unknown)}{hint} (its options: "
            f"{', '.join(sorted(known)) or 'none'}; see `adapterkit methods {method}`)"
        )
    return {name: _checked(method, known[name], value) for name, value in options.items()}


def _checked(method: str, option: dict[str, Any], given: Any) -> Any:
    kinds = option["type"].split(" | ")
    lists = [kind for kind in kinds if kind.startswith("tuple[")]
    value = _as_list(given, _item(lists[0])) if lists else given
    if not any(_fits(value, kind) for kind in kinds):
        raise ValueError(
            f"--option {option['name']}: {method} takes {option['type']}, written {syntax(option)}; got {given!r}"
        )
    allowed = option["values"]
    for item in value if isinstance(value, (tuple, list)) else (value,):
        if allowed is not None and isinstance(item, str) and item not in allowed:
            raise ValueError(
                f"--option {option['name']}: {item!r} is not one of {', '.join(allowed)}{did_you_mean(item, allowed)}"
            )
    return value


def _as_list(value: Any, item: str) -> Any:
    """``q,v``, ``[q,v]``, ``(q, v)``, ``q`` and ``4`` as tuples; other values unchanged."""
    if isinstance(value, list):
        return tuple(value)
    if item == "MethodConfig":
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (value,)
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text[:1] + text[-1:] in ("[]", "()"):
        text = text[1:-1]
    items = [part.strip().strip("'\"") for part in text.split(",") if part.strip()]
    return tuple(_scalar(part) if item != "str" else part for part in items)


def _item(kind: str) -> str:
    """``str`` of ``tuple[str, ...]``."""
    return kind[len("tuple["):-len(", ...]")]


def _scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _fits(value: Any, kind: str) -> bool:
    if kind.startswith("tuple["):
        return isinstance(value, tuple) and all(_fits(v, _item(kind)) for v in value)
    if kind == "MethodConfig":
        return isinstance(value, dict) and "method" in value
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    checks = {
        "None": value is None,
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": number,
        "str": isinstance(value, str),
    }
    return checks.get(kind, True)


def syntax(option: dict[str, Any]) -> str:
    """How a value of ``option`` is written after ``--option NAME=``, with an example."""
    name, kinds = option["name"], option["type"].split(" | ")
    example = {"bool": "true or false", "int": "a whole number", "float": "a number", "None": "null"}
    if "tuple[MethodConfig, ...]" in kinds:
        return f"as a JSON list of member configs, e.g. --option {UNION_EXAMPLE}"
    forms = []
    for kind in kinds:
        if kind.startswith("tuple["):
            items = option["values"] or (("4", "5") if "int" in kind else ("a", "b"))
            forms.append(f"a list: {name}={items[0]},{items[1]} or {name}=[{items[0]},{items[1]}] or one item")
        elif kind == "str":
            forms.append(f"one of {', '.join(option['values'])}" if option["values"] else "a word or text")
        else:
            forms.append(example.get(kind, kind))
    return " or ".join(forms)
