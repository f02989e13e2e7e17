"""``adapterkit fuse``: AdapterFusion stage two over adapters already trained (e.g. in a store)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from .common import add_data_arguments, adapter_name, data_name, load_training_data
from .console import quiet_libraries
from .paths import fresh_dir, fresh_store_entry
from .run_names import changed_settings, default_run_dir

DESCRIPTION = """AdapterFusion's second stage: load trained adapters (names in --store, or saved adapter
folders), freeze them and the base model, and train a fusion layer per transformer layer plus a head
for the target task. The fusion is saved as its own adapter (OUTPUT_DIR/best, and STORE/NAME with
--store); `adapterkit eval --adapter` on it loads the adapters it fuses as well. With --prune K the
K adapters that receive the most fusion attention on the validation split are kept (AdapterDrop's
fusion pruning), trained further for --prune-epochs (default 0: used as pruned), evaluated and
saved. OUTPUT_DIR defaults to runs/NAME-DIGEST, six hex digits of the settings given (the adapters
fused, the data, ...); a folder holding an earlier run, or a fusion of that name in the store, is
refused unless --overwrite is given."""


def register(subparsers) -> None:
    parser = subparsers.add_parser("fuse", help="train an AdapterFusion over trained adapters", description=DESCRIPTION)
    parser.add_argument("--adapters", required=True, metavar="A,B,...", help="adapters to fuse: names in --store or folders")
    parser.add_argument("--store", type=Path, help="adapter store to read adapters from and save the fusion into")
    parser.add_argument("--model", help="base model (default: the one recorded in the adapters)")
    add_data_arguments(parser, training=True)
    parser.add_argument("--name", help="fusion name (default: <task>_fusion)")
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patience", type=int, default=2, help="validations without improvement before stopping (0: never)")
    parser.add_argument("--output-dir", help="default: runs/<name>-<digest of the settings given>")
    parser.add_argument("--overwrite", action="store_true",
                        help="train into OUTPUT_DIR even if it holds an earlier run, and replace STORE/<name>")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no loading messages")
    parser.set_defaults(func=run)


#: Options that change how a fusion is carried out or reported, or that are in the folder's name
#: (the store stays in: it says which adapters the names are).
_NOT_IN_DIGEST = ("output_dir", "overwrite", "quiet", "name")


def output_dir(args: argparse.Namespace, name: str) -> Path:
    """The run folder (``--output-dir`` or ``runs/<name>-<digest>``) and, with ``--store``, the
    store entry of the fusion, checked writable and free (unless ``--overwrite``) before any work.

    Raises:
        ValueError: a path that cannot be written, or an earlier run or adapter not to be replaced.
    """
    folder = args.output_dir or default_run_dir(name, changed_settings(args, register, _NOT_IN_DIGEST))
    output = fresh_dir(folder, "--output-dir", reuse=args.overwrite)
    if args.store is not None:
        fresh_store_entry(args.store, name, reuse=args.overwrite)
    return output


def run(args: argparse.Namespace) -> int:
    from ..data.batching import Collator, encode_examples, make_loader
    from ..formats.native import read_adapter_config
    from ..inference.fusion import fusion_attention, prune_fusion
    from ..inference.loading import load_adapters
    from ..inference.predict import evaluate
    from ..inference.store import SAVED_EXTRAS, adapter_folder
    from ..methods.fusion import FusionConfig
    from ..training import Trainer, TrainingConfig, add_task_adapter, format_table

    folders = [adapter_folder(item.strip(), args.store) for item in args.adapters.split(",") if item.strip()]
    if len(folders) < 2:
        raise ValueError("--adapters: name at least two adapters to fuse, separated by commas")
    name = args.name or adapter_name(f"{data_name(args)}_fusion")
    output = output_dir(args, name)
    quiet_libraries(args.quiet)
    task = load_training_data(args)
    model, names, _ = load_adapters(folders, args.model)
    fused = {n: folder.resolve() for n, folder in zip(names, folders)}
    fusion = FusionConfig(adapters=tuple(fused), temperature=args.temperature, regularization=args.regularization)
    add_task_adapter(model, name, fusion, task, pooling=args.pooling, seed=args.seed)
    config = TrainingConfig(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, max_length=args.max_length,
        seed=args.seed, patience=args.patience or None, output_dir=str(output), progress=not args.quiet,
    )
    result = Trainer(model, name, task, config).train()
    print(format_table([result]))

    collator = Collator(model.tokenizer, task.kind)
    length = model.token_budget(name, args.max_length)
    validation = make_loader(encode_examples(model.tokenizer, task.validation, length), collator, 64)
    print("\nfusion attention per layer (validation split):")
    print(fusion_attention(model, name, validation).format())
    if args.prune is not None:
        kept, _ = prune_fusion(model, name, validation, keep=args.prune)
        if args.prune_epochs > 0:  # its own run folder: best/ of the unpruned fusion stays as it was
            retrain = dataclasses.replace(config, epochs=args.prune_epochs, output_dir=str(output / "pruned"))
            Trainer(model, name, task, retrain).train()
        metrics = evaluate(model, task.test, name, max_length=args.max_length)
        shown = " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        retrained = f", trained {args.prune_epochs} more epoch(s)" if args.prune_epochs > 0 else ""
        print(f"\npruned to {', '.join(kept)}{retrained}: test {shown}")
    # the trainer saved the best fusion; save it again with (pruning and) where its adapters live
    best = output / "best"
    extra = {k: v for k, v in read_adapter_config(best).items() if k in SAVED_EXTRAS}
    extra["fused_adapters"] = {n: str(f) for n, f in fused.items() if n in model.adapters[name].config.adapters}
    model.save_adapter(name, best, extra=extra)
    print(f"\nfusion: {best}")
    if args.store is not None:
        print(f"saved in the store: {model.save_adapter(name, args.store / name, extra=extra)}")
    return 0
