"""What the peer-format converters know of a model, as plain data, and what they produce.

peft and AdapterHub name what they adapt by module paths of the task model
(``bert.encoder.layer.0.attention.self.query``); adapterkit by sites (``0.q``). The facade
resolves the loaded base once into a :class:`ModelLayout`: every base module that is (or holds) a
site, by its name in the loaded model, with plain :class:`SiteRef` values. The converters in
``peft.py`` and ``adapterhub.py`` map names through it and never see a module, so they are pure
functions of configs, tensors and this layout (torchtune's ``convert_weights.py`` style).

A conversion yields one :class:`Converted` per adapter: adapterkit's method config and head
config as dicts, and the tensors under adapterkit's saved keys (``adapter.layers.<i>.<position>...``,
``head....``). What has no exact adapterkit equivalent raises :class:`NotConvertible`, naming
the option.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


class NotConvertible(ValueError):
    """A peer adapter (or an adapterkit adapter bound for a peer format) with an option or a
    tensor that has no exact equivalent on the other side; the message names it."""


@dataclass(frozen=True)
class SiteRef:
    """One adapterkit site, as data.

    Attributes:
        kind: ``linear``, ``sublayer``, ``norm``, ``attention``, ``input``.
        layer: the layer index (-1 for ``input``).
        position: the site's position (``q``, ``ffn_in_1``, ``ffn``, ``attention``, ...).
        role: linear sites: the projection's role (``ffn_in`` for ``ffn_in_1`` too).
    """

    kind: str
    layer: int
    position: str
    role: str = ""


@dataclass(frozen=True)
class ModelLayout:
    """A loaded base model, as the converters see it.

    Attributes:
        model_type: ``config.model_type``.
        num_layers, hidden_size: of the transformer.
        kv_width: the width of a layer's keys and values (a prefix's ``d_kv``).
        decoder: a causal decoder loaded with its LM head (its module names start at the task
            model: ``model.layers.0...``, ``lm_head``); an encoder is loaded bare
            (``encoder.layer.0...``), so task models' names carry ``base_prefix`` in front.
        norm_first: pre-LN layers (``x + f(LN(x))``, Llama).
        base_prefix: the attribute that holds the body in the family's task models (``bert``).
        modules: module name in the loaded model -> the sites it is: a projection's linear site,
            a sublayer's container (the parent of its output dropout: ``encoder.layer.0.output``,
            where AdapterHub keeps the sublayer's adapters) for its sublayer site, the attention
            module for its attention site, the token embedding for the input site.
        positions: ``(layer, role)`` -> the positions of the projections playing it there
            (``ffn_in`` on Llama: ``ffn_in``, ``ffn_in_1``).
        pooler: the base's pooler module (BERT's ``pooler``: ``tanh(dense(h[:, 0]))``), which only
            ``pooler_output`` reads and task heads build on; None when the base has none.
        config: the base's transformers config as a dict (head sizes, dropout rates).
        base_tensors: the base's parameters by name (values of frozen weights a peer saves
            trained copies of, e.g. biases, or builds a head from, e.g. BERT's pooler).
    """

    model_type: str
    num_layers: int
    hidden_size: int
    kv_width: int
    decoder: bool
    base_prefix: str
    norm_first: bool
    modules: Mapping[str, tuple[SiteRef, ...]]
    positions: Mapping[tuple[int, str], tuple[str, ...]]
    pooler: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    base_tensors: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def site(self, path: str, kind: str) -> SiteRef | None:
        """The ``kind`` site of the module a peer names ``path`` (a task-model path: the body's
        ``base_prefix`` in front is allowed), or None when that module is no such site."""
        for name in (path, path.removeprefix(f"{self.base_prefix}.")):
            for ref in self.modules.get(name, ()):
                if ref.kind == kind:
                    return ref
        return None

    def name_of(self, ref: SiteRef) -> str:
        """The module name (in the loaded model) of site ``ref``.

        Raises:
            KeyError: no module of this layout is that site.
        """
        for name, refs in self.modules.items():
            if ref in refs:
                return name
        raise KeyError(ref)

    def task_path(self, name: str, wrapped: bool) -> str:
        """``name`` as a task model of the family names it: with ``base_prefix`` in front for an
        encoder inside a task model (``wrapped``), as it is otherwise."""
        return f"{self.base_prefix}.{name}" if wrapped and not self.decoder and self.base_prefix else name

    def all_layers(self, layers: Iterable[int]) -> tuple[int, ...] | None:
        """``layers`` as a method's ``layers`` option: None when it is every layer."""
        chosen = tuple(sorted(set(layers)))
        return None if chosen == tuple(range(self.num_layers)) else chosen


@dataclass
class Converted:
    """One adapter in adapterkit's terms.

    Attributes:
        name: the adapter's name.
        config: the method config as ``MethodConfig.to_dict`` writes it (``{"method": ...}``).
        head: ``HeadConfig`` fields, or None.
        tensors: by adapterkit saved key (``adapter....``, ``head....``).
        notes: what the conversion left out and why (shown as warnings), e.g. a LoRA on BERT's
            pooler when the adapter has no head (it acts only on ``pooler_output``).
    """

    name: str
    config: dict[str, Any]
    head: dict[str, Any] | None
    tensors: dict[str, torch.Tensor]
    notes: list[str] = field(default_factory=list)


def members_by_layers(pairs: Iterable[tuple[int, str]], order: Iterable[str]) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
    """Split a set of ``(layer, role)`` into ``(roles, layers)`` products, one per distinct set of
    layers (roles sorted as in ``order``, groups in the order of their first role): what one
    method config with ``targets=roles, layers=layers`` each covers exactly.

    Example: ``{(0, q), (1, q), (1, k)}`` -> ``[((q,), (0, 1)), ((k,), (1,))]``.
    """
    layers_of: dict[str, set[int]] = {}
    for layer, role in pairs:
        layers_of.setdefault(role, set()).add(layer)
    groups: dict[tuple[int, ...], list[str]] = {}
    for role in (r for r in order if r in layers_of):
        groups.setdefault(tuple(sorted(layers_of[role])), []).append(role)
    return [(tuple(roles), layers) for layers, roles in groups.items()]


@dataclass
class Member:
    """One method of an adapter: its config dict and its tensors, keyed as the method's module
    names them (``layers.0.q.lora_A``, ``prompt``)."""

    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def member_keys(methods: Iterable[str]) -> list[str]:
    """The keys a union gives its members (``UnionAdapter``): the method's name, then ``_2``,
    ``_3``, ... for repeats."""
    keys: list[str] = []
    for method in methods:
        key, n = method, 1
        while key in keys:
            n += 1
            key = f"{method}_{n}"
        keys.append(key)
    return keys


def assemble(members: list[Member]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, saved tensors) of an adapter made of ``members``: the member itself when alone,
    else a ``union`` of them (tensors under ``adapter.components.<key>.``)."""
    if len(members) == 1:
        return members[0].config, {f"adapter.{k}": t for k, t in members[0].tensors.items()}
    keys = member_keys(m.config["method"] for m in members)
    tensors = {f"adapter.components.{key}.{k}": t for key, m in zip(keys, members) for k, t in m.tensors.items()}
    return {"method": "union", "configs": [m.config for m in members]}, tensors


def split_members(config: dict[str, Any], tensors: Mapping[str, torch.Tensor]) -> list[Member]:
    """The inverse of :func:`assemble`: the members of a saved adapter (its ``adapter.`` tensors;
    ``head.`` ones are left out), one for a plain method, each member of a ``union``."""
    own = {k.removeprefix("adapter."): t for k, t in tensors.items() if k.startswith("adapter.")}
    if config["method"] != "union":
        return [Member(config, own)]
    keys = member_keys(c["method"] for c in config["configs"])
    return [
        Member(c, {k.removeprefix(f"components.{key}."): t for k, t in own.items() if k.startswith(f"components.{key}.")})
        for key, c in zip(keys, config["configs"])
    ]


def prefix_values(tensors: dict[str, torch.Tensor], config: dict[str, Any], layout: ModelLayout) -> torch.Tensor:
    """Every layer's prefix keys and values, ``(l, layers, 2, d_kv)``, from a ``prefix`` member's
    tensors: its plain prefixes, or what its reparameterisation MLP computes (``methods/prefix.py``:
    ``up(tanh(down(embedding)))``)."""
    if config.get("reparameterize", True):
        hidden = torch.tanh(torch.nn.functional.linear(tensors["reparam.embedding"], tensors["reparam.down.weight"], tensors["reparam.down.bias"]))
        out = torch.nn.functional.linear(hidden, tensors["reparam.up.weight"], tensors["reparam.up.bias"])
        return out.detach().view(out.shape[0], layout.num_layers, 2, -1)
    layers = [torch.stack([tensors[f"layers.{i}.prefix.key"], tensors[f"layers.{i}.prefix.value"]], dim=1) for i in range(layout.num_layers)]
    return torch.stack(layers, dim=1)
