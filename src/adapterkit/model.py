"""``AdapterModel``: a frozen Hugging Face model with named adapters and heads.

The base model is loaded unchanged and frozen. Adapters are added by name (each with its own
head), attached at sites through forward hooks (``sites.py``), and chosen per forward pass by a
setup (``composition.py``): ``model(**batch, adapters="sst2")``, or the active setup set by
:meth:`AdapterModel.set_active` / :meth:`AdapterModel.train_adapter`. Only the adapter being
trained requires grad, so every other adapter and the base stay bit-identical.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, SequenceClassifierOutput

from . import methods  # noqa: F401  (registers every method)
from .composition import Setup, add_regularization, as_setup, forward_context
from .fingerprint import checkpoint_identity
from .heads import CausalLMHead, HeadConfig, build_head, head_loss
from .methods.base import AdapterMethod
from .placement import PLACEMENTS, Placement, resolve
from .registry import MethodConfig, make_config, method_spec
from .sites import SiteRouter, enumerate_sites

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class AdapterModel(nn.Module):
    """A frozen base model plus named adapters, each with an optional head.

    Args:
        base: a Hugging Face model (a bare encoder such as ``BertModel`` or a causal LM).
        placement: where things sit in ``base``; by default looked up by ``config.model_type``.
        tokenizer: kept with the model for the CLI and the trainer.
    """

    def __init__(self, base: PreTrainedModel, placement: Placement | None = None, tokenizer: Any = None):
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.parts = resolve(base, placement)
        self.sites = enumerate_sites(self.parts)
        self.adapters = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.tokenizer = tokenizer
        self.base_checkpoint = checkpoint_identity(base)  # taken before any training changes the base
        self.fingerprint = self.base_checkpoint["fingerprint"]
        self.active_setup: Setup | None = None
        self._forward_setups: list[Setup | None] = []
        self.router = SiteRouter(self.current_setup)

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls, name_or_path: str = "minilm", placement: Placement | None = None, dtype: torch.dtype | None = None
    ) -> AdapterModel:
        """Load a bundled model by short name (``minilm``, ``mpnet-base``, ``smollm2-135m``) or a
        local Hugging Face model folder."""
        from .bundled_models import resolve_model_path

        path = resolve_model_path(name_or_path)
        config = AutoConfig.from_pretrained(path)
        placement = placement or PLACEMENTS.get(config.model_type)
        loader = AutoModelForCausalLM if placement is not None and placement.decoder else AutoModel
        base = loader.from_pretrained(path, dtype=dtype or torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = cls(base, placement, tokenizer)
        model.name_or_path = str(name_or_path)
        return model

    @property
    def is_decoder(self) -> bool:
        return self.parts.placement.decoder

    @property
    def body(self) -> nn.Module:
        """The transformer without any LM head (``LlamaModel`` inside ``LlamaForCausalLM``)."""
        return self.base.base_model if self.is_decoder else self.base

    # ----------------------------------------------------------------- adapters
    def add_adapter(
        self, name: str, config: MethodConfig | str, head: HeadConfig | None = None, **options: Any
    ) -> AdapterMethod:
        """Add adapter ``name`` of a method (a config, or a method name plus its options)."""
        if not _NAME.match(name):
            raise ValueError(f"adapter name {name!r} must use only letters, digits, '_' and '-'")
        if hasattr(nn.ModuleDict, name):  # ModuleDict refuses keys that shadow its attributes
            raise ValueError(f"adapter name {name!r} is reserved (a torch.nn.Module attribute); pick another name")
        if name in self.adapters:
            raise ValueError(f"an adapter named {name!r} exists already; delete it first or pick another name")
        if isinstance(config, str):
            config = make_config(config, **options)
        elif options:
            raise ValueError("pass options either inside the config or as keywords with a method name, not both")
        module_cls = method_spec(config.method).module_cls
        if module_cls.modifies_base and len(self.adapters) or any(a.modifies_base for a in self.adapters.values()):
            raise ValueError(
                "full and partial fine-tuning change the base model itself, so they must be the only "
                "adapter on a model: load a fresh model for them"
            )
        if head is not None and head.kind == "causal_lm" and not self.is_decoder:
            raise ValueError(f"a causal_lm head needs a decoder model; {self.parts.model_type!r} is an encoder")
        module = module_cls(config, self.parts, self.sites)
        reference = next(self.base.parameters())
        module.to(device=reference.device, dtype=reference.dtype)
        self.adapters[name] = module
        if head is not None:
            self.heads[name] = build_head(head, self.parts.hidden_size).to(reference.device, reference.dtype)
        for site, site_module in module.attachments():
            self.router.attach(site, name, site_module)
        try:
            module.bind(self, name)  # hooks outside sites: attention prefixes, input prompts
        except Exception:
            self.delete_adapter(name)
            raise
        return module

    def delete_adapter(self, name: str) -> None:
        self._check_names([name])
        self.adapters[name].unbind(self, name)
        self.router.detach(name)
        del self.adapters[name]
        if name in self.heads:
            del self.heads[name]
        if self.active_setup is not None and name in self.active_setup.adapter_names():
            self.active_setup = None

    def set_active(self, adapters: str | Setup | list[str] | None) -> None:
        """The setup used by forward passes that do not name one (None: the plain base model)."""
        self.active_setup = None if adapters is None else self._checked(as_setup(adapters))

    def train_adapter(self, name: str) -> None:
        """Make ``name`` (and its head) the only trainable parameters, and activate it."""
        self._check_names([name])
        self.requires_grad_(False)
        adapter = self.adapters[name]
        if getattr(adapter, "merged", False):
            raise ValueError(f"adapter {name!r} is merged into the base weights; unmerge it before training")
        adapter.requires_grad_(True)
        for param in adapter.base_parameters().values():
            param.requires_grad_(True)
        if name in self.heads:
            self.heads[name].requires_grad_(True)
        self.set_active(name)

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        """Everything adapter ``name`` saves: its modules, its head, and base weights it trains."""
        self._check_names([name])
        params = {f"adapter.{k}": p for k, p in self.adapters[name].named_parameters()}
        if name in self.heads:
            params.update({f"head.{k}": p for k, p in self.heads[name].named_parameters()})
        params.update({f"base.{k}": p for k, p in self.adapters[name].base_parameters().items()})
        return params

    def count_parameters(self, name: str) -> tuple[int, int]:
        """(parameters adapter ``name`` trains, parameters of the base model)."""
        trained = sum(p.numel() for p in self.adapter_parameters(name).values())
        return trained, sum(p.numel() for p in self.base.parameters())

    # ----------------------------------------------------------------- LoRA merging
    def _mergeable(self, name: str) -> AdapterMethod:
        self._check_names([name])
        adapter = self.adapters[name]
        if not hasattr(adapter, "merge"):
            raise ValueError(f"adapter {name!r} ({adapter.config.method}) cannot be merged; only LoRA can")
        return adapter

    def fold_adapter(self, name: str) -> bool:
        """Replace adapter ``name``'s training-only reparameterisation (a prefix's MLP, also inside
        MAM or another union) by the plain parameters it computes: the same outputs from fewer
        parameters, saved and loaded in that form. Returns whether anything changed (False for
        methods without one, or when already folded). An optimizer holding the old parameters
        must be rebuilt to train on."""
        self._check_names([name])
        adapter = self.adapters[name]
        before = adapter.config
        if hasattr(adapter, "fold"):
            adapter.fold()
        return adapter.config != before

    def merge_adapter(self, name: str) -> None:
        """Fold adapter ``name`` into the base weights (idempotent). The sites then add nothing."""
        self._mergeable(name).merge()

    def unmerge_adapter(self, name: str) -> None:
        self._mergeable(name).unmerge()

    def merge_and_unload(self, name: str) -> None:
        """Merge ``name`` and remove it: the base model alone now computes the adapted function."""
        self.merge_adapter(name)
        self.adapters[name].unbind(self, name)
        self.router.detach(name)
        del self.adapters[name]
        if self.active_setup is not None and name in self.active_setup.adapter_names():
            self.active_setup = None

    # ----------------------------------------------------------------- training
    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict[str, Any] | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """Gradient checkpointing of the base model's layers (non-reentrant unless the kwargs say
        ``use_reentrant=True``); the name and arguments are transformers', so
        ``transformers.Trainer(args=TrainingArguments(activation_checkpointing=True))`` finds it.
        See :func:`adapterkit.distributed.enable_gradient_checkpointing`."""
        from .distributed import enable_gradient_checkpointing

        enable_gradient_checkpointing(
            self, every_n_layers=every_n_layers, offload=offload, checkpoint_kwargs=activation_checkpointing_kwargs
        )

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """The name transformers releases before the rename call (``gradient_checkpointing=True``)."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    # ----------------------------------------------------------------- forward
    def current_setup(self) -> Setup | None:
        """The setup of the forward pass in flight (the router asks this at every site)."""
        return self._forward_setups[-1] if self._forward_setups else self.active_setup

    @contextlib.contextmanager
    def using(self, adapters: str | Setup | list[str] | None) -> Iterator[Setup | None]:
        """Run the enclosed forward passes with ``adapters`` (None: the plain base model)."""
        setup = None if adapters is None else self._checked(as_setup(adapters))
        self._forward_setups.append(setup)
        try:
            yield setup
        finally:
            self._forward_setups.pop()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        adapters: str | Setup | list[str] | None = None,
        **kwargs: Any,
    ):
        """Run the model with ``adapters`` (default: the active setup) and its head.

        Returns a ``SequenceClassifierOutput`` (logits, loss if labels are given) for
        classification/regression heads, the base model's ``CausalLMOutput`` for a causal-LM head
        or a decoder without head, and a ``BaseModelOutput`` with the hidden states otherwise.
        ``Parallel`` and ``Routed`` setups return a ``composition.MultiTaskOutput`` (one head output
        per task). While a fusion is trained, its regulariser is part of ``loss``.
        """
        setup = self.current_setup() if adapters is None else adapters
        with self.using(setup) as setup, forward_context(self, setup):
            head_name = setup.head_name() if setup is not None else None
            head = self.heads[head_name] if head_name in self.heads else None
            multi_output = setup is not None and setup.multi_output  # Parallel / Routed: one head per task
            if self.is_decoder and not multi_output and (head is None or isinstance(head, CausalLMHead)):
                output = self.base(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
                output.loss = add_regularization(self, setup, output.loss)
                return output
            hidden = self.body(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
            if multi_output:
                output = setup.outputs(self, hidden, attention_mask, labels)
                output.loss = add_regularization(self, setup, output.loss)
                return output
            if head is None:
                return BaseModelOutput(last_hidden_state=hidden)
            logits = head(hidden, attention_mask)
            loss = head_loss(head.config, logits, labels) if labels is not None else None
            loss = add_regularization(self, setup, loss)  # AdapterFusion's penalty while training a fusion
            return SequenceClassifierOutput(loss=loss, logits=logits)

    @torch.no_grad()
    def generate(self, *args: Any, adapters: str | Setup | list[str] | None = None, **kwargs: Any) -> torch.Tensor:
        """``transformers`` generation through the adapted decoder."""
        if not self.is_decoder:
            raise ValueError(f"generate() needs a decoder model; {self.parts.model_type!r} is an encoder")
        with self.using(self.current_setup() if adapters is None else adapters):
            return self.base.generate(*args, **kwargs)

    # ----------------------------------------------------------------- saving
    def save_adapter(self, name: str, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Save adapter ``name`` and its head atomically to ``directory``."""
        from .persistence import save_adapter

        return save_adapter(self, name, directory, extra)

    def load_adapter(self, directory: str | Path, name: str | None = None, activate: bool = True) -> str:
        """Load an adapter saved by :meth:`save_adapter`; checks it belongs to this base model."""
        from .persistence import load_adapter

        name = load_adapter(self, directory, name)
        if activate:
            self.set_active(name)
        return name

    # ----------------------------------------------------------------- helpers
    def _check_names(self, names) -> None:
        missing = [n for n in names if n not in self.adapters]
        if missing:
            known = ", ".join(self.adapters) or "none"
            raise ValueError(f"no adapter named {', '.join(map(repr, missing))} on this model (adapters: {known})")

    def _checked(self, setup: Setup) -> Setup:
        self._check_names(setup.adapter_names())
        return setup.bind(self)  # heads, fusions, nesting against this model (composition.py)
