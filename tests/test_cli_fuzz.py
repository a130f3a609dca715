"""Property-based tests of the CLI argument layer: whatever the options and
values, ``hpd-encode encode --dry-run`` either plans (exit 0) or refuses with
one line and exit 2 — never a traceback. And the atomic JSON writer leaves
no temporary file behind when the disk is full."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from hpd_encode.cli import main

# Values that are sometimes right, sometimes wrong, sometimes absurd.
_VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(
        [
            "auto",
            "cpu",
            "cuda",
            "cuda:0",
            "cuda:x",
            "float32",
            "bfloat16",
            "sample",
            "mean",
            "drop",
            "white",
            "hpdv3",
            "",
            " ",
            "-",
            "--",
            "1e30",
            "0",
            "1",
            "-1",
            "nan",
            "\x00",
            "é",
            "../x",
        ]
    ),
    st.text(max_size=12),
)
_OPTIONS = [
    "--batch-size",
    "--num-threads",
    "--workers",
    "--rows-per-file",
    "--limit",
    "--seed",
    "--max-pixels",
    "--device",
    "--dtype",
    "--latent",
    "--store-dtype",
    "--alpha",
    "--buckets",
    "--vae-subfolder",
]
_FLAGS = ["--no-share", "--overwrite", "--json", "-q", "-v"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli-fuzz")
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(root / f"{i}.png")
    meta = root / "train.json"
    meta.write_text(json.dumps([{"prompt": "p", "path1": "0.png", "path2": f"{i}.png"} for i in (1, 2)]))
    return root, meta


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(_OPTIONS + _FLAGS), _VALUES), max_size=5))
def test_encode_options_never_escape_as_tracebacks(dataset, options) -> None:
    root, meta = dataset
    argv = ["encode", "--data-root", str(root), "--metadata", str(meta), "--dry-run"]
    for opt, value in options:
        argv += [opt] if opt in _FLAGS else [opt, value]
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    lines = [ln for ln in err.getvalue().splitlines() if "is deprecated" not in ln]
    assert code in (0, 2), (argv, err.getvalue())
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("hpd-encode"), (argv, err.getvalue())
    assert "Traceback" not in err.getvalue()


def test_a_full_disk_leaves_no_temporary_manifest(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes writes fail with EFBIG, like a full disk."""
    code = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from hpd_encode.output_dir import write_json_atomic\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "try:\n"
        f"    write_json_atomic(Path({str(tmp_path / 'manifest.json')!r}), {{'x': 'y' * 100000}})\n"
        "except OSError as e:\n"
        "    print('refused', e.errno)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.startswith("refused"), r.stderr
    assert list(tmp_path.iterdir()) == []
