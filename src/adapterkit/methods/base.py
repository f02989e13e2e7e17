"""The base class of every method's module, and helpers shared by the method files."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from torch import nn

from ..placement import ResolvedModel
from ..registry import MethodConfig
from ..sites import Site, SiteModule

if TYPE_CHECKING:
    from ..model import AdapterModel


class AdapterMethod(nn.Module):
    """One adapter of one method on one model.

    It owns the modules it attaches at sites (stored as ``layers.<i>.<position>`` so saved keys
    read like the model) and may name base parameters it trains in place (full and partial
    fine-tuning). Freezing, saving and counting are derived from these two declarations.
    """

    modifies_base = False  # True when base parameters are trained in place (full, partial)

    def __init__(self, config: MethodConfig, parts: ResolvedModel, sites: dict[str, Site]):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleDict()
        self._sites: dict[tuple[int, str], Site] = {}

    def attach(self, site: Site, module: SiteModule) -> None:
        key = str(site.layer)
        if key not in self.layers:
            self.layers[key] = nn.ModuleDict()
        self.layers[key][site.position] = module
        self._sites[(site.layer, site.position)] = site

    def attachments(self) -> Iterator[tuple[Site, SiteModule]]:
        for (layer, position), site in self._sites.items():
            yield site, self.layers[str(layer)][position]

    def base_parameters(self) -> dict[str, nn.Parameter]:
        """Base-model parameters (by their name in the base model) that this method trains."""
        return {}

    def bind(self, model: AdapterModel, name: str) -> None:
        """Called by the model once this adapter is on it as ``name`` (its sites attached).

        Methods that act outside sites install their hooks here (prefixes on attention, prompts
        on the input, see ``attention.py`` and ``methods/prompt.py``), reading the active setup
        through ``model.current_setup()``; initialisations that need the model or its tokenizer
        run here too. The default does nothing.
        """

    def unbind(self, model: AdapterModel, name: str) -> None:
        """Undo :meth:`bind` (also after a partial one); called when the adapter is deleted."""


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
