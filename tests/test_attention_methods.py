"""Attention-level methods (prefix, prompt, deep_prompt), unions and MAM: the checks specific to
changing what attention sees (identity of a hidden prefix, what a reparameterised prefix saves,
a key/value-cache reference, padding sides, cached generation, initialisations, clear errors).
The checks every method gets run from the table (``method_table.py``) in ``test_methods.py``;
the rows used here are the table's."""

from __future__ import annotations

import json

import pytest
import torch
from method_table import K_PROMPT, L_PREFIX, ROWS, hidden, make, perturb, prefix_plain_params
from safetensors.torch import load_file
from tiny_models import VOCAB, tiny_base, tiny_batch
from transformers import DynamicCache

from adapterkit import AdapterModel, HeadConfig
from adapterkit.composition import AdapterDrop, Fuse, Parallel, Routed, Stack

NAMES = ("prefix", "prefix_plain", "prompt", "deep_prompt", "mam", "lora+pfeiffer")
"""The table's rows of attention-level methods and unions, which the checks below run."""
REPARAMETERISED = ("prefix", "mam")
"""Rows whose prefix trains through the reparameterisation MLP."""


def prefix_of(model: AdapterModel, name: str = "task"):
    adapter = model.adapters[name]
    return adapter.components["prefix"] if "components" in adapter._modules else adapter


def left_padded(batch: int = 2, seq: int = 6):
    ids = torch.randint(3, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    ids[-1, :2], mask[-1, :2] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


# ----------------------------------------------------------------------------- heads and saving
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "arch,kind",
    [("bert", "classification"), ("distilbert", "regression"), ("llama", "classification"), ("llama", "causal_lm")],
)
def test_every_head(arch, name, kind):
    pooling = "last" if arch == "llama" else "cls"
    head = HeadConfig(kind=kind, num_labels=3 if kind == "classification" else 1, dropout=0.0, pooling=pooling)
    model = make(arch, name, head)
    model.train_adapter("task")
    batch = tiny_batch()
    labels = {"classification": torch.tensor([0, 2, 1]), "regression": torch.tensor([0.5, -1.0, 2.0])}
    labels = labels.get(kind, batch["input_ids"])
    out = model(**batch, labels=labels)
    expected = {"classification": (3, 3), "regression": (3,), "causal_lm": (3, 7, VOCAB)}[kind]
    assert tuple(out.logits.shape) == expected  # prompt positions never reach a head
    out.loss.backward()
    assert all(p.grad is not None for p in model.adapters["task"].parameters())


@pytest.mark.parametrize("arch,name", [(arch, name) for name in REPARAMETERISED for arch in ROWS[name].archs])
def test_a_reparameterised_prefix_saves_as_trained_and_folded_as_a_plain_prefix(arch, name, tmp_path):
    """Saved as trained (resumable, with its MLP); folded, it saves as a plain prefix. (That the
    folded adapter computes and loads the same outputs is a generic check of ``fold`` methods.)"""
    model = make(arch, name)
    model.save_adapter("task", tmp_path / "trained")
    meta = json.loads((tmp_path / "trained" / "adapter_config.json").read_text())
    saved = load_file(str(tmp_path / "trained" / "adapter.safetensors"))
    assert meta["config"]["reparameterize"] is True and any("reparam" in k for k in saved)
    assert model.fold_adapter("task")
    assert not any("reparam" in k for k in model.adapter_parameters("task"))
    assert prefix_of(model).config.reparameterize is False
    model.save_adapter("task", tmp_path / "folded")
    meta = json.loads((tmp_path / "folded" / "adapter_config.json").read_text())
    assert meta["config"]["reparameterize"] is False
    assert not any("reparam" in k for k in load_file(str(tmp_path / "folded" / "adapter.safetensors")))


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_a_folded_prefix_has_the_parameters_of_a_plain_prefix(arch):
    model = make(arch, "prefix")
    model.fold_adapter("task")
    assert sum(p.numel() for p in model.adapters["task"].parameters()) == prefix_plain_params(arch)


def test_mam_defaults_follow_he_et_al():
    from adapterkit.registry import make_config

    prefix, parallel = make_config("mam").components()
    assert prefix.prefix_length == 30 and parallel.scaling == 4.0
    assert parallel.parallel and parallel.sublayers == ("ffn",)
    assert parallel.size_for(768) == 512 and parallel.size_for(384) == 256


# ----------------------------------------------------------------------------- identity
@pytest.mark.parametrize("arch", ROWS["prefix_plain"].archs)
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_a_prefix_hidden_from_every_example_is_the_identity(arch, impl):
    model = make(arch, "prefix_plain")
    model.base.set_attn_implementation(impl)
    batch = tiny_batch()
    reference = model.body(**batch).last_hidden_state
    adapted = hidden(model, batch)
    assert not torch.allclose(adapted, reference, atol=1e-3)
    hide = torch.tensor([True, False, True])  # examples 0 and 2 do not see it
    for layer in prefix_of(model).prefix_layers():
        layer.visible = (~hide)[:, None].expand(-1, L_PREFIX)
    mixed = hidden(model, batch)
    torch.testing.assert_close(mixed[hide], reference[hide], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed[~hide], adapted[~hide], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ROWS["mam"].archs)
def test_mam_with_a_hidden_prefix_and_zero_scaling_is_the_identity(arch):
    model = make(arch, "mam", scaling=0.0)
    perturb(model)
    batch = tiny_batch()
    for layer in prefix_of(model).prefix_layers():
        layer.visible = torch.zeros(3, L_PREFIX, dtype=torch.bool)
    torch.testing.assert_close(hidden(model, batch), model.body(**batch).last_hidden_state, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- attention details
def test_prefix_equals_the_same_keys_and_values_in_a_cache():
    """Reference: the prefix handed to the model as an already-filled key/value cache (what
    prefix tuning through ``past_key_values`` does), under grouped-query attention."""
    model = make("llama", "prefix_plain")
    perturb(model)
    batch = left_padded()
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    ours = hidden(model, {**batch, "position_ids": positions})
    cache = DynamicCache(config=model.base.config)
    for i, layer in enumerate(prefix_of(model).prefix_layers()):
        key, value = layer.key_value()
        # (l, kv_heads * head_dim) -> (batch, kv_heads, l, head_dim)
        shape = lambda t: t.view(L_PREFIX, 2, -1).transpose(0, 1)[None].expand(2, -1, -1, -1)  # noqa: E731
        cache.update(shape(key), shape(value), i)
    mask = torch.cat([torch.ones(2, L_PREFIX, dtype=torch.long), batch["attention_mask"]], dim=1)
    with model.using(None):
        reference = model.body(input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions, cache=cache)
    reference = reference.last_hidden_state
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[real], reference[real], rtol=1e-5, atol=1e-5)


def test_token_type_ids_are_extended_for_prompts():
    model = make("bert", "prompt")
    batch = tiny_batch()
    types = torch.zeros_like(batch["input_ids"])
    torch.testing.assert_close(hidden(model, {**batch, "token_type_ids": types}), hidden(model, batch), rtol=0, atol=0)


def test_the_fallback_eager_attention_matches_llamas():
    from transformers.models.llama.modeling_llama import eager_attention_forward

    from adapterkit.attention import eager_attention

    module = AdapterModel(tiny_base("llama")).parts.layers[0].layer.self_attn
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, h, 5, 8, generator=generator) for h in (4, 2, 2))
    future = torch.ones(5, 5, dtype=torch.bool).triu(1)
    mask = torch.zeros(2, 1, 5, 5).masked_fill(future, torch.finfo(torch.float32).min)
    ours, _ = eager_attention(module, query, key, value, mask, scaling=0.3)
    theirs, _ = eager_attention_forward(module, query, key, value, mask, scaling=0.3)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("name", ["prefix_plain", "prompt", "deep_prompt"])
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_padded_rows_equal_the_rows_alone(arch, name):
    """Right padding on the encoder, left padding on the decoder (positions from the mask, as
    ``generate`` computes them)."""
    model = make(arch, name)
    perturb(model)
    batch = tiny_batch() if arch == "bert" else left_padded()
    extra = {}
    if arch == "llama":
        extra["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    together = hidden(model, {**batch, **extra})
    for row in range(batch["input_ids"].shape[0]):
        real = batch["attention_mask"][row].bool()
        alone = hidden(model, {"input_ids": batch["input_ids"][row][real][None]})
        torch.testing.assert_close(together[row][real], alone[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["prefix", "prefix_plain", "prompt", "deep_prompt", "mam"])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_generation_gives_the_same_tokens_with_and_without_the_cache(name, impl):
    model = make("llama", name, HeadConfig(kind="causal_lm"))
    model.base.set_attn_implementation(impl)
    perturb(model)
    batch = left_padded()
    model.set_active("task")
    with model.using(None):
        plain = model(**batch).logits
    assert not torch.allclose(model(**batch).logits, plain, atol=1e-3)
    options = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    cached = model.generate(**batch, **options)
    uncached = model.generate(**batch, use_cache=False, **options)
    assert cached.shape == (2, 12)
    assert torch.equal(cached, uncached)


def test_a_fresh_deep_prompt_acts_like_its_shallow_prompt_on_a_decoder():
    """Deep prompts start at the hidden states of the input prompt; in a causal model those do not
    depend on the tokens after them, so the fresh deep prompt changes nothing yet."""
    model = make("llama", "deep_prompt")
    model.add_adapter("shallow", "prompt", prompt_length=K_PROMPT)
    with torch.no_grad():
        model.adapters["shallow"].prompt.copy_(model.adapters["task"].prompt)
    batch = tiny_batch()
    torch.testing.assert_close(hidden(model, batch), hidden(model, batch, "shallow"), rtol=1e-5, atol=1e-5)


def test_prefix_and_prompt_work_on_distilbert_and_mpnet_takes_prompts_only():
    model = make("distilbert", "prefix")
    assert model.base.config._attn_implementation == "adapterkit_sdpa"
    mpnet = AdapterModel(tiny_base("mpnet"))
    for method in ("prefix", "mam"):
        with pytest.raises(ValueError, match="MPNetSelfAttention .* computes attention in its own forward.*use prompt"):
            mpnet.add_adapter("p", method)
    assert "p" not in mpnet.adapters
    mpnet.add_adapter("p", "deep_prompt", HeadConfig(num_labels=2), prompt_length=2)
    assert mpnet(**tiny_batch(), adapters="p").logits.shape == (3, 2)


def test_deleting_the_last_prefix_restores_the_model():
    model = AdapterModel(tiny_base("llama"))
    body = model.body
    hooks = len(body._forward_pre_hooks), len(body._forward_hooks)
    model.add_adapter("a", "prefix", prefix_length=2)
    model.add_adapter("b", "mam", prefix_length=2, bottleneck_size=4)
    model.add_adapter("c", "prompt", prompt_length=2)
    assert model.base.config._attn_implementation == "adapterkit_sdpa"
    model.delete_adapter("a")
    assert model.base.config._attn_implementation == "adapterkit_sdpa"
    for name in ("b", "c"):
        model.delete_adapter(name)
    assert model.base.config._attn_implementation == "sdpa"
    assert (len(body._forward_pre_hooks), len(body._forward_hooks)) == hooks


# ----------------------------------------------------------------------------- initialisation
class WordTokenizer:
    """A stand-in tokenizer: one id per known word, nothing for unknown words."""

    all_special_ids = [0, 1, 2]
    words = {"good": 10, "bad": 11, "movie": 12}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.words[w] for w in text.split() if w in self.words]}


def test_prompt_initialisations():
    model = AdapterModel(tiny_base("bert"), tokenizer=WordTokenizer())
    table = model.parts.embeddings.weight
    model.add_adapter("text", "prompt", prompt_length=5, init="text", init_text="good movie")
    torch.testing.assert_close(model.adapters["text"].prompt, table[[10, 12, 10, 12, 10]])
    head = HeadConfig(num_labels=2, label_names=("bad", "good"))
    model.add_adapter("labels", "prompt", head, prompt_length=2, init="text")
    torch.testing.assert_close(model.adapters["labels"].prompt, table[[11, 10]])
    model.add_adapter("vocab", "prompt", prompt_length=50)
    rows = model.adapters["vocab"].prompt
    assert all(any(torch.equal(row, t) for t in table[3:]) for row in rows)  # real, non-special tokens
    model.add_adapter("random", "prompt", prompt_length=200, init="random")
    assert abs(model.adapters["random"].prompt.std().item() / table.std().item() - 1) < 0.2
    model.add_adapter("unit", "prompt", prompt_length=200, init="random", init_std=1.0)
    assert abs(model.adapters["unit"].prompt.std().item() - 1) < 0.2


def test_prefix_initialised_from_real_tokens_holds_their_keys_and_values():
    model = AdapterModel(tiny_base("bert"), tokenizer=WordTokenizer())
    model.add_adapter("p", "prefix", prefix_length=2, reparameterize=False, init="text", init_text="good bad")
    first = model.adapters["p"].prefix_layers()[0]
    embeddings = model.base.embeddings(input_ids=torch.tensor([[10, 11]]))
    torch.testing.assert_close(first.key, model.base.encoder.layer[0].attention.self.key(embeddings)[0])


# ----------------------------------------------------------------------------- unions and composition
def test_a_union_is_one_adapter_equal_to_its_members_stacked(tmp_path):
    options = [{"method": "lora", "r": 2, "targets": ["o"]}, {"method": "houlsby", "bottleneck_size": 4}]
    model = AdapterModel(tiny_base("bert"))
    model.add_adapter("u", "union", HeadConfig(num_labels=2, dropout=0.0), configs=options)
    model.add_adapter("l", "lora", r=2, targets=["o"])
    model.add_adapter("h", "houlsby", bottleneck_size=4)
    perturb(model, "u")
    union = dict(model.adapters["u"].named_parameters())
    with torch.no_grad():
        for name, member in (("l", "lora"), ("h", "houlsby")):
            for key, param in model.adapters[name].named_parameters():
                param.copy_(union[f"components.{member}.{key}"])
    batch = tiny_batch()
    torch.testing.assert_close(hidden(model, batch, "u"), hidden(model, batch, Stack("l", "h")), rtol=0, atol=0)
    model.save_adapter("u", tmp_path / "u")
    meta = json.loads((tmp_path / "u" / "adapter_config.json").read_text())
    assert [c["method"] for c in meta["config"]["configs"]] == ["lora", "houlsby"]
    fresh = AdapterModel(tiny_base("bert"))
    fresh.load_adapter(tmp_path / "u")
    torch.testing.assert_close(hidden(fresh, batch, "u"), hidden(model, batch, "u"), rtol=0, atol=0)


def test_prefixes_compose_in_stacks_routed_batches_and_adapterdrop():
    model = AdapterModel(tiny_base("llama"))
    for name in ("a", "b"):
        model.add_adapter(name, "prefix", prefix_length=2, reparameterize=False)
    model.add_adapter("top", "prefix", prefix_length=2, reparameterize=False, layers=[1])
    with torch.no_grad():
        model.adapters["top"].layers["1"]["prefix"].key.copy_(model.adapters["a"].layers["1"]["prefix"].key)
        model.adapters["top"].layers["1"]["prefix"].value.copy_(model.adapters["a"].layers["1"]["prefix"].value)
    batch = tiny_batch()
    alone = {n: hidden(model, batch, n) for n in ("a", "b")}
    plain = model.body(**batch).last_hidden_state
    stacked = hidden(model, batch, Stack("a", "b"))
    assert not torch.allclose(stacked, alone["a"], atol=1e-4) and not torch.allclose(stacked, alone["b"], atol=1e-4)
    routed = hidden(model, batch, Routed(["b", None, "a"]))
    torch.testing.assert_close(routed[0], alone["b"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(routed[1], plain[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(routed[2], alone["a"][2], rtol=1e-5, atol=1e-5)
    dropped = hidden(model, batch, AdapterDrop("a", first=1))
    torch.testing.assert_close(dropped, hidden(model, batch, "top"), rtol=1e-5, atol=1e-5)


def test_blocks_without_a_meaning_for_prefixes_and_prompts_are_refused():
    model = AdapterModel(tiny_base("bert"))
    model.add_adapter("p", "prefix", HeadConfig(num_labels=2), prefix_length=2)
    model.add_adapter("q", "prompt", HeadConfig(num_labels=2), prompt_length=2)
    model.add_adapter("r", "pfeiffer", HeadConfig(num_labels=2), bottleneck_size=4)
    batch = tiny_batch()
    with pytest.raises(ValueError, match="prompt adapters \\(q\\) cannot be routed per row"):
        model(**batch, adapters=Routed(["q", "r", "q"]))
    with pytest.raises(ValueError, match="adapters \\['p'\\] are prefix or prompt adapters.*cannot run inside Parallel"):
        model(**batch, adapters=Parallel("p", "r"))
    for sublayers in (None, ("ffn",)):  # refused when the fusion is added, sublayers given or not
        with pytest.raises(ValueError, match="adapter 'p' \\(prefix\\) cannot be fused.*changes attention keys and values"):
            model.add_adapter("f", "fusion", HeadConfig(num_labels=2), adapters=("p", "r"), sublayers=sublayers)
    model.add_adapter("f", "fusion", HeadConfig(num_labels=2), adapters=("r",))
    with pytest.raises(ValueError, match="^Fuse: adapter 'p' \\(prefix\\) cannot be fused"):
        model(**batch, adapters=Fuse("p", "r", fusion="f"))


# ----------------------------------------------------------------------------- clear errors
def test_bad_options_get_clear_errors():
    model = AdapterModel(tiny_base("bert"), tokenizer=WordTokenizer())
    with pytest.raises(ValueError, match="prefix: prefix_length must be >= 1, got 0"):
        model.add_adapter("a", "prefix", prefix_length=0)
    with pytest.raises(ValueError, match="prompt_length 512 leaves no room for the input.*at most 512 positions"):
        model.add_adapter("a", "prompt", prompt_length=512)
    with pytest.raises(ValueError, match="init_text 'unknown words' tokenises to no tokens"):
        model.add_adapter("a", "prompt", init="text", init_text="unknown words")
    with pytest.raises(ValueError, match="init_text is only read with init='text'"):
        model.add_adapter("a", "prompt", init_text="good")
    with pytest.raises(ValueError, match="init_std must be > 0 and is only read with init='random'"):
        model.add_adapter("a", "prompt", init_std=1.0)
    with pytest.raises(ValueError, match="init_std must be > 0"):
        model.add_adapter("a", "prompt", init="random", init_std=0.0)
    with pytest.raises(ValueError, match="no head with label_names; pass init_text"):
        model.add_adapter("a", "prompt", init="text")
    with pytest.raises(ValueError, match="unknown init 'zeros'"):
        model.add_adapter("a", "deep_prompt", init="zeros")
    with pytest.raises(ValueError, match="union: give at least two member configs"):
        model.add_adapter("a", "union", configs=[{"method": "lora"}])
    with pytest.raises(ValueError, match="'full' changes the base model itself"):
        model.add_adapter("a", "union", configs=[{"method": "lora"}, {"method": "full"}])
    assert not model.adapters  # nothing half-added
    assert model.base.config._attn_implementation == "sdpa"
    model.add_adapter("long", "prompt", prompt_length=500)
    with pytest.raises(ValueError, match="input of 20 tokens plus 500 positions for prompts or shifted prefixes exceeds the 512.*at most 12"):
        model(input_ids=torch.randint(3, VOCAB, (1, 20)), adapters="long")


# ----------------------------------------------------------------------------- the real decoder
@pytest.mark.integration
@pytest.mark.parametrize("name", ["prefix", "prompt", "mam"])
def test_real_smollm2_generates_the_same_tokens_with_and_without_the_cache(name):
    """SmolLM2-135M: a Llama with grouped-query attention (9 query heads, 3 key/value heads)."""
    from adapterkit.bundled_models import model_cache_dir

    folder = model_cache_dir("smollm2-135m")
    if not (folder / "config.json").is_file():
        pytest.skip("smollm2-135m is not installed; run resolve_model_path('smollm2-135m') once to install it")
    model = AdapterModel.from_pretrained(str(folder))
    assert model.base.config.num_key_value_heads < model.base.config.num_attention_heads
    method, options = {"prefix": ("prefix", {"prefix_length": 8, "reparameterize": False}),
                       "prompt": ("prompt", {"prompt_length": 8, "init": "text", "init_text": "Answer briefly."}),
                       "mam": ("mam", {"prefix_length": 8, "reparam_hidden": 32})}[name]
    model.add_adapter("task", method, HeadConfig(kind="causal_lm"), **options)
    perturb(model, seed=1)
    model.set_active("task")
    model.eval()
    tokenizer = model.tokenizer
    tokenizer.padding_side = "left"
    batch = tokenizer(["The capital of France is", "One, two, three,"], return_tensors="pt", padding=True)
    options = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id or 0)
    with torch.no_grad():
        cached = model.generate(**batch, **options)
        uncached = model.generate(**batch, use_cache=False, **options)
        adapted = model(**batch).logits[:, -1]
        with model.using(None):
            plain = model(**batch).logits[:, -1]
    assert torch.equal(cached, uncached)
    assert (adapted - plain).abs().max() > 0.1  # the adapter is really in the computation
