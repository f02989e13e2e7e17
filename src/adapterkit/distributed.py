"""Training past one process: launching, DDP through ``accelerate``, FSDP2, gradient checkpointing.

**Data parallel (DDP).** :func:`make_accelerator` builds the ``accelerate.Accelerator`` the
:class:`~adapterkit.training.Trainer` uses. Under ``torchrun`` every process holds the whole
model; each optimizer step, every process takes its slice of the *same* global batch
(``split_batches``: the batch of ``TrainingConfig.batch_size`` examples the single-process run
would take, cut into ``N`` equal consecutive slices), computes the mean loss of its slice, and DDP
averages the gradients of the trainable parameters across processes. With equal slices the mean
of the per-process means is the mean over the whole batch, so ``N`` processes take the same steps
as one process up to floating-point summation order, and the learning-rate schedule (one step
per optimizer step) is unchanged. Only rank 0 writes files (the trainer checks
``is_main_process``). Adapters that do not run on a step (AdapterDrop, an inactive adapter, a
fusion of a subset) leave parameters without gradient, so DDP runs with
``find_unused_parameters=True``; parameters unused on *every* process keep ``grad=None``, as in a
single process.

**Sharded (FSDP2).** :func:`shard_model` applies ``torch.distributed.fsdp.fully_shard`` to each
transformer layer and to the model. Only the *frozen* base weights are sharded (they are nearly
all the memory); the trained parameters (adapters, heads, and base weights a method trains, e.g.
BitFit's biases) stay whole on every process, passed to FSDP as ``ignored_params``, and their
gradients are averaged across processes at the end of each backward pass
(:class:`ReplicatedGradients`). Adapters are a few percent of the model, so keeping a copy per
process costs little, and in exchange the adapter, its optimizer state and its checkpoints are
ordinary tensors: saving writes the same adapter files as single-process training (no gather
that every rank must join), and resuming works unchanged. Sharding the adapters too (plain
``fully_shard`` of everything) would make them ``DTensor`` shards that must be gathered with a
collective before every save.

**Gradient checkpointing.** :func:`~adapterkit.checkpointing.enable_gradient_checkpointing`
(re-exported here) turns on the base model's own activation checkpointing (non-reentrant by
default) and makes the recomputation in the backward pass see the same adapter setup as the
forward pass did.

**What breaks elsewhere** (why the pieces look as they do):

* ``accelerate launch --cpu --num_processes 2`` silently runs one process; and a plain
  ``Accelerator()`` under ``torchrun`` on a machine without GPU does not see the other processes
  at all (``DistributedType.NO``: N independent runs, all writing the same files). Launch with
  ``torchrun`` (or ``adapterkit train --nproc N``) and create the accelerator with
  :func:`make_accelerator`, which passes ``cpu=True`` (gloo) when there is no GPU.
* accelerate's FSDP plugin is not applied on CPU (the model gets DDP-wrapped, which fails on
  ``DTensor`` parameters), so :func:`shard_model` shards the model itself and marks it prepared.
* FSDP1 flattens each unit's parameters into one ``FlatParameter``, which cannot mix frozen and
  trainable parameters unless ``use_orig_params=True`` or the trainable modules are wrapped
  separately; FSDP2 shards per parameter and has no such limit.
* Reentrant checkpointing with frozen embeddings gives no gradient to the adapters (no input of
  the checkpointed layer requires grad) unless the embedding output is made to require grad;
  transformers does that when checkpointing is enabled, and the non-reentrant variant does not
  need it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from .checkpointing import enable_gradient_checkpointing

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .model import AdapterModel
    from .training.config import TrainingConfig

#: Environment variables ``torchrun`` (torch.distributed.run) sets in every process it starts.
_LAUNCHED_ENV = ("LOCAL_RANK", "WORLD_SIZE")


# ----------------------------------------------------------------------------- launching
def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher setting WORLD_SIZE)."""
    return all(name in os.environ for name in _LAUNCHED_ENV)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 of a launched run, or the only process; decided from the environment, so it can be
    asked before any process group exists."""
    return int(os.environ.get("RANK", "0")) == 0


def _has_accelerator() -> bool:
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def launch_command(nproc: int, argv: Sequence[str], module: str = "adapterkit") -> list[str]:
    """The ``torchrun`` command that runs ``python -m module *argv`` in ``nproc`` local processes."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", module, *argv,
    ]  # fmt: skip


def relaunch(nproc: int, argv: Sequence[str], module: str = "adapterkit") -> int:
    """Run ``python -m module *argv`` in ``nproc`` processes under ``torchrun``; its exit status.

    Each child sees ``WORLD_SIZE``/``LOCAL_RANK`` (so it does not relaunch itself). On CPU the
    cores are divided between the processes (``OMP_NUM_THREADS``; torchrun's default is 1),
    unless the caller set it.
    """
    check_nproc(nproc)
    # the children are launched already; and torchrun's own parser would take a --nproc among
    # the script's arguments for an abbreviation of its --nproc-per-node
    argv = _without_option(argv, "--nproc")
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        cores = os.cpu_count() or 1
        env["OMP_NUM_THREADS"] = str(1 if _has_accelerator() else max(1, cores // nproc))
    return subprocess.run(launch_command(nproc, argv, module), env=env, check=False).returncode


def _without_option(argv: Sequence[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` and ``option=VALUE``."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == option:
            skip = True
        elif not item.startswith(option + "="):
            kept.append(item)
    return kept


def check_nproc(nproc: int) -> None:
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise ValueError(
            f"--nproc {nproc} but only {torch.cuda.device_count()} GPU(s) are visible; NCCL needs one GPU per "
            "process (hide the GPUs with CUDA_VISIBLE_DEVICES= to run on CPU with gloo)"
        )


# ----------------------------------------------------------------------------- DDP
def make_accelerator(config: TrainingConfig | None = None, *, mixed_precision: str | None = None) -> Accelerator:
    """The ``Accelerator`` for :class:`~adapterkit.training.Trainer`, right for 1 or N processes.

    * ``cpu=True`` under a launcher when no GPU is visible: accelerate then joins the processes
      with gloo (without it, each CPU process trains alone; see the module docstring).
    * ``split_batches=True``: ``config.batch_size`` is the global batch of one optimizer step,
      split into equal slices, one per process; it must be a multiple of the number of processes.
    * DDP with ``find_unused_parameters=True`` for adapters that skip layers on some steps.

    accelerate keeps one state per process: the first accelerator fixes ``mixed_precision`` and
    the device for every later one.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs

    precision = mixed_precision or (config.mixed_precision if config is not None else "no")
    accelerator = Accelerator(
        cpu=launched() and world_size() > 1 and not _has_accelerator(),
        mixed_precision=precision,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    if world_size() > 1 and accelerator.num_processes != world_size():
        raise RuntimeError(
            f"accelerate sees {accelerator.num_processes} process(es) but WORLD_SIZE is {world_size()}; "
            "an accelerator was created in this process before (accelerate keeps the first one's settings)"
        )
    if config is not None and config.batch_size % accelerator.num_processes:
        raise ValueError(
            f"batch_size {config.batch_size} is the global batch of one step, split across "
            f"{accelerator.num_processes} processes; make it a multiple of {accelerator.num_processes}"
        )
    return accelerator


# ----------------------------------------------------------------------------- FSDP2
def _trained_parameters(model: AdapterModel) -> list[nn.Parameter]:
    """Every parameter an adapter can train (what each adapter owns, ``AdapterModel.adapter_state``)."""
    params = {id(p): p for name in model.adapters for p in model.adapter_state(name).parameters.values()}
    return list(params.values())


def shard_model(model: AdapterModel, accelerator: Accelerator, *, reshard_after_forward: bool = True) -> AdapterModel:
    """Shard ``model``'s frozen base weights across the processes with FSDP2; returns the model.

    Each transformer layer becomes one FSDP unit (gathered just before it runs, freed after) and
    the model itself the root unit (embeddings, final norm). Parameters any adapter can train
    stay whole on every process (see the module docstring), so add every adapter before
    sharding. The model is marked as prepared, so ``accelerator.prepare`` (inside the trainer)
    leaves it as it is instead of wrapping it in DDP.

    Args:
        model: the adapted model, with its adapters added.
        accelerator: from :func:`make_accelerator` (it has set up the process group and device).
        reshard_after_forward: free each layer's gathered weights after its forward pass (and
            gather again for backward); False keeps them until the backward pass (faster, more
            memory).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("shard_model needs a process group: launch with torchrun and create make_accelerator() first")
    if any("modifies_base" in m.capabilities for m in model.adapters.values()):
        warnings.warn(
            "full/partial fine-tuning trains base weights, which stay whole on every process: "
            "sharding saves memory only on the frozen layers",
            stacklevel=2,
        )
    replicated = _trained_parameters(model)
    model.to(accelerator.device)
    mesh = init_device_mesh(accelerator.device.type, (dist.get_world_size(),))
    ignored = set(replicated)
    for parts in model.parts.layers:
        fully_shard(parts.layer, mesh=mesh, reshard_after_forward=reshard_after_forward, ignored_params=ignored)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward, ignored_params=ignored)
    model._replicated_gradients = ReplicatedGradients(model, replicated)
    if accelerator.mixed_precision in ("fp16", "bf16"):
        # what accelerate does to a model it prepares: the forward pass runs under autocast
        dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float16
        model.forward = torch.autocast(device_type=accelerator.device.type, dtype=dtype)(model.forward)
    model._is_accelerate_prepared = True  # accelerate's own flag: prepare() returns the model as is
    return model


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):  # ModelOutput is an OrderedDict
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)


class ReplicatedGradients:
    """Averages the gradients of parameters kept whole on every process, once per backward pass.

    A forward hook on the model puts a hook on its outputs that require grad; the first of them
    to receive a gradient queues a callback that the autograd engine runs when the whole backward
    pass has finished (how DDP and FSDP finish their own reductions). The callback packs the
    gradients of the trainable parameters into one buffer (zeros where a process has none),
    all-reduces it with a count of how many processes had a gradient, and divides by the number
    of processes: the average DDP computes. A parameter no process used keeps ``grad=None``.
    Gradient accumulation over several backward passes stays correct: each pass averages the sum
    so far, and averaging is linear.
    """

    def __init__(self, model: nn.Module, params: Sequence[nn.Parameter]):
        self.params = list(params)
        self._queued = False
        self.handle = model.register_forward_hook(self._after_forward)

    def _after_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        if not torch.is_grad_enabled():
            return
        for tensor in _tensors(output):
            if tensor.requires_grad:
                tensor.register_hook(self._on_gradient)

    def _on_gradient(self, grad: torch.Tensor) -> None:
        if not self._queued:
            self._queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self.synchronize)

    def synchronize(self) -> None:
        """All-reduce (average) the gradients now; every process must call it the same number of times."""
        self._queued = False
        params = [p for p in self.params if p.requires_grad]
        if not params or dist.get_world_size() == 1:
            return
        by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
        for p in params:
            by_dtype.setdefault(p.dtype, []).append(p)
        for dtype in sorted(by_dtype, key=str):  # the same order on every process
            group = by_dtype[dtype]
            grads = [p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1) for p in group]
            present = torch.tensor([p.grad is not None for p in group], dtype=dtype, device=group[0].device)
            flat = torch.cat([*grads, present])
            dist.all_reduce(flat)
            counts = flat[-len(group) :]
            offset = 0
            for p, count in zip(group, counts.tolist()):
                size = p.numel()
                if count > 0:
                    p.grad = flat[offset : offset + size].view_as(p).div_(dist.get_world_size())
                offset += size


__all__ = [
    "ReplicatedGradients",
    "check_nproc",
    "enable_gradient_checkpointing",
    "is_main_process",
    "launch_command",
    "launched",
    "make_accelerator",
    "relaunch",
    "shard_model",
    "world_size",
]
