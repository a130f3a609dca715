"""CLI: ``index`` (the bucket index CSV of part files; :mod:`hpd_encode.index`).

Exit status 0 on success; 1 (one line on stderr) when a source, a filter or an
output path is refused: an encode run that has not completed (unless
``--allow-partial``), an output that would overwrite a part file or another
Parquet file, ``--plot`` without matplotlib.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hpd_encode.cli._args import DeprecatedAlias


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``index`` on the subparsers object (``common`` carries -v/-q)."""
    # The filter fields are named in --help; the builder loads on first use.
    from hpd_encode.index.filters import EXAMPLE_WHERE, FILTER_FIELDS

    p = sub.add_parser(
        "index",
        parents=[common],
        help="build the bucket index CSV of part files",
        description="Scan part files lazily (never the latents) and write the bucket index CSV "
        "(global_id, parquet_path, row_group, row_index, width, height, bucket_id), identical to the "
        "reference's for the same files, filter and cap. Filter fields: " + ", ".join(FILTER_FIELDS) + ".",
    )
    p.add_argument(
        "--parquet-dir",
        required=True,
        nargs="+",
        metavar="DIR_OR_GLOB",
        help="a directory of *.parquet part files, a glob, or files",
    )
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument(
        "--output", metavar="CSV", help="where to write the index (--out-index is a deprecated alias)"
    )
    out.add_argument("--out-index", dest="output", action=DeprecatedAlias, new="--output")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--where",
        metavar="EXPR",
        help=f"SQL condition a row must meet, e.g. {EXAMPLE_WHERE!r}",
    )
    group.add_argument(
        "--filter",
        metavar="MODULE:FUNCTION",
        help="Python function taking a row dict, returning true to keep it (slow: per row)",
    )
    p.add_argument(
        "--max-per-prompt",
        type=int,
        metavar="N",
        default=8,
        help="keep at most N rows per prompt after the shuffle; 0: no cap (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=42, help="shuffle seed (default: %(default)s)")
    p.add_argument("--no-shuffle", action="store_true", help="cap per prompt in file order instead")
    p.add_argument(
        "--buckets", default="hpdv3", help="'hpdv3' or a JSON file of [h, w] sizes (default: %(default)s)"
    )
    p.add_argument("--stats", metavar="JSON", help="write the counts (per step, bucket, model) here")
    p.add_argument(
        "--plot", metavar="PNG", help="write a bar chart of rows per bucket here (needs the 'plot' extra)"
    )
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="index an encode output directory whose run has not completed (what is committed so far)",
    )
    p.add_argument(
        "--allow-mixed",
        action="store_true",
        help="index part files whose latents were made differently (their footers' provenance differs: "
        "VAE, normalisation, latent mode, dtype, seed or bucket set); refused by default",
    )
    p.set_defaults(func=run_index)


def run_index(args: argparse.Namespace) -> int:
    """The ``index`` subcommand: check, build, write, report. Returns the exit status."""
    from hpd_encode.files import write_output
    from hpd_encode.index.build import build_index_with_stats
    from hpd_encode.index.filters import IndexFilter, load_callable
    from hpd_encode.index.parts import find_part_files, refuse_overwriting_inputs
    from hpd_encode.index.plot import plot_buckets, require_matplotlib
    from hpd_encode.index.table import write_index

    if args.plot:
        require_matplotlib()  # before the scan: a missing extra costs nothing
    paths = find_part_files(args.parquet_dir)
    refuse_overwriting_inputs({"--output": args.output, "--stats": args.stats, "--plot": args.plot}, paths)
    flt: IndexFilter = None
    if args.where:
        flt = args.where
    elif args.filter:
        flt = load_callable(args.filter)
    df, stats = build_index_with_stats(
        paths,
        per_model=bool(args.stats),
        filter=flt,
        max_per_prompt=args.max_per_prompt or None,
        seed=args.seed,
        shuffle=not args.no_shuffle,
        buckets=args.buckets,
        allow_partial=args.allow_partial,
        allow_mixed=args.allow_mixed,
    )
    write_index(df, args.output)
    if args.stats:
        text = json.dumps(stats.to_dict(), indent=2) + "\n"
        write_output(args.stats, "--stats", lambda fh: fh.write(text.encode()))
    if args.plot:
        plot_buckets(stats, args.plot)
    filtered_out = stats.rows_in - stats.malformed - stats.after_filter
    print(
        f"indexed {stats.indexed:,} of {stats.rows_in:,} rows from {stats.files} file(s) "
        f"into {args.output} "
        f"({stats.malformed:,} malformed, {filtered_out:,} filtered out, "
        f"{stats.after_filter - stats.after_cap:,} over the per-prompt cap, "
        f"{stats.not_in_buckets:,} not in a bucket)"
    )
    for directory, status in stats.incomplete_outputs.items():
        print(
            f"hpd-encode index: warning: '{directory}' holds an encode run that has not completed "
            f"(manifest status {status!r}); indexed {stats.indexed:,} of the {stats.rows_in:,} rows "
            "committed so far",
            file=sys.stderr,
        )
    return 0
