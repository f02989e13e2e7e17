"""Training an :class:`~adapterkit.AdapterModel` inside ``transformers.Trainer``.

An ``AdapterModel`` is a ``torch.nn.Module`` whose ``forward`` takes a tokenizer's batch plus
``labels`` and returns an output with ``loss`` and ``logits``: all ``transformers.Trainer``
needs. So an existing Trainer script trains an adapter unchanged, with the Trainer's own DDP,
mixed precision, logging, evaluation and ``activation_checkpointing=True`` (the model forwards
it to :func:`adapterkit.distributed.enable_gradient_checkpointing`)::

    model = AdapterModel.from_pretrained("minilm")
    model.add_adapter("rt", "houlsby", HeadConfig(num_labels=2))
    model.train_adapter("rt")                      # only the adapter and its head train
    trainer = Trainer(model=model, args=args, train_dataset=..., data_collator=DataCollatorWithPadding(tok),
                      callbacks=[SaveAdapterCallback("rt")])
    trainer.train()

What the Trainer cannot know is that only the adapter trains: for a model that is not a
``PreTrainedModel`` it writes the whole ``state_dict()`` into every checkpoint, frozen base
included. :class:`SaveAdapterCallback` makes it save only the adapter and its head:

* while attached, the model's ``state_dict()`` holds only the trained adapter and its head, so
  every ``checkpoint-N/model.safetensors`` (and ``trainer.save_model()``) is adapter-sized; and
  ``load_state_dict`` does not report the base weights as missing, so ``resume_from_checkpoint``
  and ``load_best_model_at_end`` work (the Trainer loads with ``strict=False`` and the base is
  already in the model);
* each checkpoint also gets ``checkpoint-N/adapter/`` and the end of training
  ``OUTPUT_DIR/adapter/``, in adapterkit's own format (``AdapterModel.load_adapter``,
  ``adapterkit eval``, ``adapterkit predict``). Only the main process writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

    from .model import AdapterModel


def trained_adapter(model: AdapterModel) -> str:
    """The one adapter of ``model`` with parameters that require grad (``train_adapter`` sets it)."""
    names = [n for n in model.adapters if any(p.requires_grad for p in model.adapter_parameters(n).values())]
    if len(names) != 1:
        found = ", ".join(names) or "none"
        raise ValueError(
            f"cannot tell which adapter is trained (adapters with trainable parameters: {found}); "
            "call model.train_adapter(name) or pass the name: SaveAdapterCallback(name)"
        )
    return names[0]


def adapter_state_keys(model: AdapterModel, name: str) -> set[str]:
    """The ``state_dict`` keys of what adapter ``name`` owns (``AdapterModel.adapter_state``: its
    modules' parameters and persistent buffers, its head, base weights it trains)."""
    owned = {id(t) for t in model.adapter_state(name).tensors().values()}
    return {key for key, t in model.state_dict(keep_vars=True).items() if id(t) in owned}


class SaveAdapterCallback(TrainerCallback):
    """Make ``transformers.Trainer`` save only adapter ``adapter`` and its head (see the module
    docstring).

    Args:
        adapter: the adapter being trained; None: the single adapter whose parameters require grad.
        folder: the subfolder of each checkpoint (and of the output dir) for the adapterkit copy.
    """

    def __init__(self, adapter: str | None = None, folder: str = "adapter"):
        self.adapter = adapter
        self.folder = folder
        self._model: AdapterModel | None = None
        self._handles: list[RemovableHandle] = []

    # ----------------------------------------------------------------- Trainer events
    def on_init_end(self, args, state, control, model=None, **kwargs):
        self.attach(model)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.attach(model)  # also when the callback was added after the Trainer was built

    def on_save(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            self._unwrapped(model).save_adapter(self._name(model), checkpoint / self.folder)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        """Save the final adapter in inference form: a reparameterised prefix (also inside MAM) is
        folded into plain prefixes first, as adapterkit's own trainer does (same outputs, far
        fewer parameters). Checkpoints keep the training form, which resuming needs."""
        unwrapped, name = self._unwrapped(model), self._name(model)
        if unwrapped.fold_adapter(name):  # on every process, so they keep computing the same model
            self.release()
            self.attach(unwrapped)  # the folded adapter's keys are the ones to keep now
        if state.is_world_process_zero:
            unwrapped.save_adapter(name, Path(args.output_dir) / self.folder)

    # ----------------------------------------------------------------- the model's state dict
    def attach(self, model: Any) -> None:
        """Make ``model.state_dict()`` hold only the adapter and its head (idempotent)."""
        model = self._unwrapped(model)
        if model is self._model:
            return
        self.release()
        keep = adapter_state_keys(model, self._name(model))

        def only_the_adapter(module, state_dict, prefix, local_metadata) -> None:
            for key in [k for k in state_dict if k.startswith(prefix) and k[len(prefix) :] not in keep]:
                del state_dict[key]

        def base_is_not_missing(module, incompatible_keys) -> None:
            incompatible_keys.missing_keys[:] = [k for k in incompatible_keys.missing_keys if k in keep]

        self._handles = [
            model.register_state_dict_post_hook(only_the_adapter),
            model.register_load_state_dict_post_hook(base_is_not_missing),
        ]
        self._model = model

    def release(self) -> None:
        """Give the model back its full ``state_dict()``."""
        for handle in self._handles:
            handle.remove()
        self._handles, self._model = [], None

    # ----------------------------------------------------------------- helpers
    def _name(self, model: AdapterModel) -> str:
        if self.adapter is None:
            self.adapter = trained_adapter(self._unwrapped(model))
        return self.adapter

    @staticmethod
    def _unwrapped(model: Any) -> AdapterModel:
        from .model import AdapterModel

        while not isinstance(model, AdapterModel) and hasattr(model, "module"):  # DDP and similar wrappers
            model = model.module
        if not isinstance(model, AdapterModel):
            raise TypeError(f"SaveAdapterCallback needs a Trainer whose model is an AdapterModel, got {type(model).__name__}")
        return model


__all__ = ["SaveAdapterCallback", "adapter_state_keys", "trained_adapter"]
