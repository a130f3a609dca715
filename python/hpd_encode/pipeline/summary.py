"""The results of an encode run (:class:`EncodeSummary`) and of a dry run
(:class:`PlanReport`), as typed records with ``to_dict()`` and a short
human-readable form."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hpd_encode.errors import UnknownKeyError


@dataclass(frozen=True)
class EncodeSummary:
    """What an encode run did (also written to ``OUTPUT_DIR/summary.json``)."""

    status: str
    output_dir: str
    records_in_metadata: int
    records_already_done: int
    pairs_planned: int
    rows_written: int
    rows_total: int
    images_decoded: int
    images_encoded: int
    vae_calls: int
    max_pending_latents: int
    failed_or_dropped: int
    by_reason: dict[str, int]
    by_stage: dict[str, int]
    world_size: int
    elapsed_seconds: float
    encode_seconds: float
    rows_per_second: float | None
    images_per_second: float | None
    writer_blocked_seconds: float
    settings: dict[str, Any]
    files: list[dict[str, Any]]
    failures_file: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __getitem__(self, key: str) -> Any:
        """``summary["rows_written"]``: the dict-style access of earlier versions."""
        try:
            return getattr(self, key)
        except AttributeError:
            raise UnknownKeyError(key) from None

    def lines(self) -> list[str]:
        """A short human-readable account of the run."""
        out = [
            f"output:            {self.output_dir}",
            f"records:           {self.records_in_metadata} in metadata, "
            f"{self.records_already_done} already done before this run",
            f"rows written:      {self.rows_written} this run, {self.rows_total} in total "
            f"({len(self.files)} part files)",
            f"images:            {self.images_decoded} decoded, {self.images_encoded} VAE-encoded "
            f"in {self.vae_calls} calls",
            f"time:              {self.elapsed_seconds:.1f} s total"
            + (f", {self.rows_per_second:.2f} rows/s while encoding" if self.rows_per_second else ""),
        ]
        if self.failed_or_dropped:
            reasons = ", ".join(f"{k}: {v}" for k, v in self.by_reason.items())
            out.append(f"dropped or failed: {self.failed_or_dropped} ({reasons}); see {self.failures_file}")
        else:
            out.append("dropped or failed: 0")
        return out


@dataclass(frozen=True)
class PlanReport:
    """What ``encode --dry-run`` found: the plan, without encoding anything."""

    records: int  # entries in the metadata (after --limit), good or bad
    records_already_done: int
    rows_planned: int  # pairs that pass the pair rules (all ranks)
    dropped: int
    dropped_by_reason: dict[str, int]
    jobs: int  # distinct (image, target size) encodes (all ranks)
    vae_images: int  # images through the VAE (= jobs)
    images_probed: int
    batches_per_bucket: dict[str, int]  # "HxW" -> batches (this rank)
    world_size: int
    rank: int
    rank_rows: int
    rank_jobs: int
    pixel_cost_per_rank: list[int]
    balance: float  # max / mean pixel cost over ranks (1.0 = perfect)
    plan_seconds: float
    peak_rss_mb: float
    stages: dict[str, float] = field(default_factory=dict)  # seconds per planning stage
    plan_cpu_seconds: float = 0.0  # CPU time (user + system, all threads) of this process while planning
    stages_cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per planning stage

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        reasons = ", ".join(f"{k}: {v}" for k, v in self.dropped_by_reason.items()) or "none"
        batches = ", ".join(f"{k}: {v}" for k, v in self.batches_per_bucket.items()) or "none"
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in self.stages.items())
        return [
            f"records:           {self.records} in metadata, {self.records_already_done} already done",
            f"rows planned:      {self.rows_planned}; dropped or bad: {self.dropped} ({reasons})",
            f"VAE images:        {self.vae_images} distinct (image, size) jobs from {self.images_probed} images",
            f"rank {self.rank} of {self.world_size}:      {self.rank_rows} rows, {self.rank_jobs} jobs; "
            f"batches per size: {batches}",
            f"pixel cost/rank:   {', '.join(f'{c / 1e6:.1f} MP' for c in self.pixel_cost_per_rank)} "
            f"(max/mean {self.balance:.3f})",
            f"planning:          {self.plan_seconds:.2f} s ({self.plan_cpu_seconds:.2f} s of CPU), "
            f"peak RSS {self.peak_rss_mb:.0f} MB ({stages})",
        ]
