//! The asynchronous Parquet part-file writer.
//!
//! Rows go through a bounded lock-free channel (crossbeam's array queue) to a
//! dedicated thread that builds the `.npy` bytes, the `detailed_results`
//! strings and the Arrow batches, and writes zstd Parquet with small row
//! groups. The file is written under a temporary name and only appears under
//! its final name, fsynced, once complete: a killed process never leaves a
//! file that looks complete and isn't.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow_array::builder::{BinaryBuilder, Float64Builder, Int32Builder, Int64Builder, ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use crossbeam_channel::{bounded, Receiver, SendTimeoutError, Sender};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::error::{Error, Result};
use crate::npy::{npy_bytes, py_float_repr};

/// One latent: C-ordered little-endian samples (`descr` `<f4` or `<f2`).
#[derive(Debug, Clone)]
pub struct Latent {
    pub descr: &'static str,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// One output row: a comparison with both latents.
#[derive(Debug, Clone)]
pub struct Row {
    pub prompt: String,
    pub model1: String,
    pub model2: String,
    pub image1_path: String,
    pub image2_path: String,
    pub record_index: i64,
    pub votes_chosen: i64,
    pub votes_rejected: i64,
    pub confidence: f64,
    pub height: i64,
    pub width: i64,
    pub bucket_id: i32,
    pub orig_chosen: (i64, i64),
    pub orig_rejected: (i64, i64),
    pub latent1: Latent,
    pub latent2: Latent,
}

impl Row {
    /// The reference's `str(dict)` of the vote and size details.
    pub fn detailed_results(&self) -> String {
        let hw = |(h, w): (i64, i64)| format!("[{h}, {w}]");
        let fin = (self.height, self.width);
        format!(
            "{{'votes_chosen': {}, 'votes_rejected': {}, 'confidence': {}, 'orig_chosen_hw': {}, \
             'orig_rejected_hw': {}, 'final_chosen_hw': {}, 'final_rejected_hw': {}}}",
            self.votes_chosen,
            self.votes_rejected,
            py_float_repr(self.confidence),
            hw(self.orig_chosen),
            hw(self.orig_rejected),
            hw(fin),
            hw(fin)
        )
    }
}

#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub row_group_size: usize,
    pub queue_size: usize,
    pub zstd_level: i32,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self { row_group_size: 100, queue_size: 64, zstd_level: 1 }
    }
}

/// What a finished file holds.
#[derive(Debug, Clone, Default)]
pub struct WriterStats {
    pub rows: u64,
    pub row_groups: u64,
    pub bytes: u64,
    /// Time `submit` spent waiting on a full queue (back-pressure).
    pub blocked_seconds: f64,
}

pub fn part_schema() -> SchemaRef {
    let list = DataType::List(Arc::new(Field::new("item", DataType::Int64, true)));
    let s = |n: &str| Field::new(n, DataType::Utf8, true);
    let i = |n: &str| Field::new(n, DataType::Int64, true);
    Arc::new(Schema::new(vec![
        s("prompt"),
        s("model1"),
        s("model2"),
        s("detailed_results"),
        s("image1_path"),
        s("image2_path"),
        Field::new("latent1", DataType::Binary, true),
        Field::new("latent2", DataType::Binary, true),
        Field::new("latent1_shape", list.clone(), true),
        Field::new("latent2_shape", list, true),
        i("record_index"),
        i("votes_chosen"),
        i("votes_rejected"),
        Field::new("confidence", DataType::Float64, true),
        i("height"),
        i("width"),
        Field::new("bucket_id", DataType::Int32, true),
        i("orig_chosen_height"),
        i("orig_chosen_width"),
        i("orig_rejected_height"),
        i("orig_rejected_width"),
    ]))
}

fn record_batch(schema: &SchemaRef, rows: &[Row]) -> Result<RecordBatch> {
    fn strings(rows: &[Row], f: impl Fn(&Row) -> &str) -> ArrayRef {
        let mut b = StringBuilder::new();
        rows.iter().for_each(|r| b.append_value(f(r)));
        Arc::new(b.finish())
    }
    fn ints(rows: &[Row], f: impl Fn(&Row) -> i64) -> ArrayRef {
        let mut b = Int64Builder::with_capacity(rows.len());
        rows.iter().for_each(|r| b.append_value(f(r)));
        Arc::new(b.finish())
    }
    fn latents(rows: &[Row], f: impl Fn(&Row) -> &Latent) -> (ArrayRef, ArrayRef) {
        let mut bytes = BinaryBuilder::new();
        let mut shapes = ListBuilder::new(Int64Builder::new());
        for r in rows {
            let l = f(r);
            bytes.append_value(npy_bytes(l.descr, &l.shape, &l.data));
            l.shape.iter().for_each(|&d| shapes.values().append_value(d as i64));
            shapes.append(true);
        }
        (Arc::new(bytes.finish()), Arc::new(shapes.finish()))
    }
    let details: Vec<String> = rows.iter().map(Row::detailed_results).collect();
    let mut det = StringBuilder::new();
    details.iter().for_each(|d| det.append_value(d));
    let (l1, s1) = latents(rows, |r| &r.latent1);
    let (l2, s2) = latents(rows, |r| &r.latent2);
    let mut bucket = Int32Builder::with_capacity(rows.len());
    rows.iter().for_each(|r| bucket.append_value(r.bucket_id));
    let columns: Vec<ArrayRef> = vec![
        strings(rows, |r| &r.prompt),
        strings(rows, |r| &r.model1),
        strings(rows, |r| &r.model2),
        Arc::new(det.finish()),
        strings(rows, |r| &r.image1_path),
        strings(rows, |r| &r.image2_path),
        l1,
        l2,
        s1,
        s2,
        ints(rows, |r| r.record_index),
        ints(rows, |r| r.votes_chosen),
        ints(rows, |r| r.votes_rejected),
        Arc::new({
            let mut b = Float64Builder::with_capacity(rows.len());
            rows.iter().for_each(|r| b.append_value(r.confidence));
            b.finish()
        }),
        ints(rows, |r| r.height),
        ints(rows, |r| r.width),
        Arc::new(bucket.finish()),
        ints(rows, |r| r.orig_chosen.0),
        ints(rows, |r| r.orig_chosen.1),
        ints(rows, |r| r.orig_rejected.0),
        ints(rows, |r| r.orig_rejected.1),
    ];
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| Error::Writer(format!("building a record batch: {e}")))
}

fn properties(opts: &WriterOptions) -> Result<WriterProperties> {
    let level = ZstdLevel::try_new(opts.zstd_level).map_err(|e| Error::InvalidArgument(format!("zstd level: {e}")))?;
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(opts.row_group_size));
    for col in ["latent1", "latent2"] {
        // Random floats never repeat: a dictionary and min/max stats only cost time.
        b = b
            .set_column_dictionary_enabled(ColumnPath::from(col), false)
            .set_column_statistics_enabled(ColumnPath::from(col), EnabledStatistics::None);
    }
    Ok(b.build())
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// The writer thread's side: owns the Arrow writer and the temporary file.
struct Sink {
    schema: SchemaRef,
    writer: ArrowWriter<BufWriter<File>>,
    pending: Vec<Row>,
    row_group_size: usize,
    rows: u64,
}

impl Sink {
    fn write_pending(&mut self, all: bool) -> Result<()> {
        while self.pending.len() >= self.row_group_size || (all && !self.pending.is_empty()) {
            let n = self.pending.len().min(self.row_group_size);
            let chunk: Vec<Row> = self.pending.drain(..n).collect();
            let batch = record_batch(&self.schema, &chunk)?;
            self.writer.write(&batch).map_err(|e| Error::Writer(format!("writing rows: {e}")))?;
            self.writer.flush().map_err(|e| Error::Writer(format!("writing a row group: {e}")))?;
            self.rows += n as u64;
        }
        Ok(())
    }
}

struct Shared {
    failed: AtomicBool,
    error: Mutex<Option<String>>,
    queued_rows: AtomicU64,
}

/// A Parquet part file being written in the background.
pub struct PartWriter {
    path: PathBuf,
    tmp: PathBuf,
    tx: Option<Sender<Vec<Row>>>,
    thread: Option<JoinHandle<Result<(u64, u64)>>>,
    shared: Arc<Shared>,
    blocked: Duration,
}

impl PartWriter {
    pub fn create(path: impl Into<PathBuf>, opts: WriterOptions) -> Result<Self> {
        let path = path.into();
        if opts.row_group_size == 0 || opts.queue_size == 0 {
            return Err(Error::InvalidArgument("row_group_size and queue_size must be > 0".into()));
        }
        let tmp = temp_path(&path);
        let file = File::create(&tmp).map_err(|e| Error::io(tmp.display().to_string(), e))?;
        let schema = part_schema();
        let writer =
            ArrowWriter::try_new(BufWriter::with_capacity(1 << 20, file), schema.clone(), Some(properties(&opts)?))
                .map_err(|e| Error::Writer(format!("opening '{}': {e}", tmp.display())))?;
        let sink = Sink { schema, writer, pending: Vec::new(), row_group_size: opts.row_group_size, rows: 0 };
        let (tx, rx) = bounded::<Vec<Row>>(opts.queue_size);
        let shared = Arc::new(Shared {
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
            queued_rows: AtomicU64::new(0),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("hpd-encode-writer".into())
            .spawn(move || run_sink(sink, rx, thread_shared))
            .map_err(|e| Error::Writer(format!("cannot start the writer thread: {e}")))?;
        Ok(Self { path, tmp, tx: Some(tx), thread: Some(thread), shared, blocked: Duration::ZERO })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows handed over but not yet written.
    pub fn queued_rows(&self) -> u64 {
        self.shared.queued_rows.load(Ordering::Relaxed)
    }

    fn deferred_error(&self) -> Option<Error> {
        if self.shared.failed.load(Ordering::Acquire) {
            let msg = self.shared.error.lock().unwrap_or_else(|e| e.into_inner()).clone();
            return Some(Error::Writer(msg.unwrap_or_else(|| "the writer thread failed".into())));
        }
        None
    }

    /// Hand rows to the writer thread; blocks while the queue is full
    /// (back-pressure). `interrupted` is polled while blocked so a caller can
    /// honour Ctrl-C.
    pub fn submit(&mut self, rows: Vec<Row>, mut interrupted: impl FnMut() -> Result<()>) -> Result<()> {
        if let Some(e) = self.deferred_error() {
            return Err(e);
        }
        let tx = self.tx.as_ref().ok_or_else(|| Error::Writer("the writer is closed".into()))?;
        let n = rows.len() as u64;
        self.shared.queued_rows.fetch_add(n, Ordering::Relaxed);
        let start = Instant::now();
        let mut msg = rows;
        loop {
            match tx.send_timeout(msg, Duration::from_millis(100)) {
                Ok(()) => break,
                Err(SendTimeoutError::Timeout(back)) => {
                    msg = back;
                    if let Some(e) = self.deferred_error() {
                        return Err(e);
                    }
                    interrupted()?;
                }
                Err(SendTimeoutError::Disconnected(_)) => {
                    return Err(self
                        .deferred_error()
                        .unwrap_or_else(|| Error::Writer("the writer thread stopped".into())));
                }
            }
        }
        self.blocked += start.elapsed();
        Ok(())
    }

    /// Flush everything, write the footer, fsync, rename to the final name.
    /// Re-raises any error of the writer thread.
    pub fn close(&mut self) -> Result<WriterStats> {
        self.tx.take();
        let Some(thread) = self.thread.take() else {
            return Err(Error::Writer("the writer is already closed".into()));
        };
        let result = thread.join().map_err(|_| Error::Writer("the writer thread panicked".into()))?;
        let (rows, row_groups) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_file(&self.tmp);
                return Err(e);
            }
        };
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(self.path.display().to_string(), e))?;
        sync_dir(&self.path);
        let bytes = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        Ok(WriterStats { rows, row_groups, bytes, blocked_seconds: self.blocked.as_secs_f64() })
    }

    /// Stop without publishing anything: the temporary file is removed.
    pub fn abort(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            self.shared.failed.store(true, Ordering::Release);
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.tmp);
    }

    pub fn is_closed(&self) -> bool {
        self.thread.is_none()
    }
}

impl Drop for PartWriter {
    fn drop(&mut self) {
        if !self.is_closed() {
            self.abort();
        }
    }
}

fn run_sink(mut sink: Sink, rx: Receiver<Vec<Row>>, shared: Arc<Shared>) -> Result<(u64, u64)> {
    let fail = |e: &Error| {
        *shared.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        shared.failed.store(true, Ordering::Release);
    };
    for rows in rx.iter() {
        if shared.failed.load(Ordering::Acquire) {
            continue; // aborted or failed: drain so senders never block
        }
        let n = rows.len() as u64;
        sink.pending.extend(rows);
        let r = sink.write_pending(false);
        shared.queued_rows.fetch_sub(n.min(shared.queued_rows.load(Ordering::Relaxed)), Ordering::Relaxed);
        if let Err(e) = r {
            fail(&e);
        }
    }
    if shared.failed.load(Ordering::Acquire) {
        let msg = shared.error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        return Err(Error::Writer(msg.unwrap_or_else(|| "aborted".into())));
    }
    let finish = (|| -> Result<(u64, u64)> {
        sink.write_pending(true)?;
        let meta = sink.writer.finish().map_err(|e| Error::Writer(format!("writing the footer: {e}")))?;
        let row_groups = meta.num_row_groups() as u64;
        let buffered = sink.writer.inner_mut();
        std::io::Write::flush(buffered).map_err(|e| Error::Writer(format!("flushing the file: {e}")))?;
        buffered.get_mut().sync_all().map_err(|e| Error::Writer(format!("fsync: {e}")))?;
        Ok((sink.rows, row_groups))
    })();
    if let Err(e) = &finish {
        fail(e);
    }
    finish
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small row with distinct latents (also used by other modules' tests).
    pub(crate) fn row(i: i64) -> Row {
        let lat = |v: f32| Latent {
            descr: "<f4",
            shape: vec![4, 2, 2],
            data: [v; 16].iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        Row {
            prompt: format!("p{i}"),
            model1: "a".into(),
            model2: "b".into(),
            image1_path: format!("x/{i}.jpg"),
            image2_path: format!("y/{i}.jpg"),
            record_index: i,
            votes_chosen: 3,
            votes_rejected: 1,
            confidence: 0.75,
            height: 16,
            width: 16,
            bucket_id: 0,
            orig_chosen: (20, 20),
            orig_rejected: (30, 30),
            latent1: lat(i as f32),
            latent2: lat(-(i as f32)),
        }
    }

    #[test]
    fn writes_row_groups_and_renames_on_close() {
        let dir = std::env::temp_dir().join(format!("hpd-writer-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("part.parquet");
        let mut w =
            PartWriter::create(&path, WriterOptions { row_group_size: 10, queue_size: 2, zstd_level: 3 }).unwrap();
        for chunk in 0..5 {
            w.submit((chunk * 7..chunk * 7 + 7).map(row).collect(), || Ok(())).unwrap();
        }
        assert!(!path.exists(), "the final name appears only on close");
        let stats = w.close().unwrap();
        assert_eq!(stats.rows, 35);
        assert_eq!(stats.row_groups, 4);
        assert!(path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn abort_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("hpd-writer-abort-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("part.parquet");
        let mut w = PartWriter::create(&path, WriterOptions::default()).unwrap();
        w.submit(vec![row(1)], || Ok(())).unwrap();
        w.abort();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn detailed_results_is_a_python_literal() {
        let r = row(1);
        assert_eq!(
            r.detailed_results(),
            "{'votes_chosen': 3, 'votes_rejected': 1, 'confidence': 0.75, 'orig_chosen_hw': [20, 20], \
             'orig_rejected_hw': [30, 30], 'final_chosen_hw': [16, 16], 'final_rejected_hw': [16, 16]}"
        );
    }
}
