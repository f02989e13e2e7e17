"""``transformers.Trainer`` training an AdapterModel, with SaveAdapterCallback saving only the adapter.

A plain Trainer script (a list of tokenised examples, ``DataCollatorWithPadding``) on the tiny
dropout-free BERT of ``test_distributed``: the adapter trains and the base stays bit-identical,
checkpoints hold only the adapter and its head (in the Trainer's ``model.safetensors`` and in
adapterkit's format), and a run resumed from such a checkpoint, with activation checkpointing
switched on through ``TrainingArguments``, ends with the weights of the uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import build_model_dir, fresh_model
from test_training import one_thread, tiny_tokenizer, toy_examples  # noqa: F401 (autouse fixture)
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

from adapterkit import AdapterModel
from adapterkit.hf_trainer import SaveAdapterCallback, adapter_state_keys


#: ``activation_checkpointing`` since transformers renamed ``gradient_checkpointing``
CHECKPOINTING_ARGUMENT = next(
    name for name in ("activation_checkpointing", "gradient_checkpointing") if name in TrainingArguments.__dataclass_fields__
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("tiny-bert-hf"))


def dataset(count: int = 32) -> list[dict]:
    tokenizer = tiny_tokenizer()
    return [{**tokenizer(e.texts[0]), "labels": e.label} for e in toy_examples(count, 1)]


def trainer_for(model: AdapterModel, output: Path, **overrides) -> Trainer:
    settings = dict(
        output_dir=str(output), per_device_train_batch_size=8, max_steps=6, save_steps=3, learning_rate=1e-2,
        lr_scheduler_type="constant", report_to=[], disable_tqdm=True, logging_steps=100, seed=0,
        dataloader_pin_memory=False,
    )  # fmt: skip
    settings.update(overrides)
    return Trainer(
        model=model,
        args=TrainingArguments(**settings),
        train_dataset=dataset(),
        data_collator=DataCollatorWithPadding(tiny_tokenizer()),
        callbacks=[SaveAdapterCallback()],  # finds the trained adapter itself
    )


def test_trainer_trains_the_adapter_saves_only_it_and_resumes_from_it(model_dir, tmp_path):
    model = fresh_model(model_dir)
    model.train_adapter("toy")
    base_before = {k: v.clone() for k, v in model.base.state_dict().items()}
    adapter_before = {k: p.detach().clone() for k, p in model.adapter_parameters("toy").items()}
    trainer_for(model, tmp_path / "straight").train()

    for key, value in model.base.state_dict().items():
        assert torch.equal(value, base_before[key]), key
    assert all(not torch.equal(p, adapter_before[k]) for k, p in model.adapter_parameters("toy").items())

    # the Trainer's own checkpoint holds the adapter and its head, nothing of the base
    checkpoint = tmp_path / "straight" / "checkpoint-3"
    keys = set(load_file(str(checkpoint / "model.safetensors")))
    assert keys == adapter_state_keys(model, "toy")
    assert keys and all(k.startswith(("adapters.toy.", "heads.toy.")) for k in keys)
    # ... and adapterkit's copy loads into a fresh model that then predicts as the trained one
    final = AdapterModel.from_pretrained(str(model_dir))
    final.load_adapter(tmp_path / "straight" / "adapter")
    batch = DataCollatorWithPadding(tiny_tokenizer())([{k: v for k, v in e.items() if k != "labels"} for e in dataset(4)])
    model.eval()
    torch.testing.assert_close(final(**batch).logits, model(**batch, adapters="toy").logits)
    assert (checkpoint / "adapter" / "adapter.safetensors").is_file()

    # resume from checkpoint-3 (with activation checkpointing): the weights of the straight run
    resumed = fresh_model(model_dir)
    resumed.train_adapter("toy")
    with torch.no_grad():  # what a new process would start from: only a loaded checkpoint can match
        for param in resumed.adapter_parameters("toy").values():
            param.add_(0.05)
    checkpointing = {CHECKPOINTING_ARGUMENT: True}
    trainer_for(resumed, tmp_path / "resumed", **checkpointing).train(resume_from_checkpoint=str(checkpoint))
    assert all(layer.gradient_checkpointing for layer in resumed.base.encoder.layer)
    expected = load_file(str(tmp_path / "straight" / "adapter" / "adapter.safetensors"))
    got = load_file(str(tmp_path / "resumed" / "adapter" / "adapter.safetensors"))
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=1e-5)


def test_callback_gives_the_full_state_dict_back_and_needs_one_trained_adapter(model_dir):
    model = fresh_model(model_dir)
    model.add_adapter("other", "lora")
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="cannot tell which adapter"):
        SaveAdapterCallback().attach(model)
    model.train_adapter("toy")
    callback = SaveAdapterCallback()
    callback.attach(model)
    assert set(model.state_dict()) == adapter_state_keys(model, "toy")
    callback.release()
    assert "base.embeddings.word_embeddings.weight" in model.state_dict()


def test_a_reparameterised_prefix_is_saved_folded_at_the_end_and_checkpoints_keep_its_mlp(model_dir, tmp_path):
    import json

    from adapterkit import HeadConfig

    model = AdapterModel.from_pretrained(str(model_dir))
    model.add_adapter("toy", "prefix", HeadConfig(num_labels=2, dropout=0.0), prefix_length=2, reparam_hidden=8)
    model.train_adapter("toy")
    trainer = trainer_for(model, tmp_path)
    trainer.train()
    final = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    checkpoint = json.loads((tmp_path / "checkpoint-6" / "adapter" / "adapter_config.json").read_text())
    assert final["config"]["reparameterize"] is False and checkpoint["config"]["reparameterize"] is True
    batch = tiny_tokenizer()(["good film", "bad plot"], return_tensors="pt", padding=True)
    loaded = AdapterModel.from_pretrained(str(model_dir))
    loaded.load_adapter(tmp_path / "adapter")
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch, adapters="toy").logits, model(**batch, adapters="toy").logits)
    assert set(model.state_dict()) == adapter_state_keys(model, "toy")  # the kept keys follow the fold
