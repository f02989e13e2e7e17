"""peft's task heads (``modules_to_save`` copies) <-> adapterkit heads with the same outputs.

peft trains a copy of the task model's head and saves it under the head's module names. Which
computation that head is depends on the transformers task class of the family, so it is spelled
out here (transformers 5 and 4.57 ``modeling_<family>.py``):

* ``SEQ_CLS``, BERT (``BertForSequenceClassification``): ``classifier(dropout(pooler(h)))`` with
  ``pooler(h) = tanh(W_p h[:, 0] + b_p)`` belonging to the base; peft saves ``classifier.*``
  (and ``pooler.dense.*`` when the pooler is in ``modules_to_save`` too). That is adapterkit's MLP
  head on the first position (``mlp=True``), its first layer the base's pooler (or the saved
  copy), its second the classifier.
* ``SEQ_CLS``, RoBERTa, XLM-R, CamemBERT, MPNet (``...ClassificationHead``):
  ``out_proj(dropout(tanh(dense(dropout(h[:, 0])))))``: adapterkit's MLP head exactly, from
  ``classifier.dense.*`` and ``classifier.out_proj.*``.
* ``TOKEN_CLS`` (``...ForTokenClassification``): ``classifier(dropout(h))`` on every token:
  adapterkit's tagging head.
* ``CAUSAL_LM`` with ``lm_head`` saved: a causal-LM head with its own LM weights
  (``own_lm_head``).

One label is regression (transformers' ``problem_type`` for ``num_labels == 1``). The head reads
the first position of the sequence the model ran: with prompt tuning that is the first virtual
token (peft prepends the prompt to the input embeddings), hence ``pooling="first"``; otherwise the
first token. Dropout is the family's ``classifier_dropout`` (else ``hidden_dropout_prob``); in
training adapterkit's MLP head also drops its input, where BERT's classifier has none after
the pooler (outputs in eval mode are the same).
"""

from __future__ import annotations

from typing import Any

import torch

from .layout import ModelLayout, NotConvertible

POOLER_FAMILIES = ("bert",)
CLASSIFICATION_HEAD_FAMILIES = ("roberta", "xlm-roberta", "camembert", "mpnet")


def head_dropout(layout: ModelLayout) -> float:
    """The dropout rate of the family's classifier."""
    rate = layout.config.get("classifier_dropout")
    return float(rate if rate is not None else layout.config.get("hidden_dropout_prob", 0.0) or 0.0)


def _classification(num_labels: int, pooling: str, mlp: bool, layout: ModelLayout) -> dict[str, Any]:
    return {"kind": "regression" if num_labels == 1 else "classification", "num_labels": max(num_labels, 1),
            "pooling": pooling, "mlp": mlp, "dropout": head_dropout(layout)}


def _mlp(first: tuple[torch.Tensor, torch.Tensor], second: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"head.layers.0.weight": first[0], "head.layers.0.bias": first[1],
            "head.layers.3.weight": second[0], "head.layers.3.bias": second[1]}


def head_from_peft(
    config: dict[str, Any], tensors: dict[str, torch.Tensor], layout: ModelLayout, pooler: dict[str, torch.Tensor], where: str
) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor]]:
    """(adapterkit head config, its tensors by saved key) of a peft adapter's saved head.

    Args:
        tensors: the ``modules_to_save`` tensors, keys relative to the task model.
        pooler: a LoRA update of the base's pooler (``weight``: ``s B A``; ``bias``: the trained
            bias), folded into the head's first layer when the head reads the pooler.

    Raises:
        NotConvertible: a head of a form adapterkit has no equivalent of.
    """
    task = config.get("task_type")
    if not tensors:
        return None, {}
    pooling = "first" if config["peft_type"] == "PROMPT_TUNING" else "cls"
    if task == "SEQ_CLS" and set(tensors) <= {"classifier.weight", "classifier.bias", "pooler.dense.weight", "pooler.dense.bias"} \
            and layout.model_type in POOLER_FAMILIES and layout.pooler:
        base = layout.base_tensors
        weight = tensors.get("pooler.dense.weight", base[f"{layout.pooler}.dense.weight"])
        bias = tensors.get("pooler.dense.bias", base[f"{layout.pooler}.dense.bias"])
        if "weight" in pooler:
            weight = weight + pooler["weight"].to(weight.dtype)
        bias = pooler.get("bias", bias)
        head = _classification(tensors["classifier.weight"].shape[0], pooling, True, layout)
        return head, _mlp((weight, bias), (tensors["classifier.weight"], tensors["classifier.bias"]))
    if pooler:
        raise NotConvertible(f"{where}: a LoRA on the pooler is converted only with a BERT sequence-classification head")
    names = {"classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight", "classifier.out_proj.bias"}
    if task == "SEQ_CLS" and set(tensors) == names and layout.model_type in CLASSIFICATION_HEAD_FAMILIES:
        head = _classification(tensors["classifier.out_proj.weight"].shape[0], pooling, True, layout)
        return head, _mlp(
            (tensors["classifier.dense.weight"], tensors["classifier.dense.bias"]),
            (tensors["classifier.out_proj.weight"], tensors["classifier.out_proj.bias"]),
        )
    if task == "TOKEN_CLS" and set(tensors) == {"classifier.weight", "classifier.bias"}:
        head = {"kind": "tagging", "num_labels": tensors["classifier.weight"].shape[0], "mlp": False, "dropout": head_dropout(layout)}
        return head, {"head.layers.0.weight": tensors["classifier.weight"], "head.layers.0.bias": tensors["classifier.bias"]}
    if task == "CAUSAL_LM" and set(tensors) <= {"lm_head.weight", "lm_head.bias"} and layout.decoder:
        return {"kind": "causal_lm", "own_lm_head": True}, {f"head.{k.removeprefix('lm_head.')}": t for k, t in tensors.items()}
    raise NotConvertible(
        f"{where}: modules_to_save {sorted({k.rsplit('.', 1)[0] for k in tensors})} with task_type {task!r} on a "
        f"{layout.model_type!r} model is no head adapterkit has an equivalent of; adapterkit converts sequence "
        f"classification heads of {', '.join(POOLER_FAMILIES + CLASSIFICATION_HEAD_FAMILIES)}, token classification "
        "heads and a causal LM's lm_head"
    )
