"""Task heads: what turns the adapted model's hidden states into a prediction.

Each adapter has its own head, saved with it. Classification and regression heads pool the final
hidden states (``cls``: the first token, as in BERT's fine-tuning; ``mean``: the masked mean of
all tokens, what sentence encoders such as all-MiniLM were trained with; ``last``: the last
non-padding token, the only one that has seen the whole input in a causal decoder) and apply a
linear layer or a one-hidden-layer MLP (a "probe" in the seeds). The causal-LM head is the
model's own (frozen) LM head and adds no parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

HEAD_KINDS = ("classification", "regression", "causal_lm")
POOLINGS = ("cls", "mean", "last")


@dataclass(frozen=True)
class HeadConfig:
    """Args:
        kind: classification, regression or causal_lm.
        num_labels: classes for classification (1 for regression).
        pooling: cls, mean or last (see module docstring).
        mlp: a hidden layer (tanh) before the output layer instead of a single linear layer.
        dropout: dropout on the pooled representation.
        label_names: the class names, saved with the head so predictions read as labels.
    """

    kind: str = "classification"
    num_labels: int = 2
    pooling: str = "mean"
    mlp: bool = False
    dropout: float = 0.1
    label_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_names", tuple(self.label_names))
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"unknown head kind {self.kind!r}; use one of {', '.join(HEAD_KINDS)}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; use one of {', '.join(POOLINGS)}")
        if self.kind == "classification" and self.num_labels < 2:
            raise ValueError(f"a classification head needs num_labels >= 2, got {self.num_labels}")
        if self.label_names and len(self.label_names) != self.num_labels:
            raise ValueError(f"{len(self.label_names)} label names for {self.num_labels} labels")

    @property
    def outputs(self) -> int:
        return 1 if self.kind == "regression" else self.num_labels

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """(batch, seq, d) -> (batch, d)."""
    if pooling == "cls":
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


class PooledHead(nn.Module):
    """Pooling, dropout and a linear layer or an MLP; classification and regression."""

    def __init__(self, config: HeadConfig, hidden_size: int):
        super().__init__()
        self.config = config
        self.dropout = nn.Dropout(config.dropout)
        layers: list[nn.Module] = []
        if config.mlp:
            layers += [nn.Linear(hidden_size, hidden_size), nn.Tanh(), nn.Dropout(config.dropout)]
        layers.append(nn.Linear(hidden_size, config.outputs))
        self.layers = nn.Sequential(*layers)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        logits = self.layers(self.dropout(pool(hidden, attention_mask, self.config.pooling)))
        return logits.squeeze(-1) if self.config.kind == "regression" else logits


class CausalLMHead(nn.Module):
    """Marks an adapter whose output is the model's own next-token logits (no parameters)."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config


def build_head(config: HeadConfig, hidden_size: int) -> nn.Module:
    return CausalLMHead(config) if config.kind == "causal_lm" else PooledHead(config, hidden_size)


def head_loss(config: HeadConfig, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A head's training loss in float32: mean squared error for regression, cross-entropy for
    classification. Every loss of a pooled head (single adapter, ``Parallel``, ``Routed``) is
    computed here.

    Shapes: regression ``logits (B,)`` and scores ``labels (B,)`` or ``(B, 1)``; classification
    ``logits (B, C)`` and class ids ``labels (B,)`` or ``(B, 1)`` (an integer dtype, or floats
    holding class ids, as mixed multi-task batches carry them).

    Raises:
        ValueError: logits or labels of any other shape. A ``(B, 1)`` column of scores against
            ``(B,)`` predictions would otherwise broadcast to a ``(B, B)`` difference and give a
            wrong loss with only a warning.
    """
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
