"""``shift_positions``: peft's numbering of the tokens after a prefix (``l .. l+n-1``), applied by
the sequence hooks, against the same model given those position ids by hand."""

from __future__ import annotations

import pytest
import torch
from method_table import L_PREFIX, hidden, perturb
from tiny_models import VOCAB, tiny_base, tiny_batch
from transformers.models.roberta.modeling_roberta import RobertaEmbeddings

from adapterkit import AdapterModel, HeadConfig
from adapterkit.composition import Routed, Stack

ATOL = 1e-5


def with_prefixes(arch: str, **named_options) -> AdapterModel:
    """A tiny model with plain prefixes ``name -> options`` (perturbed, the same values for the
    same seed whatever the options)."""
    model = AdapterModel(tiny_base(arch))
    for name, options in named_options.items():
        torch.manual_seed(0)
        model.add_adapter(name, "prefix", HeadConfig(num_labels=3, dropout=0.0), prefix_length=L_PREFIX,
                          reparameterize=False, init="random", **options)
        perturb(model, name)
    return model.eval()


def left_padded() -> dict:
    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    ids[-1, :2], mask[-1, :2] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


def by_hand(arch: str, batch: dict) -> torch.Tensor:
    """The positions peft's cache of ``L_PREFIX`` positions makes the model give the tokens."""
    if arch == "roberta":
        return RobertaEmbeddings.create_position_ids_from_input_ids(batch["input_ids"], 1, L_PREFIX)
    if arch == "llama":  # numbered from each row's first real token, as without the shift
        mask = batch["attention_mask"]
        return (mask.cumsum(-1) - 1).clamp(min=0) + L_PREFIX
    return torch.arange(batch["input_ids"].shape[1])[None] + L_PREFIX


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "llama"])
def test_shifted_positions_equal_the_same_positions_given_by_hand(arch):
    model = with_prefixes(arch, shifted={"shift_positions": True}, plain={})
    batch = left_padded() if arch == "llama" else tiny_batch()
    if arch == "roberta":
        batch["input_ids"][-1, -2:] = 1  # RoBERTa's padding id: padding keeps its position
    shifted = hidden(model, batch, "shifted")
    expected = hidden(model, {**batch, "position_ids": by_hand(arch, batch)}, "plain")
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(shifted[real], expected[real], rtol=ATOL, atol=ATOL)
    assert not torch.allclose(shifted[real], hidden(model, batch, "plain")[real], atol=1e-4)


def test_given_position_ids_are_shifted_too_as_peft_does():
    model = with_prefixes("bert", shifted={"shift_positions": True}, plain={})
    batch = tiny_batch()
    given = torch.arange(7).flip(0)[None].expand(3, -1)
    torch.testing.assert_close(hidden(model, {**batch, "position_ids": given}, "shifted"),
                               hidden(model, {**batch, "position_ids": given + L_PREFIX}, "plain"), rtol=ATOL, atol=ATOL)


@torch.no_grad()
def test_routed_rows_get_their_own_prefixes_shift():
    model = with_prefixes("bert", shifted={"shift_positions": True}, plain={})
    batch = tiny_batch()
    rows = ["shifted", "plain", None]
    routed = model(**batch, adapters=Routed(rows))
    for r, name in enumerate(rows[:2]):
        one = {k: v[r : r + 1] for k, v in batch.items()}
        position = (routed.rows[name] == r).nonzero().item()
        torch.testing.assert_close(routed[name].logits[position], model(**one, adapters=name).logits[0], rtol=ATOL, atol=ATOL)
    torch.testing.assert_close(routed.last_hidden_state[2:], model.body(**{k: v[2:] for k, v in batch.items()}).last_hidden_state)


def test_stacked_shifting_prefixes_add_their_lengths_and_take_positions_from_the_budget():
    model = with_prefixes("bert", a={"shift_positions": True}, b={"shift_positions": True}, plain={})
    assert model.token_budget("a") == 512 - L_PREFIX
    assert model.token_budget(Stack("a", "b")) == 512 - 2 * L_PREFIX
    assert model.token_budget("plain") == 512
    unshifted = with_prefixes("bert", a={}, b={})  # the same prefixes, given the positions by hand
    batch = tiny_batch()
    positions = torch.arange(7)[None] + 2 * L_PREFIX
    torch.testing.assert_close(hidden(model, batch, Stack("a", "b")),
                               hidden(unshifted, {**batch, "position_ids": positions}, Stack("a", "b")), rtol=ATOL, atol=ATOL)
    with pytest.raises(ValueError, match=f"input of {513 - L_PREFIX} tokens plus {L_PREFIX} positions for prompts or "
                                         "shifted prefixes exceeds the 512"):
        hidden(model, {"input_ids": torch.randint(3, VOCAB, (1, 513 - L_PREFIX))}, "a")


def test_shifting_prefixes_and_prompts_before_the_embedding_layer_are_refused_together():
    model = with_prefixes("bert", shifted={"shift_positions": True})
    model.add_adapter("before", "prompt", HeadConfig(num_labels=3), prompt_length=2)
    model.add_adapter("after", "prompt", HeadConfig(num_labels=3), prompt_length=2, insert_at="embedding_output")
    batch = tiny_batch()
    with pytest.raises(ValueError, match="runs prompts before the embedding layer and prefixes with shift_positions in "
                                         "one pass.*insert_at='embedding_output'.*shift_positions=False"):
        model(**batch, adapters=Stack("shifted", "before"))
    out = model(**batch, adapters=Stack("shifted", "after"))  # the prompt takes no positions: the tokens' shift stays
    assert out.logits.shape == (3, 3)
    assert model.token_budget(Stack("shifted", "after")) == 512 - L_PREFIX


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_generation_with_shifted_positions_is_the_same_with_and_without_the_cache(impl):
    model = AdapterModel(tiny_base("llama"))
    model.base.set_attn_implementation(impl)
    model.add_adapter("p", "prefix", HeadConfig(kind="causal_lm"), prefix_length=L_PREFIX, shift_positions=True)
    perturb(model, "p")
    model.eval()
    batch = left_padded()
    options = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    cached = model.generate(**batch, adapters="p", **options)
    assert torch.equal(cached, model.generate(**batch, adapters="p", use_cache=False, **options))


def test_the_option_is_saved_and_off_by_default(tmp_path):
    model = with_prefixes("bert", shifted={"shift_positions": True})
    model.save_adapter("shifted", tmp_path / "s")
    fresh = AdapterModel(tiny_base("bert"))
    fresh.load_adapter(tmp_path / "s")
    assert fresh.adapters["shifted"].config.shift_positions
    batch = tiny_batch()
    torch.testing.assert_close(fresh.eval()(**batch).logits, model(**batch, adapters="shifted").logits, rtol=0, atol=0)
    fresh.add_adapter("default", "prefix", prefix_length=2)
    assert not fresh.adapters["default"].config.shift_positions
