"""Task heads: what turns the adapted model's hidden states into a prediction.

Each adapter has its own head, saved with it. Classification and regression heads pool the final
hidden states (``cls``: the first token, as in BERT's fine-tuning; ``mean``: the masked mean of
all tokens, what sentence encoders such as all-MiniLM were trained with; ``last``: the last
non-padding token, the only one that has seen the whole input in a causal decoder) and apply a
linear layer or a one-hidden-layer MLP (a "probe" in the seeds). A tagging (token-classification)
head applies the same layer to every position instead: one prediction per token, ``(batch, seq,
num_labels)``; its loss is the cross-entropy over the positions whose label is not ``-100``
(transformers' convention) and whose attention mask is 1. Prompt positions never reach a head
(``sequence.py`` drops them first), with one exception: ``first`` pools the first position of the
sequence the model ran, which is the first prompt vector's output when a prompt is in front
(``sequence.py`` keeps it in the pass's cache under :data:`SEQUENCE_START`) and the first token
otherwise. That is what peft's and AdapterHub's classifiers read with prompt tuning (peft runs
``BertForSequenceClassification`` on the prompt-extended embeddings, whose pooler takes position
0; AdapterHub's ``ClassificationHead`` takes ``outputs[0][:, 0]``).

A CNN's final feature map ``(batch, C, H, W)`` is average-pooled over ``H`` and ``W`` (global
average pooling, what the CNN's own classifier reads), whatever the pooling: an image has no
first or last token.

The causal-LM head is the model's own (frozen) LM head and adds no parameters, unless
``own_lm_head``: then it holds its own copy of the LM head's weights, initialised from the base's
and trained with the adapter (peft's ``modules_to_save=["lm_head"]``); the model's
:class:`OwnLMHeads` hook computes the logits of passes running such an adapter with it.

The masked-LM head (``masked_lm``, an encoder's language adapter as in MAD-X) is BERT's
prediction head with its output layer tied to the base's word embeddings
(``masked_lm_head.py``); its loss is the cross-entropy over the masked positions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import MaskedLMOutput, ModelOutput, SequenceClassifierOutput, TokenClassifierOutput

from . import context
from .masked_lm_head import MaskedLMHead

HEAD_KINDS = ("classification", "regression", "causal_lm", "tagging", "masked_lm")
POOLINGS = ("cls", "mean", "last", "first")
SEQUENCE_START = "sequence_start"
"""Key, in a pass's cache, of the hidden state ``(batch, d)`` at the first position of the sequence
the model ran when prompt positions were dropped before the heads (``sequence.py``)."""
IGNORE_INDEX = -100
"""A tagging label that takes no part in the loss (transformers' convention)."""


@dataclass(frozen=True)
class HeadConfig:
    """Args:
        kind: classification, regression, causal_lm, tagging (one label per token) or masked_lm
            (a token prediction per position over the base's vocabulary; ``num_labels``, pooling,
            ``mlp`` and ``dropout`` unused: BERT's prediction head has none of them).
        num_labels: classes for classification and tagging (1 for regression).
        pooling: cls, mean, last or first (see module docstring); not read by tagging heads.
        mlp: a hidden layer (tanh) before the output layer instead of a single linear layer.
        dropout: dropout on the pooled representation (on every position for tagging).
        label_names: the class names, saved with the head so predictions read as labels.
        own_lm_head: causal_lm only: the head holds its own trained copy of the LM head's weights
            instead of using the base's (see module docstring).
    """

    kind: str = "classification"
    num_labels: int = 2
    pooling: str = "mean"
    mlp: bool = False
    dropout: float = 0.1
    label_names: tuple[str, ...] = ()
    own_lm_head: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_names", tuple(self.label_names))
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"unknown head kind {self.kind!r}; use one of {', '.join(HEAD_KINDS)}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; use one of {', '.join(POOLINGS)}")
        if self.kind in ("classification", "tagging") and self.num_labels < 2:
            raise ValueError(f"a {self.kind} head needs num_labels >= 2, got {self.num_labels}")
        if self.label_names and len(self.label_names) != self.num_labels:
            raise ValueError(f"{len(self.label_names)} label names for {self.num_labels} labels")
        if self.own_lm_head and self.kind != "causal_lm":
            raise ValueError(f"own_lm_head is an option of causal_lm heads, not of a {self.kind} head")

    @property
    def outputs(self) -> int:
        return 1 if self.kind == "regression" else self.num_labels

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pool(
    hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str, start: torch.Tensor | None = None
) -> torch.Tensor:
    """(batch, seq, d) -> (batch, d); ``start`` ``(batch, d)``: the first position of the sequence
    the model ran, when it is not ``hidden[:, 0]`` (prompt positions dropped; ``first``).
    A feature map ``(batch, C, H, W)`` is averaged over ``H`` and ``W``: ``(batch, C)``."""
    if hidden.dim() == 4:
        return hidden.mean((2, 3))
    if pooling == "first" and start is not None:
        return start
    if pooling in ("cls", "first"):
        return hidden[:, 0]
    if attention_mask is None:
        return hidden.mean(1) if pooling == "mean" else hidden[:, -1]
    mask = attention_mask.to(hidden.dtype)
    if pooling == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
    # last: the last position whose mask is 1 (works for left and right padding)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = (positions * attention_mask.long()).argmax(1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def _layers(config: HeadConfig, hidden_size: int) -> nn.Sequential:
    """A linear layer, or a tanh MLP with one hidden layer, ``hidden_size -> outputs``."""
    layers: list[nn.Module] = []
    if config.mlp:
        layers += [nn.Linear(hidden_size, hidden_size), nn.Tanh(), nn.Dropout(config.dropout)]
    layers.append(nn.Linear(hidden_size, config.outputs))
    return nn.Sequential(*layers)


class PooledHead(nn.Module):
    """Pooling, dropout and a linear layer or an MLP; classification and regression."""

    def __init__(self, config: HeadConfig, hidden_size: int):
        super().__init__()
        self.config = config
        self.dropout = nn.Dropout(config.dropout)
        self.layers = _layers(config, hidden_size)

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None, start: torch.Tensor | None = None
    ) -> torch.Tensor:
        logits = self.layers(self.dropout(pool(hidden, attention_mask, self.config.pooling, start)))
        return logits.squeeze(-1) if self.config.kind == "regression" else logits


class TaggingHead(nn.Module):
    """Dropout and a linear layer or an MLP on every position: ``(batch, seq, d) -> (batch, seq,
    num_labels)`` (the attention mask is read by the loss, not here)."""

    def __init__(self, config: HeadConfig, hidden_size: int):
        super().__init__()
        self.config = config
        self.dropout = nn.Dropout(config.dropout)
        self.layers = _layers(config, hidden_size)

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None, start: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.layers(self.dropout(hidden))


def sequence_start(state: context.ForwardState | None) -> torch.Tensor | None:
    """The pass's :data:`SEQUENCE_START` (None: no prompt positions were dropped, or no pass)."""
    return None if state is None else state.cache.get(SEQUENCE_START)


class CausalLMHead(nn.Module):
    """Marks an adapter whose output is the model's next-token logits: the base's LM head's (no
    parameters) or, with ``own_lm_head``, its own ``weight`` ``(vocab, d)`` (and ``bias``) copied
    from ``lm_head`` (the base's output embeddings) at creation."""

    def __init__(self, config: HeadConfig, lm_head: nn.Module | None = None):
        super().__init__()
        self.config = config
        if config.own_lm_head:
            if not isinstance(lm_head, nn.Linear):
                raise ValueError(f"own_lm_head copies the model's LM head, an nn.Linear; this model has {type(lm_head).__name__}")
            self.weight = nn.Parameter(lm_head.weight.detach().clone())
            self.bias = nn.Parameter(lm_head.bias.detach().clone()) if lm_head.bias is not None else None

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., d) -> (..., vocab)`` with the head's own weights."""
        return nn.functional.linear(hidden, self.weight.to(hidden.dtype), None if self.bias is None else self.bias.to(hidden.dtype))


class OwnLMHeads:
    """A forward hook on the base's LM head: in a pass whose setup ends in an adapter with an
    ``own_lm_head`` head, the logits come from that head's weights instead (generation included).

    Raises (in the pass):
        ValueError: a ``Routed``/``Parallel`` pass over such adapters (one LM head per pass).
    """

    def __init__(self, lm_head: nn.Module, heads: nn.ModuleDict, owner: Any):
        self.heads, self.owner = heads, owner
        self.handle = lm_head.register_forward_hook(self._replace)

    def remove(self) -> None:
        self.handle.remove()

    def _replace(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        state = context.current(self.owner)
        if state is None or state.setup.setup is None:
            return None
        name = state.setup.head_name
        head = self.heads[name] if name in self.heads else None
        if isinstance(head, CausalLMHead) and head.config.own_lm_head:
            return head.logits(args[0])
        own = [n for n in state.setup.setup.adapter_names() if n in self.heads and self.heads[n].config.own_lm_head]
        if name is None and own:
            raise ValueError(
                f"adapters with their own LM head (own_lm_head: {own}) run one at a time (or last in a Stack); "
                f"{state.setup.setup!r} runs several heads in one pass"
            )
        return None


def build_head(config: HeadConfig, hidden_size: int, lm_head: nn.Module | None = None) -> nn.Module:
    """The head module of ``config`` (``lm_head``: the base's output embeddings, for
    ``own_lm_head``; its input word embeddings, which a ``masked_lm`` head ties to)."""
    if config.kind == "causal_lm":
        return CausalLMHead(config, lm_head)
    if config.kind == "masked_lm":
        return MaskedLMHead(config, hidden_size, lm_head)
    return TaggingHead(config, hidden_size) if config.kind == "tagging" else PooledHead(config, hidden_size)


def head_output(config: HeadConfig, logits: torch.Tensor, loss: torch.Tensor | None) -> ModelOutput:
    """A head's output: a ``TokenClassifierOutput`` for tagging, a ``MaskedLMOutput`` for masked_lm,
    else a ``SequenceClassifierOutput``."""
    output = {"tagging": TokenClassifierOutput, "masked_lm": MaskedLMOutput}.get(config.kind, SequenceClassifierOutput)
    return output(loss=loss, logits=logits)


def head_loss(
    config: HeadConfig, logits: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """A head's training loss in float32: mean squared error for regression, cross-entropy for
    classification and, for tagging, cross-entropy averaged over the positions whose label is not
    :data:`IGNORE_INDEX` and whose ``attention_mask`` is 1 (0 when there is none). Every loss of a
    head (single adapter, ``Parallel``, ``Routed``) is computed here.

    Shapes: regression ``logits (B,)`` and scores ``labels (B,)`` or ``(B, 1)``; classification
    ``logits (B, C)`` and class ids ``labels (B,)`` or ``(B, 1)`` (an integer dtype, or floats
    holding class ids, as mixed multi-task batches carry them); tagging ``logits (B, S, C)``, class
    ids ``labels (B, S)`` and ``attention_mask (B, S)``.

    Raises:
        ValueError: logits or labels of any other shape. A ``(B, 1)`` column of scores against
            ``(B,)`` predictions would otherwise broadcast to a ``(B, B)`` difference and give a
            wrong loss with only a warning.
    """
    if config.kind in ("tagging", "masked_lm"):  # masked_lm: labels are -100 except at masked positions
        return _tagging_loss(logits, labels, attention_mask)
    batch = logits.shape[0]
    logits_shape = "(batch,)" if config.kind == "regression" else "(batch, num_labels)"
    if logits.dim() != (1 if config.kind == "regression" else 2):
        raise ValueError(f"a {config.kind} head's logits must have shape {logits_shape}, got {tuple(logits.shape)}")
    if labels.shape not in ((batch,), (batch, 1)):
        raise ValueError(
            f"{config.kind} labels of shape {tuple(labels.shape)} do not fit logits of shape {tuple(logits.shape)}: "
            f"give one {'score' if config.kind == 'regression' else 'class id'} per row, shape ({batch},) or ({batch}, 1)"
        )
    labels = labels.reshape(batch)
    if config.kind == "regression":
        return nn.functional.mse_loss(logits.float(), labels.float())
    return nn.functional.cross_entropy(logits.float(), labels.long())


def _tagging_loss(logits: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"tagging labels of shape {tuple(labels.shape)} do not fit logits of shape {tuple(logits.shape)}: give one "
            f"class id per token, shape {tuple(logits.shape[:2])}, and {IGNORE_INDEX} where a token has no label"
        )
    labels = labels.long()
    if attention_mask is not None:
        labels = labels.masked_fill(attention_mask == 0, IGNORE_INDEX)
    counted = (labels != IGNORE_INDEX).sum().clamp(min=1)
    total = nn.functional.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return total / counted
