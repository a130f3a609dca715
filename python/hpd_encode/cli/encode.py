"""CLI: ``demo``, ``encode``, ``probe``."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from hpd_encode.cli._args import (
    add_latent_compression_option,
    add_threads_option,
    arg_type,
    non_negative_int,
    positive_int,
    show_progress,
)


def _cmd_demo(args: argparse.Namespace) -> int:
    from hpd_encode.demo import run_demo

    return run_demo(args.output_dir, pairs=args.pairs, num_threads=args.num_threads)


def _cmd_encode(args: argparse.Namespace) -> int:
    from hpd_encode.pipeline import EncodeOptions, run
    from hpd_encode.pipeline.options import resolve_device

    try:
        opts = EncodeOptions.create(
            args.data_root,
            args.metadata,
            args.output_dir,
            args.vae,
            vae_subfolder=args.vae_subfolder,
            dtype=args.dtype,
            device=args.device,
            buckets=args.buckets,
            batch_size=args.batch_size,
            latent=args.latent,
            store_dtype=args.store_dtype,
            seed=args.seed,
            limit=args.limit,
            overwrite=args.overwrite,
            num_threads=args.num_threads,
            share=not args.no_share,
            rows_per_file=args.rows_per_file,
            latent_compression=args.latent_compression,
            alpha=args.alpha,
            compile=args.compile,
            progress=show_progress(args),
            dry_run=args.dry_run,
            **({} if args.max_pixels is None else {"max_pixels": args.max_pixels}),
        )
        if not opts.dry_run:
            resolve_device(opts.encoder.device)  # CUDA asked for but absent: a usage error, before any output
    except (ValueError, TypeError) as e:  # a bad option value: a usage error (a missing file stays exit 1)
        args.parser.error(str(e))
    if not opts.dry_run and args.json:
        args.parser.error("--json goes with --dry-run")
    result = run(opts)
    if os.environ.get("RANK", "0") == "0":
        if args.json:
            print(json.dumps(result.to_dict()))
        else:
            for line in result.lines():
                print(line)
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from hpd_encode import load_bucket_set, probe_images

    buckets = load_bucket_set(args.buckets)  # (a BucketSet already, from the parser)
    sizes, errors = probe_images(args.paths, num_threads=args.num_threads)
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


def _device(value: str) -> str | None:
    from hpd_encode.pipeline.options import parse_device

    return parse_device(value)


def _batch_size(value: str) -> Any:
    from hpd_encode.pipeline.options import parse_batch_size

    return parse_batch_size(value)


def _buckets(value: str) -> Any:
    from hpd_encode.buckets import load_bucket_set

    return load_bucket_set(value)  # read once, here: a bad file is a usage error


def add_buckets_option(p: argparse.ArgumentParser) -> None:
    """``--buckets hpdv3|FILE``: parsed (the file read) once, by the parser."""
    p.add_argument(
        "--buckets", type=arg_type(_buckets), default="hpdv3", help="'hpdv3' or a JSON file of [h, w] sizes"
    )


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "demo",
        parents=[common],
        help="run the whole job on a small generated dataset with a tiny random VAE",
        description="Generate a small HPDv3-shaped dataset and a tiny random-weight VAE, run the pipeline "
        "on CPU, and print a summary.",
    )
    p.add_argument(
        "--output-dir", default="demo-output", help="where the dataset and results go (default: %(default)s)"
    )
    p.add_argument(
        "--pairs",
        type=positive_int,
        default=36,
        help="number of comparisons to generate (default: %(default)s)",
    )
    add_threads_option(p, "decode threads (default: all cores)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "encode",
        parents=[common],
        help="encode a dataset's preference pairs into VAE latents in Parquet part files",
        description="Read HPDv3 metadata, apply the bucket/pair rules, decode and resize in Rust, encode with a "
        "diffusers VAE, and write Parquet part files. Rerun the same command to resume; under torchrun each rank "
        "takes its share. --dry-run plans without encoding or writing anything.",
    )
    p.add_argument("--data-root", required=True, help="folder the metadata's image paths are relative to")
    p.add_argument("--metadata", required=True, help="HPDv3 metadata: a JSON list or JSON Lines file")
    p.add_argument(
        "--output-dir",
        default=None,
        help="where part files, manifest.json, summary.json go (required unless --dry-run)",
    )
    p.add_argument("--vae", default=None, help="local diffusers folder or hub id (required unless --dry-run)")
    p.add_argument("--vae-subfolder", default=None, help="subfolder of --vae (default: 'vae' when present)")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="VAE compute dtype (auto: bfloat16 on CUDA, float32 on CPU)",
    )
    p.add_argument(
        "--device",
        type=arg_type(_device),
        default=None,
        help="cuda, cuda:1, cpu (default: CUDA when present)",
    )
    add_buckets_option(p)
    p.add_argument(
        "--batch-size",
        type=arg_type(_batch_size),
        default=None,
        help="images per VAE call, or 'auto' (default: a pixel budget; halves on CUDA out-of-memory)",
    )
    p.add_argument(
        "--latent",
        default="sample",
        choices=["sample", "mean"],
        help="posterior sample (seeded per image and size, the reference's choice) or mean",
    )
    p.add_argument(
        "--store-dtype", default="float32", choices=["float32", "float16"], help="dtype of stored latents"
    )
    p.add_argument(
        "--seed", type=arg_type(int), default=0, help="base seed for --latent sample (default: %(default)s)"
    )
    p.add_argument("--limit", type=non_negative_int, default=None, help="only the first N metadata records")
    p.add_argument(
        "--overwrite", action="store_true", help="discard a previous run in --output-dir (default: resume)"
    )
    add_threads_option(p, "decode threads per process (default: cores / local ranks)")
    p.add_argument(
        "--no-share",
        action="store_true",
        help="encode each image once per comparison, as the reference does (default: once per image and size)",
    )
    p.add_argument(
        "--rows-per-file",
        type=non_negative_int,
        default=2000,
        help="commit a part file every N rows (0: one file per rank per run; default: %(default)s)",
    )
    add_latent_compression_option(p)
    p.add_argument("--alpha", default="drop", choices=["drop", "white", "black"], help="alpha handling")
    p.add_argument(
        "--compile",
        nargs="?",
        const=True,
        default=False,
        metavar="BACKEND",
        help="run the VAE encoder through torch.compile (backend: inductor unless named); "
        "falls back, with a warning, when compilation fails",
    )
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=None,
        help="refuse images with more pixels than this, from the header (default: 128 MP)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="plan only: report rows, drops, jobs, batches and the split across ranks; no VAE, no output",
    )
    p.add_argument(
        "--json", action="store_true", help="with --dry-run: print the plan report as one JSON object"
    )
    p.set_defaults(func=_cmd_encode, parser=p)

    p = sub.add_parser("probe", parents=[common], help="print each image's size and bucket (header only)")
    p.add_argument("paths", nargs="+", help="image files")
    add_buckets_option(p)
    add_threads_option(p, "threads (default: all cores)")
    p.set_defaults(func=_cmd_probe)
