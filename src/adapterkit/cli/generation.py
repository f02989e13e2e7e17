"""``eval`` and ``predict`` for adapters with a causal-LM head: translation and language modelling.

``eval`` on a translation task reports the test split's BLEU and chrF (sacrebleu, generated
translations) and the targets' perplexity; on a language-modelling task the held-out perplexity.
An instruction or text adapter (trained on files, ``data/lm_files.py``) is evaluated on a file of
the same rows (``--test-file``): the perplexity of the responses (of the texts).
``predict`` translates each input line (greedy, or beam search with ``--num-beams``), answers it
(an instruction adapter's response, its line breaks made spaces), or, for a language-modelling
adapter, continues it. ``adapterkit generate`` (``generate.py``) is the command made for the last two.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..data.prompts import SIMPLE
from ..data.task import INSTRUCTION, LANGUAGE_MODEL, TRANSLATION
from .common import positive_int

#: What the eval and predict commands add for causal-LM adapters.
OPTIONS = (
    ("--num-beams", dict(type=positive_int, default=1, help="causal-LM adapters: beam search width (default: 1, greedy)")),
    ("--max-new-tokens", dict(type=positive_int, default=64, help="causal-LM adapters: longest generated text in tokens (default: 64)")),
)


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    for flag, options in OPTIONS:
        parser.add_argument(flag, **options)


def saved_languages(meta: dict[str, Any], where: Any) -> tuple[str, ...]:
    """The target languages an adapter was trained to translate into (its task's label names).

    Raises:
        ValueError: the adapter records no translation task.
    """
    task = meta.get("task", {})
    if task.get("kind") != TRANSLATION or not task.get("label_names"):
        raise ValueError(f"{where} records no translation task (trained with `adapterkit train --task django_de ...`?)")
    return tuple(task["label_names"])


def evaluate_generation(model, name: str, meta: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    """The metrics of ``adapterkit eval`` for a causal-LM adapter on ``--task``'s test split."""
    from ..data import load_task
    from ..inference.perplexity import perplexity
    from ..inference.translation import evaluate_translation

    if not args.task and args.test_file and meta.get("task", {}).get("kind") in (INSTRUCTION, LANGUAGE_MODEL):
        return evaluate_file(model, name, meta, args)
    if not args.task:
        raise ValueError(f"{args.adapter} is a causal-LM adapter: evaluate it on a bundled task with --task (e.g. django_de)")
    seed = args.seed if args.seed is not None else meta.get("training", {}).get("seed", 0)
    data = load_task(args.task, seed=seed, max_examples=args.max_examples)
    if data.kind != meta.get("task", {}).get("kind", data.kind):
        raise ValueError(f"adapter {args.adapter} was trained on a {meta['task']['kind']} task, but {data.name!r} is {data.kind}")
    max_length = args.max_length or meta.get("training", {}).get("max_length", 128)
    metrics = perplexity(model, data.test, data.kind, name, data.label_names, max_length, args.batch_size)
    if data.kind == TRANSLATION:
        metrics.update(evaluate_translation(
            model, data.test, data.label_names, name, max_length=max_length, max_new_tokens=args.max_new_tokens,
            num_beams=args.num_beams, batch_size=args.batch_size,
        ))
    return metrics


def evaluate_file(model, name: str, meta: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    """The perplexity of an instruction adapter's responses (of a text adapter's texts) in
    ``--test-file``, read whole (``data/lm_files.py``), prompts in the recorded format."""
    from ..data.lm_files import read_lm_file
    from ..inference.perplexity import perplexity

    task = meta["task"]
    _, examples = read_lm_file(args.test_file, task["kind"])
    max_length = args.max_length or meta.get("training", {}).get("max_length", 128)
    return perplexity(model, examples[: args.max_examples] if args.max_examples else examples, task["kind"], name,
                      max_length=max_length, batch_size=args.batch_size, prompt_format=task.get("prompt_format"))


def predict_generation(model, name: str, meta: dict[str, Any], texts: list[tuple[str, ...]], args: argparse.Namespace) -> list[str]:
    """``adapterkit predict`` for a causal-LM adapter: a translation into ``--language`` (default:
    the adapter's one target language) per input, or a continuation for a language-modelling one."""
    from ..inference.translation import translate

    max_length = args.max_length or meta.get("training", {}).get("max_length", 128)
    if meta.get("task", {}).get("kind") == INSTRUCTION:  # the response, on one line
        from ..inference.generating import respond

        responses = respond(model, [t[0] for t in texts], name, meta["task"].get("prompt_format", SIMPLE), max_length=max_length,
                            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, do_sample=False)
        return [" ".join(r.split("\n")) for r in responses]
    if meta.get("task", {}).get("kind") != TRANSLATION:
        return continue_texts(model, name, [t[0] for t in texts], max_length, args)
    languages = saved_languages(meta, args.adapter)
    language = args.language or (languages[0] if len(languages) == 1 else None)
    if language is None:
        raise ValueError(f"{args.adapter} translates into {', '.join(languages)}: name the target with --language")
    if language not in languages:
        raise ValueError(f"{args.adapter} was trained to translate into {', '.join(languages)}, not {language!r}")
    return translate(model, [t[0] for t in texts], language, name, max_length=max_length,
                     max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, batch_size=args.batch_size)


def continue_texts(model, name: str, texts: list[str], max_length: int, args: argparse.Namespace) -> list[str]:
    """Each text's continuation (one line) from a language-modelling adapter."""
    from ..data.causal_lm import cut_translation
    from ..inference.generating import generate_texts

    tokenizer = model.tokenizer
    start = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompts = [(start + tokenizer(t, add_special_tokens=False)["input_ids"])[-max_length:] for t in texts]
    generated = generate_texts(model, prompts, name, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                               num_beams=args.num_beams, do_sample=False)
    return [cut_translation(t) for t in generated]


def route_translations(
    model, names: list[str], metas: list[dict[str, Any]], rows: list[tuple[str, ...]], args: argparse.Namespace
) -> list[str]:
    """``adapterkit predict --adapters A,B,...`` with translation adapters: each input is
    ``Language<TAB>source`` (``rows``: (language, source) pairs) and goes to the adapter that translates into that language, all rows
    of a batch in one routed pass (``Routed``).

    Raises:
        ValueError: two adapters for one language, or an input naming a language none translates into.
    """
    from ..inference.translation import translate

    route: dict[str, str] = {}
    for name, meta in zip(names, metas):
        for language in saved_languages(meta, name):
            if language in route:
                raise ValueError(f"adapters {route[language]!r} and {name!r} both translate into {language}; give one of them")
            route[language] = name
    unknown = sorted({language for language, _ in rows} - set(route))
    if unknown:
        raise ValueError(f"no adapter translates into {', '.join(unknown)}; the adapters translate into {', '.join(route)} "
                         "(each input line is LANGUAGE<TAB>SOURCE)")
    max_length = args.max_length or max(m.get("training", {}).get("max_length", 128) for m in metas)
    return translate(model, [s for _, s in rows], [lang for lang, _ in rows], [route[lang] for lang, _ in rows],
                     max_length=max_length, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
                     batch_size=args.batch_size)
