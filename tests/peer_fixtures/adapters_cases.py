"""AdapterHub's cases: each builds an ``AutoAdapterModel`` on the tiny BERT with ``adapters``
itself and says how to save, reload and switch it off. Run by ``make_fixtures.py adapters`` inside
``.peer-envs/adapters`` (adapters 1.3.0 imports only on transformers ~=4.57).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from adapters import AdapterConfig, AutoAdapterModel
from adapters.composition import Fuse

from fixture_kit import Made, base_parameter_ids, fixed_inputs, load_base, perturb_adapter_weights

LIBRARY = "adapters"
PACKAGES = ("adapters",)  # versions recorded in case.json
BASE = "tiny-bert"


@dataclass(frozen=True)
class Head:
    kind: str  # add_<kind>_head
    num_labels: int


@dataclass(frozen=True)
class Case:
    name: str
    method: str  # an AdapterHub config string
    options: dict = field(default_factory=dict)  # AdapterConfig.load(method, **options)
    head: Head | None = None
    fusion: bool = False
    safetensors: bool = False  # save_adapter(use_safetensors=...); AdapterHub's default is a pickled .bin
    #: the case this one repeats in another save format: same adapter name, seed, so same tensors
    twin_of: str | None = None
    transformers: int = 4
    refused: bool = False

    @property
    def adapter_name(self) -> str:
        return self.twin_of or self.name

    @property
    def seed_name(self) -> str:
        return self.adapter_name

    @property
    def adapters(self) -> list[str]:
        """The adapters' names: the case's (or its twin's); a fusion's members ``<name>_a``, ``<name>_b``."""
        return [f"{self.adapter_name}_a", f"{self.adapter_name}_b"] if self.fusion else [self.adapter_name]

    @property
    def setup(self) -> str | Fuse:
        return Fuse(*self.adapters) if self.fusion else self.adapter_name

    @property
    def head_name(self) -> str:
        return self.setup.name if self.fusion else self.adapter_name  # a fusion's head is named "a,b"

    @property
    def output(self) -> str:
        return "logits" if self.head else "last_hidden_state"


CLS = Head("classification", 3)

CASES = [
    Case("seq_bn_clshead", "seq_bn", head=CLS),
    Case("seq_bn_clshead_safetensors", "seq_bn", head=CLS, safetensors=True, twin_of="seq_bn_clshead"),
    Case("double_seq_bn", "double_seq_bn"),
    Case("par_bn", "par_bn"),
    Case("scaled_par_bn", "scaled_par_bn", safetensors=True),
    # the default (30 tokens through a 512-wide MLP, which is what is saved) would be 330 KB here
    Case("prefix_tuning_clshead", "prefix_tuning", {"prefix_length": 4, "bottleneck_size": 16}, head=CLS),
    Case("lora", "lora", safetensors=True),
    Case("ia3", "ia3"),
    Case("prompt_tuning_clshead", "prompt_tuning", head=CLS),
    Case("seq_bn_tagging", "seq_bn", head=Head("tagging", 5)),
    Case("seq_bn_regression", "seq_bn", head=Head("classification", 1)),  # AdapterHub: one label = regression
    Case("fusion_seq_bn", "seq_bn", head=Head("classification", 2), fusion=True),
]


def forward(model: AutoAdapterModel, inputs: dict, case: Case) -> torch.Tensor:
    with torch.no_grad():
        return getattr(model(**inputs, **({"head": case.head_name} if case.head else {})), case.output)


def switched_off(model: AutoAdapterModel, inputs: dict, case: Case) -> torch.Tensor:
    """The output with no adapter active (the head, if any, still applied)."""
    model.set_active_adapters(None)
    try:
        return forward(model, inputs, case)
    finally:
        model.set_active_adapters(case.setup)


def build(case: Case, seed: int) -> Made:
    model = load_base(BASE, AutoAdapterModel.from_pretrained, seed)
    base_ids = base_parameter_ids(model)
    for name in case.adapters:
        model.add_adapter(name, config=AdapterConfig.load(case.method, **case.options))
    if case.fusion:
        model.add_adapter_fusion(case.setup)
    if case.head:
        getattr(model, f"add_{case.head.kind}_head")(case.head_name, num_labels=case.head.num_labels)
    if case.fusion:
        model.train_adapter_fusion(case.setup)
    else:
        model.train_adapter(case.adapter_name)
    moved = perturb_adapter_weights(model, base_ids, seed)
    model.eval()
    inputs = fixed_inputs(with_token_types=True)
    reference = {f"output.{case.output}": forward(model, inputs, case)}
    without = {f"output.{case.output}": switched_off(model, inputs, case)}
    save_options = {"use_safetensors": case.safetensors}

    def save(folder: Path) -> None:
        if not case.fusion:
            model.save_adapter(str(folder), case.adapter_name, with_head=bool(case.head), **save_options)
            return
        folder.mkdir()  # AdapterHub's fusion save makes only the last folder of its path
        model.save_adapter_fusion(str(folder / "fusion"), case.setup, with_head=bool(case.head), **save_options)
        for name in case.adapters:
            model.save_adapter(str(folder / name), name, with_head=False, **save_options)

    def reload(folder: Path) -> dict[str, torch.Tensor]:
        fresh = load_base(BASE, AutoAdapterModel.from_pretrained, seed + 1)
        if case.fusion:
            for name in case.adapters:
                fresh.load_adapter(str(folder / name), **save_options)
            fresh.load_adapter_fusion(str(folder / "fusion"), set_active=True, with_head=bool(case.head), **save_options)
        else:
            fresh.load_adapter(str(folder), set_active=True, with_head=bool(case.head), **save_options)
        fresh.set_active_adapters(case.setup)
        return {f"output.{case.output}": forward(fresh.eval(), inputs, case)}

    saves = (
        [f"save_adapter_fusion(adapter/fusion, {case.head_name!r}, with_head={bool(case.head)})"]
        + [f"save_adapter(adapter/{name}, {name!r}, with_head=False)" for name in case.adapters]
        if case.fusion
        else [f"save_adapter(adapter, {case.adapter_name!r}, with_head={bool(case.head)})"]
    )
    record = {
        "summary": {
            "config": case.method,
            "options": case.options,
            "adapters": case.adapters,
            "fusion": case.setup.name if case.fusion else None,
            "head": {"kind": case.head.kind, "name": case.head_name, "num_labels": case.head.num_labels}
            if case.head else None,
            "use_safetensors": case.safetensors,
        },
        "made_with": f"AutoAdapterModel from _bases/{BASE}; "
        + "; ".join(f"add_adapter({name!r}, config=AdapterConfig.load({case.method!r}, **{case.options}))"
                    for name in case.adapters)
        + (f"; add_adapter_fusion(Fuse{tuple(case.adapters)})" if case.fusion else "")
        + (f"; add_{case.head.kind}_head({case.head_name!r}, num_labels={case.head.num_labels})" if case.head else "")
        + ("; train_adapter_fusion" if case.fusion else "; train_adapter")
        + "; " + "; ".join(saves) + f" (use_safetensors={case.safetensors})",
        "base": BASE,
        "peer_class": type(model).__name__,
        "adapters": case.adapters,
        "output": case.output,
        "perturbed": moved,
    }
    return Made(inputs, reference, without, save, reload, record)
