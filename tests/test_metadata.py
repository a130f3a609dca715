"""Metadata reading (JSON list / JSON Lines) and the path-safety rule."""

from __future__ import annotations

import json
import os

import pytest

from hpd_encode.metadata import UnsafePathError, read_metadata, resolve_image_path

GOOD = {"prompt": "p", "path1": "a.jpg", "path2": "b.jpg", "model1": "m1", "model2": "m2",
        "choice_dist": [3, 1], "confidence": 0.75}


def test_json_list_and_reference_defaults(tmp_path):
    meta = tmp_path / "train.json"
    meta.write_text(json.dumps([GOOD, {"prompt": "q", "path1": "c.png", "path2": "d.png"},
                                {**GOOD, "choice_dist": [None, 2], "confidence": None, "model2": None}]))
    records, problems = read_metadata(meta)
    assert problems == []
    assert (records[0].votes_chosen, records[0].votes_rejected, records[0].confidence) == (3, 1, 0.75)
    r = records[1]
    assert (r.model1, r.model2, r.votes_chosen, r.votes_rejected, r.confidence) == ("", "", 0, 0, 0.0)
    assert (records[2].votes_chosen, records[2].votes_rejected, records[2].model2) == (0, 2, "")
    assert [r.index for r in records] == [0, 1, 2]


def test_json_lines_with_bad_lines_and_bom(tmp_path):
    meta = tmp_path / "train.jsonl"
    lines = [json.dumps(GOOD), "{not json", "", json.dumps({"prompt": "x"}), json.dumps({**GOOD, "confidence": "high"}),
             json.dumps({**GOOD, "prompt": "last"})]
    meta.write_text("\ufeff" + "\n".join(lines), encoding="utf-8")
    records, problems = read_metadata(meta)
    assert [r.prompt for r in records] == ["p", "last"]
    reasons = {p.index: p.reason for p in problems}
    assert "line 2 is not valid JSON" in reasons[1]
    assert "path1" in reasons[2]
    assert "confidence" in reasons[3]
    assert records[1].index == 4  # blank lines do not count as records


def test_bom_json_list_and_non_finite_confidence(tmp_path):
    meta = tmp_path / "train.json"
    meta.write_bytes(b"\xef\xbb\xbf" + json.dumps([GOOD]).encode()[:-1] + b', {"prompt": "n", "path1": "a", '
                     b'"path2": "b", "confidence": NaN}]')
    records, problems = read_metadata(meta)
    assert len(records) == 1 and "finite" in problems[0].reason


def test_limit(tmp_path):
    meta = tmp_path / "t.json"
    meta.write_text(json.dumps([GOOD] * 5))
    assert len(read_metadata(meta, limit=2)[0]) == 2
    with pytest.raises(ValueError, match="limit"):
        read_metadata(meta, limit=-1)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_metadata(tmp_path / "nope.json")
    (tmp_path / "obj.json").write_text("[1")
    with pytest.raises(ValueError, match="cannot parse metadata"):
        read_metadata(tmp_path / "obj.json")


def test_paths_escaping_the_root_are_refused(tmp_path):
    root = tmp_path / "root"
    (root / "img").mkdir(parents=True)
    (root / "img" / "a.jpg").write_bytes(b"x")
    (tmp_path / "secret.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "secret.jpg", root / "img" / "link.jpg")
    assert resolve_image_path(root, "img/a.jpg") == root.resolve() / "img" / "a.jpg"
    for bad in ["/etc/passwd", "../secret.jpg", "img/../../secret.jpg", "C:\\x.jpg", "\\\\server\\share\\x.jpg",
                "img/link.jpg", "", "a\x00b"]:
        with pytest.raises(UnsafePathError):
            resolve_image_path(root, bad)
