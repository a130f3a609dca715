"""The output lock cannot be bypassed (issue 24, hostile finding 6): it is held on
the output directory itself, so deleting or replacing ``.hpd-encode.lock``
while a run holds it lets no second run in. Real processes throughout."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import encode_cmd, random_pngs
from hpd_encode.output_dir import LOCK_FILE, holder_if_busy
from hpd_encode.vae import make_tiny_vae

_HOLD = (
    "import sys, time\n"
    "from hpd_encode.output_dir import OutputLock\n"
    "lock = OutputLock(sys.argv[1], purpose='encode').acquire()\n"
    "print(lock.run_id, flush=True)\n"
    "time.sleep(600)\n"
)

_TRY = (
    "import sys\n"
    "from hpd_encode.errors import OutputBusyError\n"
    "from hpd_encode.output_dir import OutputLock\n"
    "try:\n"
    "    OutputLock(sys.argv[1]).acquire()\n"
    "    print('acquired')\n"
    "except OutputBusyError as e:\n"
    "    print('busy:', e)\n"
)


@pytest.fixture
def held(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str], str]]:
    """An output directory whose lock another process holds: (directory, that process, its run id)."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        run_id = proc.stdout.readline().strip()
        assert run_id, "the holder did not start"
        yield out, proc, run_id
    finally:
        proc.kill()
        proc.wait()


def _try(out: Path) -> str:
    done = subprocess.run([sys.executable, "-c", _TRY, str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_deleted_or_replaced_lock_file_lets_no_second_run_in(held) -> None:
    out, proc, run_id = held
    first = _try(out)
    assert first.startswith("busy:") and f"pid {proc.pid}" in first, first
    assert json.loads((out / LOCK_FILE).read_text())["run_id"] == run_id  # the torchrun ranks' check
    (out / LOCK_FILE).unlink()
    after_delete = _try(out)
    assert after_delete.startswith("busy:") and "in use" in after_delete, after_delete
    (out / LOCK_FILE).write_text(json.dumps({"pid": 1, "run_id": "forged"}))
    assert _try(out).startswith("busy:")
    assert holder_if_busy(out) is not None  # what verify and repack test
    proc.kill()
    proc.wait()
    # The kernel dropped the lock with its holder: a rerun gets in.
    assert _try(out) == "acquired"
    assert holder_if_busy(out) is None


def test_a_second_encode_is_refused_after_the_lock_file_is_deleted(held, tmp_path: Path) -> None:
    out, proc, _ = held
    root = tmp_path / "root"
    random_pngs(root, 2, 64)
    meta = tmp_path / "train.json"
    meta.write_text(json.dumps([{"prompt": "p", "path1": "0.png", "path2": "1.png"}]))
    vae = make_tiny_vae(tmp_path / "vae")
    (out / LOCK_FILE).unlink()
    done = subprocess.run(encode_cmd(root, meta, vae, out), capture_output=True, text=True, timeout=600)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(err) == 1, done.stderr
    assert "is in use" in err[0] and str(out) in err[0]
    assert not list(out.glob("part_rank*.parquet")) and not (out / "manifest.json").exists()


def test_push_holds_the_directory_so_no_run_starts_writing_it(tmp_path: Path) -> None:
    """``push``'s shared lock is on the directory itself, the lock a run takes: while it is held a
    run is refused, and once it is released a run gets in."""
    from hpd_encode.output_dir import shared_lock

    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).write_text("")  # an earlier run's lock file: it locks nothing by itself
    with shared_lock(out, allow_partial=False, what="push"):
        assert _try(out).startswith("busy:")
    assert _try(out) == "acquired"
