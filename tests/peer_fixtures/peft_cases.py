"""peft's cases: each builds a peft model on a tiny base with peft itself and says how to save,
reload and switch it off. Run by ``make_fixtures.py peft`` inside ``.peer-envs/peft``
(transformers 5) and ``.peer-envs/adapters`` (transformers 4: the one case that needs it).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import IA3Config, LoraConfig, PeftConfig, PeftModel, PrefixTuningConfig, PromptTuningConfig, get_peft_model
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from fixture_kit import Made, base_parameter_ids, fixed_inputs, load_base, perturb_adapter_weights

LIBRARY = "peft"
PACKAGES = ("peft",)  # versions recorded in case.json
BERT_QKV_FFN = r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|output\.dense)"
LLAMA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Model:
    """A transformers class on a tiny base, and the output field the case compares."""

    base: str
    loader: Callable[..., torch.nn.Module]
    kwargs: dict
    output: str


MODELS = {
    "bert": Model("tiny-bert", AutoModel.from_pretrained, {}, "last_hidden_state"),
    "bert-seqcls": Model("tiny-bert", AutoModelForSequenceClassification.from_pretrained, {"num_labels": 3}, "logits"),
    "llama-causal": Model("tiny-llama", AutoModelForCausalLM.from_pretrained, {}, "logits"),
}


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    model: str
    #: adapter name -> config; the first is the main one ("default": saved at the folder's top).
    #: Built lazily, so a config peft refuses is refused while the case is being made.
    adapters: Callable[[], dict[str, PeftConfig]] | None
    transformers: int = 5  # the major version the case runs on
    refused: bool = False  # peft is expected to refuse it: its error is recorded instead
    #: an adapterkit export to load instead of building the adapter (``make_exports.py``)
    source: str | None = None

    @property
    def seed_name(self) -> str:
        return self.name


def lora(**options) -> Callable[[], dict[str, PeftConfig]]:
    """A LoRA adapter named "default" with ``options``, copied per call: peft extends a config's
    ``modules_to_save`` list in place (with "classifier", "score"), so a shared list would grow."""
    return lambda: {"default": LoraConfig(r=4, lora_alpha=8, **copy.deepcopy(options))}


SEQ_CLS_QV = dict(task_type="SEQ_CLS", target_modules=["query", "value"], modules_to_save=["classifier"])

CASES = [
    Case("lora_seqcls", "lora", "bert-seqcls", lora(lora_dropout=0.1, **SEQ_CLS_QV)),
    Case("lora_regex_patterns", "lora", "bert", lora(
        task_type="FEATURE_EXTRACTION", target_modules=BERT_QKV_FFN,
        rank_pattern={"key": 2, r"layer\.1\.output\.dense": 6}, alpha_pattern={"value": 32})),
    Case("lora_layers_to_transform", "lora", "bert", lora(
        task_type="FEATURE_EXTRACTION", target_modules=["query", "key", "value", "dense"],
        layers_to_transform=[1], rank_pattern={"dense": 2})),
    Case("lora_regex_layers_to_transform", "lora", "bert", lora(
        task_type="FEATURE_EXTRACTION", target_modules=BERT_QKV_FFN, layers_to_transform=[1]), refused=True),
    Case("rslora_seqcls", "lora", "bert-seqcls", lora(use_rslora=True, **SEQ_CLS_QV)),
    Case("dora_seqcls", "lora", "bert-seqcls", lora(use_dora=True, **SEQ_CLS_QV)),
    Case("lora_bias_lora_only", "lora", "bert", lora(
        task_type="FEATURE_EXTRACTION", target_modules=["query", "value"], bias="lora_only")),
    Case("lora_bias_all", "lora", "bert", lora(
        task_type="FEATURE_EXTRACTION", target_modules=["query", "value"], bias="all")),
    Case("lora_two_adapters", "lora", "bert", lambda: {
        "default": LoraConfig(task_type="FEATURE_EXTRACTION", r=4, lora_alpha=8, target_modules=["query", "value"]),
        "second": LoraConfig(task_type="FEATURE_EXTRACTION", r=2, lora_alpha=2, target_modules=["key", "dense"]),
    }),
    Case("ia3_seqcls", "ia3", "bert-seqcls", lambda: {"default": IA3Config(task_type="SEQ_CLS")}),
    Case("prefix_seqcls", "prefix_tuning", "bert-seqcls",
         lambda: {"default": PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4)}, transformers=4),
    Case("prefix_seqcls_transformers5", "prefix_tuning", "bert-seqcls",
         lambda: {"default": PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4)}, refused=True),
    Case("prompt_seqcls", "prompt_tuning", "bert-seqcls", lambda: {
        "default": PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4, prompt_tuning_init="RANDOM")}),
    Case("lora_llama_causal", "lora", "llama-causal", lora(
        task_type="CAUSAL_LM", target_modules=LLAMA_ALL, modules_to_save=["lm_head"])),
    # adapterkit's exports (make_exports.py), loaded by peft
    Case("export_lora_seqcls", "lora", "bert-seqcls", None, source="adapterkit/peft_lora_seqcls/peft"),
    Case("export_ia3_seqcls", "ia3", "bert-seqcls", None, source="adapterkit/peft_ia3_seqcls/peft"),
    Case("export_prompt_seqcls", "prompt_tuning", "bert-seqcls", None, source="adapterkit/peft_prompt_seqcls/peft"),
    Case("export_prefix_seqcls", "prefix_tuning", "bert-seqcls", None, source="adapterkit/peft_prefix_seqcls/peft",
         transformers=4),
]


def options(config: PeftConfig) -> dict:
    """The config's fields that differ from its class's defaults (JSON-ready)."""
    def plain(d: dict) -> dict:
        return json.loads(json.dumps(d, default=sorted))
    given, default = plain(config.to_dict()), plain(type(config)().to_dict())
    return {key: value for key, value in given.items() if value != default.get(key) and key != "base_model_name_or_path"}


def outputs(model: PeftModel, names: list[str], inputs: dict, field: str) -> dict[str, torch.Tensor]:
    """``output.<field>`` with the main adapter active, ``output.<name>.<field>`` for the others."""
    found = {}
    for name in names:
        model.set_adapter(name)
        key = f"output.{field}" if name == names[0] else f"output.{name}.{field}"
        with torch.no_grad():
            found[key] = getattr(model(**inputs), field)
    model.set_adapter(names[0])
    return found


def switched_off(model: PeftModel, inputs: dict, field: str) -> torch.Tensor:
    """The output with the adapters off: ``disable_adapter()``, or for prompt learning what it
    runs (the wrapped model's forward): peft 0.21.2's ``disable_adapter()`` fails on transformers 5
    for prompt learning on a model without ``prepare_inputs_for_generation`` (e.g. a classifier)."""
    with torch.no_grad():
        if model.peft_config[model.active_adapter].is_prompt_learning:
            return getattr(model.get_base_model()(**inputs), field)
        with model.disable_adapter():
            return getattr(model(**inputs), field)


def build(case: Case, seed: int) -> Made:
    spec = MODELS[case.model]
    base = load_base(spec.base, spec.loader, seed, **spec.kwargs)
    if case.source:  # adapterkit's export: loaded as it is, nothing perturbed
        model = PeftModel.from_pretrained(base, case.source)
        names, moved = ["default"], []
        asked = {"default": {"type": type(model.peft_config["default"]).__name__, **options(model.peft_config["default"])}}
    else:
        configs = case.adapters()
        names = list(configs)
        asked = {name: {"type": type(c).__name__, **options(c)} for name, c in configs.items()}  # before peft edits them
        base_ids = base_parameter_ids(base)
        model = get_peft_model(base, configs[names[0]], adapter_name=names[0])
        for name in names[1:]:
            model.add_adapter(name, configs[name])
        moved = perturb_adapter_weights(model, base_ids, seed)
    model.eval()
    inputs = fixed_inputs(with_token_types=spec.base == "tiny-bert")
    reference = outputs(model, names, inputs, spec.output)
    without = dict.fromkeys(reference, switched_off(model, inputs, spec.output))

    def reload(folder: Path) -> dict[str, torch.Tensor]:
        fresh = PeftModel.from_pretrained(load_base(spec.base, spec.loader, seed + 1, **spec.kwargs), folder)
        for name in names[1:]:
            fresh.load_adapter(folder / name, adapter_name=name)
        return outputs(fresh.eval(), names, inputs, spec.output)

    record = {
        "summary": asked,
        "made_with": f"{type(base).__name__} from _bases/{spec.base}; "
        + (f"PeftModel.from_pretrained(adapterkit's export {case.source})" if case.source else "get_peft_model")
        + "".join(f"; add_adapter({n!r})" for n in names[1:]) + "; save_pretrained(adapter)",
        "base": spec.base,
        "peer_class": type(model).__name__,
        "adapters": names,
        "output": spec.output,
        "perturbed": moved,
    }
    return Made(inputs, reference, without, model.save_pretrained, reload, record)
