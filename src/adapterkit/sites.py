"""Sites: the places in a frozen model where adapters act, and the hooks that dispatch to them.

A *site* is one spot of one layer: a linear projection (``3.q``, ``3.ffn_out``), a sublayer
(``3.attn``, ``3.ffn``: the output of its last projection, before the residual add) or a layer
norm (``3.attn_norm``). Every method is a set of small modules attached at sites, each computing

    out' = f(x, out)

from the site's output ``out`` and its input ``x`` (the input of the projection for linear
sites; the input of the sublayer's *first* projection for sublayer sites, which is what
parallel adapters read). The base model is never edited or re-wrapped: one forward hook per base
module applies whatever is attached there, so base weights keep their names and values, and a
checkpoint of the base model loads unchanged.

Which adapters run in a forward pass is decided by the active *setup* (see ``composition.py``):
the router hands each site's attached modules to it, and it combines them (stacking by default).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .placement import LINEAR_ROLES, ResolvedModel

if TYPE_CHECKING:
    from .composition import Setup

# Order of application when several sites share one base module: a linear's own change (LoRA,
# bias deltas) comes before the sublayer adapter reading that linear's output.
_PRIORITY = {"linear": 0, "sublayer": 1, "norm": 2}


@dataclass(frozen=True, eq=False)
class Site:
    """One place in one layer where adapters can act."""

    layer: int
    position: str  # "q", "ffn_in", "ffn_in_1", "attn", "ffn", "attn_norm", ...
    kind: str  # "linear", "sublayer" or "norm"
    output_module: nn.Module
    input_module: nn.Module
    role: str = ""  # for linear sites: the role of the projection ("ffn_in" for ffn_in_1 too)

    @property
    def key(self) -> str:
        return f"{self.layer}.{self.position}"

    @property
    def priority(self) -> int:
        return _PRIORITY[self.kind]


class SiteModule(nn.Module):
    """A module attached at a site: ``forward(x, out) -> out'``.

    ``needs_input`` says whether ``x`` is read; sublayer sites only capture the sublayer input
    when some attached module needs it.
    """

    needs_input: bool = False

    def forward(self, x: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def batched(cls, modules: list[SiteModule | None]):
        """The batched form of several modules of this class at one site, for per-sample routing
        and ``Parallel``: returns ``forward(x, out, index) -> out'`` (see ``routing.py``)."""
        raise NotImplementedError(
            f"{cls.__name__} has no batched form, so adapters using it cannot be routed per sample "
            f"(Parallel falls back to one call per branch); implement {cls.__name__}.batched (see adapterkit/routing.py)"
        )


def enumerate_sites(parts: ResolvedModel) -> dict[str, Site]:
    """All sites of a resolved model, keyed ``"<layer>.<position>"``."""
    sites: dict[str, Site] = {}

    def add(site: Site) -> None:
        sites[site.key] = site

    for layer in parts.layers:
        for role in LINEAR_ROLES:
            for k, module in enumerate(layer.role(role)):
                position = role if k == 0 else f"{role}_{k}"
                add(Site(layer.index, position, "linear", module, module, role))
        add(Site(layer.index, "attn", "sublayer", layer.role("o")[0], layer.role("q")[0]))
        add(Site(layer.index, "ffn", "sublayer", layer.role("ffn_out")[0], layer.role("ffn_in")[0]))
        for role in ("attn_norm", "ffn_norm"):
            norm = layer.role(role)[0]
            add(Site(layer.index, role, "norm", norm, norm))
    return sites


def role_sites(sites: dict[str, Site], layer: int, role: str) -> list[Site]:
    """The linear sites playing ``role`` in ``layer`` (Llama's ``ffn_in`` is gate and up)."""
    return [s for s in sites.values() if s.layer == layer and s.kind == "linear" and s.role == role]


class SiteRouter:
    """Holds what is attached at each site and applies it through forward hooks.

    ``setup_provider`` returns the setup of the forward pass in flight (or None: plain base
    model). Hooks are registered lazily, only on modules that have something attached, and
    removed when the last attachment goes, so an unadapted module costs nothing.
    """

    def __init__(self, setup_provider: Callable[[], Setup | None]):
        self._setup_provider = setup_provider
        self._attached: dict[Site, dict[str, SiteModule]] = {}
        self._sites_by_output: dict[nn.Module, list[Site]] = {}
        self._handles: dict[nn.Module, list[RemovableHandle]] = {}
        self._captured: dict[Site, torch.Tensor] = {}

    def attach(self, site: Site, adapter_name: str, module: SiteModule) -> None:
        self._attached.setdefault(site, {})[adapter_name] = module
        sites = self._sites_by_output.setdefault(site.output_module, [])
        if site not in sites:
            sites.append(site)
            sites.sort(key=lambda s: s.priority)
        self._rehook(site)

    def detach(self, adapter_name: str) -> None:
        for site in list(self._attached):
            modules = self._attached[site]
            if modules.pop(adapter_name, None) is not None and not modules:
                del self._attached[site]
                self._sites_by_output[site.output_module].remove(site)
                self._rehook(site)

    def attached(self, site: Site) -> dict[str, SiteModule]:
        return self._attached.get(site, {})

    def sites(self) -> Iterator[Site]:
        return iter(self._attached)

    def _rehook(self, site: Site) -> None:
        """(Re)register the hooks of the modules ``site`` touches to match what is attached."""
        for module in {site.output_module, site.input_module}:
            for handle in self._handles.pop(module, []):
                handle.remove()
            handles = []
            if self._sites_by_output.get(module):
                handles.append(module.register_forward_hook(self._output_hook))
            capture = [s for s in self._capturing_sites() if s.input_module is module]
            if capture:
                handles.append(module.register_forward_pre_hook(self._make_capture_hook(capture)))
            if handles:
                self._handles[module] = handles

    def _capturing_sites(self) -> list[Site]:
        return [
            s
            for s, modules in self._attached.items()
            if s.input_module is not s.output_module and any(m.needs_input for m in modules.values())
        ]

    def _make_capture_hook(self, sites: list[Site]):
        def capture(module: nn.Module, args: tuple) -> None:
            if self._setup_provider() is not None:
                for site in sites:
                    self._captured[site] = args[0]

        return capture

    def _output_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        setup = self._setup_provider()
        if setup is None:
            return None
        for site in self._sites_by_output[module]:
            x = args[0] if site.input_module is module else self._captured.pop(site, None)
            output = setup.apply(site, self._attached[site], x, output)
        return output
