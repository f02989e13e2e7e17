"""What has no exact adapterkit equivalent in a peer's folder is refused, with an error naming the
option (or the module) and saying what adapterkit supports; nothing is approximated. Each case
edits one field of a committed fixture (or drops tensors) and loads it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from adapterkit import AdapterModel
from adapterkit.formats.layout import NotConvertible

FIXTURES = Path(__file__).parent / "peer_fixtures"

#: (fixture folder, JSON file in it, dotted field, value, what the error names)
EDITS = [
    ("peft/lora_seqcls", "adapter_config.json", "fan_in_fan_out", True, "fan_in_fan_out"),
    ("peft/lora_seqcls", "adapter_config.json", "init_lora_weights", "pissa", "init_lora_weights='pissa' changes the base"),
    ("peft/lora_seqcls", "adapter_config.json", "layer_replication", [[0, 2]], "layer_replication"),
    ("peft/lora_seqcls", "adapter_config.json", "lora_bias", True, "lora_bias"),
    ("peft/lora_seqcls", "adapter_config.json", "trainable_token_indices", [5], "trainable_token_indices"),
    ("peft/lora_seqcls", "adapter_config.json", "peft_type", "LOHA", "peft_type 'LOHA'"),
    ("peft/lora_seqcls", "adapter_config.json", "task_type", "SEQ_2_SEQ_LM", "task_type 'SEQ_2_SEQ_LM'"),
    ("peft/lora_seqcls", "adapter_config.json", "an_option_of_a_newer_peft", 3, "an_option_of_a_newer_peft=3"),
    ("peft/lora_seqcls", "adapter_config.json", "r", 8, "rank 4 saved"),
    ("peft/prompt_seqcls", "adapter_config.json", "num_transformer_submodules", 2, "num_transformer_submodules=2"),
    ("adapters/seq_bn_clshead", "adapter_config.json", "config.use_gating", True, "use_gating=True"),
    ("adapters/seq_bn_clshead", "adapter_config.json", "config.phm_layer", True, "phm_layer=True"),
    ("adapters/seq_bn_clshead", "adapter_config.json", "config.ln_after", True, "ln_after=True"),
    ("adapters/seq_bn_clshead", "adapter_config.json", "config.ln_before", True, "ln_before=True"),
    ("adapters/seq_bn_clshead", "adapter_config.json", "config.original_ln_after", False, "original_ln_after=False"),
    ("adapters/seq_bn_clshead", "adapter_config.json", "config.residual_before_ln", False, "residual_before_ln=False"),
    ("adapters/seq_bn_clshead", "adapter_config.json", "config.dropout", 0.1, r"dropout=0.1 .*set it to 0"),
    ("adapters/seq_bn_clshead", "adapter_config.json", "config.scaling", "channel", "scaling='channel'"),
    ("adapters/seq_bn_clshead", "adapter_config.json", "config.non_linearity", "leakyrelu", "non_linearity 'leakyrelu'"),
    ("adapters/seq_bn_clshead", "adapter_config.json", "config.inv_adapter", "nice", "inv_adapter='nice'"),
    ("adapters/seq_bn_clshead", "adapter_config.json", "config.leave_out", [1], "leave_out"),
    ("adapters/seq_bn_clshead", "adapter_config.json", "config.architecture", "union", "architecture 'union'"),
    ("adapters/seq_bn_clshead", "adapter_config.json", "model_type", "roberta", "saved for a 'roberta' model"),
    ("adapters/seq_bn_clshead", "head_config.json", "config.use_pooler", True, "use_pooler=True"),
    ("adapters/seq_bn_clshead", "head_config.json", "config.layers", 3, "with 3 layers"),
    ("adapters/seq_bn_clshead", "head_config.json", "config.activation_function", "gelu", "activation_function='gelu'"),
    ("adapters/seq_bn_clshead", "head_config.json", "config.head_type", "multilabel_classification", "'multilabel_classification'"),
    ("adapters/fusion_seq_bn", "fusion/adapter_fusion_config.json", "config.query_before_ln", True, "query_before_ln=True"),
    ("adapters/fusion_seq_bn", "fusion/adapter_fusion_config.json", "config.temperature", True, "temperature=True"),
    ("adapters/fusion_seq_bn", "fusion/adapter_fusion_config.json", "config.value", False, "static fusion"),
    ("adapters/lora", "adapter_config.json", "config.use_dora", True, "use_dora=True"),
    ("adapters/lora", "adapter_config.json", "config.vera_d", 0.1, "vera_d=0.1"),
    ("adapters/lora", "adapter_config.json", "config.composition_mode", "mul", "composition_mode='mul'"),
    ("adapters/prefix_tuning_clshead", "adapter_config.json", "config.leave_out", [0], "leave_out=\\[0\\]"),
    ("adapters/prefix_tuning_clshead", "adapter_config.json", "config.non_linearity", "relu", "non_linearity='relu'"),
    ("adapters/prefix_tuning_clshead", "adapter_config.json", "config.dropout", 0.1, "dropout=0.1"),
    ("adapters/prompt_tuning_clshead", "adapter_config.json", "config.combine", "prefix_after_bos", "combine='prefix_after_bos'"),
]


def edited(tmp_path: Path, case: str, filename: str, field: str, value) -> Path:
    folder = tmp_path / "adapter"
    shutil.copytree(FIXTURES / case / "adapter", folder)
    data = json.loads((folder / filename).read_text())
    *parents, last = field.split(".")
    target = data
    for key in parents:
        target = target[key]
    target[last] = value
    (folder / filename).write_text(json.dumps(data))
    return folder


def base_of(case: str) -> AdapterModel:
    return AdapterModel.from_pretrained(str(FIXTURES / "_bases" / ("tiny-llama" if "llama" in case else "tiny-bert")))


@pytest.mark.parametrize("case, filename, field, value, match", EDITS, ids=[f"{e[0]}:{e[2]}" for e in EDITS])
def test_an_option_without_an_exact_equivalent_is_refused_by_name(tmp_path, case, filename, field, value, match):
    model = base_of(case)
    with pytest.raises(NotConvertible, match=match):
        model.load_adapter(edited(tmp_path, case, filename, field, value))
    assert not model.adapters  # nothing half-loaded


def test_an_unedited_copy_loads(tmp_path):
    """(The edits above are what is refused, not the copying.)"""
    model = base_of("adapters/seq_bn_clshead")
    assert model.load_adapter(edited(tmp_path, "adapters/seq_bn_clshead", "adapter_config.json", "config.dropout", 0.0))


def test_a_role_adapted_in_part_is_refused(tmp_path):
    """peft adapts Llama's gate_proj without up_proj; adapterkit's ffn_in role is both."""
    folder = tmp_path / "adapter"
    shutil.copytree(FIXTURES / "peft/lora_llama_causal/adapter", folder)
    tensors = load_file(folder / "adapter_model.safetensors")
    save_file({k: t for k, t in tensors.items() if "up_proj" not in k}, folder / "adapter_model.safetensors")
    with pytest.raises(NotConvertible, match="role 'ffn_in' in layer 0"):
        base_of("llama").load_adapter(folder)


def test_a_module_that_is_no_site_is_refused(tmp_path):
    """A LoRA on the word embeddings (peft's lora_embedding_A/B) has no adapterkit site."""
    folder = tmp_path / "adapter"
    shutil.copytree(FIXTURES / "peft/lora_two_adapters/adapter", folder)
    shutil.rmtree(folder / "second")
    tensors = load_file(folder / "adapter_model.safetensors")
    for matrix in ("lora_A", "lora_B"):
        key = f"base_model.model.encoder.layer.0.attention.self.query.{matrix}.weight"
        tensors[key.replace("encoder.layer.0.attention.self.query", "embeddings.word_embeddings")] = tensors[key].clone()
    save_file(tensors, folder / "adapter_model.safetensors")
    with pytest.raises(NotConvertible, match="'embeddings.word_embeddings', which is not a projection"):
        base_of("bert").load_adapter(folder)


def test_an_adapterhub_parallel_adapter_on_a_pre_ln_model_is_refused():
    """AdapterHub's par_bn reads the residual x, adapterkit's parallel adapter LN(x) on pre-LN
    layers (the same tensor on post-LN BERT)."""
    from adapterkit.formats.adapterhub import _bottleneck

    from tiny_models import tiny_base

    config = json.loads((FIXTURES / "adapters/par_bn/adapter/adapter_config.json").read_text())["config"]
    layout = AdapterModel(tiny_base("llama")).peer_layout()
    with pytest.raises(NotConvertible, match="pre-LN 'llama' model"):
        _bottleneck(config, {}, "par_bn", layout, "here")
