"""The tagging (token-classification) head: per-token logits, the loss over labelled real tokens,
prompt positions left out, Parallel and Routed outputs, saving, and the workflows that refuse it."""

from __future__ import annotations

import pytest
import torch
from method_table import hidden, make, perturb
from tiny_models import VOCAB, tiny_base, tiny_batch
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput

from adapterkit import AdapterModel, HeadConfig
from adapterkit.composition import Parallel, Routed
from adapterkit.heads import head_loss

ATOL = 1e-5
TAGS = 4


def tagging(num_labels: int = TAGS, mlp: bool = False) -> HeadConfig:
    return HeadConfig(kind="tagging", num_labels=num_labels, dropout=0.0, mlp=mlp)


def token_labels(batch: dict, seed: int = 0) -> torch.Tensor:
    """A label per token, -100 on some real tokens and (as a tokenizer's word alignment gives) on padding."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, TAGS, batch["input_ids"].shape, generator=generator)
    labels[:, 0] = -100  # e.g. [CLS]
    return labels.masked_fill(batch["attention_mask"] == 0, -100)


def by_hand(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    keep = (labels != -100) & mask.bool()
    return torch.nn.functional.cross_entropy(logits[keep], labels[keep])


@pytest.mark.parametrize("arch,row", [("bert", "pfeiffer"), ("llama", "lora"), ("distilbert", "ia3")])
@pytest.mark.parametrize("mlp", [False, True])
def test_per_token_logits_and_the_loss_over_labelled_real_tokens(arch, row, mlp):
    model = make(arch, row, tagging(mlp=mlp))
    perturb(model)
    model.train_adapter("task")
    batch = tiny_batch()
    labels = token_labels(batch)
    labels[-1, -1] = 2  # a label on a padded position: not counted, the mask says it is no token
    out = model(**batch, labels=labels)
    assert isinstance(out, TokenClassifierOutput) and out.logits.shape == (3, 7, TAGS)
    head = model.heads["task"]
    torch.testing.assert_close(out.logits, head.layers(hidden(model, batch)), rtol=ATOL, atol=ATOL)
    torch.testing.assert_close(out.loss, by_hand(out.logits.detach(), labels, batch["attention_mask"]), rtol=ATOL, atol=ATOL)
    out.loss.backward()
    assert head.layers[-1].weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.adapters["task"].parameters())


def test_no_labelled_token_gives_a_zero_loss_not_nan():
    model = make("bert", "pfeiffer", tagging())
    batch = tiny_batch()
    out = model(**batch, labels=torch.full(batch["input_ids"].shape, -100), adapters="task")
    assert out.loss.item() == 0.0


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_prompt_positions_never_reach_the_tagging_head(arch):
    model = make(arch, "prompt", tagging())
    perturb(model)
    batch = tiny_batch()
    labels = token_labels(batch)
    out = model(**batch, labels=labels, adapters="task")
    assert out.logits.shape == (3, 7, TAGS)
    torch.testing.assert_close(out.logits, model.heads["task"](hidden(model, batch), None), rtol=0, atol=0)
    torch.testing.assert_close(out.loss, by_hand(out.logits, labels, batch["attention_mask"]), rtol=ATOL, atol=ATOL)


def two_taggers_and_a_classifier() -> AdapterModel:
    model = AdapterModel(tiny_base("bert"))
    heads = {"t1": tagging(), "t2": tagging(num_labels=3, mlp=True), "cls": HeadConfig(num_labels=2, dropout=0.0)}
    for k, (name, head) in enumerate(heads.items()):
        model.add_adapter(name, "lora", head, r=2)
        perturb(model, name, seed=k)
        with torch.no_grad():
            for param in model.heads[name].parameters():
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(20 + k)))
    return model.eval()


@torch.no_grad()
def test_parallel_and_routed_outputs_carry_tagging_heads():
    model = two_taggers_and_a_classifier()
    batch = tiny_batch()
    labels = token_labels(batch)
    parallel = model(**batch, adapters=Parallel("t1", "t2", "cls"), labels={"t1": labels, "cls": torch.tensor([0, 1, 1])})
    expected_loss = 0
    for name in ("t1", "t2", "cls"):
        alone = model(**batch, adapters=name)
        kind = TokenClassifierOutput if name != "cls" else SequenceClassifierOutput
        assert isinstance(parallel[name], kind)
        torch.testing.assert_close(parallel[name].logits, alone.logits, rtol=ATOL, atol=ATOL)
    expected_loss = by_hand(parallel["t1"].logits, labels, batch["attention_mask"])
    expected_loss = expected_loss + head_loss(model.heads["cls"].config, parallel["cls"].logits, torch.tensor([0, 1, 1]))
    torch.testing.assert_close(parallel.loss, expected_loss, rtol=ATOL, atol=ATOL)

    rows = ["t1", "t2", "t1"]
    routed = model(**batch, adapters=Routed(rows), labels=labels.clamp(max=2).masked_fill(labels == -100, -100))
    for name in ("t1", "t2"):
        picked = routed.rows[name]
        alone = model(**{k: v[picked] for k, v in batch.items()}, adapters=name)
        torch.testing.assert_close(routed[name].logits, alone.logits, rtol=ATOL, atol=ATOL)
    assert routed.logits is None  # the two taggers have different widths: no row-ordered logits
    same_width = model(**batch, adapters=Routed(["t1", None, "t1"]))
    assert same_width.logits is None  # a row without an adapter


def test_a_tagging_head_saves_and_loads(tmp_path):
    model = make("bert", "ia3", tagging(mlp=True))
    perturb(model)
    with torch.no_grad():
        for param in model.heads["task"].parameters():
            param.add_(0.3)
    batch = tiny_batch()
    expected = model(**batch, adapters="task").logits
    model.save_adapter("task", tmp_path / "t")
    fresh = AdapterModel(tiny_base("bert"))
    fresh.load_adapter(tmp_path / "t")
    assert fresh.heads["task"].config == model.heads["task"].config
    torch.testing.assert_close(fresh.eval()(**batch).logits, expected, rtol=0, atol=0)


def test_bad_tagging_heads_and_labels_are_refused():
    with pytest.raises(ValueError, match="a tagging head needs num_labels >= 2, got 1"):
        HeadConfig(kind="tagging", num_labels=1)
    model = make("bert", "pfeiffer", tagging())
    batch = tiny_batch()
    with pytest.raises(ValueError, match="tagging labels of shape \\(3,\\) do not fit logits of shape \\(3, 7, 4\\).*"
                                         "shape \\(3, 7\\), and -100 where a token has no label"):
        model(**batch, labels=torch.tensor([0, 1, 2]), adapters="task")


def test_predict_evaluate_and_the_trainer_refuse_a_tagging_head_saying_what_to_do():
    from adapterkit.data.task import Example, TaskData
    from adapterkit.inference import evaluate, predict, predict_tasks
    from adapterkit.training import Trainer

    model = make("bert", "pfeiffer", tagging())
    model.add_adapter("cls", "pfeiffer", HeadConfig(num_labels=2, dropout=0.0))
    model.tokenizer = WordTokenizer()
    message = "adapter 'task' has a tagging head \\(one label per token\\), but predict, evaluate and the trainer .*" \
              "model\\(\\*\\*batch, adapters='task'\\).logits is \\(batch, seq, num_labels\\)"
    with pytest.raises(ValueError, match=message):
        predict(model, ["a b"], "task")
    examples = [Example(("a b",), 0), Example(("c",), 1)]
    with pytest.raises(ValueError, match=message):
        evaluate(model, examples, "task")
    with pytest.raises(ValueError, match=message):
        predict_tasks(model, ["a b"], Parallel("cls", "task"))
    task = TaskData("words", "classification", ("text",), ("x", "y"), examples, examples, examples)
    with pytest.raises(ValueError, match=message):
        Trainer(model, "task", task)


class WordTokenizer:
    """Enough of a tokenizer for the workflows' encoding: one id per word (by its length)."""

    pad_token_id = 0

    def __call__(self, texts, second=None, truncation=True, max_length=None, padding=False):
        ids = [[3 + len(word) for word in text.split()][:max_length] for text in texts]
        return {"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids]}
