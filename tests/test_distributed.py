"""Tests for adapterkit.distributed: DDP and FSDP2 under torchrun (gloo), gradient checkpointing,
and ``adapterkit train --nproc``.

The multi-process tests launch this file as a torchrun worker (see :func:`worker`): two gloo
processes train the same tiny BERT (hidden 32, 2 layers, dropout off so the processes draw no
different random masks) in several scenarios (plain DDP; robust AdapterDrop; the same with
gradient checkpointing; a different AdapterDrop depth per rank, so parameters are unused on one
rank only; FSDP2; transformers.Trainer with SaveAdapterCallback), once, and each rank dumps its
weights. The tests then compare the ranks with each other, the frozen base with its initial
weights, and the saved adapter with a single-process run of the same global batch.

Tolerance: a 2-process step computes each half batch's mean loss and averages the two gradients,
a 1-process step the mean over the whole batch: the same sum in another order (and matrix
products of other shapes), so the weights agree to float32 rounding amplified over 8 Adam steps.
We allow ``atol=2e-6, rtol=1e-5``; the largest difference observed is 2e-7 (weights up to 0.2).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_training import VOCAB, one_thread, tiny_tokenizer, toy_task  # noqa: F401 (autouse fixture)
from transformers import BertConfig, BertModel

from adapterkit import AdapterDrop, AdapterModel
from adapterkit import context
from adapterkit.distributed import enable_gradient_checkpointing, launch_command, shard_model
from adapterkit.hf_trainer import adapter_state_keys
from adapterkit.training import Trainer, TrainingConfig, evaluate, task_head

ATOL, RTOL = 2e-6, 1e-5
#: name -> (setup, gradient checkpointing, FSDP); "per_rank" drops a different layer count per
#: rank; "hf" is transformers.Trainer (its own DDP) with SaveAdapterCallback.
SCENARIOS = {
    "plain": ("toy", False, False),
    "drop": ("robust", False, False),
    "drop_checkpointed": ("robust", True, False),
    "per_rank": ("per_rank", False, False),
    "fsdp": ("toy", False, True),
    "hf": ("toy", False, False),
}
REFERENCE = {"plain": "plain", "drop": "drop", "drop_checkpointed": "drop", "fsdp": "plain"}
TASK = dict(train=64, held_out=16)


# ---------------------------------------------------------------- shared set-up (tests and worker)
def build_model_dir(directory: Path) -> Path:
    """A tiny BERT without dropout plus its tokenizer, as a local model folder."""
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=len(VOCAB),
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    BertModel(config).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def fresh_model(model_dir: Path) -> AdapterModel:
    from accelerate.utils import set_seed

    model = AdapterModel.from_pretrained(str(model_dir))
    set_seed(0)
    model.add_adapter("toy", "houlsby", task_head(toy_task(8, 4), dropout=0.0), bottleneck_size=8)
    return model


def training_config(output: Path) -> TrainingConfig:
    # 64 examples / 16 = 4 steps per epoch, 8 in all; warmup exercises the schedule
    return TrainingConfig(
        epochs=2, batch_size=16, learning_rate=1e-2, warmup_ratio=0.25, patience=None, progress=False,
        output_dir=str(output),
    )  # fmt: skip


def scenario_setup(kind: str, rank: int):
    if kind == "robust":
        return AdapterDrop("toy", robust=True)  # same seed on every rank: the same depth per step
    if kind == "per_rank":
        return AdapterDrop("toy", first=rank)  # rank 1 never runs the layer-0 adapters
    return kind


def train(model_dir: Path, output: Path, scenario: str, rank: int = 0) -> AdapterModel:
    from adapterkit.distributed import make_accelerator

    kind, checkpointed, fsdp = SCENARIOS[scenario]
    model = fresh_model(model_dir)
    if checkpointed:
        enable_gradient_checkpointing(model)
    config = training_config(output)
    accelerator = make_accelerator(config)
    if fsdp:
        shard_model(model, accelerator)
    Trainer(model, "toy", toy_task(**TASK), config, setup=scenario_setup(kind, rank), accelerator=accelerator).train()
    return model


def train_with_transformers(model_dir: Path, output: Path) -> tuple[AdapterModel, int]:
    """An unchanged transformers.Trainer script; (model, processes the Trainer saw).

    On a machine without GPU it needs ``use_cpu=True``: otherwise each torchrun process trains
    alone (the same trap as accelerate's, see adapterkit.distributed)."""
    from transformers import DataCollatorWithPadding, TrainingArguments
    from transformers import Trainer as HFTrainer

    from adapterkit.hf_trainer import SaveAdapterCallback

    model = fresh_model(model_dir)
    model.train_adapter("toy")
    tokenizer = tiny_tokenizer()
    args = TrainingArguments(
        output_dir=str(output), per_device_train_batch_size=8, max_steps=4, save_steps=2, learning_rate=1e-2,
        report_to=[], disable_tqdm=True, use_cpu=not torch.cuda.is_available(), dataloader_pin_memory=False,
    )  # fmt: skip
    data = [{**tokenizer(e.texts[0]), "labels": e.label} for e in toy_task(**TASK).train]
    HFTrainer(
        model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[SaveAdapterCallback("toy")],
    ).train()  # fmt: skip
    return model, args.world_size


def worker(out: Path, model_dir: Path) -> None:
    """One torchrun process: every scenario in turn, then this rank's weights to ``out``."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    for scenario in SCENARIOS:  # "hf" last: transformers resets accelerate's state
        processes = None
        if scenario == "hf":
            model, processes = train_with_transformers(model_dir, out / scenario / "run")
        else:
            model = train(model_dir, out / scenario / "run", scenario, rank)
        tensors = {f"trained.{k}": p.detach().clone() for k, p in model.adapter_parameters("toy").items()}
        for name, param in model.base.named_parameters():  # FSDP shards are gathered (a collective)
            full = param.full_tensor() if isinstance(param, DTensor) else param
            tensors[f"base.{name}"] = full.detach().clone()
        save_file(tensors, str(out / scenario / f"rank{rank}.safetensors"))
        sharded = any(isinstance(p, DTensor) for p in model.parameters())
        facts = {"world_size": processes or dist.get_world_size(), "sharded": sharded}
        (out / scenario / f"rank{rank}.json").write_text(json.dumps(facts))


# ---------------------------------------------------------------- fixtures
def run_torchrun(script_args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # gloo on CPU, also on GPU machines
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *script_args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("tiny-bert-nodropout"))


@pytest.fixture(scope="module")
def two_processes(model_dir, tmp_path_factory) -> Path:
    """All scenarios trained by 2 gloo processes (one torchrun launch, about 15 s on 2 cores)."""
    out = tmp_path_factory.mktemp("ddp")
    run_torchrun([__file__, str(out), str(model_dir)])
    return out


def references(out: Path, model_dir: Path) -> None:
    for scenario in sorted(set(REFERENCE.values())):
        train(model_dir, out / scenario / "run", scenario)


@pytest.fixture(scope="module")
def one_process(model_dir, tmp_path_factory) -> Path:
    """The single-process references, same global batch, on the CPU like the two processes."""
    out = tmp_path_factory.mktemp("single")
    if torch.cuda.is_available():  # accelerate would train here on the GPU: another process, GPU hidden
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        done = subprocess.run([sys.executable, __file__, "--reference", str(out), str(model_dir)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-6000:]
    else:
        references(out, model_dir)
    return out


def saved(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "adapter.safetensors"))


def assert_close(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=ATOL, rtol=RTOL, msg=lambda m: f"{key}: {m}")


# ---------------------------------------------------------------- two processes
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_ranks_hold_identical_trained_weights_and_leave_the_base_untouched(scenario, two_processes, model_dir):
    ranks = [load_file(str(two_processes / scenario / f"rank{r}.safetensors")) for r in (0, 1)]
    facts = json.loads((two_processes / scenario / "rank0.json").read_text())
    assert facts["world_size"] == 2 and facts["sharded"] == SCENARIOS[scenario][2]
    assert ranks[0].keys() == ranks[1].keys()
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # DDP/all-reduce: bit-identical replicas
    initial = fresh_model(model_dir)
    for name, param in initial.base.named_parameters():
        assert torch.equal(ranks[0][f"base.{name}"], param.detach()), name
    # every trained tensor moved, also the layer-0 adapters rank 1 never ran in "per_rank": DDP
    # averaged rank 0's gradient with rank 1's nothing (find_unused_parameters). (Robust
    # AdapterDrop may skip layer 0 on the few steps before the best epoch.)
    for key, param in initial.adapter_parameters("toy").items():
        if SCENARIOS[scenario][0] != "robust" or "layers.0." not in key:
            assert not torch.equal(ranks[0][f"trained.{key}"], param.detach()), key
    run = two_processes / scenario / "run"
    if scenario == "hf":  # the Trainer's checkpoints hold the adapter and its head only
        assert set(load_file(str(run / "checkpoint-2" / "model.safetensors"))) == set(adapter_state_keys(initial, "toy"))
        assert (run / "adapter" / "adapter_config.json").is_file()
    else:
        assert (run / "best" / "adapter_config.json").is_file() and (run / "results.json").is_file()


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s in REFERENCE])
def test_two_processes_save_the_adapter_one_process_saves_with_the_same_global_batch(scenario, two_processes, one_process):
    two = two_processes / scenario / "run"
    one = one_process / REFERENCE[scenario] / "run"
    assert_close(saved(one / "checkpoint" / "adapter"), saved(two / "checkpoint" / "adapter"))
    state = json.loads((two / "checkpoint" / "trainer_state.json").read_text())
    reference = json.loads((one / "checkpoint" / "trainer_state.json").read_text())
    assert state["progress"]["global_step"] == reference["progress"]["global_step"] == 8
    for ours, theirs in zip(state["progress"]["history"], reference["progress"]["history"]):
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
        assert ours["learning_rate"] == pytest.approx(theirs["learning_rate"])


def test_fsdp_adapter_loads_into_an_unsharded_model_and_predicts_like_the_sharded_one(two_processes, model_dir):
    best = two_processes / "fsdp" / "run" / "best"
    model = AdapterModel.from_pretrained(str(model_dir))
    name = model.load_adapter(best)
    assert name == "toy" and set(saved(best)) == set(model.adapter_parameters("toy"))
    results = json.loads((two_processes / "fsdp" / "run" / "results.json").read_text())
    assert evaluate(model, toy_task(**TASK).test, "toy")["accuracy"] == pytest.approx(results["test_metrics"]["accuracy"])


# ---------------------------------------------------------------- the command line
def test_cli_nproc_trains_with_two_processes_and_the_global_batch(tmp_path, model_dir):
    from test_cli import write_csv

    files = {split: write_csv(tmp_path / f"{split}.csv", count, seed)
             for split, count, seed in (("train", 64, 1), ("validation", 16, 2), ("test", 16, 3))}  # fmt: skip
    output = tmp_path / "run"
    argv = [
        "train", "--model", str(model_dir), "--method", "lora", "--train-file", str(files["train"]),
        "--validation-file", str(files["validation"]), "--test-file", str(files["test"]), "--text-column", "review",
        "--label-column", "sentiment", "--epochs", "2", "--batch-size", "16", "--lr", "1e-2", "--output-dir",
        str(output), "--quiet", "--nproc", "2", "--robust-adapter-drop",
    ]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-m", "adapterkit", *argv], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert result.stdout.count("| method") == 1  # only rank 0 reports
    # rank 1 repeats no warning (Python's, transformers', torch's C++ ones under --quiet)
    assert "[rank1]" not in result.stderr and result.stderr.count("UserWarning") <= 1, result.stderr[-3000:]
    state = json.loads((output / "checkpoint" / "trainer_state.json").read_text())
    assert state["progress"]["global_step"] == 2 * 64 // 16  # global batch 16: the steps of one process
    model = AdapterModel.from_pretrained(str(model_dir))
    assert model.load_adapter(output / "best") == "train_adapter"  # named after train.csv


def test_cli_refuses_a_batch_that_does_not_split_evenly(capsys):
    from adapterkit.cli import main

    code = main(["train", "--method", "lora", "--task", "trec6", "--batch-size", "9", "--nproc", "2"])
    assert code == 2 and "multiple" in capsys.readouterr().err


def test_launch_command_runs_the_module_under_torchrun():
    command = launch_command(4, ["train", "--task", "sst2"])
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in command and "--nproc_per_node=4" in command
    assert command[-5:] == ["-m", "adapterkit", "train", "--task", "sst2"]


# ---------------------------------------------------------------- one process
def test_shard_model_needs_a_process_group(model_dir):
    from adapterkit.distributed import make_accelerator

    with pytest.raises(ValueError, match="process group"):
        shard_model(fresh_model(model_dir), make_accelerator())


def gradients(model: AdapterModel, setup, batch) -> dict[str, torch.Tensor]:
    model.train_adapter("toy")
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)  # robust AdapterDrop draws its depth here
    model(**batch, adapters=setup).loss.backward()
    return {k: p.grad.clone() for k, p in model.adapter_parameters("toy").items() if p.grad is not None}


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_gives_the_gradients_of_the_plain_pass_with_a_frozen_base(model_dir, reentrant):
    """The recomputation in backward must see the forward's setup (here AdapterDrop skipping layer 0,
    not the active setup) and, reentrant, needs the embedding output to require grad."""
    tokenizer = tiny_tokenizer()
    batch = dict(tokenizer(["good movie", "awful plot it was", "nice"], padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([1, 0, 1])
    setup = AdapterDrop("toy", first=1)
    expected = gradients(fresh_model(model_dir), setup, batch)
    assert not any("layers.0." in k for k in expected if k.startswith("adapter.")) and "adapter.layers.1.ffn.up.weight" in expected
    model = fresh_model(model_dir)
    enable_gradient_checkpointing(model, reentrant=reentrant)
    assert all(layer.gradient_checkpointing for layer in model.base.encoder.layer)
    got = gradients(model, setup, batch)
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=1e-5)
    assert context.current() is None  # the replay left no state behind


if __name__ == "__main__":  # torchrun worker: python -m torch.distributed.run ... test_distributed.py OUT MODEL_DIR
    if sys.argv[1] == "--reference":
        references(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        worker(Path(sys.argv[1]), Path(sys.argv[2]))
