"""``adapterkit fuse``: AdapterFusion stage two over adapters already trained (e.g. in a store)."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

from .common import add_data_arguments, adapter_name, data_name, given_name, load_training_data, parse_seed, whole_number
from .console import quiet_libraries
from .names import check_task
from .paths import fresh_dir, writable_dir
from .run_names import changed_settings, default_run_dir

#: The pruned fusion's run folder, inside the unpruned one's (``--prune``).
PRUNED_DIR = "pruned"

DESCRIPTION = """AdapterFusion's second stage: load trained adapters (names in --store, or saved adapter
folders), freeze them and the base model, and train a fusion layer per transformer layer plus a head
for the target task. The fusion is saved as its own adapter in OUTPUT_DIR/best with its result in
OUTPUT_DIR/results.json; `adapterkit eval --adapter` on it loads the adapters it fuses as well,
and refuses one that changed since (the fusion records each one's SHA-256). With --prune K the K
adapters that receive the most fusion attention on the validation split are kept (AdapterDrop's
fusion pruning), trained further for --prune-epochs (default 0: used as pruned) and saved as a run
of its own, OUTPUT_DIR/pruned (best/ and results.json); the unpruned fusion stays in OUTPUT_DIR.
--store STORE also saves the fusion as STORE/NAME: the pruned one when --prune is given. OUTPUT_DIR defaults to
runs/NAME-DIGEST, six hex digits of the settings given (the adapters fused, the data, ...); a folder
holding an earlier run is refused unless --overwrite is given."""


def register(subparsers) -> None:
    parser = subparsers.add_parser("fuse", help="train an AdapterFusion over trained adapters", description=DESCRIPTION)
    parser.add_argument("--adapters", required=True, metavar="A,B,...", help="adapters to fuse: names in --store or folders")
    parser.add_argument("--store", type=Path, help="adapter store to read adapters from and save the fusion into "
                        "(the pruned fusion with --prune); a fusion of that name already there is refused unless "
                        "--replace-in-store")
    parser.add_argument("--replace-in-store", action="store_true", help="replace STORE/NAME if it exists")
    parser.add_argument("--model", help="base model (default: the one recorded in the adapters)")
    add_data_arguments(parser, training=True)
    parser.add_argument("--name", type=given_name, help="fusion name (default: <task>_fusion)")
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature over adapters (default: 1)")
    parser.add_argument("--regularization", type=float, default=0.01, help="weight of ||V - I||^2 (default: 0.01)")
    parser.add_argument("--prune", type=int, metavar="K", help="keep only the K most attended adapters after training")
    parser.add_argument(
        "--prune-epochs", type=int, default=0, metavar="E",
        help="train the pruned fusion further for E epochs, from its weights (default: 0)",
    )
    parser.add_argument("--pooling", help="head pooling: cls, mean or last (default: mean; last for decoders)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the fusion method's)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=parse_seed, default=0)
    parser.add_argument("--patience", type=whole_number(0), default=2, help="validations without improvement before stopping (0: never)")
    parser.add_argument("--output-dir", help="default: runs/<name>-<digest of the settings given>")
    parser.add_argument("--overwrite", action="store_true",
                        help="train into OUTPUT_DIR even if it holds an earlier run")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no loading messages")
    parser.set_defaults(func=run)


#: Options that change how a fusion is carried out or reported, or that are in the folder's name
#: (the store stays in: it says which adapters the names are).
_NOT_IN_DIGEST = ("output_dir", "overwrite", "replace_in_store", "quiet", "name")


def output_dir(args: argparse.Namespace, name: str) -> Path:
    """The run folder (``--output-dir`` or ``runs/<name>-<digest>``) and, with ``--store``, the
    store, checked writable, before any work; the run folder must be free unless ``--overwrite``.

    Raises:
        ValueError: a path that cannot be written, or an earlier run or adapter not to be replaced.
    """
    folder = args.output_dir or default_run_dir(name, changed_settings(args, register, _NOT_IN_DIGEST))
    flag = "--output-dir" if args.output_dir is not None else "the default run folder"
    output = fresh_dir(folder, flag, reuse=args.overwrite)
    if args.store is not None:
        writable_dir(args.store, "--store")
    return output


def run(args: argparse.Namespace) -> int:
    if args.task:
        check_task(args.task)
    from ..data.batching import Collator, encode_examples, make_loader
    from ..inference.fusion import fusion_attention, prune_fusion
    from ..inference.loading import load_adapters
    from ..inference.store import adapter_folder, adapter_hashes, check_store_entry, save_to_store
    from ..methods.fusion import FusionConfig
    from ..training import BEST_DIR, Trainer, TrainingConfig, add_task_adapter, format_table

    folders = [adapter_folder(item.strip(), args.store) for item in args.adapters.split(",") if item.strip()]
    if len(folders) < 2:
        raise ValueError("--adapters: name at least two adapters to fuse, separated by commas")
    if args.prune is not None and not 1 <= args.prune < len(folders):
        raise ValueError(f"--prune K keeps K of the {len(folders)} adapters fused: give 1 <= K < {len(folders)}")
    if args.prune_epochs < 0:
        raise ValueError(f"--prune-epochs E: E is 0 (the pruned fusion as it is) or more epochs; got {args.prune_epochs}")
    name = args.name or adapter_name(f"{data_name(args)}_fusion")
    output = output_dir(args, name)
    replacing = check_store_entry(args.store, name, args.replace_in_store) if args.store else None  # before any work
    quiet_libraries(args.quiet)
    task = load_training_data(args)
    if (output / PRUNED_DIR).is_dir():  # --overwrite: an earlier run's pruned fusion is not this run's
        shutil.rmtree(output / PRUNED_DIR)
    model, names, _ = load_adapters(folders, args.model)
    fused = {n: folder.resolve() for n, folder in zip(names, folders)}
    hashes = adapter_hashes(fused)  # what the fusion is trained over; loading it checks them
    fusion = FusionConfig(adapters=tuple(fused), temperature=args.temperature, regularization=args.regularization)
    add_task_adapter(model, name, fusion, task, pooling=args.pooling, seed=args.seed)
    config = TrainingConfig(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, max_length=args.max_length,
        seed=args.seed, patience=args.patience or None, output_dir=str(output), progress=not args.quiet,
    )
    result = Trainer(model, name, task, config).train()
    _save_with_records(model, name, output / BEST_DIR, fused, hashes)
    print(format_table([result]))

    collator = Collator(model.tokenizer, task.kind)
    length = model.token_budget(name, args.max_length)
    validation = make_loader(encode_examples(model.tokenizer, task.validation, length), collator, 64)
    print("\nfusion attention per layer (validation split):")
    print(fusion_attention(model, name, validation).format())
    print(f"\nfusion over {', '.join(fused)}: {output / BEST_DIR} (result: {output / 'results.json'})")
    final = output / BEST_DIR
    if args.prune is not None:
        kept, _ = prune_fusion(model, name, validation, keep=args.prune)
        pruned = _pruned_run(model, name, task, config, result, args.prune_epochs)
        final = Path(pruned.output_dir) / BEST_DIR
        _save_with_records(model, name, final, fused, hashes, pruned_from=list(fused))
        shown = " ".join(f"{k} {v:.4f}" for k, v in pruned.test_metrics.items())
        retrained = f", trained {args.prune_epochs} more epoch(s)" if args.prune_epochs > 0 else ""
        print(f"pruned to {', '.join(kept)}{retrained}: test {shown}")
        print(f"pruned fusion over {', '.join(kept)}: {final} (result: {Path(pruned.output_dir) / 'results.json'})")
        print("\n" + format_table([result, pruned]))
    if args.store is not None:
        stored = save_to_store(model, name, args.store, like=final, replace=args.replace_in_store)
        which = "the pruned fusion" if args.prune is not None else "the fusion"
        notes = "; ".join(n for n in (f"{which} of {final}", replacing) if n)
        print(f"\nsaved in the store: {stored} ({notes})")
    return 0


def _save_with_records(model, name: str, folder: Path, fused: dict[str, Path], hashes: dict[str, str], **more) -> None:
    """Save the fusion again over the trainer's ``folder``, adding where the adapters it fuses were
    loaded from and their digests (only those it fuses now: a pruned fusion fuses fewer)."""
    from ..formats.native import read_adapter_config
    from ..inference.store import ADAPTER_HASHES, SAVED_EXTRAS

    extra = {k: v for k, v in read_adapter_config(folder).items() if k in SAVED_EXTRAS}
    members = model.adapters[name].config.adapters
    extra["fused_adapters"] = {n: str(fused[n]) for n in members}
    extra[ADAPTER_HASHES] = {n: hashes[n] for n in members}
    model.save_adapter(name, folder, extra={**extra, **more})


def _pruned_run(model, name: str, task, config, unpruned, epochs: int):
    """The pruned fusion as a run of its own in ``OUTPUT_DIR/pruned`` (best/ and results.json):
    trained ``epochs`` more, or (0) as pruned: the unpruned run's record with its own metrics."""
    from ..formats.native import read_adapter_config
    from ..inference.predict import evaluate
    from ..inference.store import SAVED_EXTRAS
    from ..training import BEST_DIR, RESULTS_FILE, Trainer

    folder = Path(config.output_dir) / PRUNED_DIR
    if epochs > 0:
        return Trainer(model, name, task, dataclasses.replace(config, epochs=epochs, output_dir=str(folder))).train()
    measured = {split: evaluate(model, getattr(task, split), name, max_length=config.max_length) for split in ("validation", "test")}
    saved = read_adapter_config(Path(config.output_dir) / BEST_DIR)  # how the (shared) weights were trained
    extra = {k: saved[k] for k in SAVED_EXTRAS if k in saved}
    if "training" in extra:
        extra["training"] = {**extra["training"], "validation": measured["validation"]}
    model.save_adapter(name, folder / BEST_DIR, extra=extra)
    result = dataclasses.replace(
        unpruned, test_metrics=measured["test"], validation_metrics=measured["validation"], output_dir=str(folder),
        method_config=model.adapters[name].config.to_dict(),
    )
    result.save(folder / RESULTS_FILE)
    return result
