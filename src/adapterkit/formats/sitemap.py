"""Peer modules -> adapterkit sites and method configs, shared by the peft and AdapterHub readers.

Both peers save one set of tensors per adapted projection, named by its module path. adapterkit
adapts projections by role and layer: :func:`linear_site` resolves a path to its site,
:func:`check_whole_roles` refuses a role adapted in part (adapterkit adapts all projections of a
role together: Llama's ``gate_proj`` and ``up_proj`` are both ``ffn_in``), and
:func:`grouped_members` turns what was found into as few method configs as cover it exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any

import torch

from ..placement import LINEAR_ROLES
from .layout import Member, ModelLayout, NotConvertible, SiteRef, members_by_layers

MATRICES = ("lora_A", "lora_B")
"""adapterkit tensors kept 2-D; every other per-projection tensor is a vector (flattened)."""


def linear_site(layout: ModelLayout, path: str, method: str, where: str) -> SiteRef:
    """The linear site of the module a peer names ``path``.

    Raises:
        NotConvertible: the module is no projection adapterkit's ``method`` can adapt.
    """
    ref = layout.site(path, "linear")
    if ref is None:
        raise NotConvertible(
            f"{where}: the {method} adapter adapts {path!r}, which is not a projection adapterkit's {method} can "
            f"target (the attention and feed-forward projections of the layers: roles {', '.join(LINEAR_ROLES)})"
        )
    return ref


def check_whole_roles(found: dict[tuple[int, str], dict[str, Hashable]], layout: ModelLayout, method: str, where: str) -> None:
    """Refuse a role adapted in part, or with different settings on its projections.

    Args:
        found: ``(layer, role)`` -> ``{position: setting}`` of the adapted projections.

    Raises:
        NotConvertible: naming the layer, the role and its projections.
    """
    for (layer, role), by_position in found.items():
        missing = [p for p in layout.positions[(layer, role)] if p not in by_position]
        if missing or len(set(by_position.values())) > 1:
            raise NotConvertible(
                f"{where}: the {method} adapter treats the projections of role {role!r} in layer {layer} differently "
                f"({', '.join(layout.positions[(layer, role)])}: adapted with {by_position}); adapterkit's {method} "
                "adapts a role's projections together, with one setting"
            )


def site_tensors(
    layout: ModelLayout, roles: Iterable[str], layers: Iterable[int], placed: dict, names: dict[str, str]
) -> dict[str, torch.Tensor]:
    """``layers.<i>.<position>.<name>`` for every projection of ``roles`` in ``layers``, from the
    peer tensors ``placed[(layer, position)]`` renamed by ``names`` (vectors flattened: the peers
    keep some as ``(d, 1)`` or ``(1, d)``)."""
    out = {}
    for layer in layers:
        for role in roles:
            for position in layout.positions[(layer, role)]:
                for peer, ours in names.items():
                    tensor = placed[(layer, position)].get(peer)
                    if tensor is not None:
                        out[f"layers.{layer}.{position}.{ours}"] = tensor if ours in MATRICES else tensor.reshape(-1)
    return out


def grouped_members(
    found: dict[tuple[int, str], dict[str, Hashable]],
    placed: dict,
    layout: ModelLayout,
    names: dict[str, str],
    make_config: Callable[[Hashable, tuple[str, ...], tuple[int, ...] | None], dict[str, Any]],
) -> list[Member]:
    """One member per setting and set of layers, covering exactly the projections ``found``.

    Args:
        found: ``(layer, role)`` -> ``{position: setting}`` (checked whole by
            :func:`check_whole_roles`): a setting is what one config holds (LoRA's rank and alpha).
        placed: ``(layer, position)`` -> the peer's tensors of that projection.
        names: peer tensor name -> adapterkit's.
        make_config: ``(setting, roles, layers)`` -> the member's config dict (``layers`` None:
            every layer).
    """
    by_setting: dict[Hashable, set[tuple[int, str]]] = {}
    for pair, by_position in found.items():
        by_setting.setdefault(next(iter(by_position.values())), set()).add(pair)
    members = []
    for setting, pairs in sorted(by_setting.items(), key=lambda item: repr(item[0])):
        for roles, layers in members_by_layers(pairs, LINEAR_ROLES):
            config = make_config(setting, roles, layout.all_layers(layers))
            members.append(Member(config, site_tensors(layout, roles, layers, placed, names)))
    return members
