"""CLI: ``download``, ``extract``, ``check``.

Each handler calls the public API (:mod:`hpd_encode.fetch`,
:mod:`hpd_encode.check`) and prints its report; exit status 0 on success,
1 when something was refused, damaged or unusable.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hpd_encode.check import check_dataset, image_of
from hpd_encode.cli._args import DeprecatedAlias, add_threads_option, say_error, show_progress
from hpd_encode.errors import ArchiveError
from hpd_encode.fetch import DEFAULT_MAX_MEMBER_BYTES, DEFAULT_MAX_TOTAL_BYTES, download, extract, parse_size
from hpd_encode.fetch._common import fmt_bytes, show
from hpd_encode.files import check_output


def _size_arg(text: str) -> int | None:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_output_dir(p: argparse.ArgumentParser, metavar: str, help: str) -> None:
    """``--output-dir`` (required), with ``--out`` as a hidden deprecated alias."""
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--output-dir", type=Path, metavar=metavar, help=help)
    group.add_argument("--out", dest="output_dir", type=Path, action=DeprecatedAlias, new="--output-dir")


def _cmd_download(args: argparse.Namespace) -> int:
    try:
        report = download(
            args.repo_id, args.output_dir, revision=args.revision, include=args.include, source=args.from_dir
        )
    except ImportError as e:
        say_error(f"hpd-encode download: error: {e}")
        return 1
    if args.json:
        print(json.dumps(report.to_dict()))
    elif args.from_dir is not None:
        print(
            f"{len(report.files)} files in '{report.out}': copied {len(report.copied)} "
            f"({fmt_bytes(report.bytes_copied)}), kept {len(report.skipped)} already present"
        )
    else:
        print(f"{len(report.files)} files in '{report.out}'")
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    try:
        report = extract(
            args.parts,
            args.output_dir,
            max_member_bytes=args.max_file_size,
            max_total_bytes=args.max_total_size,
            progress=show_progress(args),
        )
    except ArchiveError as e:
        if args.json:
            print(json.dumps({**e.report.to_dict(), "error": str(e)}))
        say_error(f"hpd-encode extract: error: {e}")
        return 1
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(
            f"extracted {report.extracted} files ({fmt_bytes(report.bytes_written)}) into '{report.root}', "
            f"skipped {report.skipped} already present, refused {len(report.refused)} members"
        )
        for r in report.refused[: args.show]:
            print(f"  refused '{show(r.name)}': {r.reason}")
        if len(report.refused) > args.show:
            print(f"  … and {len(report.refused) - args.show} more (see the log, or use --json)")
    return 0 if report.ok else 1


def _cmd_check(args: argparse.Namespace) -> int:
    if args.report:
        check_output(args.report, "--report")  # before the probe: a refused path costs nothing
    report = check_dataset(
        args.data_root, args.metadata, num_threads=args.num_threads, progress=show_progress(args)
    )
    if args.report:
        report.write_csv(args.report)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(
            f"{report.ok} of {report.records} records have both images present and readable; "
            f"{report.failed_records} do not"
        )
        for reason, n in sorted(report.counts.items()):
            print(f"  {reason}: {n}")
        for f in report.failures[: args.show]:
            where = f" '{image_of(f)}'" if image_of(f) else ""
            print(f"  record {f.record_index}{where}: {f.kind}: {f.detail}")
        if len(report.failures) > args.show:
            more = "; all in --report" if args.report else "; write them all with --report FILE.csv"
            print(f"  … and {len(report.failures) - args.show} more{more}")
        if args.report:
            print(f"failures written to '{args.report}'")
    return 0 if report.failed_records == 0 else 1


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``download``, ``extract`` and ``check`` on an argparse
    subparsers object. Each sets ``func`` (namespace -> exit code)."""
    p = sub.add_parser(
        "download",
        parents=[common],
        help="download a dataset repository from the Hugging Face hub (or copy a local mirror)",
        description="Download dataset repository REPO_ID (e.g. MizzenAI/HPDv3) into --output-dir with "
        "huggingface_hub.snapshot_download; rerun to resume. With --from-dir, copy from a local directory "
        "instead (same --include rules; files already present with the right size are kept). "
        "Exit status 0 on success, 1 on error.",
    )
    p.add_argument("repo_id", metavar="REPO_ID", help="hub dataset id, e.g. MizzenAI/HPDv3")
    _add_output_dir(p, "DIR", "directory to download into (--out is a deprecated alias)")
    p.add_argument("--revision", default=None, help="branch, tag or commit (default: the main branch)")
    p.add_argument(
        "--include",
        nargs="+",
        action="extend",
        default=None,
        metavar="PATTERN",
        help="only files matching these globs ('*' also matches '/'; 'dir/' = all below dir), "
        "e.g. --include '*.json' 'images.tar.gz.*'",
    )
    p.add_argument(
        "--from-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="copy from this local directory instead of the hub (a mirror, clone or cache snapshot)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser(
        "extract",
        parents=[common],
        help="safely extract split image archives (images.tar.gz.part-*) into a data root",
        description="Stream the parts of a tar.gz (or tar) archive, in natural name order, as one stream and "
        "extract its regular files into --output-dir. Refuses absolute paths, '..', links, devices, "
        "oversized files and names the filesystem cannot hold (listed, extraction goes on); never writes "
        "outside --output-dir. Resumable: complete files are skipped. One extract per data root at a time "
        "(a second one is refused). Exit status 0 when every member was extracted, 1 when some were "
        "refused or the archive is damaged or truncated (the error names the part).",
    )
    p.add_argument(
        "parts",
        nargs="+",
        metavar="DIR_OR_PARTS",
        help="a directory holding the archive parts, or the part files",
    )
    _add_output_dir(p, "ROOT", "data root to extract into (--out is a deprecated alias)")
    p.add_argument(
        "--max-file-size",
        type=_size_arg,
        default=DEFAULT_MAX_MEMBER_BYTES,
        metavar="SIZE",
        help="refuse members larger than this (default: 1G; 'none' for no limit)",
    )
    p.add_argument(
        "--max-total-size",
        type=_size_arg,
        default=DEFAULT_MAX_TOTAL_BYTES,
        metavar="SIZE",
        help="stop before writing more than this in one run (default: 4T; 'none' for no limit)",
    )
    p.add_argument(
        "--show", type=int, default=20, metavar="N", help="list at most N refused members (default: 20)"
    )
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.set_defaults(func=_cmd_extract)

    p = sub.add_parser(
        "check",
        parents=[common],
        help="count the records whose two images are present and readable",
        description="Read the metadata, resolve each record's two image paths under --data-root and probe the "
        "image headers. Prints how many records are usable and why the others are not (bad_record, "
        "unsafe_path, missing, unreadable). Exit status 0 when every record is usable, 1 otherwise.",
    )
    p.add_argument("--data-root", required=True, type=Path, help="directory the image paths are relative to")
    p.add_argument("--metadata", required=True, type=Path, help="train.json (JSON list or JSON Lines)")
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="FILE.csv",
        help="write every failure (index, reason, path, detail) to this CSV file",
    )
    add_threads_option(p, "probe threads (default: all cores)")
    p.add_argument("--show", type=int, default=20, metavar="N", help="print at most N failures (default: 20)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=_cmd_check)
