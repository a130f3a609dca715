//! The fast path of `hpd_encode.metadata`: HPDv3 metadata (a JSON list or
//! JSON Lines) cut into entries and parsed into columns, a window of the file
//! at a time, the entries of a window in parallel.
//!
//! Only records that are plainly good are taken here (an object with string
//! `prompt`, non-empty string `path1`/`path2`, string-or-null models, a
//! `choice_dist` of two whole vote counts below 2**53 or null, a finite
//! `confidence` or null, no duplicate keys). Every other entry is handed back
//! by position for the Python per-entry path (`json.loads` + `_parse`), the
//! authority on what is good and on the reasons: so the good records and the
//! reasons are exactly what the per-entry path alone would give.
//!
//! Where the entries are:
//! - JSON Lines: one entry per line; lines that are blank as Python's
//!   `bytes.strip()` sees it are skipped (and not counted).
//! - A JSON list: the elements between the opening bracket, the commas at
//!   depth 1 and the closing bracket, found by one pass over the structure
//!   (strings, escapes, depth). A quote preceded by an odd run of backslashes
//!   is never a string delimiter, inside or outside a string.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use rayon::prelude::*;
use serde::Deserialize;

use crate::metadata::structure::{ChunkScan, Mark, StructScan};
use crate::pool::pool;

/// Bytes of the file read at a time (plus the unfinished entry carried over): the
/// window every caller uses unless a test asks for another.
pub const DEFAULT_WINDOW: usize = 8 << 20;

/// Largest vote count taken here (an integer parsed as float64 is exact below it).
const EXACT_FLOAT_INT: f64 = 9_007_199_254_740_992.0; // 2**53

/// Where the entries start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A JSON list whose opening bracket is at this file offset.
    List(u64),
    /// JSON Lines from this file offset (after a byte-order mark).
    Lines(u64),
}

/// Which entries a read parses (the others it only counts, or does not reach).
#[derive(Debug, Clone, Default)]
pub enum Part {
    /// All of them.
    #[default]
    All,
    /// Those numbered `k` modulo `n`: `Modulo(k, n)`.
    Modulo(u64, u64),
    /// One rank's byte range: the entries that start before `until` (in a list: those whose
    /// separator, the opening bracket or a comma, is before it), the read starting at the
    /// layout's offset in the state `scan` (a list; found by [`crate::metadata::structure::ChunkScan`]
    /// summaries of the ranges before). Entries and lines are numbered from 0 and 1 in the range.
    Bytes { until: u64, scan: StructScan },
}

/// A column of strings, Arrow style: value `i` is `data[offsets[i]..offsets[i + 1]]`.
#[derive(Debug, Default)]
pub struct StrColumn {
    pub offsets: Vec<i64>,
    pub data: Vec<u8>,
}

impl StrColumn {
    pub fn new() -> Self {
        StrColumn { offsets: vec![0], data: Vec::new() }
    }

    fn push(&mut self, s: &str) {
        self.push_bytes(s.as_bytes());
    }

    pub fn push_bytes(&mut self, s: &[u8]) {
        self.data.extend_from_slice(s);
        self.offsets.push(self.data.len() as i64);
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> &[u8] {
        &self.data[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// The Arrow string-view layout of the column: 16 bytes per value (its
    /// length, then the value itself when at most 12 bytes, else its first 4
    /// bytes, buffer 0 and its offset there), and the data. `None` when the
    /// data is over the 4 GiB a view can address.
    pub fn views(&self) -> Option<Vec<u8>> {
        if self.data.len() > u32::MAX as usize {
            return None;
        }
        let mut views = vec![0u8; 16 * self.len()];
        for (i, v) in views.chunks_exact_mut(16).enumerate() {
            let (a, b) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
            let s = &self.data[a..b];
            v[..4].copy_from_slice(&(s.len() as u32).to_le_bytes());
            if s.len() <= 12 {
                v[4..4 + s.len()].copy_from_slice(s);
            } else {
                v[4..8].copy_from_slice(&s[..4]);
                v[12..16].copy_from_slice(&(a as u32).to_le_bytes());
            }
        }
        Some(views)
    }
}

/// The plainly good records as columns (file order), and where the others are.
#[derive(Debug)]
pub struct MetaColumns {
    pub record_index: Vec<i64>,
    pub prompt: StrColumn,
    pub path1: StrColumn,
    pub path2: StrColumn,
    pub model1: StrColumn,
    pub model2: StrColumn,
    pub votes_chosen: Vec<i64>,
    pub votes_rejected: Vec<i64>,
    pub confidence: Vec<f64>,
    /// Where each good record's entry is in the file (offset, length): to read it again.
    pub entry_offset: Vec<i64>,
    pub entry_len: Vec<i64>,
    /// Entries for the per-entry path: entry number, file offset, length, and
    /// line number (JSON Lines; 0 for a list element).
    pub slow_index: Vec<i64>,
    pub slow_offset: Vec<i64>,
    pub slow_len: Vec<i64>,
    pub slow_line: Vec<i64>,
    /// Entries considered (good or not; blank lines do not count).
    pub n_entries: i64,
    /// A list: the offset of its closing bracket, or -1 when it was not
    /// reached (not closed, or `limit` elements were found first).
    pub list_end: i64,
    /// A list: `limit` elements were delimited before its end.
    pub limit_reached: bool,
    /// JSON Lines: the lines read (blank ones too).
    pub n_lines: i64,
    /// `(k, n)`: only entries whose number is `k` modulo `n` are parsed (the others are counted).
    part: Option<(i64, i64)>,
    /// Keep the prompts and models (else they are checked but stored empty: a caller that reads
    /// them again later, for the few rows it needs, saves most of the table's bytes).
    keep_text: bool,
}

impl MetaColumns {
    fn new(part: Option<(i64, i64)>) -> Self {
        MetaColumns {
            part,
            keep_text: true,
            entry_offset: Vec::new(),
            entry_len: Vec::new(),
            record_index: Vec::new(),
            prompt: StrColumn::new(),
            path1: StrColumn::new(),
            path2: StrColumn::new(),
            model1: StrColumn::new(),
            model2: StrColumn::new(),
            votes_chosen: Vec::new(),
            votes_rejected: Vec::new(),
            confidence: Vec::new(),
            slow_index: Vec::new(),
            slow_offset: Vec::new(),
            slow_len: Vec::new(),
            slow_line: Vec::new(),
            n_entries: 0,
            list_end: -1,
            limit_reached: false,
            n_lines: 0,
        }
    }

    fn push_good(&mut self, index: i64, e: &Entry, g: &Good<'_>) {
        self.record_index.push(index);
        self.entry_offset.push(e.start as i64);
        self.entry_len.push((e.end - e.start) as i64);
        fn text(keep: bool, s: &str) -> &str {
            if keep {
                s
            } else {
                ""
            }
        }
        let keep = self.keep_text;
        self.prompt.push(text(keep, &g.prompt));
        self.path1.push(&g.path1);
        self.path2.push(&g.path2);
        self.model1.push(text(keep, g.model1.as_deref().unwrap_or("")));
        self.model2.push(text(keep, g.model2.as_deref().unwrap_or("")));
        self.votes_chosen.push(g.votes.0);
        self.votes_rejected.push(g.votes.1);
        self.confidence.push(g.confidence);
    }

    fn push_slow(&mut self, index: i64, e: &Entry) {
        self.slow_index.push(index);
        self.slow_offset.push(e.start as i64);
        self.slow_len.push((e.end - e.start) as i64);
        self.slow_line.push(e.line as i64);
    }
}

/// One entry: bytes `[start, end)` of the file; its line (JSON Lines) or 0.
#[derive(Debug, Clone, Copy)]
struct Entry {
    start: u64,
    end: u64,
    line: u64,
}

/// A record as serde reads it; `None` where absent or null.
#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    prompt: Option<Cow<'a, str>>,
    #[serde(borrow)]
    path1: Option<Cow<'a, str>>,
    #[serde(borrow)]
    path2: Option<Cow<'a, str>>,
    #[serde(borrow)]
    model1: Option<Cow<'a, str>>,
    #[serde(borrow)]
    model2: Option<Cow<'a, str>>,
    choice_dist: Option<Vec<Option<serde_json::Number>>>,
    confidence: Option<f64>,
}

/// A plainly good record.
struct Good<'a> {
    prompt: Cow<'a, str>,
    path1: Cow<'a, str>,
    path2: Cow<'a, str>,
    model1: Option<Cow<'a, str>>,
    model2: Option<Cow<'a, str>>,
    votes: (i64, i64),
    confidence: f64,
}

fn is_json_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// What Python's `bytes.strip()` removes (a JSON Lines line of only these is blank).
fn is_py_space(b: u8) -> bool {
    matches!(b, 9..=13 | 28..=32)
}

fn vote(v: &Option<serde_json::Number>) -> Option<i64> {
    let Some(n) = v else { return Some(0) };
    if let Some(u) = n.as_u64() {
        return i64::try_from(u).ok();
    }
    if n.is_f64() {
        let f = n.as_f64()?;
        if (0.0..EXACT_FLOAT_INT).contains(&f) && f.fract() == 0.0 {
            return Some(f as i64);
        }
    }
    None
}

/// The record, when it is plainly good; `None` sends it to the per-entry path.
fn fast(bytes: &[u8]) -> Option<Good<'_>> {
    // serde would also read a JSON array into the struct, by position: objects only.
    if bytes.iter().find(|&&b| !is_json_ws(b)) != Some(&b'{') {
        return None;
    }
    // All of it: serde_json does not check the strings it skips (unknown fields).
    let text = std::str::from_utf8(bytes).ok()?;
    let raw: Raw<'_> = serde_json::from_str(text).ok()?;
    let (prompt, path1, path2) = (raw.prompt?, raw.path1?, raw.path2?);
    if path1.is_empty() || path2.is_empty() {
        return None;
    }
    let votes = match &raw.choice_dist {
        None => (0, 0),
        Some(d) if d.len() == 2 => (vote(&d[0])?, vote(&d[1])?),
        Some(_) => return None,
    };
    let confidence = raw.confidence.unwrap_or(0.0);
    if !confidence.is_finite() {
        return None;
    }
    Some(Good { prompt, path1, path2, model1: raw.model1, model2: raw.model2, votes, confidence })
}

/// The file read forward a window at a time; `buf` holds bytes from file offset `base`.
struct Windows {
    file: File,
    size: u64,
    base: u64,
    buf: Vec<u8>,
    /// File offset up to which bytes have been read into `buf`.
    read_to: u64,
    window: usize,
}

impl Windows {
    fn open(path: &Path, start: u64, window: usize) -> io::Result<Self> {
        let mut file = File::open(path)?;
        let size = file.metadata()?.len();
        file.seek(SeekFrom::Start(start))?;
        Ok(Windows { file, size, base: start, buf: Vec::new(), read_to: start, window: window.max(1) })
    }

    /// Read the next window after what `buf` holds; false at the end of the file.
    fn more(&mut self) -> io::Result<bool> {
        if self.read_to >= self.size {
            return Ok(false);
        }
        let want = (self.window as u64).min(self.size - self.read_to) as usize;
        // Into the buffer's spare capacity, which read_to_end fills without zeroing it first
        // (zeroing each window was half a GB of memset for HPDv3's 495 MB list, in every rank).
        self.buf.reserve(want);
        let got = (&mut self.file).take(want as u64).read_to_end(&mut self.buf)?;
        self.read_to += got as u64;
        if got == 0 {
            self.size = self.read_to; // the file shrank while being read
        }
        Ok(got > 0)
    }

    /// Forget the bytes before file offset `keep_from`.
    fn drop_before(&mut self, keep_from: u64) {
        let k = (keep_from - self.base) as usize;
        self.buf.drain(..k);
        self.base = keep_from;
    }

    fn bytes(&self, e: &Entry) -> &[u8] {
        &self.buf[(e.start - self.base) as usize..(e.end - self.base) as usize]
    }
}

/// Told after each window: the columns so far, and the number of good records
/// (rows) there were before that window (the rows from there on are new).
pub type OnWindow<'a> = &'a mut dyn FnMut(&MetaColumns, usize);

/// [`take`], then tell `on_window` about the new rows.
fn take_and_tell(out: &mut MetaColumns, w: &Windows, entries: &[Entry], on_window: &mut OnWindow<'_>) {
    let before = out.record_index.len();
    take(out, w, entries);
    on_window(out, before);
}

/// Parse `entries` (all inside `w.buf`; those of this part) in parallel and add them to `out`.
fn take(out: &mut MetaColumns, w: &Windows, entries: &[Entry]) {
    let (first, part) = (out.n_entries, out.part);
    let mine = |k: usize| part.map_or(true, |(r, n)| (first + k as i64) % n == r);
    // Only this part's entries are parsed (and only their results held: a rank of 8 would
    // otherwise write a `None` the size of a parsed record for each of the others).
    let picked: Vec<usize> = (0..entries.len()).filter(|&k| mine(k)).collect();
    let parsed: Vec<Option<Good<'_>>> = picked.par_iter().map(|&k| fast(w.bytes(&entries[k]))).collect();
    for (&k, g) in picked.iter().zip(parsed) {
        let index = first + k as i64;
        match g {
            Some(g) => out.push_good(index, &entries[k], &g),
            None => out.push_slow(index, &entries[k]),
        }
    }
    out.n_entries += entries.len() as i64;
}

/// Read the metadata at `path` laid out as `layout` into columns; at most
/// `limit` entries. The entries of a window are parsed on the shared pool.
pub fn read_columns(
    path: &Path,
    layout: Layout,
    limit: Option<u64>,
    window: usize,
    num_threads: Option<usize>,
) -> io::Result<MetaColumns> {
    read_part(path, layout, limit, window, num_threads, Part::All, true)
}

/// [`read_columns`], parsing only the entries of `part` (one rank's share); without `keep_text`
/// the prompts and models are checked but stored as empty strings.
pub fn read_part(
    path: &Path,
    layout: Layout,
    limit: Option<u64>,
    window: usize,
    num_threads: Option<usize>,
    part: Part,
    keep_text: bool,
) -> io::Result<MetaColumns> {
    pool(num_threads).install(|| read_in_pool(path, layout, limit, window, part, keep_text, &mut |_, _| {}))
}

/// [`read_part`] on the pool this runs on, telling `on_window` after each window; without
/// `keep_text` the prompts and models are checked but stored as empty strings.
pub fn read_in_pool(
    path: &Path,
    layout: Layout,
    limit: Option<u64>,
    window: usize,
    part: Part,
    keep_text: bool,
    mut on_window: OnWindow<'_>,
) -> io::Result<MetaColumns> {
    let (modulo, until, scan) = match part {
        Part::All => (None, None, None),
        Part::Modulo(k, n) if n == 0 || k >= n => {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("part {k} of {n} does not exist")));
        }
        Part::Modulo(k, n) => (Some((k as i64, n as i64)), None, None),
        Part::Bytes { until, scan } => (None, Some(until), Some(scan)),
    };
    let mut out = MetaColumns::new(modulo);
    out.keep_text = keep_text;
    match layout {
        Layout::Lines(start) => read_lines(out, path, start, until, limit, window, &mut on_window),
        Layout::List(open) => read_list(out, path, open, scan, until, limit, window, &mut on_window),
    }
}

/// The entries at `offsets`/`lengths` of the file (good records found by an
/// earlier read, numbered `indices`), parsed again: what a rank does for the
/// rows it was given, without reading the rest of the file.
pub fn read_entries(
    path: &Path,
    indices: &[i64],
    offsets: &[i64],
    lengths: &[i64],
    num_threads: Option<usize>,
) -> io::Result<MetaColumns> {
    use std::os::unix::fs::FileExt;
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, "indices, offsets and lengths differ in length");
    if indices.len() != offsets.len() || offsets.len() != lengths.len() {
        return Err(bad());
    }
    let file = File::open(path)?;
    let total: i64 = lengths.iter().map(|&l| l.max(0)).sum();
    let mut w = Windows { file, size: 0, base: 0, buf: Vec::with_capacity(total as usize), read_to: 0, window: 1 };
    let mut entries = Vec::with_capacity(indices.len());
    for (&off, &len) in offsets.iter().zip(lengths) {
        if off < 0 || len < 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "negative offset or length"));
        }
        let at = w.buf.len();
        w.buf.resize(at + len as usize, 0);
        w.file.read_exact_at(&mut w.buf[at..], off as u64)?;
        entries.push(Entry { start: at as u64, end: (at + len as usize) as u64, line: 0 });
    }
    let mut out = MetaColumns::new(None);
    pool(num_threads).install(|| take(&mut out, &w, &entries));
    // Number them as asked (they were numbered by position), pointing back into the file.
    for (k, off) in out.record_index.iter_mut().zip(out.entry_offset.iter_mut()) {
        *off = offsets[*k as usize];
        *k = indices[*k as usize];
    }
    for (k, off) in out.slow_index.iter_mut().zip(out.slow_offset.iter_mut()) {
        *off = offsets[*k as usize];
        *k = indices[*k as usize];
    }
    Ok(out)
}

/// The lines of a JSON Lines file from `start` (a line's start); with `until`, only the lines that
/// start before it.
fn read_lines(
    mut out: MetaColumns,
    path: &Path,
    start: u64,
    until: Option<u64>,
    limit: Option<u64>,
    window: usize,
    on_window: &mut OnWindow<'_>,
) -> io::Result<MetaColumns> {
    let mut w = Windows::open(path, start, window)?;
    let mut line = 1u64;
    let mut entries = Vec::new();
    let limit = limit.unwrap_or(u64::MAX);
    let until = until.unwrap_or(u64::MAX);
    let mut past = start >= until;
    while !past && (out.n_entries as u64) < limit && w.more()? {
        let at_end = w.read_to >= w.size;
        // Whole lines only (the last one may lack its newline at the end of the file).
        let upto = if at_end {
            w.buf.len()
        } else {
            match memchr::memrchr(b'\n', &w.buf) {
                Some(k) => k + 1,
                None => continue, // a line longer than the window: read more
            }
        };
        entries.clear();
        let mut pos = 0;
        let budget = limit - out.n_entries as u64;
        while pos < upto && (entries.len() as u64) < budget {
            if w.base + pos as u64 >= until {
                past = true;
                break;
            }
            let end = memchr::memchr(b'\n', &w.buf[pos..upto]).map_or(upto, |k| pos + k);
            let text = &w.buf[pos..end];
            if !text.iter().all(|&b| is_py_space(b)) {
                entries.push(Entry { start: w.base + pos as u64, end: w.base + end as u64, line });
            }
            line += 1;
            pos = end + 1;
        }
        take_and_tell(&mut out, &w, &entries, on_window);
        w.drop_before(w.base + upto as u64);
    }
    out.n_lines = line as i64 - 1;
    Ok(out)
}

/// The elements of a JSON list whose opening bracket is at `open`; or, with `from`, those of a
/// byte range of it: the scan starts at `open` in the state `from`, and only the elements whose
/// separator is before `until` are taken.
#[allow(clippy::too_many_arguments)]
fn read_list(
    mut out: MetaColumns,
    path: &Path,
    open: u64,
    from: Option<StructScan>,
    until: Option<u64>,
    limit: Option<u64>,
    window: usize,
    on_window: &mut OnWindow<'_>,
) -> io::Result<MetaColumns> {
    if limit == Some(0) {
        return Ok(out);
    }
    let mut w = Windows::open(path, open, window)?;
    // Only a read from the opening bracket can see `[]`, a list of no elements (below).
    let whole = from.is_none() || from == Some(StructScan::default());
    let mut scan = from.unwrap_or_default();
    let until = until.unwrap_or(u64::MAX);
    let max_seps = limit.map(|l| l + 1);
    let mut n_seps = 0u64;
    let mut last_sep: Option<u64> = None;
    let mut pending: Vec<Entry> = Vec::new(); // delimited, not yet parsed
    let mut scanned = 0usize; // of w.buf
    let mut done = false;
    while !done && w.more()? {
        let offset = w.base + scanned as u64;
        let mut on_sep = |p: usize| -> u64 {
            let at = offset + p as u64;
            if let Some(prev) = last_sep {
                pending.push(Entry { start: prev + 1, end: at, line: 0 });
            }
            last_sep = Some(at);
            n_seps += 1;
            n_seps
        };
        scanned += scan.scan(&w.buf[scanned..], |m| match m {
            // A separator at `until` or after ends the range's last element.
            Mark::Separator(p) if offset + p as u64 >= until => {
                on_sep(p);
                done = true;
                false
            }
            Mark::Separator(p) => {
                if max_seps == Some(on_sep(p)) {
                    out.limit_reached = true;
                    done = true;
                    return false;
                }
                true
            }
            Mark::Close(p) => {
                on_sep(p);
                if offset + (p as u64) < until {
                    // (in the range: the range before also meets it, ending its last element there)
                    out.list_end = (offset + p as u64) as i64;
                }
                done = true;
                false
            }
        });
        // `[]` (or `[ ]`) is a list of no elements: a lone first element waits
        // until the list is known to go on.
        if n_seps > 2 {
            take_and_tell(&mut out, &w, &pending, on_window);
            pending.clear();
        }
        let keep = pending.first().map(|e| e.start - 1).or(last_sep).unwrap_or(w.base).max(w.base);
        scanned -= (keep - w.base) as usize;
        w.drop_before(keep);
    }
    if let [only] = pending[..] {
        if whole && n_seps == 2 && w.bytes(&only).iter().all(|&b| is_json_ws(b)) {
            return Ok(out);
        }
    }
    take_and_tell(&mut out, &w, &pending, on_window);
    Ok(out)
}

/// The [`ChunkScan`] summary of bytes `[from, to)` of the file (fewer when it is shorter).
pub fn summarize_range(path: &Path, from: u64, to: u64, window: usize) -> io::Result<ChunkScan> {
    let mut w = Windows::open(path, from, window)?;
    w.size = w.size.min(to);
    let mut summary = ChunkScan::default();
    while w.more()? {
        summary.feed(&w.buf);
        let end = w.base + w.buf.len() as u64;
        w.drop_before(end);
    }
    Ok(summary)
}

/// The offset of the bracket that closes the value opened at `start`, or
/// `None` when the file ends first.
pub fn value_end(path: &Path, start: u64, window: usize) -> io::Result<Option<u64>> {
    let mut w = Windows::open(path, start, window)?;
    let mut scan = StructScan::default();
    let mut end = None;
    while end.is_none() && w.more()? {
        let base = w.base;
        scan.scan(&w.buf, |m| {
            if let Mark::Close(p) = m {
                end = Some(base + p as u64);
            }
            true
        });
        let len = w.buf.len() as u64;
        w.drop_before(base + len);
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(name: &str, text: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("hpd-meta-{}-{name}", std::process::id()));
        std::fs::File::create(&p).unwrap().write_all(text).unwrap();
        p
    }

    const GOOD: &str =
        r#"{"prompt": "a \"cat\"", "path1": "a.jpg", "path2": "b.jpg", "choice_dist": [3, 1], "confidence": 0.75}"#;

    #[test]
    fn fast_path_takes_plain_records_and_leaves_the_rest() {
        let g = fast(GOOD.as_bytes()).unwrap();
        assert_eq!((&*g.prompt, &*g.path1, g.votes, g.confidence), ("a \"cat\"", "a.jpg", (3, 1), 0.75));
        for bad in [
            r#"["p", "a", "b"]"#,
            r#"{"prompt": "p", "path1": "", "path2": "b"}"#,
            r#"{"prompt": "p", "path1": "a", "path2": "b", "choice_dist": [true, 1]}"#,
            r#"{"prompt": "p", "path1": "a", "path2": "b", "choice_dist": [2.5, 1]}"#,
            r#"{"prompt": "p", "path1": "a", "path2": "b", "choice_dist": [-1, 1]}"#,
            r#"{"prompt": "p", "path1": "a", "path2": "b", "choice_dist": [1]}"#,
            r#"{"prompt": "p", "path1": "a", "path2": "b", "confidence": 1e400}"#,
            r#"{"prompt": "p", "path1": "a", "path2": "b", "confidence": NaN}"#,
            r#"{"prompt": "p", "path1": "a", "path2": "b", "prompt": "q"}"#,
            r#"{"prompt": "\ud800", "path1": "a", "path2": "b"}"#,
            r#"{"prompt": null, "path1": "a", "path2": "b"}"#,
            r#"{"prompt": "p", "path1": "a", "path2": "b", "model1": 3}"#,
            r#"{"prompt": "p", "path1": "a", "path2": "b"} {"prompt": "p"}"#,
            r#"null"#,
        ] {
            assert!(fast(bad.as_bytes()).is_none(), "{bad}");
        }
        // Invalid UTF-8 in a field the record does not use still sends it to the per-entry path.
        assert!(fast(b"{\"prompt\": \"p\", \"path1\": \"a\", \"path2\": \"b\", \"x\": \"\xed\xa0\x80\"}").is_none());
        let g = fast(br#"{"prompt": "", "path1": "a", "path2": "b", "model1": null, "x": [1, {"y": 2}]}"#).unwrap();
        assert_eq!((g.votes, g.confidence, g.model1.is_none()), ((0, 0), 0.0, true));
        assert_eq!(fast(br#"{"prompt":"","path1":"a","path2":"b","choice_dist":[2.0,null]}"#).unwrap().votes, (2, 0));
    }

    #[test]
    fn lists_and_lines_give_the_same_columns_whatever_the_window() {
        let recs: Vec<String> = (0..50)
            .map(|i| GOOD.replace("a.jpg", &format!("img/{i}, [x].jpg")).replace("cat", &format!("c{i}")))
            .collect();
        let list = file("l.json", format!("[{}]", recs.join(",\n ")).as_bytes());
        let lines = file("l.jsonl", format!("{}\n\n  \n", recs.join("\n")).as_bytes());
        for window in [7, 64, 1000, DEFAULT_WINDOW] {
            let a = read_columns(&list, Layout::List(0), None, window, Some(2)).unwrap();
            let b = read_columns(&lines, Layout::Lines(0), None, window, Some(2)).unwrap();
            for m in [&a, &b] {
                assert_eq!(m.n_entries, 50);
                assert_eq!(m.record_index, (0..50).collect::<Vec<_>>());
                assert_eq!(m.path1.get(49), b"img/49, [x].jpg");
                assert!(m.slow_index.is_empty());
            }
            assert_eq!(a.list_end as usize, std::fs::metadata(&list).unwrap().len() as usize - 1);
            let c = read_columns(&list, Layout::List(0), Some(10), window, None).unwrap();
            assert_eq!((c.n_entries, c.limit_reached, c.list_end), (10, true, -1));
            let d = read_columns(&lines, Layout::Lines(0), Some(10), window, None).unwrap();
            assert_eq!(d.n_entries, 10);
        }
    }

    #[test]
    fn parts_split_the_entries_and_entries_read_again_give_the_same_records() {
        let recs: Vec<String> = (0..31).map(|i| GOOD.replace("a.jpg", &format!("{i}.jpg"))).collect();
        let mut lines = recs.join("\n");
        lines.push_str("\n[1]\n");
        let p = file("parts.jsonl", lines.as_bytes());
        let all = read_columns(&p, Layout::Lines(0), None, 100, None).unwrap();
        let mut seen = Vec::new();
        for k in 0..3 {
            let m = read_part(&p, Layout::Lines(0), None, 100, None, Part::Modulo(k, 3), true).unwrap();
            assert_eq!(m.n_entries, 32);
            assert!(m.record_index.iter().chain(&m.slow_index).all(|&i| i % 3 == k as i64));
            seen.extend(m.record_index.iter().copied());
            let again = read_entries(&p, &m.record_index, &m.entry_offset, &m.entry_len, None).unwrap();
            assert_eq!(
                (again.record_index.clone(), again.entry_offset.clone()),
                (m.record_index.clone(), m.entry_offset.clone())
            );
            for i in 0..m.path1.len() {
                assert_eq!(again.path1.get(i), m.path1.get(i));
            }
        }
        seen.sort();
        assert_eq!(seen, all.record_index);
        assert!(read_part(&p, Layout::Lines(0), None, 100, None, Part::Modulo(3, 3), true).is_err());
    }

    /// Read `path` (a list opening at 0) in `n` byte ranges as `n` ranks would: cut points not
    /// right after a backslash, the state at each from the summaries of the ranges before.
    fn read_in_ranges(path: &Path, text: &[u8], n: u64, window: usize) -> Vec<MetaColumns> {
        let size = text.len() as u64;
        let cut = |k: u64| {
            let mut c = if k == 0 { 0 } else { (k * size / n).max(1) };
            while c > 0 && c < size && text[c as usize - 1] == b'\\' {
                c += 1;
            }
            c
        };
        let mut state = StructScan::default();
        (0..n)
            .map(|k| {
                let (from, to) = (cut(k), if k + 1 == n { size } else { cut(k + 1) });
                let part = Part::Bytes { until: to, scan: state.clone() };
                state = summarize_range(path, from, to, window).unwrap().after(&state);
                read_part(path, Layout::List(from), None, window, Some(2), part, true).unwrap()
            })
            .collect()
    }

    #[test]
    fn a_list_read_in_byte_ranges_gives_each_entry_once() {
        let recs: Vec<String> = (0..40)
            .map(|i| match i % 5 {
                0 => GOOD.replace("a.jpg", &format!("{i}\\\\\\\",[{{x.jpg")),
                1 => format!(
                    "{{\"prompt\": \"p\", \"path1\": \"{i}.jpg\", \"path2\": \"b\", \"x\": [[1, {{}}], \"]\"]}}"
                ),
                2 => "  ".to_string(), // an empty element: a bad record
                _ => GOOD.replace("a.jpg", &format!("{i}.jpg")),
            })
            .collect();
        let text = format!("[{}]\n", recs.join(",\n    "));
        let p = file("ranges.json", text.as_bytes());
        let whole = read_columns(&p, Layout::List(0), None, 64, None).unwrap();
        assert_eq!((whole.n_entries, whole.slow_index.len()), (40, 8));
        for n in [1, 2, 3, 7, 40, 300] {
            for window in [5, 64, 4096] {
                let parts = read_in_ranges(&p, text.as_bytes(), n, window);
                let (mut good, mut slow, mut first) = (Vec::new(), Vec::new(), 0);
                for m in &parts {
                    good.extend(m.record_index.iter().map(|i| i + first));
                    slow.extend(m.slow_index.iter().map(|i| i + first));
                    first += m.n_entries;
                }
                assert_eq!((first, &good, &slow), (40, &whole.record_index, &whole.slow_index), "{n} ranks");
                let offsets: Vec<i64> = parts.iter().flat_map(|m| m.entry_offset.iter().copied()).collect();
                assert_eq!(offsets, whole.entry_offset);
                let ends: Vec<i64> = parts.iter().map(|m| m.list_end).filter(|&e| e >= 0).collect();
                assert_eq!(ends, vec![whole.list_end]);
            }
        }
    }

    #[test]
    fn json_lines_read_in_byte_ranges_give_each_line_once() {
        let text = format!("{GOOD}\n\n{GOOD}\nnot json\n  \n{GOOD}\n{GOOD}");
        let p = file("ranges.jsonl", text.as_bytes());
        let whole = read_columns(&p, Layout::Lines(0), None, 64, None).unwrap();
        for n in [1u64, 2, 3, 9, 200] {
            let size = text.len() as u64;
            // Each cut just after a newline, as the ranks make them.
            let cut = |k: u64| match k {
                0 => 0,
                k if k >= n => size,
                k => text.as_bytes()[(k * size / n) as usize..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(size, |q| k * size / n + q as u64 + 1),
            };
            let (mut good, mut lines, mut first, mut line0) = (Vec::new(), Vec::new(), 0, 0);
            for k in 0..n {
                let part = Part::Bytes { until: cut(k + 1), scan: StructScan::default() };
                let m = read_part(&p, Layout::Lines(cut(k)), None, 16, None, part, true).unwrap();
                good.extend(m.record_index.iter().map(|i| i + first));
                lines.extend(m.slow_line.iter().map(|l| l + line0));
                first += m.n_entries;
                line0 += m.n_lines;
            }
            assert_eq!((first, &good, &lines), (whole.n_entries, &whole.record_index, &whole.slow_line), "{n}");
            assert_eq!(line0, 7);
        }
    }

    #[test]
    fn bad_entries_are_handed_back_by_position() {
        let text = format!("{GOOD}\nnot json\n\n{GOOD}\n[1]\n");
        let p = file("bad.jsonl", text.as_bytes());
        let m = read_columns(&p, Layout::Lines(0), None, 16, None).unwrap();
        assert_eq!(m.record_index, vec![0, 2]);
        assert_eq!(m.slow_index, vec![1, 3]);
        assert_eq!(m.slow_line, vec![2, 5]);
        let off = m.slow_offset[0] as usize;
        assert_eq!(&text.as_bytes()[off..off + m.slow_len[0] as usize], b"not json");
    }

    #[test]
    fn empty_and_unclosed_lists() {
        for (text, entries, end) in [("[]", 0, 1i64), ("[ \n ]", 0, 4), ("[,]", 2, 2), ("[{}", 0, -1)] {
            let p = file("e.json", text.as_bytes());
            let m = read_columns(&p, Layout::List(0), None, 2, None).unwrap();
            assert_eq!((m.n_entries, m.list_end), (entries, end), "{text}");
        }
    }

    #[test]
    fn escaped_quotes_and_brackets_in_strings() {
        let text =
            r#"[{"prompt": "a\\", "path1": "x]\"},{", "path2": "b"}, {"prompt": "", "path1": "\\\"[", "path2": "c"}]"#;
        let p = file("esc.json", text.as_bytes());
        let m = read_columns(&p, Layout::List(0), None, 3, None).unwrap();
        assert_eq!(m.n_entries, 2);
        assert_eq!(m.path1.get(0), br#"x]"},{"#);
        assert_eq!(m.path1.get(1), br#"\"["#);
        assert_eq!(value_end(&p, 0, 5).unwrap(), Some(text.len() as u64 - 1));
    }

    #[test]
    fn views_inline_short_strings_and_point_into_the_data_for_long_ones() {
        let mut c = StrColumn::new();
        for s in ["", "twelve bytes", "thirteen byte"] {
            c.push(s);
        }
        let v = c.views().unwrap();
        assert_eq!(&v[0..4], &0u32.to_le_bytes());
        assert_eq!(&v[16..20], &12u32.to_le_bytes());
        assert_eq!(&v[20..32], b"twelve bytes");
        assert_eq!(&v[32..36], &13u32.to_le_bytes());
        assert_eq!(&v[36..40], b"thir");
        assert_eq!((&v[40..44], &v[44..48]), (&0u32.to_le_bytes()[..], &12u32.to_le_bytes()[..]));
    }
}
