"""Which options of AdapterHub's configs adapterkit reads, ignores or refuses.

AdapterHub (``adapters`` 1.3) writes every field of its config class into ``adapter_config.json``
(``"config"``), ``adapter_fusion_config.json`` and ``head_config.json``. Each field is read by the
converter (``READ``), irrelevant once the adapter is trained (``IGNORED``: initialisation, settings
of features that are off), or must have the value that gives adapterkit's computation (``FIXED``).
Any other field, including ones of newer versions, is refused unless neutral (None, False, empty).

Source: ``adapters`` 1.3.0 ``configuration/adapter_config.py`` (``BnConfig``, ``LoRAConfig``,
``PrefixTuningConfig``, ``PromptTuningConfig``), ``configuration/adapter_fusion_config.py``,
``methods/modeling.py`` (``Adapter``, ``ParallelAdapter``, ``BertFusion``), ``heads/base.py``.
"""

from __future__ import annotations

from typing import Any

from .layout import NotConvertible

_PHM = {"phm_dim", "factorized_phm_W", "shared_W_phm", "shared_phm_rule", "factorized_phm_rule", "phm_c_init",
        "phm_init_range", "learn_phm", "hypercomplex_nonlinearity", "phm_rank", "phm_bias"}
#: architecture -> (read, ignored, fixed {option: required value, why})
OPTIONS: dict[str, tuple[set[str], set[str], dict[str, tuple[Any, str]]]] = {
    "bottleneck": (
        {"mh_adapter", "output_adapter", "reduction_factor", "non_linearity", "original_ln_before", "is_parallel",
         "scaling", "residual_before_ln", "leave_out"},
        {"init_weights", "init_weights_seed", "adapter_residual_before_ln", "inv_adapter_reduction_factor", "architecture", *_PHM},
        {"original_ln_after": (True, "adapterkit's adapters end in the sublayer's own Add & Norm"),
         "ln_before": (False, "adapterkit's bottleneck has no layer norm of its own"),
         "ln_after": (False, "adapterkit's bottleneck has no layer norm of its own"),
         "use_gating": (False, "adapterkit's bottleneck has no gate"),
         "phm_layer": (False, "adapterkit's bottleneck projections are plain linear layers, not PHM"),
         "dropout": (0.0, "adapterkit's bottleneck has no dropout (set it to 0 in adapter_config.json to load the "
                          "adapter for inference, where dropout does nothing)"),
         "stochastic_depth": (0.0, "adapterkit's bottleneck has no stochastic depth"),
         "cross_adapter": (False, "adapterkit converts AdapterHub's self-attention and feed-forward adapters"),
         "inv_adapter": (None, "adapterkit has no invertible adapters")},
    ),
    "lora": (
        {"selfattn_lora", "intermediate_lora", "output_lora", "attn_matrices", "r", "alpha", "dropout", "composition_mode",
         "leave_out"},
        {"init_weights", "init_weights_seed", "dtype", "architecture"},
        {"use_gating": (False, "adapterkit's LoRA and IA3 have no gate"),
         "use_dora": (False, "AdapterHub's DoRA is not converted (peft's is)"),
         "vera_d": (None, "adapterkit has no VeRA"), "vera_b": (None, "adapterkit has no VeRA")},
    ),
    "prefix_tuning": (
        {"prefix_length", "bottleneck_size", "non_linearity", "flat"},
        {"init_weights_seed", "shared_gating", "cross_prefix", "architecture"},
        {"encoder_prefix": (True, "adapterkit puts prefixes on every self-attention"),
         "leave_out": ([], "AdapterHub's prefix MLP then covers only some layers, in its own order"),
         "use_gating": (False, "adapterkit's prefixes have no gate"),
         "dropout": (0.0, "adapterkit's prefixes have no dropout (set it to 0 in adapter_config.json to load the "
                          "adapter for inference, where dropout does nothing)")},
    ),
    "prompt_tuning": (
        {"prompt_length"},
        {"prompt_init", "prompt_init_text", "random_uniform_scale", "init_weights_seed", "architecture"},
        {"combine": ("prefix", "adapterkit inserts prompts in front of the sequence (not after the first token)")},
    ),
    "fusion": (
        {"residual_before", "regularization", "value_before_softmax"},
        {"value_initialized", "dropout_prob"},
        {"query": (True, "adapterkit's fusion always has a query matrix (a static fusion is not converted)"),
         "key": (True, "adapterkit's fusion always has a key matrix (a static fusion is not converted)"),
         "value": (True, "adapterkit's fusion always has a value matrix (a static fusion is not converted)"),
         "query_before_ln": (False, "adapterkit's fusion query is the output of the adapters' Add & Norm"),
         "temperature": (False, "adapterkit's fusion has a fixed temperature, not AdapterHub's annealed one")},
    ),
    "head": (
        {"head_type", "num_labels", "layers", "activation_function", "label2id", "dropout_prob"},
        set(),
        {"use_pooler": (False, "adapterkit's heads read the hidden states, not BERT's pooler"),
         "bias": (True, "adapterkit's head layers have biases")},
    ),
}


def _neutral(value: Any) -> bool:
    return value is None or value is False or value == {} or value == [] or value == ""


def check_options(architecture: str, config: dict[str, Any], where: str) -> None:
    """Refuse an AdapterHub config with an option adapterkit has no exact equivalent of.

    Raises:
        NotConvertible: naming the option, its value and why.
    """
    read, ignored, fixed = OPTIONS[architecture]
    for key, value in sorted(config.items()):
        if key in fixed:
            required, why = fixed[key]
            if value != required:
                raise NotConvertible(f"{where}: AdapterHub option {key}={value!r} is not converted: {why}")
        elif key not in read and key not in ignored and not _neutral(value):
            raise NotConvertible(
                f"{where}: AdapterHub option {key}={value!r} has no adapterkit equivalent (adapterkit reads "
                f"{', '.join(sorted(read))}; {', '.join(sorted(fixed))} must be as AdapterHub's defaults)"
            )
