"""Run config files: ``adapterkit train --config run.yaml``, and ``OUTPUT_DIR/config.yaml``.

A run config is a YAML (or JSON, by its ``.json`` suffix) mapping whose keys are a subcommand's
flags by their names with ``_`` (``batch_size: 16``, ``method: lora``; ``-`` is accepted too),
and whose values are what the flag takes: a number, a string, ``true``/``false`` for a switch, a
list for a repeatable flag (``option`` also as a mapping, ``{reduction_factor: 8}``). Before the
command line is parsed (:func:`apply_run_config`), the file's values become the parser's
defaults, so a flag given on the command line overrides its key; a key that names no flag is
refused with the nearest name. :func:`save_run_config` writes every flag's final value, so
``adapterkit train --config OUTPUT_DIR/config.yaml`` repeats the run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..data.tables import decode_text
from ..spelling import did_you_mean

RUN_CONFIG_FILE = "config.yaml"
#: Namespace entries that are no flag of the subcommand.
_NOT_FLAGS = ("help", "config", "func", "command", "argv", "config_keys")
#: Permissions one command line gave, saved switched off: repeating a run with its config.yaml
#: must not silently replace the run (or its store entry) that it repeats.
_PER_INVOCATION = {"overwrite": False, "resume": False, "replace_in_store": False}
#: Flags that read files or folders, saved absolute so the config repeats the run from any folder
#: (``model`` too when it names a local folder rather than a bundled model).
_INPUT_PATHS = ("model", "train_file", "validation_file", "test_file", "train_dir", "validation_dir", "test_dir",
                "knowledge", "stack_under")


def apply_run_config(build_parser: Callable[[], argparse.ArgumentParser], parser: argparse.ArgumentParser, argv: Sequence[str]) -> int | None:
    """Make the ``--config`` file's values the defaults of the subcommand ``argv`` names.

    Returns None when all is well (or there is no ``--config``), else 2 after printing the
    one-line error (an unreadable file, an unknown key, a value of the wrong type).
    """
    subparser = _subparser(parser, argv)
    if subparser is None:
        return None
    subparser.set_defaults(config_keys=_flags(subparser))
    try:
        path = _config_path(subparser, argv[1:])
        if path is None:
            return None
        values = _convert(subparser, read_run_config(path), path)
        given = _given(build_parser, argv)
        for group in subparser._mutually_exclusive_groups:  # a source given on the command line replaces the file's
            members = {action.dest for action in group._group_actions}
            if members & given:
                values = {k: v for k, v in values.items() if k not in members - given}
            if members & values.keys():
                group.required = False
        for action in subparser._actions:
            if action.dest in values:
                action.required = False
        subparser.set_defaults(**values)
    except (ValueError, FileNotFoundError) as error:
        print(f"adapterkit {argv[0]}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    return None


def read_run_config(path: Path) -> dict[str, Any]:
    """The mapping in a YAML or JSON run config.

    Raises:
        FileNotFoundError: no such file. ValueError: a folder, not UTF-8, not YAML/JSON, or not a mapping.
    """
    import yaml

    if path.is_dir():
        raise ValueError(f"--config {path}: is a folder; give a YAML or JSON file (a run's OUTPUT_DIR/config.yaml)")
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: file not found")
    text = decode_text(path.read_bytes(), f"--config {path}")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"--config {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path} must hold a mapping of flag names to values (e.g. epochs: 3)")
    return data


def save_run_config(args: argparse.Namespace, path: Path, resolved: dict[str, Any]) -> None:
    """Write every flag of ``args`` (``resolved`` overriding, for values the run derived) as YAML;
    ``--overwrite``, ``--resume`` and ``--replace-in-store`` as false, input paths absolute."""
    import yaml

    resolved = {**resolved, **{k: v for k, v in _PER_INVOCATION.items() if k in args.config_keys}}
    for key in _INPUT_PATHS:
        if key in args.config_keys and key not in resolved:
            resolved[key] = _absolute(getattr(args, key))
    values = {key: resolved.get(key, getattr(args, key)) for key in args.config_keys}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({k: _plain(k, v) for k, v in values.items()}, sort_keys=False), encoding="utf-8")


# ----------------------------------------------------------------------------- helpers
def _subparser(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.ArgumentParser | None:
    """The subcommand's parser, if ``argv`` names one that takes ``--config``."""
    if not argv:
        return None
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        sub = action.choices.get(argv[0]) if isinstance(action, argparse._SubParsersAction) else None
        if sub is not None and any(a.dest == "config" for a in sub._actions):
            return sub
    return None


def _flags(subparser: argparse.ArgumentParser) -> tuple[str, ...]:
    return tuple(a.dest for a in subparser._actions if a.dest not in _NOT_FLAGS and a.dest != argparse.SUPPRESS)


def _config_path(subparser: argparse.ArgumentParser, argv: Sequence[str]) -> Path | None:
    probe = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    probe.add_argument("--config", type=Path)
    return probe.parse_known_args(list(argv))[0].config


def _given(build_parser: Callable[[], argparse.ArgumentParser], argv: Sequence[str]) -> set[str]:
    """The flags given on the command line (by a parse that has no defaults and requires nothing)."""
    sub = _subparser(build_parser(), argv)
    for action in sub._actions:
        action.default, action.required = argparse.SUPPRESS, False
    for group in sub._mutually_exclusive_groups:
        group.required = False
    sub._defaults.clear()
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):  # the real parse reports
        try:
            namespace = sub.parse_known_args(list(argv[1:]))[0]
        except SystemExit:
            return set()
    return {key for key in vars(namespace) if key not in _NOT_FLAGS}


def _convert(subparser: argparse.ArgumentParser, data: dict[str, Any], path: Path) -> dict[str, Any]:
    """The file's values as the parser would produce them, keyed by flag name."""
    actions = {a.dest: a for a in subparser._actions if a.dest not in _NOT_FLAGS and a.dest != argparse.SUPPRESS}
    values = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in actions:
            raise ValueError(
                f"--config {path}: unknown key {raw_key!r}{did_you_mean(key, actions)}; the keys are the flags' names "
                f"with _ (see adapterkit {subparser.prog.split()[-1]} --help)"
            )
        values[key] = _value(actions[key], value, f"--config {path}: {key}")
    return values


def _value(action: argparse.Action, value: Any, where: str) -> Any:
    if value is None:
        return None
    if action.nargs == 0:  # a switch
        if not isinstance(value, bool):
            raise ValueError(f"{where} is a switch: give true or false, got {value!r}")
        return value
    if isinstance(action, argparse._AppendAction):
        if isinstance(value, dict):  # option: {key: value}
            value = [f"{k}={json.dumps(v)}" for k, v in value.items()]
        items = value if isinstance(value, list) else [value]
        return [_scalar(action, item, where) for item in items]
    if isinstance(value, list) and action.type is not None and not isinstance(value, str):
        value = ",".join(str(item) for item in value)  # a list flag written as one string (class_weights)
    return _scalar(action, value, where)


def _scalar(action: argparse.Action, value: Any, where: str) -> Any:
    convert = action.type or str
    if isinstance(value, bool) and convert is not bool:
        raise ValueError(f"{where} is not a switch, got {str(value).lower()} (YAML reads no/yes/off/on as false/true: quote them, 'no')")
    if convert in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (convert is int and not float(value).is_integer()):
            raise ValueError(f"{where} must be {'an integer' if convert is int else 'a number'}, got {value!r}")
        value = convert(value)
    else:
        try:
            value = convert(value if isinstance(value, str) else json.dumps(value) if convert is not str else str(value))
        except (argparse.ArgumentTypeError, ValueError) as error:
            raise ValueError(f"{where}: {error}") from None
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{where} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return value


def _absolute(value: Any) -> Any:
    """A path (or each of a list of paths) made absolute if it names something that exists."""
    if isinstance(value, (list, tuple)):
        return [_absolute(item) for item in value]
    if value is not None and Path(value).exists():
        return str(Path(value).resolve())
    return value


def _plain(key: str, value: Any) -> Any:
    """``value`` as YAML writes it and :func:`_value` reads it back."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        if key == "option":
            return [f"{k}={json.dumps(v)}" for k, v in value]
        return [_plain(key, item) for item in value]
    return value
