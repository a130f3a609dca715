"""The one failure record: from metadata to ``failures.csv`` and the check report.

A record that is dropped or fails at any stage becomes one :class:`Failure`.
``kind`` is the short machine-readable reason (``bad_record``,
``unsafe_path``, ``unreadable_image``, a pair-rule drop reason,
``decode_error``, ``nonfinite_latent``, ``write_error``); ``detail`` says
what exactly, naming the file. ``reason`` (``"kind: detail"``) is the
``failures.csv`` column, unchanged from earlier versions.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path

#: The columns of ``failures.csv``.
CSV_COLUMNS = ("record_index", "image1_path", "image2_path", "stage", "reason")


@dataclass(frozen=True)
class Failure:
    record_index: int
    stage: str
    kind: str
    detail: str
    image1_path: str = ""
    image2_path: str = ""

    @property
    def reason(self) -> str:
        return f"{self.kind}: {self.detail}"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def count_by(failures: Iterable[Failure], field: str) -> dict[str, int]:
    """Counts of ``field`` (``kind`` or ``stage``), sorted by key."""
    return dict(sorted(Counter(getattr(f, field) for f in failures).items()))


def write_failures_csv(path: str | PathLike[str], failures: Iterable[Failure]) -> None:
    """Write ``failures.csv`` atomically (a temporary file renamed into place)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            for fl in sorted(failures, key=lambda x: x.record_index):
                w.writerow([fl.record_index, fl.image1_path, fl.image2_path, fl.stage, fl.reason])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
