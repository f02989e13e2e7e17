"""How an instruction becomes a prompt for a causal LM: the simple format or the model's chat template.

``simple`` (the default; the Alpaca layout, without its preamble):

    <bos>### Instruction:
    <instruction>

    ### Response:
    <response><eos>

``chat_template``: the tokenizer's own chat template with the instruction as the one user message
and the generation prompt added (``tokenizer.apply_chat_template``), the response and the EOS
token after it. ``text``: no prompt at all, the text continued as is (plain language modelling,
or a base model prompted by hand).

An Alpaca-style ``input`` (the material an instruction is about) is joined to the instruction
after a blank line (:func:`user_message`). The pieces around the instruction are tokenised apart
from it so that only the instruction is ever cut; training (``data/causal_lm.py``) and generation
(``inference/generating.py``) build prompts with :func:`instruction_prompt_ids`, so they see the
same ids.
"""

from __future__ import annotations

from typing import Any

SIMPLE = "simple"
CHAT_TEMPLATE = "chat_template"
TEXT = "text"
#: The prompt formats of instruction tasks (``TaskData.prompt_format``, saved with the adapter).
PROMPT_FORMATS = (SIMPLE, CHAT_TEMPLATE)
SIMPLE_PREFIX = "### Instruction:\n"
SIMPLE_SUFFIX = "\n\n### Response:\n"
_SLOT = "ADAPTERKIT_INSTRUCTION_SLOT"


def user_message(instruction: str, input_text: str = "") -> str:
    """The instruction, then the input after a blank line when there is one."""
    return f"{instruction}\n\n{input_text}" if input_text else instruction


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _around(tokenizer: Any, prompt_format: str) -> tuple[str, str]:
    """The prompt's text before and after the instruction (the BOS token aside)."""
    if prompt_format == SIMPLE:
        return SIMPLE_PREFIX, SIMPLE_SUFFIX
    if prompt_format == TEXT:
        return "", ""
    if prompt_format != CHAT_TEMPLATE:
        raise ValueError(f"unknown prompt format {prompt_format!r}; use one of {', '.join((*PROMPT_FORMATS, TEXT))}")
    if not has_chat_template(tokenizer):
        raise ValueError(
            f"the tokenizer of {getattr(tokenizer, 'name_or_path', 'this model') or 'this model'} has no chat template; "
            "drop --chat-template to use the simple prompt format (### Instruction: / ### Response:)"
        )
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": _SLOT}], add_generation_prompt=True, tokenize=False)
    before, found, after = rendered.partition(_SLOT)
    if not found or _SLOT in after:
        raise ValueError("the tokenizer's chat template does not show the user message once; use the simple prompt format")
    return before, after


def instruction_prompt_ids(tokenizer: Any, message: str, prompt_format: str, max_tokens: int) -> list[int]:
    """Token ids of the prompt for ``message`` in ``prompt_format`` (``simple``, ``chat_template``
    or ``text``), the message cut to its first ``max_tokens`` tokens (a text to continue: its last).

    Raises:
        ValueError: an unknown format, or ``chat_template`` with a tokenizer that has none.
    """
    before, after = _around(tokenizer, prompt_format)
    # the chat template writes its own start; the others begin with BOS, as language modelling does
    start = [tokenizer.bos_token_id] if prompt_format != CHAT_TEMPLATE and tokenizer.bos_token_id is not None else []

    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    message_ids = ids(message)
    kept = message_ids[-max_tokens:] if prompt_format == TEXT else message_ids[:max_tokens]  # a text goes on from its end
    return start + ids(before) + kept + ids(after)
