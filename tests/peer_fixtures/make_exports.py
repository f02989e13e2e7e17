"""Make the adapterkit side of the export fixtures: adapters built by adapterkit on the tiny bases,
saved natively and exported with ``save_adapter(format="peft" | "adapterhub")``, with
adapterkit's own outputs. Run in adapterkit's environment, before the peer runs (``make
peer-fixtures``):

    python tests/peer_fixtures/make_exports.py        # writes adapterkit/<library>_<case>/

Per case, in ``adapterkit/<library>_<case>/``: ``native/`` (adapterkit's folder; a fusion's has one
folder per adapter, fused adapters first in ``order.json``), ``<library>/`` (the export: what the
peer loads), ``reference.safetensors`` (the fixed inputs of ``fixture_kit.fixed_inputs`` and
adapterkit's output) and ``case.json``. The peer runs then load ``<library>/`` with the peer
itself (``peft_cases.py`` / ``adapters_cases.py``, cases ``export_<case>``), record the peer's
outputs and save the folder again with the peer; ``tests/test_formats_exports.py`` checks that the
peer's outputs are adapterkit's and that today's exporter still writes what the peer loaded.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "src"))
from fixture_kit import atomic_directory, fixed_inputs  # noqa: E402

from adapterkit import AdapterModel, HeadConfig  # noqa: E402
from adapterkit.registry import make_config  # noqa: E402

EXPORTS = HERE / "adapterkit"
SEED = 7


@dataclass(frozen=True)
class Export:
    name: str
    library: str  # peft or adapterhub
    method: str
    options: dict
    head: dict | None = None
    fused: tuple[str, ...] = ()  # a fusion: the pfeiffer adapters it fuses, built first
    base: str = "tiny-bert"

    @property
    def folder(self) -> Path:
        return EXPORTS / f"{self.library}_{self.name}"


CLS3 = {"num_labels": 3, "pooling": "cls", "mlp": True}
CASES = [
    # two ranks (rank_pattern, alpha_pattern) and a head whose pooler layer differs from the base's
    Export("lora_seqcls", "peft", "union", {"configs": [{"method": "lora", "r": 4, "targets": ["q", "v"]},
                                                        {"method": "lora", "r": 2, "alpha": 4.0, "targets": ["k"], "layers": [1]}]}, CLS3),
    Export("ia3_seqcls", "peft", "ia3", {}, CLS3),
    Export("prompt_seqcls", "peft", "prompt", {"prompt_length": 4, "init": "random"}, {**CLS3, "pooling": "first"}),
    Export("prefix_seqcls", "peft", "prefix", {"prefix_length": 4, "reparam_hidden": 16, "shift_positions": True}, CLS3),
    Export("seq_bn_clshead", "adapterhub", "pfeiffer", {"reduction_factor": 16}, CLS3),
    Export("lora", "adapterhub", "lora", {"r": 4, "targets": ["q", "k", "v", "ffn_in"]}),
    Export("fusion_seq_bn", "adapterhub", "fusion", {"residual_before": False}, {**CLS3, "num_labels": 2}, fused=("a", "b")),
]


def perturb(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)


def build(case: Export) -> AdapterModel:
    """The case's adapter on its base, loaded by a path relative to this folder (as the peers'
    fixtures are), so no path of this machine reaches the saved configs."""
    model = AdapterModel.from_pretrained(f"_bases/{case.base}")
    model.name_or_path = f"_bases/{case.base}"
    for i, name in enumerate(case.fused):
        model.add_adapter(name, "pfeiffer", reduction_factor=16)
        perturb(model.adapters[name], SEED + i)
    options = {**case.options, **({"adapters": list(case.fused)} if case.fused else {})}
    model.add_adapter("task", make_config(case.method, **options), HeadConfig(**case.head) if case.head else None)
    perturb(model.adapters["task"], SEED + 10)
    if case.fused:  # AdapterHub's value matrix has no bias
        for layer in model.adapters["task"].fusion_layers():
            layer.value.bias.data.zero_()
    if case.head:
        perturb(model.heads["task"], SEED + 11)
    return model.eval()


def make(case: Export) -> None:
    model = build(case)
    inputs = fixed_inputs(with_token_types=True)
    with torch.no_grad():
        out = model(**inputs, adapters="task")
    field_name = "logits" if case.head else "last_hidden_state"
    with atomic_directory(case.folder) as tmp:
        for name in (*case.fused, "task"):
            model.save_adapter(name, tmp / "native" / name if case.fused else tmp / "native")
        if case.fused:
            (tmp / "native" / "order.json").write_text(json.dumps([*case.fused, "task"]) + "\n")
        model.save_adapter("task", tmp / case.library, format=case.library)
        save_file({**inputs, f"output.{field_name}": getattr(out, field_name).contiguous()}, tmp / "reference.safetensors")
        record = {"library": case.library, "case": case.name, "method": case.method, "options": case.options, "head": case.head,
                  "fused": list(case.fused), "base": case.base, "output": field_name,
                  "made_with": f"adapterkit on _bases/{case.base}, seeded N(0, 0.1) noise on every adapter and head tensor; "
                               f"save_adapter(native); save_adapter(format={case.library!r})"}
        (tmp / "case.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"made {case.folder.relative_to(HERE)}")


def main() -> None:
    os.chdir(HERE)
    torch.set_num_threads(1)
    for case in CASES:
        make(case)


if __name__ == "__main__":
    main()
