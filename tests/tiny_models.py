"""Tiny random models of each supported architecture family, for fast tests without network."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn
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

from adapterkit.placement import ConvPlacement, register_placement

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
"""The tiny transformers."""


class TinyBlock(nn.Module):
    """A ResNet basic unit: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, the shortcut a
    strided 1x1 convolution where the block changes width or size."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class TinyCNN(nn.Module):
    """A tiny random CNN with BatchNorm: a stem (conv, BN) and two blocks (8 -> 8 channels, then
    8 -> 16 at stride 2). Its BatchNorms hold random running statistics, so eval mode is no
    identity. ``forward(pixel_values=...)`` gives the final feature map as ``last_hidden_state``."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(model_type="tiny_cnn", hidden_size=CNN_CHANNELS[-1], image_size=IMAGE)
        self.stem = nn.Conv2d(3, CNN_CHANNELS[0], 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(CNN_CHANNELS[0])
        self.blocks = nn.ModuleList([TinyBlock(8, 8, 1), TinyBlock(8, 16, 2)])
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                nn.init.normal_(module.weight, 1.0, 0.1)
                nn.init.normal_(module.bias, 0.0, 0.1)

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None):
        from transformers.modeling_outputs import BaseModelOutput

        x = torch.relu(self.stem_bn(self.stem(pixel_values)))
        for block in self.blocks:
            x = block(x)
        return BaseModelOutput(last_hidden_state=x)


CNN_CHANNELS, IMAGE = (8, 16), 8
CNN_PLACEMENT = ConvPlacement(layers="blocks", convs=(("conv1", "conv1", "bn1"), ("conv2", "conv2", "bn2")))
register_placement("tiny_cnn", CNN_PLACEMENT)
FACTORIES["cnn"] = TinyCNN
IMAGE_ARCHITECTURES = ("cnn",)
ALL_ARCHITECTURES = ARCHITECTURES + IMAGE_ARCHITECTURES
ENCODERS = ("bert", "roberta", "distilbert", "mpnet")
DECODERS = ("llama", "qwen2")


def tiny_base(arch: str, seed: int = 0):
    """A fresh tiny model of ``arch`` in eval mode (dropout off), same weights for the same seed."""
    torch.manual_seed(seed)
    return FACTORIES[arch]().eval()


def tiny_images(batch: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random images ``(batch, 3, 8, 8)``, the tiny CNN's input."""
    generator = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(batch, 3, IMAGE, IMAGE, generator=generator)}


def batch_for(arch: str, batch: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    """A tiny input batch for ``arch``: images for the CNN, token ids otherwise."""
    return tiny_images(batch, seed) if arch in IMAGE_ARCHITECTURES else tiny_batch(batch, seed=seed)


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


def adamw_steps(model: torch.nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor, steps: int,
                lr: float = 1e-2) -> None:
    """``steps`` AdamW steps on ``model``'s trainable parameters over one fixed batch, in the
    model's current mode (the caller puts it in train mode and picks what trains)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
