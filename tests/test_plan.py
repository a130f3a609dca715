"""The array planner gives exactly the plans of the object-based planner it
replaced (tests/reference_planner.py): same rows per rank, same row order,
same jobs, same batches, for 1, 2 and 3 ranks, with and without sharing."""

from __future__ import annotations

import random

import numpy as np
import polars as pl
import pytest

import reference_planner as ref
from hpd_encode import BucketSet
from hpd_encode.pipeline.options import BatchSize
from hpd_encode.pipeline.plan import apply_pair_rules, order_and_batch, partition
from hpd_encode.pipeline.survey import Survey

SIZES = [
    (1024, 1024),
    (1216, 832),
    (832, 1216),
    (1344, 768),
    (1080, 1080),
    (1200, 800),
    (512, 512),
    (768, 1024),
    (200, 200),
    (1024, 700),
]


def _corpus(seed: int, n_prompts: int = 40) -> tuple[pl.DataFrame, pl.Series]:
    """Prompts with 2-5 images each and all their pairs, a few cross-prompt
    pairs, a pair of one image with itself, and repeated pairs."""
    rng = random.Random(seed)
    paths: list[str] = []
    size_of: dict[str, tuple[int, int]] = {}
    recs: list[tuple[str, str]] = []
    for p in range(n_prompts):
        imgs = [f"p{p:03d}/img{k}.jpg" for k in range(rng.randint(2, 5))]
        base = rng.choice(SIZES)
        for im in imgs:
            size_of[im] = base if rng.random() < 0.75 else rng.choice(SIZES)
        paths += imgs
        pairs = [(a, b) for i, a in enumerate(imgs) for b in imgs[i + 1 :]]
        rng.shuffle(pairs)
        recs += [(a, b) if rng.random() < 0.5 else (b, a) for a, b in pairs]
    for _ in range(n_prompts // 4):
        recs.append((rng.choice(paths), rng.choice(paths)))
    recs.append((paths[0], paths[0]))
    recs += recs[:3]
    images = pl.Series("path", sorted(set(paths)))
    id_of = {p: i for i, p in enumerate(images.to_list())}
    rows = pl.DataFrame(
        {
            "record_index": np.arange(len(recs), dtype=np.int64),
            "path1": [a for a, _ in recs],
            "path2": [b for _, b in recs],
            "id1": [id_of[a] for a, _ in recs],
            "id2": [id_of[b] for _, b in recs],
            "h1": [size_of[a][0] for a, _ in recs],
            "w1": [size_of[a][1] for a, _ in recs],
            "h2": [size_of[b][0] for _, b in recs],
            "w2": [size_of[b][1] for _, b in recs],
            "pairable": [True] * len(recs),
        }
    )
    return rows, images


def _reference_rows(kept: pl.DataFrame) -> list[ref.PlannedRow]:
    return [
        ref.PlannedRow(
            ref.Record(r["record_index"], r["path1"], r["path2"]),
            r["bucket_id"],
            r["height"],
            r["width"],
            (r["h1"], r["w1"]),
            (r["h2"], r["w2"]),
        )
        for r in kept.iter_rows(named=True)
    ]


BATCH = BatchSize(pixels=3 * 1024 * 1024)


def _batch_size_for(h: int, w: int) -> int:
    """The reference planner's form of :data:`BATCH`."""
    return BATCH.per_call(h, w, "cpu")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("share", [True, False])
def test_array_planner_matches_the_object_planner(seed: int, world: int, share: bool) -> None:
    records, images = _corpus(seed)
    survey = Survey(
        records=records,
        images=pl.DataFrame({"path": images}),
        failures=[],
        n_entries=records.height,
        n_done=0,
    )
    kept = apply_pair_rules(survey.pairable, BucketSet.hpdv3())
    assert kept.dropped, "the corpus should exercise the pair rules' drops too"
    assert kept.rows.height > 50
    split = partition(kept.rows, world, share, with_costs=True)
    ranks = split.rank_of_row
    expected = ref.partition(_reference_rows(kept.rows), world, share)
    for r in range(world):
        mine = kept.rows.filter(pl.Series(ranks == r))
        assert sorted(mine["record_index"].to_list()) == sorted(x.record.index for x in expected[r])
        plan = order_and_batch(mine, share, BATCH, "cpu")
        e_rows, e_jobs, e_batches = ref.order_and_batch(expected[r], share, _batch_size_for)
        assert plan.rows["record_index"].to_list() == [x.record.index for x in e_rows]
        got_jobs = list(
            zip(images.gather(plan.job_path).to_list(), plan.job_height.tolist(), plan.job_width.tolist())
        )
        assert got_jobs == [(j.path, j.height, j.width) for j in e_jobs]
        assert plan.row_jobs.tolist() == [[x.job1, x.job2] for x in e_rows]
        got_batches = [list(range(a, b)) for a, b in zip(plan.batch_start[:-1], plan.batch_start[1:])]
        assert got_batches == [b.jobs for b in e_batches]
        ptr, idx = plan.job_rows()
        assert [sorted(idx[ptr[j] : ptr[j + 1]].tolist()) for j in range(plan.n_jobs)] == [
            sorted(j.rows) for j in e_jobs
        ]
    costs = split.cost_per_rank
    assert costs is not None and len(costs) == world
    # Each rank's cost is the pixels of the jobs of its own plan.
    for r in range(world):
        plan = order_and_batch(kept.rows.filter(pl.Series(ranks == r)), share, BATCH, "cpu")
        assert costs[r] == int((plan.job_height * plan.job_width).sum())
    assert split.jobs == sum(
        order_and_batch(kept.rows.filter(pl.Series(ranks == r)), share, BATCH, "cpu").n_jobs
        for r in range(world)
    )
    if share:
        # Each (image, size) once over all ranks: the costs add up to the distinct jobs' pixels.
        distinct = {
            (p, h, w)
            for p, h, w in zip(
                pl.concat([kept.rows["path1"], kept.rows["path2"]]).to_list(),
                kept.rows["height"].to_list() * 2,
                kept.rows["width"].to_list() * 2,
            )
        }
        assert sum(costs) == sum(h * w for _, h, w in distinct)


def test_empty_plan() -> None:
    records, _ = _corpus(0, n_prompts=1)
    plan = order_and_batch(
        records.head(0).with_columns(pl.lit(0).alias("height"), pl.lit(0).alias("width")),
        True,
        BATCH,
        "cpu",
    )
    assert plan.n_rows == 0 and plan.n_jobs == 0 and plan.n_batches == 0
