"""``adapterkit train``: add an adapter of a method to a model, train it on a task, report."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from .common import (
    add_data_arguments, adapter_name, data_name, file_safe_name, given_name, load_training_data, non_negative,
    options_dict, parse_option, parse_seed, whole_number,
)
from .console import quiet_children, quiet_libraries
from .names import check_task, method_options
from .paths import fresh_dir, writable_dir
from .run_config import RUN_CONFIG_FILE, save_run_config
from .run_names import changed_settings, default_run_dir, model_tag
from .training_args import add_training_control_arguments, check_against_task, training_controls

DESCRIPTION = """Train an adapter on a bundled task or your own files. The best adapter (by validation
accuracy, or Pearson for regression, or --metric) is saved in OUTPUT_DIR/best, a checkpoint after every epoch
in OUTPUT_DIR/checkpoint (continue with --resume), and the result in OUTPUT_DIR/results.json; the flags
in OUTPUT_DIR/config.yaml, a line per optimizer step in OUTPUT_DIR/log.jsonl.
OUTPUT_DIR defaults to runs/NAME-METHOD-MODEL, plus six hex digits of the settings changed from
their defaults if any (so runs that differ never share a folder); a folder holding an earlier run
is refused unless --overwrite (or --resume) is given.
With --nproc N it trains data-parallel in N processes (torchrun; gloo on CPU, NCCL on GPUs):
--batch-size is then the global batch of a step, split evenly across the processes.
K-Adapter: --method k_adapter pretrains a knowledge adapter (e.g. on --task kfacts or kdeps);
--method k_task --knowledge DIR [--knowledge DIR ...] trains a task head over saved knowledge
adapters, which stay frozen (--option train_adapters=true retrains copies of them).
MAD-X: --task mlm_parlspeech_de trains a language adapter with a masked-LM head (BERT masking);
--stack-under DIR trains the new adapter above saved ones, frozen (Stack(lang, task)); `eval
--stack-under` swaps another language's adapter in.
Causal LMs: a --train-file of {"instruction", "response"} rows (or {"prompt", "completion"}, an
optional "input" joined to the instruction) trains with the loss on the responses, of {"text"} rows
as plain language modelling; the best is the lowest validation perplexity. Use the adapter with
`adapterkit generate`, or merge it with `adapterkit convert DIR OUT --to merged`."""


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train an adapter on a task", description=DESCRIPTION)
    parser.add_argument("--model", default="minilm", help="bundled model name or local model folder (default: minilm)")
    parser.add_argument("--method", required=True, help="a registered method (see `adapterkit methods`)")
    parser.add_argument("--option", action="append", type=parse_option, metavar="KEY=VALUE",
                        help="a method option (repeatable): --option reduction_factor=8 --option targets=q,v; "
                        "lists as a,b or [a,b], numbers, true/false and null as such (see `adapterkit methods NAME`)")
    add_data_arguments(parser, training=True)
    parser.add_argument("--name", type=given_name, help="adapter name (default: the task name)")
    parser.add_argument("--chat-template", action="store_true", help="instruction files: write prompts with the "
                        "tokenizer's chat template (default: ### Instruction: ... ### Response:), recorded with the adapter")
    parser.add_argument("--knowledge", action="append", type=Path, metavar="DIR",
                        help="a saved knowledge adapter (k_adapter) to load first, for --method k_task (repeatable); "
                        "the head reads them in this order unless --option adapters=[...] names them")
    parser.add_argument("--stack-under", action="append", type=Path, metavar="DIR",
                        help="a saved adapter (e.g. a language adapter) to load frozen and stack under the one "
                        "trained: Stack(under..., new) (repeatable, lowest first); recorded with the adapter")
    parser.add_argument("--pooling", help="head pooling: cls, mean or last (default: mean; last for decoders)")
    parser.add_argument("--mlp-head", action="store_true", help="a one-hidden-layer MLP head instead of a linear one")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the method's, see `adapterkit methods`)")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup-ratio", type=float, default=0.06)
    parser.add_argument("--max-length", type=int, default=128, help="tokens per example (default: 128)")
    parser.add_argument("--image-size", type=int, metavar="PIXELS",
                        help="image models: the square input size (default: 64; efficientnet-lite0 takes multiples of 32)")
    parser.add_argument("--no-augment", action="store_true",
                        help="image tasks: no augmentation (default: the rotations, crops and flips that keep the task's labels)")
    parser.add_argument("--seed", type=parse_seed, default=0)
    parser.add_argument("--patience", type=whole_number(0), default=2,
                        help="stop after this many validations without improvement (default: 2; 0 never stops)")
    parser.add_argument("--eval-every", type=int, default=1, metavar="EPOCHS")
    parser.add_argument("--max-grad-norm", type=non_negative, default=1.0, help="gradient clipping (0 disables)")
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    parser.add_argument("--output-dir", help="default: runs/<name>-<method>-<model>[-<digest of the changed settings>]")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="train into OUTPUT_DIR even if it holds an earlier run")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    parser.add_argument("--store", help="also save the best adapter as STORE/<name>, an adapter store that "
                        "`fuse` and `predict --adapters` read; an adapter of that name already there is refused "
                        "(checked before training) unless --replace-in-store")
    parser.add_argument("--replace-in-store", action="store_true",
                        help="replace STORE/<name> if it exists (fusions over it then refuse to load until retrained)")
    parser.add_argument("--robust-adapter-drop", action="store_true",
                        help="skip the adapters of a random number of lower layers in each batch (AdapterDrop), "
                        "so the adapter works with any number of lower layers dropped at inference")
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="train in N data-parallel processes on this machine (relaunches under torchrun; "
                        "for several machines run `torchrun ... -m adapterkit train ...` instead)")
    parser.add_argument("--fsdp", action="store_true",
                        help="shard the frozen base weights across the processes (FSDP2); adapters stay whole")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute layer activations in the backward pass instead of storing them")
    add_training_control_arguments(parser)
    parser.set_defaults(func=run)


#: Options that change how a run is carried out or reported, not what it trains, or that are
#: already in the default run folder's name (see ``run_names.py``).
_NOT_IN_DIGEST = ("output_dir", "resume", "overwrite", "quiet", "store", "replace_in_store", "nproc", "fsdp",
                  "gradient_checkpointing", "save_steps", "tensorboard", "log_dir", "config", "model", "method", "name")


def output_dir(args: argparse.Namespace, name: str) -> Path:
    """The run folder (``--output-dir``, or the default of ``run_names.py``) and, with ``--store``
    and ``--log-dir``, the store and the TensorBoard folder, checked writable, before any work;
    the run folder must be free unless ``--overwrite``/``--resume`` (checked by the first process
    only: the others of a distributed run may find its first files there).

    Raises:
        ValueError: a path that cannot be written, or an earlier run or adapter not to be replaced.
    """
    folder = args.output_dir
    if folder is None:
        # the task is in the name unless --name replaced it; a train file's path stays in the digest
        ignored = (*_NOT_IN_DIGEST, *(() if args.name else ("task",)))
        settings = changed_settings(args, register, ignored)
        if "option" in settings:  # in any order
            settings["option"] = dict(sorted(options_dict(args.option).items()))
        folder = default_run_dir(f"{name}-{args.method}-{model_tag(args.model)}", settings)
    later_rank = int(os.environ.get("RANK", "0")) > 0
    flag = "--output-dir" if args.output_dir is not None else "the default run folder"
    output = fresh_dir(folder, flag, reuse=args.overwrite or args.resume or later_rank, resumable=True)
    if args.store:  # whether the name is free there: check_store_entry, once the store code is imported
        writable_dir(args.store, "--store")
    if args.log_dir:
        writable_dir(args.log_dir, "--log-dir")
    return output


def run(args: argparse.Namespace) -> int:
    options = method_options(args.method, args.option)  # names first: torch is not imported yet
    if args.task:
        check_task(args.task)
    # before any work: a run must not train for an epoch, then fail to save (the folder is named
    # without torch: `train.csv`'s adapter is `train_adapter`, its run folder runs/train-...)
    output = output_dir(args, args.name or file_safe_name(data_name(args)))
    # one process: the data too before the heavy imports (--nproc N: each relaunched process loads it)
    task = load_training_data(args) if args.nproc == 1 else None
    from ..distributed import launched, relaunch

    if args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    if args.batch_size % args.nproc:
        raise ValueError(f"--batch-size {args.batch_size} is split across --nproc {args.nproc} processes; make it a multiple")
    if args.nproc > 1 and not launched():  # before the heavy imports: the N processes do the work
        quiet_children(args.quiet)
        return relaunch(args.nproc, args.argv)
    if args.fsdp and not launched():
        raise ValueError("--fsdp shards across processes: add --nproc N (or launch with torchrun)")
    quiet_libraries(args.quiet)

    from ..composition import AdapterDrop, Stack
    from ..data.task import GENERATION_KINDS
    from ..formats.native import read_adapter_config
    from ..distributed import is_main_process, make_accelerator, shard_model, world_size
    from ..inference.loading import STACKED_UNDER, load_under
    from ..inference.store import ADAPTER_HASHES, adapter_hashes, check_store_entry, save_to_store
    from ..model import AdapterModel
    from ..registry import make_config
    from ..training import Trainer, TrainingConfig, add_task_adapter, format_table
    from ..training.interrupt import TrainingInterrupted

    if args.knowledge and args.method != "k_task":
        raise ValueError(f"--knowledge loads knowledge adapters for --method k_task, not for {args.method}")
    knowledge: dict[str, Path] = {}
    for folder in args.knowledge or ():
        known = read_adapter_config(folder)["name"]
        if known in knowledge:  # the head would read one of them, silently
            raise ValueError(
                f"--knowledge {folder} and {knowledge[known]} are both adapter {known!r}; give each knowledge "
                "adapter once, and train knowledge adapters meant to be read together under different --name"
            )
        knowledge[known] = folder.resolve()
    for folder in args.stack_under or ():  # readable before any work, as --knowledge is
        read_adapter_config(folder)
    if args.method == "k_task" and "adapters" not in options:
        options["adapters"] = list(knowledge)
    method = make_config(args.method, **options)  # fail fast, before loading data and model
    name = args.name or adapter_name(data_name(args))
    replacing = check_store_entry(args.store, name, args.replace_in_store) if args.store else None  # before any work
    run_folder = str(output)
    config = TrainingConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        max_length=args.max_length,
        seed=args.seed,
        patience=args.patience or None,
        eval_every=args.eval_every,
        max_grad_norm=args.max_grad_norm or None,
        output_dir=run_folder,
        resume=args.resume,
        mixed_precision=args.mixed_precision,
        progress=not args.quiet,
        augment=not args.no_augment,
        **training_controls(args, run_folder),
    )
    main = is_main_process()
    if task is None:
        task = load_training_data(args)
    check_against_task(args, task)
    if not args.quiet and main:
        print(f"{task.describe()}\nrun folder: {output}", file=sys.stderr, flush=True)
    model = AdapterModel.from_pretrained(args.model, image_size=args.image_size)
    if task.kind in GENERATION_KINDS and not model.is_decoder:
        raise ValueError(
            f"{args.task or args.train_file} holds {task.kind.replace('_', ' ')} data, which fine-tunes a causal LM, "
            f"but --model {args.model} is an encoder ({model.parts.model_type}); give a decoder, such as "
            "--model smollm2-135m (see `adapterkit models`)"
        )
    for folder in knowledge.values():
        model.load_adapter(folder, activate=False)
    under = load_under(model, args.stack_under or ())
    add_task_adapter(model, name, method, task, pooling=args.pooling, mlp=args.mlp_head, seed=args.seed)
    setup = Stack(*under, name) if under else None
    if args.robust_adapter_drop:
        setup = AdapterDrop(setup or name, robust=True)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    accelerator = make_accelerator(config)
    if args.fsdp:
        shard_model(model, accelerator)
    if main:  # every flag's final value: `train --config OUTPUT_DIR/config.yaml` repeats the run
        # written once the run is set up: a wrong --model must not leave a folder that needs --overwrite
        save_run_config(args, Path(run_folder) / RUN_CONFIG_FILE, {"name": name, "output_dir": run_folder, "nproc": world_size()})
    try:
        result = Trainer(model, name, task, config, setup=setup, accelerator=accelerator).train()
    except TrainingInterrupted as stop:
        return report_interrupt(stop, args.argv, main)
    if not main:  # rank 0 reports and writes
        return 0
    best = Path(config.output_dir) / "best"
    recorded = {}  # like a fusion: where the adapters it reads (runs above) were loaded from
    if knowledge:
        recorded["knowledge_adapters"] = {n: str(f) for n, f in knowledge.items()}
        recorded[ADAPTER_HASHES] = adapter_hashes(knowledge)
    if under:
        recorded[STACKED_UNDER] = {n: str(f.resolve()) for n, f in zip(under, args.stack_under)}
    if recorded:
        kept = {k: v for k, v in read_adapter_config(best).items() if k in ("task", "training")}
        model.save_adapter(name, best, extra={**kept, **recorded})
    print(format_table([result]))
    print(f"\nbest adapter (epoch {result.best_epoch} of {result.epochs_run}): {best}")
    if args.store:
        stored = save_to_store(model, name, args.store, like=f"{config.output_dir}/best", replace=args.replace_in_store)
        print(f"saved in the store: {stored}" + (f" ({replacing})" if replacing else ""))
    return 0


def report_interrupt(stop, argv: list[str], main: bool) -> int:
    """Say where Ctrl-C stopped the run (``TrainingInterrupted``) and the command that resumes it;
    the exit status of an interrupted command, 130."""
    if main:
        print(f"adapterkit train: {stop.message}", file=sys.stderr)
        if stop.checkpoint is not None:
            print(f"resume with: {resume_command(argv)}", file=sys.stderr)
    return 130


def resume_command(argv: list[str]) -> str:
    """The command line ``argv`` (``train ...``) with ``--resume`` (and the process count of a
    relaunched distributed run), quoted for a POSIX shell."""
    from ..distributed import launched, world_size

    command = list(argv)
    if "--resume" not in command:
        command.append("--resume")
    if launched() and world_size() > 1 and not any(a == "--nproc" or a.startswith("--nproc=") for a in command):
        command += ["--nproc", str(world_size())]
    return "adapterkit " + shlex.join(command)
