"""``AdapterModel``: a frozen Hugging Face model with named adapters and heads.

The base model is loaded unchanged and frozen. Adapters are added by name (each with its own
head), attach small modules at sites (``sites.py``), and are chosen per forward pass by a setup
(``composition.py``): ``model(**batch, adapters="sst2")``, or the active setup set by
:meth:`AdapterModel.set_active` / :meth:`AdapterModel.train_adapter`. A setup is checked against
the model once and compiled into a :class:`~adapterkit.execution.BoundSetup`, cached until the
model's adapters change; each forward pass runs under its own state (``context.py``), so several
threads may run different setups on one model at once. Only the adapter being trained requires
grad, so every other adapter and the base stay bit-identical.

Lifecycle of a merged LoRA adapter (one at a time): passes that run it alone or in a stack use
the merged weights; every other pass (``adapters=None`` included) computes the merged
projections from the kept original weights, so the plain base and every other adapter are
exactly what they were. A merged adapter cannot be trained (unmerge it first); deleting it
unmerges it; ``merge_and_unload`` makes the merged weights the new base (and its fingerprint).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from . import context, methods  # noqa: F401  (importing methods registers every built-in method)
from .attention import PrefixHooks
from .checkpointing import enable_gradient_checkpointing
from .composition import AdapterView, ModelView, Setup, as_setup, check, setup_from_dict
from .execution import BoundSetup, replication_hooks
from .formats.detect import ADAPTERKIT, folder_format
from .formats.fingerprint import base_fingerprint, checkpoint_identity, compare_bases, refusal
from .formats.layout import Converted, ModelLayout, SiteRef
from .formats.native import read_adapter_config, read_adapter_weights, write_adapter
from .formats.peers import PeerFolder, read_peer, write_peer
from .heads import CausalLMHead, HeadConfig, OwnLMHeads, build_head, head_loss, head_output, sequence_start
from .masked_lm_head import MaskedLMHead
from .methods.base import AdapterMethod, BindContext, OwnedState
from .placement import PLACEMENTS, ConvPlacement, Placement, resolve
from .registry import MethodConfig, config_from_dict, config_from_saved, make_config, method_spec, methods_with
from .sequence import PromptHooks, max_positions
from .sites import SiteRouter, enumerate_sites
from .taps import LayerTaps

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_BOUND_CACHE = 256  # bound setups kept per model (a server sees many Routed row lists)
_UNSET = object()
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")


class AdapterModel(nn.Module):
    """A frozen base model plus named adapters, each with an optional head.

    Args:
        base: a Hugging Face model (a bare encoder such as ``BertModel``, a seq2seq model, or a
            causal LM).
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
        self.processor = None  # a CNN's image preprocessor (data.images.ImageProcessor)
        self.base_checkpoint = checkpoint_identity(base)  # taken before any training changes the base
        self.active_setup: Setup | None = None
        self.merged_adapter: str | None = None
        self.router = SiteRouter()
        self._bound: OrderedDict[Any, BoundSetup] = OrderedDict()
        self._hooks: dict[str, Any] = {}  # model-wide hooks by what needs them: prefixes, sequence, parallel

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = "minilm",
        placement: Placement | None = None,
        dtype: torch.dtype | None = None,
        image_size: int | None = None,
    ) -> AdapterModel:
        """Load a bundled model by short name (``minilm``, ``mpnet-base``, ``smollm2-135m``, the
        CNN ``efficientnet-lite0``, built for ``image_size`` pixels, default 64) or a local
        Hugging Face model folder (one without tokenizer files gets no tokenizer). A CNN comes
        with its image preprocessor as ``model.processor``."""
        from .bundled_models import model_reference, resolve_model_path
        from .vision_models import VISION_MODELS, load_vision_model

        if name_or_path in VISION_MODELS:
            backbone, processor = load_vision_model(name_or_path, image_size)
            model = cls(backbone.to(dtype or torch.float32), placement)
            model.processor, model.name_or_path = processor, name_or_path
            return model
        if image_size is not None:
            raise ValueError(f"image_size is for the bundled image models ({', '.join(VISION_MODELS)}), not {name_or_path!r}")

        path = resolve_model_path(name_or_path)
        config = AutoConfig.from_pretrained(path)
        placement = placement or PLACEMENTS.get(config.model_type)
        loader = AutoModelForCausalLM if placement is not None and placement.decoder else AutoModel
        base = loader.from_pretrained(path, dtype=dtype or torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path) if any((Path(path) / f).is_file() for f in _TOKENIZER_FILES) else None
        if tokenizer is not None and tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = cls(base, placement, tokenizer)
        model.name_or_path = model_reference(name_or_path)
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
        """Add adapter ``name`` of a method (a config, or a method name plus its options).

        Raises:
            ValueError: a bad or taken name, a bad option, a head the model cannot host, or a
                method that cannot join the adapters already there.
        """
        if not isinstance(name, str) or not _NAME.match(name):
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
        modifies = "modifies_base" in module_cls.capabilities
        if modifies and len(self.adapters) or any("modifies_base" in a.capabilities for a in self.adapters.values()):
            raise ValueError(
                "full and partial fine-tuning change the base model itself, so they must be the only "
                "adapter on a model: load a fresh model for them"
            )
        if head is not None and head.kind == "causal_lm" and not self.is_decoder:
            raise ValueError(f"a causal_lm head needs a decoder model; {self.parts.model_type!r} is an encoder")
        if head is not None and head.kind == "masked_lm" and (self.is_decoder or self.processor is not None):
            raise ValueError(f"a masked_lm head needs a text encoder (it predicts masked tokens); {self.parts.model_type!r} is not one")
        ctx = BindContext(
            self.parts, self.sites, name, self.tokenizer, head, self._record, self.view(), dict(self.adapters.items())
        )
        reference = next(self.base.parameters())
        module = module_cls(config, ctx).to(device=reference.device, dtype=reference.dtype)
        # a new adapter runs in the base's mode (a loaded model is in eval mode: its BatchNorms,
        # if it has any, then use their running statistics rather than the batch's)
        self.adapters[name] = module.train(self.base.training)
        if head is not None:
            lm_head = self.base.get_output_embeddings() if self.is_decoder else None
            if head.kind == "masked_lm":  # tied to the word embeddings, as BertForMaskedLM's decoder
                lm_head = self.base.get_input_embeddings()
            width = module.head_width(self.parts.hidden_size)
            built = build_head(head, width, lm_head).to(reference.device, reference.dtype)
            self.heads[name] = built.train(self.base.training)
        try:
            for site, site_module in module.attachments():
                self.router.attach(site, name, site_module)
            self._sync_hooks()
        except Exception:
            self._remove(name)
            raise
        self._changed()
        return module

    def delete_adapter(self, name: str) -> None:
        """Remove adapter ``name`` and its head (a merged adapter is unmerged first)."""
        self.view().require([name])
        if self.merged_adapter == name:
            self.unmerge_adapter(name)
        self._remove(name)

    def _remove(self, name: str) -> None:
        self.router.detach(name)
        del self.adapters[name]
        if name in self.heads:
            del self.heads[name]
        self._sync_hooks()
        if self.active_setup is not None and name in self.active_setup.adapter_names():
            self.active_setup = None
        self._changed()

    def set_active(self, adapters: str | Setup | list[str] | None) -> None:
        """The setup used by forward passes that do not name one (None: the plain base model)."""
        self.active_setup = None if adapters is None else self._bind(adapters).setup

    def train_adapter(self, name: str) -> None:
        """Make ``name`` (and its head) the only trainable parameters, and activate it."""
        self.view().require([name])
        if self.merged_adapter == name:
            raise ValueError(
                f"adapter {name!r} is merged into the base weights; call model.unmerge_adapter({name!r}) before training it"
            )
        self.requires_grad_(False)
        for param in self.adapter_state(name).parameters.values():
            param.requires_grad_(True)
        self.set_active(name)
        self._freeze_norms()  # the other adapters' BatchNorms keep their statistics from now on

    def train(self, mode: bool = True) -> AdapterModel:
        """Training mode, except for the BatchNorms whose parameters do not train: the frozen
        base's and those of adapters other than the one training stay in eval mode, so their
        running statistics stay bit-identical (a BatchNorm in train mode updates them even with
        ``requires_grad`` off). The trained adapter's own BatchNorms (residual adapters' domain
        BatchNorms) and the base BatchNorms that full or partial fine-tuning trains use batch
        statistics, as in training any CNN."""
        super().train(mode)
        if mode:
            self._freeze_norms()
        return self

    def _freeze_norms(self) -> None:
        """Put every BatchNorm whose parameters do not train in eval mode (see :meth:`train`)."""
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in module.parameters(recurse=False)
            ):
                module.eval()

    def adapter_state(self, name: str) -> OwnedState:
        """Everything adapter ``name`` owns (its modules, its head, base weights it trains), by
        saved key: what trains, what is counted, saved and loaded (``methods/base.py``)."""
        self.view().require([name])
        return self.adapters[name].owned_state(self.heads[name] if name in self.heads else None)

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        """The parameters adapter ``name`` trains, by saved key."""
        return self.adapter_state(name).parameters

    def count_parameters(self, name: str) -> tuple[int, int]:
        """(parameters adapter ``name`` trains, parameters of the base model)."""
        trained = sum(p.numel() for p in self.adapter_parameters(name).values())
        return trained, sum(p.numel() for p in self.base.parameters())

    def fusion(self, name: str) -> AdapterMethod:
        """Adapter ``name``, checked to be an AdapterFusion."""
        self.view().require([name])
        adapter = self.adapters[name]
        if "fusion" not in adapter.capabilities:
            raise ValueError(f"adapter {name!r} is a {adapter.config.method} adapter, not a fusion")
        return adapter

    def restrict_fusion(self, name: str, adapters: tuple[str, ...]) -> None:
        """Make fusion ``name`` fuse only ``adapters`` (a subset of its own, e.g. after pruning);
        its weights are shared across adapters and stay as they are."""
        fusion = self.fusion(name)
        extra = [a for a in adapters if a not in fusion.config.adapters]
        if extra or not adapters:
            raise ValueError(f"fusion {name!r} fuses {fusion.config.adapters}; keep a non-empty subset, not {adapters}")
        fusion.config = dataclasses.replace(fusion.config, adapters=tuple(adapters))
        self._changed()
        if self.active_setup is not None and name in self.active_setup.adapter_names():
            self.set_active(name)  # the fusion's own default: now the restricted one

    # ----------------------------------------------------------------- merging and folding
    def merge_adapter(self, name: str) -> None:
        """Fold adapter ``name`` into the base weights (idempotent; see the module docstring).

        Raises:
            ValueError: the method cannot be merged, or another adapter is merged already.
        """
        adapter = self._capable(name, "merge")
        if self.merged_adapter not in (None, name):
            raise ValueError(
                f"adapter {self.merged_adapter!r} is merged already (one merged adapter at a time); "
                f"call model.unmerge_adapter({self.merged_adapter!r}) first"
            )
        adapter.merge()
        self.merged_adapter = name
        self._changed()

    def unmerge_adapter(self, name: str) -> None:
        """Restore the base weights exactly as they were before :meth:`merge_adapter` (idempotent)."""
        self._capable(name, "merge").unmerge()
        if self.merged_adapter == name:
            self.merged_adapter = None
        self._changed()

    def merge_and_unload(self, name: str) -> None:
        """Merge ``name`` and remove it: the base model alone now computes the adapted function.
        The base is then another model, so its fingerprint changes with it."""
        self.merge_adapter(name)
        self.adapters[name].forget_original()
        self.merged_adapter = None
        self._remove(name)
        self.base_checkpoint = checkpoint_identity(self.base)

    def fold_adapter(self, name: str) -> bool:
        """Replace adapter ``name``'s training-only reparameterisation (a prefix's MLP, also inside
        MAM or another union) by the plain parameters it computes: the same outputs from fewer
        parameters, saved and loaded in that form. Returns whether anything changed (False for
        methods without one, or when already folded). An optimizer holding the old parameters
        must be rebuilt to train on."""
        self.view().require([name])
        adapter = self.adapters[name]
        changed = "fold" in adapter.capabilities and adapter.fold()
        if changed:
            self._changed()
        return changed

    @contextlib.contextmanager
    def _unmerged(self) -> Iterator[None]:
        """The base weights as loaded for the enclosed code: the merged adapter (if any) is
        unmerged and merged again after, which gives the same weights bit for bit."""
        merged = self.adapters[self.merged_adapter] if self.merged_adapter is not None else None
        if merged is None:
            yield
            return
        merged.unmerge()
        try:
            yield
        finally:
            merged.merge()

    def _capable(self, name: str, capability: str) -> AdapterMethod:
        self.view().require([name])
        adapter = self.adapters[name]
        if capability not in adapter.capabilities:
            raise ValueError(
                f"adapter {name!r} ({adapter.config.method}) cannot {capability}; "
                f"methods that can: {', '.join(methods_with(capability))}"
            )
        return adapter

    # ----------------------------------------------------------------- training
    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict[str, Any] | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """Gradient checkpointing of the base model's layers (non-reentrant unless the kwargs say
        ``use_reentrant=True``); the name and arguments are transformers', so
        ``transformers.Trainer(args=TrainingArguments(activation_checkpointing=True))`` finds it.
        See :func:`adapterkit.checkpointing.enable_gradient_checkpointing`."""
        enable_gradient_checkpointing(
            self.base, every_n_layers=every_n_layers, offload=offload, checkpoint_kwargs=activation_checkpointing_kwargs
        )

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """The name transformers releases before the rename call (``gradient_checkpointing=True``)."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    # ----------------------------------------------------------------- setups
    def view(self) -> ModelView:
        """A read-only view of the adapters (what a setup is checked against)."""
        kinds: dict[str, set[str]] = {name: set() for name in self.adapters}
        sublayers: dict[str, set[str]] = {name: set() for name in self.adapters}
        for site in self.router.sites():
            for name in self.router.attached(site):
                kinds[name].add(site.kind)
                if site.kind == "sublayer":
                    sublayers[name].add(site.key)
        return ModelView(
            adapters={
                name: AdapterView(
                    method=adapter.config.method,
                    kinds=frozenset(kinds[name]),
                    sublayer_sites=frozenset(sublayers[name]),
                    head=self.heads[name].config.kind if name in self.heads else None,
                    fuses=tuple(adapter.config.adapters) if "fusion" in adapter.capabilities else None,
                    merged=self.merged_adapter == name,
                )
                for name, adapter in self.adapters.items()
            },
            num_layers=self.parts.num_layers,
        )

    def _bind(self, adapters: str | Setup | list[str] | None) -> BoundSetup:
        """The bound setup for ``adapters`` (None: the plain base), cached until adapters change."""
        setup = None if adapters is None else as_setup(adapters)
        bound = self._bound.get(setup)
        if bound is not None:
            self._bound.move_to_end(setup)
            return bound
        checked = None if setup is None else check(setup, self.view())
        task_heads = {name for name, head in self.heads.items() if head.config.kind != "causal_lm"}
        readers = () if checked is None else tuple(
            reader for name in checked.adapter_names() for reader in self.adapters[name].readers(self.adapters)
        )
        bound = BoundSetup(checked, self.router, self.parts, self.merged_adapter, task_heads, readers)
        if bound.parallel is not None and "parallel" not in self._hooks:
            self._hooks["parallel"] = replication_hooks(self.parts, self.router)
        self._bound[setup] = bound
        if len(self._bound) > _BOUND_CACHE:
            self._bound.popitem(last=False)
        return bound

    def token_budget(self, adapters: str | Setup | list[str] | None, max_length: int | None = None) -> int | None:
        """The most tokens one input may have in a pass with ``adapters`` (None: the plain base):
        the positions the model reads (``sequence.max_positions``) less those the setup's prompts
        and shifted prefixes take in front of the text (``BoundSetup.positions_taken``), and at
        most ``max_length`` when given. The trainer, ``predict``/``evaluate`` and the CLI truncate
        every input to it before the first step.

        Returns None when neither the model nor ``max_length`` sets a limit. A ``max_length`` above
        the budget is reduced to it with a ``UserWarning`` saying what was reduced and why.

        Raises:
            ValueError: the prompts (and shifted prefixes) take every position the model reads.
        """
        positions = max_positions(self.parts)
        if positions is None:
            return max_length
        bound = self._bind(adapters)
        budget = positions - bound.positions_taken
        taken = ""
        if bound.positions_taken:
            taken = f"; the prompts (and shifted prefixes) of {bound.setup!r} take {bound.positions_taken}"
        if budget < 1:
            raise ValueError(
                f"this {self.parts.model_type!r} model reads {positions} positions{taken}, which leaves no room "
                "for text; use shorter prompts"
            )
        if max_length is None or max_length <= budget:
            return budget if max_length is None else max_length
        warnings.warn(
            f"max_length {max_length} reduced to {budget} tokens per input: this {self.parts.model_type!r} model "
            f"reads {positions} positions{taken}",
            stacklevel=2,
        )
        return budget

    def _changed(self) -> None:
        """Adapters, merges or fusions changed: bound setups must be checked and compiled anew."""
        self._bound.clear()

    def _sync_hooks(self) -> None:
        """Install or remove the model-wide hooks that attached prefixes and prompts need (the
        sequence hooks also number a decoder's positions from the mask for prefixes, and shift
        the tokens' positions for prefixes with ``shift_positions``), and the layer taps that
        knowledge adapters read through (``taps.py``)."""
        kinds = self.router.kinds()
        sequence = bool(kinds & {"input", "layer_input", "attention"})
        own_lm_head = any(head.config.own_lm_head for head in self.heads.values())
        taps = any("knowledge" in adapter.capabilities for adapter in self.adapters.values())
        wanted = {"prefixes": "attention" in kinds, "sequence": sequence, "lm_heads": own_lm_head, "taps": taps}
        for key, needed in wanted.items():
            if needed and key not in self._hooks:
                if key == "prefixes":
                    modules = [site.output_module for site in self.sites.values() if site.kind == "attention"]
                    self._hooks[key] = PrefixHooks(modules)
                elif key == "lm_heads":
                    self._hooks[key] = OwnLMHeads(self.base.get_output_embeddings(), self.heads, self.router)
                elif key == "taps":
                    self._hooks[key] = LayerTaps(self.parts, self.router)
                else:
                    self._hooks[key] = PromptHooks(self.parts, self.body, self.router)
            elif not needed and key in self._hooks:
                self._hooks.pop(key).remove()

    # ----------------------------------------------------------------- forward
    @contextlib.contextmanager
    def using(self, adapters: str | Setup | list[str] | None, expand_rows: bool = False) -> Iterator[Setup | None]:
        """Run the enclosed passes of this model (``forward``, or the base model called directly)
        with ``adapters`` (None: the plain base model); yields the checked setup.

        Args:
            expand_rows: let a ``Routed`` setup meet ``k`` copies of each of its rows in place
                (what ``generate`` does for beams and returned sequences).
        """
        bound = self._bind(adapters)
        if bound.parallel is not None:
            raise ValueError("a Parallel setup runs only through model(..., adapters=...), which returns a head output per task")
        with context.entered(bound.new_state(self.router, self.training, expand_rows)):
            yield bound.setup

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
        adapters: str | Setup | list[str] | None = None,
        **kwargs: Any,
    ):
        """Run the model with ``adapters`` (default: the setup of an enclosing :meth:`using`, else
        the active setup) and its head.

        Returns a ``SequenceClassifierOutput`` (logits, loss if labels are given) for
        classification/regression heads, a ``TokenClassifierOutput`` (logits ``(batch, seq,
        num_labels)``) for tagging heads, the base model's ``CausalLMOutput`` for a causal-LM head
        or a decoder without head, and a ``BaseModelOutput`` with the hidden states otherwise.
        A knowledge adapter's head (K-Adapter) reads the last hidden states with the knowledge
        adapters' outputs concatenated (``BoundSetup.read_out``); so does the ``BaseModelOutput``
        of one without a head. ``Parallel`` and ``Routed`` setups return an ``execution.MultiTaskOutput`` (one head
        output per task). While a fusion trains, its regulariser is part of ``loss``.
        """
        outer = context.current(self.router)
        if adapters is None and outer is not None:
            bound = outer.setup
        else:
            bound = self._bind(self.active_setup if adapters is None else adapters)
        # a plain pass (no adapter, none merged) runs with no state: the hooks then do nothing
        with contextlib.nullcontext() if bound.is_plain else context.entered(bound.new_state(self.router, self.training)) as state:
            head = self.heads[bound.head_name] if bound.head_name in self.heads else None
            if self.is_decoder and not bound.multi_output and (head is None or isinstance(head, CausalLMHead)):
                output = self.base(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
                output.loss = self._regularized(bound, output.loss)
                return output
            hidden = self.body(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
            if bound.multi_output:
                output = bound.outputs(self.heads, hidden, attention_mask, labels, state)
                output.loss = self._regularized(bound, output.loss)
                return output
            hidden = bound.read_out(hidden, attention_mask, state)  # + knowledge adapters' outputs (K-Adapter)
            if head is None:
                return BaseModelOutput(last_hidden_state=hidden)
            if labels is not None and isinstance(head, MaskedLMHead):  # logits (n_masked, vocab): masked_lm_head.py
                logits, loss = head.labelled(hidden, labels)
                return head_output(head.config, logits, self._regularized(bound, loss))
            logits = head(hidden, attention_mask, sequence_start(state))
            loss = head_loss(head.config, logits, labels, attention_mask) if labels is not None else None
            return head_output(head.config, logits, self._regularized(bound, loss))

    def _regularized(self, bound: BoundSetup, loss: torch.Tensor | None) -> torch.Tensor | None:
        """``loss`` plus the regularisers of the setup's fusions whose parameters train
        (AdapterFusion's ``λ ‖V - I‖²``), in training mode only."""
        if loss is None or not self.training:
            return loss
        for name in bound.fusions:
            fusion = self.adapters[name]
            if any(p.requires_grad for p in fusion.parameters()):
                loss = loss + fusion.regularization()
        return loss

    @torch.no_grad()
    def generate(self, *args: Any, adapters: str | Setup | list[str] | None = None, **kwargs: Any) -> torch.Tensor:
        """``transformers`` generation through the adapted decoder. With a ``Routed`` setup each
        row keeps its adapter through every expansion generation makes (beams, returned
        sequences)."""
        if not self.is_decoder:
            raise ValueError(f"generate() needs a decoder model; {self.parts.model_type!r} is an encoder")
        outer = context.current(self.router)
        if adapters is None:
            adapters = outer.setup.setup if outer is not None else self.active_setup
        with self.using(adapters, expand_rows=True):
            return self.base.generate(*args, **kwargs)

    @torch.no_grad()
    def _record(self, modules: list[nn.Module], inputs: bool = False, **model_inputs: torch.Tensor) -> list[torch.Tensor]:
        """Run the plain base model (its body) on ``model_inputs`` (``input_ids`` or
        ``inputs_embeds`` of one example) in eval mode and return, for that example, what each of
        ``modules`` produced or, with ``inputs=True``, received (its first positional or
        ``hidden_states`` argument). Used to initialise prefixes and deep prompts from the
        activations of real tokens (Li & Liang 2021, Sec. 7.2)."""
        seen: dict[int, torch.Tensor] = {}

        def grab(index: int):
            if inputs:
                return lambda module, args, kwargs: seen.__setitem__(index, (args[0] if args else kwargs["hidden_states"])[0])
            return lambda module, args, output: seen.__setitem__(index, (output[0] if isinstance(output, tuple) else output)[0])

        handles = [
            m.register_forward_pre_hook(grab(i), with_kwargs=True) if inputs else m.register_forward_hook(grab(i))
            for i, m in enumerate(modules)
        ]
        modes = {module: module.training for module in self.modules()}
        self.eval()
        try:
            with self.using(None):
                self.body(**model_inputs)
        finally:
            for module, mode in modes.items():
                module.training = mode
            for handle in handles:
                handle.remove()
        return [seen[i].detach().clone() for i in range(len(modules))]

    # ----------------------------------------------------------------- saving
    @property
    def fingerprint(self) -> str:
        """16 hex digits identifying the base checkpoint, whatever dtype it was loaded in."""
        return self.base_checkpoint["fingerprint"]

    def base_identity(self) -> dict[str, Any]:
        """What a saved adapter records of this base model: type, name, sizes and the checkpoint's
        identity taken when the model was built (``formats/fingerprint.py``)."""
        return {
            "model_type": self.parts.model_type,
            "name_or_path": getattr(self, "name_or_path", None),
            "num_layers": self.parts.num_layers,
            "hidden_size": self.parts.hidden_size,
            **({"image_size": self.processor.size} if self.processor is not None else {}),
            **self.base_checkpoint,
        }

    def check_base(self, saved: Mapping[str, Any], where: Any) -> None:
        """Refuse an adapter (at ``where``) whose recorded base model ``saved`` is not this one.
        The same checkpoint loaded in another dtype is the same base; an adapter saved before the
        fingerprint ignored the dtype is compared the way it was computed then.

        Raises:
            ValueError: naming both models and their dtypes and saying what differs.
        """
        here = self.base_identity()
        version = saved.get("fingerprint_version", 1)
        if version != here["fingerprint_version"]:
            with self._unmerged():  # the base's identity, not the merged adapter's
                here.update(fingerprint=base_fingerprint(self.base, version), fingerprint_version=version)
        difference = compare_bases(saved, here)
        if difference is not None:
            raise ValueError(refusal(saved, here, difference, where))

    def save_adapter(
        self, name: str, directory: str | Path, extra: dict[str, Any] | None = None, format: str = ADAPTERKIT
    ) -> Path:
        """Save adapter ``name`` and its head atomically to ``directory``: in adapterkit's format
        (``formats/native.py``), or as ``format="peft"`` / ``"adapterhub"`` folders those libraries
        load (``formats/peft_export.py``, ``formats/adapterhub_export.py``; an AdapterHub fusion
        folder holds the adapters it fuses too). ``extra`` goes into adapterkit's config only.

        Raises:
            ValueError: an unknown format; ``NotConvertible`` (a ``ValueError``): what the target
                library cannot represent, named with why.
        """
        if format != ADAPTERKIT:
            adapter = self._converted(name)
            fused = self.adapters[name].config.adapters if "fusion" in self.adapters[name].capabilities else ()
            return write_peer(format, directory, adapter, [self._converted(m) for m in fused], self.peer_layout())
        tensors = self.adapter_state(name).tensors()
        meta = {
            "name": name,
            "config": self.adapters[name].config.to_dict(),
            "head": self.heads[name].config.to_dict() if name in self.heads else None,
            "base_model": self.base_identity(),
            **(extra or {}),
        }
        return write_adapter(directory, tensors, meta)

    def _converted(self, name: str) -> Converted:
        """Adapter ``name`` as the peer-format writers take it (a merged adapter's own tensors)."""
        self.view().require([name])
        head = self.heads[name].config.to_dict() if name in self.heads else None
        tensors = {k: t.detach().cpu() for k, t in self.adapter_state(name).tensors().items()}
        return Converted(name, self.adapters[name].config.to_dict(), head, tensors)

    def peer_layout(self) -> ModelLayout:
        """This model as the peer-format converters see it (``formats/layout.py``): every site by
        the name of the base module that is it (a sublayer by the module holding its output
        dropout), and the base's biases and pooler as loaded (a merged adapter's change left out)."""
        if isinstance(self.parts.placement, ConvPlacement):
            raise ValueError(
                "peft and AdapterHub folders hold adapters of transformers; a CNN's adapters are saved and loaded in "
                "adapterkit's format (save_adapter without format=)"
            )
        names = {id(module): name for name, module in self.base.named_modules()}
        modules: dict[str, list[SiteRef]] = {}
        positions: dict[tuple[int, str], list[str]] = {}
        for site in self.sites.values():
            if site.kind not in ("linear", "sublayer", "attention", "input"):
                continue
            name = names[id(site.output_module)]
            if site.kind == "sublayer":
                name = name.rpartition(".")[0]
            modules.setdefault(name, []).append(SiteRef(site.kind, site.layer, site.position, site.role))
            if site.kind == "linear":
                positions.setdefault((site.layer, site.role), []).append(site.position)
        pooler = next((n for n, m in self.base.named_modules() if n.rpartition(".")[2] == "pooler" and hasattr(m, "dense")), None)
        with self._unmerged():
            kept = {
                n: p.detach().clone()
                for n, p in self.base.named_parameters()
                if n.endswith(".bias") or (pooler is not None and n.startswith(f"{pooler}."))
            }
        return ModelLayout(
            model_type=self.parts.model_type,
            num_layers=self.parts.num_layers,
            hidden_size=self.parts.hidden_size,
            kv_width=self.sites["0.attention"].width,
            decoder=self.is_decoder,
            base_prefix=getattr(self.body, "base_model_prefix", "") or "",
            norm_first=self.parts.placement.norm_first,
            modules={name: tuple(refs) for name, refs in modules.items()},
            positions={key: tuple(value) for key, value in positions.items()},
            pooler=pooler,
            config=self.base.config.to_dict(),
            base_tensors=kept,
        )

    def load_adapter(self, directory: str | Path, name: str | None = None, activate: bool = True) -> str:
        """Load an adapter folder saved by :meth:`save_adapter`, by peft or by AdapterHub (the
        library is recognised by the folder's JSON, ``formats/detect.py``) and return its name.

        An adapterkit folder must belong to this base model (its recorded fingerprint). A peer
        folder is converted exactly or refused (``formats/peft.py``, ``formats/adapterhub.py``);
        every adapter in it is added (peft's further adapters in subfolders, the adapters an
        AdapterHub fusion fuses) and the main one (peft's first; the fusion) is returned, named
        ``name`` if given; an AdapterHub saved setup (``save_adapter_setup``: Stack, Fuse,
        Parallel) is activated as adapterkit's setup and the adapter answering it returned. AdapterHub's pickled ``.bin`` files are read with
        ``torch.load(weights_only=True)`` (``formats/weights.py``).

        Raises:
            FileNotFoundError: ``directory`` is not a saved adapter.
            ValueError: it was trained on another base model, its files do not match its config, or
                (``NotConvertible``) a peer option has no exact adapterkit equivalent.
        """
        directory = Path(directory)
        if folder_format(directory) != ADAPTERKIT:
            return self._add_converted(read_peer(directory, self.peer_layout()), directory, name, activate)
        meta = read_adapter_config(directory)
        self.check_base(meta["base_model"], directory)
        name = name or meta["name"]
        head = HeadConfig(**meta["head"]) if meta["head"] else None
        self.add_adapter(name, config_from_saved(meta["config"]), head)
        try:
            self.load_adapter_state(name, read_adapter_weights(directory), directory)
        except Exception:
            self.delete_adapter(name)
            raise
        if activate:
            self.set_active(name)
        return name

    def _add_converted(self, folder: PeerFolder, directory: Path, name: str | None, activate: bool) -> str:
        """Add the converted adapters of a peer folder (all or none) and return the main one's name."""
        added: list[str] = []
        try:
            for adapter in folder.adapters:
                own = name if name and adapter.name == folder.main else adapter.name
                head = HeadConfig(**adapter.head) if adapter.head else None
                self.add_adapter(own, config_from_dict(adapter.config), head)
                added.append(own)
                self.load_adapter_state(own, adapter.tensors, directory)
        except Exception:
            for own in reversed(added):
                self.delete_adapter(own)
            raise
        for adapter in folder.adapters:
            for note in adapter.notes:
                warnings.warn(note, stacklevel=3)
        main = name or folder.main
        if activate:
            self.set_active(main if folder.setup is None or name else setup_from_dict(folder.setup))
        return main

    @torch.no_grad()
    def load_adapter_state(self, name: str, tensors: Mapping[str, torch.Tensor], source: Any) -> None:
        """Copy ``tensors`` (saved keys, as :meth:`adapter_state`) into adapter ``name``: the live
        parameters keep their identity (an optimizer holding them stays valid).

        Raises:
            ValueError: missing or unexpected keys, or a shape that differs (naming ``source``).
        """
        owned = self.adapter_state(name).tensors()
        missing, unexpected = sorted(set(owned) - set(tensors)), sorted(set(tensors) - set(owned))
        if missing or unexpected:
            raise ValueError(f"{source} does not match adapter {name!r}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for key, target in owned.items():
            if tuple(tensors[key].shape) != tuple(target.shape):
                raise ValueError(f"{source}: {key} has shape {tuple(tensors[key].shape)}, expected {tuple(target.shape)}")
            target.copy_(tensors[key].to(target.device, target.dtype))

