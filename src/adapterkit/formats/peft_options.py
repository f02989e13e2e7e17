"""Which options of a peft ``adapter_config.json`` adapterkit reads, ignores or refuses.

peft writes every field of its config class. A converter must not silently drop one that changes
what the adapter computes, so each field of the four peft types adapterkit converts is either

* read by the converter (``READ``: what is adapted comes from the saved tensors, their ranks
  from the tensor shapes, the rest from these fields);
* metadata or initialisation only (``IGNORED``: how a fresh adapter starts does not matter once
  it is trained and saved, except where the initialisation changes the base weights: see
  ``init_lora_weights`` below);
* or refused unless it has its neutral value (None, False, empty), with an error naming it:
  every other field, including fields of newer peft versions that adapterkit does not know.

Source: peft 0.21.2 (``LoraConfig``, ``IA3Config``, ``PrefixTuningConfig``,
``PromptTuningConfig``, ``PeftConfig``).
"""

from __future__ import annotations

from typing import Any

from .layout import NotConvertible

CONVERTED_TYPES = ("LORA", "IA3", "PREFIX_TUNING", "PROMPT_TUNING")
TASK_TYPES = (None, "FEATURE_EXTRACTION", "SEQ_CLS", "TOKEN_CLS", "CAUSAL_LM")

_METADATA = {"peft_type", "task_type", "base_model_name_or_path", "revision", "peft_version", "inference_mode", "auto_mapping", "modules_to_save"}
READ = {
    "LORA": {"r", "lora_alpha", "lora_dropout", "target_modules", "exclude_modules", "rank_pattern", "alpha_pattern",
             "layers_to_transform", "layers_pattern", "use_rslora", "use_dora", "bias", "init_lora_weights"},
    "IA3": {"target_modules", "exclude_modules", "feedforward_modules"},
    "PREFIX_TUNING": {"num_virtual_tokens", "token_dim", "num_transformer_submodules", "num_attention_heads", "num_layers",
                      "encoder_hidden_size", "prefix_projection"},
    "PROMPT_TUNING": {"num_virtual_tokens", "token_dim", "num_transformer_submodules", "num_attention_heads", "num_layers"},
}
IGNORED = {
    # initialisations that leave the base weights alone, and settings of features that are off
    "LORA": {"loftq_config", "eva_config", "corda_config", "lora_ga_config", "qalora_group_size", "megatron_core"},
    "IA3": {"init_ia3_weights"},
    "PREFIX_TUNING": {"init_weights"},
    "PROMPT_TUNING": {"prompt_tuning_init", "prompt_tuning_init_text", "tokenizer_name_or_path", "tokenizer_kwargs"},
}
#: LoRA initialisations that keep the base weights as they are (PiSSA, OLoRA, LoftQ, CorDA and
#: LoRA-GA move part of the weight into the adapter, so their adapters need the changed base).
PLAIN_LORA_INITS = (True, False, "gaussian", "eva")


def neutral(value: Any) -> bool:
    return value is None or value is False or value == {} or value == [] or value == ""


def check_options(config: dict[str, Any], where: str) -> None:
    """Refuse a peft config adapterkit cannot convert exactly (see the module docstring).

    Raises:
        NotConvertible: another peft type or task, or an option set to a value without an
            adapterkit equivalent (named, with what adapterkit supports).
    """
    peft_type = config.get("peft_type")
    if peft_type not in CONVERTED_TYPES:
        raise NotConvertible(f"{where}: peft_type {peft_type!r} has no adapterkit equivalent; adapterkit converts {', '.join(CONVERTED_TYPES)}")
    if config.get("task_type") not in TASK_TYPES:
        raise NotConvertible(
            f"{where}: task_type {config['task_type']!r} is not converted; adapterkit converts "
            f"{', '.join(str(t) for t in TASK_TYPES[1:])} (and none)"
        )
    known = _METADATA | READ[peft_type] | IGNORED[peft_type]
    for key, value in sorted(config.items()):
        if key not in known and not neutral(value):
            raise NotConvertible(
                f"{where}: peft option {key}={value!r} has no adapterkit equivalent (adapterkit reads {peft_type} "
                f"adapters with {', '.join(sorted(READ[peft_type]))}; other options must be unset)"
            )
    if peft_type == "LORA":
        if config.get("init_lora_weights", True) not in PLAIN_LORA_INITS:
            raise NotConvertible(
                f"{where}: init_lora_weights={config['init_lora_weights']!r} changes the base model's weights when the "
                "adapter is created, so the adapter only works on that changed base; adapterkit converts adapters "
                f"initialised with {PLAIN_LORA_INITS}"
            )
        if config.get("bias", "none") not in ("none", "lora_only"):
            raise NotConvertible(
                f"{where}: bias={config['bias']!r} trains every bias of the model, the embedding LayerNorm's and the "
                "pooler's included, which no adapterkit site reaches; adapterkit converts bias='none' and 'lora_only' "
                "(the adapted projections' biases, as bias deltas)"
            )
    if peft_type in ("PREFIX_TUNING", "PROMPT_TUNING") and config.get("num_transformer_submodules", 1) != 1:
        raise NotConvertible(
            f"{where}: num_transformer_submodules={config['num_transformer_submodules']} (an encoder-decoder model); "
            "adapterkit converts prompt learning for encoders and decoders with one stack"
        )
