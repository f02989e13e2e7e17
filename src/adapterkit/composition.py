"""Composition of adapters: which adapters run in a forward pass, and how they combine.

A *setup* is a small tree validated when it is built. At every site the router hands the setup
the modules attached there (keyed by adapter name) and the setup combines them:

* ``Stack(a, b)``: ``out -> a -> b``; the output of ``a`` feeds ``b`` (a language adapter under a
  task adapter, LoRA plus a bottleneck, ...). A single adapter name is a one-element stack.

Adapters that have nothing attached at a site (a Pfeiffer adapter at an attention site, a layer
excluded by ``layers=``) are skipped there.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .sites import Site, SiteModule


class Setup:
    """Base of all composition blocks."""

    def adapter_names(self) -> tuple[str, ...]:
        """Every adapter name the setup uses, in order."""
        raise NotImplementedError

    def head_name(self) -> str | None:
        """The adapter whose head produces the output (None: hidden states are returned)."""
        raise NotImplementedError

    def apply(
        self, site: Site, attached: Mapping[str, SiteModule], x: torch.Tensor | None, out: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError


class Stack(Setup):
    """Adapters applied one after the other at every site; the last one's head answers."""

    def __init__(self, *names: str):
        if not names:
            raise ValueError("Stack() needs at least one adapter name")
        if len(set(names)) != len(names):
            raise ValueError(f"Stack{names} names an adapter twice")
        self.names = tuple(names)

    def adapter_names(self) -> tuple[str, ...]:
        return self.names

    def head_name(self) -> str | None:
        return self.names[-1]

    def apply(self, site, attached, x, out):
        for name in self.names:
            module = attached.get(name)
            if module is not None:
                out = module(x, out)
        return out

    def __repr__(self) -> str:
        return f"Stack({', '.join(map(repr, self.names))})"


def as_setup(value: str | Setup | list[str] | tuple[str, ...]) -> Setup:
    """Accept an adapter name, a list of names (stacked) or a setup."""
    if isinstance(value, Setup):
        return value
    if isinstance(value, str):
        return Stack(value)
    if isinstance(value, (list, tuple)):
        return Stack(*value)
    raise TypeError(f"cannot use {value!r} as adapters: give a name, a list of names or a composition block")
