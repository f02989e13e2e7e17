"""Did-you-mean hints for misspelt names (methods, tasks, options, flags, metrics, config keys)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean X?"`` with the choice closest to ``word`` (difflib), or ``""`` if none is close."""
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""
