//! JSON values as the metadata's rules see them, and the parser the bad
//! entries go through.
//!
//! Where a metadata entry is not plainly good (see [`crate::metadata::judge`]),
//! it is parsed here into a [`Value`] tree that keeps what serde_json refuses
//! or loses, so that the rules can name the problem: integers of any length
//! (their digits), `NaN`, `Infinity` and `-Infinity`, lone surrogates in
//! strings, duplicate keys (all kept; lookups take the last), and a depth
//! limit that is an error of its own. The syntax accepted is JSON plus those
//! three literals, as Python's `json` module accepts it, and the syntax
//! errors are worded as that module words them, with the position as a byte
//! offset of the entry.

use std::borrow::Cow;
use std::fmt;

/// The deepest nesting of lists and objects an entry may have (the entry's own object is level 1).
pub const MAX_DEPTH: usize = 128;

/// A JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Int(Int<'a>),
    /// A number with a fraction or an exponent (Python's `float`), or `NaN`/`Infinity`/`-Infinity`.
    Float(f64),
    Str(Str<'a>),
    List(Vec<Value<'a>>),
    /// The key-value pairs in file order, duplicates included (a lookup takes the last).
    Object(Vec<(Str<'a>, Value<'a>)>),
}

/// An integer literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Int<'a> {
    Small(i128),
    /// Beyond `i128`: its digits as written (with `-` when negative).
    Big(&'a str),
}

/// A string value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Str<'a> {
    Text(Cow<'a, str>),
    /// A string with a lone surrogate escape (`"\ud800"`), which is no valid Unicode text: its
    /// code points, surrogates included.
    Wtf(Vec<u32>),
}

impl Str<'_> {
    /// The text, when it is valid Unicode.
    pub fn text(&self) -> Option<&str> {
        match self {
            Str::Text(t) => Some(t),
            Str::Wtf(_) => None,
        }
    }

    /// Its first lone surrogate, when it has one.
    pub fn surrogate(&self) -> Option<u32> {
        match self {
            Str::Text(_) => None,
            Str::Wtf(cps) => cps.iter().copied().find(|c| (0xD800..0xE000).contains(c)),
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Str::Text(t) => t.is_empty(),
            Str::Wtf(cps) => cps.is_empty(),
        }
    }

    /// Its length in code points (Python's `len`).
    pub fn chars(&self) -> usize {
        match self {
            Str::Text(t) => t.chars().count(),
            Str::Wtf(cps) => cps.len(),
        }
    }

    /// Its code points.
    pub fn code_points(&self) -> Box<dyn Iterator<Item = u32> + '_> {
        match self {
            Str::Text(t) => Box::new(t.chars().map(u32::from)),
            Str::Wtf(cps) => Box::new(cps.iter().copied()),
        }
    }
}

impl<'a> Value<'a> {
    /// The value of `key` in an object (the last one when the key is repeated, as in Python).
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        match self {
            Value::Object(pairs) => pairs.iter().rev().find(|(k, _)| k.text() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Python's name of the value's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "NoneType",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::List(_) => "list",
            Value::Object(_) => "dict",
        }
    }
}

/// Why an entry is not JSON, and where (a byte offset of the entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syntax {
    pub error: SyntaxError,
    pub at: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntaxError {
    ExpectingValue,
    ExpectingPropertyName,
    ExpectingColon,
    ExpectingComma,
    ExtraData,
    UnterminatedString,
    ControlCharacter,
    InvalidEscape,
    InvalidUnicodeEscape,
    TooDeep,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ExpectingValue => "Expecting value",
            Self::ExpectingPropertyName => "Expecting property name enclosed in double quotes",
            Self::ExpectingColon => "Expecting ':' delimiter",
            Self::ExpectingComma => "Expecting ',' delimiter",
            Self::ExtraData => "Extra data",
            Self::UnterminatedString => "Unterminated string starting",
            Self::ControlCharacter => "Invalid control character",
            Self::InvalidEscape => "Invalid \\escape",
            Self::InvalidUnicodeEscape => "Invalid \\uXXXX escape",
            Self::TooDeep => "nested too deeply",
        })?;
        if *self == Self::TooDeep {
            write!(f, " (more than {MAX_DEPTH} levels)")?;
        }
        Ok(())
    }
}

/// Parse one entry: a JSON value with nothing but whitespace around it.
pub fn parse(text: &str) -> Result<Value<'_>, Syntax> {
    let mut p = Parser { text, s: text.as_bytes(), i: 0, depth: 0 };
    p.ws();
    let v = p.value()?;
    p.ws();
    if p.i < p.s.len() {
        return Err(p.err(SyntaxError::ExtraData));
    }
    Ok(v)
}

struct Parser<'a> {
    text: &'a str,
    s: &'a [u8],
    i: usize,
    depth: usize,
}

fn hex4(b: &[u8]) -> Option<u32> {
    if b.len() < 4 {
        return None;
    }
    b[..4].iter().try_fold(0u32, |acc, &c| Some(acc * 16 + (c as char).to_digit(16)?))
}

impl<'a> Parser<'a> {
    fn err(&self, error: SyntaxError) -> Syntax {
        Syntax { error, at: self.i }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &str, v: Value<'a>) -> Result<Value<'a>, Syntax> {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(self.err(SyntaxError::ExpectingValue))
        }
    }

    fn value(&mut self) -> Result<Value<'a>, Syntax> {
        match self.peek() {
            Some(b'"') => Ok(Value::Str(self.string()?)),
            Some(b'{') => self.object(),
            Some(b'[') => self.list(),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'N') => self.literal("NaN", Value::Float(f64::NAN)),
            Some(b'I') => self.literal("Infinity", Value::Float(f64::INFINITY)),
            Some(b'-') if self.s[self.i..].starts_with(b"-Infinity") => {
                self.i += 9;
                Ok(Value::Float(f64::NEG_INFINITY))
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.err(SyntaxError::ExpectingValue)),
        }
    }

    /// A number as Python's `json` reads it: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?`, a
    /// fraction or exponent that does not follow the pattern left for what comes after.
    fn number(&mut self) -> Result<Value<'a>, Syntax> {
        let start = self.i;
        let digits = |s: &[u8], mut i: usize| {
            while i < s.len() && s[i].is_ascii_digit() {
                i += 1;
            }
            i
        };
        let mut i = start + usize::from(self.s[start] == b'-');
        match self.s.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => i = digits(self.s, i + 1),
            _ => return Err(self.err(SyntaxError::ExpectingValue)),
        }
        let mut is_float = false;
        if self.s.get(i) == Some(&b'.') && self.s.get(i + 1).is_some_and(u8::is_ascii_digit) {
            i = digits(self.s, i + 2);
            is_float = true;
        }
        if matches!(self.s.get(i), Some(b'e' | b'E')) {
            let mut j = i + 1;
            if matches!(self.s.get(j), Some(b'-' | b'+')) {
                j += 1;
            }
            let end = digits(self.s, j);
            if end > j {
                i = end;
                is_float = true;
            }
        }
        self.i = i;
        let text = &self.text[start..i];
        if is_float {
            // Rust's parse rounds correctly, as Python's float() does (overflow gives an infinity).
            return Ok(Value::Float(text.parse().unwrap_or(f64::NAN)));
        }
        Ok(Value::Int(text.parse::<i128>().map_or(Int::Big(text), Int::Small)))
    }

    fn string(&mut self) -> Result<Str<'a>, Syntax> {
        let open = self.i;
        self.i += 1;
        let start = self.i;
        // The common case: no escape, one borrowed slice.
        while let Some(&c) = self.s.get(self.i) {
            match c {
                b'"' => {
                    self.i += 1;
                    return Ok(Str::Text(Cow::Borrowed(&self.text[start..self.i - 1])));
                }
                b'\\' => break,
                c if c < 0x20 => return Err(self.err(SyntaxError::ControlCharacter)),
                _ => self.i += 1,
            }
        }
        let mut out = Decoded::Text(String::from(&self.text[start..self.i]));
        loop {
            let Some(&c) = self.s.get(self.i) else {
                return Err(Syntax { error: SyntaxError::UnterminatedString, at: open });
            };
            match c {
                b'"' => {
                    self.i += 1;
                    return Ok(out.finish());
                }
                c if c < 0x20 => return Err(self.err(SyntaxError::ControlCharacter)),
                b'\\' => {
                    let esc = self.i;
                    let Some(&e) = self.s.get(esc + 1) else {
                        return Err(Syntax { error: SyntaxError::UnterminatedString, at: open });
                    };
                    let simple = match e {
                        b'"' => Some('"'),
                        b'\\' => Some('\\'),
                        b'/' => Some('/'),
                        b'b' => Some('\u{8}'),
                        b'f' => Some('\u{c}'),
                        b'n' => Some('\n'),
                        b'r' => Some('\r'),
                        b't' => Some('\t'),
                        b'u' => None,
                        _ => return Err(self.err(SyntaxError::InvalidEscape)),
                    };
                    if let Some(ch) = simple {
                        out.push(u32::from(ch));
                        self.i += 2;
                        continue;
                    }
                    let bad = Syntax { error: SyntaxError::InvalidUnicodeEscape, at: esc };
                    let mut cp = hex4(&self.s[esc + 2..]).ok_or(bad)?;
                    self.i = esc + 6;
                    // A high surrogate and a low one escaped after it are one character.
                    if (0xD800..0xDC00).contains(&cp) && self.s[self.i..].starts_with(b"\\u") {
                        let low = hex4(&self.s[self.i + 2..]).ok_or(Syntax { at: self.i, ..bad })?;
                        if (0xDC00..0xE000).contains(&low) {
                            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                            self.i += 6;
                        }
                    }
                    out.push(cp);
                }
                _ => {
                    // A run of plain bytes (whole UTF-8 characters: the run stops only at ASCII).
                    let from = self.i;
                    while self.s.get(self.i).is_some_and(|&c| c != b'"' && c != b'\\' && c >= 0x20) {
                        self.i += 1;
                    }
                    out.push_str(&self.text[from..self.i]);
                }
            }
        }
    }

    fn enter(&mut self) -> Result<(), Syntax> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(SyntaxError::TooDeep));
        }
        self.i += 1;
        Ok(())
    }

    /// The items of a list or object opened here, each read by `item`, up to the `close` bracket
    /// (Python's order of checks: the item, then a comma or the end).
    fn items(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> Result<(), Syntax>) -> Result<(), Syntax> {
        self.enter()?;
        self.ws();
        if self.peek() != Some(close) {
            loop {
                item(self)?;
                self.ws();
                match self.peek() {
                    Some(c) if c == close => break,
                    Some(b',') => {
                        self.i += 1;
                        self.ws();
                    }
                    _ => return Err(self.err(SyntaxError::ExpectingComma)),
                }
            }
        }
        self.i += 1;
        self.depth -= 1;
        Ok(())
    }

    fn object(&mut self) -> Result<Value<'a>, Syntax> {
        let mut pairs = Vec::new();
        self.items(b'}', |p| {
            if p.peek() != Some(b'"') {
                return Err(p.err(SyntaxError::ExpectingPropertyName));
            }
            let key = p.string()?;
            p.ws();
            if p.peek() != Some(b':') {
                return Err(p.err(SyntaxError::ExpectingColon));
            }
            p.i += 1;
            p.ws();
            pairs.push((key, p.value()?));
            Ok(())
        })?;
        Ok(Value::Object(pairs))
    }

    fn list(&mut self) -> Result<Value<'a>, Syntax> {
        let mut items = Vec::new();
        self.items(b']', |p| {
            items.push(p.value()?);
            Ok(())
        })?;
        Ok(Value::List(items))
    }
}

/// A string being decoded: text until a lone surrogate turns it into code points.
enum Decoded {
    Text(String),
    Wtf(Vec<u32>),
}

impl Decoded {
    fn push(&mut self, cp: u32) {
        match (self, char::from_u32(cp)) {
            (Decoded::Text(s), Some(c)) => s.push(c),
            (Decoded::Wtf(v), _) => v.push(cp),
            (me @ Decoded::Text(_), None) => {
                let Decoded::Text(s) = std::mem::replace(me, Decoded::Wtf(Vec::new())) else { unreachable!() };
                let mut v: Vec<u32> = s.chars().map(u32::from).collect();
                v.push(cp);
                *me = Decoded::Wtf(v);
            }
        }
    }

    fn push_str(&mut self, t: &str) {
        match self {
            Decoded::Text(s) => s.push_str(t),
            Decoded::Wtf(v) => v.extend(t.chars().map(u32::from)),
        }
    }

    fn finish<'a>(self) -> Str<'a> {
        match self {
            Decoded::Text(s) => Str::Text(Cow::Owned(s)),
            Decoded::Wtf(v) => Str::Wtf(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> (String, usize) {
        let e = parse(text).unwrap_err();
        (e.error.to_string(), e.at)
    }

    fn text(s: &str) -> Value<'_> {
        Value::Str(Str::Text(Cow::Borrowed(s)))
    }

    #[test]
    fn values_as_python_reads_them() {
        assert_eq!(parse(" null ").unwrap(), Value::Null);
        assert_eq!(parse("[true, false, -0, 1.5e3, 2E-1]").unwrap(), {
            Value::List(vec![
                Value::Bool(true),
                Value::Bool(false),
                Value::Int(Int::Small(0)),
                Value::Float(1500.0),
                Value::Float(0.2),
            ])
        });
        let big = "1".repeat(50);
        assert_eq!(parse(&big).unwrap(), Value::Int(Int::Big(&big)));
        assert_eq!(parse("170141183460469231731687303715884105727").unwrap(), Value::Int(Int::Small(i128::MAX)));
        assert_eq!(parse("1e400").unwrap(), Value::Float(f64::INFINITY));
        assert_eq!(parse("-Infinity").unwrap(), Value::Float(f64::NEG_INFINITY));
        assert!(matches!(parse("NaN").unwrap(), Value::Float(x) if x.is_nan()));
        let o = parse(r#"{"a": 1, "a": "x\"y", "b": "\u00e9\ud83d\ude00"}"#).unwrap();
        assert_eq!(o.get("a"), Some(&Value::Str(Str::Text(Cow::Owned("x\"y".into())))));
        assert_eq!(o.get("b"), Some(&Value::Str(Str::Text(Cow::Owned("é😀".into())))));
        assert_eq!(o.get("c"), None);
        assert_eq!(parse(r#""plain""#).unwrap(), text("plain"));
        let Value::Str(s) = parse(r#""a\ud800b\udc00""#).unwrap() else { panic!() };
        assert_eq!((s.surrogate(), s.chars(), s.text()), (Some(0xD800), 4, None));
        let Value::Str(s) = parse(r#""é\ud83dé""#).unwrap() else { panic!() };
        assert_eq!(s.code_points().collect::<Vec<_>>(), vec![0xE9, 0xD83D, 0xE9]);
    }

    #[test]
    fn syntax_errors_are_worded_as_python_words_them() {
        assert_eq!(err(""), ("Expecting value".into(), 0));
        assert_eq!(err("  "), ("Expecting value".into(), 2));
        assert_eq!(err("{not json"), ("Expecting property name enclosed in double quotes".into(), 1));
        assert_eq!(err(r#"{"a": 1} {"b": 2}"#), ("Extra data".into(), 9));
        assert_eq!(err(r#"{"a" 1}"#), ("Expecting ':' delimiter".into(), 5));
        assert_eq!(err(r#"{"a": 1 "b"}"#), ("Expecting ',' delimiter".into(), 8));
        assert_eq!(err(r#"{"a": 1,}"#), ("Expecting property name enclosed in double quotes".into(), 8));
        assert_eq!(err("[1,]"), ("Expecting value".into(), 3));
        assert_eq!(err("[1 2]"), ("Expecting ',' delimiter".into(), 3));
        assert_eq!(err("01"), ("Extra data".into(), 1));
        assert_eq!(err("1."), ("Extra data".into(), 1));
        assert_eq!(err("1e+"), ("Extra data".into(), 1));
        assert_eq!(err("-"), ("Expecting value".into(), 0));
        assert_eq!(err("nul"), ("Expecting value".into(), 0));
        assert_eq!(err("+1"), ("Expecting value".into(), 0));
        assert_eq!(err("\"a\nb\""), ("Invalid control character".into(), 2));
        assert_eq!(err(r#""ab"#), ("Unterminated string starting".into(), 0));
        assert_eq!(err(r#"["a\"#), ("Unterminated string starting".into(), 1));
        assert_eq!(err(r#""\x""#), ("Invalid \\escape".into(), 1));
        assert_eq!(err(r#""\u12g4""#), ("Invalid \\uXXXX escape".into(), 1));
        assert_eq!(err(r#""\ud800\u12g4""#), ("Invalid \\uXXXX escape".into(), 7));
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(err(&deep), (format!("nested too deeply (more than {MAX_DEPTH} levels)"), MAX_DEPTH));
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&ok).is_ok());
    }
}
