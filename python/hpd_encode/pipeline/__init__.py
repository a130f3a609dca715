"""The encode job, as stages with typed hand-offs:

``EncodeOptions.create`` (validate once) -> :func:`survey` (metadata + probed
image sizes, columns) -> :func:`apply_pair_rules` -> :func:`partition` /
:func:`order_and_batch` (this rank's :class:`RankPlan`) -> :class:`Encoder`
(decode in Rust, VAE in torch, rows to the Rust writer) -> :func:`finish`
(rank 0: ``failures.csv``, ``manifest.json``, ``summary.json``, an
:class:`EncodeSummary`).

See :func:`encode`. The CLI's ``hpd-encode encode`` is a thin layer over it.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from dataclasses import replace
from os import PathLike
from typing import Any

import polars as pl

from hpd_encode import _core
from hpd_encode.buckets import bucket_set_spec
from hpd_encode.dist import Dist, init_dist
from hpd_encode.errors import OutputBusyError
from hpd_encode.failures import Failure, count_by, write_failures_csv
from hpd_encode.output_dir import (
    FAILURES,
    MANIFEST,
    SUMMARY,
    OutputLock,
    PartRotator,
    committed_files,
    done_records,
    file_sha256,
    list_part_files,
    prepare_output,
    read_lock_holder,
    read_manifest,
    record_file,
    vae_identity,
    write_json_atomic,
)
from hpd_encode.pipeline.encoder import Encoder, Progress, RankResult
from hpd_encode.pipeline.options import (
    EncodeOptions,
    EncoderOptions,
    OutputOptions,
    PlanOptions,
    SurveyOptions,
    resolve_device,
    vae_is_object,
)
from hpd_encode.pipeline.plan import RankPlan, Split, apply_pair_rules, order_and_batch, partition, plan
from hpd_encode.pipeline.summary import EncodeSummary, PlanReport
from hpd_encode.pipeline.survey import Survey, cpu_seconds, survey
from hpd_encode.provenance import encode_provenance, footer_entries
from hpd_encode.vae import LatentEncoder, VaeFolder, find_vae

log = logging.getLogger("hpd_encode.encode")

__all__ = [
    "EncodeOptions",
    "EncoderOptions",
    "OutputOptions",
    "PlanOptions",
    "SurveyOptions",
    "EncodeSummary",
    "Encoder",
    "PlanReport",
    "RankPlan",
    "Split",
    "Survey",
    "apply_pair_rules",
    "encode",
    "list_part_files",
    "order_and_batch",
    "partition",
    "run",
    "survey",
]


def encode(
    data_root: str | PathLike[str],
    metadata: str | PathLike[str],
    output_dir: str | PathLike[str] | None,
    vae: str | PathLike[str] | LatentEncoder | None,
    **options: Any,
) -> EncodeSummary | PlanReport:
    """Encode an HPDv3-style dataset into Parquet part files in ``output_dir``.

    ``options`` are the fields of :class:`EncodeOptions` (``vae_subfolder``,
    ``dtype``, ``device``, ``buckets``, ``batch_size``, ``latent``,
    ``store_dtype``, ``seed``, ``limit``, ``overwrite``, ``num_threads``,
    ``share``, ``rows_per_file``, ``latent_compression``, ``prefetch``, ``alpha``, ``max_pixels``,
    ``compile``, ``progress``, ``dist_timeout_s``, ``dry_run``), validated before anything
    is read or written.

    ``vae`` is a local diffusers folder, a hub id, or any object implementing
    :class:`hpd_encode.LatentEncoder` (its ``device`` and ``dtype`` are then the run's).

    Returns the run's :class:`EncodeSummary` (also written to
    ``output_dir/summary.json``). Rerunning the same call resumes: rows
    already committed are kept and skipped. Under ``torchrun`` each rank
    encodes its share of the work. With ``dry_run=True`` nothing is encoded
    or written (``output_dir`` and ``vae`` may be None) and the result is the
    :class:`PlanReport`.
    """
    return run(EncodeOptions.create(data_root, metadata, output_dir, vae, **options))


def run(opts: EncodeOptions) -> EncodeSummary | PlanReport:
    """Run an encode (or a dry run) with validated options."""
    dist = init_dist(opts.dist_timeout_s)
    # Decode threads: all cores, shared among this node's ranks, unless set.
    opts = opts.with_threads(
        opts.survey.num_threads or max(1, (os.cpu_count() or 1) // dist.local_world_size)
    )
    try:
        result: EncodeSummary | PlanReport = dry_run(opts, dist) if opts.dry_run else _encode(opts, dist)
    except BaseException as e:
        final = dist.stop(e)  # every rank ends with one line: its own, or the rank's that stopped
        if final is e:
            raise
        raise final from e
    dist.close()
    return result


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Plan:
    """The survey and planning stages of a real run and of a dry run, for one rank (one process is
    a world of one), timed."""

    def __init__(
        self,
        survey_opts: SurveyOptions,
        plan_opts: PlanOptions,
        dist: Dist,
        done: set[int],
        device: str,
        with_costs: bool = False,
        with_records: bool = True,
    ) -> None:
        """``with_records``: give this rank's planned rows their prompts, models and votes (what the
        encoder writes; a dry run, which writes nothing, skips it)."""
        t, cpu = time.monotonic(), cpu_seconds()
        # (no prompts or models while planning: the rows planned are read again, by byte offset)
        self.survey = survey(survey_opts, dist, done=done, text=False)
        planned = plan(
            self.survey,
            plan_opts,
            device,
            dist,
            with_costs=with_costs,
            with_records=with_records,
            num_threads=survey_opts.num_threads,
        )
        self.kept, self.split, self.rank_plan = planned.kept, planned.split, planned.rank_plan
        #: Image id -> path of this rank's images (what the encoder opens).
        self.image_paths = planned.image_paths
        self.rows_planned = self.kept.rows.height
        #: Seconds and CPU seconds per stage.
        self.stages = {"plan": time.monotonic() - t, **self.survey.timings, **planned.timings}
        self.stages_cpu = {"plan": cpu_seconds() - cpu, **self.survey.cpu_timings, **planned.cpu_timings}

    @property
    def failures(self) -> list[Failure]:
        """Every failure so far (builds one object per dropped pair: rank 0, at the end)."""
        return self.survey.failures + self.kept.dropped

    @property
    def n_failures(self) -> int:
        return len(self.survey.failures) + self.kept.n_dropped

    def failures_by_kind(self) -> dict[str, int]:
        counts = count_by(self.survey.failures, "kind")
        for kind, n in self.kept.dropped_by_kind().items():
            counts[kind] = counts.get(kind, 0) + n
        return dict(sorted(counts.items()))

    def gather_failures(self, dist: Dist) -> None:
        """Each rank holds the failures of its share: bring them all to rank 0 (every rank calls
        this), which writes them."""
        got = dist.gather((self.survey.failures, self.kept.dropped_rows))
        if got is not None:
            # (failures.csv is written in record order; nothing else needs an order here)
            self.survey = replace(self.survey, failures=[f for fs, _ in got for f in fs])
            self.kept = replace(self.kept, dropped_rows=pl.concat([d for _, d in got]))

    def failure_counts(self, dist: Dist) -> tuple[int, dict[str, int], int]:
        """Failures, failures by kind and records already done, over all ranks (every rank calls
        this)."""
        mine = (self.n_failures, self.failures_by_kind(), self.survey.n_done)
        total, done = 0, 0
        by_kind: dict[str, int] = {}
        for n, kinds, d in dist.all_gather(mine):
            total, done = total + n, done + d
            for k, v in kinds.items():
                by_kind[k] = by_kind.get(k, 0) + v
        return total, dict(sorted(by_kind.items())), done

    def keep_only_this_rank(self) -> None:
        """Drop every rank's metadata and pair tables once this rank's plan is
        made: a rank keeps its own rows, the image paths and the failures."""
        self.survey = replace(self.survey, records=self.survey.records.clear())
        self.kept = replace(self.kept, rows=self.kept.rows.clear())


def dry_run(opts: EncodeOptions, dist: Dist) -> PlanReport:
    """Everything up to the first VAE batch, then a report. Loads no VAE and
    creates or changes nothing in the output directory."""
    t0, cpu0 = time.monotonic(), cpu_seconds()
    out = opts.output.output_dir if str(opts.output.output_dir) else None
    done = done_records(out) if out is not None and read_manifest(out) is not None else set()
    device = resolve_device(opts.encoder.device, import_torch=False, encoder=_encoder_object(opts.encoder))
    plan = _Plan(opts.survey, opts.plan, dist, done, device, with_costs=True, with_records=False)
    rp = plan.rank_plan
    costs, jobs_all = plan.split.cost_per_rank or [0], plan.split.jobs or 0
    mean = sum(costs) / len(costs)
    n_failures, by_kind, n_done = plan.failure_counts(dist)
    return PlanReport(
        records=plan.survey.n_entries,
        records_already_done=n_done,
        rows_planned=plan.rows_planned,
        dropped=n_failures,
        dropped_by_reason=by_kind,
        jobs=jobs_all,
        vae_images=jobs_all,
        images_probed=plan.survey.n_images,
        batches_per_bucket=rp.batches_per_size(),
        world_size=dist.world_size,
        rank=dist.rank,
        rank_rows=rp.n_rows,
        rank_jobs=rp.n_jobs,
        pixel_cost_per_rank=costs,
        balance=round(max(costs) / mean, 4) if mean else 1.0,
        plan_seconds=round(time.monotonic() - t0, 3),
        plan_cpu_seconds=round(cpu_seconds() - cpu0, 3),
        peak_rss_mb=round(_peak_rss_mb(), 1),
        stages={k: round(v, 3) for k, v in plan.stages.items()},
        stages_cpu={k: round(v, 3) for k, v in plan.stages_cpu.items()},
    )


def _encoder_object(e: EncoderOptions) -> Any:
    """The encoder object the options name, or None for a folder or hub id."""
    return e.vae if vae_is_object(e.vae) else None


def _settings(opts: EncodeOptions, device: str, found: VaeFolder | None) -> dict[str, Any]:
    """The settings that change latents: a rerun with other values refuses to resume.

    ``vae_identity`` is the encoder's identity: for a diffusers folder its class, config digest and
    the digest of each weight file (``found``), so new weights in the same folder refuse to resume;
    for an encoder object its ``identity`` as given."""
    from hpd_encode.vae import resolve_dtype

    e = opts.encoder
    if found is None:
        vae, identity, dtype = type(e.vae).__qualname__, e.vae.identity, e.vae.dtype
    else:
        vae, identity, dtype = vae_identity(e.vae), found.identity, resolve_dtype(e.dtype, device)
    return {
        "vae": vae,
        "vae_identity": identity,
        "vae_subfolder": e.vae_subfolder,
        "dtype": str(dtype).replace("torch.", ""),
        "latent": e.latent,
        "seed": e.seed,
        "store_dtype": e.store_dtype,
        "buckets": bucket_set_spec(opts.plan.buckets),
        "alpha": e.alpha,
        "metadata_sha256": file_sha256(opts.survey.metadata),
        "limit": opts.survey.limit,
    }


def _tool() -> str:
    return f"hpd-encode {_core.__version__}"


def _inputs(opts: EncodeOptions) -> dict[str, str]:
    """Where the run's sources are (for ``verify --reencode``; not fingerprinted: a dataset may move)."""
    return {
        "data_root": str(opts.survey.data_root.resolve()),
        "metadata": str(opts.survey.metadata.resolve()),
    }


def _take_output_dir(opts: EncodeOptions, dist: Dist, settings: dict[str, Any]) -> OutputLock | None:
    """Rank 0 locks the output directory and prepares it; every rank learns the
    outcome, and the others check that the lock is this run's."""
    out = opts.output
    lock = None
    status: Any = None
    if dist.rank == 0:
        try:
            lock = OutputLock(out.output_dir, purpose="encode").acquire()
            try:
                prepare_output(out.output_dir, settings, out.overwrite, _tool(), _inputs(opts))
            except BaseException:
                lock.release()
                raise
            status = ("ok", lock.run_id)
        except Exception as e:  # noqa: BLE001 - re-raised on every rank below
            status = e
    status = dist.broadcast(status)
    if isinstance(status, Exception):
        raise status
    if dist.rank != 0:
        holder = read_lock_holder(out.output_dir) or {}
        if holder.get("run_id") != status[1]:
            raise OutputBusyError(
                f"'{out.output_dir}' is locked by another run ({holder or 'no holder'}), "
                "not by rank 0 of this one"
            )
    dist.barrier()
    return lock


def _encode(opts: EncodeOptions, dist: Dist) -> EncodeSummary:
    t0 = time.monotonic()
    device = resolve_device(
        opts.encoder.device,
        local_rank=dist.local_rank if dist.enabled else None,
        encoder=_encoder_object(opts.encoder),
    )
    found = (
        None if vae_is_object(opts.encoder.vae) else find_vae(opts.encoder.vae, opts.encoder.vae_subfolder)
    )
    if device == "cpu" and dist.local_world_size > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.local_world_size))
    settings = _settings(opts, device, found)
    lock = _take_output_dir(opts, dist, settings)
    try:
        done = done_records(opts.output.output_dir)
        plan = _Plan(opts.survey, opts.plan, dist, done, device)
        plan.gather_failures(dist)
        if dist.rank == 0:
            log.info(
                "%d records: %d already done, %d to encode, %d dropped or bad",
                plan.survey.n_entries,
                len(done),
                plan.rows_planned,
                plan.n_failures,
            )
        plan.keep_only_this_rank()
        result = _encode_rank(opts, dist, plan.rank_plan, plan.image_paths, device, found, settings)
        results: list[RankResult] = dist.all_gather(result)
        summary: EncodeSummary | None = None
        if dist.rank == 0:
            summary = finish(opts, dist, settings, plan, len(done), results, t0)
        return dist.broadcast(summary)
    finally:
        if lock is not None:
            lock.release()


def _encode_rank(
    opts: EncodeOptions,
    dist: Dist,
    plan: RankPlan,
    image_paths: pl.Series,
    device: str,
    found: VaeFolder | None,
    settings: dict[str, Any],
) -> RankResult:
    """Encode this rank's rows into part files whose footers carry the run's
    provenance; rank 0 (which holds the manifest) records each file's digest
    as it is committed, the other ranks' reach the manifest in :func:`finish`."""
    out = opts.output
    normalization = opts.encoder.vae.normalization if found is None else found.normalization
    rotator = PartRotator(
        out.output_dir,
        dist.rank,
        out.rows_per_file,
        latent_compression=out.latent_compression,
        metadata=footer_entries(encode_provenance(settings, _tool(), normalization)),
        on_commit=(lambda entry: record_file(out.output_dir, entry)) if dist.rank == 0 else None,
    )
    t = time.monotonic()
    if plan.n_rows == 0:
        if rotator.next_k == 0:
            # Nothing for this rank in a fresh run: still write its (empty) part
            # file, so a world of N ranks gives part_rank00 .. N-1 as the reference.
            rotator.open()
            rotator.commit()
        return RankResult(dist.rank, {}, rotator.files, 0.0, rotator.blocked_s, [])
    from hpd_encode.vae import load_vae

    enc = opts.encoder
    vae = enc.vae if found is None else load_vae(found, device=device, dtype=enc.dtype)
    encoder = Encoder(enc, plan, image_paths, vae, rotator, rank=dist.rank)
    progress = Progress(plan.n_rows, opts.progress, dist.rank)
    try:
        encoder.run(progress)
        rotator.commit()
    except BaseException:
        rotator.abort()
        raise
    finally:
        progress.close()
    result = encoder.result(time.monotonic() - t)
    result.stats["vae_class"] = getattr(vae, "class_name", type(vae).__qualname__)  # type: ignore[arg-type]
    return result


def finish(
    opts: EncodeOptions,
    dist: Dist,
    settings: dict[str, Any],
    plan: _Plan,
    n_done: int,
    results: list[RankResult],
    t0: float,
) -> EncodeSummary:
    """Rank 0: write ``failures.csv``, the complete manifest and ``summary.json``."""
    out = opts.output.output_dir
    stats: dict[str, int] = {}
    failures = list(plan.failures)
    for res in results:
        for k, v in res.stats.items():
            if k == "vae_class":
                settings["vae_class"] = v
            else:
                stats[k] = stats.get(k, 0) + int(v)
        failures.extend(res.failures)
    write_failures_csv(out / FAILURES, failures)
    known = [*(read_manifest(out) or {}).get("files", []), *(f for res in results for f in res.files)]
    files = committed_files(out, known)
    encode_s = max((res.encode_seconds for res in results), default=0.0)
    rows_written = stats.get("rows_written", 0)
    summary = EncodeSummary(
        status="complete",
        output_dir=str(out),
        records_in_metadata=plan.survey.n_entries,
        records_already_done=n_done,
        pairs_planned=plan.rows_planned,
        rows_written=rows_written,
        rows_total=sum(f["rows"] for f in files),
        images_decoded=stats.get("images_decoded", 0),
        images_encoded=stats.get("images_encoded", 0),
        vae_calls=stats.get("vae_calls", 0),
        max_pending_latents=stats.get("max_pending_latents", 0),
        failed_or_dropped=len(failures),
        by_reason=count_by(failures, "kind"),
        by_stage=count_by(failures, "stage"),
        world_size=dist.world_size,
        elapsed_seconds=round(time.monotonic() - t0, 3),
        encode_seconds=round(encode_s, 3),
        rows_per_second=round(rows_written / encode_s, 3) if encode_s > 0 else None,
        images_per_second=round(stats.get("images_encoded", 0) / encode_s, 3) if encode_s > 0 else None,
        writer_blocked_seconds=round(sum(r.writer_blocked_seconds for r in results), 3),
        settings=settings,
        files=files,
        failures_file=FAILURES,
    )
    manifest = read_manifest(out) or {}
    manifest.update({"status": "complete", "files": files})
    write_json_atomic(out / MANIFEST, manifest)
    write_json_atomic(out / SUMMARY, summary.to_dict())
    return summary
