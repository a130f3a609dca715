"""Under torchrun each rank plans from its share (pipeline/shared.py): its
metadata entries, the images it probes, the rows it encodes. The result must
be the plan one process makes: same rows per rank in the same order, same
jobs, same batches; and rank 0 must report every failure. Real JPEG files,
real torchrun processes (gloo)."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from conftest import torchrun
from hpd_encode.dist import Dist
from hpd_encode.pipeline import _Plan
from hpd_encode.pipeline.options import EncodeOptions
from hpd_encode.pipeline.plan import order_and_batch, partition

SIZES = [(1024, 1024), (1216, 832), (832, 1216), (1344, 768), (1200, 800), (512, 512), (200, 200)]

WORKER = r"""
import json, sys
from hpd_encode.dist import init_dist
from hpd_encode.pipeline import _Plan
from hpd_encode.pipeline.options import EncodeOptions

root, meta, out, share = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
dist = init_dist()
opts = EncodeOptions.create(root, meta, None, None, dry_run=True, share=share, batch_size=3, num_threads=1)
plan = _Plan(opts.survey, opts.plan, dist, set(), "cpu", with_costs=True)
counts = plan.failure_counts(dist)  # what a dry run reports, before any gather of the failures
plan.gather_failures(dist)
rp = plan.rank_plan
images = plan.survey.images["path"]
report = {
    "rows": rp.rows.drop("id1", "id2").rows(),
    "jobs": list(zip(images.gather(rp.job_path).to_list(), rp.job_height.tolist(), rp.job_width.tolist())),
    "row_jobs": rp.row_jobs.tolist(),
    "batch_start": rp.batch_start.tolist(),
    "rows_planned": plan.rows_planned,
    "costs": plan.split.cost_per_rank,
    "n_entries": plan.survey.n_entries,
}
if dist.rank == 0:
    report["failures"] = sorted((f.record_index, f.stage, f.kind, f.detail) for f in plan.failures)
    report["counts"] = counts
with open(f"{out}/rank{dist.rank}.json", "w") as f:
    json.dump(report, f)
dist.close()
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Prompts with 2-4 images each and all their pairs, cross-prompt pairs,
    repeats, and bad records: a missing image, a path escaping the root, a
    record that is not an object, a negative vote."""
    rng = random.Random(7)
    root = tmp_path_factory.mktemp("shared") / "data"
    paths: list[str] = []
    recs: list[object] = []
    for p in range(24):
        imgs = [f"p{p:02d}/img{k}.jpg" for k in range(rng.randint(2, 4))]
        base = rng.choice(SIZES)
        for im in imgs:
            h, w = base if rng.random() < 0.7 else rng.choice(SIZES)
            (root / im).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (w, h), (p * 9 % 255, 80, 120)).save(root / im, quality=30)
        paths += imgs
        for i, a in enumerate(imgs):
            for b in imgs[i + 1 :]:
                recs.append({"prompt": f"prompt {p}", "path1": a, "path2": b, "choice_dist": [3, 1]})
    for _ in range(8):
        recs.append({"prompt": "cross", "path1": rng.choice(paths), "path2": rng.choice(paths)})
    recs += recs[:3]
    rng.shuffle(recs)
    recs.insert(5, {"prompt": "gone", "path1": paths[0], "path2": "p99/missing.jpg"})
    recs.insert(9, {"prompt": "escape", "path1": "../outside.jpg", "path2": paths[1]})
    recs.insert(13, [1, 2])
    recs.insert(17, {"prompt": "neg", "path1": paths[2], "path2": paths[3], "choice_dist": [-1, 2]})
    meta = root.parent / "train.json"
    meta.write_text(json.dumps(recs, indent=1))
    return root, meta


def _expected(root: Path, meta: Path, world: int, share: bool) -> tuple[list[dict], list[tuple]]:
    """The plan of one process, split for ``world`` ranks."""
    opts = EncodeOptions.create(
        root, meta, None, None, dry_run=True, share=share, batch_size=3, num_threads=1
    )
    plan = _Plan(opts.survey, opts.plan, Dist(), set(), "cpu")
    images = plan.survey.images["path"]
    split = partition(plan.kept.rows, world, share, with_costs=True)
    out = []
    for r in range(world):
        rp = order_and_batch(
            plan.kept.rows.filter(pl.Series(split.rank_of_row == r)), share, opts.plan.batch_size, "cpu"
        )
        rows = plan.survey.with_record_columns(rp.rows)
        out.append(
            {
                "rows": [list(x) for x in rows.drop("id1", "id2").rows()],
                "jobs": [
                    [p, h, w]
                    for p, h, w in zip(
                        images.gather(rp.job_path).to_list(), rp.job_height.tolist(), rp.job_width.tolist()
                    )
                ],
                "row_jobs": rp.row_jobs.tolist(),
                "batch_start": rp.batch_start.tolist(),
                "rows_planned": plan.rows_planned,
                "costs": split.cost_per_rank,
                "n_entries": plan.survey.n_entries,
            }
        )
    failures = sorted((f.record_index, f.stage, f.kind, f.detail) for f in plan.failures)
    return out, [list(f) for f in failures]


@pytest.mark.slow
@pytest.mark.parametrize(("world", "share"), [(2, True), (3, True), (3, False)])
def test_each_rank_plans_from_its_share_as_one_process_would(corpus, tmp_path, world, share):
    root, meta = corpus
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [
        *torchrun(world),
        str(script),
        str(root),
        str(meta),
        str(tmp_path),
        "1" if share else "0",
    ]
    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert r.returncode == 0, r.stderr[-6000:]
    expected, failures = _expected(root, meta, world, share)
    assert sum(len(e["rows"]) for e in expected) == expected[0]["rows_planned"] > 40
    assert len(failures) >= 4
    for rank in range(world):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got.pop("failures", failures) == failures
        if rank == 0:
            kinds: dict[str, int] = {}
            for f in failures:
                kinds[f[2]] = kinds.get(f[2], 0) + 1
            assert got.pop("counts") == [len(failures), dict(sorted(kinds.items())), 0]
        assert got == expected[rank], f"rank {rank}"
    assert np.sum(expected[0]["costs"]) > 0


def test_probe_owners_are_ranks_that_saw_the_image() -> None:
    from hpd_encode._core import image_owners

    rng = np.random.default_rng(3)
    seen = [np.unique(rng.integers(0, 2**63, 50, dtype=np.uint64) % 300) for _ in range(4)]
    every = np.unique(np.concatenate(seen))
    probed = np.zeros(len(every), dtype=np.int64)
    for rank in range(4):
        n, ids, probe, seer_start, seers = image_owners(seen, rank)
        assert n == len(every)
        assert ids.tolist() == np.searchsorted(every, seen[rank]).tolist()  # the same ids on every rank
        for k, p in enumerate(probe):
            h = seen[rank][p]
            saw = [r for r in range(4) if h in seen[r]]
            assert seers[seer_start[k] : seer_start[k + 1]].tolist() == saw  # sizes go to those
            probed[ids[p]] += 1
    assert (probed == 1).all()  # each image probed once, by a rank that saw it
    # No image anywhere (every record done, or none good): nothing to probe.
    n, ids, probe, _, _ = image_owners([np.zeros(0, np.uint64)] * 3, 2)
    assert (n, len(ids), len(probe)) == (0, 0, 0)
    with pytest.raises(ValueError, match="not sorted"):
        image_owners([np.array([3, 1], dtype=np.uint64)], 0)


@pytest.mark.slow
def test_a_dry_run_with_no_records_under_torchrun_is_an_empty_plan(corpus) -> None:
    root, meta = corpus
    args = ["--data-root", str(root), "--metadata", str(meta), "--dry-run", "--json", "--limit", "0"]
    r = subprocess.run(
        [*torchrun(2), "-m", "hpd_encode", "encode", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-4000:]
    report = json.loads(r.stdout)
    assert (report["records"], report["rows_planned"], report["jobs"]) == (0, 0, 0)
    assert report["pixel_cost_per_rank"] == [0, 0]
