"""CLI: ``verify``, ``repack`` and ``push`` (reading, rewriting and uploading part files).

``verify OUTPUT_DIR``: exit 0 when every row reads and checks out, 1 when
there is any problem (or the directory is refused: an encode still running or
interrupted, unless ``--allow-partial``); with ``--reencode N`` it then
re-encodes N random rows from their source images and compares (exit 1 when
any row differs). ``repack SRC DEST``: exit 0 when every part file is in
DEST in the random-access layout.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hpd_encode.cli._args import (
    add_latent_compression_option,
    add_threads_option,
    arg_type,
    non_negative_int,
    positive_int,
    show_progress,
)
from hpd_encode.errors import OptionError


def _tolerance(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise OptionError(f"must be a positive number, not {text!r}")
    return value


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``verify``, ``repack`` and ``push`` on the subparsers object (``common`` carries -v/-q)."""
    p = sub.add_parser(
        "verify",
        parents=[common],
        help="read and check every row of an output directory",
        description="Read every latent of every part file and check its bytes against its stored checksum, "
        "its .npy header, dtype, shape (against latent*_shape), that its values are finite; decode every "
        "page of the other columns; check that record_index is unique and that the part files agree with "
        "manifest.json (each file's digest when it records one). Every problem names its file, row group "
        "and row. With --reencode N, then encode N random rows again from their source images with the "
        "recorded settings and name every row that differs. Exit status 1 on any problem.",
    )
    p.add_argument(
        "output_dir",
        metavar="OUTPUT_DIR",
        help="an encode output directory (or any directory of part files), or an s3://bucket/prefix",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="verify a directory whose encode run has not completed (what is committed so far)",
    )
    add_threads_option(p, "reader threads (default: all cores)")
    g = p.add_argument_group("re-encoding (needs the 'encode' extra: torch, diffusers)")
    g.add_argument(
        "--reencode",
        type=positive_int,
        metavar="N",
        help="re-encode N random rows (all when N >= the row count) from their source images and compare",
    )
    g.add_argument(
        "--seed", type=non_negative_int, default=0, help="which rows --reencode picks (default: 0)"
    )
    g.add_argument("--data-root", help="where the images are now (default: as manifest.json records)")
    g.add_argument("--metadata", help="the metadata file now (default: as manifest.json records)")
    g.add_argument("--vae", help="the VAE folder or hub id now (default: as manifest.json records)")
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when present)")
    g.add_argument(
        "--tolerance",
        type=arg_type(_tolerance),
        help="largest relative RMS difference of a latent (default: by the recorded compute dtype; see README)",
    )
    g.add_argument(
        "--preview",
        metavar="PNG",
        help="write a contact sheet of the first rows re-encoded: source | stored latent decoded | "
        "difference, with PSNR (needs the 'plot' extra)",
    )
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
    p.add_argument("src", metavar="SRC", help="directory (or s3://bucket/prefix) of part files to read")
    p.add_argument(
        "dest", metavar="DEST", help="directory (or s3://bucket/prefix) to write (not SRC, not inside it)"
    )
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="repack a source whose encode run has not completed (what is committed so far)",
    )
    add_latent_compression_option(p, " (as the reference)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=run_repack)

    p = sub.add_parser(
        "push",
        parents=[common],
        help="upload an output directory to object storage (s3://)",
        description="Upload OUTPUT_DIR to s3://bucket/prefix: the committed part files first (multipart for "
        "large ones), then failures.csv and summary.json, manifest.json last. Resumable: objects already "
        "there with the same size and checksum are skipped. Each object is checked after its upload. "
        "Credentials and endpoint come from the AWS_* variables or AWS_PROFILE; plain http needs "
        "AWS_ALLOW_HTTP=true.",
    )
    p.add_argument("output_dir", metavar="OUTPUT_DIR", help="an encode or repack output directory")
    p.add_argument("url", metavar="URL", help="s3://bucket/prefix to upload into")
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="push a directory whose encode run has not completed, or is still running (what is committed)",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=run_push)


def run_verify(args: argparse.Namespace) -> int:
    from hpd_encode.latents.verify import verify

    if args.reencode is None and any(
        getattr(args, k) is not None
        for k in ("data_root", "metadata", "vae", "device", "tolerance", "preview")
    ):
        print(
            "hpd-encode verify: error: --data-root, --metadata, --vae, --device, --tolerance and --preview "
            "go with --reencode N (see hpd-encode verify --help)",
            file=sys.stderr,
        )
        return 2
    if args.preview:
        from hpd_encode.index.plot import require_matplotlib

        require_matplotlib("--preview")  # before any work
    report = verify(
        args.output_dir,
        allow_partial=args.allow_partial,
        progress=show_progress(args),
        num_threads=args.num_threads,
    )
    out: dict[str, Any] = report.to_dict()
    ok = report.ok
    if not args.json:
        print(report.summary())
    if args.reencode is not None and report.ok:
        from hpd_encode.latents.reencode import reencode_check

        again = reencode_check(
            args.output_dir,
            args.reencode,
            seed=args.seed,
            data_root=args.data_root,
            metadata=args.metadata,
            vae=args.vae,
            device=args.device,
            tolerance=args.tolerance,
            preview=args.preview,
            allow_partial=args.allow_partial,
            num_threads=args.num_threads,
        )
        out["reencode"] = again.to_dict()
        ok = ok and again.ok
        if not args.json:
            print(again.summary())
    if args.json:
        print(json.dumps(out))
    return 0 if ok else 1


def run_push(args: argparse.Namespace) -> int:
    from hpd_encode.transfer import push

    report = push(args.output_dir, args.url, allow_partial=args.allow_partial, progress=not args.json)
    text = (
        f"pushed '{report.output_dir}' to {report.url}: {len(report.uploaded)} objects uploaded "
        f"({report.bytes('uploaded') / 1e6:.1f} MB), {len(report.skipped)} already there, "
        f"in {report.seconds:.1f} s"
    )
    if report.extra:
        text += f"\nnote: {len(report.extra)} other objects under the prefix were left as they are: {report.extra[:5]}"
    print(json.dumps(report.to_dict()) if args.json else text)
    return 0


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
