//! The record, declared once: every field a comparison has on its way from
//! the metadata file to a part-file row, with its type, its default for a
//! missing value, where it comes from, and its name in the part file.
//!
//! Every other view is derived from [`FIELDS`]: the metadata reader's columns
//! and rules ([`crate::metadata::judge`]), the writer's row fields
//! ([`crate::parts::writer::ROW_FIELDS`]) and the part file's typed extras,
//! and, through `_core.record_fields()`, Python's `metadata.TABLE_SCHEMA`,
//! the encoder's row mapping, `schema.PartRow` and the failure columns
//! (`hpd_encode.record`). Adding a metadata field is one entry here plus its
//! test.

/// What values a field holds, and so its Arrow type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string (possibly empty).
    Text,
    /// A non-empty string: an image path, relative to the data root.
    Path,
    /// A whole number from 0 to 2**63 - 1 (a vote count).
    Count,
    /// A finite float.
    Real,
    /// A whole number from 0 to 2**63 - 1 numbering records.
    Index,
    /// A size in pixels: a whole number from 1 to 2**63 - 1.
    Size,
    /// A bucket id: a whole number from 0 to 2**31 - 1.
    Bucket,
    /// A latent: a float32 or float16 array, stored as `.npy` bytes.
    Latent,
}

impl Kind {
    /// The Arrow type, as pyarrow spells it (`pa.type_for_alias`).
    pub const fn dtype(self) -> &'static str {
        match self {
            Kind::Text | Kind::Path => "string",
            Kind::Count | Kind::Index | Kind::Size => "int64",
            Kind::Real => "float64",
            Kind::Bucket => "int32",
            Kind::Latent => "binary",
        }
    }

    /// The name `_core.record_fields()` gives it.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Path => "path",
            Kind::Count => "count",
            Kind::Real => "real",
            Kind::Index => "index",
            Kind::Size => "size",
            Kind::Bucket => "bucket",
            Kind::Latent => "latent",
        }
    }
}

/// Where a field's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The entry's position in the metadata file (entries numbered from 0).
    Position,
    /// The value under a key of the metadata entry (a JSON object).
    Key(&'static str),
    /// Item `i` of the pair (a JSON list of two) under a key of the entry.
    PairItem(&'static str, usize),
    /// The survey: the image's size, probed from its header.
    Survey,
    /// The plan: the pair rules' target size and bucket.
    Plan,
    /// The encoder.
    Encoder,
}

impl Source {
    /// The metadata key the value is under, for a field read from the entry.
    pub const fn key(self) -> Option<&'static str> {
        match self {
            Source::Key(k) | Source::PairItem(k, _) => Some(k),
            _ => None,
        }
    }

    /// The name `_core.record_fields()` gives it.
    pub const fn name(self) -> &'static str {
        match self {
            Source::Position => "position",
            Source::Key(_) => "key",
            Source::PairItem(..) => "pair_item",
            Source::Survey => "survey",
            Source::Plan => "plan",
            Source::Encoder => "encoder",
        }
    }
}

/// What an absent or null value becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Nothing: a metadata entry without it is a bad record, a row without it is refused.
    Required,
    /// The reference's default: `""` for text, 0 for counts, 0.0 for reals.
    Default,
    /// Null (stored as null in the part file).
    Null,
}

impl Missing {
    /// The name `_core.record_fields()` gives it.
    pub const fn name(self) -> &'static str {
        match self {
            Missing::Required => "required",
            Missing::Default => "default",
            Missing::Null => "null",
        }
    }
}

/// One field of the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Its name in the metadata table and the plan's rows.
    pub name: &'static str,
    /// Its name in the part file (a column, and a field of the writer's rows).
    pub part_name: &'static str,
    pub kind: Kind,
    pub source: Source,
    pub missing: Missing,
    /// What the reasons for a bad value call it (`vote count 2.5 is not a whole number`); for text
    /// read from a key, reasons say `field 'KEY'`.
    pub noun: &'static str,
    /// The other half of a pair given together or not at all (an image's height and width).
    pub together_with: Option<&'static str>,
}

const fn field(
    name: &'static str,
    part_name: &'static str,
    kind: Kind,
    source: Source,
    missing: Missing,
    noun: &'static str,
) -> Field {
    Field { name, part_name, kind, source, missing, noun, together_with: None }
}

const fn size(name: &'static str, part_name: &'static str, other: &'static str) -> Field {
    Field {
        name,
        part_name,
        kind: Kind::Size,
        source: Source::Survey,
        missing: Missing::Null,
        noun: part_name,
        together_with: Some(other),
    }
}

/// The record's fields, in the order of the metadata table (the fields read from the metadata
/// first) and of the part file's typed extras (the fields that are not one of the reference's
/// columns, in this order, after them).
pub const FIELDS: [Field; 18] = [
    field("record_index", "record_index", Kind::Index, Source::Position, Missing::Null, "record_index"),
    field("prompt", "prompt", Kind::Text, Source::Key("prompt"), Missing::Required, "prompt"),
    field("path1", "image1_path", Kind::Path, Source::Key("path1"), Missing::Required, "path1"),
    field("path2", "image2_path", Kind::Path, Source::Key("path2"), Missing::Required, "path2"),
    field("model1", "model1", Kind::Text, Source::Key("model1"), Missing::Default, "model1"),
    field("model2", "model2", Kind::Text, Source::Key("model2"), Missing::Default, "model2"),
    field(
        "votes_chosen",
        "votes_chosen",
        Kind::Count,
        Source::PairItem("choice_dist", 0),
        Missing::Default,
        "vote count",
    ),
    field(
        "votes_rejected",
        "votes_rejected",
        Kind::Count,
        Source::PairItem("choice_dist", 1),
        Missing::Default,
        "vote count",
    ),
    field("confidence", "confidence", Kind::Real, Source::Key("confidence"), Missing::Default, "confidence"),
    field("height", "height", Kind::Size, Source::Plan, Missing::Required, "height"),
    field("width", "width", Kind::Size, Source::Plan, Missing::Required, "width"),
    field("bucket_id", "bucket_id", Kind::Bucket, Source::Plan, Missing::Null, "bucket_id"),
    size("h1", "orig_chosen_height", "w1"),
    size("w1", "orig_chosen_width", "h1"),
    size("h2", "orig_rejected_height", "w2"),
    size("w2", "orig_rejected_width", "h2"),
    field("latent1", "latent1", Kind::Latent, Source::Encoder, Missing::Required, "latent1"),
    field("latent2", "latent2", Kind::Latent, Source::Encoder, Missing::Required, "latent2"),
];

/// Whether a field is read from the metadata entry's keys (not its position).
pub const fn is_read(f: &Field) -> bool {
    f.source.key().is_some()
}

/// `pub const $n: usize` and `pub const $fields: [Field; $n]`: the fields of [`FIELDS`] for which
/// the const fn `$keep(&Field) -> bool` holds, in declaration order.
macro_rules! fields_where {
    ($(#[$m:meta])* $n:ident, $(#[$mf:meta])* $fields:ident, $keep:path) => {
        $(#[$m])*
        pub const $n: usize = {
            let (mut n, mut i) = (0, 0);
            while i < $crate::metadata::record::FIELDS.len() {
                if $keep(&$crate::metadata::record::FIELDS[i]) {
                    n += 1;
                }
                i += 1;
            }
            n
        };
        $(#[$mf])*
        pub const $fields: [$crate::metadata::record::Field; $n] = {
            let fields = &$crate::metadata::record::FIELDS;
            let mut out = [fields[0]; $n];
            let (mut n, mut i) = (0, 0);
            while i < fields.len() {
                if $keep(&fields[i]) {
                    out[n] = fields[i];
                    n += 1;
                }
                i += 1;
            }
            out
        };
    };
}
pub(crate) use fields_where;

fields_where!(
    /// How many fields are read from the entry's keys.
    N_READ,
    /// The fields read from the entry's keys, in declaration order: the metadata reader's columns
    /// after `record_index`.
    READ_FIELDS,
    is_read
);

/// `a == b`, at compile time.
pub const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The position in `fields` of the field `name` (a compile error, in a const, when there is none).
pub const fn position(fields: &[Field], name: &str) -> usize {
    let mut i = 0;
    while i < fields.len() {
        if str_eq(fields[i].name, name) {
            return i;
        }
        i += 1;
    }
    panic!("no such record field")
}

/// The position in [`FIELDS`] of the field `name`.
pub const fn index_of(name: &str) -> usize {
    position(&FIELDS, name)
}

/// The position in [`READ_FIELDS`] of the field `name`.
pub const fn read_index_of(name: &str) -> usize {
    position(&READ_FIELDS, name)
}

/// The fields of a row given to the part writer, `(part name, required)`, in declaration order.
pub const ROW_FIELDS: [(&str, bool); FIELDS.len()] = {
    let mut out = [("", false); FIELDS.len()];
    let mut i = 0;
    while i < FIELDS.len() {
        out[i] = (FIELDS[i].part_name, matches!(FIELDS[i].missing, Missing::Required));
        i += 1;
    }
    out
};

/// The rules the declaration must follow (checked when the crate compiles): names unique, the
/// position first and alone, no text that may be null (a table column of strings has no nulls),
/// pairs given together naming each other.
const fn check() {
    assert!(matches!(FIELDS[0].source, Source::Position), "record_index is first");
    let mut i = 0;
    while i < FIELDS.len() {
        let f = &FIELDS[i];
        let mut j = i + 1;
        while j < FIELDS.len() {
            assert!(!str_eq(f.name, FIELDS[j].name), "field names are unique");
            assert!(!str_eq(f.part_name, FIELDS[j].part_name), "part names are unique");
            j += 1;
        }
        if i > 0 {
            assert!(!matches!(f.source, Source::Position), "one field is the position");
        }
        if is_read(f) {
            assert!(!matches!(f.missing, Missing::Null), "a field read from the metadata is never null");
            assert!(
                matches!(f.kind, Kind::Text | Kind::Path | Kind::Count | Kind::Real),
                "fields read from the metadata are text, paths, counts or reals"
            );
            if matches!(f.kind, Kind::Path) {
                assert!(matches!(f.missing, Missing::Required), "a path is required");
            }
            if let Source::PairItem(_, item) = f.source {
                assert!(item < 2, "a pair has two items");
            }
        }
        if let Some(other) = f.together_with {
            let o = &FIELDS[index_of(other)];
            assert!(matches!(o.together_with, Some(back) if str_eq(back, f.name)), "pairs name each other");
        }
        i += 1;
    }
}

const _: () = check();

/// The image paths' positions in [`READ_FIELDS`] (the chosen image, then the rejected one): the
/// paths a failure names and the survey probes.
pub const IMAGE_PATHS: [usize; 2] = [read_index_of("path1"), read_index_of("path2")];

const _: () = assert!(
    matches!(READ_FIELDS[IMAGE_PATHS[0]].kind, Kind::Path) && matches!(READ_FIELDS[IMAGE_PATHS[1]].kind, Kind::Path)
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_tables_follow_the_declaration() {
        let read: Vec<&str> = READ_FIELDS.iter().map(|f| f.name).collect();
        assert_eq!(
            read,
            ["prompt", "path1", "path2", "model1", "model2", "votes_chosen", "votes_rejected", "confidence"]
        );
        assert_eq!(ROW_FIELDS.len(), FIELDS.len());
        assert_eq!(ROW_FIELDS[2], ("image1_path", true));
        assert_eq!(ROW_FIELDS[index_of("h1")], ("orig_chosen_height", false));
        assert_eq!(FIELDS[index_of("w2")].together_with, Some("h2"));
        assert_eq!(READ_FIELDS[IMAGE_PATHS[1]].part_name, "image2_path");
    }
}
