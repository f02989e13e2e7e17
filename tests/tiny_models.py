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


def train_and_check_isolation(model, batch: dict[str, torch.Tensor], steps: int = 2) -> None:
    """Train adapter ``task`` for a few steps and assert that only it changed: the base weights
    and the predictions of adapter ``earlier`` stay bit-identical, and ``task`` moved."""
    base_before = {k: v.clone() for k, v in model.base.state_dict().items()}
    earlier_before = model(**batch, adapters="earlier").logits
    task_before = {k: v.clone() for k, v in model.adapter_parameters("task").items()}
    model.train_adapter("task")
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    labels = torch.arange(batch["input_ids"].shape[0]) % 3
    for _ in range(steps):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    for key, value in model.base.state_dict().items():
        assert torch.equal(value, base_before[key]), key
    assert torch.equal(model(**batch, adapters="earlier").logits, earlier_before)
    changed = [k for k, v in model.adapter_parameters("task").items() if not torch.equal(v, task_before[k])]
    assert changed, "training changed nothing"
