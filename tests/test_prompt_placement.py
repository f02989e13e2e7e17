"""Where a prompt goes (``insert_at``): before the embedding layer (Lester et al., peft) or after it
(AdapterHub), each checked against a hand-built pass of the plain model; initialisation, position
budget and refusals of the second place. The generic checks run from the table's
``deep_prompt_after_embeddings`` row in ``test_methods.py``."""

from __future__ import annotations

import pytest
import torch
from method_table import K_PROMPT, NO_EMBEDDING_LAYER, hidden, make, perturb
from tiny_models import tiny_base, tiny_batch

from adapterkit import AdapterModel, HeadConfig
from adapterkit.composition import Stack
from adapterkit.sequence import embedding_layer

ENCODERS = ("bert", "roberta", "distilbert", "mpnet")


def by_hand_after_embeddings(model: AdapterModel, prompt: torch.Tensor, batch: dict) -> torch.Tensor:
    """The plain model with ``prompt`` put in front of its embedding layer's output and ``k``
    attended positions in front of the mask; the tokens' hidden states."""
    k = prompt.shape[0]
    handle = embedding_layer(model.parts).register_forward_hook(
        lambda module, args, out: torch.cat([prompt.expand(out.shape[0], -1, -1), out], dim=1)
    )
    mask = batch["attention_mask"]
    try:
        with torch.no_grad():
            extended = torch.cat([torch.ones(mask.shape[0], k, dtype=mask.dtype), mask], dim=1)
            out = model.body(**{**batch, "attention_mask": extended}).last_hidden_state
    finally:
        handle.remove()
    return out[:, k:]


@pytest.mark.parametrize("arch", ENCODERS)
def test_after_the_embedding_layer_the_prompt_skips_positions_and_layernorm_and_the_tokens_keep_theirs(arch):
    model = make(arch, "prompt", insert_at="embedding_output")
    perturb(model)
    batch = {**tiny_batch(), "token_type_ids": torch.ones(3, 7, dtype=torch.long)} if arch == "bert" else tiny_batch()
    prompt = model.adapters["task"].prompt
    expected = by_hand_after_embeddings(model, prompt, batch)
    torch.testing.assert_close(hidden(model, batch), expected, rtol=1e-5, atol=1e-5)
    before = make(arch, "prompt")  # the same vectors before the embedding layer: another function
    with torch.no_grad():
        before.adapters["task"].prompt.copy_(prompt)
    assert not torch.allclose(hidden(before, batch), expected, atol=1e-3)


def test_padded_rows_equal_the_rows_alone_after_the_embedding_layer():
    model = make("bert", "deep_prompt_after_embeddings")
    perturb(model)
    batch = tiny_batch()
    together = hidden(model, batch)
    for row in range(3):
        real = batch["attention_mask"][row].bool()
        alone = hidden(model, {"input_ids": batch["input_ids"][row][real][None]})
        torch.testing.assert_close(together[row][real], alone[0], rtol=1e-5, atol=1e-5)


def test_a_fresh_deep_prompt_after_the_embedding_layer_starts_at_the_frozen_layers_outputs():
    model = make("bert", "deep_prompt_after_embeddings")
    adapter = model.adapters["task"]
    with torch.no_grad():
        first_layer = model.parts.layers[0].layer(adapter.prompt[None])
        first_layer = first_layer[0] if isinstance(first_layer, tuple) else first_layer
    torch.testing.assert_close(adapter.layers["1"]["prompt"].vectors, first_layer[0], rtol=1e-5, atol=1e-6)


def test_initialisations_after_the_embedding_layer_take_what_tokens_are_there():
    model = AdapterModel(tiny_base("bert"), tokenizer=WordTokenizer())
    model.add_adapter("text", "prompt", prompt_length=3, init="text", init_text="good movie", insert_at="embedding_output")
    with torch.no_grad():
        tokens = embedding_layer(model.parts)(input_ids=torch.tensor([[10, 12, 10]]))[0]
    torch.testing.assert_close(model.adapters["text"].prompt, tokens)
    model.add_adapter("random", "prompt", prompt_length=200, init="random", insert_at="embedding_output")
    std = model.adapters["random"].prompt.std().item()
    assert 0.7 < std < 1.3  # the LayerNorm's scale, not the token table's 0.02
    model.add_adapter("before", "prompt", prompt_length=200, init="random")
    assert model.adapters["before"].prompt.std().item() < 0.1


def test_a_prompt_after_the_embedding_layer_takes_no_positions_of_the_model():
    model = AdapterModel(tiny_base("bert"))
    model.add_adapter("after", "prompt", prompt_length=500, insert_at="embedding_output")
    model.add_adapter("before", "prompt", prompt_length=500)
    assert model.token_budget("after") == 512
    assert model.token_budget("before") == 12
    long = {"input_ids": torch.randint(3, 100, (1, 300))}
    assert hidden(model, long, "after").shape == (1, 300, 32)
    with pytest.raises(ValueError, match="input of 300 tokens plus 500 positions for prompts or shifted prefixes exceeds the 512"):
        hidden(model, long, "before")


def test_prompts_of_both_places_in_one_pass_and_the_decoders_are_refused():
    model = AdapterModel(tiny_base("bert"))
    model.add_adapter("after", "prompt", HeadConfig(num_labels=2), prompt_length=2, insert_at="embedding_output")
    model.add_adapter("before", "prompt", HeadConfig(num_labels=2), prompt_length=2)
    with pytest.raises(ValueError, match="are inserted at different places \\(\\{'before': 'input', 'after': "
                                         "'embedding_output'\\}\\); one pass can stack prompts with one insert_at only"):
        model(**tiny_batch(), adapters=Stack("before", "after"))
    model.add_adapter("after2", "prompt", HeadConfig(num_labels=2), prompt_length=3, insert_at="embedding_output")
    assert model(**tiny_batch(), adapters=Stack("after", "after2")).logits.shape == (3, 2)
    with pytest.raises(ValueError, match="prompt: unknown insert_at 'output'; use one of input, embedding_output"):
        model.add_adapter("bad", "prompt", insert_at="output")
    llama = AdapterModel(tiny_base("llama"))
    with pytest.raises(ValueError, match=NO_EMBEDDING_LAYER):
        llama.add_adapter("p", "prompt", prompt_length=K_PROMPT, insert_at="embedding_output")
    assert not llama.adapters


class WordTokenizer:
    """A stand-in tokenizer: one id per known word."""

    all_special_ids = [0, 1, 2]
    words = {"good": 10, "bad": 11, "movie": 12}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.words[w] for w in text.split() if w in self.words]}
