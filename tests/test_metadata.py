"""Metadata reading (JSON list / JSON Lines into columns), hostile values, and the path-safety rule.

The property-based tests draw records from valid and invalid field values, write them as a JSON
list and as JSON Lines, and check every entry against an independent oracle (``_expected``).
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
from collections.abc import Sequence
from pathlib import Path
from unittest import mock

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from hpd_encode import metadata as md
from hpd_encode.errors import HpdError, UnsafePathError
from hpd_encode.metadata import (
    TABLE_SCHEMA,
    Metadata,
    MetadataError,
    Record,
    read_metadata,
)

GOOD = {
    "prompt": "p",
    "path1": "a.jpg",
    "path2": "b.jpg",
    "model1": "m1",
    "model2": "m2",
    "choice_dist": [3, 1],
    "confidence": 0.75,
}


def _write_list(path: Path, entries: Sequence[object], indent: int | None = None) -> Path:
    path.write_text(json.dumps(entries, indent=indent))
    return path


def _write_lines(path: Path, entries: Sequence[object]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


def _both(tmp_path: Path, entries: Sequence[object]) -> list[Metadata]:
    """Read ``entries`` as a compact list, an indented list and JSON Lines; the three must agree."""
    out = [
        read_metadata(_write_list(tmp_path / "l.json", entries)),
        read_metadata(_write_list(tmp_path / "i.json", entries, indent=2)),
        read_metadata(_write_lines(tmp_path / "l.jsonl", entries)),
    ]
    for m in out[1:]:
        assert_frame_equal(m.table, out[0].table)
        assert [(f.record_index, f.detail) for f in m.failures] == [
            (f.record_index, f.detail) for f in out[0].failures
        ]
    return out


def _reasons(m: Metadata) -> dict[int, str]:
    assert all(f.stage == "metadata" and f.kind == "bad_record" for f in m.failures)
    return {f.record_index: f.detail for f in m.failures}


def test_json_list_and_reference_defaults(tmp_path):
    meta = _write_list(
        tmp_path / "train.json",
        [
            GOOD,
            {"prompt": "q", "path1": "c.png", "path2": "d.png"},
            {**GOOD, "choice_dist": [None, 2], "confidence": None, "model2": None},
        ],
    )
    m = read_metadata(meta)
    assert m.failures == [] and m.n_entries == 3
    assert m.table.schema == pl.Schema(TABLE_SCHEMA)
    assert m.table.rows() == [
        (0, "p", "a.jpg", "b.jpg", "m1", "m2", 3, 1, 0.75),
        (1, "q", "c.png", "d.png", "", "", 0, 0, 0.0),
        (2, "p", "a.jpg", "b.jpg", "m1", "", 0, 2, 0.0),
    ]
    records = list(m.records())
    assert records[1] == Record(1, "q", "c.png", "d.png", "", "", 0, 0, 0.0)


def test_json_lines_with_bad_lines_and_bom(tmp_path):
    meta = tmp_path / "train.jsonl"
    lines = [
        json.dumps(GOOD),
        "{not json",
        "",
        json.dumps({"prompt": "x"}),
        json.dumps({**GOOD, "confidence": "high"}),
        "  \t",
        json.dumps({**GOOD, "prompt": "last"}),
    ]
    meta.write_text("\ufeff" + "\n".join(lines), encoding="utf-8")
    m = read_metadata(meta)
    assert m.table["prompt"].to_list() == ["p", "last"]
    assert m.table["record_index"].to_list() == [0, 4]  # blank lines do not count as records
    reasons = _reasons(m)
    assert reasons[1] == "line 2 is not valid JSON: Expecting property name enclosed in double quotes"
    assert reasons[2] == "field 'path1' is missing or not a string"
    assert reasons[3] == "confidence 'high' is not a finite number"
    assert m.n_entries == 5


def test_bom_json_list_and_non_finite_confidence(tmp_path):
    meta = tmp_path / "train.json"
    meta.write_bytes(
        b"\xef\xbb\xbf" + json.dumps([GOOD]).encode()[:-1] + b', {"prompt": "n", "path1": "a", '
        b'"path2": "b", "confidence": NaN}]'
    )
    m = read_metadata(meta)
    assert m.table.height == 1 and _reasons(m) == {1: "confidence nan is not a finite number"}


def test_limit_and_whole_file_errors(tmp_path):
    entries = [{**GOOD, "prompt": str(i)} for i in range(5)]
    for meta in (_write_list(tmp_path / "t.json", entries), _write_lines(tmp_path / "t.jsonl", entries)):
        m = read_metadata(meta, limit=2)
        assert m.table["prompt"].to_list() == ["0", "1"] and m.n_entries == 2
        assert read_metadata(meta, limit=0).n_entries == 0
        assert read_metadata(meta, limit=99).n_entries == 5
    # A limit stops before a broken tail of a list.
    (tmp_path / "tail.json").write_text(json.dumps(entries)[:-1] + ", {broken")
    assert read_metadata(tmp_path / "tail.json", limit=5).table.height == 5
    with pytest.raises(ValueError, match="limit"):
        read_metadata(tmp_path / "t.json", limit=-1)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_metadata(tmp_path / "nope.json")
    for text, why in [
        ("[1", "the list is not closed"),
        ('[{"a": 1} {"b": 2}]', "record 0: Extra data"),
        ('[{"a": 1}] [2]', "extra data after the list at byte 11"),
        ('[{"a": 1},,{"b": 2}]', "record 1: Expecting value"),
        ('[{"prompt": "a\nb"}]', "record 0: Invalid control character"),
        ('["unterminated]', "the list is not closed"),
    ]:
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(MetadataError, match="cannot parse metadata '.*bad.json' as JSON: " + why) as e:
            read_metadata(tmp_path / "bad.json")
        assert isinstance(e.value, HpdError) and isinstance(e.value, ValueError)
    for text in ("", "  \n\n", "[]", " [ \n ] "):
        (tmp_path / "empty.json").write_text(text)
        m = read_metadata(tmp_path / "empty.json")
        assert m.n_entries == 0 and m.table.height == 0 and m.table.schema == pl.Schema(TABLE_SCHEMA)


BAD_VALUES = [
    (
        {"choice_dist": [10**400, 1]},
        "vote count 10000000000000000000… (401 digits) does not fit in a signed 64-bit integer",
    ),
    ({"choice_dist": [2**63, 1]}, "vote count 9223372036854775808 does not fit in a signed 64-bit integer"),
    ({"choice_dist": [1, 1e19]}, "vote count 1e+19 does not fit in a signed 64-bit integer"),
    ({"choice_dist": [-1, 3]}, "vote count -1 is negative"),
    ({"choice_dist": [2.7, 1]}, "vote count 2.7 is not a whole number"),
    ({"choice_dist": [True, 1]}, "vote count True is not a number"),
    ({"choice_dist": [1, False]}, "vote count False is not a number"),
    ({"choice_dist": ["3", 1]}, "vote count '3' is not a number"),
    ({"choice_dist": [float("inf"), 1]}, "vote count inf is not a number"),
    ({"choice_dist": [1, 2, 3]}, "choice_dist [1, 2, 3] is not a pair of vote counts"),
    ({"choice_dist": {"a": 1}}, "choice_dist {'a': 1} is not a pair of vote counts"),
    ({"confidence": float("nan")}, "confidence nan is not a finite number"),
    ({"confidence": float("inf")}, "confidence inf is not a finite number"),
    ({"confidence": float("-inf")}, "confidence -inf is not a finite number"),
    ({"confidence": 10**400}, "confidence 10000000000000000000… (401 digits) is not a finite number"),
    ({"confidence": True}, "confidence True is not a finite number"),
    ({"model1": ["x"]}, "field 'model1' is a list, not a string or null"),
    ({"model2": 5}, "field 'model2' is a int, not a string or null"),
    ({"model1": {"a": 1}}, "field 'model1' is a dict, not a string or null"),
    ({"prompt": 5}, "field 'prompt' is missing or not a string"),
    ({"path1": ""}, "field 'path1' is missing or not a string"),
    ({"path2": None}, "field 'path2' is missing or not a string"),
    ({"path1": ["a.jpg"]}, "field 'path1' is missing or not a string"),
    ({"path1": "\ud800"}, "field 'path1' contains a lone surrogate (\\ud800), not valid Unicode"),
    ({"path2": "x\udfffy.jpg"}, "field 'path2' contains a lone surrogate (\\udfff), not valid Unicode"),
    ({"prompt": "a\udc00"}, "field 'prompt' contains a lone surrogate (\\udc00), not valid Unicode"),
    ({"model1": "\ud83d"}, "field 'model1' contains a lone surrogate (\\ud83d), not valid Unicode"),
]


@pytest.mark.parametrize(("change", "reason"), BAD_VALUES, ids=[r for _, r in BAD_VALUES])
def test_hostile_value_is_a_named_failure(tmp_path, change, reason):
    entries = [{**GOOD, "prompt": "before"}, {**GOOD, **change}, {**GOOD, "prompt": "after"}]
    for m in _both(tmp_path, entries):
        assert m.table["prompt"].to_list() == ["before", "after"]
        assert m.table["record_index"].to_list() == [0, 2]
        assert _reasons(m) == {1: reason}
        f = m.failures[0]
        expect1 = "a.jpg" if "path1" not in change else ""
        expect2 = "b.jpg" if "path2" not in change else ""
        assert (f.image1_path, f.image2_path) == (expect1, expect2)


def test_accepted_edge_values(tmp_path):
    entries = [
        {**GOOD, "choice_dist": [2.0, -0.0]},
        {**GOOD, "choice_dist": [2**63 - 1, 2**53 + 1]},
        {**GOOD, "choice_dist": [1e2, None]},
        {**GOOD, "confidence": 10**30, "model1": None},
        {**GOOD, "prompt": "", "path1": "\U0001f600.jpg", "extra": ["\ud800", {"x": [1, 2]}]},
        {**GOOD, "confidence": -0.0, "choice_dist": None},
    ]
    m = _both(tmp_path, entries)[0]
    assert m.failures == []
    rows = m.table.select("votes_chosen", "votes_rejected", "confidence", "model1", "path1").rows()
    assert rows[0][:2] == (2, 0) and rows[1][:2] == (2**63 - 1, 2**53 + 1) and rows[2][:2] == (100, 0)
    assert rows[3][2:4] == (1e30, "") and rows[4][4] == "\U0001f600.jpg" and rows[5][:2] == (0, 0)


def test_invalid_utf8_line_names_the_line(tmp_path):
    good = json.dumps(GOOD).encode()
    meta = tmp_path / "t.jsonl"
    meta.write_bytes(
        good
        + b"\n"
        + good.replace(b'"p"', b'"p\xff"')
        + b"\n\n"
        + good.replace(b"m1", b"\xed\xa0\x80")
        + b"\n"
        + good
        + b"\n"
    )
    m = read_metadata(meta)
    assert m.table["record_index"].to_list() == [0, 3]
    assert _reasons(m) == {
        1: "line 2 is not valid UTF-8: invalid start byte at byte 13 of the line",
        2: "line 4 is not valid UTF-8: invalid continuation byte at byte 63 of the line",
    }
    # In a list, the element is the bad record.
    meta = tmp_path / "t.json"
    meta.write_bytes(b"[" + good + b",\n" + good.replace(b'"p"', b'"p\xc3"') + b"," + good + b"]")
    m = read_metadata(meta)
    assert m.table["record_index"].to_list() == [0, 2]
    at = meta.read_bytes().index(b"\xc3")
    assert _reasons(m) == {
        1: f"record is not valid UTF-8: invalid continuation byte at byte {at} of the file"
    }


def test_pretty_printed_object_is_one_clear_error(tmp_path):
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"records": [GOOD] * 3, "version": 1}, indent=2))
    with pytest.raises(MetadataError) as e:
        read_metadata(meta)
    assert str(e.value) == f"metadata '{meta}' must be a JSON list of records or JSON Lines, not an object"
    assert isinstance(e.value, ValueError)
    # A JSON Lines file whose first line is broken is not mistaken for one object.
    meta.write_text('{"prompt": "x", "path1": \n' + "".join(json.dumps(GOOD) + "\n" for _ in range(3)))
    m = read_metadata(meta)
    assert m.table.height == 3 and list(_reasons(m)) == [0]
    assert _reasons(m)[0].startswith("line 1 is not valid JSON")
    # A one-line object is JSON Lines with one record.
    meta.write_text(json.dumps(GOOD))
    assert read_metadata(meta).table.height == 1


def test_junk_lines_are_failures_in_proportion(tmp_path):
    """5 MB of junk lines (random bytes, some starting like an object): one failure each, and done
    quickly (today's reader took 32 s and 1.44 GB; no timing assert here, the run time shows it)."""
    rng = random.Random(7)
    printable = bytes(range(32, 256)) * 2
    table = bytes.maketrans(bytes(range(256)), (printable + printable)[:256])
    blob = rng.randbytes(5 << 20).translate(table)
    lines, pos = [], 0
    while pos < len(blob):
        n = rng.randrange(1, 60)
        line = blob[pos : pos + n].strip(bytes(range(33))) or b"x"
        lines.append((b"{" if rng.random() < 0.3 else b"") + line)
        pos += n
    lines[1000] = json.dumps(GOOD).encode()
    meta = tmp_path / "junk.jsonl"
    meta.write_bytes(b"\n".join(lines) + b"\n")
    m = read_metadata(meta)
    assert m.n_entries == len(lines)
    assert m.table["record_index"].to_list() == [1000]
    assert len(m.failures) == len(lines) - 1
    assert all(len(f.detail) <= md.MAX_DETAIL for f in m.failures)
    assert all(
        f.detail.startswith(f"line {f.record_index + 1} is not valid")
        for f in m.failures
        if f.detail.startswith("line ")
    )
    assert sum(f.detail.startswith("line ") for f in m.failures) > 0.9 * len(lines)


def test_typed_path_errors_are_found_among_many_good_records(tmp_path):
    """Many good records with bad ones scattered: the typed reads fail and are narrowed down to
    exactly the bad records (by the error's row, by bisection where pyarrow names none)."""
    entries: list[object] = [{**GOOD, "prompt": f"r{i}", "choice_dist": [i, 1]} for i in range(3000)]
    bad = {
        5: {**GOOD, "choice_dist": [True, 1]},
        6: {**GOOD, "path1": "\ud800"},
        700: {**GOOD, "model1": 3},
        701: {**GOOD, "path2": ""},
        1500: {**GOOD, "choice_dist": [2.5, 0]},
        2999: {**GOOD, "confidence": 1e400},
        1800: {**GOOD, "choice_dist": [2.0, 0]},
        2000: [1],
        2001: {**GOOD, "choice_dist": [2**63 - 1, 0]},
    }
    for i, e in bad.items():
        entries[i] = e
    good_extra = {1800, 2001}  # take the per-entry path, and are good
    # Also with small windows and chunks: many windows, chunks and runs (record indices across windows).
    with mock.patch.object(md, "_WINDOW", 4096):
        small = _both(tmp_path, entries)
    for m in [*_both(tmp_path, entries), *small]:
        assert sorted(_reasons(m)) == sorted(set(bad) - good_extra)
        assert m.table.height == 3000 - len(bad) + len(good_extra)
        assert m.table["record_index"].is_sorted()
        row = m.table.filter(pl.col("record_index") == 1800).row(0)
        assert row[6:8] == (2, 0)
    # Two records on one JSON Lines line: a row count that does not match is bisected, not misaligned.
    lines = [json.dumps({**GOOD, "prompt": f"r{i}"}) for i in range(200)]
    lines[77] = lines[77] + " " + lines[78]
    (tmp_path / "two.jsonl").write_text("\n".join(lines))
    m = read_metadata(tmp_path / "two.jsonl")
    assert _reasons(m) == {77: "line 78 is not valid JSON: Extra data"}
    assert m.table["prompt"].to_list() == [f"r{i}" for i in range(200) if i != 77]
    assert m.table["record_index"].to_list() == [i for i in range(200) if i != 77]


def test_null_and_other_non_objects_never_reach_the_typed_reader(tmp_path):
    """pyarrow 26's JSON reader crashes (SIGSEGV) on a block that starts with ``null``: such entries
    must take the per-entry path, wherever they are."""
    entries: list[object] = [
        None,
        *[{**GOOD, "prompt": f"r{i}"} for i in range(40)],
        None,
        5,
        "x",
        [GOOD],
        None,
    ]
    for window in (md._WINDOW, 64):
        with mock.patch.object(md, "_WINDOW", window):
            for m in _both(tmp_path, entries):
                assert m.table.height == 40
                assert _reasons(m) == {
                    0: "record is a NoneType, not an object",
                    41: "record is a NoneType, not an object",
                    42: "record is a int, not an object",
                    43: "record is a str, not an object",
                    44: "record is a list, not an object",
                    45: "record is a NoneType, not an object",
                }


def test_list_with_escapes_and_brackets_in_strings(tmp_path):
    tricky = ["a,b]", "x\\", 'q"uote', '\\"', "{[", "tab\tnl\n", "é ü 中", '\\\\"]}', "\u2028"]
    entries = [{**GOOD, "prompt": p, "path1": f"{p}.jpg"} for p in tricky]
    for m in _both(tmp_path, entries):
        assert m.failures == []
        assert m.table["prompt"].to_list() == tricky


def test_paths_escaping_the_root_are_refused(tmp_path):
    root = tmp_path / "root"
    (root / "img").mkdir(parents=True)
    (root / "img" / "a.jpg").write_bytes(b"x")
    (tmp_path / "secret.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "secret.jpg", root / "img" / "link.jpg")
    from hpd_encode import _core

    bad_paths = [
        "/etc/passwd",
        "../secret.jpg",
        "img/../../secret.jpg",
        "C:\\x.jpg",
        "\\\\server\\share\\x.jpg",
        "img/link.jpg",
        "",
        "a\x00b",
    ]
    # Refused where the file is opened (Rust, beneath the root); the good path is opened (and is no image).
    _, _, kinds, errors = _core.probe_paths(root, ["img/a.jpg", *bad_paths])
    assert kinds.tolist() == [_core.PROBE_BAD_IMAGE] + [_core.PROBE_UNSAFE_PATH] * len(bad_paths), errors
    with pytest.raises(UnsafePathError, match="outside the data root"):
        _core.probe_image("img/link.jpg", root=root)


# ---------------------------------------------------------------------------------------------------------------
# Property-based tests.

MISSING = object()


def _surrogate(s: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in s)


def _expected(rec: object) -> tuple[object, ...] | None:
    """The oracle: the table row a record gives (without record_index), or None for a bad record."""
    if not isinstance(rec, dict):
        return None
    for k in ("prompt", "path1", "path2"):
        v = rec.get(k)
        if not isinstance(v, str) or (k != "prompt" and not v) or _surrogate(v):
            return None
    models = []
    for k in ("model1", "model2"):
        v = rec.get(k)
        if v is not None and (not isinstance(v, str) or _surrogate(v)):
            return None
        models.append(v or "")
    dist = rec.get("choice_dist")
    dist = [0, 0] if dist is None else dist
    if not isinstance(dist, list) or len(dist) != 2:
        return None
    votes = []
    for v in dist:
        if v is None:
            votes.append(0)
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        elif isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
            return None
        elif not 0 <= v <= 2**63 - 1:
            return None
        else:
            votes.append(int(v))
    conf = rec.get("confidence")
    if conf is None:
        conf = 0.0
    elif isinstance(conf, bool) or not isinstance(conf, (int, float)):
        return None
    else:
        try:
            conf = float(conf)
        except OverflowError:
            return None
        if not math.isfinite(conf):
            return None
    return (rec["prompt"], rec["path1"], rec["path2"], *models, *votes, conf)


_text = st.text(max_size=12) | st.sampled_from(
    ["a.jpg", "images/m_1/0000001.jpg", "\ud800", "x\udfff", "\U0001f600", "a,b]}", '"', "\\", "é"]
)
_junk = (
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.lists(st.integers(0, 3), max_size=2)
    | st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 3), max_size=2)
)
_vote = (
    st.none()
    | st.booleans()
    | st.integers(-3, 10)
    | st.integers(2**62, 2**64)
    | st.just(10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([2.0, 2.5, -0.0, 1e19, 9.0e15])
    | st.text(max_size=2)
)
_fields = {
    "prompt": _text | _junk,
    "path1": _text | st.just("") | _junk,
    "path2": _text | st.just("") | _junk,
    "model1": _text | _junk,
    "model2": _text | _junk,
    "choice_dist": st.none()
    | st.lists(_vote, min_size=0, max_size=3)
    | st.lists(_vote, min_size=2, max_size=2)
    | _junk,
    "confidence": st.none()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(-10, 10)
    | st.just(10**400)
    | st.booleans()
    | st.text(max_size=2),
    "extra": _junk | _text,
}


@st.composite
def _records(draw: st.DrawFn) -> object:
    if draw(st.integers(0, 15)) == 0:
        return draw(_junk | _text)
    rec = {}
    for key, strategy in _fields.items():
        # Mostly good values, so that good records and each kind of bad value both occur often.
        if key != "extra" and draw(st.integers(0, 3)) > 0:
            value = GOOD.get(key, MISSING)
        else:
            value = draw(st.just(MISSING) | strategy)
        if value is not MISSING:
            rec[key] = value
    return rec


def _encode(entry: object, ensure_ascii: bool, indent: int | None) -> tuple[bytes, bool]:
    """The entry's JSON bytes and whether they are valid UTF-8 (a raw lone surrogate is not)."""
    text = json.dumps(entry, ensure_ascii=ensure_ascii, indent=indent)
    return text.encode("utf-8", "surrogatepass"), not _surrogate(text)


def _check(m: Metadata, entries: list[object], utf8_ok: list[bool]) -> None:
    assert m.n_entries == len(entries)
    good = m.table["record_index"].to_list()
    bad = [f.record_index for f in m.failures]
    assert sorted(good + bad) == list(range(len(entries)))  # every entry exactly once
    assert good == sorted(good)
    rows = {r[0]: r[1:] for r in m.table.rows()}
    for i, entry in enumerate(entries):
        want = _expected(entry) if utf8_ok[i] else None
        if want is None:
            assert i not in rows, (entry, rows.get(i))
        else:
            assert rows.get(i) == want, entry
    assert all(
        f.stage == "metadata" and f.kind == "bad_record" and len(f.detail) <= md.MAX_DETAIL
        for f in m.failures
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    entries=st.lists(_records(), max_size=25),
    ensure_ascii=st.booleans(),
    indent=st.sampled_from([None, 2]),
    window=st.sampled_from([md._WINDOW, 300, 7]),
)
def test_property_every_entry_is_good_or_a_failure(tmp_path, entries, ensure_ascii, indent, window):
    # A JSON Lines file whose first line is a list reads as a JSON list: start with an object.
    entries = [GOOD, *entries]
    encoded = [_encode(e, ensure_ascii, indent) for e in entries]
    utf8_ok = [ok for _, ok in encoded]
    lst = tmp_path / "p.json"
    lst.write_bytes(b"[" + b",\n".join(b for b, _ in encoded) + b"]")
    lines = tmp_path / "p.jsonl"
    lines.write_bytes(b"".join(_encode(e, ensure_ascii, None)[0] + b"\n" for e in entries))
    # Small windows: entries spread over many windows (and cut by them).
    with mock.patch.object(md, "_WINDOW", window):
        m_list = read_metadata(lst)
        m_lines = read_metadata(lines)
    _check(m_list, entries, utf8_ok)
    _check(m_lines, entries, utf8_ok)
    assert_frame_equal(m_list.table, m_lines.table)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(_records(), min_size=1, max_size=12), good_runs=st.integers(10, 40))
def test_property_bad_records_among_long_good_runs(tmp_path, entries, good_runs):
    """Hostile records between long runs of good ones, so that they hit the typed reader's failure
    handling (error rows, bisection) rather than the per-entry path alone."""
    padded: list[object] = []
    for e in entries:
        padded += [{**GOOD, "prompt": f"g{len(padded) + k}"} for k in range(good_runs)] + [e]
    encoded = [_encode(e, True, None) for e in padded]
    lines = tmp_path / "p.jsonl"
    lines.write_bytes(b"".join(b + b"\n" for b, _ in encoded))
    _check(read_metadata(lines), padded, [ok for _, ok in encoded])


# ---------------------------------------------------------------------------------------------------------------
# One rank's byte range of the file (torchrun), ranks as threads.


def _read_as_ranks(path: Path, world: int) -> list[Metadata | Exception]:
    """:func:`read_metadata` with a ``share`` on ``world`` threads, one per rank, with a real all-gather."""
    slots: list[object] = [None] * world
    barrier = threading.Barrier(world)
    out: list[Metadata | Exception] = [RuntimeError("not run")] * world

    def rank(r: int) -> None:
        def all_gather(obj: object) -> list[object]:
            slots[r] = obj
            barrier.wait()
            got = list(slots)
            barrier.wait()
            return got

        try:
            out[r] = md.read_metadata(path, num_threads=1, share=md.Share(r, world, all_gather))
        except (MetadataError, threading.BrokenBarrierError) as e:  # every rank must raise the same
            out[r] = e

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def _same_as_one_reader(path: Path, world: int) -> None:
    whole = read_metadata(path)
    parts = _read_as_ranks(path, world)
    assert all(isinstance(p, Metadata) for p in parts), parts
    got = [p for p in parts if isinstance(p, Metadata)]
    assert {p.n_entries for p in got} == {whole.n_entries}
    table = pl.concat([p.table for p in got])
    assert_frame_equal(table, whole.table)
    assert_frame_equal(pl.concat([p.entries for p in got if p.entries is not None]), whole.entries)
    failures = sorted((f.record_index, f.stage, f.kind, f.detail) for p in got for f in p.failures)
    assert failures == sorted((f.record_index, f.stage, f.kind, f.detail) for f in whole.failures)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    entries=st.lists(_records(), max_size=25),
    indent=st.sampled_from([None, 2]),
    world=st.sampled_from([2, 3, 8, 40]),
    bom=st.booleans(),
)
def test_property_ranks_reading_byte_ranges_get_what_one_reader_gets(tmp_path, entries, indent, world, bom):
    """Every entry read by exactly one rank, with its number, its record or its failure (line
    numbers too), whatever the cuts hit: strings with brackets, quotes and backslashes."""
    entries = [GOOD, *entries]
    head = b"\xef\xbb\xbf" if bom else b""
    lst = tmp_path / "r.json"
    lst.write_bytes(head + b"[" + b",\n".join(_encode(e, False, indent)[0] for e in entries) + b"]\n")
    lines = tmp_path / "r.jsonl"
    lines.write_bytes(head + b"".join(_encode(e, True, None)[0] + b"\n\n" for e in entries))
    _same_as_one_reader(lst, world)
    _same_as_one_reader(lines, world)


def test_ranks_reading_byte_ranges_refuse_a_bad_list_alike(tmp_path):
    good = json.dumps([GOOD] * 30)
    for text, message in [
        (good[:-1], "the list is not closed"),
        (good + ' {"a": 1}', "extra data after the list"),
        (good[:-1] + '], "x"]', "extra data after the list"),
    ]:
        path = tmp_path / "bad.json"
        path.write_text(text)
        with pytest.raises(md.MetadataError, match=message):
            read_metadata(path)
        for world in (2, 5):
            errors = _read_as_ranks(path, world)
            assert all(isinstance(e, md.MetadataError) and message in str(e) for e in errors), errors
    for text in ("[]", "[ \n ]", "  [\n]\n"):
        path = tmp_path / "empty.json"
        path.write_text(text)
        assert [p.n_entries for p in _read_as_ranks(path, 3)] == [0, 0, 0]  # type: ignore[union-attr]
