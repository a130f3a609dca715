"""The Parquet layout of the part files, as the Rust writer defines it.

The writer (``rust/writer.rs``) owns the schema and exports it through
``hpd_encode._core``; this module only turns those exports into Python
objects, so the two sides cannot drift apart.

The first ten columns are the reference pipeline's, same names, types and
contents, so existing trainers keep working (``ast.literal_eval`` on
``detailed_results``, ``np.load(io.BytesIO(latent1))``). The rest are typed
extras that spare readers the string parsing, and each latent's checksum
(``CHECKSUM_COLUMNS``); readers must not require them (files written by the
reference lack them).
"""

from __future__ import annotations

import re
import types
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import pyarrow as pa

from hpd_encode import _core


def _arrow_type(name: str) -> pa.DataType:
    """A pyarrow type from the writer's spelling: an alias (``int64``) or ``list<ALIAS>``."""
    if name.startswith("list<") and name.endswith(">"):
        return pa.list_(_arrow_type(name[5:-1]))
    return pa.type_for_alias(name)


#: The part file's schema: the reference's columns, then the typed extras.
PART_SCHEMA: pa.Schema = pa.schema([(name, _arrow_type(ty)) for name, ty in _core.part_columns()])

#: The reference pipeline's columns, in file order (the first ones of ``PART_SCHEMA``).
REFERENCE_COLUMNS: list[str] = _core.reference_columns()

#: The most rows of a row group (the reference's row-group size); ``ParquetWriter``
#: refuses a larger ``row_group_size``.
ROW_GROUP_SIZE: int = _core.MAX_ROW_GROUP_SIZE

#: Image height and width over latent height and width: readers compute the
#: image size as ``latent1_shape[-2:] * LATENT_DOWN_FACTOR``.
LATENT_DOWN_FACTOR: int = _core.LATENT_DOWN_FACTOR

#: Codecs of the latent columns (``ParquetWriter(latent_compression=...)``,
#: ``encode``, ``repack``); the first, ``"none"``, is the default: zstd saves
#: only ~8 % on float latents and halves read speed per CPU core.
LATENT_COMPRESSIONS: tuple[str, ...] = tuple(_core.LATENT_COMPRESSIONS)

#: The temporary name a file has while it is written (``.NAME.tmp-PID``):
#: group ``name`` is the final file name, group ``pid`` the writing process.
TEMP_RE: re.Pattern[str] = re.compile(_core.TEMP_FILE_PATTERN)

#: The latent columns (one data page per value), in the order a pair holds them.
LATENT_COLUMNS: tuple[str, ...] = tuple(_core.LATENT_COLUMNS)

#: The checksum column of each of ``LATENT_COLUMNS`` (uint64: XXH3 of the value, computed by the
#: writer over the latent's stored ``.npy`` bytes; readers check it).
CHECKSUM_COLUMNS: tuple[str, ...] = tuple(_core.CHECKSUM_COLUMNS)

#: The whole-file digest the manifest records for each part file, and its key
#: in a file entry: XXH3-128, 32 hex digits (``ParquetWriter.close()`` and
#: ``_core.rewrite_part_file`` return it under this key; ``_core.file_digest``
#: computes it).
FILE_DIGEST: str = _core.FILE_DIGEST

#: The fields of a row given to ``ParquetWriter.submit``: ``(name, required)``.
ROW_FIELDS: list[tuple[str, bool]] = _core.row_fields()


_PY_TYPES: dict[str, type] = {
    "string": str,
    "int64": int,
    "int32": int,
    "float64": float,
    "binary": np.ndarray,
}


def _part_row() -> type:
    """:class:`PartRow` from the record's declaration (:mod:`hpd_encode.record`)."""
    from hpd_encode import record

    required = {f.part_name: _PY_TYPES[f.dtype] for f in record.FIELDS if f.missing == "required"}
    optional = {f.part_name: _PY_TYPES[f.dtype] | None for f in record.FIELDS if f.missing != "required"}
    base = TypedDict("_PartRowRequired", required)  # type: ignore[misc]
    namespace = {
        "__annotations__": optional,
        "__module__": __name__,
        "__doc__": _PART_ROW_DOC,
    }
    return types.new_class("PartRow", (base,), {"total": False}, lambda ns: ns.update(namespace))


_PART_ROW_DOC = """One row for ``ParquetWriter.submit``: ``ROW_FIELDS`` as a type, derived from the record's
declaration (``__annotations__`` and ``__required_keys__`` say which fields, of which Python types).

Unknown keys are refused. An optional field that is absent or ``None``
takes the reference's default for missing metadata (model names ``""``,
votes 0, confidence 0.0) or is stored as null (``record_index``,
``bucket_id``, the original sizes: give both halves of one or neither;
a null original size is ``None`` in ``detailed_results``). Latents are
float32 or float16 NumPy arrays (copied in C order); votes are
``0 <= votes < 2**63``, confidence finite, sizes positive, original sizes
the decoded ones (EXIF orientation applied).
"""

if TYPE_CHECKING:
    PartRow = dict[str, Any]
else:
    PartRow = _part_row()


#: The temporary path of a file being written (``.NAME.tmp-PID`` beside it, this process).
temp_name = _core.temp_name

__all__ = [
    "CHECKSUM_COLUMNS",
    "FILE_DIGEST",
    "LATENT_COLUMNS",
    "LATENT_DOWN_FACTOR",
    "PART_SCHEMA",
    "REFERENCE_COLUMNS",
    "ROW_FIELDS",
    "ROW_GROUP_SIZE",
    "TEMP_RE",
    "PartRow",
    "temp_name",
]
