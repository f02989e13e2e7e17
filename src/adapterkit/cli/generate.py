"""``adapterkit generate``: responses of a causal-LM adapter (or of a base model) to prompts."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.prompts import PROMPT_FORMATS, SIMPLE, TEXT
from .common import parse_seed, positive_int
from .console import quiet_libraries
from .generation import add_generation_arguments
from .paths import require_input_file
from .predict import stdin_bytes

DESCRIPTION = """Generate a response to each prompt with a causal-LM adapter trained by `adapterkit
train` on instruction or text files, or with a base model alone (--model, no --adapter) for
comparison. Prompts: --prompt TEXT (repeatable), else --input FILE or standard input with one
prompt per line, or JSON Lines rows with instruction (or prompt) and an optional input. Each prompt is
written in the format the adapter was trained with (recorded in the adapter: simple `### Instruction:
... ### Response:`, or the tokenizer's chat template; a text adapter continues the text); --prompt-format
overrides it (default without an adapter: simple). Decoding is greedy unless --temperature or --top-p
asks for sampling (seeded by --seed); --num-beams searches beams. Prints the response only: one
--prompt as generated, several one per line (line breaks inside a response written as \\n, backslashes doubled)."""


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="generate responses with a causal-LM adapter or model", description=DESCRIPTION)
    parser.add_argument("--adapter", type=Path, help="a saved causal-LM adapter folder (default: none, the base model alone)")
    parser.add_argument("--model", help="base model (default: the one recorded in the adapter; required without --adapter)")
    parser.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt (repeatable; default: --input or stdin)")
    parser.add_argument("--input", type=Path, help="prompts, one per line or JSON Lines (default: standard input)")
    parser.add_argument("--prompt-format", choices=(*PROMPT_FORMATS, TEXT),
                        help="how prompts are written (default: the adapter's; simple without an adapter)")
    parser.add_argument("--temperature", type=float, help="sample with this temperature (default: greedy)")
    parser.add_argument("--top-p", type=float, help="sample from the smallest token set of this probability (default: greedy)")
    parser.add_argument("--seed", type=parse_seed, default=0, help="the sampling seed (default: 0)")
    parser.add_argument("--max-length", type=positive_int, help="prompt budget: the instruction gets half of it "
                        "(default: the length the adapter was trained with, else 128)")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--quiet", action="store_true", help="no loading messages")
    add_generation_arguments(parser)
    parser.set_defaults(func=run)


def read_prompts(args: argparse.Namespace) -> list[str]:
    """The messages of --prompt, or of --input or stdin (lines, or JSON Lines rows when the first
    line is a JSON object).

    Raises:
        ValueError: no prompt, a missing file, text that is not UTF-8 (naming the line), a blank
            --prompt, or a bad JSON Lines row.
    """
    from ..data.lm_files import prompt_of
    from ..data.tables import decode_text, read_json_lines
    from ..data.task import require_text

    if args.prompt:
        if args.input is not None:
            raise ValueError("give prompts with --prompt or --input, not both")
        for number, prompt in enumerate(args.prompt, start=1):
            require_text((prompt,), f"--prompt {number}")
        return list(args.prompt)
    if args.input is not None:
        require_input_file(args.input, "--input")
    source = str(args.input or "stdin")
    lines = decode_text(args.input.read_bytes() if args.input is not None else stdin_bytes(), source).splitlines()
    first = next((line.strip() for line in lines if line.strip()), None)
    if first is None:
        raise ValueError(f"{source} holds no prompt; give one per line, or use --prompt TEXT")
    if first.startswith("{"):
        rows = read_json_lines(lines, source)
        return [prompt_of(row.fields, f"{source} line {row.line}") for row in rows]
    return [line for line in lines if line.strip()]


def sampling(args: argparse.Namespace) -> dict:
    """``generate`` options: greedy, or sampling with the given temperature / top-p.

    Raises:
        ValueError: a temperature <= 0 or a top-p outside (0, 1].
    """
    if args.temperature is None and args.top_p is None:
        return {"do_sample": False}
    if args.temperature is not None and args.temperature <= 0:
        raise ValueError(f"--temperature must be > 0 (leave it out for greedy decoding), got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    return {"do_sample": True, "temperature": args.temperature or 1.0, "top_p": args.top_p or 1.0}


def load(args: argparse.Namespace):
    """(model, adapter name or None, recorded prompt format, recorded max length).

    Raises:
        ValueError: an adapter that does not generate responses (a translation or classification one),
            or a base model that is not a decoder.
    """
    from ..data.task import INSTRUCTION, LANGUAGE_MODEL, TRANSLATION
    from ..inference.loading import load_adapters
    from ..model import AdapterModel

    if args.adapter is None:
        model = AdapterModel.from_pretrained(args.model)
        if not model.is_decoder:
            raise ValueError(
                f"--model {args.model} is an encoder ({model.parts.model_type}); generate needs a decoder model, "
                "such as smollm2-135m (see `adapterkit models`)"
            )
        return model, None, SIMPLE, None
    model, (name,), (meta,) = load_adapters([args.adapter], args.model)
    head = model.heads[name].config.kind if name in model.heads else None
    task = meta.get("task", {})
    if task.get("kind") == TRANSLATION:
        raise ValueError(f"{args.adapter} is a translation adapter: translate with `adapterkit predict --adapter {args.adapter}`")
    if head != "causal_lm" or task.get("kind") not in (INSTRUCTION, LANGUAGE_MODEL):
        raise ValueError(
            f"{args.adapter} is not a causal-LM adapter trained on instruction or text files (its head: {head or 'none'}); "
            "generate with one trained by `adapterkit train --train-file chat.jsonl` on a decoder, or use `adapterkit predict`"
        )
    recorded = task.get("prompt_format", SIMPLE) if task["kind"] == INSTRUCTION else TEXT
    return model, name, recorded, meta.get("training", {}).get("max_length")


def run(args: argparse.Namespace) -> int:
    from ..inference.generating import respond

    if args.adapter is None and not args.model:  # before waiting on stdin
        raise ValueError("name a causal-LM adapter with --adapter DIR, or a base model with --model")
    messages = read_prompts(args)  # before loading the model: a bad input fails fast
    options = sampling(args)
    quiet_libraries(args.quiet)
    model, name, recorded, trained_length = load(args)
    prompt_format = args.prompt_format or recorded
    if options["do_sample"]:
        from transformers import set_seed

        set_seed(args.seed)  # after loading, which may draw random numbers
    responses = respond(model, messages, name, prompt_format, max_length=args.max_length or trained_length or 128,
                        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, **options)
    if args.prompt and len(responses) == 1:
        print(responses[0])
    else:
        for response in responses:
            print(response.replace("\\", "\\\\").replace("\n", "\\n"))
    return 0
