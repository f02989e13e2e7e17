"""Every peer fixture (``tests/peer_fixtures/``: folders saved by peft and AdapterHub themselves,
with the peer's own outputs) loads into adapterkit with the same outputs, within 1e-5, or is
refused with the documented error.

No peer library is needed: the folders and the peers' outputs are committed (``make
peer-fixtures`` regenerates them). Outputs are compared on every row and position, except where
``KNOWN`` documents a peer behaviour adapterkit does not reproduce (compared on the rows it does
not touch, and the difference asserted to be where the peer's behaviour acts).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapterkit import AdapterModel
from adapterkit.formats.layout import NotConvertible

FIXTURES = Path(__file__).parent / "peer_fixtures"
INDEX = json.loads((FIXTURES / "INDEX.json").read_text())
MADE = [case for case in INDEX["cases"] if case["made"]]
TOLERANCE = 1e-5

#: cases adapterkit refuses (docs/formats.md), with what the error must name
REFUSED = {"peft/lora_bias_all": "bias='all'"}
#: cases where a peer behaviour differs from adapterkit's on padded rows only (docs/formats.md)
PADDED_ROWS_DIFFER = {
    "adapters/prompt_tuning_clshead": "AdapterHub's SDPA mask lets prompt positions attend to padding",
}
#: warnings a conversion must give
NOTES = {"peft/lora_two_adapters": "pooler"}


def load_case(case: dict) -> tuple[AdapterModel, str]:
    model = AdapterModel.from_pretrained(str(FIXTURES / case["base"]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        name = model.load_adapter(FIXTURES / case["path"] / "adapter")
    if case["path"] in NOTES:
        assert any(NOTES[case["path"]] in str(w.message) for w in caught), [str(w.message) for w in caught]
    return model.eval(), name


def outputs_of(model: AdapterModel, reference: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """output key -> (adapterkit's output, the peer's), aligned: the peer's prompt positions (which
    adapterkit drops before its outputs) cut off, a regression column flattened."""
    inputs = {k: reference[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in reference}
    pairs = {}
    for key in (k for k in reference if k.startswith("output.")):
        parts = key.split(".")
        with torch.no_grad():  # the main output: the setup load_adapter activated (a saved Stack, a fusion)
            ours = getattr(model(**inputs) if len(parts) == 2 else model(**inputs, adapters=parts[1]), parts[-1])
        theirs = reference[key]
        if theirs.dim() == 3 and theirs.shape[1] > ours.shape[1]:
            theirs = theirs[:, -ours.shape[1] :]
        pairs[key] = (ours, theirs.reshape(ours.shape))
    return pairs


@pytest.mark.parametrize("case", MADE, ids=[c["path"] for c in MADE])
def test_peer_fixture_loads_with_the_peers_outputs(case):
    if case["path"] in REFUSED:
        with pytest.raises(NotConvertible, match=REFUSED[case["path"]]):
            load_case(case)
        return
    model, name = load_case(case)
    reference = load_file(FIXTURES / case["path"] / "reference.safetensors")
    padded = reference["attention_mask"].eq(0).any(-1)
    assert model.active_setup is not None and name in model.active_setup.adapter_names()
    for key, (ours, theirs) in outputs_of(model, reference).items():
        diff = (ours - theirs).abs().reshape(ours.shape[0], -1).amax(1)  # per row
        if case["path"] in PADDED_ROWS_DIFFER:
            assert diff[~padded].max() <= TOLERANCE, (key, diff)
            assert diff[padded].min() > TOLERANCE  # the documented difference is still there (else drop the entry)
        else:
            assert diff.max() <= TOLERANCE, (key, diff)


def test_every_made_fixture_changes_the_output_more_than_the_tolerance():
    """So matching the peer's output proves the adapter was applied, tensors and all."""
    for case in MADE:
        assert min(v for v in case["effect_max_abs_diff"].values() if isinstance(v, float)) > 100 * TOLERANCE, case["path"]
