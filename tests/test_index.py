"""The bucket index (hpd_encode.index) on real Parquet part files.

The part files come from tests/conftest.py: the same 700 records written the
reference's way (10 columns, string ``detailed_results``) and hpd-encode's way
(``PART_SCHEMA`` with typed extras), two files, row groups of 100. Every index
row is checked by opening its ``parquet_path``, reading ``row_group`` and
taking ``row_index``. The CSV is compared byte for byte with a faithful pandas
re-implementation of the reference's index builder (:func:`reference_index`,
also the reference side of ``benches/bench_index.py``).
"""

from __future__ import annotations

import ast
import glob
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import (
    RECORD_SIZES,
    SMALL_BUCKETS,
    PartRecord,
    make_part_records,
    write_reference_part,
)
from hpd_encode.cli import build_parser, main
from hpd_encode.errors import HpdError, PartialOutputError
from hpd_encode.index import (
    EXAMPLE_WHERE,
    FILTER_FIELDS,
    INDEX_COLUMNS,
    IndexStats,
    bucket_figure,
    build_index,
    build_index_with_stats,
    plot_buckets,
    read_index,
    write_index,
)


def example_keep(row: dict) -> bool:
    """The reference's example filter, as a row callable."""
    vc, vr = row["votes_chosen"], row["votes_rejected"]
    return vc / (vc + vr + 1e-6) > 0.6 or vc == 0


EXAMPLE_EXPR = (pl.col("votes_chosen") / (pl.col("votes_chosen") + pl.col("votes_rejected") + 1e-6) > 0.6) | (
    pl.col("votes_chosen") == 0
)


def read_back(index: pl.DataFrame) -> list[dict]:
    """Each index row's record, read the way a trainer reads it."""
    groups: dict[tuple[str, int], list[dict]] = {}
    out = []
    for path, group, row in index.select("parquet_path", "row_group", "row_index").iter_rows():
        if (path, group) not in groups:
            table = pq.ParquetFile(path).read_row_group(
                group, columns=["image1_path", "prompt", "latent1", "latent1_shape"]
            )
            groups[(path, group)] = table.to_pylist()
        out.append(groups[(path, group)][row])
    return out


def rec_id(row: dict) -> int:
    return int(row["image1_path"].split("/")[1].split("_")[0])


def rec_ids(index: pl.DataFrame) -> list[int]:
    return [rec_id(r) for r in read_back(index)]


@pytest.fixture(scope="module")
def all_sizes_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bucket set holding every size the records use (nothing is dropped as off-bucket)."""
    path = tmp_path_factory.mktemp("buckets") / "all.json"
    path.write_text(json.dumps([list(s) for s in RECORD_SIZES]))
    return path


# ---------------------------------------------------------------------------
# Reading back, columns, order, bucket ids


@pytest.mark.parametrize("layout", ["reference", "ours", "encoder"])
def test_every_row_reads_back_to_its_record(
    layout: str, request: pytest.FixtureRequest, part_records: list[PartRecord], small_buckets_json: Path
) -> None:
    parts = request.getfixturevalue(f"{layout}_parts")
    df = build_index(parts, buckets=small_buckets_json, max_per_prompt=None)

    assert df.columns == list(INDEX_COLUMNS)
    assert df["global_id"].to_list() == list(range(df.height))
    keys = df.select("parquet_path", "row_group", "row_index").rows()
    assert keys == sorted(keys)
    assert len(set(keys)) == df.height

    expected = [r.rec for r in part_records if (r.height, r.width) in SMALL_BUCKETS]
    rows = read_back(df)
    assert sorted(rec_id(r) for r in rows) == expected
    for (h, w, bucket), row in zip(df.select("height", "width", "bucket_id").iter_rows(), rows, strict=True):
        rec = part_records[rec_id(row)]
        assert row["prompt"] == rec.prompt
        assert (h, w) == (rec.height, rec.width)
        assert bucket == SMALL_BUCKETS.index((h, w))
        latent = np.load(io.BytesIO(row["latent1"]))
        assert latent.shape == rec.latent_shape == tuple(row["latent1_shape"])
        assert latent[0, 0, 0] == rec.rec


def test_files_from_the_encode_writer_give_the_reference_index(
    reference_parts: Path, encoder_parts: Path, small_buckets_json: Path
) -> None:
    # (the writer stores 0.0 for a missing confidence: equal to null for these filters)
    for flt in (EXAMPLE_WHERE, EXAMPLE_EXPR, "confidence > 0.3 AND model1 = 'flux'", None):
        ref = build_index(reference_parts, filter=flt, buckets=small_buckets_json)
        enc = build_index(encoder_parts, filter=flt, buckets=small_buckets_json)
        assert ref.height > 0
        assert ref.drop("parquet_path").equals(enc.drop("parquet_path"))


def test_typed_and_string_files_give_the_same_index(
    reference_parts: Path, ours_parts: Path, small_buckets_json: Path
) -> None:
    for flt in (
        EXAMPLE_WHERE,
        "confidence > 0.3 AND orig_chosen_height > 1000 OR orig_rejected_width < 500",
        None,
    ):
        ref = build_index(reference_parts, filter=flt, buckets=small_buckets_json)
        ours = build_index(ours_parts, filter=flt, buckets=small_buckets_json)
        assert ref.height > 0
        assert ref.drop("parquet_path").equals(ours.drop("parquet_path"))
        assert [Path(p).name for p in ref["parquet_path"]] == [Path(p).name for p in ours["parquet_path"]]


def test_hpdv3_bucket_ids(tmp_path: Path) -> None:
    sizes = [(1024, 1024), (1024, 768), (768, 1024), (256, 256), (832, 1472), (1000, 1000), (1472, 832)]
    records = [
        PartRecord(i, f"p{i}", "a", "b", 1, 0, 0.5, h, w, (h, w), (h, w)) for i, (h, w) in enumerate(sizes)
    ]
    write_reference_part(tmp_path / "part_rank00.parquet", records)
    df, stats = build_index_with_stats(tmp_path)  # buckets="hpdv3" by default
    got = dict(zip(zip(df["height"], df["width"], strict=True), df["bucket_id"], strict=True))
    assert got == {
        (1024, 1024): 8,
        (1024, 768): 2,
        (768, 1024): 3,
        (256, 256): 0,
        (832, 1472): 12,
        (1472, 832): 11,
    }
    assert stats.not_in_buckets == 1
    assert stats.per_bucket[8] == {"bucket_id": 8, "height": 1024, "width": 1024, "rows": 1}


# ---------------------------------------------------------------------------
# Filters


def test_filter_forms_agree_with_each_other_and_the_truth(
    reference_parts: Path, part_records: list[PartRecord], small_buckets_json: Path
) -> None:
    forms = {"expr": EXAMPLE_EXPR, "sql": EXAMPLE_WHERE, "callable": example_keep}
    capped = {
        name: build_index(reference_parts, filter=f, buckets=small_buckets_json) for name, f in forms.items()
    }
    assert capped["expr"].height > 0
    assert capped["expr"].equals(capped["sql"])
    assert capped["expr"].equals(capped["callable"])

    truth = sorted(
        r.rec
        for r in part_records
        if (r.height, r.width) in SMALL_BUCKETS
        and example_keep({"votes_chosen": r.votes_chosen, "votes_rejected": r.votes_rejected})
    )
    for f in forms.values():
        assert (
            sorted(
                rec_ids(
                    build_index(reference_parts, filter=f, buckets=small_buckets_json, max_per_prompt=None)
                )
            )
            == truth
        )


@pytest.mark.parametrize(
    ("expr", "sql", "func", "truth"),
    [
        (
            pl.col("confidence") > 0.5,
            "confidence > 0.5",
            lambda row: row["confidence"] is not None and row["confidence"] > 0.5,
            lambda r: r.confidence is not None and r.confidence > 0.5,
        ),
        (
            pl.col("prompt").str.starts_with("prompt 1") & (pl.col("model1") != pl.col("model2")),
            "prompt LIKE 'prompt 1%' AND model1 <> model2",
            lambda row: row["prompt"].startswith("prompt 1") and row["model1"] != row["model2"],
            lambda r: r.prompt.startswith("prompt 1") and r.model1 != r.model2,
        ),
        (
            (pl.col("orig_chosen_height") > 1200) | (pl.col("width") == 128),
            "orig_chosen_height > 1200 OR width = 128",
            lambda row: (row["orig_chosen_height"] or 0) > 1200 or row["width"] == 128,
            lambda r: (r.orig_chosen is not None and r.orig_chosen[0] > 1200) or r.width == 128,
        ),
    ],
    ids=["confidence-with-nulls", "strings", "original-size"],
)
def test_filters_on_other_fields(
    reference_parts: Path,
    ours_parts: Path,
    part_records: list[PartRecord],
    all_sizes_json: Path,
    expr,
    sql,
    func,
    truth,
) -> None:
    expected = sorted(r.rec for r in part_records if truth(r))
    assert 0 < len(expected) < len(part_records)
    for parts in (reference_parts, ours_parts):
        results = [
            build_index(parts, filter=f, buckets=all_sizes_json, max_per_prompt=None)
            for f in (expr, sql, func)
        ]
        assert results[0].equals(results[1]) and results[0].equals(results[2])
        assert sorted(rec_ids(results[0])) == expected


def test_filter_errors(reference_parts: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown field.*votes_for"):
        build_index(reference_parts, filter="votes_for > 1")
    with pytest.raises(ValueError, match=r"unknown field.*score"):
        build_index(reference_parts, filter=pl.col("score") > 1)
    with pytest.raises(ValueError, match="cannot parse the filter"):
        build_index(reference_parts, filter="votes_chosen >>> 1 AND (")
    with pytest.raises(TypeError, match=r"polars.Expr, a SQL string or a callable"):
        build_index(reference_parts, filter=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"the filter .*failed on .*ZeroDivisionError"):
        build_index(reference_parts, filter=lambda row: 1 / 0)
    with pytest.raises(ValueError, match="max_per_prompt"):
        build_index(reference_parts, max_per_prompt=0)


def test_filter_fields_are_documented() -> None:
    assert set(FILTER_FIELDS) == {
        "prompt", "model1", "model2", "votes_chosen", "votes_rejected", "confidence", "height", "width",
        "orig_chosen_height", "orig_chosen_width", "orig_rejected_height", "orig_rejected_width",
    }  # fmt: skip


# ---------------------------------------------------------------------------
# Per-prompt cap, shuffle, determinism


def per_prompt(df: pl.DataFrame) -> Counter[str]:
    return Counter(r["prompt"] for r in read_back(df))


def test_at_most_n_per_prompt(
    reference_parts: Path, part_records: list[PartRecord], all_sizes_json: Path
) -> None:
    available = Counter(r.prompt for r in part_records)
    assert max(available.values()) > 20  # the data has prompts far over the cap
    for n in (1, 3, 8):
        df, stats = build_index_with_stats(reference_parts, max_per_prompt=n, buckets=all_sizes_json)
        # Nothing is off-bucket here, so every prompt keeps exactly min(available, n).
        assert per_prompt(df) == Counter({p: min(c, n) for p, c in available.items()})
        assert stats.after_cap == stats.indexed == df.height
    assert build_index(reference_parts, max_per_prompt=None, buckets=all_sizes_json).height == len(
        part_records
    )


def test_cap_comes_before_dropping_off_bucket_rows(reference_parts: Path, small_buckets_json: Path) -> None:
    df, stats = build_index_with_stats(reference_parts, max_per_prompt=2, buckets=small_buckets_json)
    assert max(per_prompt(df).values()) <= 2
    assert stats.not_in_buckets > 0
    assert stats.indexed == stats.after_cap - stats.not_in_buckets == df.height


def test_deterministic_for_a_seed(reference_parts: Path, small_buckets_json: Path) -> None:
    a = build_index(reference_parts, seed=42, buckets=small_buckets_json, max_per_prompt=3)
    b = build_index(reference_parts, seed=42, buckets=small_buckets_json, max_per_prompt=3)
    c = build_index(reference_parts, seed=7, buckets=small_buckets_json, max_per_prompt=3)
    assert a.equals(b)
    assert not a.equals(c)


def test_no_shuffle_keeps_the_first_rows_per_prompt(
    reference_parts: Path, part_records: list[PartRecord], all_sizes_json: Path
) -> None:
    df = build_index(reference_parts, shuffle=False, max_per_prompt=2, buckets=all_sizes_json)
    first: dict[str, list[int]] = {}
    for r in part_records:  # records are in file order
        if len(first.setdefault(r.prompt, [])) < 2:
            first[r.prompt].append(r.rec)
    assert sorted(rec_ids(df)) == sorted(rec for recs in first.values() for rec in recs)


# ---------------------------------------------------------------------------
# detailed_results parsing: the reference's format, its variants, malformed strings


def test_malformed_rows_are_counted_and_variants_parsed(
    tmp_path: Path, all_sizes_json: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records = make_part_records(250, seed=3)
    strings: list[str | None] = [r.detailed_results() for r in records]
    malformed = {
        10: None,
        11: "garbage",
        120: "{'votes_rejected': 1, 'confidence': 0.5}",  # no votes_chosen
        150: "{'votes_chosen': 'three', 'votes_rejected': 1}",
        249: "{'votes_chosen': 3, 'votes_rejected': 1, 'confidence': 0.5, 'orig_chosen_hw': [1, 2], "
        "'orig_rejected_hw': [3, 4], 'final_chosen_hw': [64",  # truncated after the needed keys
    }
    # Not the reference's exact spelling, still valid Python literals: parsed by the general pass.
    variants = {
        20: (
            '{"votes_chosen": 2, "votes_rejected": 0, "confidence": 0.5, "orig_chosen_hw": [900, 700]}',
            (2, 0, 0.5, 900),
        ),
        21: ("{'votes_chosen' : 4 ,'votes_rejected':1}", (4, 1, None, None)),
        22: (
            "{'votes_chosen': 3.0, 'votes_rejected': 1, 'confidence': None, 'orig_chosen_hw': None}",
            (3, 1, None, None),
        ),
        23: (
            "{'votes_chosen': 1, 'votes_rejected': 5, 'confidence': 1e-05, 'orig_chosen_hw': (640, 480)}",
            (1, 5, 1e-05, 640),
        ),
        # The keys in another order: the fast pass reads the reference's order only.
        25: (
            "{'votes_rejected': 2, 'orig_chosen_hw': [10, 20], 'confidence': 0.25, 'votes_chosen': 6}",
            (6, 2, 0.25, 10),
        ),
        # A bad value in a key the run does not need is not an error (see the next test).
        24: (
            "{'votes_chosen': 5, 'votes_rejected': 5, 'confidence': 'high', 'orig_chosen_hw': [1, 2]}",
            (5, 5, None, 1),
        ),
    }
    for i, s in malformed.items():
        strings[i] = s
    for i, (s, _) in variants.items():
        strings[i] = s
    records = [replace(r, prompt=f"unique {r.rec}") if r.rec in variants else r for r in records]
    write_reference_part(tmp_path / "part_rank00.parquet", records, strings)

    seen: dict[str, dict] = {}

    def keep_all_but_record(row: dict) -> bool:
        if row["prompt"].startswith("unique "):
            seen[row["prompt"]] = row
        return True

    with caplog.at_level(logging.WARNING, logger="hpd_encode.index"):
        df, stats = build_index_with_stats(
            tmp_path, filter="votes_chosen >= 0", max_per_prompt=None, buckets=all_sizes_json
        )
    assert stats.malformed == len(malformed)
    assert stats.rows_in == 250
    assert stats.after_filter == 250 - len(malformed)
    assert df.height == 250 - len(malformed)
    assert sorted(rec_ids(df)) == [i for i in range(250) if i not in malformed]
    located = [(r["row_group"], r["row_index"]) for r in stats.malformed_rows]
    assert located == [(i // 100, i % 100) for i in sorted(malformed)]
    assert "votes_chosen" in stats.malformed_rows[2]["reason"]
    assert "dropped 5 row(s) with a malformed detailed_results" in caplog.text
    assert "row group 1 row 50" in caplog.text and "row group 2 row 49" in caplog.text

    # The callable path parses every field: 24's confidence 'high' is malformed there.
    _, stats_all = build_index_with_stats(
        tmp_path, filter=keep_all_but_record, max_per_prompt=None, buckets=all_sizes_json
    )
    assert stats_all.malformed == len(malformed) + 1
    for i, (_, (vc, vr, conf, och)) in variants.items():
        if i == 24:
            assert f"unique {i}" not in seen
            continue
        row = seen[f"unique {i}"]
        assert (row["votes_chosen"], row["votes_rejected"], row["confidence"], row["orig_chosen_height"]) == (
            vc,
            vr,
            conf,
            och,
        )


def test_fields_a_filter_uses_are_validated(tmp_path: Path, all_sizes_json: Path) -> None:
    records = make_part_records(30, seed=5)
    strings = [r.detailed_results() for r in records]
    strings[4] = strings[4].replace(f"'confidence': {records[4].confidence!r}", "'confidence': 'high'")
    assert "'high'" in strings[4]
    write_reference_part(tmp_path / "part_rank00.parquet", records, strings)
    sizes = all_sizes_json
    assert build_index_with_stats(tmp_path, buckets=sizes, max_per_prompt=None)[1].malformed == 0
    assert (
        build_index_with_stats(tmp_path, filter="confidence >= 0", buckets=sizes, max_per_prompt=None)[
            1
        ].malformed
        == 1
    )


# ---------------------------------------------------------------------------
# Sources, laziness, odd files


def test_source_forms(reference_parts: Path, small_buckets_json: Path) -> None:
    by_dir = build_index(reference_parts, buckets=small_buckets_json)
    files = sorted(reference_parts.glob("*.parquet"))
    assert build_index(str(reference_parts / "*.parquet"), buckets=small_buckets_json).equals(by_dir)
    assert build_index(list(reversed(files)), buckets=small_buckets_json).equals(by_dir)
    assert build_index([*files, files[0]], buckets=small_buckets_json).equals(by_dir)  # duplicates once


def test_missing_sources_name_the_path(tmp_path: Path, reference_parts: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"no \\*.parquet files in directory '{tmp_path}'"):
        build_index(tmp_path)
    with pytest.raises(FileNotFoundError, match="no files match the pattern"):
        build_index(str(tmp_path / "*.parquet"))
    with pytest.raises(FileNotFoundError, match=r"no such Parquet file or directory: '.*nope'"):
        build_index(tmp_path / "nope")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=r"cannot read the Parquet footer of '.*bad.parquet'"):
        build_index(tmp_path)
    # A real part file cut short (an interrupted copy): its footer is gone.
    whole = sorted(reference_parts.glob("*.parquet"))[0].read_bytes()
    cut = tmp_path / "cut" / "part_rank00.parquet"
    cut.parent.mkdir()
    cut.write_bytes(whole[: len(whole) - 100])
    with pytest.raises(ValueError, match=r"cannot read the Parquet footer of '.*cut/part_rank00.parquet'"):
        build_index(cut.parent)


def test_latent_columns_are_never_read(
    tmp_path: Path, part_records: list[PartRecord], small_buckets_json: Path
) -> None:
    """Overwrite every latent column chunk with garbage: reading them fails, indexing does not."""
    path = tmp_path / "part_rank00.parquet"
    write_reference_part(path, part_records[:300])
    intact = build_index(path, buckets=small_buckets_json)
    md = pq.read_metadata(path)
    names = md.schema.to_arrow_schema().names
    data = bytearray(path.read_bytes())
    for g in range(md.num_row_groups):
        for name in ("latent1", "latent2"):
            chunk = md.row_group(g).column(names.index(name))
            start = chunk.dictionary_page_offset or chunk.data_page_offset
            data[start : start + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size
    path.write_bytes(bytes(data))
    with pytest.raises((OSError, pa.ArrowException)):
        pq.read_table(path, columns=["latent1"])
    assert build_index(path, buckets=small_buckets_json).equals(intact)


def test_mixed_layouts_and_empty_files(
    tmp_path: Path, reference_parts: Path, ours_parts: Path, small_buckets_json: Path
) -> None:
    shutil.copy(reference_parts / "part_rank00.parquet", tmp_path / "part_rank00.parquet")
    shutil.copy(ours_parts / "part_rank01.parquet", tmp_path / "part_rank01.parquet")
    from hpd_encode.schema import PART_SCHEMA

    pq.write_table(PART_SCHEMA.empty_table(), tmp_path / "part_rank02.parquet")
    mixed = build_index(tmp_path, buckets=small_buckets_json)
    same = build_index(reference_parts, buckets=small_buckets_json)
    assert mixed.drop("parquet_path").equals(same.drop("parquet_path"))
    assert all(Path(p).parent == tmp_path for p in mixed["parquet_path"])


def test_uneven_row_groups_map_to_the_right_rows(
    tmp_path: Path, part_records: list[PartRecord], all_sizes_json: Path
) -> None:
    """Row groups of different sizes (a writer flushing early): positions come from the footer."""
    records = part_records[:260]
    write_reference_part(tmp_path / "src.parquet", records)
    table = pq.read_table(tmp_path / "src.parquet")
    path = tmp_path / "parts" / "part_rank00.parquet"
    path.parent.mkdir()
    with pq.ParquetWriter(path, table.schema) as writer:
        for start, stop in ((0, 37), (37, 137), (137, 138), (138, 260)):
            writer.write_table(table.slice(start, stop - start))
    assert [pq.read_metadata(path).row_group(i).num_rows for i in range(4)] == [37, 100, 1, 122]
    df = build_index(path.parent, buckets=all_sizes_json, max_per_prompt=None)
    assert rec_ids(df) == [r.rec for r in records]
    assert df.filter(pl.col("row_group") == 2)["row_index"].to_list() == [0]
    assert df["row_index"].max() == 121


# ---------------------------------------------------------------------------
# Stats, CSV, CLI


def test_stats_add_up(reference_parts: Path, small_buckets_json: Path) -> None:
    df, stats = build_index_with_stats(reference_parts, filter=EXAMPLE_WHERE, buckets=small_buckets_json)
    assert stats.files == 2 and stats.rows_in == 700 and stats.malformed == 0
    assert stats.rows_in >= stats.after_filter >= stats.after_cap >= stats.indexed == df.height > 0
    assert sum(b["rows"] for b in stats.per_bucket) == df.height
    assert [b["bucket_id"] for b in stats.per_bucket] == list(range(len(SMALL_BUCKETS)))
    assert sum(m["chosen"] for m in stats.per_model.values()) == df.height
    assert sum(m["rejected"] for m in stats.per_model.values()) == df.height
    assert set(stats.per_model) == {"flux", "sd35", "kolors", "midjourney"}
    json.dumps(stats.to_dict())
    plain, no_models = build_index_with_stats(
        reference_parts, filter=EXAMPLE_WHERE, buckets=small_buckets_json, per_model=False
    )
    assert plain.equals(df) and no_models.per_model == {}
    assert no_models.per_bucket == stats.per_bucket


def test_write_and_read_index(tmp_path: Path, reference_parts: Path, small_buckets_json: Path) -> None:
    df = build_index(reference_parts, buckets=small_buckets_json)
    out = tmp_path / "sub" / "index.csv"
    write_index(df, out)
    assert (
        out.read_text().splitlines()[0] == "global_id,parquet_path,row_group,row_index,width,height,bucket_id"
    )
    assert read_index(out).equals(df)
    assert list(out.parent.iterdir()) == [out]  # no temporary left behind
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # readable by others, like any new file
    with pytest.raises(ValueError, match="lacks the column"):
        write_index(df.drop("bucket_id"), out)


def run_cli(argv: list[str]) -> int:
    """Run a subcommand through the real ``hpd-encode`` parser (exceptions propagate)."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


def test_cli_end_to_end(
    tmp_path: Path, reference_parts: Path, small_buckets_json: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, stats_path, plot = tmp_path / "index.csv", tmp_path / "stats.json", tmp_path / "buckets.png"
    common = ["index", "--buckets", str(small_buckets_json), "--seed", "5", "--max-per-prompt", "3"]
    rc = run_cli(
        [*common, "--parquet-dir", str(reference_parts), "--output", str(out), "--where", EXAMPLE_WHERE,
         "--stats", str(stats_path), "--plot", str(plot)]
    )  # fmt: skip
    assert rc == 0
    expected = build_index(
        reference_parts, filter=EXAMPLE_WHERE, buckets=small_buckets_json, seed=5, max_per_prompt=3
    )
    assert read_index(out).equals(expected)
    assert f"indexed {expected.height:,} of 700 rows from 2 file(s)" in capsys.readouterr().out

    stats = json.loads(stats_path.read_text())
    assert (
        stats["rows_in"] == 700 and stats["indexed"] == expected.height and stats["filter"] == EXAMPLE_WHERE
    )
    assert {"after_filter", "after_cap", "per_bucket", "per_model", "malformed"} <= set(stats)

    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(plot) as img:
        assert img.format == "PNG" and img.width > 300 and img.height > 200
        colors = {c for _, c in img.convert("RGB").getcolors(1 << 20)}
    assert (66, 114, 196) in colors  # the bars

    # --filter module:function (a file here) gives the same index as --where.
    (tmp_path / "myfilter.py").write_text(
        "def keep(row):\n"
        "    vc, vr = row['votes_chosen'], row['votes_rejected']\n"
        "    return vc / (vc + vr + 1e-6) > 0.6 or vc == 0\n"
    )
    out2 = tmp_path / "index2.csv"
    files = str(reference_parts / "part_rank0*.parquet")
    rc = run_cli(
        [
            *common,
            "--parquet-dir",
            files,
            "--output",
            str(out2),
            "--filter",
            f"{tmp_path / 'myfilter.py'}:keep",
        ]
    )
    assert rc == 0
    assert out2.read_bytes() == out.read_bytes()


def test_cli_options(tmp_path: Path, reference_parts: Path, small_buckets_json: Path) -> None:
    out = tmp_path / "index.csv"
    base = [
        "index",
        "--parquet-dir",
        str(reference_parts),
        "--output",
        str(out),
        "--buckets",
        str(small_buckets_json),
    ]
    assert run_cli([*base, "--no-shuffle", "--max-per-prompt", "0"]) == 0
    assert read_index(out).equals(
        build_index(reference_parts, buckets=small_buckets_json, max_per_prompt=None, shuffle=False)
    )
    with pytest.raises(SystemExit):
        run_cli([*base, "--where", "votes_chosen > 1", "--filter", "x:y"])
    with pytest.raises(ValueError, match="has no function 'nope'"):
        run_cli([*base, "--filter", "json:nope"])


def test_deprecated_out_index_alias(
    tmp_path: Path, reference_parts: Path, small_buckets_json: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = tmp_path / "old.csv", tmp_path / "new.csv"
    base = ["index", "--parquet-dir", str(reference_parts), "--buckets", str(small_buckets_json)]
    assert main([*base, "--out-index", str(old)]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "deprecated" in line]
    assert len(warning) == 1 and "--out-index is deprecated; use --output" in warning[0]
    assert main([*base, "--output", str(new)]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert old.read_bytes() == new.read_bytes()
    with pytest.raises(SystemExit):
        run_cli([*base, "--output", str(new), "--out-index", str(old)])
    with pytest.raises(SystemExit):
        run_cli(base)  # no output at all


# ---------------------------------------------------------------------------
# The plot (matplotlib, an optional extra)


def test_plot_is_a_bar_per_bucket(tmp_path: Path, reference_parts: Path, small_buckets_json: Path) -> None:
    _, stats = build_index_with_stats(reference_parts, buckets=small_buckets_json)
    fig = bucket_figure(stats)
    bars = fig.axes[0].patches
    assert len(bars) == len(SMALL_BUCKETS)
    assert [round(b.get_height()) for b in bars] == [b["rows"] for b in stats.per_bucket]

    a, b = tmp_path / "a.png", tmp_path / "sub" / "b.png"
    plot_buckets(stats, a)
    other = IndexStats(
        **{**stats.to_dict(), "per_bucket": [{**x, "rows": x["rows"] * 2 + 1} for x in stats.per_bucket]}
    )
    plot_buckets(other, b)
    for path in (a, b):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as img:
            assert img.format == "PNG" and 300 < img.width < 4000 and 200 < img.height < 3000
    assert a.read_bytes() != b.read_bytes()  # the data shows in the picture


def test_plot_without_matplotlib_is_one_line(
    tmp_path: Path,
    reference_parts: Path,
    small_buckets_json: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` meets when not installed
    out, plot = tmp_path / "index.csv", tmp_path / "b.png"
    rc = main(["index", "--parquet-dir", str(reference_parts), "--output", str(out), "--plot", str(plot),
               "--buckets", str(small_buckets_json)])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and "pip install 'hpd-encode[plot]'" in err[0], err
    assert not out.exists() and not plot.exists()  # refused before any work


# ---------------------------------------------------------------------------
# Refusals: an encode run that has not completed, outputs over inputs


def _encode_output(tmp_path: Path, reference_parts: Path, status: str) -> Path:
    """A copy of the part files in an output directory whose manifest says ``status``."""
    out = tmp_path / "latents"
    shutil.copytree(reference_parts, out)
    (out / "manifest.json").write_text(json.dumps({"status": status, "files": []}))
    return out


def test_index_refuses_an_encode_run_that_has_not_completed(
    tmp_path: Path, reference_parts: Path, small_buckets_json: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    latents = _encode_output(tmp_path, reference_parts, "running")
    csv = tmp_path / "index.csv"
    for source in (str(latents), str(latents / "*.parquet"), str(latents / "part_rank00.parquet")):
        rc = main(
            ["index", "--parquet-dir", source, "--output", str(csv), "--buckets", str(small_buckets_json)]
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1 and len(err) == 1, err
        assert "has not completed" in err[0] and "'running'" in err[0] and "--allow-partial" in err[0]
        assert not csv.exists()
    with pytest.raises(PartialOutputError):
        build_index(latents, buckets=small_buckets_json)

    rc = main(["index", "--parquet-dir", str(latents), "--output", str(csv), "--buckets", str(small_buckets_json),
               "--allow-partial"])  # fmt: skip
    captured = capsys.readouterr()
    expected = build_index(latents, buckets=small_buckets_json, allow_partial=True)
    assert rc == 0 and read_index(csv).equals(expected)
    warning = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warning) == 1
    assert "'running'" in warning[0] and f"indexed {expected.height:,} of the 700 rows" in warning[0]
    _, stats = build_index_with_stats(latents, buckets=small_buckets_json, allow_partial=True)
    assert stats.incomplete_outputs == {str(latents): "running"}

    # A completed run, and files without a manifest, are indexed as usual.
    (latents / "manifest.json").write_text(json.dumps({"status": "complete"}))
    _, stats = build_index_with_stats(latents, buckets=small_buckets_json)
    assert stats.incomplete_outputs == {} and stats.indexed == expected.height


@pytest.mark.parametrize("option", ["--output", "--stats", "--plot"])
def test_outputs_never_overwrite_part_files(
    tmp_path: Path,
    reference_parts: Path,
    small_buckets_json: Path,
    option: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    parts = tmp_path / "parts"
    shutil.copytree(reference_parts, parts)
    target = parts / "part_rank01.parquet"
    other = tmp_path / "elsewhere.parquet"  # a Parquet file not being read
    shutil.copy(target, other)
    before = target.read_bytes()
    outputs = {
        "--output": tmp_path / "index.csv",
        "--stats": tmp_path / "s.json",
        "--plot": tmp_path / "b.png",
    }
    for victim in (target, other):
        argv = ["index", "--parquet-dir", str(parts / "*.parquet"), "--buckets", str(small_buckets_json)]
        for opt, path in {**outputs, option: victim}.items():
            argv += [opt, str(path)]
        rc = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1 and len(err) == 1, err
        assert option in err[0] and str(victim) in err[0]
        assert target.read_bytes() == before and other.read_bytes() == before
        assert not any(p.exists() for opt, p in outputs.items() if opt != option)  # nothing written
    # The API refuses it too.
    with pytest.raises(HpdError, match="is an existing Parquet file; refusing to overwrite it"):
        write_index(build_index(parts, buckets=small_buckets_json), other)
    assert other.read_bytes() == before


def test_reading_an_index_does_not_load_the_builder() -> None:
    code = (
        "import sys, hpd_encode.index.table, hpd_encode.latents.reader; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('hpd_encode.index'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == ["hpd_encode.index", "hpd_encode.index.table"]


# ---------------------------------------------------------------------------
# Identical to the reference's CSV


def reference_filter_fn(df: pd.DataFrame) -> pd.Series:
    """The reference's example filter, as it ships (on the DataFrame, ``ast.literal_eval`` per row)."""
    parsed_results = df["detailed_results"].apply(lambda x: ast.literal_eval(x) if isinstance(x, str) else {})
    votes_chosen = parsed_results.apply(lambda d: d.get("votes_chosen", 0))
    votes_rejected = parsed_results.apply(lambda d: d.get("votes_rejected", 0.0))
    confidence = votes_chosen / (votes_chosen + votes_rejected + 1e-6)
    return (confidence > 0.6) | (votes_chosen == 0)


def reference_index(
    parquet_dir: str,
    out_csv: str | Path,
    buckets: Sequence[tuple[int, int]],
    max_per_prompt: int = 8,
    filter_fn: Callable[[pd.DataFrame], pd.Series] | None = None,
    filter_columns: list[str] | None = None,
) -> int:
    """The reference's index builder (``REFERENCE.md`` §5), step for step, with pandas.

    ``parquet_dir`` is its glob string (``sorted(glob.glob(pattern, recursive=True))``);
    ``buckets`` its bucket manager's resolutions. Returns the rows written.
    """
    parquet_paths = sorted(glob.glob(parquet_dir, recursive=True))
    res_to_idx = {(int(h), int(w)): i for i, (h, w) in enumerate(buckets)}
    base_columns = ["latent1_shape", "prompt"]
    read_columns = list(set(base_columns + filter_columns)) if filter_columns else base_columns

    all_data = []
    for p in parquet_paths:
        pf = pq.ParquetFile(p)
        for rg in range(pf.num_row_groups):
            df = pf.read_row_group(rg, columns=read_columns).to_pandas()
            df["parquet_path"] = p
            df["row_group"] = rg
            df["row_index"] = range(len(df))
            all_data.append(df)
    full_df = pd.concat(all_data, ignore_index=True)

    if filter_fn is not None:
        full_df = full_df[filter_fn(full_df)].reset_index(drop=True)

    def get_hw(shape):  # as the reference writes it (a bare except there)
        try:
            return int(shape[-2] * 8), int(shape[-1] * 8)
        except Exception:  # noqa: BLE001
            return None, None

    hw_series = full_df["latent1_shape"].apply(get_hw)
    full_df["height"] = hw_series.apply(lambda x: x[0])
    full_df["width"] = hw_series.apply(lambda x: x[1])

    full_df = full_df.sample(frac=1, random_state=42).reset_index(drop=True)
    full_df = full_df.groupby("prompt").head(max_per_prompt)

    full_df["bucket_id"] = full_df.apply(lambda row: res_to_idx.get((row["height"], row["width"])), axis=1)
    full_df = full_df.dropna(subset=["bucket_id"])
    full_df["bucket_id"] = full_df["bucket_id"].astype(int)

    full_df = full_df.sort_values(["parquet_path", "row_group", "row_index"]).reset_index(drop=True)
    full_df["global_id"] = full_df.index
    final_cols = ["global_id", "parquet_path", "row_group", "row_index", "width", "height", "bucket_id"]
    full_df[final_cols].to_csv(out_csv, index=False)
    return len(full_df)


def write_null_prompt_parts(root: Path, records: list[PartRecord], garbage: bool) -> None:
    """Three reference-shaped files with uneven row groups (37 / 100 / 1 / ... rows), every
    7th prompt null, and (``garbage``) some ``detailed_results`` the reference never parses
    without a filter."""
    root.mkdir(parents=True)
    tmp = root.parent / f".src-{root.name}.parquet"
    write_reference_part(tmp, records)
    table = pq.read_table(tmp)
    tmp.unlink()
    prompts = [None if i % 7 == 3 else p for i, p in enumerate(table["prompt"].to_pylist())]
    table = table.set_column(table.schema.get_field_index("prompt"), "prompt", pa.array(prompts, pa.string()))
    if garbage:
        dr = table["detailed_results"].to_pylist()
        for i in (5, 60, 333):
            dr[i] = None if i == 60 else "garbage"
        table = table.set_column(
            table.schema.get_field_index("detailed_results"), "detailed_results", pa.array(dr, pa.string())
        )
    splits = [(0, 300, (37, 100, 1, 162)), (300, 650, (100, 100, 100, 50)), (650, len(records), (100,))]
    for k, (start, stop, groups) in enumerate(splits):
        # Names sort by string (part_rank10 before part_rank2): the order must follow.
        path = root / ["part_rank2.parquet", "part_rank10.parquet", "part_rank00.parquet"][k]
        with pq.ParquetWriter(path, table.schema) as writer:
            offset = start
            for n in groups:
                n = min(n, stop - offset)
                if n > 0:
                    writer.write_table(table.slice(offset, n))
                    offset += n


@pytest.mark.parametrize(
    ("data", "use_filter", "cap"),
    [
        ("reference", False, 8),
        ("reference", True, 8),
        ("null-prompts", False, 8),
        ("null-prompts", True, 8),
        ("null-prompts", True, 2),
    ],
)
def test_csv_is_byte_identical_to_the_reference(
    tmp_path: Path,
    reference_parts: Path,
    part_records: list[PartRecord],
    small_buckets_json: Path,
    data: str,
    use_filter: bool,
    cap: int,
) -> None:
    if data == "reference":
        pattern = str(reference_parts / "*.parquet")
    else:
        # A comma and a space in the folder: the paths are quoted in both CSVs.
        root = tmp_path / "parts, v2"
        write_null_prompt_parts(root, make_part_records(800, seed=11), garbage=not use_filter)
        pattern = str(root / "*.parquet")
    ref_csv, our_csv = tmp_path / "reference.csv", tmp_path / "ours.csv"
    n = reference_index(
        pattern,
        ref_csv,
        SMALL_BUCKETS,
        max_per_prompt=cap,
        filter_fn=reference_filter_fn if use_filter else None,
        filter_columns=["detailed_results"] if use_filter else None,
    )
    df, stats = build_index_with_stats(
        pattern, filter=EXAMPLE_WHERE if use_filter else None, max_per_prompt=cap, buckets=small_buckets_json
    )
    write_index(df, our_csv)
    assert n > 50 and df.height == n
    assert our_csv.read_bytes() == ref_csv.read_bytes()
    if data != "reference":
        assert '"' in our_csv.read_text()  # the quoted paths were exercised
        assert stats.malformed == 0  # no filter, nothing parsed; with one, the strings are clean
    # The CLI writes the same bytes.
    cli_csv = tmp_path / "cli.csv"
    argv = ["index", "--parquet-dir", pattern, "--output", str(cli_csv), "--buckets", str(small_buckets_json),
            "--max-per-prompt", str(cap)]  # fmt: skip
    assert main([*argv, *(["--where", EXAMPLE_WHERE] if use_filter else [])]) == 0
    assert cli_csv.read_bytes() == ref_csv.read_bytes()


def test_the_shuffle_is_pandas_sample() -> None:
    from hpd_encode.index.build import shuffle_order

    for n in (0, 1, 7, 1000):
        frame = pd.DataFrame({"row": np.arange(n)})
        assert shuffle_order(n, 42).tolist() == frame.sample(frac=1, random_state=42)["row"].tolist()
    assert shuffle_order(5, None).tolist() == [0, 1, 2, 3, 4]
