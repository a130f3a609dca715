//! HPDv3 metadata (a JSON list or JSON Lines) cut into entries and judged
//! into columns, a window of the file at a time, the entries of a window in
//! parallel: the good records as columns, the bad ones as failures with their
//! reasons ([`crate::metadata::judge`], the one place that decides).
//!
//! Where the entries are:
//! - JSON Lines: one entry per line; lines that are blank as Python's
//!   `bytes.strip()` sees it are skipped (and not counted).
//! - A JSON list: the elements between the opening bracket, the commas at
//!   depth 1 and the closing bracket, found by one pass over the structure
//!   (strings, escapes, depth). A quote preceded by an odd run of backslashes
//!   is never a string delimiter, inside or outside a string. An element that
//!   is not JSON breaks the list ([`MetaColumns::list_error`]).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use rayon::prelude::*;

use crate::metadata::judge::{judge, ListError, Place, Reason, Record, Subject, Val, Verdict};
use crate::metadata::record::{Kind, IMAGE_PATHS, READ_FIELDS};
use crate::metadata::structure::{ChunkScan, Mark, StructScan};
use crate::pool::pool;

/// Bytes of the file read at a time (plus the unfinished entry carried over): the
/// window every caller uses unless a test asks for another.
pub const DEFAULT_WINDOW: usize = 8 << 20;

/// Entries judged in one parallel step (their verdicts held together).
const JUDGED_AT_ONCE: usize = 8192;

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

/// One column of the good records: the values of one of [`READ_FIELDS`].
#[derive(Debug)]
pub enum Column {
    Text(StrColumn),
    Int(Vec<i64>),
    Real(Vec<f64>),
}

impl Column {
    fn of(kind: Kind) -> Self {
        match kind {
            Kind::Text | Kind::Path => Column::Text(StrColumn::new()),
            Kind::Real => Column::Real(Vec::new()),
            _ => Column::Int(Vec::new()),
        }
    }
}

/// The bad records, in file order: their numbers, reasons and usable image paths.
#[derive(Debug, Default)]
pub struct Failures {
    pub record_index: Vec<i64>,
    pub reasons: Vec<Reason>,
    /// The chosen and the rejected image's path of each (`""` where not usable).
    pub paths: [Vec<String>; 2],
}

impl Failures {
    /// Number the records `entries` more and their lines `lines` more.
    pub fn shift(&mut self, entries: i64, lines: u64) {
        self.record_index.iter_mut().for_each(|i| *i += entries);
        for r in &mut self.reasons {
            if let Subject::Line(n) = &mut r.subject {
                *n += lines;
            }
        }
    }
}

/// The good records as columns (file order), and the bad ones as failures.
#[derive(Debug)]
pub struct MetaColumns {
    pub record_index: Vec<i64>,
    /// One column per field of [`READ_FIELDS`], in its order.
    pub columns: Vec<Column>,
    /// Where each good record's entry is in the file (offset, length): to read it again.
    pub entry_offset: Vec<i64>,
    pub entry_len: Vec<i64>,
    pub failures: Failures,
    /// A list: its first element that is not JSON (its number and why), which breaks the list.
    pub list_error: Option<(i64, ListError)>,
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
    /// Keep the text fields (else they are checked but stored empty: a caller that reads them
    /// again later, for the few rows it needs, saves most of the table's bytes). Paths are kept.
    keep_text: bool,
}

impl MetaColumns {
    fn new(part: Option<(i64, i64)>) -> Self {
        MetaColumns {
            part,
            keep_text: true,
            record_index: Vec::new(),
            columns: READ_FIELDS.iter().map(|f| Column::of(f.kind)).collect(),
            entry_offset: Vec::new(),
            entry_len: Vec::new(),
            failures: Failures::default(),
            list_error: None,
            n_entries: 0,
            list_end: -1,
            limit_reached: false,
            n_lines: 0,
        }
    }

    /// The image paths of the good records (chosen, rejected).
    pub fn image_paths(&self) -> [&StrColumn; 2] {
        IMAGE_PATHS.map(|k| match &self.columns[k] {
            Column::Text(c) => c,
            _ => unreachable!("image paths are text"),
        })
    }

    /// Number the records `entries` more and the lines `lines` more: a range's, once the ranges
    /// before it are counted.
    pub fn shift(&mut self, entries: i64, lines: u64) {
        self.record_index.iter_mut().for_each(|i| *i += entries);
        self.failures.shift(entries, lines);
        if let Some((i, _)) = &mut self.list_error {
            *i += entries;
        }
    }

    fn push(&mut self, index: i64, e: &Entry, verdict: Verdict<'_>) {
        match verdict {
            Verdict::Good(record) => self.push_good(index, e, record),
            Verdict::Bad(bad) => {
                self.failures.record_index.push(index);
                self.failures.reasons.push(bad.reason);
                let [p1, p2] = bad.paths;
                self.failures.paths[0].push(p1);
                self.failures.paths[1].push(p2);
            }
            Verdict::NotJson(err) => {
                self.list_error.get_or_insert((index, err));
            }
        }
    }

    fn push_good(&mut self, index: i64, e: &Entry, record: Record<'_>) {
        self.record_index.push(index);
        self.entry_offset.push(e.start as i64);
        self.entry_len.push((e.end - e.start) as i64);
        for ((col, val), f) in self.columns.iter_mut().zip(record).zip(READ_FIELDS.iter()) {
            match (col, val) {
                (Column::Text(c), Val::Text(s)) if self.keep_text || f.kind == Kind::Path => c.push(&s),
                (Column::Text(c), Val::Text(_)) => c.push(""),
                (Column::Int(c), Val::Int(i)) => c.push(i),
                (Column::Real(c), Val::Real(x)) => c.push(x),
                _ => unreachable!("a record's values have its columns' kinds"),
            }
        }
    }
}

/// One entry: bytes `[start, end)` of the file, and where it is for its reasons.
#[derive(Debug, Clone, Copy)]
struct Entry {
    start: u64,
    end: u64,
    place: Place,
}

fn is_json_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// What Python's `bytes.strip()` removes (a JSON Lines line of only these is blank).
fn is_py_space(b: u8) -> bool {
    matches!(b, 9..=13 | 28..=32)
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

/// Judge `entries` (all inside `w.buf`; those of this part) in parallel and add them to `out`.
fn take(out: &mut MetaColumns, w: &Windows, entries: &[Entry]) {
    let (first, part) = (out.n_entries, out.part);
    let mine = |k: usize| part.map_or(true, |(r, n)| (first + k as i64) % n == r);
    // Only this part's entries are judged (and only their results held: a rank of 8 would
    // otherwise hold a verdict the size of a parsed record for each of the others).
    let picked: Vec<usize> = (0..entries.len()).filter(|&k| mine(k)).collect();
    // A chunk at a time: a window of short entries (junk lines) holds hundreds of thousands, and
    // a verdict is the size of a parsed record.
    for chunk in picked.chunks(JUDGED_AT_ONCE) {
        let judged: Vec<Verdict<'_>> =
            chunk.par_iter().map(|&k| judge(w.bytes(&entries[k]), entries[k].place)).collect();
        for (&k, verdict) in chunk.iter().zip(judged) {
            out.push(first + k as i64, &entries[k], verdict);
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

/// The entries at `offsets`/`lengths` of the file (good records an earlier
/// read found, numbered `indices`), judged again: what a rank does for the
/// rows it was given, without reading the rest of the file. An entry that is no
/// longer a good record is a failure (not JSON too: it is read alone).
pub fn read_entries(
    path: &Path,
    indices: &[i64],
    offsets: &[i64],
    lengths: &[i64],
    num_threads: Option<usize>,
) -> io::Result<MetaColumns> {
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
        let place = Place::Element { offset: off as u64, breaks: false };
        entries.push(Entry { start: at as u64, end: (at + len as usize) as u64, place });
    }
    let mut out = MetaColumns::new(None);
    pool(num_threads).install(|| take(&mut out, &w, &entries));
    // Number them as asked (they were numbered by position), pointing back into the file.
    for (k, off) in out.record_index.iter_mut().zip(out.entry_offset.iter_mut()) {
        *off = offsets[*k as usize];
        *k = indices[*k as usize];
    }
    for k in out.failures.record_index.iter_mut() {
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
                entries.push(Entry { start: w.base + pos as u64, end: w.base + end as u64, place: Place::Line(line) });
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
                pending.push(Entry {
                    start: prev + 1,
                    end: at,
                    place: Place::Element { offset: prev + 1, breaks: true },
                });
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

/// What a metadata file holds, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A JSON list, its opening bracket at `first`.
    List,
    /// JSON Lines (or one record on one line).
    Lines,
    /// One JSON object over several lines (a pretty-printed object): neither.
    Object,
    /// Nothing but whitespace (or nothing at all), after a byte-order mark if any.
    Empty,
}

/// What the file at `path` holds: its kind, where its metadata starts (after a UTF-8
/// byte-order mark) and its first byte that is not whitespace (as Python's `bytes.strip()`
/// sees it). A file whose first line starts an object that is not complete on that line but
/// closes on a later one, and parses, is one object over several lines.
pub fn file_kind(path: &Path, window: usize) -> io::Result<(FileKind, u64, u64)> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let read = |at: u64, n: u64| -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; n.min(size.saturating_sub(at)) as usize];
        file.read_exact_at(&mut buf, at)?;
        Ok(buf)
    };
    let start = if read(0, 3)? == b"\xef\xbb\xbf" { 3 } else { 0 };
    let mut first = start;
    loop {
        let chunk = read(first, 1 << 16)?;
        match chunk.iter().position(|&b| !is_py_space(b)) {
            Some(k) => {
                first += k as u64;
                break;
            }
            None if chunk.is_empty() => return Ok((FileKind::Empty, start, first)),
            None => first += chunk.len() as u64,
        }
    }
    let kind = match read(first, 1)?[0] {
        b'[' => FileKind::List,
        b'{' if one_object_over_lines(path, &read, first, size, window)? => FileKind::Object,
        _ => FileKind::Lines,
    };
    Ok((kind, start, first))
}

fn one_object_over_lines(
    path: &Path,
    read: &dyn Fn(u64, u64) -> io::Result<Vec<u8>>,
    first: u64,
    size: u64,
    window: usize,
) -> io::Result<bool> {
    let is_json = |b: &[u8]| std::str::from_utf8(b).is_ok_and(|t| crate::metadata::json::parse(t).is_ok());
    let mut eol = first;
    loop {
        let chunk = read(eol, 1 << 20)?;
        match memchr::memchr(b'\n', &chunk) {
            Some(k) => {
                eol += k as u64;
                break;
            }
            None if chunk.is_empty() => break,
            None => eol += chunk.len() as u64,
        }
    }
    if is_json(&read(first, eol.min(size) - first)?) {
        return Ok(false);
    }
    Ok(match value_end(path, first, window)? {
        Some(end) if end > eol => is_json(&read(first, end + 1 - first)?),
        _ => false,
    })
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

    /// A file of the system temporary folder, removed when dropped.
    struct TempFile(std::path::PathBuf);

    impl std::ops::Deref for TempFile {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl AsRef<Path> for TempFile {
        fn as_ref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn file(name: &str, text: &[u8]) -> TempFile {
        let p = std::env::temp_dir().join(format!("hpd-meta-{}-{name}", std::process::id()));
        std::fs::File::create(&p).unwrap().write_all(text).unwrap();
        TempFile(p)
    }

    const GOOD: &str =
        r#"{"prompt": "a \"cat\"", "path1": "a.jpg", "path2": "b.jpg", "choice_dist": [3, 1], "confidence": 0.75}"#;

    /// The line of each failure (JSON Lines).
    fn failure_lines(m: &MetaColumns) -> Vec<i64> {
        m.failures
            .reasons
            .iter()
            .map(|r| match r.subject {
                Subject::Line(n) => n as i64,
                _ => 0,
            })
            .collect()
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
                assert_eq!(m.image_paths()[0].get(49), b"img/49, [x].jpg");
                assert!(m.failures.record_index.is_empty());
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
            assert!(m.record_index.iter().chain(&m.failures.record_index).all(|&i| i % 3 == k as i64));
            seen.extend(m.record_index.iter().copied());
            let again = read_entries(&p, &m.record_index, &m.entry_offset, &m.entry_len, None).unwrap();
            assert_eq!(
                (again.record_index.clone(), again.entry_offset.clone()),
                (m.record_index.clone(), m.entry_offset.clone())
            );
            for i in 0..m.record_index.len() {
                assert_eq!(again.image_paths()[0].get(i), m.image_paths()[0].get(i));
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
                2 => "[1]".to_string(), // a bad record
                _ => GOOD.replace("a.jpg", &format!("{i}.jpg")),
            })
            .collect();
        let text = format!("[{}]\n", recs.join(",\n    "));
        let p = file("ranges.json", text.as_bytes());
        let whole = read_columns(&p, Layout::List(0), None, 64, None).unwrap();
        assert_eq!((whole.n_entries, whole.failures.record_index.len()), (40, 8));
        for n in [1, 2, 3, 7, 40, 300] {
            for window in [5, 64, 4096] {
                let parts = read_in_ranges(&p, text.as_bytes(), n, window);
                let (mut good, mut slow, mut first) = (Vec::new(), Vec::new(), 0);
                for m in &parts {
                    good.extend(m.record_index.iter().map(|i| i + first));
                    slow.extend(m.failures.record_index.iter().map(|i| i + first));
                    first += m.n_entries;
                }
                assert_eq!((first, &good, &slow), (40, &whole.record_index, &whole.failures.record_index), "{n} ranks");
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
                lines.extend(failure_lines(&m).iter().map(|l| l + line0));
                first += m.n_entries;
                line0 += m.n_lines;
            }
            assert_eq!((first, &good, &lines), (whole.n_entries, &whole.record_index, &failure_lines(&whole)), "{n}");
            assert_eq!(line0, 7);
        }
    }

    #[test]
    fn bad_entries_are_failures_with_their_reasons() {
        let text = format!("{GOOD}\nnot json\n\n{GOOD}\n[1]\n{}\n", GOOD.replace("0.75", "NaN"));
        let p = file("bad.jsonl", text.as_bytes());
        let mut m = read_columns(&p, Layout::Lines(0), None, 16, None).unwrap();
        assert_eq!(m.record_index, vec![0, 2]);
        assert_eq!(m.failures.record_index, vec![1, 3, 4]);
        assert_eq!(failure_lines(&m), vec![2, 0, 0]); // (the reasons that name their line)
        m.shift(10, 100);
        let reasons: Vec<String> = m.failures.reasons.iter().map(Reason::render).collect();
        assert_eq!(
            reasons,
            [
                "line 102 is not valid JSON: Expecting value at byte 0 of the line",
                "record is a list, not an object",
                "confidence nan is not a finite number"
            ]
        );
        assert_eq!((m.record_index, m.failures.record_index), (vec![10, 12], vec![11, 13, 14]));
        assert_eq!(
            m.failures.paths,
            [vec!["".to_string(), "".into(), "a.jpg".into()], vec!["".into(), "".into(), "b.jpg".into()]]
        );
    }

    #[test]
    fn a_list_element_that_is_not_json_breaks_the_list() {
        let text = format!("[{GOOD}, [1], {GOOD} {GOOD}, x, {GOOD}]");
        let p = file("broken.json", text.as_bytes());
        let m = read_columns(&p, Layout::List(0), None, 16, None).unwrap();
        assert_eq!((m.record_index.clone(), m.failures.record_index.clone()), (vec![0, 4], vec![1]));
        let (index, err) = m.list_error.unwrap();
        let at = 1 + GOOD.len() + 7 + GOOD.len() + 1;
        assert_eq!((index, err.to_string()), (2, format!("Extra data at byte {at} of the file")));
    }

    #[test]
    fn what_a_file_holds() {
        let kind = |text: &str| {
            let p = file("kind.json", text.as_bytes());
            let (k, start, first) = file_kind(&p, 4).unwrap();
            (k, start, first)
        };
        assert_eq!(kind(""), (FileKind::Empty, 0, 0));
        assert_eq!(kind("\u{feff} \n\x0b "), (FileKind::Empty, 3, 7));
        assert_eq!(kind("  [1]"), (FileKind::List, 0, 2));
        assert_eq!(kind("\u{feff}{\"a\": 1}\n{\"b\": 2}"), (FileKind::Lines, 3, 3));
        assert_eq!(kind("{\"a\":\n 1}\n"), (FileKind::Object, 0, 0));
        // A first line that is broken, not an object over lines.
        assert_eq!(kind("{\"a\":\n{\"b\": 2}\n"), (FileKind::Lines, 0, 0));
        assert_eq!(kind("x"), (FileKind::Lines, 0, 0));
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
        assert_eq!(m.image_paths()[0].get(0), br#"x]"},{"#);
        assert_eq!(m.image_paths()[0].get(1), br#"\"["#);
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
