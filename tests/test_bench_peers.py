"""The side-by-side benchmark's own logic (benchmarks/bench_peers.py, peer_models.py), without the peers:
every adapterkit form it runs builds and trains on a tiny BERT, and the report marks the targets."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_base

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_peers  # noqa: E402
import peer_models  # noqa: E402


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("tiny-bert")
    tiny_base("bert").save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("form", sorted(peer_models.ADAPTERKIT_FORMS))
def test_every_adapterkit_form_builds_and_trains(tiny_folder: str, form: str) -> None:
    built = peer_models.build("adapterkit", form, tiny_folder, num_labels=2)
    batch, labels = peer_models.fixed_batch(tiny_folder, 3, 7, 2)
    loss = torch.nn.functional.cross_entropy(built.logits(batch), labels)
    loss.backward()
    assert built.trainable
    # all but BERT's pooler, which the mean-pooling head does not read
    assert [n for n, p in built.model.named_parameters() if p.requires_grad and p.grad is None and "pooler" not in n] == []


def test_mean_head_leaves_prompt_positions_out() -> None:
    head = peer_models.MeanHead(4, 2)
    hidden, mask = torch.randn(2, 5, 4), torch.ones(2, 3, dtype=torch.long)
    head.eval()
    assert torch.equal(head(hidden, mask), head(hidden[:, 2:], mask))


def test_adapterkit_runs_each_peer_form_once() -> None:
    assert bench_peers.adapterkit_forms("prefix", bench_peers.METHODS["prefix"]) == ["prefix", "prefix-peft"]
    assert bench_peers.adapterkit_forms("prompt", bench_peers.METHODS["prompt"]) == ["prompt", "prompt-adapterhub"]
    assert bench_peers.adapterkit_forms("lora", bench_peers.METHODS["lora"]) == ["lora"]


def run(step_ms: float, infer_ms: float | None = None) -> dict:
    figures = {"step_ms": step_ms, "peak_mib": 100.0, "heap_mib": 80.0, "saved_mib": 50.0, "trainable": 10, "versions": {}}
    return figures | ({"infer_ms": infer_ms, "plain_ms": 100.0} if infer_ms is not None else {})


def test_report_marks_each_target(capsys: pytest.CaptureFixture[str]) -> None:
    speed = {("adapterkit", "full"): [run(1000)], ("peft", "full"): [run(900)], ("adapterhub", "full"): [run(800)],
             ("adapterkit", "lora"): [run(500, 101)], ("peft", "lora"): [run(600, 102)], ("adapterhub", "lora"): [run(450, 105)]}
    routing = {"adapterkit": [{"rows": 64, "seq": 64, "adapters": 16, "routed_ms": 10.0, "one_ms": 9.0, "plain_ms": 8.0}],
               "peft": [{"rows": 64, "seq": 64, "adapters": 16, "routed_ms": 20.0, "one_ms": 9.0, "plain_ms": 8.0}]}
    args = {"model": "m", "batch": 32, "seq": 64, "steps": 5, "rounds": 1, "infer_repeats": 2, "threads": 2}
    bench_peers.report({"args": args, "speed": [{"library": l, "method": m, "runs": rs} for (l, m), rs in speed.items()],
                        "routing": {"runs": routing, "max_difference": 0.0, "max_adapter_effect": 1.0}})
    out = capsys.readouterr().out
    assert "| lora | peft | lora | 500 | 600 | 0.83 (0.83) | 1.00 | +1.0% / +2.0% | met |" in out
    assert "| lora | adapterhub | lora | 500 | 450 | 1.11 (1.11) | 1.00 | +1.0% / +5.0% | missed |" in out
    assert "targets missed: lora vs adapterhub" in out
    assert "2.00x as fast as peft's (target 1.5x: met)" in out
