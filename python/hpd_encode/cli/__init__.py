"""The ``hpd-encode`` command line, built on the public Python API.

All argument parsing lives in this package: one module per command group,
each with ``add_parsers(subparsers, common)``. Handlers turn the parsed
arguments into the API's typed options and print results; they hold no logic
of their own.
"""

from __future__ import annotations

import os

# NumPy's OpenBLAS starts one thread per core, and they spin for a while after NumPy is loaded and
# after each BLAS call. The command line does no linear algebra in NumPy (the VAE runs in torch, with
# its own threads), and on a small machine those spinning threads take CPU from the planning and
# the decode (about 0.5 s of a dry run at HPDv3 scale on 2 cores): one BLAS thread, unless the
# user's environment says otherwise. Set before NumPy is first imported, below.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import logging
import sys
from collections.abc import Sequence

from hpd_encode import __version__
from hpd_encode.cli import encode, fetch, index, latents
from hpd_encode.cli._args import Parser, say_error
from hpd_encode.errors import HpdError

_GROUPS = (encode, fetch, index, latents)


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="hpd-encode",
        description="Turn an HPDv3-style preference dataset into VAE latents in Parquet, and index them.",
    )
    parser.add_argument("--version", action="version", version=f"hpd-encode {__version__}")
    common = Parser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    common.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings and errors (no progress bars)"
    )
    common.add_argument(
        "--no-progress", action="store_true", help="no progress bars (they only show on a terminal)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in _GROUPS:
        group.add_parsers(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    _setup_logging(-1 if args.quiet else args.verbose)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, ImportError, HpdError) as e:
        say_error(f"hpd-encode {args.command}: error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
