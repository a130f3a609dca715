"""Planning the encode, over arrays: pair rules, distinct (image, target
size) jobs, a cost-balanced split across ranks, and a work order that keeps
memory bounded.

A *row* is one output comparison; it needs two *jobs* (its chosen and its
rejected image at the pair's target size). With sharing on, a job is keyed by
``(image, height, width)``, so an image compared several times at the same
size is decoded and encoded once. With sharing off every row has two jobs of
its own (the reference's behaviour).

Rows are split across ranks by connected component (rows that share a job
stay together, so an image is encoded by one rank), balanced by pixel cost
(largest component first onto the least-loaded rank; ties by the component's
first record). Within a rank, rows are ordered by (target size, component,
record): a component's jobs run back to back, so its rows complete soon after
its first job, and the latents held while waiting for a partner stay bounded
by one batch plus the jobs of the components that batch touches.

Everything here is vectorised (NumPy, Polars, union-find in Rust): 1.2 M
comparisons plan in seconds.

:func:`plan` runs these stages for one rank of ``comm`` (one process is a
world of one): its own kept pairs are all-gathered as a few integer columns (no
strings), so every rank makes the same split and its own :class:`RankPlan`;
the rest of each pair (its image sizes, where its entry is in the metadata)
goes only to the rank that encodes it, which then reads those entries again
for their prompts, paths, models and votes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import polars as pl

from hpd_encode import _core
from hpd_encode._core import BucketSet
from hpd_encode.dist import Dist
from hpd_encode.errors import DistError
from hpd_encode.failures import Failure
from hpd_encode.metadata import ENTRY_COLUMNS, TABLE_SCHEMA, read_records
from hpd_encode.pipeline.options import BatchSize, PlanOptions
from hpd_encode.pipeline.survey import Steps, Survey, image_id_type


@dataclass(frozen=True)
class Kept:
    """The pairs that pass the pair rules, in record order (all ranks), and
    those that do not (as a table: at HPDv3 scale a third of a million
    :class:`Failure` objects cost seconds, and only rank 0 writes them)."""

    rows: pl.DataFrame  # survey columns + bucket_id, height, width (the target size)
    dropped_rows: pl.DataFrame  # record_index, kind, h1, w1, h2, w2, path1, path2

    @property
    def n_dropped(self) -> int:
        return self.dropped_rows.height

    def dropped_by_kind(self) -> dict[str, int]:
        return dict(self.dropped_rows.group_by("kind").len().sort("kind").iter_rows())

    @cached_property
    def dropped(self) -> list[Failure]:
        """One failure per dropped pair."""
        return [
            Failure(record_index, "pair_rule", kind, f"sizes {h1}x{w1} and {h2}x{w2}", path1, path2)
            for record_index, kind, h1, w1, h2, w2, path1, path2 in self.dropped_rows.iter_rows()
        ]


@dataclass(frozen=True)
class RankPlan:
    """One rank's work: its rows in encode order, their jobs and the batches.

    Jobs are numbered in order of first use by the ordered rows, and batches
    are consecutive runs of same-size jobs, so batch ``k`` is the job range
    ``batch_start[k]:batch_start[k + 1]``.
    """

    rows: pl.DataFrame  # encode order; survey columns + bucket_id, height, width
    row_jobs: np.ndarray  # (n_rows, 2) int64: each row's chosen and rejected job
    job_path: np.ndarray  # (n_jobs,) int64 image id (an index into the survey's image list)
    job_height: np.ndarray  # (n_jobs,) int64
    job_width: np.ndarray  # (n_jobs,) int64
    batch_start: np.ndarray  # (n_batches + 1,) int64 job offsets

    @property
    def n_rows(self) -> int:
        return self.rows.height

    @property
    def n_jobs(self) -> int:
        return len(self.job_path)

    @property
    def n_batches(self) -> int:
        return len(self.batch_start) - 1

    def job_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """CSR of the rows that need each job: ``rows[ptr[j]:ptr[j + 1]]``."""
        flat = self.row_jobs.ravel()
        order = np.argsort(flat, kind="stable")
        ptr = np.zeros(self.n_jobs + 1, dtype=np.int64)
        np.cumsum(np.bincount(flat, minlength=self.n_jobs), out=ptr[1:])
        return ptr, order // 2

    def batches_per_size(self) -> dict[str, int]:
        starts = self.batch_start[:-1]
        sizes = pl.DataFrame({"h": self.job_height[starts], "w": self.job_width[starts]})
        counts = sizes.group_by("h", "w", maintain_order=True).len()
        return {f"{h}x{w}": n for h, w, n in counts.iter_rows()}


def bucket_sizes(buckets: BucketSet) -> np.ndarray:
    """(n_buckets, 2) int64: each bucket id's (height, width)."""
    return np.asarray(buckets.buckets, dtype=np.int64).reshape(-1, 2)


def apply_pair_rules(pairable: pl.DataFrame, buckets: BucketSet, *, keep_paths: bool = True) -> Kept:
    """The reference's pair rules (``REFERENCE.md`` §2) on the pairable records
    (:attr:`Survey.pairable`). Without ``keep_paths`` the kept rows have no ``path1``/``path2``
    (the planner does not need them, and at HPDv3 scale each reordering of their strings costs a
    tenth of a second); the dropped ones always have them (``failures.csv`` names the images)."""
    t = pairable
    h1, w1, h2, w2 = (t[c].to_numpy() for c in ("h1", "w1", "h2", "w2"))
    ids, reasons = buckets.assign_pairs(h1, w1, h2, w2)
    ids = np.asarray(ids, dtype=np.int64)
    keep = ids >= 0
    sizes = bucket_sizes(buckets)
    kept_columns = [c for c in t.columns if keep_paths or c not in ("path1", "path2")]
    kept = (
        t.select(kept_columns)
        .filter(pl.Series(keep))
        .with_columns(
            pl.Series("bucket_id", ids[keep].astype(np.int32)),
            pl.Series("height", sizes[ids[keep], 0]),
            pl.Series("width", sizes[ids[keep], 1]),
        )
    )
    names = pl.Series(buckets.DROP_REASONS, dtype=pl.String)
    dropped = t.filter(pl.Series(~keep)).select(
        "record_index",
        names.gather(pl.Series(np.asarray(reasons)[~keep])).alias("kind"),
        "h1",
        "w1",
        "h2",
        "w2",
        "path1",
        "path2",
    )
    return Kept(kept, dropped)


def _first_use_numbering(keys: np.ndarray) -> np.ndarray:
    """Each key's number in order of first appearance (0, 1, 2... as a loop
    over ``keys`` would hand them out): a hash map in Rust, no sort."""
    return _core.first_use_numbering(np.ascontiguousarray(keys, dtype=np.int64))


def _first_slots(row_jobs: np.ndarray) -> np.ndarray:
    """For jobs numbered by first use, each job's first position in
    ``row_jobs.ravel()`` (row ``// 2``, chosen or rejected side ``% 2``): where
    a number exceeds every number before it."""
    flat = row_jobs.ravel()
    if flat.size == 0:
        return np.zeros(0, dtype=np.int64)
    before = np.empty_like(flat)
    before[0] = -1
    np.maximum.accumulate(flat[:-1], out=before[1:])
    return np.flatnonzero(flat > before)


def _int64(rows: pl.DataFrame, name: str) -> np.ndarray:
    return np.ascontiguousarray(rows[name].to_numpy(), dtype=np.int64)


def _job_keys(rows: pl.DataFrame, share: bool) -> np.ndarray:
    """(n_rows, 2) job ids, numbered in order of first use (row by row, chosen then rejected): a job
    is an image at the row's bucket (its target size) with ``share``, else each row has two of its
    own. The numbering :func:`partition` makes too (one Rust function, ``_core.number_jobs``)."""
    chosen, rejected = _core.number_jobs(
        _int64(rows, "id1"), _int64(rows, "id2"), _int64(rows, "bucket_id"), share
    )
    return np.stack([chosen, rejected], axis=1)


def _components(row_jobs: np.ndarray) -> np.ndarray:
    """Each row's component label (rows sharing a job are one component)."""
    n_jobs = int(row_jobs.max()) + 1 if row_jobs.size else 0
    labels = _core.connected_components(
        n_jobs, np.ascontiguousarray(row_jobs[:, 0]), np.ascontiguousarray(row_jobs[:, 1])
    )
    return labels[row_jobs[:, 0]]


@dataclass(frozen=True)
class Split:
    """Which rank encodes each kept row, and what that costs."""

    rank_of_row: np.ndarray  # (n_rows,) int64
    jobs: int | None = None  # distinct (image, size) encodes over all ranks (when asked for)
    cost_per_rank: list[int] | None = None  # pixels each rank encodes, each job once (when asked for)


def partition(kept: pl.DataFrame, world_size: int, share: bool, *, with_costs: bool = False) -> Split:
    """Each kept row's rank: whole components, largest pixel cost first onto
    the least-loaded rank (LPT; ties by the component's first record).
    Deterministic: every rank computes the same split. ``with_costs`` also
    counts the jobs and each rank's pixels (for a dry run's report)."""
    n = kept.height
    if (world_size <= 1 and not with_costs) or n == 0:
        return Split(
            np.zeros(n, dtype=np.int64), 0 if with_costs else None, [0] * world_size if with_costs else None
        )

    # In Rust: job numbering, union-find, per-component costs and the LPT loop (a Python heap over a
    # quarter of a million components, and the NumPy numbering, took most of a second at HPDv3 scale).
    rank_of_row, jobs, costs = _core.partition_rows(
        _int64(kept, "id1"),
        _int64(kept, "id2"),
        _int64(kept, "bucket_id"),
        (kept["height"] * kept["width"]).to_numpy().astype(np.int64),
        kept["record_index"].to_numpy().astype(np.int64),
        max(world_size, 1),
        share,
    )
    return Split(np.asarray(rank_of_row, dtype=np.int64), jobs, list(costs))


def order_and_batch(rows: pl.DataFrame, share: bool, batch_size: BatchSize, device: str) -> RankPlan:
    """Order one rank's rows (by size, then component, then record), number
    their jobs and cut the jobs into same-size batches of ``batch_size`` images per VAE call on
    ``device``."""
    n = rows.height
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return RankPlan(
            rows, np.zeros((0, 2), dtype=np.int64), empty, empty, empty, np.zeros(1, dtype=np.int64)
        )
    keys = _job_keys(rows, share)
    comp = _components(keys)
    rec = rows["record_index"].to_numpy().astype(np.int64)
    first = np.full(int(comp.max()) + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, comp, rec)  # each component's first record
    height = rows["height"].to_numpy().astype(np.int64)
    # By pixels (largest first), height, component's first record, record (the last key first);
    # the permutation over NumPy columns, then one gather of the table.
    order = np.lexsort((rec, first[comp], height, -(height * rows["width"].to_numpy().astype(np.int64))))
    rows = rows[order]
    # The same jobs, renumbered by first use in the new row order.
    row_jobs = _first_use_numbering(keys[order].ravel()).reshape(n, 2)
    n_jobs = int(row_jobs.max()) + 1
    first_use = _first_slots(row_jobs)  # increasing: jobs are numbered by first use
    job_path = np.repeat(rows["id1"].to_numpy(), 2)
    job_path[1::2] = rows["id2"].to_numpy()
    job_path = job_path[first_use]
    job_h = np.repeat(rows["height"].to_numpy(), 2)[first_use].astype(np.int64)
    job_w = np.repeat(rows["width"].to_numpy(), 2)[first_use].astype(np.int64)
    # Jobs of one size are contiguous (rows are sorted by size first): cut each run into chunks.
    change = np.flatnonzero((job_h[1:] != job_h[:-1]) | (job_w[1:] != job_w[:-1])) + 1
    starts: list[int] = []
    for a, b in zip([0, *change.tolist()], [*change.tolist(), n_jobs]):
        starts.extend(range(a, b, max(1, batch_size.per_call(int(job_h[a]), int(job_w[a]), device))))
    starts.append(n_jobs)
    return RankPlan(rows, row_jobs, job_path, job_h, job_w, np.asarray(starts, dtype=np.int64))


@dataclass(frozen=True)
class Plan:
    """What :func:`plan` gives a rank."""

    kept: Kept  # every rank's kept pairs (what the split needs), this rank's dropped ones
    split: Split
    rank_plan: RankPlan  # this rank's rows in encode order
    #: Image id -> path of the images of this rank's rows (null for the others); empty without records.
    image_paths: pl.Series
    timings: dict[str, float]
    cpu_timings: dict[str, float]


def plan(
    survey: Survey,
    opts: PlanOptions,
    device: str,
    comm: Dist | None = None,
    *,
    with_costs: bool = False,
    with_records: bool = True,
    num_threads: int | None = None,
) -> Plan:
    """This rank's plan from its survey (``comm``: the ranks, each with its own survey; None for one
    process). ``device`` sizes the automatic batches. ``with_costs``: count the jobs and each
    rank's pixels (a dry run's report). ``with_records``: give the rows planned their records'
    columns, read again from the metadata by byte offset (what the encoder writes)."""
    comm = comm or Dist()
    world = comm.world_size
    step = Steps()
    kept_here = apply_pair_rules(survey.pairable_for_planning(), opts.buckets, keep_paths=False)
    rows_here, dropped = kept_here.rows, kept_here.dropped_rows
    del kept_here
    step("pair_rules")
    if world == 1:
        # A world of one sends nothing: its kept pairs are all of them, already in record order.
        own = rows_here.select(pl.col(name).cast(dtype) for name, dtype in _KEPT_SCHEMA.items())
        kept = own.select(*_SPLIT_COLUMNS, "height", "width")
        del rows_here
        step("gather_kept")
        split = partition(kept, world, opts.share)
        step("partition")
    else:
        layout = _split_layout(survey.n_images)
        kept = _unpack(comm.all_gather_array(_pack(rows_here, layout)), layout, opts.buckets)
        step("gather_kept")
        split = partition(kept, world, opts.share, with_costs=with_costs)
        step("partition")
        own = _exchange(rows_here, kept, split, comm)
        del rows_here
    step("exchange_rows")
    rank_plan = order_and_batch(own.select(*_KEPT_SCHEMA), opts.share, opts.batch_size, device)
    if with_costs and world == 1:  # every job is this rank's: the costs are the plan's
        cost = int(np.dot(rank_plan.job_height, rank_plan.job_width))
        split = Split(split.rank_of_row, rank_plan.n_jobs, [cost])
    step("order_and_batch")
    paths = pl.Series("path", [], dtype=pl.String)
    if with_records:
        rows = _with_records(survey, rank_plan.rows, num_threads)
        rank_plan = replace(rank_plan, rows=rows)
        paths = pl.Series("path", [None] * survey.n_images, dtype=pl.String)
        if rows.height:
            ids = np.concatenate([rows["id1"].to_numpy(), rows["id2"].to_numpy()])
            paths = paths.scatter(ids, pl.concat([rows["path1"], rows["path2"]]))
        step("records")
    return Plan(Kept(kept, dropped), split, rank_plan, paths, step.seconds, step.cpu)


#: A kept pair's columns, in the order of the planning rows.
_KEPT_SCHEMA = {
    "record_index": pl.Int64,
    "id1": pl.Int64,
    "id2": pl.Int64,
    "h1": pl.Int64,
    "w1": pl.Int64,
    "h2": pl.Int64,
    "w2": pl.Int64,
    "bucket_id": pl.Int32,
    "height": pl.Int64,
    "width": pl.Int64,
    "entry_offset": pl.Int64,
    "entry_len": pl.Int64,
}
#: What the split needs of a kept pair, sent to every rank (packed: about a fifth of the bytes of
#: the whole row as int64 columns; height and width are the bucket's, so they are not sent).
_SPLIT_COLUMNS = ("record_index", "id1", "id2", "bucket_id")
#: The rest of a kept pair, sent only to the rank the split gives it (image sizes as the probe
#: gives them, unsigned 32-bit).
_REST_COLUMNS = ("h1", "w1", "h2", "w2", *ENTRY_COLUMNS)
_REST_LAYOUT = np.dtype(
    [("record_index", np.int64)]
    + [(c, np.uint32) for c in ("h1", "w1", "h2", "w2")]
    + [(c, np.int64) for c in ENTRY_COLUMNS]
)


def _exchange(rows_here: pl.DataFrame, kept: pl.DataFrame, split: Split, comm: Dist) -> pl.DataFrame:
    """This rank's rows of the split, whole: the rest of each pair (image sizes, byte range) goes
    only to the rank that encodes it."""
    rank, world = comm.rank, comm.world_size
    ranks_here = split.rank_of_row[
        np.searchsorted(kept["record_index"].to_numpy(), rows_here["record_index"].to_numpy())
    ]
    rest = _pack(rows_here, _REST_LAYOUT)
    got = np.concatenate(comm.all_to_all_arrays([rest[ranks_here == r] for r in range(world)]))
    if np.any(got["record_index"][1:] < got["record_index"][:-1]):
        got = got[np.argsort(got["record_index"], kind="stable")]
    own = kept.filter(pl.Series(split.rank_of_row == rank))
    if not np.array_equal(own["record_index"].to_numpy(), got["record_index"]):
        raise DistError("rank plan: the pairs received are not those the split gave this rank")
    return own.with_columns(pl.Series(name, got[name]).cast(_KEPT_SCHEMA[name]) for name in _REST_COLUMNS)


def _split_layout(n_images: int) -> np.dtype:
    return np.dtype(
        [
            ("record_index", np.int64),
            ("id1", image_id_type(n_images)),
            ("id2", image_id_type(n_images)),
            ("bucket_id", np.int32),
        ]
    )


def _pack(rows: pl.DataFrame, layout: np.dtype) -> np.ndarray:
    """The columns of ``rows`` that ``layout`` names, as one packed record array."""
    out = np.empty(rows.height, dtype=layout)
    for name in layout.names or ():
        out[name] = rows[name].to_numpy()
    return out


def _unpack(parts: list[np.ndarray], layout: np.dtype, buckets: BucketSet) -> pl.DataFrame:
    """Every rank's kept pairs (what the split needs) as one table in record order, with each pair's
    target size."""
    packed = np.concatenate(parts) if parts else np.empty(0, dtype=layout)
    record = packed["record_index"]
    if np.any(record[1:] < record[:-1]):  # (ranks that read byte ranges send them in order)
        packed = packed[np.argsort(record, kind="stable")]
    sizes = bucket_sizes(buckets)
    bucket = packed["bucket_id"]
    columns = {name: packed[name] for name in _SPLIT_COLUMNS}
    columns["height"], columns["width"] = sizes[bucket, 0], sizes[bucket, 1]
    return pl.DataFrame(columns).cast({k: v for k, v in _KEPT_SCHEMA.items() if k in columns})


def _with_records(survey: Survey, rows: pl.DataFrame, num_threads: int | None) -> pl.DataFrame:
    """This rank's planned rows with their records' columns, read again from the metadata file (only
    those entries), in the order of the plan: the record's columns first, then the plan's."""
    records = read_records(
        survey.metadata,
        rows["record_index"].to_numpy(),
        rows["entry_offset"].to_numpy(),
        rows["entry_len"].to_numpy(),
        num_threads=num_threads,
    )
    both = pl.concat([records, rows.drop("record_index", *ENTRY_COLUMNS)], how="horizontal")
    return both.select([*TABLE_SCHEMA] + [c for c in both.columns if c not in TABLE_SCHEMA])
