"""Checking a dataset: which metadata records have both images present and
readable, and why the others do not.

It is the encode job's first stage alone: :func:`hpd_encode.pipeline.survey`
reads the metadata and probes every distinct image header (in Rust, opened
beneath the data root); here each problem becomes a :class:`Failure` naming
the record and the image concerned.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import polars as pl

from hpd_encode._core import PROBE_MISSING, PROBE_OK, PROBE_UNSAFE_PATH
from hpd_encode.errors import InputNotFoundError
from hpd_encode.failures import Failure, count_by
from hpd_encode.pipeline.survey import survey

__all__ = ["CheckReport", "check_dataset"]

#: Probe outcome -> (stage, kind) of a check failure.
_KINDS = {PROBE_UNSAFE_PATH: ("path", "unsafe_path"), PROBE_MISSING: ("probe", "missing")}
_UNREADABLE = ("probe", "unreadable")


@dataclass
class CheckReport:
    """What :func:`check_dataset` found: one :class:`Failure` per problem (a
    record with two bad images has two, each naming its image)."""

    data_root: Path
    metadata: Path
    records: int  # entries in the metadata file, valid or not
    ok: int  # records whose two images are present and readable
    failures: list[Failure] = field(default_factory=list)
    images_checked: int = 0  # distinct image files probed

    @property
    def failed_records(self) -> int:
        return self.records - self.ok

    @property
    def counts(self) -> dict[str, int]:
        """Failures per kind."""
        return count_by(self.failures, "kind")

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_root": str(self.data_root),
            "metadata": str(self.metadata),
            "records": self.records,
            "ok": self.ok,
            "failed_records": self.failed_records,
            "images_checked": self.images_checked,
            "failure_counts": self.counts,
        }

    def write_csv(self, path: str | PathLike[str]) -> None:
        """Write the failures, one row per problem: index, reason, path, detail."""
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["index", "reason", "path", "detail"])
            for fail in self.failures:
                w.writerow([fail.record_index, fail.kind, image_of(fail), fail.detail])


def image_of(failure: Failure) -> str:
    """The image a check failure concerns ("" for a bad metadata record)."""
    return "" if failure.stage == "metadata" else failure.image1_path or failure.image2_path


def check_dataset(
    data_root: str | PathLike[str],
    metadata: str | PathLike[str],
    *,
    num_threads: int | None = None,
    progress: bool = False,
) -> CheckReport:
    """Check that every record's two images are present and readable.

    Reads ``metadata`` (JSON list or JSON Lines) and probes each distinct image
    header beneath ``data_root`` (paths that are absolute, contain ``..`` or
    lead out of the root through a symlink are refused, never opened).
    """
    root, meta = Path(data_root), Path(metadata)
    if not root.is_dir():
        raise InputNotFoundError(f"data root '{root}' is not a directory")
    s = survey(root, meta, num_threads=num_threads, progress=progress)
    failures = [f for f in s.failures if f.stage == "metadata"]
    images = s.images
    kind = images["kind"].to_numpy()
    error = images["error"].to_list()
    bad = s.records.filter(~pl.col("pairable")).select("record_index", "path1", "path2", "id1", "id2")
    for idx, p1, p2, i1, i2 in bad.iter_rows():
        for image_id, path, first in ((i1, p1, True), (i2, p2, False)):
            if kind[image_id] == PROBE_OK or (not first and image_id == i1):
                continue
            stage, what = _KINDS.get(int(kind[image_id]), _UNREADABLE)
            failures.append(
                Failure(
                    idx,
                    stage,
                    what,
                    error[image_id] or "unknown error",
                    path if first else "",
                    "" if first else path,
                )
            )
    failures.sort(key=lambda f: f.record_index)
    probed = int((kind != PROBE_UNSAFE_PATH).sum() - (kind == PROBE_MISSING).sum())
    return CheckReport(
        data_root=root,
        metadata=meta,
        records=s.n_entries,
        ok=s.records.height - bad.height,
        failures=failures,
        images_checked=probed,
    )
