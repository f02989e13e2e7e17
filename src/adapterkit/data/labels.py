"""Turning raw labels (strings, ints, floats) into class ids or regression targets.

The mapping is fitted on training labels only and applied unchanged to validation and test, so a
label that training never saw is reported instead of silently getting a new id the head does not
have. Class names are sorted (numerically when they are all numbers) so the same data always
gives the same ids.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from adapterkit.data.task import CLASSIFICATION, REGRESSION
from adapterkit.errors import ParameterError


def as_number(label: object) -> float | None:
    """The label as a finite float, or None when it is not a number (booleans are not)."""
    if isinstance(label, bool) or not isinstance(label, (int, float, str)):
        return None
    try:
        value = float(label)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def class_name(label: object) -> str:
    """Canonical class name: integer-valued numbers lose their ".0" so 1, "1" and "1.0" agree."""
    number = as_number(label)
    if number is not None and number.is_integer():
        return str(int(number))
    return str(label).strip()


def infer_kind(labels: Iterable[object]) -> str:
    """Regression when every label is a number and some are fractional, else classification."""
    numbers = [as_number(label) for label in labels]
    fractional = [n for n in numbers if n is not None and not n.is_integer()]
    return REGRESSION if fractional and None not in numbers else CLASSIFICATION


@dataclass(frozen=True)
class LabelCodec:
    """Maps raw labels to what an :class:`~adapterkit.data.task.Example` stores."""

    kind: str
    names: tuple[str, ...]

    @classmethod
    def fit(
        cls, kind: str, labels: Iterable[object], names: tuple[str, ...] | None = None
    ) -> LabelCodec:
        """Collect the class names of `labels`; `names` fixes their order instead of sorting."""
        if kind == REGRESSION:
            return cls(kind, ())
        if names is None:
            found = {class_name(label) for label in labels}
            numeric = all(as_number(name) is not None for name in found)
            names = tuple(sorted(found, key=float if numeric else None))
        return cls(kind, names)

    def encode(self, label: object, where: str) -> int | float:
        """A class id or a float score; `where` ("FILE line N") locates a bad label."""
        if self.kind == REGRESSION:
            number = as_number(label)
            if number is None:
                raise ParameterError(
                    "label {label!r} in {where} is not a number, but the task is a regression; "
                    "fix the label or load the data with {kind:='classification'}", label=label, where=where
                )
            return number
        name = class_name(label)
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(
                f"unknown label {name!r} in {where}; train labels are {list(self.names)}"
            ) from None
