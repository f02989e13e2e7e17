"""AdapterHub's cases: each builds an ``AutoAdapterModel`` on the tiny BERT with ``adapters``
itself and says how to save, reload and switch it off. Run by ``make_fixtures.py adapters`` inside
``.peer-envs/adapters`` (adapters 1.3.0 imports only on transformers ~=4.57).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from adapters import AdapterConfig, AutoAdapterModel
from adapters.composition import Fuse, Stack

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
    #: the case this one repeats in another setting: same adapter name and seed, so same tensors
    twin_of: str | None = None
    attention: str | None = None  # the base's attn_implementation (None: transformers' default, SDPA)
    #: an adapterkit export to load instead of building the adapter (``make_exports.py``), and the
    #: names of its adapters (a fusion's fused adapters)
    source: str | None = None
    source_adapters: tuple[str, ...] = ("task",)
    #: AdapterHub 1.3 cannot save this adapter with use_safetensors=True (prefix tuning: its pool's
    #: tensors are shared, which safetensors refuses): save the pickle, then rewrite it as safetensors
    pickled_save: bool = False
    stack: bool = False  # two adapters <name>_a, <name>_b run as Stack(a, b), the head on b
    saved_setup: bool = False  # saved with save_adapter_setup (folders per adapter and fusion, adapter_setup.json)
    transformers: int = 4
    refused: bool = False

    @property
    def adapter_name(self) -> str:
        return self.source_adapters[0] if self.source and not self.fusion else self.twin_of or self.name

    @property
    def seed_name(self) -> str:
        return self.twin_of or self.name

    @property
    def adapters(self) -> list[str]:
        """The adapters' names: the case's (or its twin's); a fusion's members ``<name>_a``, ``<name>_b``
        (an export's: as it names them)."""
        if self.source:
            return list(self.source_adapters)
        return [f"{self.adapter_name}_a", f"{self.adapter_name}_b"] if self.fusion or self.stack else [self.adapter_name]

    @property
    def setup(self) -> str | Fuse | Stack:
        if self.stack:
            return Stack(*self.adapters)
        return Fuse(*self.adapters) if self.fusion else self.adapter_name

    @property
    def head_name(self) -> str:
        if self.stack:
            return self.adapters[-1]
        return self.setup.name if self.fusion else self.adapter_name  # a fusion's head is named "a,b"

    @property
    def output(self) -> str:
        return "logits" if self.head else "last_hidden_state"


CLS = Head("classification", 3)

CASES = [
    Case("seq_bn_clshead", "seq_bn", head=CLS),
    Case("double_seq_bn", "double_seq_bn"),
    Case("par_bn", "par_bn"),
    Case("scaled_par_bn", "scaled_par_bn"),
    # the default (30 tokens through a 512-wide MLP, which is what is saved) would be 330 KB here
    Case("prefix_tuning_clshead", "prefix_tuning", {"prefix_length": 4, "bottleneck_size": 16}, head=CLS, pickled_save=True),
    Case("lora", "lora"),
    Case("ia3", "ia3"),
    Case("prompt_tuning_clshead", "prompt_tuning", head=CLS),
    # with SDPA (the default) AdapterHub's widened 4-D mask lets the prompt positions attend to padding;
    # its eager attention keeps padding hidden from them too
    Case("prompt_tuning_clshead_eager", "prompt_tuning", head=CLS, twin_of="prompt_tuning_clshead", attention="eager"),
    Case("seq_bn_tagging", "seq_bn", head=Head("tagging", 5)),
    Case("seq_bn_regression", "seq_bn", head=Head("classification", 1)),  # AdapterHub: one label = regression
    Case("fusion_seq_bn", "seq_bn", head=Head("classification", 2), fusion=True),
    # saved setups (save_adapter_setup): a stack with the head on its last adapter, and a fusion
    Case("setup_stack_seq_bn", "seq_bn", head=CLS, stack=True, saved_setup=True),
    Case("setup_fusion_seq_bn", "seq_bn", head=Head("classification", 2), fusion=True, saved_setup=True),
    # adapterkit's exports (make_exports.py), loaded by AdapterHub
    Case("export_seq_bn_clshead", "seq_bn", head=CLS, source="adapterkit/adapterhub_seq_bn_clshead/adapterhub"),
    Case("export_lora", "lora", source="adapterkit/adapterhub_lora/adapterhub"),
    Case("export_fusion_seq_bn", "seq_bn", head=Head("classification", 2), fusion=True,
         source="adapterkit/adapterhub_fusion_seq_bn/adapterhub", source_adapters=("a", "b")),
]
SAVE = {"use_safetensors": True}  # adapterkit's repository holds no pickles; .bin reading is tested from these at test time


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


def fresh(case: Case, seed: int) -> AutoAdapterModel:
    return load_base(BASE, AutoAdapterModel.from_pretrained, seed, **({"attn_implementation": case.attention} if case.attention else {}))


def load(model: AutoAdapterModel, folder: Path, case: Case) -> None:
    """Load the case's saved folder (an AdapterHub save, or adapterkit's export) into ``model``."""
    if case.saved_setup:
        model.load_adapter_setup(str(folder), set_active=True, **SAVE)
    elif case.fusion:
        for name in case.adapters:
            model.load_adapter(str(folder / name), **SAVE)
        model.load_adapter_fusion(str(folder / "fusion"), set_active=True, with_head=bool(case.head), **SAVE)
    else:
        model.load_adapter(str(folder), set_active=True, with_head=bool(case.head), **SAVE)
    model.set_active_adapters(case.setup)


#: AdapterHub's pickled file -> its safetensors twin (``adapters.utils``: WEIGHTS_NAME, SAFE_WEIGHTS_NAME, ...)
SAFE_NAMES = {"pytorch_adapter.bin": "adapter.safetensors", "pytorch_model_head.bin": "model_head.safetensors",
              "pytorch_model_adapter_fusion.bin": "model_adapter_fusion.safetensors"}


def pickles_to_safetensors(folder: Path) -> None:
    """Rewrite AdapterHub's pickled weight files in ``folder`` as the safetensors files it would
    write with ``use_safetensors=True`` (same keys; shared tensors cloned), and delete the pickles."""
    for pickled, safe in SAFE_NAMES.items():
        if (folder / pickled).is_file():
            tensors = torch.load(folder / pickled, map_location="cpu", weights_only=True)
            save_file({key: tensor.clone().contiguous() for key, tensor in tensors.items()}, folder / safe)
            (folder / pickled).unlink()


def build(case: Case, seed: int) -> Made:
    model = fresh(case, seed)
    base_ids = base_parameter_ids(model)
    moved = []
    if case.source:  # adapterkit's export: loaded as it is, nothing perturbed
        load(model, Path(case.source), case)
    else:
        for name in case.adapters:
            model.add_adapter(name, config=AdapterConfig.load(case.method, **case.options))
        if case.fusion:
            model.add_adapter_fusion(case.setup)
        if case.head:
            getattr(model, f"add_{case.head.kind}_head")(case.head_name, num_labels=case.head.num_labels)
        if case.fusion:
            model.train_adapter_fusion(case.setup)
        else:
            model.train_adapter(case.setup)
        moved = perturb_adapter_weights(model, base_ids, seed)
    model.eval()
    inputs = fixed_inputs(with_token_types=True)
    reference = {f"output.{case.output}": forward(model, inputs, case)}
    without = {f"output.{case.output}": switched_off(model, inputs, case)}

    def save(folder: Path) -> None:
        if case.saved_setup:
            model.save_adapter_setup(str(folder), case.setup, head_setup=case.head_name, **SAVE)
            return
        if case.pickled_save:
            model.save_adapter(str(folder), case.adapter_name, with_head=bool(case.head), use_safetensors=False)
            pickles_to_safetensors(folder)
            return
        if not case.fusion:
            model.save_adapter(str(folder), case.adapter_name, with_head=bool(case.head), **SAVE)
            return
        folder.mkdir()  # AdapterHub's fusion save makes only the last folder of its path
        model.save_adapter_fusion(str(folder / "fusion"), case.setup, with_head=bool(case.head), **SAVE)
        for name in case.adapters:
            model.save_adapter(str(folder / name), name, with_head=False, **SAVE)

    def reload(folder: Path) -> dict[str, torch.Tensor]:
        again = fresh(case, seed + 1)
        load(again, folder, case)
        return {f"output.{case.output}": forward(again.eval(), inputs, case)}

    saves = (
        [f"save_adapter_setup(adapter, {case.setup!r}, head_setup={case.head_name!r})"]
        if case.saved_setup
        else [f"save_adapter_fusion(adapter/fusion, {case.head_name!r}, with_head={bool(case.head)})"]
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
            "use_safetensors": not case.pickled_save,
            "pickles_rewritten_as_safetensors": case.pickled_save,
            "attention": case.attention,
            "source": case.source,
        },
        "made_with": f"AutoAdapterModel from _bases/{BASE}"
        + (f" (attn_implementation={case.attention!r})" if case.attention else "") + "; "
        + (f"load_adapter of adapterkit's export {case.source}" if case.source else
           "; ".join(f"add_adapter({name!r}, config=AdapterConfig.load({case.method!r}, **{case.options}))"
                     for name in case.adapters)
           + (f"; add_adapter_fusion(Fuse{tuple(case.adapters)})" if case.fusion else "")
           + (f"; add_{case.head.kind}_head({case.head_name!r}, num_labels={case.head.num_labels})" if case.head else "")
           + ("; train_adapter_fusion" if case.fusion else "; train_adapter"))
        + "; " + "; ".join(saves)
        + (" (use_safetensors=False, then the pickles rewritten as safetensors: AdapterHub's safetensors save refuses "
           "the prefix pool's shared tensors)" if case.pickled_save else " (use_safetensors=True)"),
        "base": BASE,
        "peer_class": type(model).__name__,
        "adapters": case.adapters,
        "output": case.output,
        "perturbed": moved,
    }
    return Made(inputs, reference, without, save, reload, record)
