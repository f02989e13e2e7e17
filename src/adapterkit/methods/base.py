"""The base class of every method's module, what it sees of its model, and what it owns.

A method's module is built from its config and a :class:`BindContext`: the model's resolved
parts and sites, the adapter's name, head and the tokenizer, a helper that records the plain base
model's activations (for initialisations from real tokens), and a read-only view of the other
adapters. It attaches small modules at sites (:meth:`AdapterMethod.attach`); the model routes
them. It never holds the model.

**What an adapter owns** is declared once, by :meth:`AdapterMethod.owned_state`: its modules'
parameters and persistent buffers (BatchNorm running statistics are buffers), its head's, and the
base parameters it trains in place (full and partial fine-tuning). Freezing, counting, saving,
the FSDP ignore list and the ``transformers.Trainer`` callback are all derived from it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..composition import ModelView
from ..heads import HeadConfig
from ..placement import ResolvedModel
from ..registry import MethodConfig
from ..sites import Site


@dataclass(frozen=True)
class BindContext:
    """What a method sees of the model it is added to.

    Attributes:
        parts: the resolved model (layers, roles, embeddings, hidden size).
        sites: every site of the model, by key.
        name: the adapter's name.
        tokenizer: the model's tokenizer (None if it has none).
        head: the adapter's head config (None: no head).
        record: ``record(modules, inputs=False, **model_inputs) -> [tensor per module]``: run the
            plain base model (eval mode, no adapter) on one example and return what each module
            produced (or, with ``inputs=True``, received).
        view: the adapters already on the model (a fusion reads where its adapters act).
        adapters: the modules of the adapters already on the model, by name, for reading only (a
            K-Adapter task head that retrains knowledge adapters copies their networks).
    """

    parts: ResolvedModel
    sites: Mapping[str, Site]
    name: str
    tokenizer: Any = None
    head: HeadConfig | None = None
    record: Callable[..., list[torch.Tensor]] | None = None
    view: ModelView | None = None
    adapters: Mapping[str, nn.Module] = field(default_factory=dict)


@dataclass
class OwnedState:
    """Everything one adapter owns, by saved key (``adapter.``, ``head.``, ``base.`` prefixes).

    Attributes:
        parameters: what trains: its modules', its head's, and base parameters it trains.
        buffers: persistent buffers of its modules and head (saved and loaded, never trained).
    """

    parameters: dict[str, nn.Parameter] = field(default_factory=dict)
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers: what a save writes and a load fills."""
        return {**self.parameters, **self.buffers}


def _module_state(prefix: str, module: nn.Module, state: OwnedState) -> None:
    params = dict(module.named_parameters())
    state.parameters.update({f"{prefix}.{k}": p for k, p in params.items()})
    for key, value in module.state_dict(keep_vars=True).items():
        if key not in params:
            state.buffers[f"{prefix}.{key}"] = value


class AdapterMethod(nn.Module):
    """One adapter of one method on one model.

    It owns the modules it attaches at sites (stored as ``layers.<i>.<position>`` so saved keys
    read like the model) and may name base parameters it trains in place (full and partial
    fine-tuning). ``capabilities`` declares what the registry and the model may ask of it (see
    ``registry.CAPABILITIES``).
    """

    capabilities: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: MethodConfig, ctx: BindContext):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleDict()
        self._sites: dict[tuple[int, str], Site] = {}

    def attach(self, site: Site, module: nn.Module, key: str | None = None) -> None:
        """Own ``module`` as ``layers.<layer>.<key>`` (default key: the site's position) and attach
        it at ``site`` (the model hooks it when the adapter is added)."""
        layer = str(site.layer)
        if layer not in self.layers:
            self.layers[layer] = nn.ModuleDict()
        self.layers[layer][key or site.position] = module
        self._sites[(site.layer, key or site.position)] = site

    def attachments(self) -> Iterator[tuple[Site, nn.Module]]:
        for (layer, key), site in self._sites.items():
            yield site, self.layers[str(layer)][key]

    def base_parameters(self) -> dict[str, nn.Parameter]:
        """Base-model parameters (by their name in the base model) that this method trains."""
        return {}

    def base_buffers(self) -> dict[str, torch.Tensor]:
        """Base-model buffers (by name) that training this method changes: the running statistics
        of the base BatchNorms it trains (full and partial fine-tuning of a CNN)."""
        return {}

    def head_width(self, hidden_size: int) -> int:
        """Features per position the adapter's head reads: the model's ``hidden_size``, or more
        where the head also reads plug-ins outside the model (K-Adapter, ``kadapter.py``)."""
        return hidden_size

    def readers(self, adapters: Mapping[str, AdapterMethod]) -> tuple[nn.Module, ...]:
        """The plug-ins outside the model whose outputs this adapter's head reads beside the last
        hidden state, in order, given the model's adapters by name (``execution.BoundSetup``
        runs them): K-Adapter's knowledge networks; none for a method acting inside the model."""
        return ()

    def owned_state(self, head: nn.Module | None = None) -> OwnedState:
        """Everything this adapter (with ``head``) owns; see the module docstring."""
        state = OwnedState()
        _module_state("adapter", self, state)
        if head is not None:
            _module_state("head", head, state)
        state.parameters.update({f"base.{k}": p for k, p in self.base_parameters().items()})
        state.buffers.update({f"base.{k}": b for k, b in self.base_buffers().items()})
        return state


_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def require_adapter_names(method: str, names: tuple[str, ...], example: str) -> None:
    """Check the other adapters a method reads (a fusion's members, a K-Adapter task's knowledge
    adapters): at least one, each a plain adapter name, none twice.

    Raises:
        ValueError: naming the method and the offending names; ``example`` shows a valid value.
    """
    if not names:
        raise ValueError(f"{method}: name the adapters it reads, e.g. adapters={example}")
    bad = [a for a in names if not isinstance(a, str) or not _ADAPTER_NAME.match(a)]
    if bad:
        raise ValueError(f"{method}: {bad} are not adapter names")
    if len(set(names)) != len(names):
        raise ValueError(f"{method}: adapters {names} name an adapter twice")


def select_layers(layers: tuple[int, ...] | None, num_layers: int, method: str) -> tuple[int, ...]:
    """Validate a ``layers=`` option (None = every layer; negative indices count from the top)."""
    if layers is None:
        return tuple(range(num_layers))
    chosen = []
    for index in layers:
        if not -num_layers <= index < num_layers:
            raise ValueError(
                f"{method}: layer {index} does not exist; the model has {num_layers} layers (0..{num_layers - 1})"
            )
        chosen.append(index % num_layers)
    return tuple(sorted(set(chosen)))


def require_transformer(ctx: BindContext, method: str) -> None:
    """Refuse a CNN for a method that works on a transformer's token sequences."""
    if ctx.parts.placement.layout == "image":
        raise ValueError(
            f"{method} works on a transformer's token sequences; this {ctx.parts.model_type!r} model is a CNN "
            "(use residual, residual_parallel, bitfit, probe, or lora with targets naming its convolutions there)"
        )
