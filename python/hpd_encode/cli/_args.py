"""Argument types and actions shared by the CLI's command groups.

Every option is checked by the parser itself, so a bad value is a one-line
usage error (exit 2) naming the option, never a traceback later.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn


def say_error(line: str) -> None:
    """Write one line to stderr in one call: ``print`` writes the text and its newline apart, so
    the lines of several processes sharing stderr (torchrun's ranks) could run together."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors in one line (``prog: error: message``, exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def arg_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type=`` from a parser that raises ValueError with a message."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except (ValueError, TypeError, OSError) as e:
            raise argparse.ArgumentTypeError(str(e) or f"invalid value {text!r}") from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, not {n}")
        return n

    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


class DeprecatedAlias(argparse.Action):
    """An old option spelling, hidden from ``--help``: stores into the new
    option's ``dest`` and prints a one-line deprecation warning to stderr."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


#: ``--latent-compression`` choices: ``_core.LATENT_COMPRESSIONS`` (tests check), spelled out so that
#: building the parser does not load the extension.
LATENT_COMPRESSIONS = ("none", "zstd")


def add_latent_compression_option(p: argparse.ArgumentParser, reference_note: str = "") -> None:
    """``--latent-compression none|zstd``: the codec of the latent columns (default ``none``)."""
    p.add_argument(
        "--latent-compression",
        choices=LATENT_COMPRESSIONS,
        default=LATENT_COMPRESSIONS[0],
        help="codec of the latent columns: none (~8%% larger than zstd, 2.4x as fast to read per CPU core) "
        f"or zstd{reference_note} (default: %(default)s)",
    )


def show_progress(args: argparse.Namespace) -> bool:
    """The one rule for progress bars (they only ever show on a terminal): on, unless ``-q``,
    ``--no-progress`` or ``--json`` (machine-readable output) says otherwise."""
    return not (args.quiet or args.no_progress or getattr(args, "json", False))


def add_threads_option(p: argparse.ArgumentParser, help: str) -> None:
    """``--num-threads N`` (``--workers`` is its deprecated spelling)."""
    p.add_argument("--num-threads", type=positive_int, default=None, help=help)
    p.add_argument(
        "--workers", type=positive_int, dest="num_threads", action=DeprecatedAlias, new="--num-threads"
    )
