"""CLI: ``verify`` and ``repack`` (reading and rewriting part files).

``verify OUTPUT_DIR``: exit 0 when every row reads and checks out, 1 when
there is any problem (or the directory is refused: an encode still running or
interrupted, unless ``--allow-partial``). ``repack SRC DEST``: exit 0 when
every part file is in DEST in the random-access layout.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from hpd_encode.cli._args import add_latent_compression_option, add_threads_option, show_progress


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``verify`` and ``repack`` on the subparsers object (``common`` carries -v/-q)."""
    p = sub.add_parser(
        "verify",
        parents=[common],
        help="read and check every row of an output directory",
        description="Read every latent of every part file and check its .npy header, dtype, shape "
        "(against latent*_shape), that its values are finite, that record_index is unique, and that the "
        "part files agree with manifest.json. Every problem names its file, row group and row. "
        "Exit status 1 on any problem.",
    )
    p.add_argument(
        "output_dir", metavar="OUTPUT_DIR", help="an encode output directory (or any directory of part files)"
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="verify a directory whose encode run has not completed (what is committed so far)",
    )
    add_threads_option(p, "reader threads (default: all cores)")
    p.set_defaults(func=run_verify)

    p = sub.add_parser(
        "repack",
        parents=[common],
        help="rewrite part files into the random-access layout",
        description="Rewrite the part files of SRC (written by the reference, by pyarrow, or by earlier "
        "versions) into DEST with every latent value in its own page and the page index written, so one "
        "pair reads with two small reads. Values, schema and row groups are unchanged; files are written "
        "atomically and a rerun skips those already done.",
    )
    p.add_argument("src", metavar="SRC", help="directory of part files to read")
    p.add_argument("dest", metavar="DEST", help="directory to write (not SRC, not inside it)")
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="repack a source whose encode run has not completed (what is committed so far)",
    )
    add_latent_compression_option(p, " (as the reference)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=run_repack)


def run_verify(args: argparse.Namespace) -> int:
    from hpd_encode.latents.verify import verify

    report = verify(
        args.output_dir,
        allow_partial=args.allow_partial,
        progress=show_progress(args),
        num_threads=args.num_threads,
    )
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(report.summary())
    return 0 if report.ok else 1


def run_repack(args: argparse.Namespace) -> int:
    from hpd_encode.latents.repack import repack

    report = repack(
        args.src,
        args.dest,
        allow_partial=args.allow_partial,
        progress=show_progress(args),
        latent_compression=args.latent_compression,
    )
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(
            f"repacked {len(report.files_written)} part files ({report.rows} rows in all, "
            f"{len(report.files_skipped)} already done) from '{report.src_dir}' into '{report.dest_dir}' "
            f"in {report.seconds:.1f} s"
        )
    return 0
