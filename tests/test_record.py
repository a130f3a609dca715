"""The record is declared once, in Rust (``_core.record_fields()``): every other list of its
fields must agree with that declaration, so that adding a field is one entry there plus its
test (ARCHITECTURE.md, "A metadata field")."""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import polars as pl
import pyarrow as pa

from hpd_encode import _core, failures, metadata, record, schema

# (a module: the package ``hpd_encode.pipeline`` may export names that hide its modules)
encoder = importlib.import_module("hpd_encode.pipeline.encoder")

_POLARS = {"int64": pl.Int64(), "float64": pl.Float64(), "string": pl.String()}
_PY = {"string": str, "int64": int, "int32": int, "float64": float, "binary": np.ndarray}


def test_the_declaration() -> None:
    fields = _core.record_fields()
    names = [f.name for f in fields]
    assert names[0] == "record_index" and fields[0].source == "position"
    assert len(set(names)) == len(names) and len({f.part_name for f in fields}) == len(names)
    by_name = {f.name: f for f in fields}
    assert (by_name["path1"].part_name, by_name["path1"].key, by_name["path1"].missing) == (
        "image1_path",
        "path1",
        "required",
    )
    assert (by_name["votes_rejected"].source, by_name["votes_rejected"].key) == ("pair_item", "choice_dist")
    assert (by_name["h1"].part_name, by_name["h1"].together_with) == ("orig_chosen_height", "w1")
    assert by_name["model1"].missing == "default" and by_name["bucket_id"].missing == "null"
    assert record.field("w2").part_name == "orig_rejected_width"


def test_the_metadata_table_is_the_fields_read_from_the_metadata() -> None:
    read = [f for f in record.FIELDS if f.source in ("position", "key", "pair_item")]
    assert metadata.TABLE_SCHEMA == {f.name: _POLARS[f.dtype] for f in read}
    assert [f.name for f in dataclasses.fields(metadata.Record)] == list(metadata.TABLE_SCHEMA)


def test_the_writer_rows_are_the_fields_by_their_part_names() -> None:
    assert schema.ROW_FIELDS == [(f.part_name, f.missing == "required") for f in record.FIELDS]
    assert encoder._ROW_FIELDS == {f.name: f.part_name for f in record.FIELDS if f.kind != "latent"}
    hints = schema.PartRow.__annotations__
    assert list(hints) == [f.part_name for f in record.FIELDS if f.missing == "required"] + [
        f.part_name for f in record.FIELDS if f.missing != "required"
    ]
    assert schema.PartRow.__required_keys__ == {f.part_name for f in record.FIELDS if f.missing == "required"}
    for f in record.FIELDS:
        want = _PY[f.dtype] if f.missing == "required" else _PY[f.dtype] | None
        assert hints[f.part_name] == want, f.name


def test_the_part_file_holds_the_reference_columns_then_the_other_fields() -> None:
    reference = schema.REFERENCE_COLUMNS
    assert schema.PART_SCHEMA.names[: len(reference)] == reference
    extras = [f for f in record.FIELDS if f.part_name not in reference]
    assert schema.PART_SCHEMA.names[len(reference) : len(reference) + len(extras)] == [
        f.part_name for f in extras
    ]
    for f in record.FIELDS:
        if f.kind != "latent":
            assert schema.PART_SCHEMA.field(f.part_name).type == pa.type_for_alias(f.dtype), f.name


def test_failures_name_the_record_by_its_part_names() -> None:
    paths = [f.part_name for f in record.IMAGE_PATH_FIELDS]
    assert paths == ["image1_path", "image2_path"]
    assert failures.CSV_COLUMNS == ("record_index", *paths, "stage", "reason")
    names = [f.name for f in dataclasses.fields(failures.Failure)]
    assert names[0] == record.field("record_index").part_name and names[-2:] == paths
    # The Rust reader's failure columns are the same.
    assert {"image1_path", "image2_path", "record_index", "detail"} <= {
        n for n in dir(_core.MetadataFailures) if not n.startswith("_")
    }
