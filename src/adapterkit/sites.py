"""Sites: the places in a frozen model where adapters act, and the hooks that dispatch to them.

A *site* is one spot of one layer. Three kinds transform a module's output,

    out' = f(x, out)

from the site's output ``out`` and its input ``x``:

* ``linear``: a projection (``3.q``, ``3.ffn_out``); ``x`` is its input.
* ``sublayer``: a sublayer's output after its output dropout, before the residual add (``3.attn``,
  ``3.ffn``, ``3.cross_attn``): the output of the dropout module the placement names
  (``Placement.ffn_dropout``), or of the last projection where the family has none. ``x`` is
  the input of its *first* projection, which is what parallel adapters read; the sublayer's
  *residual input* (the ``x`` of ``x + h``) is there too for the modules that read it
  (``needs_residual``): the same tensor on post-LN models, the input of the sublayer's norm on
  pre-LN ones.
* ``norm``: a layer norm's output (``3.attn_norm``); ``x`` is the norm's input.

and three kinds change what the sequence or the attention holds, read by the hooks of
``attention.py`` and ``sequence.py`` instead of an output hook:

* ``attention``: the attention module of a layer (``3.attention``): prefixes of keys and values.
* ``input``: the input of the model body (``input``): prompt vectors in front of the tokens.
* ``layer_input``: the input of one layer (``3.layer_input``): deep prompts replacing positions.

Each site knows its feature ``width`` and ``layout`` (``sequence``: ``(batch, seq, width)``;
``image``: ``(batch, width, H, W)``).

A CNN (``placement.ConvPlacement``) has output sites only, per block: ``linear`` sites on its
convolutions (``3.project``: a convolution is a linear map; ``x`` its input), ``norm`` sites on
their BatchNorms (``3.project_norm``; ``x`` the convolution's output) and one ``sublayer`` site
``3.block``: the output of the block's last convolution, with the block's input as ``x`` (the
input a parallel residual adapter reads; Rebuffi et al. 2018).

The base model is never edited or re-wrapped: one forward hook per base module applies whatever
is attached there, so base weights keep their names and values. What runs in a forward pass is
decided by the bound setup of the pass in flight (``context.current(router).setup``, see
``execution.py``); outside a pass (a direct call of the base model) the hooks do nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from . import context
from .placement import LINEAR_ROLES, SUBLAYERS, ConvPlacement, ResolvedModel, norm_role

OUTPUT_KINDS = ("linear", "sublayer", "norm")
"""Site kinds whose modules transform a module's output (applied by the router's hooks)."""
SEQUENCE_KINDS = ("attention", "input", "layer_input")
"""Site kinds whose modules change the attention's keys or the sequence (see the module docstring)."""

# Order of application when several sites share one base module: a linear's own change (LoRA,
# bias deltas) comes before the sublayer adapter reading that linear's output.
_PRIORITY = {"linear": 0, "sublayer": 1, "norm": 2}


@dataclass(frozen=True, eq=False)
class Site:
    """One place in one layer where adapters can act.

    Attributes:
        layer: the layer index (across all stacks); -1 for the ``input`` site.
        position: ``q``, ``ffn_in_1``, ``attn``, ``ffn``, ``attn_norm``, ``attention``, ...
        kind: one of :data:`OUTPUT_KINDS` or :data:`SEQUENCE_KINDS`.
        output_module: the base module whose output the site changes (or whose call it concerns).
        input_module: the base module whose input is the site's ``x``.
        role: for linear sites, the role of the projection (``ffn_in`` for ``ffn_in_1`` too).
        width: features at the site (the last dimension of ``out``; channels for images).
        layout: ``sequence`` (``(batch, seq, width)``) or ``image`` (``(batch, width, H, W)``).
        residual_module: sublayer sites: the base module whose input is the sublayer's residual
            input (its first projection on post-LN models, its norm on pre-LN ones).
        norm: sublayer sites of post-LN models: the norm of the sublayer's Add & Norm, which
            follows the residual add (None on pre-LN models, whose norm precedes the sublayer).
    """

    layer: int
    position: str
    kind: str
    output_module: nn.Module
    input_module: nn.Module
    role: str = ""
    width: int = 0
    layout: str = "sequence"
    residual_module: nn.Module | None = None
    norm: nn.Module | None = None

    @property
    def key(self) -> str:
        return self.position if self.layer < 0 else f"{self.layer}.{self.position}"

    @property
    def priority(self) -> int:
        return _PRIORITY[self.kind]


class SiteInputs(NamedTuple):
    """What an output site's ops receive besides ``out``.

    Shapes: each ``(batch, seq, d_in)`` like the site's input, or None where no attached module
    reads it (then it is not captured).
    """

    input: torch.Tensor | None
    """``x``: the site module's input (a sublayer's first projection's input)."""
    residual: torch.Tensor | None = None
    """sublayer sites: the sublayer's residual input (the ``x`` of ``x + h``)."""

    def rows(self, part: slice) -> SiteInputs:
        """The same inputs for the rows ``part`` only."""
        return SiteInputs(*(None if t is None else t[part] for t in self))


class SiteModule(nn.Module):
    """A module attached at an output site: ``forward(x, out) -> out'``.

    ``needs_input`` says whether ``x`` (the site's input tensor) is read; ``needs_residual``
    (sublayer sites) whether the sublayer's residual input is read, and then ``x`` is the
    :class:`SiteInputs` pair instead (see :func:`site_input`). Sublayer sites capture only what
    some attached module reads. ``reads_base_weight`` says whether ``forward`` computes with the
    weight of the base projection at its site (DoRA's norm, IA3 on a projection's input): such a
    module cannot run beside another adapter merged into that weight.
    """

    needs_input: bool = False
    needs_residual: bool = False
    reads_base_weight: bool = False

    def forward(self, x: torch.Tensor | SiteInputs | None, out: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def fusion_query(self, x: torch.Tensor | SiteInputs | None, out: torch.Tensor) -> torch.Tensor:
        """The query of an AdapterFusion over this module at its site (``x`` as for ``forward``):
        the sublayer output as this module reads it. Default: ``out``."""
        return out

    def batch_key(self) -> object:
        """What must agree between modules of this class for one batched form to run them
        together (non-linearity, dropout in training, ...); see ``routing.py``."""
        return None

    @classmethod
    def batched(cls, modules: list[SiteModule | None]):
        """The batched form of several modules of this class at one site, for per-sample routing
        and ``Parallel``: returns ``forward(x, out, index) -> out'`` (see ``routing.py``)."""
        raise NotImplementedError(
            f"{cls.__name__} has no batched form, so adapters using it cannot be routed per sample "
            f"(Parallel falls back to one call per branch); implement {cls.__name__}.batched (see adapterkit/routing.py)"
        )


def site_input(module: SiteModule, x: SiteInputs) -> torch.Tensor | SiteInputs | None:
    """What ``module`` receives as ``x``: both inputs if it reads the residual, else the input."""
    return x if module.needs_residual else x.input


def _width(module: nn.Module) -> int:
    for name in ("out_features", "normalized_shape", "weight"):
        value = getattr(module, name, None)
        if isinstance(value, int):
            return value
        if isinstance(value, tuple):
            return value[-1]
        if isinstance(value, torch.Tensor):
            return value.shape[0]
    return 0


def enumerate_sites(parts: ResolvedModel) -> dict[str, Site]:
    """All sites of a resolved model, keyed by :attr:`Site.key`."""
    if isinstance(parts.placement, ConvPlacement):
        return _cnn_sites(parts)
    layout, norm_first = parts.placement.layout, parts.placement.norm_first
    sites: dict[str, Site] = {}

    def add(
        layer: int, position: str, kind: str, output: nn.Module, inputs: nn.Module, role: str = "", width: int = 0, **more
    ) -> None:
        site = Site(layer, position, kind, output, inputs, role, width or _width(output), layout, **more)
        sites[site.key] = site

    add(-1, "input", "input", parts.embeddings, parts.embeddings, width=parts.hidden_size)
    for layer in parts.layers:
        i = layer.index
        for role in LINEAR_ROLES:
            for k, module in enumerate(layer.role(role)):
                add(i, role if k == 0 else f"{role}_{k}", "linear", module, module, role)
        for sublayer, (first, last, norm, dropout) in SUBLAYERS.items():
            norm_module = layer.role(norm)[0] if layer.has(norm) else None
            if layer.has(first) and layer.has(last):
                first_module, last_module = layer.role(first)[0], layer.role(last)[0]
                add(
                    i, sublayer, "sublayer", (layer.role(dropout) or (last_module,))[0], first_module,
                    width=_width(last_module),
                    residual_module=norm_module if norm_first else first_module,
                    norm=None if norm_first else norm_module,
                )  # fmt: skip
            if norm_module is not None:
                add(i, norm, "norm", norm_module, norm_module, width=parts.hidden_size)
        q = layer.role("q")[0]
        attention = next(m for m in layer.layer.modules() if any(c is q for c in m.children()))
        add(i, "attention", "attention", attention, attention, width=layer.role("k")[0].out_features)
        add(i, "layer_input", "layer_input", layer.layer, layer.layer, width=parts.hidden_size)
    return sites


def _cnn_sites(parts: ResolvedModel) -> dict[str, Site]:
    """The sites of a CNN's blocks (see the module docstring); widths are channels."""
    sites: dict[str, Site] = {}
    roles = [role for role, _, _ in parts.placement.convs]
    for layer in parts.layers:
        i, found = layer.index, [r for r in roles if layer.has(r)]
        for role in found:
            conv, norm = layer.role(role)[0], layer.role(norm_role(role))[0]
            for site in (
                Site(i, role, "linear", conv, conv, role, conv.out_channels, "image"),
                Site(i, norm_role(role), "norm", norm, norm, "", norm.num_features, "image"),
            ):
                sites[site.key] = site
        last = layer.role(found[-1])[0]
        block = Site(i, "block", "sublayer", last, layer.layer, "", last.out_channels, "image", norm=layer.role(norm_role(found[-1]))[0])
        sites[block.key] = block
    return sites


def role_sites(sites: dict[str, Site], layer: int, role: str) -> list[Site]:
    """The linear sites playing ``role`` in ``layer`` (Llama's ``ffn_in`` is gate and up)."""
    return [s for s in sites.values() if s.layer == layer and s.kind == "linear" and s.role == role]


class SiteRouter:
    """Holds what is attached at each site, by adapter name, and applies output sites' modules.

    Hooks are registered lazily, only on base modules that have something attached at an output
    site, and removed when the last attachment goes, so an unadapted module costs nothing. The
    hooks read the state of the pass in flight for this router (:func:`adapterkit.context.current`)
    and hand each site to its bound setup; outside a pass they do nothing. Sequence sites only
    record what is attached; ``attention.py`` and ``sequence.py`` hook them.
    """

    def __init__(self) -> None:
        self._attached: dict[Site, dict[str, nn.Module]] = {}
        self._sites_by_output: dict[nn.Module, list[Site]] = {}
        self._handles: dict[nn.Module, list[RemovableHandle]] = {}

    def attach(self, site: Site, adapter_name: str, module: nn.Module) -> None:
        self._attached.setdefault(site, {})[adapter_name] = module
        if site.kind in OUTPUT_KINDS:
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
                if site.kind in OUTPUT_KINDS:
                    self._sites_by_output[site.output_module].remove(site)
                    self._rehook(site)

    def attached(self, site: Site) -> dict[str, nn.Module]:
        """The modules attached at ``site``, by adapter name (read-only use)."""
        return self._attached.get(site, {})

    def sites(self) -> Iterator[Site]:
        """Every site with something attached."""
        return iter(self._attached)

    def kinds(self) -> set[str]:
        """The kinds of the sites with something attached."""
        return {site.kind for site in self._attached}

    def _rehook(self, site: Site) -> None:
        """(Re)register the hooks of the modules ``site`` touches to match what is attached."""
        for module in {site.output_module, site.input_module, site.residual_module} - {None}:
            for handle in self._handles.pop(module, []):
                handle.remove()
            handles = []
            if self._sites_by_output.get(module):
                handles.append(module.register_forward_hook(self._output_hook))
            keys = [key for key, source in self._captures() if source is module]
            if keys:
                handles.append(module.register_forward_pre_hook(self._make_capture_hook(keys)))
            if handles:
                self._handles[module] = handles

    def _captures(self) -> list[tuple[object, nn.Module]]:
        """(key in ``state.captured``, the module whose input it is) for every input some attached
        module reads that its site's output hook does not see: ``site`` for a sublayer's input,
        ``(site, "residual")`` for its residual input."""
        captures = []
        for site, modules in self._attached.items():
            if site.kind not in OUTPUT_KINDS:
                continue
            if site.input_module is not site.output_module and any(getattr(m, "needs_input", False) for m in modules.values()):
                captures.append((site, site.input_module))
            if site.residual_module is not None and any(getattr(m, "needs_residual", False) for m in modules.values()):
                captures.append(((site, "residual"), site.residual_module))
        return captures

    def _make_capture_hook(self, keys: list[object]):
        def capture(module: nn.Module, args: tuple) -> None:
            state = context.current(self)
            if state is not None:
                for key in keys:
                    state.captured[key] = args[0]

        return capture

    def _output_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        state = context.current(self)
        if state is None:
            return None
        for site in self._sites_by_output[module]:
            x = args[0] if site.input_module is module else state.captured.pop(site, None)
            inputs = SiteInputs(x, state.captured.pop((site, "residual"), None))
            output = state.setup.apply(site, inputs, output, state)
        return output
