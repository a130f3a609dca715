"""The Rust background Parquet writer on its own (hpd_encode.ParquetWriter)."""

from __future__ import annotations

import ast
import io
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

import hpd_encode
from hpd_encode.schema import PART_SCHEMA


def make_rows(n: int, start: int = 0, shape=(16, 8, 8), dtype=np.float32) -> list[dict]:
    rng = np.random.default_rng(start)
    return [
        {
            "prompt": f"prompt {i} 'quoted' \u00e9", "model1": "m1", "model2": "m2",
            "image1_path": f"a/{i}.jpg", "image2_path": f"b/{i}.png",
            "latent1": rng.standard_normal(shape).astype(dtype), "latent2": rng.standard_normal(shape).astype(dtype),
            "record_index": i, "votes_chosen": i % 7, "votes_rejected": 3, "confidence": i / 3,
            "height": shape[1] * 8, "width": shape[2] * 8, "bucket_id": 1,
            "orig_chosen_height": 100 + i, "orig_chosen_width": 200, "orig_rejected_height": 300,
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
    assert [f.metadata.row_group(i).num_rows for i in range(3)] == [100, 100, 50]
    table = f.read()
    assert table.schema.names == PART_SCHEMA.names
    for i in (0, 99, 100, 249):
        got = {k: table[k][i].as_py() for k in table.schema.names}
        want = rows[i]
        assert np.array_equal(np.load(io.BytesIO(got["latent1"])), want["latent1"])
        assert np.array_equal(np.load(io.BytesIO(got["latent2"])), want["latent2"])
        assert got["latent1_shape"] == [16, 8, 8]
        details = ast.literal_eval(got["detailed_results"])
        assert details == {
            "votes_chosen": i % 7, "votes_rejected": 3, "confidence": i / 3,
            "orig_chosen_hw": [100 + i, 200], "orig_rejected_hw": [300, 400],
            "final_chosen_hw": [64, 64], "final_rejected_hw": [64, 64],
        }
        assert got["prompt"] == want["prompt"]


def test_float16_and_defaults(tmp_path):
    row = {"prompt": "p", "image1_path": "a", "image2_path": "b",
           "latent1": np.ones((4, 2, 3), np.float16), "latent2": np.zeros((4, 2, 3), np.float16)}
    with hpd_encode.ParquetWriter(tmp_path / "x.parquet") as w:
        w.submit([row])
    t = pq.read_table(tmp_path / "x.parquet").to_pylist()[0]
    assert np.load(io.BytesIO(t["latent1"])).dtype == np.float16
    assert ast.literal_eval(t["detailed_results"])["final_chosen_hw"] == [16, 24]
    assert (t["votes_chosen"], t["confidence"], t["model1"]) == (0, 0.0, "")


def test_bad_rows_raise_clear_errors(tmp_path):
    w = hpd_encode.ParquetWriter(tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="missing 'prompt'"):
        w.submit([{"image1_path": "a", "image2_path": "b", "latent1": np.zeros(3, np.float32),
                   "latent2": np.zeros(3, np.float32)}])
    with pytest.raises(ValueError, match="float32 or float16"):
        w.submit([{**make_rows(1)[0], "latent1": np.zeros((2, 2), np.int64)}])
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
        rows = [{{"prompt": "p", "image1_path": "a", "image2_path": "b",
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
