"""Planning under torchrun, each rank doing its share.

With ``world_size`` > 1 no rank reads, probes or keeps the whole dataset:

1. Rank ``r`` reads the metadata entries in its byte range of the file
   (``metadata.read_metadata_shared``: no rank reads or scans the whole
   file); with ``--limit``, the entries numbered ``r`` modulo the world size
   among the first ``limit`` (the others are only cut and counted, in Rust).
2. Images are named by a 64-bit hash of their path. The ranks all-gather the
   distinct hashes they saw, so the image ids (positions among all the sorted
   hashes) are the same everywhere; each image is probed by one of the ranks
   that saw it (picked by its hash, ``_core.image_owners``), which sends the
   size to the ranks that saw it.
3. Each rank applies the pair rules to its own records, and the kept pairs
   are all-gathered as a few integer columns (no strings), so every rank makes
   the same split and its own :class:`RankPlan` exactly as with one rank.
4. A rank then reads again, by byte offset, only the metadata entries of the
   rows it encodes (their prompts, paths, models, votes).

Failures and dropped pairs stay with the rank that found them until
``_Plan.gather_failures`` brings them to rank 0, which writes them (a dry run
gathers only their counts).

Plans are identical to those of one process (same rows per rank, same jobs,
same batches): only the numbering of image ids differs, and the planner uses
ids only to tell images apart.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl

from hpd_encode._core import BucketSet, image_owners
from hpd_encode.dist import Dist
from hpd_encode.errors import DistError
from hpd_encode.metadata import ENTRY_COLUMNS, read_metadata, read_metadata_shared, read_records
from hpd_encode.pipeline.options import PlanOptions, SurveyOptions
from hpd_encode.pipeline.plan import (
    Kept,
    RankPlan,
    Split,
    apply_pair_rules,
    bucket_sizes,
    order_and_batch,
    partition,
)
from hpd_encode.pipeline.survey import (
    Steps,
    Survey,
    _probe_all,
    _record_failures,
    in_record_order,
    with_sizes,
    without_done,
)


def plan_shared(
    opts: SurveyOptions,
    plan_opts: PlanOptions,
    dist: Dist,
    done: set[int],
    device: str,
    *,
    with_costs: bool = False,
    with_records: bool = True,
) -> tuple[Survey, Kept, Split, RankPlan]:
    """This rank's survey (its records and failures), the kept
    pairs of all ranks (narrow; the dropped ones of this rank), the split and this rank's plan (its rows with
    their records' columns when ``with_records``; else the planning columns)."""
    rank, world = dist.rank, dist.world_size
    step = Steps()
    timings = step.seconds
    if opts.limit is None:  # each rank its byte range of the file
        # (no prompts or models: the rows planned are read again, by byte offset, with them)
        meta = read_metadata_shared(
            opts.metadata, rank, world, dist.all_gather, num_threads=opts.num_threads, text=False
        )
    else:  # the first `limit` entries: each rank every world-th of them
        meta = read_metadata(
            opts.metadata, limit=opts.limit, num_threads=opts.num_threads, part=(rank, world)
        )
    assert meta.entries is not None
    step("read_metadata")
    table, n_done = without_done(pl.concat([meta.table, meta.entries], how="horizontal"), done)
    hash1 = table["path1"].hash(seed=0).to_numpy()
    hash2 = table["path2"].hash(seed=0).to_numpy()
    seen, first, inverse = np.unique(np.concatenate([hash1, hash2]), return_index=True, return_inverse=True)
    n_rows = len(hash1)
    del hash1, hash2
    step("image_hashes")

    # Who probes what: each image by one of the ranks that saw it, picked by its hash.
    n, ids, probe, seer_start, seers = image_owners(dist.all_gather_array(seen), rank)
    step("gather_hashes")
    rels = pl.concat([table["path1"], table["path2"]]).gather(first[probe])
    del seen, first
    h, w, kind, errors = _probe_all(Path(opts.data_root), rels, opts.num_threads, opts.max_pixels)
    step("probe")

    # Each size goes to the ranks that saw the image (this one too), not to every rank.
    probed = np.empty(len(probe), dtype=_probe_layout(n))
    probed["image"], probed["height"], probed["width"], probed["kind"] = ids[probe], h, w, kind
    copies = np.repeat(probed, np.diff(seer_start))
    order = np.argsort(seers, kind="stable")
    copies, bounds = copies[order], np.searchsorted(seers[order], np.arange(world + 1))
    got = np.concatenate(dist.all_to_all_arrays([copies[bounds[r] : bounds[r + 1]] for r in range(world)]))
    if len(got) != len(ids):
        raise DistError(f"image sizes: {len(got)} received for the {len(ids)} images of this rank")
    height, width = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    kinds = np.zeros(n, dtype=np.uint8)
    idx = got["image"]
    height[idx], width[idx], kinds[idx] = got["height"], got["width"], got["kind"]
    del probed, copies, got, idx
    error_of: dict[int, str] = {}
    for errs in dist.all_gather({int(ids[probe[i]]): e for i, e in enumerate(errors) if e is not None}):
        error_of.update(errs)
    id_of = ids[inverse]
    table = table.with_columns(pl.Series("id1", id_of[:n_rows]), pl.Series("id2", id_of[n_rows:]))
    del ids, inverse, id_of
    table = with_sizes(table, height, width, kinds)
    failures = list(meta.failures) + _record_failures(table.filter(~pl.col("pairable")), kinds, error_of)
    n_entries = meta.n_entries  # all of them, whoever parsed them
    del meta
    step("sizes")

    survey = Survey(
        records=table.drop(*ENTRY_COLUMNS),
        images=pl.DataFrame(),
        failures=failures,
        n_entries=n_entries,
        n_done=n_done,
        timings=timings,
        cpu_timings=step.cpu,
    )
    kept_here = apply_pair_rules(survey.pairable_for_planning(), plan_opts.buckets, keep_paths=False)
    rows_here = kept_here.rows
    step("pair_rules")
    # What the split needs, from every rank (the rest goes, after it, only to the rank that encodes
    # each pair).
    key_layout = _split_layout(n)
    kept_rows = _unpack(dist.all_gather_array(_pack(rows_here, key_layout)), key_layout, plan_opts.buckets)
    step("gather_kept")
    split = partition(kept_rows, world, plan_opts.share, with_costs=with_costs)
    step("partition")
    ranks_here = split.rank_of_row[
        np.searchsorted(kept_rows["record_index"].to_numpy(), rows_here["record_index"].to_numpy())
    ]
    rest = _pack(
        pl.concat([rows_here, table.select(*ENTRY_COLUMNS)[rows_here["_row"].to_numpy()]], how="horizontal"),
        _REST_LAYOUT,
    )
    got = np.concatenate(dist.all_to_all_arrays([rest[ranks_here == r] for r in range(world)]))
    got = got[np.argsort(got["record_index"], kind="stable")]
    del rows_here, rest
    own = kept_rows.filter(pl.Series(split.rank_of_row == rank))
    if not np.array_equal(own["record_index"].to_numpy(), got["record_index"]):
        raise DistError("rank plan: the pairs received are not those the split gave this rank")
    own = own.with_columns(pl.Series(name, got[name]).cast(_KEPT_SCHEMA[name]) for name in _REST_COLUMNS)
    step("exchange_rows")
    rank_plan = order_and_batch(own.select(*_KEPT_SCHEMA), plan_opts.share, plan_opts.batch_size, device)
    step("order_and_batch")
    images = pl.DataFrame({"path": pl.Series("path", [None] * n, dtype=pl.String)}).with_row_index("image_id")
    if with_records:
        rank_plan = replace(rank_plan, rows=_with_records(opts, rank_plan.rows))
        # Every image this rank encodes, by id (the others are not needed here).
        rows = rank_plan.rows
        if rows.height:
            ids = np.concatenate([rows["id1"].to_numpy(), rows["id2"].to_numpy()])
            paths = images["path"].scatter(ids, pl.concat([rows["path1"], rows["path2"]]))
            images = images.with_columns(paths)

    survey = replace(survey, images=images)
    return survey, Kept(kept_rows, kept_here.dropped_rows), split, rank_plan


#: A kept pair's columns, in the order of a one-process plan's planning rows.
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


def _ids(n_images: int) -> type[np.signedinteger]:
    """Image ids in 32 bits while there are fewer than 2**31 images."""
    return np.int32 if n_images < 2**31 else np.int64


def _split_layout(n_images: int) -> np.dtype:
    return np.dtype(
        [
            ("record_index", np.int64),
            ("id1", _ids(n_images)),
            ("id2", _ids(n_images)),
            ("bucket_id", np.int32),
        ]
    )


def _probe_layout(n_images: int) -> np.dtype:
    """One image's probe as the ranks exchange it (its id, its size, its outcome code)."""
    return np.dtype(
        [("image", _ids(n_images)), ("height", np.uint32), ("width", np.uint32), ("kind", np.uint8)]
    )


def _pack(rows: pl.DataFrame, layout: np.dtype) -> np.ndarray:
    """The columns of ``rows`` that ``layout`` names, as one packed record array."""
    out = np.empty(rows.height, dtype=layout)
    for name in layout.names or ():
        out[name] = rows[name].to_numpy()
    return out


def _unpack(parts: list[np.ndarray], layout: np.dtype, buckets: BucketSet) -> pl.DataFrame:
    """Every rank's kept pairs (what the split needs) as one table in record order, as a
    one-process plan has them, with each pair's target size."""
    packed = np.concatenate(parts) if parts else np.empty(0, dtype=layout)
    record = packed["record_index"]
    if np.any(record[1:] < record[:-1]):  # (ranks that read byte ranges send them in order)
        packed = packed[np.argsort(record, kind="stable")]
    sizes = bucket_sizes(buckets)
    bucket = packed["bucket_id"]
    columns = {name: packed[name] for name in _SPLIT_COLUMNS}
    columns["height"], columns["width"] = sizes[bucket, 0], sizes[bucket, 1]
    return pl.DataFrame(columns).cast({k: v for k, v in _KEPT_SCHEMA.items() if k in columns})


def _with_records(opts: SurveyOptions, rows: pl.DataFrame) -> pl.DataFrame:
    """This rank's planned rows with their records' columns, read again from the metadata file (only
    those entries), in the order of a one-process plan."""
    records = read_records(
        opts.metadata,
        rows["record_index"].to_numpy(),
        rows["entry_offset"].to_numpy(),
        rows["entry_len"].to_numpy(),
        num_threads=opts.num_threads,
    )
    return in_record_order(pl.concat([records, rows.drop("record_index", *ENTRY_COLUMNS)], how="horizontal"))
