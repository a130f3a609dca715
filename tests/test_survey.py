"""One process's survey reads the metadata and probes its images in one pass
(``_core.survey_metadata``: each window's new paths are probed while the next
windows are read). Whatever path a record took (the Rust fast path or the
per-entry Python path), and whatever window size, every distinct image of the
records still to do must get one id and the probe ``probe_paths`` gives it, and
nothing else may be probed. Real JPEG files."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from hpd_encode import _core, metadata
from hpd_encode.pipeline.options import SurveyOptions
from hpd_encode.pipeline.survey import survey


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[object]]:
    root = tmp_path_factory.mktemp("survey") / "data"
    sizes = [(1024, 1024), (832, 1216), (512, 512), (300, 200)]
    names = [f"m{k % 3}/img{k:03d}.jpg" for k in range(40)]
    for k, name in enumerate(names):
        h, w = sizes[k % len(sizes)]
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (w, h), (k * 5 % 255, 90, 30)).save(root / name, quality=40)
    (root / "m0/not_an_image.jpg").write_bytes(b"hello")
    recs: list[object] = []
    for k in range(60):
        recs.append({"prompt": f"p{k}", "path1": names[k % 40], "path2": names[(k * 7 + 3) % 40]})
    # Good records only the per-entry path takes (a duplicate key: json.loads keeps the last),
    # with images no other record names.
    extra = "x/only_slow.jpg"
    (root / extra).parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (768, 1024), (1, 2, 3)).save(root / extra, quality=40)
    recs_text = [json.dumps(r) for r in recs]
    recs_text.insert(7, f'{{"prompt": "a", "prompt": "dup", "path1": "{extra}", "path2": "{names[1]}"}}')
    recs_text.insert(
        20,
        '{"prompt": "dup2", "path1": "m0/not_an_image.jpg", "path1": "gone/missing.jpg", "path2": "../escape.jpg"}',
    )
    # Bad records: never numbered, never probed.
    recs_text.insert(
        11, '{"prompt": "bad", "path1": "bad/never1.jpg", "path2": "bad/never2.jpg", "choice_dist": [-1, 2]}'
    )
    recs_text.insert(30, "[1, 2]")
    meta = root.parent / "train.json"
    meta.write_text("[\n" + ",\n".join(recs_text) + "\n]\n")
    return root, meta, [json.loads(t) for t in recs_text]


def _check(root: Path, meta: Path, records: list[object], done: set[int]) -> None:
    s = survey(SurveyOptions(root, meta, num_threads=2), done=done)
    images = s.images
    paths = images["path"].to_list()
    assert len(paths) == len(set(paths)), "one id per distinct path"
    good = [
        (i, r)
        for i, r in enumerate(records)
        if isinstance(r, dict) and r.get("choice_dist") != [-1, 2] and i not in done
    ]
    expected = {p for _, r in good for p in (r["path1"], r["path2"])}
    assert set(paths) == expected
    # Each record's ids name its own paths.
    t = s.records
    assert sorted(t["record_index"].to_list()) == [i for i, _ in good]
    by_index = dict(good)
    for rec, id1, id2 in t.select("record_index", "id1", "id2").iter_rows():
        assert (paths[id1], paths[id2]) == (by_index[rec]["path1"], by_index[rec]["path2"])
    # And each image's probe is what probe_paths says of it.
    h, w, kind, errors = _core.probe_paths(str(root), paths, num_threads=1)
    assert images["height"].to_list() == list(h)
    assert images["width"].to_list() == list(w)
    assert images["kind"].to_list() == list(kind)
    assert images["error"].to_list() == list(errors)
    if 21 not in done:  # the record naming a missing image and an escaping path
        assert set(np.asarray(kind).tolist()) == {
            _core.PROBE_OK,
            _core.PROBE_MISSING,
            _core.PROBE_UNSAFE_PATH,
        }


@pytest.mark.parametrize("window", [64, 1 << 23])
def test_every_image_of_the_records_to_do_is_numbered_and_probed_once(dataset, window: int) -> None:
    root, meta, records = dataset
    with mock.patch.object(metadata, "_WINDOW", window):
        _check(root, meta, records, set())
        # Records already done: their images are not probed unless another record names them.
        _check(root, meta, records, {0, 7, 20, 21, 59})


def test_the_counter_counts_the_images_probed(dataset) -> None:
    root, meta, _ = dataset
    counter = _core.Counter()
    meta_ = metadata.read_metadata(
        meta, images=metadata.ImagesWhileReading(root, np.zeros(0, np.int64), counter=counter)
    )
    cols = meta_.images
    assert cols is not None
    # The 40 images of the fast path's records (the per-entry path's are numbered after).
    assert counter.value == len(cols["probe_kinds"]) == len(cols["ids"]) == 40
    assert meta_.table.height > 0
    # The per-entry path's records get ids only once asked: the two duplicate-key records.
    assert meta_.table["id1"].null_count() == 2


def test_a_progress_bar_counts_the_probe_on_a_terminal(dataset, monkeypatch) -> None:
    """On a terminal (``check`` asks for it) the probe shows a running count of images."""
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    root, meta, _ = dataset
    survey(SurveyOptions(root, meta), progress=True)
    shown = err.getvalue()
    assert "probe" in shown
    assert "40img" in shown.replace(" ", "")  # the images of the fast path's records (the 3 others after)
