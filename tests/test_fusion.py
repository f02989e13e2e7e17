"""AdapterFusion: the fusion layer against the paper's formula and AdapterHub's residual-after-value
form, both training stages, the value regulariser, the saved artefact, attention reports and
pruning."""

from __future__ import annotations

import pytest
import torch
from method_table import default_head, hidden, run, sublayer_hooks
from tiny_models import LAYERS, VOCAB, randomize, tiny_base, tiny_batch

from adapterkit import AdapterModel, HeadConfig
from adapterkit.composition import AdapterDrop, Fuse, Parallel, Routed, Stack
from adapterkit.data.task import Example, TaskData
from adapterkit.inference.fusion import fusion_attention, prune_fusion
from adapterkit.methods.fusion import FusionConfig, FusionLayer
from adapterkit.training.multitask import mixture_batches, train_multitask

ATOL = 1e-5



def fused_model(arch="bert", names=("a", "b", "c"), temperature=1.0, residual_before=True) -> AdapterModel:
    model = AdapterModel(tiny_base(arch))
    for k, name in enumerate(names):
        model.add_adapter(name, "pfeiffer", head=default_head(), reduction_factor=4)
        randomize(model.adapters[name], seed=k)
    model.add_adapter(
        "f", "fusion", head=default_head(2), adapters=tuple(names), temperature=temperature, residual_before=residual_before
    )
    randomize(model.adapters["f"], seed=99)
    return model.eval()


def ffn(model, name, layer):
    return model.adapters[name].layers[str(layer)]["ffn"]


def add_norm(model, layer, inputs, out):
    """``LN(x + h)``: the FFN's Add & Norm output, which Pfeiffer adapters read, and so the query
    (``x + h`` on pre-LN models, which have no norm there)."""
    norm = model.sites[f"{layer}.ffn"].norm
    return inputs.residual + out if norm is None else norm(inputs.residual + out)


def paper_fusion(layer: FusionLayer, h: torch.Tensor, zs: list[torch.Tensor]) -> torch.Tensor:
    """Pfeiffer et al. 2021, Sec. 3.2, term by term: per-adapter keys and values."""
    q = layer.query(h)
    keys = [z @ layer.key.weight.T for z in zs]
    values = [layer.value(z) for z in zs]
    scores = torch.stack([(q * k).sum(-1) for k in keys], dim=-1) / layer.temperature
    weights = torch.softmax(scores, dim=-1)
    return sum(weights[..., n : n + 1] * values[n] for n in range(len(zs)))


def adapterhub_fusion(layer: FusionLayer, h: torch.Tensor, us: list[torch.Tensor], r: torch.Tensor) -> torch.Tensor:
    """AdapterHub's ``BertFusion`` with ``residual_before: False``, term by term: keys and values of
    the adapters' own contributions ``u_n``, the residual ``r`` added after the value matrix."""
    return r + paper_fusion(layer, h, us)


def by_hand(model, batch, names, fusion="f", under=None):
    """Hidden states with, at every FFN site, the paper's fusion over ``names`` (after ``under``)."""

    def compute(layer, inputs, out):
        if under is not None:
            out = run(ffn(model, under, layer), inputs, out)
        zs = [run(ffn(model, n, layer), inputs, out) for n in names]
        return paper_fusion(ffn(model, fusion, layer), add_norm(model, layer, inputs, out), zs)

    with sublayer_hooks(model, compute):
        return hidden(model, batch, None)


# ----------------------------------------------------------------------------- the fusion layer
@pytest.mark.parametrize("arch", ["bert", "mpnet", "llama"])
def test_fuse_equals_the_papers_formula(arch):
    model = fused_model(arch, temperature=2.0)
    batch = tiny_batch()
    expected = by_hand(model, batch, "abc")
    assert torch.allclose(hidden(model, batch, Fuse("a", "b", "c", fusion="f")), expected, atol=ATOL)
    assert torch.allclose(hidden(model, batch, "f"), expected, atol=ATOL)  # a fusion's name means its Fuse


@pytest.mark.parametrize("arch", ["bert", "mpnet", "llama"])
def test_residual_after_the_value_matrix_equals_adapterhubs_formula(arch):
    model = fused_model(arch, temperature=2.0, residual_before=False)
    batch = tiny_batch()

    def compute(layer, inputs, out):
        us = [run(ffn(model, n, layer), inputs, out) - out for n in "abc"]  # A_n(LN(x + h))
        return adapterhub_fusion(ffn(model, "f", layer), add_norm(model, layer, inputs, out), us, out)

    with sublayer_hooks(model, compute):
        expected = hidden(model, batch, None)
    torch.testing.assert_close(hidden(model, batch, "f"), expected, rtol=0, atol=ATOL)
    paper = by_hand(model, batch, "abc")
    assert not torch.allclose(paper, expected, atol=1e-3)  # V transforms the residual in the paper's form only


def test_both_fusion_forms_give_the_same_attention_and_agree_with_identity_values():
    paper, adapterhub = fused_model(), fused_model(residual_before=False)
    batch = tiny_batch()
    first = fusion_attention(paper, "f", [batch]).per_layer["0.ffn"]  # both see the same input there
    assert fusion_attention(adapterhub, "f", [batch]).per_layer["0.ffn"] == pytest.approx(first, abs=1e-6)
    for model in (paper, adapterhub):
        for layer in model.adapters["f"].fusion_layers():
            with torch.no_grad():
                layer.value.weight.copy_(torch.eye(layer.value.weight.shape[0])), layer.value.bias.zero_()
    torch.testing.assert_close(hidden(adapterhub, batch, "f"), hidden(paper, batch, "f"), rtol=0, atol=ATOL)


def test_zero_query_and_key_with_identity_value_average_the_adapters():
    model = fused_model()
    for layer in model.adapters["f"].fusion_layers():
        with torch.no_grad():
            layer.query.weight.zero_(), layer.query.bias.zero_(), layer.key.weight.zero_()
            layer.value.weight.copy_(torch.eye(layer.value.weight.shape[0])), layer.value.bias.zero_()
    batch = tiny_batch()

    def mean_of_adapters(layer, inputs, out):
        return torch.stack([run(ffn(model, n, layer), inputs, out) for n in "abc"]).mean(0)

    with sublayer_hooks(model, mean_of_adapters):
        expected = hidden(model, batch, None)
    assert torch.allclose(hidden(model, batch, "f"), expected, atol=ATOL)
    report = fusion_attention(model, "f", [batch])
    assert set(report.per_layer) == {f"{layer}.ffn" for layer in range(LAYERS)}
    for weights in report.per_layer.values():
        assert weights == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})


def test_a_fresh_fusion_starts_with_identity_values():
    model = AdapterModel(tiny_base("bert"))
    for name in "ab":
        model.add_adapter(name, "pfeiffer")
    model.add_adapter("f", "fusion", adapters=("a", "b"))
    for layer in model.adapters["f"].fusion_layers():
        assert torch.equal(layer.value.weight, torch.eye(layer.value.weight.shape[0]))
        assert torch.equal(layer.value.bias, torch.zeros_like(layer.value.bias))
    assert model.adapters["f"].regularization().item() == 0.0


def test_fusion_over_stacked_children_and_under_a_stack():
    model = fused_model(names=("a", "b", "lang"))
    batch = tiny_batch()

    def lang_under_a(layer, inputs, out):  # the query: what "b", the last fused adapter, reads
        lang = run(ffn(model, "lang", layer), inputs, out)
        zs = [run(ffn(model, "a", layer), inputs, lang), run(ffn(model, "b", layer), inputs, out)]
        return paper_fusion(ffn(model, "f", layer), add_norm(model, layer, inputs, out), zs)

    with sublayer_hooks(model, lang_under_a):
        expected = hidden(model, batch, None)
    assert torch.allclose(hidden(model, batch, Fuse(Stack("lang", "a"), "b", fusion="f")), expected, atol=ATOL)
    under = by_hand(model, batch, ("a", "b"), under="lang")
    assert torch.allclose(hidden(model, batch, Stack("lang", Fuse("a", "b", fusion="f"))), under, atol=ATOL)


def test_fusion_as_a_parallel_branch_and_with_adapter_drop():
    model = fused_model()
    batch = tiny_batch()
    with torch.no_grad():
        out = model(**batch, adapters=AdapterDrop(Parallel("a", "f"), first=1))
        assert torch.allclose(out["f"].logits, model(**batch, adapters=AdapterDrop("f", first=1)).logits, atol=ATOL)
        assert torch.allclose(out["a"].logits, model(**batch, adapters=AdapterDrop("a", first=1)).logits, atol=ATOL)


# ----------------------------------------------------------------------------- stage two
def test_regulariser_is_added_to_the_training_loss_and_its_gradient_flows():
    model = fused_model()
    batch, labels = tiny_batch(), torch.tensor([0, 1, 1])
    model.train_adapter("f")
    fusion = model.adapters["f"]
    assert fusion.regularization().item() > 0  # the values were moved away from the identity
    task_loss = model(**batch, labels=labels).loss  # eval mode: the task loss alone
    (task_grad,) = torch.autograd.grad(task_loss, [fusion.fusion_layers()[0].value.weight])
    model.train()  # no dropout anywhere in this tiny model's adapters and heads
    model.base.eval()
    loss = model(**batch, labels=labels).loss
    assert torch.allclose(loss, task_loss + fusion.regularization(), atol=ATOL)
    loss.backward()
    layer = fusion.fusion_layers()[0]
    eye = torch.eye(layer.value.weight.shape[0])
    expected = task_grad + 2 * fusion.config.regularization * (layer.value.weight.detach() - eye)
    assert torch.allclose(layer.value.weight.grad, expected, atol=ATOL)
    assert layer.value.bias.grad.abs().sum() > 0


def test_stage_two_trains_only_the_fusion_and_its_head():
    model = fused_model()
    batch, labels = tiny_batch(), torch.tensor([0, 1, 1])
    model.train_adapter("f")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"adapters.f.{k}" for k, _ in model.adapters["f"].named_parameters()} | {
        f"heads.f.{k}" for k, _ in model.heads["f"].named_parameters()
    }
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    for _ in range(3):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("adapters.f.", "heads.f.")) for k in changed)


def test_fusion_saves_and_loads_as_its_own_artefact(tmp_path):
    model = fused_model()
    batch = tiny_batch()
    for name in ("a", "b", "c", "f"):
        model.save_adapter(name, tmp_path / name)
    from safetensors.torch import load_file

    keys = set(load_file(str(tmp_path / "f" / "adapter.safetensors")))
    tensors = ("query.weight", "query.bias", "key.weight", "value.weight", "value.bias")
    expected = {f"adapter.layers.{layer}.ffn.{p}" for layer in range(LAYERS) for p in tensors}
    assert keys == expected | {"head.layers.0.weight", "head.layers.0.bias"}

    fresh = AdapterModel(tiny_base("bert")).eval()
    fresh.load_adapter(tmp_path / "f", activate=False)  # the fusion alone loads; using it needs its adapters
    with pytest.raises(ValueError, match="no adapter named 'a'"):
        fresh(**batch, adapters="f")
    for name in ("a", "b", "c"):
        fresh.load_adapter(tmp_path / name)
    with torch.no_grad():
        assert torch.equal(fresh(**batch, adapters="f").logits, model(**batch, adapters="f").logits)


# ----------------------------------------------------------------------------- attention and pruning
def test_attention_report_per_layer_ignores_padding():
    model = fused_model()
    batch = tiny_batch()
    report = fusion_attention(model, "f", [batch])
    for weights in report.per_layer.values():
        assert sum(weights.values()) == pytest.approx(1.0)
    probs = {}  # the attention at layer 0 by hand (its input does not depend on the fusion)

    def capture(layer, inputs, out):
        fl = ffn(model, "f", layer)
        zs = torch.stack([run(ffn(model, n, layer), inputs, out) for n in "abc"], dim=-2)
        q = fl.query(add_norm(model, layer, inputs, out)) @ fl.key.weight
        probs[layer] = torch.softmax((zs @ q.unsqueeze(-1)).squeeze(-1) / fl.temperature, -1)
        return None

    with sublayer_hooks(model, capture):
        hidden(model, batch, None)
    mask = batch["attention_mask"].float().unsqueeze(-1)
    first = (probs[0] * mask).sum((0, 1)) / mask.sum()
    assert list(report.per_layer["0.ffn"].values()) == pytest.approx(first.tolist(), abs=1e-5)
    assert "mean" in report.format()


def test_pruned_fusion_equals_fusion_over_the_kept_adapters(tmp_path):
    model = fused_model(names=("a", "b", "c", "d"))
    model.set_active("f")
    batch = tiny_batch()
    kept, report = prune_fusion(model, "f", [batch], keep=2)
    ranked = sorted(report.mean, key=report.mean.get, reverse=True)
    assert set(kept) == set(ranked[:2]) and len(kept) == 2
    assert model.adapters["f"].config.adapters == kept
    assert model.active_setup.items == kept  # the active default fusion is now the pruned one
    expected = by_hand(model, batch, kept)
    assert torch.allclose(hidden(model, batch, "f"), expected, atol=ATOL)
    model.save_adapter("f", tmp_path / "f")
    fresh = AdapterModel(tiny_base("bert"))
    fresh.load_adapter(tmp_path / "f", activate=False)
    assert fresh.adapters["f"].config.adapters == kept


# ----------------------------------------------------------------------------- errors
def test_fusion_misuse_is_a_clear_error():
    model = fused_model()
    model.add_adapter("h", "houlsby", head=default_head(2), bottleneck_size=4)
    with pytest.raises(ValueError, match="fusion 'fh' has no fusion layer at 0.attn, 1.attn, where 'h' acts; add a fusion without sublayers="):
        model.add_adapter("fh", "fusion", adapters=("a", "h"), sublayers=("ffn",))
    assert "fh" not in model.adapters
    model.add_adapter("fh", "fusion", adapters=("a", "h"))
    batch = tiny_batch()
    with pytest.raises(ValueError, match="is itself a fusion"):
        model(**batch, adapters=Fuse("a", "f", fusion="fh"))
    with pytest.raises(ValueError, match=r"\['h'\] are not among them"):
        model(**batch, adapters=Fuse("a", "h", fusion="f"))
    with pytest.raises(ValueError, match="is a pfeiffer adapter"):
        model(**batch, adapters=Fuse("b", "c", fusion="a"))
    with pytest.raises(ValueError, match="several fusions"):
        model(**batch, adapters=Fuse("a"))
    with pytest.raises(ValueError, match="is a fusion; route rows to single adapters"):
        model(**batch, adapters=Routed(["f", "a", "a"]))
    with pytest.raises(TypeError, match="use it through Fuse"):
        ffn(model, "f", 0)(None, torch.zeros(1, 2, 32))
    with pytest.raises(ValueError, match="name the adapters it reads"):
        FusionConfig()
    with pytest.raises(ValueError, match="temperature must be > 0"):
        FusionConfig(adapters=("a",), temperature=0)


# ----------------------------------------------------------------------------- stage one: MT-A, and the trainer for stage two
WORDS = [f"w{i}" for i in range(VOCAB - 5)]


@pytest.fixture
def tokenizer(tmp_path):
    from transformers import BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return BertTokenizerFast(vocab_file=str(vocab))


def toy_task(name: str, labels: int, seed: int, size: int = 24) -> TaskData:
    generator = torch.Generator().manual_seed(seed)

    def example(i):
        label = i % labels
        words = [WORDS[(label * 7 + int(w)) % len(WORDS)] for w in torch.randint(0, 5, (6,), generator=generator)]
        return Example((" ".join(words),), label)

    data = [example(i) for i in range(size)]
    return TaskData(name, "classification", ("text",), tuple(f"l{k}" for k in range(labels)), data[:16], data[16:20], data[20:])


def test_multitask_stage_one_trains_every_adapter_on_a_routed_mixture(tokenizer):
    model = AdapterModel(tiny_base("bert"), tokenizer=tokenizer)
    tasks = {"a": toy_task("ta", 2, 0), "b": toy_task("tb", 3, 1)}
    for name, task in tasks.items():
        model.add_adapter(name, "pfeiffer", head=HeadConfig(num_labels=task.num_labels, dropout=0.0), reduction_factor=4)
    batches = list(mixture_batches(model, tasks, batch_size=8))
    assert sum(len(b["adapters"].rows) for b in batches) == 32
    assert {r for b in batches for r in b["adapters"].rows} == {"a", "b"}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = train_multitask(model, tasks, epochs=3, batch_size=8, learning_rate=1e-2)
    assert len(losses) == 3 and losses[-1] < losses[0]
    changed = {k.split(".")[1] for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"a", "b"}  # both adapters and heads moved; the base did not


def test_stage_two_with_the_trainer(tokenizer, tmp_path):
    from adapterkit.training import Trainer, TrainingConfig, task_head

    model = AdapterModel(tiny_base("bert"), tokenizer=tokenizer)
    target = toy_task("target", 2, 5)
    for k, name in enumerate("ab"):
        model.add_adapter(name, "pfeiffer", head=default_head(), reduction_factor=4)
        randomize(model.adapters[name], seed=k)
    model.add_adapter("f", "fusion", head=task_head(target, dropout=0.0), adapters=("a", "b"))
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(("adapters.f.", "heads.f."))}
    config = TrainingConfig(epochs=2, batch_size=8, progress=False, output_dir=str(tmp_path / "run"))
    result = Trainer(model, "f", target, config).train()
    assert result.method == "fusion" and "accuracy" in result.test_metrics
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())
    assert (tmp_path / "run" / "best" / "adapter.safetensors").is_file()


# ----------------------------------------------------------------------------- the CLI flow (real model)
@pytest.mark.integration
def test_cli_train_fuse_eval_predict_on_minilm(tmp_path, capsys, monkeypatch):
    """Two task adapters into one store, a fusion over them for a third task, eval of the fusion
    and of an earlier adapter, and one Parallel pass predicting all three tasks."""
    import io

    from adapterkit.cli import main

    monkeypatch.chdir(tmp_path)
    small = ["--max-examples", "40", "--epochs", "1", "--max-length", "24", "--quiet"]
    assert main(["train", "--method", "pfeiffer", "--task", "rotten_tomatoes", "--store", "store", *small]) == 0
    assert main(["train", "--method", "pfeiffer", "--task", "trec6", "--store", "store", "--robust-adapter-drop", *small]) == 0
    assert main(["eval", "--adapter", "store/trec6", "--task", "trec6", "--max-examples", "20", "--json"]) == 0
    before = capsys.readouterr().out.strip().splitlines()[-1]
    fuse = ["fuse", "--adapters", "rotten_tomatoes,trec6", "--store", "store", "--task", "convention_speeches"]
    assert main([*fuse, "--prune", "1", "--epochs", "1", "--max-length", "24", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "fusion attention per layer" in out and "pruned to" in out
    assert (tmp_path / "store" / "convention_speeches_fusion" / "adapter.safetensors").is_file()
    assert main(["eval", "--adapter", "store/convention_speeches_fusion", "--task", "convention_speeches"]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["eval", "--adapter", "store/trec6", "--task", "trec6", "--max-examples", "20", "--json"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == before  # the fusion changed nothing earlier
    monkeypatch.setattr("sys.stdin", io.StringIO("what is the capital of france?\nthis movie was great\n"))
    adapters = "rotten_tomatoes,trec6,convention_speeches_fusion"
    assert main(["predict", "--adapters", adapters, "--store", "store", "--drop-first", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split("\t") == adapters.split(",") and len(lines) == 3
