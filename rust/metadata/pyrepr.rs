//! Values shown in reasons as Python shows them (`repr`), shortened: a
//! 400-digit vote or a huge list must not make a huge reason.
//!
//! `repr` of strings escapes the quote, backslashes, `\t`, `\n`, `\r`, other
//! control characters, lone surrogates, and the non-ASCII characters Python
//! does not print: C1 controls, format characters, separators, private use
//! and noncharacters (a fixed list; Python consults its Unicode database, so a
//! character unassigned in it may be escaped there and printed here).

use std::fmt::{self, Write};

use crate::metadata::json::{Int, Str, Value};
use crate::parts::npy::py_float_repr;

/// The longest reason kept (in characters): junk input must cost memory in proportion to its size.
pub const MAX_DETAIL: usize = 200;

/// `text` cut to [`MAX_DETAIL`] characters, ending in `…` when cut.
pub fn cap(text: String) -> String {
    match text.char_indices().nth(MAX_DETAIL) {
        None => text,
        Some(_) => {
            let end = text.char_indices().nth(MAX_DETAIL - 1).map_or(text.len(), |(i, _)| i);
            format!("{}…", &text[..end])
        }
    }
}

/// 2**128: an integer at least this large (in magnitude) is shown by its first digits.
const TWO_POW_128: &str = "340282366920938463463374607431768211456";

/// The value for a reason: `repr`, but an integer of more than 128 bits as its first 20
/// characters and its number of digits, and a list, object or string of more than 40 items
/// (characters) as the first 60 characters of its `repr` and `…`.
pub fn show(v: &Value<'_>) -> String {
    match v {
        Value::Int(Int::Big(digits)) => show_big(digits),
        Value::List(items) if items.len() > 40 => shortened(v),
        Value::Object(_) if distinct_keys(v) > 40 => shortened(v),
        Value::Str(s) if s.chars() > 40 => shortened(v),
        _ => repr(v),
    }
}

fn show_big(digits: &str) -> String {
    let magnitude = digits.trim_start_matches('-');
    let wide =
        magnitude.len() > TWO_POW_128.len() || (magnitude.len() == TWO_POW_128.len() && magnitude >= TWO_POW_128);
    if wide {
        format!("{}… ({} digits)", &digits[..20.min(digits.len())], digits.len())
    } else {
        digits.to_string()
    }
}

fn shortened(v: &Value<'_>) -> String {
    let mut out = Limited { s: String::new(), left: 60 };
    let _ = write_repr(&mut out, v); // stops with an error once 60 characters are written
    out.s.push('…');
    out.s
}

/// Python's `repr(v)`.
pub fn repr(v: &Value<'_>) -> String {
    let mut s = String::new();
    write_repr(&mut s, v).expect("writing to a String cannot fail");
    s
}

/// Writes at most `left` characters, then fails (ending a `repr` that would go on).
struct Limited {
    s: String,
    left: usize,
}

impl Write for Limited {
    fn write_str(&mut self, t: &str) -> fmt::Result {
        for c in t.chars() {
            if self.left == 0 {
                return Err(fmt::Error);
            }
            self.s.push(c);
            self.left -= 1;
        }
        Ok(())
    }
}

fn distinct_keys(v: &Value<'_>) -> usize {
    match v {
        Value::Object(pairs) => unique_pairs(pairs).len(),
        _ => 0,
    }
}

/// An object's pairs as a Python dict holds them: each key once, at its first place, with its
/// last value.
fn unique_pairs<'v, 'a>(pairs: &'v [(Str<'a>, Value<'a>)]) -> Vec<(&'v Str<'a>, &'v Value<'a>)> {
    let mut out: Vec<(&Str<'a>, &Value<'a>)> = Vec::new();
    if pairs.len() <= 16 {
        for (k, v) in pairs {
            match out.iter_mut().find(|(seen, _)| *seen == k) {
                Some(slot) => slot.1 = v,
                None => out.push((k, v)),
            }
        }
        return out;
    }
    let mut at: std::collections::HashMap<&Str<'a>, usize> = std::collections::HashMap::new();
    for (k, v) in pairs {
        match at.get(k) {
            Some(&i) => out[i].1 = v,
            None => {
                at.insert(k, out.len());
                out.push((k, v));
            }
        }
    }
    out
}

impl std::hash::Hash for Str<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for cp in self.code_points() {
            cp.hash(state);
        }
    }
}

fn write_repr(w: &mut impl Write, v: &Value<'_>) -> fmt::Result {
    match v {
        Value::Null => w.write_str("None"),
        Value::Bool(true) => w.write_str("True"),
        Value::Bool(false) => w.write_str("False"),
        Value::Int(Int::Small(i)) => write!(w, "{i}"),
        Value::Int(Int::Big(digits)) => w.write_str(digits),
        Value::Float(x) => w.write_str(&py_float_repr(*x)),
        Value::Str(s) => write_str_repr(w, s),
        Value::List(items) => {
            w.write_char('[')?;
            for (k, item) in items.iter().enumerate() {
                if k > 0 {
                    w.write_str(", ")?;
                }
                write_repr(w, item)?;
            }
            w.write_char(']')
        }
        Value::Object(pairs) => {
            w.write_char('{')?;
            for (k, (key, item)) in unique_pairs(pairs).into_iter().enumerate() {
                if k > 0 {
                    w.write_str(", ")?;
                }
                write_str_repr(w, key)?;
                w.write_str(": ")?;
                write_repr(w, item)?;
            }
            w.write_char('}')
        }
    }
}

/// Python's `repr` of a string.
pub fn str_repr(s: &Str<'_>) -> String {
    let mut out = String::new();
    write_str_repr(&mut out, s).expect("writing to a String cannot fail");
    out
}

fn write_str_repr(w: &mut impl Write, s: &Str<'_>) -> fmt::Result {
    let (mut single, mut double) = (false, false);
    for cp in s.code_points() {
        single |= cp == u32::from('\'');
        double |= cp == u32::from('"');
    }
    let quote = if single && !double { '"' } else { '\'' };
    w.write_char(quote)?;
    for cp in s.code_points() {
        match char::from_u32(cp) {
            Some(c) if c == quote || c == '\\' => {
                w.write_char('\\')?;
                w.write_char(c)?;
            }
            Some('\t') => w.write_str("\\t")?,
            Some('\n') => w.write_str("\\n")?,
            Some('\r') => w.write_str("\\r")?,
            Some(c) if printable(cp) => w.write_char(c)?,
            _ if cp <= 0xFF => write!(w, "\\x{cp:02x}")?,
            _ if cp <= 0xFFFF => write!(w, "\\u{cp:04x}")?,
            _ => write!(w, "\\U{cp:08x}")?,
        }
    }
    w.write_char(quote)
}

/// Whether Python prints the character as it is in a `repr` (see the module's note).
fn printable(cp: u32) -> bool {
    match cp {
        0x20..=0x7E => true,
        0..=0x1F | 0x7F..=0xA0 | 0xAD => false,
        0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x890..=0x891 | 0x8E2 | 0x1680 | 0x180E => false,
        0x2000..=0x200F | 0x2028..=0x202F | 0x205F..=0x2064 | 0x2066..=0x206F | 0x3000 => false,
        0xD800..=0xF8FF | 0xFDD0..=0xFDEF | 0xFEFF | 0xFFF9..=0xFFFB | 0xFFFE..=0xFFFF => false,
        0x110BD | 0x110CD | 0x13430..=0x1343F | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A => false,
        0xE0001 | 0xE0020..=0xE007F | 0xF0000.. => false,
        c => c & 0xFFFE != 0xFFFE, // the noncharacters at the end of each plane
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::json::parse;

    fn shown(json: &str) -> String {
        show(&parse(json).unwrap())
    }

    #[test]
    fn repr_as_python() {
        assert_eq!(shown("null"), "None");
        assert_eq!(
            shown("[true, false, 1, -0, 2.5, 1e19, NaN, -Infinity]"),
            "[True, False, 1, 0, 2.5, 1e+19, nan, -inf]"
        );
        assert_eq!(shown(r#"{"a": 1, "b": [], "a": {"c": "x"}}"#), "{'a': {'c': 'x'}, 'b': []}");
        assert_eq!(shown(r#""it's""#), r#""it's""#);
        assert_eq!(shown(r#""it's \"q\"""#), r#"'it\'s "q"'"#);
        assert_eq!(
            shown(r#""tab\tnl\nbs\\ bell\u0007 del\u007f nbsp\u00a0 é 中 😀 \u2028 \ud800""#),
            r#"'tab\tnl\nbs\\ bell\x07 del\x7f nbsp\xa0 é 中 😀 \u2028 \ud800'"#
        );
        assert_eq!(shown(r#""\uffff\udbff\udfff""#), r#"'\uffff\U0010ffff'"#);
    }

    #[test]
    fn long_values_are_shortened() {
        let big = format!("1{}", "0".repeat(400));
        assert_eq!(shown(&big), "10000000000000000000… (401 digits)");
        assert_eq!(shown(&format!("-{big}")), "-1000000000000000000… (402 digits)");
        assert_eq!(shown(TWO_POW_128), "34028236692093846346… (39 digits)");
        assert_eq!(shown("340282366920938463463374607431768211455"), "340282366920938463463374607431768211455");
        let list = format!("[{}]", vec!["1"; 41].join(", "));
        assert_eq!(shown(&list), format!("[{}…", vec!["1"; 30].join(", ").chars().take(59).collect::<String>()));
        assert_eq!(shown(&format!("[{}]", vec!["1"; 40].join(","))).len(), 2 + 40 + 39 * 2);
        assert_eq!(shown(&format!("\"{}\"", "x".repeat(41))), format!("'{}'…", "x".repeat(41)));
        assert_eq!(shown(&format!("\"{}\"", "x".repeat(70))), format!("'{}…", "x".repeat(59)));
        // 41 keys, one of them twice: 40 distinct, shown whole; 41 distinct, shortened.
        let keys = |n: usize, m: usize| (0..n).map(|i| format!("\"k{}\": 0", i % m)).collect::<Vec<_>>().join(", ");
        assert!(!shown(&format!("{{{}}}", keys(41, 40))).ends_with('…'));
        assert_eq!(shown(&format!("{{{}}}", keys(41, 41))).chars().count(), 61);
    }

    #[test]
    fn cap_keeps_200_characters() {
        assert_eq!(cap("é".repeat(200)), "é".repeat(200));
        assert_eq!(cap("é".repeat(201)), format!("{}…", "é".repeat(199)));
    }
}
