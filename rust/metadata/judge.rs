//! The one place that decides whether a metadata entry is a good record, and
//! why not.
//!
//! The rules are the declaration's ([`crate::metadata::record::READ_FIELDS`]),
//! applied by kind to the value under each field's key:
//! - text: a string; required text must be present (a path non-empty too),
//!   other text may be absent or null (then `""`); a lone surrogate in it is
//!   an error;
//! - counts (the votes, items of the `choice_dist` pair, which may be absent
//!   or null as a whole): null or a whole number from 0 to 2**63 - 1, an
//!   integer or a float that is a whole number (`2.0`, `1e2`), exact up to
//!   2**63 - 1 for integers; above that "does not fit in a signed 64-bit
//!   integer";
//! - reals (`confidence`): null, or an integer or float whose value as a
//!   float is finite (an integer beyond float range is not).
//!
//! Each entry is read one of two ways, with the same rules. The fast way
//! parses it with serde_json into the values of the declared keys only
//! (unknown keys are skipped), and takes the record when the rules accept
//! it. Every other entry, and only those, is parsed again by
//! [`crate::metadata::json`], which keeps what serde_json refuses or loses,
//! and the rules give the reason. The edges, one rule each:
//! - lone surrogate escapes (`"\ud800"`): an error in a declared text
//!   field; elsewhere in the entry they are accepted (the value is unused);
//! - `NaN`, `Infinity`, `-Infinity`: accepted as JSON; as a vote "is not a
//!   number", as a confidence "is not a finite number", elsewhere unused;
//! - numbers beyond float range (`1e400`): infinite, so as above;
//! - duplicate keys: the last one counts, as in Python and JavaScript;
//! - nesting: at most [`MAX_DEPTH`] levels of lists and objects (the entry's
//!   object is level 1), in declared and unknown fields alike; deeper is
//!   "not valid JSON: nested too deeply". An entry with at most that many
//!   opening brackets and braces cannot be deeper, so the fast way only
//!   counts them;
//! - integers of any length are read (no digit limit); a vote above
//!   2**63 - 1 does not fit, a confidence is the nearest float;
//! - whole-number floats are counts (`2.0` is 2; `2.5` "is not a whole
//!   number"; `-0.0` is 0).
//!
//! The reasons are worded as `hpd_encode.metadata` worded them (the values
//! shown by [`crate::metadata::pyrepr::show`]); a syntax error is worded as
//! Python's `json` words it, with where it is: "line 3 is not valid JSON:
//! Expecting value at byte 7 of the line". A JSON Lines line, or a list
//! element read again by offset, that is not JSON is a bad record; a list
//! element that is not JSON breaks the list ([`Verdict::NotJson`]).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::metadata::json::{self, Int, Str, Syntax, SyntaxError, Value, MAX_DEPTH};
use crate::metadata::pyrepr::{cap, repr, show};
use crate::metadata::record::{str_eq, Field, Kind, Missing, Source, IMAGE_PATHS, N_READ, READ_FIELDS};

/// One value of a good record.
#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    Text(Cow<'a, str>),
    Int(i64),
    Real(f64),
}

/// A good record: the values of [`READ_FIELDS`], in order.
pub type Record<'a> = [Val<'a>; N_READ];

/// Where an entry is, for its reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Line `n` (from 1) of a JSON Lines file.
    Line(u64),
    /// A list element at this file offset; `breaks`: not JSON breaks the list (else a bad record).
    Element { offset: u64, breaks: bool },
}

/// What the reason is about: its first words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// "line N ..." (renumbered when a range's lines are counted after others).
    Line(u64),
    /// "record ...".
    Record,
    /// Nothing: the reason names the field.
    Field,
}

/// Why an entry is a bad record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    pub subject: Subject,
    /// The rest of the reason, after the subject.
    pub text: String,
}

impl Reason {
    fn field(text: String) -> Self {
        Reason { subject: Subject::Field, text }
    }

    /// The reason's words, at most [`crate::metadata::pyrepr::MAX_DETAIL`] characters.
    pub fn render(&self) -> String {
        cap(match self.subject {
            Subject::Line(n) => format!("line {n} {}", self.text),
            Subject::Record => format!("record {}", self.text),
            Subject::Field => self.text.clone(),
        })
    }
}

/// A bad record: the reason, and its image paths where usable (an object's non-empty string
/// paths; else empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bad {
    pub reason: Reason,
    pub paths: [String; 2],
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict<'a> {
    Good(Record<'a>),
    Bad(Bad),
    /// A list element that is not JSON: the list is broken (see [`Place::Element`]).
    NotJson(ListError),
}

/// Why a list is broken: which element (its file offset) is not JSON, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListError {
    pub offset: u64,
    pub syntax: Syntax,
}

impl fmt::Display for ListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {} of the file", self.syntax.error, self.offset + self.syntax.at as u64)
    }
}

/// Judge one entry (its bytes, without the newline of a JSON Lines line).
pub fn judge<'a>(bytes: &'a [u8], place: Place) -> Verdict<'a> {
    if let Some(record) = fast(bytes) {
        return Verdict::Good(record);
    }
    slow(bytes, place)
}

/// The record, when serde_json reads the entry and the rules accept it.
pub fn fast(bytes: &[u8]) -> Option<Record<'_>> {
    // Deeper than MAX_DEPTH needs more opening brackets than that (serde_json skips unknown
    // fields without a depth limit).
    if bytes.iter().filter(|&&b| b == b'[' || b == b'{').count() > MAX_DEPTH {
        return None;
    }
    // All of it: serde_json does not check the strings it skips (unknown fields).
    let text = std::str::from_utf8(bytes).ok()?;
    let slots: Slots<'_> = serde_json::from_str(text).ok()?;
    rules(&slots).ok()
}

/// The verdict of the entry parsed by [`json::parse`]: the authority.
pub fn slow(bytes: &[u8], place: Place) -> Verdict<'_> {
    let (subject, whole) = match place {
        Place::Line(n) => (Subject::Line(n), "line"),
        Place::Element { .. } => (Subject::Record, "file"),
    };
    let offset = match place {
        Place::Line(_) => 0,
        Place::Element { offset, .. } => offset,
    };
    let bad = |text: String| Verdict::Bad(Bad { reason: Reason { subject, text }, paths: Default::default() });
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let at = e.valid_up_to();
            return bad(format!(
                "is not valid UTF-8: {} at byte {} of the {whole}",
                utf8_reason(bytes, &e),
                offset + at as u64
            ));
        }
    };
    let value = match json::parse(text) {
        Ok(v) => v,
        Err(syntax) => {
            if let Place::Element { offset, breaks: true } = place {
                if syntax.error != SyntaxError::TooDeep {
                    return Verdict::NotJson(ListError { offset, syntax });
                }
            }
            return bad(format!(
                "is not valid JSON: {} at byte {} of the {whole}",
                syntax.error,
                offset + syntax.at as u64
            ));
        }
    };
    if !matches!(value, Value::Object(_)) {
        let text = format!("is a {}, not an object", value.type_name());
        return Verdict::Bad(Bad { reason: Reason { subject: Subject::Record, text }, paths: Default::default() });
    }
    match rules(&value) {
        Ok(record) => Verdict::Good(record),
        Err(reason) => {
            let usable = |k: usize| match READ_FIELDS[IMAGE_PATHS[k]].source.key().and_then(|key| value.get(key)) {
                Some(Value::Str(Str::Text(s))) if !s.is_empty() => s.to_string(),
                _ => String::new(),
            };
            Verdict::Bad(Bad { reason: Reason::field(reason), paths: [usable(0), usable(1)] })
        }
    }
}

/// Python's reason for a UTF-8 decoding error (`UnicodeDecodeError.reason`).
fn utf8_reason(bytes: &[u8], e: &std::str::Utf8Error) -> &'static str {
    match bytes[e.valid_up_to()] {
        0x80..=0xC1 | 0xF5..=0xFF => "invalid start byte",
        _ if e.error_len().is_none() => "unexpected end of data",
        _ => "invalid continuation byte",
    }
}

/// The values of an entry's keys, whichever way it was parsed.
trait Lookup<'a> {
    fn get(&self, key: &str) -> Option<&Value<'a>>;
}

impl<'a> Lookup<'a> for Value<'a> {
    fn get(&self, key: &str) -> Option<&Value<'a>> {
        Value::get(self, key)
    }
}

/// Apply the rules to an entry's values: the record, or the reason (the first field that is bad,
/// in declaration order).
fn rules<'a>(entry: &impl Lookup<'a>) -> Result<Record<'a>, String> {
    let mut out: Record<'a> = std::array::from_fn(|_| Val::Int(0));
    for (slot, f) in out.iter_mut().zip(READ_FIELDS.iter()) {
        let v = match f.source {
            Source::Key(key) => entry.get(key),
            Source::PairItem(key, item) => match entry.get(key) {
                None | Some(Value::Null) => None,
                Some(Value::List(items)) if items.len() == 2 => Some(&items[item]),
                Some(other) => return Err(format!("{key} {} is not a pair of {}s", show(other), f.noun)),
            },
            _ => unreachable!("READ_FIELDS are read from keys"),
        };
        *slot = value(f, v.filter(|v| !matches!(v, Value::Null)))?;
    }
    Ok(out)
}

/// One field's value (`None`: absent or null).
fn value<'a>(f: &Field, v: Option<&Value<'a>>) -> Result<Val<'a>, String> {
    let key = f.source.key().unwrap_or(f.name);
    match f.kind {
        Kind::Text | Kind::Path => {
            let s = match (v, f.missing) {
                (Some(Value::Str(s)), _) if !(f.kind == Kind::Path && s.is_empty()) => s,
                (None, Missing::Default) => return Ok(Val::Text(Cow::Borrowed(""))),
                (Some(other), Missing::Default) => {
                    return Err(format!("field '{key}' is a {}, not a string or null", other.type_name()))
                }
                _ => return Err(format!("field '{key}' is missing or not a string")),
            };
            match s {
                Str::Text(t) => Ok(Val::Text(t.clone())),
                Str::Wtf(_) => {
                    let cp = s.surrogate().unwrap_or(0);
                    Err(format!("field '{key}' contains a lone surrogate (\\u{cp:04x}), not valid Unicode"))
                }
            }
        }
        Kind::Count => match v {
            None if f.missing == Missing::Required => Err(format!("field '{key}' is missing")),
            None => Ok(Val::Int(0)),
            Some(v) => count(f.noun, v).map(Val::Int),
        },
        Kind::Real => match v {
            None if f.missing == Missing::Required => Err(format!("field '{key}' is missing")),
            None => Ok(Val::Real(0.0)),
            Some(v) => real(f.noun, v).map(Val::Real),
        },
        _ => unreachable!("the declaration reads only text, paths, counts and reals"),
    }
}

/// 2**63 as a float (exact).
const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;

fn count(noun: &str, v: &Value<'_>) -> Result<i64, String> {
    let too_big = || format!("{noun} {} does not fit in a signed 64-bit integer", show(v));
    match v {
        Value::Int(Int::Small(i)) if *i < 0 => Err(format!("{noun} {} is negative", show(v))),
        Value::Int(Int::Small(i)) => i64::try_from(*i).map_err(|_| too_big()),
        Value::Int(Int::Big(digits)) if digits.starts_with('-') => Err(format!("{noun} {} is negative", show(v))),
        Value::Int(Int::Big(_)) => Err(too_big()),
        Value::Float(x) if !x.is_finite() => Err(format!("{noun} {} is not a number", show(v))),
        Value::Float(x) if x.fract() != 0.0 => Err(format!("{noun} {} is not a whole number", repr(v))),
        Value::Float(x) if *x < 0.0 => Err(format!("{noun} {} is negative", show(v))),
        Value::Float(x) if *x >= TWO_POW_63 => Err(too_big()),
        Value::Float(x) => Ok(*x as i64),
        _ => Err(format!("{noun} {} is not a number", show(v))),
    }
}

fn real(noun: &str, v: &Value<'_>) -> Result<f64, String> {
    let x = match v {
        Value::Int(Int::Small(i)) => *i as f64,
        Value::Int(Int::Big(digits)) => digits.parse().unwrap_or(f64::INFINITY),
        Value::Float(x) => *x,
        _ => f64::NAN,
    };
    if x.is_finite() {
        Ok(x)
    } else {
        // NaN/inf would make detailed_results unreadable by ast.literal_eval.
        Err(format!("{noun} {} is not a finite number", show(v)))
    }
}

// ---------------------------------------------------------------------------------------------
// The fast way: serde_json, the declared keys' values only.

/// The distinct keys of [`READ_FIELDS`], in order.
const fn keys() -> ([&'static str; N_READ], usize) {
    let mut out = [""; N_READ];
    let (mut n, mut i) = (0, 0);
    while i < N_READ {
        let Some(k) = READ_FIELDS[i].source.key() else { panic!("READ_FIELDS are read from keys") };
        let mut seen = false;
        let mut j = 0;
        while j < n {
            seen |= str_eq(out[j], k);
            j += 1;
        }
        if !seen {
            out[n] = k;
            n += 1;
        }
        i += 1;
    }
    (out, n)
}

const KEYS_AND_COUNT: ([&str; N_READ], usize) = keys();
const N_KEYS: usize = KEYS_AND_COUNT.1;

/// The metadata keys the record is read from.
pub const KEYS: [&str; N_KEYS] = {
    let mut out = [""; N_KEYS];
    let mut i = 0;
    while i < N_KEYS {
        out[i] = KEYS_AND_COUNT.0[i];
        i += 1;
    }
    out
};

/// The declared keys' values of an entry (the last of a repeated key).
struct Slots<'a>([Option<Value<'a>>; N_KEYS]);

impl<'a> Lookup<'a> for Slots<'a> {
    fn get(&self, key: &str) -> Option<&Value<'a>> {
        KEYS.iter().position(|k| *k == key).and_then(|i| self.0[i].as_ref())
    }
}

impl<'de> Deserialize<'de> for Slots<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Slots<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Slots<'de>, A::Error> {
                let mut slots = Slots(std::array::from_fn(|_| None));
                while let Some(Key(k)) = map.next_key()? {
                    match KEYS.iter().position(|known| *known == &*k) {
                        Some(i) => slots.0[i] = Some(map.next_value()?),
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(slots)
            }
        }
        d.deserialize_map(V)
    }
}

/// A key, borrowed from the entry when it has no escapes.
struct Key<'a>(Cow<'a, str>);

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(s)))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(s.to_owned())))
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Value<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

/// serde_json's values as [`Value`]s. An integer beyond `u64` comes as a float (serde_json reads
/// it so): the rules never accept such a vote, and take a confidence as the nearest float, which
/// is what the slow way gives too.
struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value<'de>, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value<'de>, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value<'de>, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Value<'de>, E> {
        Ok(Value::Int(Int::Small(i.into())))
    }
    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Value<'de>, E> {
        Ok(Value::Int(Int::Small(u.into())))
    }
    fn visit_f64<E: de::Error>(self, x: f64) -> Result<Value<'de>, E> {
        Ok(Value::Float(x))
    }
    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Value<'de>, E> {
        Ok(Value::Str(Str::Text(Cow::Borrowed(s))))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value<'de>, E> {
        Ok(Value::Str(Str::Text(Cow::Owned(s.to_owned()))))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(2).min(16));
        while let Some(v) = seq.next_element_seed(ValueSeed)? {
            items.push(v);
        }
        Ok(Value::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value<'de>, A::Error> {
        let mut pairs = Vec::new();
        while let Some(Key(k)) = map.next_key()? {
            pairs.push((Str::Text(k), map.next_value_seed(ValueSeed)?));
        }
        Ok(Value::Object(pairs))
    }
}

struct ValueSeed;

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value<'de>, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        r#"{"prompt": "a \"cat\"", "path1": "a.jpg", "path2": "b.jpg", "choice_dist": [3, 1], "confidence": 0.75}"#;

    fn reason(entry: &str) -> String {
        match judge(entry.as_bytes(), Place::Line(3)) {
            Verdict::Bad(b) => b.reason.render(),
            other => panic!("{entry}: {other:?}"),
        }
    }

    fn good(entry: &str) -> Record<'_> {
        match judge(entry.as_bytes(), Place::Line(1)) {
            Verdict::Good(r) => r,
            other => panic!("{entry}: {other:?}"),
        }
    }

    fn with(change: &str) -> String {
        format!(r#"{{"prompt": "p", "path1": "a.jpg", "path2": "b.jpg", {change}}}"#)
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};

        /// JSON text for a value, valid or not, of the kinds the rules meet.
        fn value() -> impl Strategy<Value = String> {
            let literal = prop::sample::select(vec![
                "null",
                "true",
                "NaN",
                "-Infinity",
                "1e400",
                "-0.0",
                "2.0",
                "9223372036854775807",
                "9223372036854775808",
                "18446744073709551616",
                "123456789012345678901234567890",
                "\"\\ud800\"",
                "\"\\ud83d\\ude00\"",
                "\"a\\\"b\"",
                "\"\"",
                "\"x\u{1}\"",
                "01",
                "[1,]",
            ])
            .prop_map(str::to_string);
            let leaf = prop_oneof![
                literal,
                Just(format!("1{}", "0".repeat(320))),
                (-5i64..5).prop_map(|i| i.to_string()),
                any::<f64>().prop_map(|x| format!("{x:?}")),
                "[a-z/.é]{0,6}".prop_map(|t| format!("\"{t}\"")),
            ];
            leaf.prop_recursive(3, 12, 3, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
                    prop::collection::vec(inner, 0..3).prop_map(|v| format!(
                        "{{{}}}",
                        v.iter().enumerate().map(|(i, x)| format!("\"k{i}\": {x}")).collect::<Vec<_>>().join(", ")
                    )),
                ]
            })
        }

        /// An entry: mostly good fields, some replaced, some repeated, some unknown.
        fn entry() -> impl Strategy<Value = String> {
            let keys = ["prompt", "path1", "path2", "model1", "model2", "choice_dist", "confidence", "x"];
            let good = [r#""p""#, r#""a.jpg""#, r#""b.jpg""#, r#""m1""#, "null", "[3, 1]", "0.5", "[]"];
            let field = (0..keys.len(), prop::bool::weighted(0.3), value(), value()).prop_map(move |(k, bad, v, w)| {
                let v = if bad {
                    v
                } else if k == 5 && w.len() < 8 {
                    format!("[{w}, 1]")
                } else {
                    good[k].to_string()
                };
                format!("\"{}\": {v}", keys[k])
            });
            let required =
                || (value(), prop::bool::weighted(0.1)).prop_map(|(v, bad)| if bad { v } else { r#""a.jpg""#.into() });
            (required(), required(), required(), prop::collection::vec(field, 0..7)).prop_map(|(p, a, b, fs)| {
                let mut all = vec![format!("\"prompt\": {p}"), format!("\"path1\": {a}"), format!("\"path2\": {b}")];
                all.extend(fs);
                format!("{{{}}}", all.join(", "))
            })
        }

        #[test]
        fn the_fast_way_agrees_with_the_authority() {
            let mut runner = TestRunner::new(Config { cases: 1500, failure_persistence: None, ..Config::default() });
            let taken = std::cell::Cell::new(0);
            runner
                .run(&entry(), |e| {
                    let slow = slow(e.as_bytes(), Place::Line(1));
                    if let Some(r) = fast(e.as_bytes()) {
                        taken.set(taken.get() + 1);
                        prop_assert_eq!(Verdict::Good(r), slow, "{}", e);
                    }
                    Ok(())
                })
                .unwrap();
            assert!(taken.get() > 100, "{} entries taken the fast way", taken.get());
        }

        #[test]
        fn any_bytes_get_a_verdict_with_a_short_reason() {
            let mut runner = TestRunner::new(Config { cases: 1500, failure_persistence: None, ..Config::default() });
            let bytes = prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                (entry(), any::<usize>(), any::<u8>()).prop_map(|(e, at, b)| {
                    let mut v = e.into_bytes();
                    if !v.is_empty() {
                        let k = at % v.len();
                        v[k] = b;
                    }
                    v
                }),
            ];
            runner
                .run(&bytes, |b| {
                    for place in [Place::Line(7), Place::Element { offset: 9, breaks: true }] {
                        match judge(&b, place) {
                            Verdict::Bad(bad) => prop_assert!(bad.reason.render().chars().count() <= 200),
                            Verdict::NotJson(e) => prop_assert!(!e.to_string().is_empty()),
                            Verdict::Good(_) => {}
                        }
                    }
                    Ok(())
                })
                .unwrap();
        }
    }

    #[test]
    fn keys_are_the_declared_ones() {
        assert_eq!(KEYS, ["prompt", "path1", "path2", "model1", "model2", "choice_dist", "confidence"]);
    }

    #[test]
    fn the_fast_way_takes_plain_records() {
        let r = fast(GOOD.as_bytes()).unwrap();
        assert_eq!(r[0], Val::Text(Cow::Borrowed("a \"cat\"")));
        assert_eq!(
            (&r[1], &r[3], &r[5], &r[6], &r[7]),
            (&Val::Text("a.jpg".into()), &Val::Text("".into()), &Val::Int(3), &Val::Int(1), &Val::Real(0.75))
        );
        let r =
            good(r#"{"prompt":"","path1":"a","path2":"b","choice_dist":[2.0,null],"model1":null,"x":[1,{"y":NaN}]}"#);
        assert_eq!((&r[5], &r[6]), (&Val::Int(2), &Val::Int(0)));
        // The last of a repeated key counts.
        assert_eq!(good(&with(r#""prompt": 5, "prompt": "q""#))[0], Val::Text("q".into()));
        assert_eq!(good(&with(r#""choice_dist": [9223372036854775807, -0.0]"#))[5], Val::Int(i64::MAX));
        assert_eq!(good(&with(r#""confidence": 100000000000000000000000000000"#))[7], Val::Real(1e29));
        assert_eq!(good(&with(r#""x": "\ud800", "y": 1e400, "z": Infinity"#))[0], Val::Text("p".into()));
    }

    #[test]
    fn reasons_as_before() {
        for (change, why) in [
            (r#""choice_dist": [1.5, 1]"#, "vote count 1.5 is not a whole number"),
            (r#""choice_dist": [-1, 1]"#, "vote count -1 is negative"),
            (r#""choice_dist": [-1.5, 1]"#, "vote count -1.5 is not a whole number"),
            (r#""choice_dist": [true, 1]"#, "vote count True is not a number"),
            (r#""choice_dist": ["3", 1]"#, "vote count '3' is not a number"),
            (r#""choice_dist": [NaN, 1]"#, "vote count nan is not a number"),
            (r#""choice_dist": [1e400, 1]"#, "vote count inf is not a number"),
            (
                r#""choice_dist": [1, 9223372036854775808]"#,
                "vote count 9223372036854775808 does not fit in a signed 64-bit integer",
            ),
            (r#""choice_dist": [1, 1e19]"#, "vote count 1e+19 does not fit in a signed 64-bit integer"),
            (r#""choice_dist": [1, 2, 3]"#, "choice_dist [1, 2, 3] is not a pair of vote counts"),
            (r#""choice_dist": {"a": 1}"#, "choice_dist {'a': 1} is not a pair of vote counts"),
            (r#""choice_dist": 5"#, "choice_dist 5 is not a pair of vote counts"),
            (r#""confidence": NaN"#, "confidence nan is not a finite number"),
            (r#""confidence": -Infinity"#, "confidence -inf is not a finite number"),
            (r#""confidence": "high""#, "confidence 'high' is not a finite number"),
            (r#""confidence": false"#, "confidence False is not a finite number"),
            (r#""model1": ["x"]"#, "field 'model1' is a list, not a string or null"),
            (r#""model2": 5"#, "field 'model2' is a int, not a string or null"),
            (r#""model1": {}"#, "field 'model1' is a dict, not a string or null"),
            (r#""model1": "\ud83d""#, "field 'model1' contains a lone surrogate (\\ud83d), not valid Unicode"),
            (r#""path1": """#, "field 'path1' is missing or not a string"),
            (r#""path2": null"#, "field 'path2' is missing or not a string"),
            (r#""prompt": "a\udc00""#, "field 'prompt' contains a lone surrogate (\\udc00), not valid Unicode"),
        ] {
            assert_eq!(reason(&with(change)), why, "{change}");
        }
        let big = format!("1{}", "0".repeat(400));
        assert_eq!(
            reason(&with(&format!(r#""choice_dist": [{big}, 1]"#))),
            "vote count 10000000000000000000… (401 digits) does not fit in a signed 64-bit integer"
        );
        assert_eq!(
            reason(&with(&format!(r#""confidence": {big}"#))),
            "confidence 10000000000000000000… (401 digits) is not a finite number"
        );
        assert_eq!(reason(r#"{"prompt": 5}"#), "field 'prompt' is missing or not a string");
        assert_eq!(reason("[1]"), "record is a list, not an object");
        assert_eq!(reason("null"), "record is a NoneType, not an object");
        assert_eq!(
            reason("{not json"),
            "line 3 is not valid JSON: Expecting property name enclosed in double quotes at byte 1 of the line"
        );
        assert_eq!(
            reason(&format!("{GOOD} {GOOD}")),
            format!("line 3 is not valid JSON: Extra data at byte {} of the line", GOOD.len() + 1)
        );
        let deep = with(&format!(r#""x": {}{}"#, "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH)));
        assert!(reason(&deep).starts_with("line 3 is not valid JSON: nested too deeply (more than 128 levels) at byte"));
        // At the limit, in an unknown field: good.
        let ok = with(&format!(r#""x": {}{}"#, "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1)));
        assert!(fast(ok.as_bytes()).is_some());
        // More brackets than the limit, in a string: the slow way, and good.
        let ok = with(&format!(r#""x": "{}""#, "[".repeat(MAX_DEPTH)));
        assert!(fast(ok.as_bytes()).is_none());
        good(&ok);
    }

    #[test]
    fn bad_records_keep_their_usable_paths() {
        let Verdict::Bad(b) = judge(with(r#""choice_dist": [1.5, 1]"#).as_bytes(), Place::Line(1)) else { panic!() };
        assert_eq!(b.paths, ["a.jpg".to_string(), "b.jpg".to_string()]);
        let Verdict::Bad(b) = judge(br#"{"path1": "\ud800", "path2": "b"}"#, Place::Line(1)) else { panic!() };
        assert_eq!(b.paths, [String::new(), "b".to_string()]);
    }

    #[test]
    fn invalid_utf8_is_named_as_python_names_it() {
        let cases: [(&[u8], &str); 5] = [
            (b"{\"p\xff\"}", "invalid start byte at byte 3"),
            (b"{\"\xed\xa0\x80\"}", "invalid continuation byte at byte 2"),
            (b"{\"\xc0\xaf\"}", "invalid start byte at byte 2"),
            (b"{\"\xe2\x82", "unexpected end of data at byte 2"),
            (b"{\"\xe2\x82A\"}", "invalid continuation byte at byte 2"),
        ];
        for (bytes, why) in cases {
            let Verdict::Bad(b) = judge(bytes, Place::Line(12)) else { panic!() };
            assert_eq!(b.reason.render(), format!("line 12 is not valid UTF-8: {why} of the line"));
            let Verdict::Bad(b) = judge(bytes, Place::Element { offset: 100, breaks: true }) else { panic!() };
            assert!(b.reason.render().starts_with("record is not valid UTF-8: "), "{:?}", b.reason);
        }
    }

    #[test]
    fn a_list_element_that_is_not_json_breaks_the_list() {
        let place = Place::Element { offset: 40, breaks: true };
        let Verdict::NotJson(e) = judge(b" {\"a\": 1} {\"b\": 2}", place) else { panic!() };
        assert_eq!(e.to_string(), "Extra data at byte 50 of the file");
        let Verdict::NotJson(e) = judge(b"", place) else { panic!() };
        assert_eq!(e.to_string(), "Expecting value at byte 40 of the file");
        // Too deep is the record's problem, not the list's; read again by offset, a bad record.
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(matches!(judge(deep.as_bytes(), place), Verdict::Bad(_)));
        let again = Place::Element { offset: 40, breaks: false };
        let Verdict::Bad(b) = judge(b"{,}", again) else { panic!() };
        assert_eq!(
            b.reason.render(),
            "record is not valid JSON: Expecting property name enclosed in double quotes at byte 41 of the file"
        );
    }
}
