"""The ``hpd-encode`` command line, built on the public Python API."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from hpd_encode import HpdError, __version__

log = logging.getLogger("hpd_encode")


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _cmd_demo(args: argparse.Namespace) -> int:
    from hpd_encode.demo import run_demo

    return run_demo(args.output_dir, pairs=args.pairs, workers=args.workers)


def _batch_size(value: str) -> int | str:
    if value == "auto":
        return value
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("batch size must be >= 1 or 'auto'")
    return n


def _non_negative(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {n}")
    return n


def _cmd_encode(args: argparse.Namespace) -> int:
    from hpd_encode.pipeline import encode

    summary = encode(
        args.data_root, args.metadata, args.output_dir, args.vae,
        vae_subfolder=args.vae_subfolder, dtype=args.dtype, device=args.device, buckets=args.buckets,
        batch_size=args.batch_size, latent=args.latent, store_dtype=args.store_dtype, seed=args.seed,
        limit=args.limit, overwrite=args.overwrite, workers=args.workers, share=not args.no_share,
        rows_per_file=args.rows_per_file, alpha=args.alpha, progress=not args.quiet,
    )
    if summary and os.environ.get("RANK", "0") == "0":
        print_summary(summary)
    return 0


def print_summary(summary: dict) -> None:
    """A short human-readable account of an encode run."""
    print(f"output:            {summary['output_dir']}")
    print(f"records:           {summary['records_in_metadata']} in metadata, "
          f"{summary['records_already_done']} already done before this run")
    print(f"rows written:      {summary['rows_written']} this run, {summary['rows_total']} in total "
          f"({len(summary['files'])} part files)")
    print(f"images:            {summary['images_decoded']} decoded, {summary['images_encoded']} VAE-encoded "
          f"in {summary['vae_calls']} calls")
    rate = summary.get("rows_per_second")
    print(f"time:              {summary['elapsed_seconds']:.1f} s total"
          + (f", {rate:.2f} rows/s while encoding" if rate else ""))
    if summary["failed_or_dropped"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in summary["by_reason"].items())
        print(f"dropped or failed: {summary['failed_or_dropped']} ({reasons}); see {summary['failures_file']}")
    else:
        print("dropped or failed: 0")


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

    p = sub.add_parser(
        "encode",
        parents=[common],
        help="encode a dataset's preference pairs into VAE latents in Parquet part files",
        description="Read HPDv3 metadata, apply the bucket/pair rules, decode and resize in Rust, encode with a "
        "diffusers VAE, and write Parquet part files. Rerun the same command to resume; under torchrun each rank "
        "takes its share.",
    )
    p.add_argument("--data-root", required=True, help="folder the metadata's image paths are relative to")
    p.add_argument("--metadata", required=True, help="HPDv3 metadata: a JSON list or JSON Lines file")
    p.add_argument("--output-dir", required=True, help="where part files, manifest.json, summary.json go")
    p.add_argument("--vae", required=True, help="local diffusers folder or hub id")
    p.add_argument("--vae-subfolder", default=None, help="subfolder of --vae (default: 'vae' when present)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="VAE compute dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: CUDA when present)")
    p.add_argument("--buckets", default="hpdv3", help="'hpdv3' or a JSON file of [h, w] sizes")
    p.add_argument("--batch-size", type=_batch_size, default="auto",
                   help="images per VAE call, or 'auto' (pixel budget; halves on CUDA out-of-memory)")
    p.add_argument("--latent", default="sample", choices=["sample", "mean"],
                   help="posterior sample (seeded per image and size, the reference's choice) or mean")
    p.add_argument("--store-dtype", default="float32", choices=["float32", "float16"], help="dtype of stored latents")
    p.add_argument("--seed", type=int, default=0, help="base seed for --latent sample (default: %(default)s)")
    p.add_argument("--limit", type=_non_negative, default=None, help="only the first N metadata records")
    p.add_argument("--overwrite", action="store_true", help="discard a previous run in --output-dir (default: resume)")
    p.add_argument("--workers", type=int, default=None, help="decode threads per process (default: cores / local ranks)")
    p.add_argument("--no-share", action="store_true",
                   help="encode each image once per comparison, as the reference does (default: once per image and size)")
    p.add_argument("--rows-per-file", type=int, default=2000,
                   help="commit a part file every N rows (0: one file per rank per run; default: %(default)s)")
    p.add_argument("--alpha", default="drop", choices=["drop", "white", "black"], help="alpha handling")
    p.set_defaults(func=_cmd_encode)

    p = sub.add_parser("probe", parents=[common], help="print each image's size and bucket (header only)")
    p.add_argument("paths", nargs="+", help="image files")
    p.add_argument("--buckets", default="hpdv3", help="'hpdv3' or a JSON file of [h, w] sizes")
    p.add_argument("--workers", type=int, default=None, help="threads (default: all cores)")
    p.set_defaults(func=_cmd_probe)

    from hpd_encode import fetch, index

    index.add_subcommands(sub, common)
    fetch.add_subcommands(sub, common)
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
        print(f"hpd-encode {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
