"""Tiny random models of each supported architecture family, for fast tests without network."""

from __future__ import annotations

import torch
from transformers import (
    BertConfig,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
    LlamaConfig,
    LlamaForCausalLM,
    MPNetConfig,
    MPNetModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    RobertaConfig,
    RobertaModel,
)

HIDDEN, LAYERS, VOCAB = 32, 2, 120

_ENCODER = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB)
_DECODER = dict(
    hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=64, vocab_size=VOCAB,
)

FACTORIES = {
    "bert": lambda: BertModel(BertConfig(**_ENCODER)),
    "roberta": lambda: RobertaModel(RobertaConfig(**_ENCODER, pad_token_id=1)),
    "distilbert": lambda: DistilBertModel(
        DistilBertConfig(dim=HIDDEN, n_layers=LAYERS, n_heads=4, hidden_dim=64, vocab_size=VOCAB)
    ),
    "mpnet": lambda: MPNetModel(MPNetConfig(**_ENCODER)),
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**_DECODER)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**_DECODER)),
}
ARCHITECTURES = tuple(FACTORIES)
ENCODERS = ("bert", "roberta", "distilbert", "mpnet")
DECODERS = ("llama", "qwen2")


def tiny_base(arch: str, seed: int = 0):
    """A fresh tiny model of ``arch`` in eval mode (dropout off), same weights for the same seed."""
    torch.manual_seed(seed)
    return FACTORIES[arch]().eval()


def tiny_batch(batch: int = 3, seq: int = 7, seed: int = 1) -> dict[str, torch.Tensor]:
    """Token ids (avoiding the special ids 0-2) and a mask with right padding on one row."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch, seq), generator=generator)
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    attention_mask[-1, seq - 2 :] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}



def randomize(module: torch.nn.Module, seed: int, std: float = 0.2) -> None:
    """Give a module non-trivial weights (adapters start mostly at zero): add seeded N(0, std²) noise."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * std)
