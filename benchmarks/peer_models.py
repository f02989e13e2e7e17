"""One method, built the same way in adapterkit, peft or AdapterHub, for the side-by-side benchmarks.

Imported by the workers of ``bench_peers.py`` (speed) and ``peer_train.py`` (quality), which run in
three Python environments: adapterkit's ``.venv`` and the peers' ``.peer-envs/peft`` (peft on
transformers 5) and ``.peer-envs/adapters`` (AdapterHub on transformers 4.57, peft there too). So
each library is imported only when it is built, and nothing here imports adapterkit at module level.

Every build is the same model, ``minilm``'s folder, loaded with the library's own classes
(adapterkit: ``AdapterModel``; peft: ``get_peft_model`` on transformers' ``AutoModel``;
AdapterHub: ``adapters.init`` on ``AutoModel``), the method added with matched options, and the
same head: the masked mean of the last hidden states, dropout 0.1, one linear layer (adapterkit's
default ``HeadConfig``; the peers get :class:`MeanHead`, which computes the same). The peers' task
classes are not used: their heads differ from each other (peft's ``BertForSequenceClassification``
reads BERT's pooler, AdapterHub's flex head is a two-layer MLP on the first token), and a
comparison of methods should not also compare heads.

Methods (matched options; ``docs/formats.md`` says which adapterkit option gives which peer form):

| method | adapterkit | peft | AdapterHub |
|---|---|---|---|
| full | ``full`` | all of ``AutoModel`` trained | all of the ``adapters.init`` model trained |
| houlsby | ``houlsby`` swish, norms frozen | - | ``double_seq_bn`` |
| pfeiffer | ``pfeiffer`` | - | ``seq_bn`` |
| parallel | ``scaled_parallel`` (s = 4) | - | ``par_bn`` (reduction 16) |
| lora | ``lora`` r 8, alpha 16, q and v | ``LoraConfig`` the same | ``LoRAConfig`` the same |
| prefix | ``prefix`` 30, MLP 512 | ``PrefixTuningConfig`` 30, projection 512 | ``prefix_tuning`` 30, MLP 512 |
| prompt | ``prompt`` 20, random init | ``PromptTuningConfig`` 20 | ``prompt_tuning`` 20 |

Bottlenecks have reduction factor 16 everywhere. adapterkit's prefix and prompt have each peer's
form as an option: against peft ``prefix:shift_positions=true`` and ``prompt`` (prompts before the
embedding layer), against AdapterHub ``prefix`` and ``prompt:insert_at="embedding_output"``; an
adapterkit method is written ``NAME[:option=value...]`` (values read as JSON).
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

LIBRARIES = ("adapterkit", "peft", "adapterhub")
PEER_METHODS = {
    "peft": ("full", "lora", "prefix", "prompt"),
    "adapterhub": ("full", "houlsby", "pfeiffer", "parallel", "lora", "prefix", "prompt"),
}
ADAPTERKIT_FORMS = {
    "houlsby": 'houlsby:non_linearity="swish":train_layer_norms=false',
    "pfeiffer": "pfeiffer",
    "parallel": "scaled_parallel",
    "lora": "lora:r=8:alpha=16",
    "prefix": "prefix",
    "prefix-peft": "prefix:shift_positions=true",
    "prompt": "prompt:init=\"random\"",
    "prompt-adapterhub": 'prompt:init="random":insert_at="embedding_output"',
    "full": "full",
}
"""Named adapterkit forms (``adapterkit:NAME``); any other ``NAME[:option=value...]`` is read as is."""


class MeanHead(nn.Module):
    """Masked mean over the input's positions, dropout, linear: adapterkit's default head.

    Positions a prompt put in front of the sequence are left out of the mean (the hidden states'
    last ``attention_mask.shape[1]`` positions are the input's), as adapterkit does.
    """

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = hidden[:, hidden.shape[1] - attention_mask.shape[1] :]
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.linear(self.dropout(pooled))


@dataclass
class Built:
    """An adapted model and how to run it.

    Attributes:
        model: a module holding every parameter of the run (for counting, hooks, ``train()``).
        logits: batch (``input_ids``, ``attention_mask``, maybe ``token_type_ids``) -> logits.
        trainable: the parameters the optimizer updates (method and head).
    """

    model: nn.Module
    logits: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    trainable: list[nn.Parameter]


class _Peer(nn.Module):
    """A peer's encoder and a :class:`MeanHead`, as one module."""

    def __init__(self, encoder: nn.Module, hidden_size: int, num_labels: int):
        super().__init__()
        self.encoder = encoder
        self.head = MeanHead(hidden_size, num_labels)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.encoder(**batch).last_hidden_state, batch["attention_mask"])


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def build(library: str, method: str, model_path: str, num_labels: int) -> Built:
    """``method`` built with ``library`` on the model folder ``model_path`` (see the module docstring)."""
    if library == "adapterkit":
        return _adapterkit(ADAPTERKIT_FORMS.get(method, method), model_path, num_labels)
    if method not in PEER_METHODS.get(library, ()):
        raise ValueError(f"{library} has no {method!r} here; it has {PEER_METHODS.get(library)}")
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(model_path)
    hidden_size = encoder.config.hidden_size
    encoder = _peft(encoder, method) if library == "peft" else _adapterhub(encoder, method)
    model = _Peer(encoder, hidden_size, num_labels)
    return Built(model, model, _trainable(model))


def build_plain(model_path: str, num_labels: int) -> Built:
    """transformers' own model with the same head and no library: the latency reference."""
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(model_path)
    model = _Peer(encoder, encoder.config.hidden_size, num_labels)
    return Built(model, model, _trainable(model))


def _adapterkit(spec: str, model_path: str, num_labels: int) -> Built:
    from adapterkit import AdapterModel, HeadConfig

    method, *options = spec.split(":")
    values = {key: json.loads(value) for key, _, value in (option.partition("=") for option in options)}
    model = AdapterModel.from_pretrained(model_path)
    model.add_adapter("task", method, HeadConfig(num_labels=num_labels), **values)
    model.train_adapter("task")
    return Built(model, lambda batch: model(**batch, adapters="task").logits, _trainable(model))


def _peft(encoder: nn.Module, method: str) -> nn.Module:
    if method == "full":
        return encoder
    import peft

    configs = {
        "lora": lambda: peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"]),
        "prefix": lambda: peft.PrefixTuningConfig(
            task_type="FEATURE_EXTRACTION", num_virtual_tokens=30, prefix_projection=True, encoder_hidden_size=512
        ),
        "prompt": lambda: peft.PromptTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=20),
    }
    return peft.get_peft_model(encoder, configs[method]())


def _adapterhub(encoder: nn.Module, method: str) -> nn.Module:
    import adapters

    adapters.init(encoder)
    if method == "full":
        return encoder
    configs = {
        "houlsby": lambda: adapters.DoubleSeqBnConfig(reduction_factor=16),
        "pfeiffer": lambda: adapters.SeqBnConfig(reduction_factor=16),
        "parallel": lambda: adapters.ParBnConfig(reduction_factor=16),
        "lora": lambda: adapters.LoRAConfig(r=8, alpha=16, attn_matrices=["q", "v"]),
        "prefix": lambda: adapters.PrefixTuningConfig(prefix_length=30, bottleneck_size=512),
        "prompt": lambda: adapters.PromptTuningConfig(prompt_length=20),
    }
    encoder.add_adapter("task", config=configs[method]())
    encoder.train_adapter("task")
    return encoder


def fixed_batch(model_path: str, batch: int, seq: int, num_labels: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The same token ids (from the model's vocabulary) and labels in every environment (torch
    2.13.0's generator everywhere)."""
    vocab = json.loads((Path(model_path) / "config.json").read_text())["vocab_size"]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(min(1000, vocab // 2), vocab, (batch, seq), generator=generator)  # past BERT's special ids
    labels = torch.randint(0, num_labels, (batch,), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones(batch, seq, dtype=torch.long)}, labels


def versions(library: str) -> dict[str, str]:
    """The versions that computed a result: torch, transformers and the library's distribution."""
    dist = {"adapterkit": "adapterkit", "peft": "peft", "adapterhub": "adapters"}[library]
    found = {"torch": torch.__version__, "transformers": importlib.metadata.version("transformers")}
    try:
        found[dist] = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:  # adapterkit run from src/ without an install
        found[dist] = "source"
    return found
