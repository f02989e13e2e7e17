"""The method registry: a method is a config dataclass plus a module class, registered by name.

Configs are frozen dataclasses validated in ``__post_init__`` and serialised with a type tag
(``{"method": "lora", ...}``), so a saved adapter says what it is and loads back into the same
config. Lists coming from JSON or the command line are normalised to tuples, keeping configs
hashable and comparable. Each config class carries the method's default learning rate and where
that figure comes from; each module class declares its capabilities (``merge``, ``fold``,
``fuse``, ``modifies_base``) instead of leaving them to ``hasattr``.

The built-in methods are registered in one place, ``adapterkit.methods`` (importing
``adapterkit`` or ``adapterkit.methods`` registers them); this module imports nothing of the
package, and a second registration under a taken name is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method config. Subclasses set ``method`` and add fields."""

    method: ClassVar[str] = ""
    default_learning_rate: ClassVar[float] = 1e-3
    """Peak learning rate (AdamW, linear decay with warmup) when a run does not set one."""
    learning_rate_source: ClassVar[str] = "a few fresh parameters on a frozen model: 1e-3 is the usual start"
    """Where :attr:`default_learning_rate` comes from (paper, peer library, our measurement)."""
    option_values: ClassVar[dict[str, tuple[Any, ...]]] = {}
    """The values a string option (or each item of a tuple option) may take, where they are a
    fixed set: for listings (``adapterkit methods``) and the command line's suggestions;
    :meth:`validate` refuses other values."""
    options_added_later: ClassVar[dict[str, Any]] = {}
    """Options added after adapters of this method had been saved without them, each with the value
    that keeps what such an adapter computes (read by :func:`config_from_saved`)."""

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


CAPABILITIES = ("merge", "fold", "fuse", "fusion", "modifies_base", "knowledge")
"""What a method's module class may declare in ``capabilities``: folded into the base weights
(LoRA), a training-only reparameterisation folded away (prefix MLP), fusable by AdapterFusion,
is itself an AdapterFusion over other adapters, trains base weights in place (full and partial
fine-tuning), reads the model's layers from outside and answers through a head over the
concatenation of the model's and its plug-ins' outputs (K-Adapter: ``k_adapter``, ``k_task``)."""


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its config class and its module class."""

    config_cls: type[MethodConfig]
    module_cls: type  # an adapterkit.methods.base.AdapterMethod subclass

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(getattr(self.module_cls, "capabilities", frozenset()))


REGISTRY: dict[str, MethodSpec] = {}


def register_method(config_cls: type[MethodConfig], module_cls: type) -> None:
    """Register a method under ``config_cls.method``.

    Raises:
        ValueError: the config class names no method, the name is taken, or the module class
            declares an unknown capability.
    """
    name = config_cls.method
    if not name:
        raise ValueError(f"{config_cls.__name__} must set the class attribute 'method'")
    if name in REGISTRY:
        raise ValueError(
            f"a method named {name!r} is registered already ({REGISTRY[name].config_cls.__name__}); "
            "give the new config class another 'method' name"
        )
    unknown = set(getattr(module_cls, "capabilities", ())) - set(CAPABILITIES)
    if unknown:
        raise ValueError(f"{module_cls.__name__} declares unknown capabilities {sorted(unknown)}; known: {CAPABILITIES}")
    REGISTRY[name] = MethodSpec(config_cls, module_cls)


def unregister_method(name: str) -> None:
    """Remove method ``name`` (a method registered by a test or a plug-in)."""
    REGISTRY.pop(name, None)


def methods_with(capability: str) -> list[str]:
    """The registered methods whose module class declares ``capability``, sorted."""
    return sorted(name for name, spec in REGISTRY.items() if capability in spec.capabilities)


def method_spec(name: str) -> MethodSpec:
    """The registered method ``name``.

    Raises:
        ValueError: no method of that name (the message lists the registered ones).
    """
    if name not in REGISTRY:
        if not REGISTRY:
            raise ValueError(
                f"unknown method {name!r}: no method is registered yet; import adapterkit.methods "
                "(or use adapterkit.make_config, which does)"
            )
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


def config_from_saved(data: dict[str, Any]) -> MethodConfig:
    """:func:`config_from_dict` for the config of a saved adapter, which may have been written
    before some options existed: those take their :attr:`MethodConfig.options_added_later` value
    (in a union's member configs too), so the adapter computes what it did when it was saved."""
    return config_from_dict(_fill_added_options(data))


def _fill_added_options(data: dict[str, Any]) -> dict[str, Any]:
    members = {
        key: [_fill_added_options(m) if isinstance(m, dict) and "method" in m else m for m in value]
        for key, value in data.items()
        if isinstance(value, list)
    }
    later = method_spec(data["method"]).config_cls.options_added_later if "method" in data else {}
    return {**later, **data, **members}
