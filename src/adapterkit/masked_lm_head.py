"""The masked-LM head of a language adapter (MAD-X): BERT's prediction head, tied to the base.

Pfeiffer et al. 2020, "MAD-X: An Adapter-Based Framework for Multi-Task Cross-Lingual Transfer"
(arXiv 2005.00052), train a language adapter per language with BERT's masked-LM objective (Devlin
et al. 2019) on a frozen multilingual encoder. The encoders bundled here ship without their
pretraining head, so this module rebuilds the one ``BertForMaskedLM`` has (``cls.predictions``)::

    h (batch, seq, d) -> LayerNorm(act(dense(h))) -> · E^T + b -> logits (batch, seq, vocab)

The transform (``dense``, ``act`` = GELU, ``LayerNorm`` with eps 1e-12, BERT's and MiniLM's
settings) and the output bias ``b`` are the head's own parameters and train with the adapter
(about 0.18M on minilm). The output matrix ``E`` is the base model's word-embedding matrix
``(vocab, d)`` itself, *tied* as in ``BertForMaskedLM``: held by reference, not registered as a
parameter or buffer of the head, so it is neither trained (the base stays frozen and
bit-identical), nor counted, nor saved with the adapter; a loaded adapter's head is tied again to
the embeddings of the model it is loaded into.
"""

from __future__ import annotations

import torch
from torch import nn

IGNORE_INDEX = -100
"""A label that takes no part in the loss: every position that was not masked."""


class MaskedLMHead(nn.Module):
    """BERT's masked-LM prediction head over the base's (frozen) word embeddings.

    Args:
        config: the head's ``HeadConfig`` (kind ``masked_lm``), kept for saving.
        hidden_size: ``d``, the width of the hidden states it reads.
        embeddings: the base model's input embeddings, an ``nn.Embedding`` of shape ``(vocab, d)``.

    Raises:
        ValueError: ``embeddings`` is not an ``nn.Embedding`` of width ``hidden_size``.
    """

    def __init__(self, config, hidden_size: int, embeddings: nn.Module | None):
        super().__init__()
        if not isinstance(embeddings, nn.Embedding) or embeddings.embedding_dim != hidden_size:
            raise ValueError(
                "a masked_lm head ties its output layer to the model's word embeddings, an nn.Embedding of width "
                f"{hidden_size}; this model has {type(embeddings).__name__}"
            )
        self.config = config
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.GELU()
        self.norm = nn.LayerNorm(hidden_size, eps=1e-12)
        self.bias = nn.Parameter(torch.zeros(embeddings.num_embeddings))
        nn.init.normal_(self.dense.weight, std=0.02)  # BertPreTrainedModel._init_weights
        nn.init.zeros_(self.dense.bias)
        # a tuple hides the module from nn.Module's registration: not a parameter, not saved
        self._tied = (embeddings,)

    @property
    def decoder_weight(self) -> torch.Tensor:
        """The tied output matrix ``(vocab, d)``: the base's word-embedding weight itself."""
        return self._tied[0].weight

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., d) -> (..., vocab)``."""
        transformed = self.norm(self.activation(self.dense(hidden)))
        return nn.functional.linear(transformed, self.decoder_weight.to(transformed.dtype), self.bias.to(transformed.dtype))

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None, start: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(batch, seq, d) -> (batch, seq, vocab)``: a prediction at every position."""
        return self._logits(hidden)

    def labelled(self, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, loss) at the labelled positions only: the vocabulary projection, the largest
        product of a masked-LM step (``d x vocab`` per position), runs on the ~15% of positions the
        loss reads instead of all of them.

        Args:
            hidden: ``(batch, seq, d)``.
            labels: ``(batch, seq)`` token ids, :data:`IGNORE_INDEX` where nothing was masked.

        Returns:
            logits ``(n, vocab)`` of the ``n`` labelled positions in row-major order (their targets
            are ``labels[labels != -100]``), and the mean cross-entropy over them in float32
            (0 with a zero gradient when nothing is labelled).

        Raises:
            ValueError: ``labels`` is not ``(batch, seq)`` of ``hidden``.
        """
        if labels.shape != hidden.shape[:2]:
            raise ValueError(
                f"masked-LM labels of shape {tuple(labels.shape)} do not fit hidden states {tuple(hidden.shape)}: give "
                f"one token id per position, shape {tuple(hidden.shape[:2])}, and {IGNORE_INDEX} where nothing was masked"
            )
        chosen = labels != IGNORE_INDEX
        logits = self._logits(hidden[chosen])
        targets = labels[chosen].long()
        if targets.numel() == 0:
            return logits, logits.float().sum() * 0.0
        return logits, nn.functional.cross_entropy(logits.float(), targets)
