"""Running an adapted model over examples or raw texts: predictions and metrics.

One loop serves the trainer (validation, test; under ``accelerate``, where each process sees a
shard and predictions are gathered) and the CLI's ``eval``/``predict`` (one process, no
``accelerate``), so a number printed by ``adapterkit eval`` is computed exactly as the trainer
computed it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..composition import Setup, as_setup
from ..data.batching import Collator, EncodedDataset, encode_examples, encode_texts, make_loader
from ..data.images import ImageExample, make_image_loader
from ..data.task import REGRESSION, Example
from ..heads import HeadConfig
from .metrics import compute_metrics

if TYPE_CHECKING:
    from ..model import AdapterModel


def head_config(model: AdapterModel, adapters: str | Setup):
    """The config of the head that answers for ``adapters``.

    Raises:
        ValueError: the setup's head adapter has no head, or has a tagging head (see
            :func:`refuse_tagging`).
    """
    name = as_setup(adapters).head_name()
    if name not in model.heads:
        raise ValueError(
            f"adapter {name!r} has no prediction head; an adapter gets its head when added: "
            "model.add_adapter(name, method, HeadConfig(...)) (adapterkit.training.add_task_adapter builds one for a task)"
        )
    config = model.heads[name].config
    refuse_tagging(config, name)
    return config


def refuse_tagging(config: HeadConfig, name: str) -> None:
    """Refuse a tagging head (one label per token) where a sentence-level one is needed: the
    predict/evaluate loops, the trainer and the bundled tasks all score one label per input.

    Raises:
        ValueError: ``config`` is a tagging head, saying how to use it instead.
    """
    if config.kind == "tagging":
        raise ValueError(
            f"adapter {name!r} has a tagging head (one label per token), but predict, evaluate and the trainer score "
            "one label per input (classification or regression heads) on sentence-level tasks; use the model directly: "
            f"model(**batch, adapters={name!r}).logits is (batch, seq, num_labels), and labels (batch, seq) with -100 "
            "where a token has no label give the loss (train it with your own loop or transformers.Trainer)"
        )


@dataclass(frozen=True)
class Prediction:
    """One input's prediction: ``label`` is the class name (or id, if the head has no names) or,
    for regression, the score; ``scores`` maps each class to its softmax probability (empty for
    regression)."""

    label: str | float
    scores: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def predict_loader(
    model: torch.nn.Module,
    loader: Iterable[dict[str, torch.Tensor]],
    adapters: str | Setup,
    kind: str,
    accelerator: Any = None,
    probabilities: bool = False,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(predictions, labels or None): class ids (argmax) or regression scores for every example;
    with ``probabilities``, a classifier's softmax over its classes instead, ``(examples, classes)``.

    With an ``accelerator`` the loader is a prepared (sharded) one and results are gathered from
    all processes, without the duplicates ``accelerate`` pads the last batch with. ``progress``
    shows a bar of batches on stderr.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    predictions, labels = [], []
    try:
        for batch in tqdm(loader, desc="predicting", unit="batch", leave=False, disable=not progress):
            batch = {k: v.to(device) for k, v in batch.items()}
            target = batch.pop("labels", None)
            logits = model(**batch, adapters=adapters).logits
            if kind == REGRESSION:
                output = logits.float()
            else:
                output = logits.float().softmax(-1) if probabilities else logits.argmax(-1)
            if accelerator is not None:
                output = accelerator.gather_for_metrics(output)
                target = accelerator.gather_for_metrics(target) if target is not None else None
            predictions.append(output.cpu())
            if target is not None:
                labels.append(target.cpu())
    finally:
        model.train(was_training)
    if not predictions:
        return np.zeros(0), None
    return torch.cat(predictions).numpy(), (torch.cat(labels).numpy() if labels else None)


def evaluate(
    model: AdapterModel,
    examples: Sequence[Example],
    adapters: str | Setup,
    max_length: int = 128,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, float]:
    """Metrics of ``adapters`` on labelled examples (accuracy/macro-F1 or Pearson/MSE); inputs are
    truncated to ``max_length`` tokens, or fewer if the model and the setup's prompts leave fewer
    (``AdapterModel.token_budget``). ``progress``: a bar of batches on stderr."""
    predictions, labels = labelled_predictions(model, examples, adapters, max_length, batch_size, progress)
    return compute_metrics(head_config(model, adapters).kind, predictions, labels)


def labelled_predictions(
    model: AdapterModel, examples: Sequence[Example], adapters: str | Setup, max_length: int = 128, batch_size: int = 64,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, labels) of ``adapters`` on labelled examples, as :func:`evaluate` scores them
    (``progress``: a bar of batches on stderr).

    Raises:
        ValueError: no examples.
    """
    if not examples:
        raise ValueError("no examples to evaluate")
    kind = head_config(model, adapters).kind
    dataset = encode_examples(model.tokenizer, examples, model.token_budget(adapters, max_length))
    loader = make_loader(dataset, Collator(model.tokenizer, kind), batch_size)
    return predict_loader(model, loader, adapters, kind, progress=progress)


def predict(
    model: AdapterModel,
    texts: Sequence[tuple[str, ...] | str],
    adapters: str | Setup,
    max_length: int = 128,
    batch_size: int = 64,
) -> list[str | float]:
    """One prediction per input: the class name (or id, if the head has no names) or a score.
    Inputs are truncated as in :func:`evaluate`."""
    return [p.label for p in score_texts(model, texts, adapters, max_length=max_length, batch_size=batch_size)]


def score_texts(
    model: AdapterModel,
    texts: Sequence[tuple[str, ...] | str],
    adapters: str | Setup,
    max_length: int = 128,
    batch_size: int = 64,
    progress: bool = False,
) -> list[Prediction]:
    """One :class:`Prediction` per input, with every class's probability. Inputs are truncated as
    in :func:`evaluate`; ``progress``: a bar of batches on stderr."""
    config = head_config(model, adapters)
    inputs = [(t,) if isinstance(t, str) else tuple(t) for t in texts]
    dataset = EncodedDataset(encode_texts(model.tokenizer, inputs, model.token_budget(adapters, max_length)), None)
    loader = make_loader(dataset, Collator(model.tokenizer, config.kind), batch_size)
    outputs, _ = predict_loader(model, loader, adapters, config.kind, probabilities=True, progress=progress)
    return _predictions(config, outputs)


def _predictions(config: HeadConfig, outputs: np.ndarray) -> list[Prediction]:
    """:class:`Prediction` values from regression scores or class probabilities ``(examples, classes)``."""
    if config.kind == REGRESSION:
        return [Prediction(float(np.ravel(value)[0])) for value in outputs]
    names = list(config.label_names) or [str(i) for i in range(config.num_labels)]
    return [Prediction(names[int(row.argmax())], dict(zip(names, map(float, row)))) for row in outputs]


def _require_processor(model: AdapterModel) -> None:
    if model.processor is None:
        raise ValueError(f"this {model.parts.model_type!r} model reads text, not images; use an image model (efficientnet-lite0)")


def evaluate_images(
    model: AdapterModel, examples: Sequence[ImageExample], adapters: str | Setup, batch_size: int = 64, progress: bool = False
) -> dict[str, float]:
    """Metrics of ``adapters`` on labelled images (accuracy and macro-F1), preprocessed as the
    model's processor says (no augmentation); ``progress``: a bar of batches on stderr."""
    predictions, labels = labelled_image_predictions(model, examples, adapters, batch_size, progress)
    return compute_metrics(head_config(model, adapters).kind, predictions, labels)


def labelled_image_predictions(
    model: AdapterModel, examples: Sequence[ImageExample], adapters: str | Setup, batch_size: int = 64, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, labels) of ``adapters`` on labelled images, as :func:`evaluate_images` scores them
    (``progress``: a bar of batches on stderr).

    Raises:
        ValueError: no images, or a model that reads text.
    """
    if not examples:
        raise ValueError("no images to evaluate")
    _require_processor(model)
    loader = make_image_loader(examples, model.processor, batch_size)
    return predict_loader(model, loader, adapters, head_config(model, adapters).kind, progress=progress)


def predict_images(model: AdapterModel, images: Sequence, adapters: str | Setup, batch_size: int = 64) -> list[str]:
    """One class name (or id, if the head has no names) per image (``uint8`` arrays)."""
    return [str(p.label) for p in score_images(model, images, adapters, batch_size=batch_size)]


def score_images(
    model: AdapterModel, images: Sequence, adapters: str | Setup, batch_size: int = 64, progress: bool = False
) -> list[Prediction]:
    """One :class:`Prediction` per image (``uint8`` arrays), with every class's probability;
    ``progress``: a bar of batches on stderr."""
    _require_processor(model)
    config = head_config(model, adapters)
    loader = make_image_loader([ImageExample(image, 0) for image in images], model.processor, batch_size)
    batches = ({"pixel_values": b["pixel_values"]} for b in loader)
    outputs, _ = predict_loader(model, batches, adapters, config.kind, probabilities=True, progress=progress)
    return _predictions(config, outputs)
