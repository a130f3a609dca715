"""The object-based planner of hpd-encode 0.1 (before the columnar rewrite),
kept verbatim as the oracle the array planner must match row for row, job
for job and batch for batch (tests/test_plan.py, benches/bench_plan.py).

Original docstring: planning the encode: distinct (image, target size) jobs, rows that need
them, a cost-balanced split across ranks, and a work order that keeps memory
bounded.

A *row* is one output comparison; it needs two *jobs* (its chosen and its
rejected image at the pair's target size). With sharing on, a job is keyed by
``(image path, height, width)``, so an image compared several times at the
same size is decoded and encoded once. With sharing off every row has two
jobs of its own (the reference's behaviour).

Rows are split across ranks by connected component (rows that share a job
stay together, so an image is encoded by one rank), balanced by pixel cost
(largest component first onto the least-loaded rank). Within a rank, rows
are ordered by (target size, component): a component's jobs run back to back,
so its rows complete soon after its first job. The latents held while waiting
for a partner are therefore bounded by one batch plus the jobs of the
components the current batch touches (in HPDv3, a prompt's handful of images).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Record:
    index: int
    path1: str
    path2: str


@dataclass
class PlannedRow:
    record: Record
    bucket_id: int
    height: int
    width: int
    orig_chosen: tuple[int, int]
    orig_rejected: tuple[int, int]
    job1: int = -1
    job2: int = -1


@dataclass
class Job:
    path: str  # as given in the metadata (relative to the data root)
    height: int
    width: int
    rows: list[int] = field(default_factory=list)  # indices into the row list

    @property
    def seed_key(self) -> str:
        """The per-item seed depends on the image and its target size only,
        so an image's sampled latent is the same in every row (and with or
        without sharing)."""
        return f"{self.path}@{self.height}x{self.width}"


@dataclass
class Batch:
    height: int
    width: int
    jobs: list[int]


def attach_jobs(rows: list[PlannedRow], share: bool) -> list[Job]:
    """Create the jobs for ``rows`` (in order of first use) and point each row at its two."""
    jobs: list[Job] = []
    index: dict[tuple[str, int, int], int] = {}
    for r_i, row in enumerate(rows):
        ids = []
        for path in (row.record.path1, row.record.path2):
            key = (path, row.height, row.width)
            j = index.get(key) if share else None
            if j is None:
                j = len(jobs)
                jobs.append(Job(path, row.height, row.width))
                if share:
                    index[key] = j
            jobs[j].rows.append(r_i)
            ids.append(j)
        row.job1, row.job2 = ids
    return jobs


def _fresh(rows: list[PlannedRow]) -> list[PlannedRow]:
    """Copies of ``rows`` without job links (planning sets them anew)."""
    return [
        PlannedRow(r.record, r.bucket_id, r.height, r.width, r.orig_chosen, r.orig_rejected) for r in rows
    ]


def _components(rows: list[PlannedRow], n_jobs: int) -> list[int]:
    parent = list(range(n_jobs))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for row in rows:
        a, b = find(row.job1), find(row.job2)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return [find(j) for j in range(n_jobs)]


def partition(rows: list[PlannedRow], world_size: int, share: bool) -> list[list[PlannedRow]]:
    """Split rows across ranks by component, balanced by pixel cost (LPT).
    Deterministic: every rank computes the same split."""
    if world_size <= 1:
        return [list(rows)]
    rows = _fresh(rows)
    jobs = attach_jobs(rows, share)
    comp_of_job = _components(rows, len(jobs))
    cost: dict[int, int] = {}
    first: dict[int, int] = {}
    for j, job in enumerate(jobs):
        c = comp_of_job[j]
        cost[c] = cost.get(c, 0) + job.height * job.width
    members: dict[int, list[PlannedRow]] = {}
    for row in rows:
        c = comp_of_job[row.job1]
        members.setdefault(c, []).append(row)
        first.setdefault(c, row.record.index)
    load = [0] * world_size
    out: list[list[PlannedRow]] = [[] for _ in range(world_size)]
    for c in sorted(cost, key=lambda c: (-cost[c], first[c])):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        load[rank] += cost[c]
        out[rank].extend(members[c])
    return out


def order_and_batch(
    rows: list[PlannedRow], share: bool, batch_size_for: Callable[[int, int], int]
) -> tuple[list[PlannedRow], list[Job], list[Batch]]:
    """Order one rank's rows (by size, then component), create their jobs and
    cut the jobs into same-size batches."""
    rows = _fresh(rows)
    jobs = attach_jobs(rows, share)
    comp = _components(rows, len(jobs))
    first_of_comp: dict[int, int] = {}
    for row in rows:
        first_of_comp.setdefault(comp[row.job1], row.record.index)
    rows.sort(key=lambda r: (-(r.height * r.width), r.height, first_of_comp[comp[r.job1]], r.record.index))
    jobs = attach_jobs(rows, share)
    batches: list[Batch] = []
    for j, job in enumerate(jobs):
        last = batches[-1] if batches else None
        limit = max(1, batch_size_for(job.height, job.width))
        if last is None or (last.height, last.width) != (job.height, job.width) or len(last.jobs) >= limit:
            batches.append(Batch(job.height, job.width, [j]))
        else:
            last.jobs.append(j)
    return rows, jobs, batches
