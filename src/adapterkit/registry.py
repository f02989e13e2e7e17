"""The method registry: a method is a config dataclass plus a module class, registered by name.

Configs are frozen dataclasses validated in ``__post_init__`` and serialised with a type tag
(``{"method": "lora", ...}``), so a saved adapter says what it is and loads back into the same
config. Lists coming from JSON or the command line are normalised to tuples, keeping configs
hashable and comparable.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import types
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .methods.base import AdapterMethod


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method config. Subclasses set ``method`` and add fields."""

    method: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        self._check_types()
        self.validate()

    def _check_types(self) -> None:
        """Refuse an option of the wrong type (``"8"`` for an int) before ``validate`` compares it."""
        hints = _field_types(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _matches(value, hints[f.name]):
                expected = getattr(hints[f.name], "__name__", None) or str(hints[f.name])
                raise ValueError(
                    f"{self.method}: option {f.name} must be {expected}, got {value!r} ({type(value).__name__})"
                )

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad option and the fix; subclasses override."""

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dataclasses.asdict(self)}


@functools.cache
def _field_types(config_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(config_cls)


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the annotation ``hint`` (the forms configs use: scalars, ``X | None``,
    unions, ``tuple[X, ...]``); an int is a valid float, a bool is not a number."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(hint))
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, tuple) and all(_matches(v, item) for v in value)
    if hint is type(None):
        return value is None
    if hint in (int, float):
        return isinstance(value, int if hint is int else (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


@dataclass(frozen=True)
class MethodSpec:
    config_cls: type[MethodConfig]
    module_cls: type[AdapterMethod]


REGISTRY: dict[str, MethodSpec] = {}
#: Modules whose import registers the built-in methods (fusion lives beside composition).
_BUILT_IN_MODULES = ("adapterkit.methods", "adapterkit.fusion")


def register_method(config_cls: type[MethodConfig], module_cls: type[AdapterMethod]) -> None:
    """Register a method under ``config_cls.method``."""
    if not config_cls.method:
        raise ValueError(f"{config_cls.__name__} must set the class attribute 'method'")
    REGISTRY[config_cls.method] = MethodSpec(config_cls, module_cls)


def method_spec(name: str) -> MethodSpec:
    for module in _BUILT_IN_MODULES:  # registered on import; a no-op once imported
        importlib.import_module(module)
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; available methods: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def make_config(method: str, **options: Any) -> MethodConfig:
    """Build the config of ``method`` from keyword options, rejecting unknown options clearly."""
    config_cls = method_spec(method).config_cls
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"method {method!r} has no option(s) {', '.join(unknown)}; its options are: {', '.join(sorted(known))}"
        )
    return config_cls(**options)


def config_from_dict(data: dict[str, Any]) -> MethodConfig:
    """Inverse of :meth:`MethodConfig.to_dict`."""
    data = dict(data)
    method = data.pop("method", None)
    if method is None:
        raise ValueError("adapter config has no 'method' field; was it written by adapterkit?")
    return make_config(method, **data)
