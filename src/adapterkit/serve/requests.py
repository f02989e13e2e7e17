"""What the engine is asked and what it answers, as plain values (no HTTP, no tensors).

Three kinds of request, each for one adapter setup and a list of inputs:

* :class:`ClassifyRequest`: a head's prediction per input; ``setup`` is an adapter name or any
  composition (``Parallel`` for several heads on one input, ``Stack``, ``Fuse``, ``AdapterDrop``).
* :class:`EmbedRequest`: the pooled final hidden states per input, under an adapter.
* :class:`CompleteRequest`: greedy continuations of prompts by a causal-LM adapter (a decoder).

Answers, one per input: :class:`ClassResult` (label and probability per label),
:class:`ValueResult` (a regression head's value), :class:`TaskResults` (one of those per task of a
``Parallel``), :class:`Embedding`, :class:`Completion`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..composition import Parallel, Routed, Setup, Stack

Text = str | tuple[str, str]
"""One input: a text, or a pair of texts (``[CLS] a [SEP] b [SEP]`` on BERT)."""


@dataclass(frozen=True)
class ClassifyRequest:
    """Args:
        setup: the checked-later setup (a name is ``Stack(name)``).
        inputs: texts or pairs, at least one.
        truncate: cut inputs longer than the model reads instead of refusing them.
    """

    setup: Setup
    inputs: tuple[Text, ...]
    truncate: bool = False


@dataclass(frozen=True)
class EmbedRequest:
    """Args:
        setup: the adapter (or a stack or fusion) the hidden states are computed under.
        inputs: texts or pairs.
        truncate: as :class:`ClassifyRequest`.
        normalize: scale each vector to unit length.
    """

    setup: Setup
    inputs: tuple[Text, ...]
    truncate: bool = False
    normalize: bool = True


@dataclass(frozen=True)
class CompleteRequest:
    """Args:
        setup: a causal-LM adapter (or a stack) on a decoder.
        inputs: prompts.
        max_tokens: most new tokens per prompt, >= 1.
        truncate: keep a prompt's last tokens when prompt plus ``max_tokens`` exceed the model's
            positions, instead of refusing it.
    """

    setup: Setup
    inputs: tuple[str, ...]
    max_tokens: int = 16
    truncate: bool = False


Request = ClassifyRequest | EmbedRequest | CompleteRequest


@dataclass(frozen=True)
class ClassResult:
    """A classification head's answer: the top label and the probability of each label (softmax
    in float32, label order of the head)."""

    label: str
    scores: dict[str, float]


@dataclass(frozen=True)
class ValueResult:
    """A regression head's answer."""

    value: float


@dataclass(frozen=True)
class TaskResults:
    """One answer per task (head name) of a setup with several heads (``Parallel``)."""

    tasks: dict[str, ClassResult | ValueResult]


@dataclass(frozen=True)
class Embedding:
    """Pooled final hidden states, ``hidden_size`` floats, and the tokens the input took."""

    vector: list[float]
    tokens: int


@dataclass(frozen=True)
class Completion:
    """A continuation: its text, its token ids, the prompt's tokens, and why it ended (``stop``:
    the end-of-sequence token; ``length``: ``max_tokens`` reached)."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str


def plain_name(setup: Setup) -> str | None:
    """The adapter name when ``setup`` is one adapter alone (``Stack(name)``), else None."""
    if isinstance(setup, Stack) and len(setup.items) == 1 and isinstance(setup.items[0], str):
        return setup.items[0]
    return None


def has_routed(setup: Setup) -> bool:
    """Whether a setup contains ``Routed``: the engine routes rows itself, requests may not."""
    return any(isinstance(block, Routed) for block in setup.walk())


def task_count(setup: Setup) -> int:
    """How many heads answer (the branches of a ``Parallel``; 1 otherwise)."""
    parallel = next((b for b in setup.walk() if isinstance(b, Parallel)), None)
    return len(parallel.branches) if parallel is not None else 1
