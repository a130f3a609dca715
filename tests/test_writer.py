"""The Rust background Parquet writer on its own (hpd_encode.ParquetWriter), and
the part-file schema it owns (hpd_encode.schema derives from its exports)."""

from __future__ import annotations

import ast
import io
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import hpd_encode
from hpd_encode import _core, schema
from hpd_encode._core import HpdError, WriterError
from hpd_encode.schema import PART_SCHEMA

InvalidRowError = _core.InvalidRowError


def make_rows(n: int, start: int = 0, shape=(16, 8, 8), dtype=np.float32) -> list[dict]:
    rng = np.random.default_rng(start)
    return [
        {
            "prompt": f"prompt {i} 'quoted' \u00e9",
            "model1": "m1",
            "model2": "m2",
            "image1_path": f"a/{i}.jpg",
            "image2_path": f"b/{i}.png",
            "latent1": rng.standard_normal(shape).astype(dtype),
            "latent2": rng.standard_normal(shape).astype(dtype),
            "record_index": i,
            "votes_chosen": i % 7,
            "votes_rejected": 3,
            "confidence": i / 3,
            "height": shape[1] * 8,
            "width": shape[2] * 8,
            "bucket_id": 1,
            "orig_chosen_height": 100 + i,
            "orig_chosen_width": 200,
            "orig_rejected_height": 300,
            "orig_rejected_width": 400,
        }
        for i in range(start, start + n)
    ]


def test_roundtrip_reference_readable(tmp_path):
    rows = make_rows(250)
    path = tmp_path / "part_rank00.parquet"
    with hpd_encode.ParquetWriter(path, row_group_size=100) as w:
        w.submit(rows[:37])
        w.submit(rows[37:])
        assert not path.exists(), "the final name must appear only when complete"
    stats = w.close()  # idempotent after the context manager closed it
    assert stats["rows"] == 250 and stats["row_groups"] == 3
    f = pq.ParquetFile(path)
    assert f.schema_arrow == PART_SCHEMA  # names, types and nullability: exactly the derived schema
    assert [f.metadata.row_group(i).num_rows for i in range(3)] == [100, 100, 50]
    # The reference consumer's way: a row group, then np.load and ast.literal_eval on one row.
    for i in (0, 99, 100, 249):
        got = f.read_row_group(i // 100).slice(i % 100, 1).to_pylist()[0]
        want = rows[i]
        assert np.array_equal(np.load(io.BytesIO(got["latent1"])), want["latent1"])
        assert np.array_equal(np.load(io.BytesIO(got["latent2"])), want["latent2"])
        assert got["latent1_shape"] == [16, 8, 8]
        details = ast.literal_eval(got["detailed_results"])
        assert details == {
            "votes_chosen": i % 7,
            "votes_rejected": 3,
            "confidence": i / 3,
            "orig_chosen_hw": [100 + i, 200],
            "orig_rejected_hw": [300, 400],
            "final_chosen_hw": [64, 64],
            "final_rejected_hw": [64, 64],
        }
        assert got["prompt"] == want["prompt"] and got["record_index"] == i


def test_latents_are_one_page_per_value_with_an_offset_index(tmp_path):
    # (Page counts and byte ranges are checked in Rust, writer.rs tests, with the
    # parquet crate's page index; here what pyarrow sees of the same layout.)
    path = tmp_path / "x.parquet"
    with hpd_encode.ParquetWriter(path, row_group_size=10) as w:
        w.submit(make_rows(25, shape=(4, 16, 16)))
    md = pq.ParquetFile(path).metadata
    names = PART_SCHEMA.names
    npy_bytes = 128 + 4 * 4 * 16 * 16  # header + (4, 16, 16) float32
    for rg in range(md.num_row_groups):
        group = md.row_group(rg)
        for j in range(group.num_columns):
            col = group.column(j)
            assert col.has_offset_index, (rg, names[j])
            if names[j] in ("latent1", "latent2"):
                assert col.compression == "UNCOMPRESSED"  # the default: see test_latent_compression
                assert not col.is_stats_set and col.dictionary_page_offset is None, names[j]
                # Each value is its own page: beside the values and their 4-byte
                # lengths, the chunk holds one page header (> 12 bytes) per row.
                overhead = col.total_uncompressed_size - group.num_rows * (npy_bytes + 4)
                assert overhead > 12 * group.num_rows, (names[j], overhead)
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [10, 10, 5]


@pytest.mark.parametrize("codec", [None, "none", "zstd"])
def test_latent_compression(tmp_path, codec):
    """Latent column chunks are uncompressed by default (zstd saves ~8 % on
    float latents and halves read speed per core), zstd when asked; every
    other column is zstd either way. Both read back identically the
    reference's way and through the Rust reader."""
    from hpd_encode._core import clear_reader_cache, read_pairs

    rows = make_rows(23, shape=(4, 16, 16)) + make_rows(4, start=23, shape=(4, 16, 16), dtype=np.float16)
    path = tmp_path / "x.parquet"
    kwargs = {} if codec is None else {"latent_compression": codec}
    with hpd_encode.ParquetWriter(path, row_group_size=10, **kwargs) as w:
        w.submit(rows)
    want = "ZSTD" if codec == "zstd" else "UNCOMPRESSED"
    f = pq.ParquetFile(path)
    md = f.metadata
    for rg in range(md.num_row_groups):
        for j, name in enumerate(PART_SCHEMA.names):
            got = md.row_group(rg).column(j).compression
            assert got == (want if name in ("latent1", "latent2") else "ZSTD"), (codec, rg, name)
    clear_reader_cache()
    requests = [(path, i // 10, i % 10) for i in range(len(rows))]
    pairs = read_pairs(requests)
    for i, (a, b) in enumerate(pairs):
        ref = f.read_row_group(i // 10).slice(i % 10, 1).to_pylist()[0]
        for k, got in ((1, a), (2, b)):
            written = rows[i][f"latent{k}"]
            from_ref = np.load(io.BytesIO(ref[f"latent{k}"]))
            assert from_ref.dtype == written.dtype and np.array_equal(from_ref, written), (codec, i, k)
            assert got.dtype == written.dtype and np.array_equal(got, written), (codec, i, k)


def test_latent_compression_names_agree():
    from hpd_encode.cli._args import LATENT_COMPRESSIONS as CLI_CHOICES
    from hpd_encode.latents.repack import LATENT_CODECS

    assert _core.LATENT_COMPRESSIONS == schema.LATENT_COMPRESSIONS == CLI_CHOICES == LATENT_CODECS
    assert _core.LATENT_COMPRESSIONS[0] == "none", "the first is the default"


def test_encode_passes_latent_compression_to_the_writer(tmp_path):
    """``encode --latent-compression`` / ``EncodeOptions.latent_compression``
    reach the part files through ``PartRotator``; a bad name is refused up front."""
    from hpd_encode.cli import build_parser
    from hpd_encode.output_dir import PartRotator
    from hpd_encode.pipeline import EncodeOptions

    (tmp_path / "meta.json").write_text("[]")
    common = ["--data-root", str(tmp_path), "--metadata", str(tmp_path / "meta.json"), "--dry-run"]
    parser = build_parser()
    assert parser.parse_args(["encode", *common]).latent_compression == "none"
    args = parser.parse_args(["encode", *common, "--latent-compression", "zstd"])
    opts = EncodeOptions.create(
        tmp_path, tmp_path / "meta.json", None, None, dry_run=True, latent_compression="zstd"
    )
    assert args.latent_compression == opts.latent_compression == "zstd"
    assert (
        EncodeOptions.create(tmp_path, tmp_path / "meta.json", None, None, dry_run=True).latent_compression
        == "none"
    )
    with pytest.raises(ValueError, match="latent_compression must be one of none, zstd, not 'lz4'"):
        EncodeOptions.create(
            tmp_path, tmp_path / "meta.json", None, None, dry_run=True, latent_compression="lz4"
        )
    for codec, want in (("none", "UNCOMPRESSED"), ("zstd", "ZSTD")):
        out = tmp_path / codec
        out.mkdir()
        rotator = PartRotator(out, 0, 0, latent_compression=codec)
        assert rotator.submit(make_rows(3)) == []
        rotator.commit()
        (part,) = sorted(out.glob("*.parquet"))
        group = pq.ParquetFile(part).metadata.row_group(0)
        assert {group.column(i).compression for i in (6, 7)} == {want}, codec


def test_float16_and_defaults(tmp_path):
    row = {
        "prompt": "p",
        "image1_path": "a",
        "image2_path": "b",
        "height": 16,
        "width": 24,
        "latent1": np.ones((4, 2, 3), np.float16),
        "latent2": np.zeros((4, 2, 3), np.float16),
        "model2": None,
    }
    with hpd_encode.ParquetWriter(tmp_path / "x.parquet") as w:
        w.submit([row])
    t = pq.read_table(tmp_path / "x.parquet").to_pylist()[0]
    assert np.load(io.BytesIO(t["latent1"])).dtype == np.float16
    # Missing metadata takes the reference's defaults; unknown extras are null, never invented.
    assert ast.literal_eval(t["detailed_results"]) == {
        "votes_chosen": 0,
        "votes_rejected": 0,
        "confidence": 0.0,
        "orig_chosen_hw": None,
        "orig_rejected_hw": None,
        "final_chosen_hw": [16, 24],
        "final_rejected_hw": [16, 24],
    }
    assert (t["votes_chosen"], t["confidence"], t["model1"], t["model2"]) == (0, 0.0, "", "")
    assert (t["record_index"], t["bucket_id"], t["orig_chosen_height"], t["orig_rejected_width"]) == (
        None,
    ) * 4


def _row(**changes) -> dict:
    row = make_rows(1, start=7)[0]
    for k, v in changes.items():
        if v is _DROP:
            del row[k]
        else:
            row[k] = v
    return row


_DROP = object()


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"prompt": _DROP}, "prompt", "required"),
        ({"height": _DROP}, "height", "required"),
        ({"latent2": None}, "latent2", "required"),
        ({"votes": 3}, "votes", "not a row field"),
        ({"votes_chosen": 2**63}, "votes_chosen", "integer from 0 to 9223372036854775807"),
        ({"votes_chosen": 10**400}, "votes_chosen", "401 characters"),
        ({"votes_rejected": -1}, "votes_rejected", "got -1"),
        ({"votes_rejected": 2.7}, "votes_rejected", "got 2.7"),
        ({"votes_rejected": True}, "votes_rejected", "got True"),
        ({"confidence": float("nan")}, "confidence", "finite"),
        ({"confidence": "high"}, "confidence", "a number"),
        ({"image1_path": "a/\ud800.jpg"}, "image1_path", "not valid Unicode"),
        ({"model1": ["x"]}, "model1", "must be a str, not list"),
        ({"orig_chosen_width": _DROP}, "orig_chosen_width", "give both or neither"),
        ({"width": 0}, "width", "integer from 1"),
        ({"bucket_id": 2**31}, "bucket_id", "integer from 0 to 2147483647"),
        ({"latent1": np.zeros((2, 2), np.int64)}, "latent1", "float32 or float16"),
        ({"latent1": np.zeros((2, 2), ">f4")}, "latent1", "little-endian"),
        ({"latent1": [1.0, 2.0]}, "latent1", "numpy array"),
    ],
)
def test_bad_rows_name_the_field_and_the_record(tmp_path, changes, field, reason):
    path = tmp_path / "x.parquet"
    w = hpd_encode.ParquetWriter(path)
    good = make_rows(3)
    with pytest.raises(InvalidRowError) as info:
        w.submit([good[0], _row(**changes), good[1]])
    e = info.value
    assert isinstance(e, ValueError) and isinstance(e, WriterError) and isinstance(e, HpdError)
    assert f"field '{field}'" in str(e) and reason in str(e), str(e)
    assert "record_index 7" in str(e) and "row 1 of this submit()" in str(e)
    assert (e.field, e.record_index, e.position) == (field, 7, 1)
    # Nothing of the failed call was queued: the caller drops the bad row and resubmits the rest.
    w.submit([good[0], good[1]])
    assert w.close()["rows"] == 2
    assert pq.read_table(path, columns=["record_index"])["record_index"].to_pylist() == [0, 1]


def test_bad_record_index_and_non_dict_rows(tmp_path):
    w = hpd_encode.ParquetWriter(tmp_path / "x.parquet")
    with pytest.raises(InvalidRowError, match=r"no record_index\).*'record_index'.*got -3"):
        w.submit([_row(record_index=-3)])
    with pytest.raises(
        InvalidRowError, match=r"row 0 of this submit.*\): the row must be a dict, not tuple"
    ) as info:
        w.submit([("prompt", "p")])
    assert (info.value.field, info.value.record_index, info.value.position) == (None, None, 0)
    with pytest.raises(TypeError, match="list of dicts"):
        w.submit(_row())  # a dict, not a list of dicts
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="row_group_size must be between 1 and 100, got 101"):
        hpd_encode.ParquetWriter(tmp_path / "x.parquet", row_group_size=schema.ROW_GROUP_SIZE + 1)
    with pytest.raises(ValueError, match="zstd level"):
        hpd_encode.ParquetWriter(tmp_path / "x.parquet", zstd_level=99)
    with pytest.raises(ValueError, match='latent_compression must be one of none, zstd, not "lz4"'):
        hpd_encode.ParquetWriter(tmp_path / "x.parquet", latent_compression="lz4")
    assert list(tmp_path.iterdir()) == []


def test_schema_is_derived_from_the_writer(tmp_path):
    assert PART_SCHEMA.names == [n for n, _ in _core.part_columns()]
    assert PART_SCHEMA.names[:10] == schema.REFERENCE_COLUMNS
    assert PART_SCHEMA.field("latent1_shape").type == pa.list_(pa.int64())
    assert PART_SCHEMA.field("bucket_id").type == pa.int32()
    assert (schema.ROW_GROUP_SIZE, schema.LATENT_DOWN_FACTOR) == (100, 8)
    # The row type says what the writer accepts.
    fields = dict(schema.ROW_FIELDS)
    assert set(schema.PartRow.__annotations__) == set(fields)
    assert schema.PartRow.__required_keys__ == {n for n, required in fields.items() if required}
    # The temporary name rule: what the writer creates is what TEMP_RE matches.
    path = tmp_path / "part_rank03-0002.parquet"
    tmp = schema.temp_name(path)
    assert tmp.parent == tmp_path
    m = schema.TEMP_RE.match(tmp.name)
    assert m and m["name"] == path.name and int(m["pid"]) == os.getpid()
    w = hpd_encode.ParquetWriter(path)
    w.submit(make_rows(1))
    assert [p.name for p in tmp_path.iterdir()] == [tmp.name]
    w.close()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert not schema.TEMP_RE.match(path.name)


def test_bad_rows_raise_clear_errors(tmp_path):
    w = hpd_encode.ParquetWriter(tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="'prompt' is required"):
        w.submit(
            [
                {
                    "image1_path": "a",
                    "image2_path": "b",
                    "latent1": np.zeros(3, np.float32),
                    "latent2": np.zeros(3, np.float32),
                    "height": 8,
                    "width": 8,
                }
            ]
        )
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_exception_in_with_block_publishes_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with hpd_encode.ParquetWriter(tmp_path / "x.parquet") as w:
            w.submit(make_rows(5))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_back_pressure_bounded_queue(tmp_path):
    # Big rows through a queue of 1: the producer must wait for the writer thread.
    rows = make_rows(8, shape=(16, 128, 128))
    w = hpd_encode.ParquetWriter(tmp_path / "x.parquet", queue_size=1, row_group_size=2)
    max_queued = 0
    for r in rows * 4:
        w.submit([dict(r)])
        max_queued = max(max_queued, w.queued_rows)
    stats = w.close()
    assert stats["rows"] == 32
    assert max_queued <= 1 + 2 + 1  # queue + pending row group + in flight
    assert pq.ParquetFile(tmp_path / "x.parquet").metadata.num_row_groups == 16


def test_submit_releases_the_gil_while_waiting(tmp_path):
    # While submit blocks on a full queue, another Python thread keeps running.
    rows = make_rows(4, shape=(16, 128, 128))
    ticks = 0
    done = threading.Event()

    def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)

    t = threading.Thread(target=ticker)
    t.start()
    w = hpd_encode.ParquetWriter(tmp_path / "x.parquet", queue_size=1)
    start = time.monotonic()
    for _ in range(10):
        w.submit(rows)
    w.close()
    elapsed = time.monotonic() - start
    done.set()
    t.join()
    assert ticks > 0.2 * elapsed / 0.001 * 0.1  # the ticker was not starved


def test_writer_thread_error_is_reraised(tmp_path):
    # A "full disk": the file-size limit makes the writer thread's writes fail.
    script = textwrap.dedent(
        f"""
        import resource, signal, numpy as np, hpd_encode
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        rows = [{{"prompt": "p", "image1_path": "a", "image2_path": "b", "height": 512, "width": 512,
                 "latent1": np.random.rand(16, 64, 64).astype("f4"),
                 "latent2": np.random.rand(16, 64, 64).astype("f4")}} for _ in range(20)]
        w = hpd_encode.ParquetWriter({str(tmp_path / "x.parquet")!r}, row_group_size=2)
        try:
            for r in rows:
                w.submit([r])
            w.close()
        except hpd_encode.WriterError as e:
            print("WriterError:", e)
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "WriterError:" in r.stdout
    assert "File too large" in r.stdout or "os error 27" in r.stdout
    assert not (tmp_path / "x.parquet").exists()
    assert list(tmp_path.iterdir()) == [], "the temporary file is removed after a failure"


def test_two_threads_share_one_writer(tmp_path):
    # Both threads' rows land; submit waits for queue space without the GIL, so
    # the threads (and the writer thread) interleave.
    path = tmp_path / "x.parquet"
    w = hpd_encode.ParquetWriter(path, queue_size=2, row_group_size=50)
    errors: list[BaseException] = []

    def producer(start: int) -> None:
        try:
            rows = make_rows(200, start=start, shape=(4, 8, 8))
            for i in range(0, 200, 5):
                w.submit(rows[i : i + 5])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=producer, args=(start,)) for start in (0, 1000)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stats = w.close()
    assert stats["rows"] == 400 and stats["row_groups"] == 8
    got = sorted(pq.read_table(path, columns=["record_index"])["record_index"].to_pylist())
    assert got == [*range(200), *range(1000, 1200)]


def test_submit_after_close_is_a_clear_error(tmp_path):
    w = hpd_encode.ParquetWriter(tmp_path / "x.parquet")
    w.submit(make_rows(2))
    assert w.close()["rows"] == 2
    with pytest.raises(WriterError, match="already closed: submit rows before close"):
        w.submit(make_rows(1))
    w.abort()  # after close: nothing happens, the file stays
    assert w.close()["rows"] == 2 and (tmp_path / "x.parquet").exists()
    a = hpd_encode.ParquetWriter(tmp_path / "y.parquet")
    a.abort()
    with pytest.raises(WriterError, match="aborted"):
        a.submit(make_rows(1))
