"""Exporting an adapter merged into its base model: a plain transformers folder, no adapterkit needed.

The adapter folder (adapterkit's, or a peer's that converts: ``convert.load_source``) is loaded
into its base model, merged into the base weights for good (``AdapterModel.merge_and_unload``:
LoRA, IA3 and the other methods with the ``merge`` capability) and the base is saved with
``save_pretrained`` (safetensors, the dtype it was loaded in: float32), its tokenizer beside it;
``config.json`` records the adapter, its method and the prompt format it was trained with under
``adapterkit_merged``.
``AutoModelForCausalLM.from_pretrained(folder)`` then computes what adapterkit computes with the
adapter (a decoder; an encoder's folder loads with ``AutoModel``).

What a plain folder cannot hold is refused, never dropped: a method that does not merge, an
adapter with its own head (a classification, regression, tagging or masked-LM head is adapterkit's
module, whose pooling has no counterpart in every architecture's ``...ForSequenceClassification``;
a ``causal_lm`` head with its own LM-head copy), and an adapter trained on top of others.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_directory
from ..formats.detect import ADAPTERKIT
from ..formats.native import read_adapter_config
from ..registry import methods_with
from .convert import load_source
from .store import STACKED_UNDER

@dataclass
class MergedExport:
    """What an export did: the folder written, the adapter merged, its method, the source's format."""

    target: Path
    adapter: str
    method: str
    source_format: str


def export_merged(source: str | Path, target: str | Path, model: str | None = None, adapter: str | None = None) -> MergedExport:
    """Merge the adapter of folder ``source`` into its base model and save that as ``target``
    (replaced atomically), with the tokenizer.

    Args:
        model: the base model (bundled name or folder); default: the one ``source`` records.
        adapter: which adapter of a folder holding several (default: its main one).

    Raises:
        ValueError: a method that cannot merge (naming those that can), an adapter with a head of
            its own, one trained stacked on other adapters, or what loading refuses.
    """
    source = Path(source)
    base, main, found = load_source(source, model)
    name = adapter or main
    base.view().require([name])
    method = base.adapters[name].config.method
    if "merge" not in base.adapters[name].capabilities:
        raise ValueError(
            f"{source}: adapter {name!r} is a {method} adapter, which cannot be merged into the base weights; "
            f"methods that merge: {', '.join(methods_with('merge'))} (convert it to another adapter format instead)"
        )
    head = base.heads[name].config if name in base.heads else None
    if head is not None and (head.kind != "causal_lm" or head.own_lm_head):
        what = "its own copy of the LM head" if head.kind == "causal_lm" else f"a {head.kind} head"
        raise ValueError(
            f"{source}: adapter {name!r} has {what}, which a plain transformers folder cannot hold (adapterkit's heads "
            "pool and predict in their own way); merged export writes causal-LM adapters (a causal_lm head on the "
            "model's own LM head) and adapters without a head"
        )
    under = read_adapter_config(source).get(STACKED_UNDER) if found == ADAPTERKIT else None
    if under:
        raise ValueError(f"{source}: adapter {name!r} was trained stacked on {', '.join(under)}; merging it alone would drop them")
    task = read_adapter_config(source).get("task", {}) if found == ADAPTERKIT else {}
    base.merge_and_unload(name)
    # provenance in config.json (transformers keeps unknown keys): what was merged, how its prompts were written
    base.base.config.adapterkit_merged = {"adapter": name, "method": method, "prompt_format": task.get("prompt_format")}
    with atomic_directory(target) as folder:
        base.base.save_pretrained(folder)
        if base.tokenizer is not None:
            base.tokenizer.save_pretrained(folder)
    return MergedExport(Path(target), name, method, found)
