"""adapterkit's exports, loaded by the peers themselves, compute adapterkit's outputs.

``tests/peer_fixtures/adapterkit/<library>_<case>/`` holds adapters built by adapterkit
(``make_exports.py``): ``native/`` and their export ``peft/`` or ``adapterhub/``. The peer runs of
``make peer-fixtures`` loaded each export with peft or AdapterHub (cases ``export_<case>``) and
recorded the peer's outputs. Here, with no peer installed: the peer's outputs are adapterkit's
(within 1e-5), and today's exporter still writes the files the peer loaded (else rerun
``make peer-fixtures``). The peer's own re-save of each export is a fixture like any other
(``test_formats_fixtures.py``), closing the loop ours -> peer -> ours.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapterkit import AdapterModel

FIXTURES = Path(__file__).parent / "peer_fixtures"
EXPORTS = sorted((FIXTURES / "adapterkit").iterdir())
PEER_FOLDER = {"peft": "peft", "adapterhub": "adapters"}


def native(case: Path) -> tuple[AdapterModel, dict]:
    record = json.loads((case / "case.json").read_text())
    model = AdapterModel.from_pretrained(str(FIXTURES / "_bases" / record["base"]))
    order = case / "native" / "order.json"
    for name in json.loads(order.read_text()) if order.is_file() else [None]:
        model.load_adapter(case / "native" / name if name else case / "native")
    return model.eval(), record


def ours(model: AdapterModel, reference: dict[str, torch.Tensor], field: str) -> torch.Tensor:
    inputs = {k: reference[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        return getattr(model(**inputs, adapters="task"), field)


@pytest.mark.parametrize("case", EXPORTS, ids=[c.name for c in EXPORTS])
def test_the_peer_loading_our_export_computes_our_outputs(case):
    model, record = native(case)
    peer = FIXTURES / PEER_FOLDER[record["library"]] / f"export_{record['case']}"
    theirs = load_file(peer / "reference.safetensors")
    assert json.loads((peer / "case.json").read_text())["made_with"].count(str(case.relative_to(FIXTURES)))
    key = f"output.{record['output']}"
    got = ours(model, theirs, record["output"])
    assert (got - theirs[key].reshape(got.shape)).abs().max() <= 1e-5
    assert torch.equal(got, load_file(case / "reference.safetensors")[key])  # and what adapterkit computed when exporting


def without_base(path: Path) -> dict:
    """A config without the base model's name (recorded as the path it was loaded from)."""
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in ("base_model_name_or_path", "model_name")}


@pytest.mark.parametrize("case", EXPORTS, ids=[c.name for c in EXPORTS])
def test_todays_exporter_writes_what_the_peer_loaded(case, tmp_path):
    model, record = native(case)
    committed = case / record["library"]
    written = model.save_adapter("task", tmp_path / "export", format=record["library"])
    files = sorted(p.relative_to(committed) for p in committed.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(written) for p in written.rglob("*") if p.is_file())
    for name in files:
        if name.suffix == ".json":
            assert without_base(written / name) == without_base(committed / name), name
        else:
            before, now = load_file(committed / name), load_file(written / name)
            assert before.keys() == now.keys() and all(torch.equal(before[k], now[k]) for k in before), name
