"""The command line's argument parser: no silent abbreviations, the closest name suggested for a
misspelt flag or choice, and every default shown in ``--help``.

:class:`CliParser` is the class of the top-level parser and, through ``add_subparsers(parser_class=...)``,
of every subcommand's parser, so a subcommand gets all of this without asking.
"""

from __future__ import annotations

import argparse
import copy

from ..spelling import did_you_mean


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that ends every option's line with its default, unless the help already says it or
    there is none to say (no default, a switch that is off, a repeatable option that starts empty)."""

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and self._says_default(action):  # argparse prints nothing for an option without help
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not self._says_default(action) or "default" in text.lower():
            return text
        return f"{text} (default: %(default)s)"

    @staticmethod
    def _says_default(action: argparse.Action) -> bool:
        return bool(action.option_strings) and all(action.default is not v for v in (None, False, argparse.SUPPRESS))


class CliParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that never expands an abbreviated flag (``--epoch`` is not ``--epochs``),
    names the closest flag for an unrecognised one and the closest choice for an invalid one."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        """As ``ArgumentParser``'s, but unrecognised arguments are an error here, in the parser that
        knows the flags (a subcommand's), naming the closest of them."""
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            flags = [flag for action in self._actions for flag in action.option_strings]
            hints = [did_you_mean(e.partition("=")[0], flags) for e in extras if e.startswith("-")]
            hint = next((h for h in hints if h), "")
            self.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return namespace, extras

    def _check_value(self, action: argparse.Action, value) -> None:
        if action.choices is not None and value not in action.choices:
            hint = did_you_mean(value, action.choices)
            choices = ", ".join(map(str, action.choices))
            raise argparse.ArgumentError(action, f"invalid choice: {value!r}{hint} (choose from {choices})")
        super()._check_value(action, value)


#: Library parameters whose flag is not named after them (``load_files(text_columns=...)``: ``--text-column``).
PARAMETER_DESTS = {"text_columns": "text_column", "learning_rate": "lr"}


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The flag of each library parameter ``parser`` takes (``{"batch_size": "--batch-size"}``), for
    spelling a :class:`~adapterkit.errors.ParameterError` in the command line's terms."""
    flags = {action.dest: action.option_strings[-1] for action in parser._actions if action.option_strings}
    names = {parameter: flags[dest] for parameter, dest in PARAMETER_DESTS.items() if dest in flags}
    return {**flags, **names}
