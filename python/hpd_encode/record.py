"""The record, as the Rust core declares it once (``rust/metadata/record.rs``,
exported as ``_core.record_fields()``), and the views of it Python uses.

Each field has a name (in the metadata table and the plan's rows), a name in
the part file, a kind (its values and Arrow type), a source (the metadata
entry's position or one of its keys, the survey, the plan, the encoder) and
what a missing value becomes. Every other list of the record's fields is
derived from it: :data:`hpd_encode.metadata.TABLE_SCHEMA`, the encoder's row
mapping (:data:`ROW_NAMES`), :class:`hpd_encode.schema.PartRow`, the writer's
row fields and :data:`hpd_encode.failures.CSV_COLUMNS`.
"""

from __future__ import annotations

from hpd_encode import _core
from hpd_encode.errors import UnknownKeyError

#: Every field, in declaration order.
FIELDS: tuple[_core.RecordField, ...] = tuple(_core.record_fields())

#: The fields read from the metadata file: the entry's position (``record_index``), then the
#: fields read from its keys; the columns of the metadata table, in order.
METADATA_FIELDS: tuple[_core.RecordField, ...] = tuple(
    f for f in FIELDS if f.source in ("position", "key", "pair_item")
)

#: The image paths, chosen then rejected: the fields a failure names.
IMAGE_PATH_FIELDS: tuple[_core.RecordField, ...] = tuple(f for f in METADATA_FIELDS if f.kind == "path")

#: Planned-row column -> part-file name, for every field the writer is given besides the latents
#: (which the encoder makes).
ROW_NAMES: dict[str, str] = {f.name: f.part_name for f in FIELDS if f.source != "encoder"}


def field(name: str) -> _core.RecordField:
    """The field called ``name`` (``KeyError`` naming the known ones when there is none)."""
    for f in FIELDS:
        if f.name == name:
            return f
    raise UnknownKeyError(f"no record field {name!r}; the fields are {', '.join(f.name for f in FIELDS)}")


__all__ = ["FIELDS", "IMAGE_PATH_FIELDS", "METADATA_FIELDS", "ROW_NAMES", "field"]
