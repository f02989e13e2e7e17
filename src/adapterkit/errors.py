"""Error messages that name the caller's parameters, spelt the way the caller gave them.

A message such as "name the columns with text_columns=" helps a Python caller and misleads a
command-line user, who gave ``--text-column``. A :class:`ParameterError` keeps its message as a
template in which each parameter is a field: ``str()`` spells the fields as Python keywords, and a
front end spells them its own way with :meth:`ParameterError.spell` (the command line: its flags).

Template fields: ``{name}`` is the parameter itself (``batch_size`` / ``--batch-size``),
``{name:=}`` the parameter to pass (``validation_file=`` / ``--validation-file``), ``{name:=value}``
the parameter given a value (``kind='classification'`` from ``{kind:='classification'}`` /
``--kind classification``). Other fields take the keyword values given to the error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ParameterError(ValueError):
    """A ``ValueError`` whose message names parameters (see the module docstring).

    Args:
        template: the message, with ``{name}``, ``{name:=}`` or ``{name:=value}`` fields for parameters.
        **values: the values of the template's other fields (paths, counts, ...).
    """

    def __init__(self, template: str, **values: Any):
        self.template = template
        self.values = values
        super().__init__(self.spell({}))

    def spell(self, names: Mapping[str, str]) -> str:
        """The message with each parameter spelt as ``names`` maps it (``{"batch_size": "--batch-size"}``)
        and as a Python keyword where ``names`` has no entry."""
        return self.template.format_map(_Fields(self.values, names))


class _Fields(dict):
    def __init__(self, values: Mapping[str, Any], names: Mapping[str, str]):
        super().__init__(values)
        self.names = names

    def __missing__(self, key: str) -> _Parameter:
        return _Parameter(key, self.names.get(key))


class _Parameter:
    def __init__(self, name: str, flag: str | None):
        self.name, self.flag = name, flag

    def __format__(self, spec: str) -> str:
        if not spec.startswith("="):
            return self.flag or self.name
        value = spec[1:]
        if self.flag is None:
            return f"{self.name}={value}"
        return f"{self.flag} {value.strip(chr(39) + chr(34))}" if value else self.flag
