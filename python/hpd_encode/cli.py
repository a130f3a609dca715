"""The ``hpd-encode`` command line, built on the public Python API."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from hpd_encode import __version__

log = logging.getLogger("hpd_encode")


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _cmd_demo(args: argparse.Namespace) -> int:
    from hpd_encode.demo import run_demo

    return run_demo(args.output_dir, pairs=args.pairs, workers=args.workers)


def _cmd_probe(args: argparse.Namespace) -> int:
    from hpd_encode import load_bucket_set, probe_images

    buckets = load_bucket_set(args.buckets)
    sizes, errors = probe_images(args.paths, num_threads=args.workers)
    bad = 0
    for path, size, err in zip(args.paths, sizes, errors):
        if size is None:
            bad += 1
            print(f"{path}\terror\t{err}")
            continue
        b = buckets.assign(*size)
        bucket = "-" if b is None else f"{b} ({buckets.buckets[b][0]}x{buckets.buckets[b][1]})"
        print(f"{path}\t{size[0]}x{size[1]}\tbucket {bucket}")
    return 1 if bad else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpd-encode",
        description="Turn an HPDv3-style preference dataset into VAE latents in Parquet, and index them.",
    )
    parser.add_argument("--version", action="version", version=f"hpd-encode {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    common.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="run the whole job on a small generated dataset with a tiny random VAE",
        description="Generate a small HPDv3-shaped dataset and a tiny random-weight VAE, run the pipeline "
        "on CPU, and print a summary.",
    )
    p.add_argument("--output-dir", default="demo-output", help="where the dataset and results go (default: %(default)s)")
    p.add_argument("--pairs", type=int, default=36, help="number of comparisons to generate (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="decode threads (default: all cores)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("probe", parents=[common], help="print each image's size and bucket (header only)")
    p.add_argument("paths", nargs="+", help="image files")
    p.add_argument("--buckets", default="hpdv3", help="'hpdv3' or a JSON file of [h, w] sizes")
    p.add_argument("--workers", type=int, default=None, help="threads (default: all cores)")
    p.set_defaults(func=_cmd_probe)
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
    except (ValueError, OSError) as e:
        print(f"hpd-encode {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
