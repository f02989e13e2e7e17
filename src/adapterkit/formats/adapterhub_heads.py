"""AdapterHub's prediction heads <-> adapterkit heads with the same outputs.

AdapterHub's ``PredictionHead`` (``adapters`` 1.3 ``heads/base.py``) is an ``nn.Sequential`` of
``layers`` blocks: each ``Dropout`` then ``Linear``, with the activation after every block but the
last: for ``layers=2`` ``[Dropout, Linear(d, d), tanh, Dropout, Linear(d, n)]`` (indices 0-4) and
for ``layers=1`` ``[Dropout, Linear(d, n)]``. That is adapterkit's head with ``mlp=True`` (its
``layers.0``, ``layers.3``) or ``mlp=False`` (``layers.0``), the dropout before it included.

* ``classification``: on ``outputs[0][:, 0]``, the first position of the sequence the model ran
  (with prompt tuning the first prompt vector: ``pooling="first"``; else the CLS token, ``cls``);
  one label is regression (AdapterHub computes an MSE loss then).
* ``tagging``: on every position (adapterkit's tagging head; AdapterHub's logits also cover the
  prompt positions, adapterkit's only the tokens').

The dropout rate is ``dropout_prob`` or else the model's ``classifier_dropout`` or
``hidden_dropout_prob`` (``_get_dropout_prob``).
"""

from __future__ import annotations

from typing import Any

import torch

from .adapterhub_options import check_options
from .layout import ModelLayout, NotConvertible

KINDS = ("classification", "tagging")


def head_dropout(config: dict[str, Any], layout: ModelLayout) -> float:
    for rate in (config.get("dropout_prob"), layout.config.get("classifier_dropout"), layout.config.get("hidden_dropout_prob")):
        if rate is not None:
            return float(rate)
    return 0.0


def head_from_adapterhub(
    saved: dict[str, Any], tensors: dict[str, torch.Tensor], layout: ModelLayout, prompt: bool, where: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapterkit head config, its tensors by saved key) of an AdapterHub ``head_config.json``
    and its weights (``heads.<name>.<index>.<param>``).

    Args:
        prompt: the adapter is a prompt tuning one (the head then reads the first prompt position).

    Raises:
        NotConvertible: another head type, more than 2 layers, another activation, the pooler.
    """
    config = saved["config"]
    check_options("head", config, where)
    kind, layers = config["head_type"], config.get("layers", 1)
    if kind not in KINDS or layers not in (1, 2):
        raise NotConvertible(
            f"{where}: an AdapterHub {kind!r} head with {layers} layers has no adapterkit equivalent; adapterkit converts "
            f"{' and '.join(KINDS)} heads of 1 or 2 layers"
        )
    if layers == 2 and (config.get("activation_function") or "").lower() != "tanh":
        raise NotConvertible(f"{where}: activation_function={config.get('activation_function')!r}; adapterkit's MLP head uses tanh")
    prefix = f"heads.{saved['name']}."
    own = {k.removeprefix(prefix): t for k, t in tensors.items() if k.startswith(prefix)}
    indices = {"1": "0", "4": "3"} if layers == 2 else {"1": "0"}
    out = {}
    for key, tensor in own.items():
        index, _, param = key.partition(".")
        if index not in indices:
            raise NotConvertible(f"{where}: head tensor {prefix}{key} is not one of a {layers}-layer head")
        out[f"head.layers.{indices[index]}.{param}"] = tensor
    num_labels = config["num_labels"]
    labels = sorted(config.get("label2id") or {}, key=lambda label: config["label2id"][label])
    head = {"kind": kind, "num_labels": num_labels, "mlp": layers == 2, "dropout": head_dropout(config, layout)}
    if kind == "classification":
        head.update(pooling="first" if prompt else "cls", kind="regression" if num_labels == 1 else kind)
    if len(labels) == num_labels:
        head["label_names"] = labels
    return head, out
