"""The head forms the peers' adapters need: ``pooling="first"`` (the first position of the sequence
the model ran, a prompt's first vector when one is in front: what peft's and AdapterHub's
classifiers read with prompt tuning), a causal-LM head with its own LM weights (peft's
``modules_to_save=["lm_head"]``), and BitFit restricted to some projections (peft's
``bias="lora_only"``). Each checked against a pass built by hand."""

from __future__ import annotations

import pytest
import torch
from tiny_models import randomize, tiny_base, tiny_batch

from adapterkit import AdapterModel, HeadConfig
from adapterkit.composition import Parallel, Routed


def with_prompt() -> AdapterModel:
    model = AdapterModel(tiny_base("bert"))
    head = HeadConfig(num_labels=3, pooling="first", mlp=True)
    model.add_adapter("p", "prompt", head, prompt_length=4, init="random")
    randomize(model.heads["p"], seed=1)
    return model.eval()


def first_position_by_hand(model: AdapterModel, batch: dict) -> torch.Tensor:
    """The plain model run on the prompt-extended embeddings (as peft runs it); position 0."""
    prompt = model.adapters["p"].prompt
    embeds = model.parts.embeddings(batch["input_ids"])
    mask = torch.cat([torch.ones(embeds.shape[0], prompt.shape[0], dtype=torch.long), batch["attention_mask"]], dim=1)
    with torch.no_grad():
        hidden = model.body(inputs_embeds=torch.cat([prompt.expand(embeds.shape[0], -1, -1), embeds], 1), attention_mask=mask)
    return hidden.last_hidden_state[:, 0]


def test_first_pooling_reads_the_first_prompt_vectors_output():
    model, batch = with_prompt(), tiny_batch()
    with torch.no_grad():
        logits = model(**batch, adapters="p").logits
        expected = model.heads["p"].layers(first_position_by_hand(model, batch))
        tokens = model.heads["p"].layers(model.body(**batch).last_hidden_state[:, 0])
    assert torch.allclose(logits, expected, atol=1e-6)
    assert not torch.allclose(logits, tokens, atol=1e-3)  # not the first token's


def test_without_prompt_first_is_the_first_token():
    model = AdapterModel(tiny_base("bert"))
    for name, pooling in (("first", "first"), ("cls", "cls")):
        model.add_adapter(name, "lora", HeadConfig(num_labels=3, pooling=pooling))
        model.heads[name].load_state_dict(model.heads["first"].state_dict())
    batch = tiny_batch()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch, adapters="first").logits, model(**batch, adapters="cls").logits)
        both = model(**batch, adapters=Parallel("first", "cls"))
    assert torch.equal(both["first"].logits, both["cls"].logits)


def lm_adapter() -> AdapterModel:
    model = AdapterModel(tiny_base("llama"))
    model.add_adapter("lm", "lora", HeadConfig(kind="causal_lm", own_lm_head=True), targets=["q", "v"])
    randomize(model.adapters["lm"], seed=2)
    randomize(model.heads["lm"], seed=3)
    return model.eval()


def test_an_own_lm_head_gives_the_logits_and_the_base_head_stays():
    model, batch = lm_adapter(), tiny_batch()
    lm_head = model.base.get_output_embeddings()
    assert not torch.equal(model.heads["lm"].weight, lm_head.weight)
    with torch.no_grad():
        logits = model(**batch, adapters="lm").logits
        with model.using("lm"):
            hidden = model.body(**batch).last_hidden_state
        plain = model(**batch, adapters=None).logits
    assert torch.allclose(logits, hidden @ model.heads["lm"].weight.T, atol=1e-5)
    assert torch.allclose(plain, model.base(**batch).logits)  # other passes keep the base's LM head
    assert "head.weight" in model.adapter_state("lm").parameters
    generated = model.generate(batch["input_ids"][:1], attention_mask=batch["attention_mask"][:1], adapters="lm",
                               max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == batch["input_ids"].shape[1] + 3


def test_an_own_lm_head_saves_loads_and_refuses_several_heads_in_one_pass(tmp_path):
    model, batch = lm_adapter(), tiny_batch()
    model.save_adapter("lm", tmp_path / "lm")
    other = AdapterModel(tiny_base("llama"))
    other.load_adapter(tmp_path / "lm")
    with torch.no_grad():
        assert torch.equal(other.eval()(**batch, adapters="lm").logits, model(**batch, adapters="lm").logits)
        model.add_adapter("lm2", "lora", HeadConfig(kind="causal_lm", own_lm_head=True))
        with pytest.raises(ValueError, match="own LM head"):
            with model.using(Routed(["lm", "lm2", "lm"])):
                model.base(**batch)
    model.delete_adapter("lm")
    model.delete_adapter("lm2")
    assert "lm_heads" not in model._hooks
    with pytest.raises(ValueError, match="causal_lm heads"):
        HeadConfig(kind="classification", own_lm_head=True)


def test_bitfit_targets_restrict_the_bias_deltas():
    model = AdapterModel(tiny_base("bert"))
    model.add_adapter("b", "bitfit", targets=["q", "v"], include_norms=False)
    assert sorted({key.split(".")[3] for key in model.adapter_state("b").parameters}) == ["q", "v"]
    with pytest.raises(ValueError, match="unknown target role"):
        model.add_adapter("c", "bitfit", targets=["nope"])
