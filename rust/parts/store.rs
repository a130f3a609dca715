//! Where part files live: a local path or an `s3://bucket/key` object.
//!
//! The reader (`reader.rs`) reads both through one [`Input`], a parquet
//! `ChunkReader`: the same footer, offset index and page-per-latent logic
//! serves either store. A local input is positional reads on a file; a
//! remote one is ranged GETs through the `object_store` crate (S3 only),
//! served from buffers fetched ahead when the caller knows what it will read
//! (the pages of a batch, a footer's tail), one GET per range otherwise.
//!
//! Per process there is one lazily built tokio runtime and one client per
//! bucket; both are rebuilt in a forked child (a DataLoader worker), where
//! the parent's runtime threads and connections do not exist, the way
//! `pool.rs` rebuilds the rayon pools. Every GET waits for a permit of one
//! semaphore ([`Settings::max_concurrency`]); `object_store` retries 5xx
//! answers, timeouts and dropped connections with exponential backoff
//! ([`Settings::max_retries`], [`Settings::retry_timeout`]). Errors name the
//! URL and the HTTP status.
//!
//! Credentials, region and endpoint come from the standard AWS variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL`, ...) and, for what they leave unset,
//! from the profile `AWS_PROFILE` names (default `default`) in
//! `~/.aws/credentials` and `~/.aws/config`. Plain http only with
//! `AWS_ALLOW_HTTP=true`.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io::{BufReader, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::StreamExt;
use object_store::aws::{AmazonS3Builder, Checksum};
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, AttributeValue, Attributes, BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, RetryConfig, WriteMultipart,
};
use parquet::errors::ParquetError;
use parquet::file::reader::{ChunkReader, Length};
use tokio::sync::Semaphore;

use crate::parts::reader::{PosFile, PosReader};

/// The URL scheme of objects.
pub const SCHEME: &str = "s3://";

/// Bytes of a file's end fetched when it is opened: the footer and the
/// offset index of a part file of a few thousand rows fit, so opening costs
/// one GET (more only for larger footers, each for exactly what is missing).
pub const TAIL_BYTES: u64 = 64 << 10;

/// Window of the reads a streaming reader (`ChunkReader::get_read`) makes.
const READ_WINDOW: usize = 1 << 20;

/// The user metadata key under which `push` records an object's CRC-64/NVME.
pub const CHECKSUM_KEY: &str = "hpd-crc64nvme";

// ---------------------------------------------------------------------------
// URLs

/// True for an `s3://` URL (anything else is a local path).
pub fn is_remote(path: &str) -> bool {
    path.starts_with(SCHEME)
}

/// An `s3://bucket/key` URL, split. The key may be empty (the bucket's root,
/// as a prefix) and never starts with `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectUrl {
    pub bucket: String,
    pub key: String,
}

impl ObjectUrl {
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let rest = url.strip_prefix(SCHEME).ok_or_else(|| {
            StoreError::config(url, format!("'{url}' is not an s3:// URL (expected s3://bucket/key)"))
        })?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        let valid = !bucket.is_empty()
            && bucket.len() <= 63
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid {
            return Err(StoreError::config(
                url,
                format!("'{url}' has no valid bucket name (lower-case letters, digits, '-' and '.'; s3://bucket/key)"),
            ));
        }
        if key.split('/').any(|part| part == "." || part == "..") || key.contains("//") {
            return Err(StoreError::config(url, format!("'{url}' has an empty, '.' or '..' key component")));
        }
        Ok(ObjectUrl { bucket: bucket.to_owned(), key: key.to_owned() })
    }

    pub fn url(&self) -> String {
        format!("{SCHEME}{}/{}", self.bucket, self.key)
    }

    fn path(&self) -> ObjectPath {
        ObjectPath::from(self.key.as_str())
    }
}

impl std::fmt::Display for ObjectUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.bucket, self.key)
    }
}

// ---------------------------------------------------------------------------
// Errors

/// What kind of failure a [`StoreError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// 404: no such object, or no such bucket.
    NotFound,
    /// 401/403: credentials refused or missing.
    Denied,
    /// 412: the object changed since it was opened.
    Changed,
    /// 5xx, timeouts, refused or dropped connections, after the retries.
    Unavailable,
    /// Fewer bytes than asked for (a truncated object).
    Truncated,
    /// A bad URL, endpoint or setting.
    Config,
    /// Anything else the server or the client reported.
    Other,
}

/// A failed request or setting, naming the URL and, when there was an
/// answer, its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    pub url: String,
    pub status: Option<u16>,
    pub kind: StoreErrorKind,
    pub message: String,
}

impl StoreError {
    pub fn config(url: &str, message: String) -> Self {
        StoreError { url: url.to_owned(), status: None, kind: StoreErrorKind::Config, message }
    }

    fn truncated(url: &str, what: &str, want: u64, got: u64) -> Self {
        StoreError {
            url: url.to_owned(),
            status: None,
            kind: StoreErrorKind::Truncated,
            message: format!(
                "{what} {url}: got {got} bytes of the {want} asked for: the object is shorter than its footer \
                 says (truncated); upload it again (hpd-encode push)"
            ),
        }
    }

    /// From an `object_store` error of `op` (GET, PUT, ...) on `url`.
    fn from_store(op: &str, url: &str, e: &object_store::Error) -> Self {
        use object_store::Error as E;
        let detail = e.to_string();
        let status = match e {
            E::NotFound { .. } => Some(404),
            E::PermissionDenied { .. } => Some(403),
            E::Unauthenticated { .. } => Some(401),
            E::Precondition { .. } => Some(412),
            _ => status_in(&detail),
        };
        let code = xml_code(&detail);
        let kind = match (e, status) {
            (E::NotFound { .. }, _) | (_, Some(404)) => StoreErrorKind::NotFound,
            (_, Some(401 | 403)) => StoreErrorKind::Denied,
            (_, Some(412)) => StoreErrorKind::Changed,
            (_, Some(s)) if s >= 500 || s == 429 || s == 408 => StoreErrorKind::Unavailable,
            (_, None) if looks_like_transport(&detail) => StoreErrorKind::Unavailable,
            _ => StoreErrorKind::Other,
        };
        let hint = match kind {
            StoreErrorKind::NotFound if code.as_deref() == Some("NoSuchBucket") => {
                "the bucket does not exist: check the URL, or create the bucket".to_string()
            }
            StoreErrorKind::NotFound => "no such object: check the URL (bucket and key)".to_string(),
            StoreErrorKind::Denied => "the server refused the credentials: check AWS_ACCESS_KEY_ID and \
                                       AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and the bucket's permissions"
                .to_string(),
            StoreErrorKind::Changed => {
                "the object changed since it was opened: run again (and do not overwrite objects being read)"
                    .to_string()
            }
            StoreErrorKind::Unavailable => {
                let s = settings();
                format!(
                    "the server did not answer (retried up to {} times over {} s): check that it is up, \
                     AWS_ENDPOINT_URL and the network, then run again",
                    s.max_retries,
                    s.retry_timeout.as_secs_f64()
                )
            }
            _ => "see the server's message above".to_string(),
        };
        let status_text = match (status, &code) {
            (Some(s), Some(c)) => format!("HTTP {s} ({c})"),
            (Some(s), None) => format!("HTTP {s}"),
            (None, _) if kind == StoreErrorKind::Unavailable => "no answer".to_string(),
            (None, _) => "failed".to_string(),
        };
        StoreError {
            url: url.to_owned(),
            status,
            kind,
            message: format!("{op} {url}: {status_text}: {detail}; {hint}"),
        }
    }
}

/// The HTTP status a message of `object_store`'s names ("... status code: 503 ...").
fn status_in(text: &str) -> Option<u16> {
    for marker in ["status code: ", "status of ", "HTTP status server error (", "HTTP status client error ("] {
        if let Some(at) = text.find(marker) {
            let digits: String = text[at + marker.len()..].chars().take_while(|c| c.is_ascii_digit()).collect();
            if let Ok(s) = digits.parse::<u16>() {
                if (100..600).contains(&s) {
                    return Some(s);
                }
            }
        }
    }
    None
}

/// The S3 error code (`<Code>NoSuchBucket</Code>`) in a server's answer.
fn xml_code(text: &str) -> Option<String> {
    let start = text.find("<Code>")? + 6;
    let end = text[start..].find("</Code>")? + start;
    Some(text[start..end].to_owned())
}

fn looks_like_transport(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    ["connect", "timed out", "timeout", "connection", "broken pipe", "reset", "body", "dns", "error sending request"]
        .iter()
        .any(|w| t.contains(w))
}

// ---------------------------------------------------------------------------
// Settings

/// How the object store client behaves. Read from `HPD_S3_*` variables on
/// first use (so DataLoader workers started with `spawn` inherit them);
/// [`configure`] changes them for this process.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// GETs and PUT parts in flight at once, per process (`HPD_S3_MAX_CONCURRENCY`, 32).
    pub max_concurrency: usize,
    /// Retries of a failed request: 5xx, 429, timeouts, connection errors (`HPD_S3_MAX_RETRIES`, 10).
    pub max_retries: usize,
    /// No retry starts later than this after the first try (`HPD_S3_RETRY_TIMEOUT`, 120 s).
    pub retry_timeout: Duration,
    /// Limit of one request, from connecting to the last byte (`HPD_S3_TIMEOUT`, 300 s).
    pub timeout: Duration,
    /// Limit of connecting (`HPD_S3_CONNECT_TIMEOUT`, 10 s).
    pub connect_timeout: Duration,
    /// Files larger than this are uploaded in parts of this size (`HPD_S3_PART_SIZE`, 64 MiB).
    pub part_size: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_concurrency: 32,
            max_retries: 10,
            retry_timeout: Duration::from_secs(120),
            timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            part_size: 64 << 20,
        }
    }
}

/// S3's smallest part size but the last (a multipart upload refuses smaller).
pub const MIN_PART_SIZE: usize = 5 << 20;

impl Settings {
    fn from_env() -> Result<Self, StoreError> {
        let mut s = Settings::default();
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let number = |name: &str, value: String| -> Result<f64, StoreError> {
            value
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| StoreError::config("", format!("{name}={value:?} is not a non-negative number")))
        };
        if let Some(v) = var("HPD_S3_MAX_CONCURRENCY") {
            s.max_concurrency = number("HPD_S3_MAX_CONCURRENCY", v)? as usize;
        }
        if let Some(v) = var("HPD_S3_MAX_RETRIES") {
            s.max_retries = number("HPD_S3_MAX_RETRIES", v)? as usize;
        }
        if let Some(v) = var("HPD_S3_RETRY_TIMEOUT") {
            s.retry_timeout = Duration::from_secs_f64(number("HPD_S3_RETRY_TIMEOUT", v)?);
        }
        if let Some(v) = var("HPD_S3_TIMEOUT") {
            s.timeout = Duration::from_secs_f64(number("HPD_S3_TIMEOUT", v)?);
        }
        if let Some(v) = var("HPD_S3_CONNECT_TIMEOUT") {
            s.connect_timeout = Duration::from_secs_f64(number("HPD_S3_CONNECT_TIMEOUT", v)?);
        }
        if let Some(v) = var("HPD_S3_PART_SIZE") {
            s.part_size = number("HPD_S3_PART_SIZE", v)? as usize;
        }
        s.check()?;
        Ok(s)
    }

    /// Refuse values that cannot work.
    pub fn check(&self) -> Result<(), StoreError> {
        if self.max_concurrency == 0 {
            return Err(StoreError::config("", "max_concurrency must be at least 1".into()));
        }
        if self.part_size < MIN_PART_SIZE {
            return Err(StoreError::config(
                "",
                format!("part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum), not {}", self.part_size),
            ));
        }
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(StoreError::config("", "timeouts must be positive".into()));
        }
        Ok(())
    }
}

static SETTINGS: Mutex<Option<Settings>> = Mutex::new(None);

/// The settings in force (read from the environment on first use; a bad
/// variable is reported by [`try_settings`] and ignored here).
pub fn settings() -> Settings {
    try_settings().unwrap_or_default()
}

/// The settings in force, or why the `HPD_S3_*` variables are refused.
pub fn try_settings() -> Result<Settings, StoreError> {
    let mut guard = SETTINGS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = guard.as_ref() {
        return Ok(s.clone());
    }
    let s = Settings::from_env()?;
    *guard = Some(s.clone());
    Ok(s)
}

/// Use `new` from now on in this process: the clients are rebuilt on their
/// next use (requests in flight finish under the old settings).
pub fn configure(new: Settings) -> Result<(), StoreError> {
    new.check()?;
    *SETTINGS.lock().unwrap_or_else(|e| e.into_inner()) = Some(new);
    reset();
    Ok(())
}

// ---------------------------------------------------------------------------
// Credentials and endpoint

/// The S3 configuration the clients are built with, resolved from the
/// environment and the AWS profile files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub allow_http: bool,
    pub profile: Option<String>,
}

/// `[section]` → key → value of an AWS config or credentials file.
fn parse_ini(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut out: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut section: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.trim().to_owned());
            continue;
        }
        if let (Some(s), Some((k, v))) = (&section, line.split_once('=')) {
            out.entry(s.clone()).or_default().insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    out
}

/// Resolve the configuration from `env` (a lookup of variables) the way the
/// AWS tools do: variables first, then the profile's entries in the
/// credentials file, then in the config file.
pub fn resolve_config(env: &dyn Fn(&str) -> Option<String>) -> Result<S3Config, StoreError> {
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
    let profile_name = var("AWS_PROFILE").or_else(|| var("AWS_DEFAULT_PROFILE"));
    let name = profile_name.clone().unwrap_or_else(|| "default".into());
    let home = var("HOME").map(PathBuf::from);
    let read = |path: Option<PathBuf>| path.and_then(|p| std::fs::read_to_string(p).ok()).map(|t| parse_ini(&t));
    let credentials = read(
        var("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join("credentials"))),
    )
    .unwrap_or_default();
    let config = read(
        var("AWS_CONFIG_FILE").map(PathBuf::from).or_else(|| home.as_ref().map(|h| h.join(".aws").join("config"))),
    )
    .unwrap_or_default();
    let config_section = if name == "default" { "default".to_string() } else { format!("profile {name}") };
    let from_files = |key: &str| -> Option<String> {
        credentials
            .get(&name)
            .and_then(|s| s.get(key))
            .or_else(|| config.get(&config_section).and_then(|s| s.get(key)))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    if profile_name.is_some() && !credentials.contains_key(&name) && !config.contains_key(&config_section) {
        return Err(StoreError::config(
            "",
            format!(
                "AWS_PROFILE names the profile '{name}', which neither ~/.aws/credentials nor ~/.aws/config \
                 (or AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE) defines"
            ),
        ));
    }
    let (access_key_id, secret_access_key, session_token) = if var("AWS_ACCESS_KEY_ID").is_some() {
        (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"), var("AWS_SESSION_TOKEN"))
    } else {
        (from_files("aws_access_key_id"), from_files("aws_secret_access_key"), from_files("aws_session_token"))
    };
    if access_key_id.is_some() != secret_access_key.is_some() {
        return Err(StoreError::config(
            "",
            "only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set (or only one of them in the \
             profile): set both"
                .into(),
        ));
    }
    let region = var("AWS_REGION")
        .or_else(|| var("AWS_DEFAULT_REGION"))
        .or_else(|| from_files("region"))
        .unwrap_or_else(|| "us-east-1".into());
    let endpoint =
        var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL")).or_else(|| from_files("endpoint_url"));
    let allow_http =
        var("AWS_ALLOW_HTTP").is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
    if let Some(e) = &endpoint {
        if e.starts_with("http://") && !allow_http {
            return Err(StoreError::config(
                e,
                format!(
                    "the S3 endpoint '{e}' is plain http; set AWS_ALLOW_HTTP=true to allow unencrypted \
                     connections (a local test server), or use https"
                ),
            ));
        }
        if !e.starts_with("http://") && !e.starts_with("https://") {
            return Err(StoreError::config(e, format!("the S3 endpoint '{e}' is not an http(s):// URL")));
        }
    }
    Ok(S3Config {
        endpoint,
        region,
        access_key_id,
        secret_access_key,
        session_token,
        allow_http,
        profile: profile_name,
    })
}

fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// The configuration of this process's environment.
pub fn current_config() -> Result<S3Config, StoreError> {
    resolve_config(&process_env)
}

fn build_store(bucket: &str, config: &S3Config, s: &Settings) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_region(&config.region)
        .with_allow_http(config.allow_http)
        .with_checksum_algorithm(Checksum::CRC64NVME)
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(10),
                base: 2.0,
            },
            max_retries: s.max_retries,
            retry_timeout: s.retry_timeout,
        })
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(config.allow_http)
                .with_timeout(s.timeout)
                .with_connect_timeout(s.connect_timeout)
                .with_pool_max_idle_per_host(s.max_concurrency.max(8)),
        );
    if let Some(e) = &config.endpoint {
        b = b.with_endpoint(e);
    }
    if let (Some(k), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
        b = b.with_access_key_id(k).with_secret_access_key(secret);
        if let Some(t) = &config.session_token {
            b = b.with_token(t);
        }
    }
    let store = b.build().map_err(|e| {
        StoreError::config(&format!("{SCHEME}{bucket}/"), format!("cannot set up the S3 client for '{bucket}': {e}"))
    })?;
    Ok(Arc::new(store))
}

// ---------------------------------------------------------------------------
// The runtime and clients of this process

struct Shared {
    pid: u32,
    runtime: Arc<tokio::runtime::Runtime>,
    limit: Arc<Semaphore>,
    stores: HashMap<String, Arc<dyn ObjectStore>>,
}

static SHARED: Mutex<Option<Shared>> = Mutex::new(None);

fn with_shared<T>(f: impl FnOnce(&mut Shared) -> T) -> T {
    let mut guard = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    if guard.as_ref().is_some_and(|s| s.pid != pid) {
        // A forked child: the parent's runtime threads and connections are
        // not here. Forget them without running their destructors (which
        // would wait for threads that do not exist).
        std::mem::forget(guard.take());
    }
    let shared = guard.get_or_insert_with(|| {
        let threads = crate::pool::default_threads().clamp(2, 4);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("hpd-encode-io")
            .enable_all()
            .build()
            .expect("cannot start the I/O runtime");
        Shared {
            pid,
            runtime: Arc::new(runtime),
            limit: Arc::new(Semaphore::new(settings().max_concurrency)),
            stores: HashMap::new(),
        }
    });
    f(shared)
}

/// Drop the clients (rebuilt with the current settings and environment on
/// their next use). The runtime is kept.
pub fn reset() {
    with_shared(|s| {
        s.stores.clear();
        s.limit = Arc::new(Semaphore::new(settings().max_concurrency));
    });
}

/// Run `fut` to completion on this process's runtime, from a thread that is
/// not one of the runtime's (the Python thread, a rayon worker).
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let runtime = with_shared(|s| s.runtime.clone());
    runtime.block_on(fut)
}

/// An object (or prefix) to act on: its URL split and shown, its bucket's client, the permits.
struct Target {
    url: ObjectUrl,
    shown: String,
    store: Arc<dyn ObjectStore>,
    limit: Arc<Semaphore>,
}

impl Target {
    fn of(url: &str) -> Result<Self, StoreError> {
        let url = ObjectUrl::parse(url)?;
        let (store, limit) = client(&url.bucket)?;
        Ok(Target { shown: url.url(), url, store, limit })
    }

    /// A local file failure while moving this object.
    fn local(&self, what: String) -> StoreError {
        StoreError { url: self.shown.clone(), status: None, kind: StoreErrorKind::Other, message: what }
    }

    fn failed(&self, op: &str, e: &object_store::Error) -> StoreError {
        StoreError::from_store(op, &self.shown, e)
    }
}

/// The client of `bucket` (built on first use from the environment and the
/// settings then in force; [`reset`] drops them) and the permits.
fn client(bucket: &str) -> Result<(Arc<dyn ObjectStore>, Arc<Semaphore>), StoreError> {
    if let Some(found) = with_shared(|s| s.stores.get(bucket).map(|store| (store.clone(), s.limit.clone()))) {
        return Ok(found);
    }
    let config = current_config()?;
    let s = try_settings()?;
    let store = build_store(bucket, &config, &s)?;
    Ok(with_shared(|shared| {
        let store = shared.stores.entry(bucket.to_owned()).or_insert(store).clone();
        (store, shared.limit.clone())
    }))
}

// ---------------------------------------------------------------------------
// Counters (tests and benchmarks)

static GETS: AtomicU64 = AtomicU64::new(0);
static GET_BYTES: AtomicU64 = AtomicU64::new(0);
static PUTS: AtomicU64 = AtomicU64::new(0);
static PUT_BYTES: AtomicU64 = AtomicU64::new(0);

/// (GET requests, bytes received, PUT requests, bytes sent) by this process so far.
pub fn stats() -> (u64, u64, u64, u64) {
    (
        GETS.load(Ordering::Relaxed),
        GET_BYTES.load(Ordering::Relaxed),
        PUTS.load(Ordering::Relaxed),
        PUT_BYTES.load(Ordering::Relaxed),
    )
}

pub fn reset_stats() {
    for c in [&GETS, &GET_BYTES, &PUTS, &PUT_BYTES] {
        c.store(0, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------
// Objects

/// An object opened for reading: its size and ETag as first seen. Later
/// ranged GETs carry `If-Match` with that ETag, so a replaced object is an
/// error ([`StoreErrorKind::Changed`]), never a mix of two versions.
#[derive(Debug)]
pub struct RemoteObject {
    url: ObjectUrl,
    shown: String,
    store: Arc<dyn ObjectStore>,
    limit: Arc<Semaphore>,
    pub size: u64,
    pub etag: Option<String>,
}

impl RemoteObject {
    /// Open `url`, fetching its last `tail` bytes (which also tell its size
    /// and ETag): one GET.
    pub async fn open(url: &str, tail: u64) -> Result<(Arc<RemoteObject>, u64, Bytes), StoreError> {
        let t = Target::of(url)?;
        let _permit = t.limit.acquire().await.expect("the semaphore is never closed");
        let options = GetOptions { range: Some(GetRange::Suffix(tail)), ..GetOptions::default() };
        let result = t.store.get_opts(&t.url.path(), options).await.map_err(|e| t.failed("GET", &e))?;
        let (meta, range) = (result.meta.clone(), result.range.clone());
        let bytes = result.bytes().await.map_err(|e| t.failed("GET", &e))?;
        GETS.fetch_add(1, Ordering::Relaxed);
        GET_BYTES.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if (bytes.len() as u64) != range.end - range.start {
            return Err(StoreError::truncated(&t.shown, "GET", range.end - range.start, bytes.len() as u64));
        }
        let object = RemoteObject {
            url: t.url,
            shown: t.shown,
            store: t.store,
            limit: t.limit.clone(),
            size: meta.size,
            etag: meta.e_tag,
        };
        Ok((Arc::new(object), range.start, bytes))
    }

    pub fn url(&self) -> &str {
        &self.shown
    }

    /// Bytes `range` of the object: one ranged GET (after a permit).
    pub async fn get_range(&self, range: Range<u64>) -> Result<Bytes, StoreError> {
        let want = range.end - range.start;
        if range.end > self.size {
            return Err(StoreError::truncated(&self.shown, "GET", range.end, self.size));
        }
        let _permit = self.limit.acquire().await.expect("the semaphore is never closed");
        let options = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            if_match: self.etag.clone(),
            ..GetOptions::default()
        };
        let what = format!("GET (bytes {}-{})", range.start, range.end.saturating_sub(1));
        let result = self
            .store
            .get_opts(&self.url.path(), options)
            .await
            .map_err(|e| StoreError::from_store(&what, &self.shown, &e))?;
        let bytes = result.bytes().await.map_err(|e| StoreError::from_store(&what, &self.shown, &e))?;
        GETS.fetch_add(1, Ordering::Relaxed);
        GET_BYTES.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if bytes.len() as u64 != want {
            return Err(StoreError::truncated(&self.shown, &what, want, bytes.len() as u64));
        }
        Ok(bytes)
    }

    /// Fetch `ranges` (any order, may overlap), ranges that touch merged into
    /// one GET, all at once (bounded by the permits): `(start, bytes)` sorted.
    pub async fn get_ranges(&self, ranges: &[Range<u64>]) -> Result<Vec<(u64, Bytes)>, StoreError> {
        let merged = merge_ranges(ranges);
        let fetched = futures_util::future::try_join_all(merged.iter().map(|r| self.get_range(r.clone()))).await?;
        Ok(merged.into_iter().map(|r| r.start).zip(fetched).collect())
    }
}

/// Sort `ranges` and merge those that overlap or touch.
pub fn merge_ranges(ranges: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut sorted: Vec<Range<u64>> = ranges.iter().filter(|r| r.end > r.start).cloned().collect();
    sorted.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(sorted.len());
    for r in sorted {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// A remote object as a parquet `ChunkReader`: reads are served from the
/// buffers fetched ahead when they cover them, by one ranged GET otherwise.
#[derive(Clone)]
pub struct RemoteInput {
    object: Arc<RemoteObject>,
    /// `(start, bytes)`, sorted by start, not overlapping.
    buffers: Arc<Vec<(u64, Bytes)>>,
    /// The first store error a read through this input met (the parquet
    /// reader turns errors into text; this keeps the URL and status).
    failure: Arc<Mutex<Option<StoreError>>>,
}

impl RemoteInput {
    pub fn new(object: Arc<RemoteObject>, buffers: Vec<(u64, Bytes)>) -> Self {
        let mut buffers = buffers;
        buffers.sort_by_key(|(s, _)| *s);
        RemoteInput { object, buffers: Arc::new(buffers), failure: Arc::new(Mutex::new(None)) }
    }

    pub fn object(&self) -> &Arc<RemoteObject> {
        &self.object
    }

    /// The same object with `buffers` (this one's are dropped).
    pub fn with_buffers(&self, buffers: Vec<(u64, Bytes)>) -> Self {
        RemoteInput::new(self.object.clone(), buffers)
    }

    /// The first store error a read met, if any.
    pub fn failure(&self) -> Option<StoreError> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn buffered(&self, start: u64, length: usize) -> Option<Bytes> {
        let end = start.checked_add(length as u64)?;
        let at = self.buffers.partition_point(|(s, _)| *s <= start).checked_sub(1)?;
        let (s, b) = &self.buffers[at];
        (end <= s + b.len() as u64).then(|| b.slice((start - s) as usize..(end - s) as usize))
    }

    /// Bytes `[start, start + length)`, from the buffers or one GET.
    pub fn read(&self, start: u64, length: usize) -> Result<Bytes, StoreError> {
        if let Some(b) = self.buffered(start, length) {
            return Ok(b);
        }
        let result = block_on(self.object.get_range(start..start + length as u64));
        if let Err(e) = &result {
            self.failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| e.clone());
        }
        result
    }
}

impl Length for RemoteInput {
    fn len(&self) -> u64 {
        self.object.size
    }
}

/// A `Read` over a remote object from a position, in [`READ_WINDOW`] GETs.
pub struct RemoteRead {
    input: RemoteInput,
    pos: u64,
    window: Bytes,
}

impl Read for RemoteRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.window.is_empty() {
            let left = self.input.object.size.saturating_sub(self.pos);
            if left == 0 {
                return Ok(0);
            }
            let n = (READ_WINDOW as u64).min(left) as usize;
            self.window = self.input.read(self.pos, n).map_err(std::io::Error::other)?;
        }
        let n = buf.len().min(self.window.len());
        buf[..n].copy_from_slice(&self.window[..n]);
        self.window = self.window.slice(n..);
        self.pos += n as u64;
        Ok(n)
    }
}

impl ChunkReader for RemoteInput {
    type T = RemoteRead;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(RemoteRead { input: self.clone(), pos: start, window: Bytes::new() })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.read(start, length).map_err(|e| ParquetError::External(Box::new(e)))
    }
}

// ---------------------------------------------------------------------------
// One input for both stores

/// Where the reader reads a part file's bytes from.
#[derive(Clone)]
pub enum Input {
    Local(PosFile),
    Remote(RemoteInput),
}

/// Identity of a file as opened: a changed file is reopened, never read through a stale footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Local { dev: u64, ino: u64, len: u64, mtime_ns: i128 },
    Remote { size: u64, etag: Option<String> },
}

/// The identity of a local file from its metadata.
pub fn local_identity(meta: &std::fs::Metadata) -> Identity {
    use std::os::unix::fs::MetadataExt;
    Identity::Local {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
    }
}

/// Why an input cannot be opened: a local file's error (missing, unreadable,
/// not a regular file) or a store error.
#[derive(Debug)]
pub enum OpenError {
    Local(crate::error::Error),
    Store(StoreError),
}

impl Input {
    /// Open `path` (a local path or an `s3://` URL): a local file is opened
    /// without blocking and refused unless it is a regular file
    /// ([`crate::image::safe_open::open_regular`]: a FIFO named like a part
    /// file is never waited on); a remote object's last
    /// [`TAIL_BYTES`] are fetched (its footer, usually).
    pub fn open(path: &Path) -> Result<(Input, Identity), OpenError> {
        if let Some(url) = path.to_str().filter(|p| is_remote(p)) {
            let (object, start, tail) = block_on(RemoteObject::open(url, TAIL_BYTES)).map_err(OpenError::Store)?;
            let identity = Identity::Remote { size: object.size, etag: object.etag.clone() };
            return Ok((Input::Remote(RemoteInput::new(object, vec![(start, tail)])), identity));
        }
        let (file, meta) = crate::image::safe_open::open_regular(path).map_err(OpenError::Local)?;
        Ok((Input::Local(PosFile::new(file, meta.len())), local_identity(&meta)))
    }

    pub fn remote(&self) -> Option<&RemoteInput> {
        match self {
            Input::Remote(r) => Some(r),
            Input::Local(_) => None,
        }
    }

    /// The store error behind a failed read of a remote input, if that was the cause.
    pub fn failure(&self) -> Option<StoreError> {
        self.remote().and_then(RemoteInput::failure)
    }
}

impl Length for Input {
    fn len(&self) -> u64 {
        match self {
            Input::Local(f) => f.len(),
            Input::Remote(r) => r.len(),
        }
    }
}

/// A `Read` from a position of an [`Input`].
pub enum InputRead {
    Local(BufReader<PosReader>),
    Remote(RemoteRead),
}

impl Read for InputRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            InputRead::Local(r) => r.read(buf),
            InputRead::Remote(r) => r.read(buf),
        }
    }
}

impl ChunkReader for Input {
    type T = InputRead;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(match self {
            Input::Local(f) => InputRead::Local(f.get_read(start)?),
            Input::Remote(r) => InputRead::Remote(r.get_read(start)?),
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        match self {
            Input::Local(f) => f.get_bytes(start, length),
            Input::Remote(r) => r.get_bytes(start, length),
        }
    }
}

// ---------------------------------------------------------------------------
// Listing, whole objects, uploads (push, repack, manifests)

/// What a HEAD tells of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub url: String,
    pub size: u64,
    pub etag: Option<String>,
    /// User metadata (`x-amz-meta-*`), keys without the prefix.
    pub metadata: Vec<(String, String)>,
}

/// The objects directly under the prefix `url` (`s3://bucket/dir` or
/// `s3://bucket/dir/`; not those in deeper "directories"), as
/// `(url, size)` sorted by URL. One LIST request per 1,000 objects.
pub fn list(url: &str) -> Result<Vec<(String, u64)>, StoreError> {
    let t = Target::of(url)?;
    let prefix = t.url.key.trim_end_matches('/');
    let bucket = &t.url.bucket;
    let shown = format!("{SCHEME}{bucket}/{prefix}{}", if prefix.is_empty() { "" } else { "/" });
    let path = (!prefix.is_empty()).then(|| ObjectPath::from(prefix));
    let listed =
        block_on(t.store.list_with_delimiter(path.as_ref())).map_err(|e| StoreError::from_store("LIST", &shown, &e))?;
    let mut out: Vec<(String, u64)> =
        listed.objects.into_iter().map(|m| (format!("{SCHEME}{bucket}/{}", m.location), m.size)).collect();
    out.sort();
    Ok(out)
}

/// HEAD `url`: `None` when there is no such object.
pub fn head(url: &str) -> Result<Option<ObjectInfo>, StoreError> {
    let t = Target::of(url)?;
    block_on(async {
        let _permit = t.limit.acquire().await.expect("the semaphore is never closed");
        let options = GetOptions { head: true, ..GetOptions::default() };
        let r = match t.store.get_opts(&t.url.path(), options).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(t.failed("HEAD", &e)),
        };
        let metadata = r.attributes.iter().filter_map(|(k, v)| match k {
            Attribute::Metadata(key) => Some((key.to_string(), v.to_string())),
            _ => None,
        });
        Ok(Some(ObjectInfo {
            url: t.shown.clone(),
            size: r.meta.size,
            etag: r.meta.e_tag,
            metadata: metadata.collect(),
        }))
    })
}

/// Stream the whole object at `url` into `sink` (chunk by chunk); its size.
fn get_into(t: &Target, sink: &mut dyn FnMut(&[u8]) -> Result<(), StoreError>) -> Result<u64, StoreError> {
    block_on(async {
        let _permit = t.limit.acquire().await.expect("the semaphore is never closed");
        let result = t.store.get(&t.url.path()).await.map_err(|e| t.failed("GET", &e))?;
        let size = result.meta.size;
        let mut stream = result.into_stream();
        let mut got = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| t.failed("GET", &e))?;
            got += chunk.len() as u64;
            sink(&chunk)?;
        }
        GETS.fetch_add(1, Ordering::Relaxed);
        GET_BYTES.fetch_add(got, Ordering::Relaxed);
        if got != size {
            return Err(StoreError::truncated(&t.shown, "GET", size, got));
        }
        Ok(size)
    })
}

/// The whole object at `url` (small objects: manifests, summaries).
pub fn get(url: &str) -> Result<Bytes, StoreError> {
    let t = Target::of(url)?;
    let mut data = Vec::new();
    get_into(&t, &mut |chunk| {
        data.extend_from_slice(chunk);
        Ok(())
    })?;
    Ok(data.into())
}

/// Copy the object at `url` into the local file `dest` (written whole, then
/// fsynced), streaming; returns its size.
pub fn download(url: &str, dest: &Path) -> Result<u64, StoreError> {
    use std::io::Write;
    let t = Target::of(url)?;
    let io = |e: std::io::Error| t.local(format!("cannot write '{}' (downloading {}): {e}", dest.display(), t.shown));
    let mut out = std::io::BufWriter::with_capacity(1 << 20, File::create(dest).map_err(io)?);
    let size = get_into(&t, &mut |chunk| out.write_all(chunk).map_err(io))?;
    out.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)?;
    Ok(size)
}

/// Store `data` at `url` in one PUT (with `attributes`); the ETag.
fn put_with(t: &Target, data: Bytes, attributes: Attributes) -> Result<Option<String>, StoreError> {
    let n = data.len() as u64;
    let options = PutOptions { attributes, ..PutOptions::default() };
    let r = block_on(async {
        let _permit = t.limit.acquire().await.expect("the semaphore is never closed");
        t.store.put_opts(&t.url.path(), PutPayload::from_bytes(data), options).await
    })
    .map_err(|e| t.failed("PUT", &e))?;
    PUTS.fetch_add(1, Ordering::Relaxed);
    PUT_BYTES.fetch_add(n, Ordering::Relaxed);
    Ok(r.e_tag)
}

/// Store `data` at `url` in one PUT; the ETag.
pub fn put(url: &str, data: Bytes) -> Result<Option<String>, StoreError> {
    put_with(&Target::of(url)?, data, Attributes::new())
}

/// CRC-64/NVME of bytes, as `push` records it (16 hex digits).
pub fn crc64_hex(value: u64) -> String {
    format!("{value:016x}")
}

/// A local file to upload or checksum, opened without blocking: a FIFO or device is refused
/// ([`crate::image::safe_open::open_regular`]) as an I/O error saying what it is.
fn open_local(path: &Path) -> std::io::Result<File> {
    crate::image::safe_open::open_regular(path).map(|(f, _)| f).map_err(|e| std::io::Error::other(e.to_string()))
}

/// CRC-64/NVME of the file at `path` (read in 8 MiB blocks).
pub fn file_crc64(path: &Path) -> std::io::Result<u64> {
    let mut file = open_local(path)?;
    let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(digest.finalize());
        }
        digest.update(&buf[..n]);
    }
}

/// What [`upload_file`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub size: u64,
    pub etag: Option<String>,
    /// CRC-64/NVME of the content sent, hex (also stored as the object's `hpd-crc64nvme` metadata).
    pub crc64: String,
    /// 0 for a single PUT, else the number of parts.
    pub parts: usize,
}

fn checksum_metadata(crc: &str) -> Attributes {
    let mut attributes = Attributes::new();
    attributes.insert(Attribute::Metadata(CHECKSUM_KEY.into()), AttributeValue::from(crc.to_owned()));
    attributes
}

/// Upload the local file `path` to `url`: one PUT up to
/// [`Settings::part_size`], a multipart upload in parts of that size above
/// (at most 8 parts in flight; an upload that fails is aborted). The
/// CRC-64/NVME of the content is stored as user metadata (`hpd-crc64nvme`);
/// each PUT and part also carries its own CRC-64/NVME checksum header, which
/// S3 checks on arrival. `progress(bytes)` is called as parts are read;
/// `interrupted()` is polled between parts (an interrupted upload is aborted).
pub fn upload_file(
    path: &Path,
    url: &str,
    progress: &mut dyn FnMut(u64),
    interrupted: &mut dyn FnMut() -> bool,
) -> Result<Uploaded, StoreError> {
    let t = Target::of(url)?;
    let s = try_settings()?;
    let io = |e: std::io::Error| t.local(format!("cannot read '{}' (uploading to {}): {e}", path.display(), t.shown));
    let mut file = open_local(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let mut read_block = |n: usize| -> Result<Vec<u8>, StoreError> {
        let mut buf = vec![0u8; n];
        file.read_exact(&mut buf).map_err(io)?;
        Ok(buf)
    };
    if size <= s.part_size as u64 {
        let data = read_block(size as usize)?;
        let crc = crc64_hex(crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, &data));
        let etag = put_with(&t, data.into(), checksum_metadata(&crc))?;
        progress(size);
        return Ok(Uploaded { size, etag, crc64: crc, parts: 0 });
    }
    // The checksum must be known when the upload is created (it is user
    // metadata), so the file is read once for it first: local reads are far
    // faster than the upload.
    let crc = crc64_hex(file_crc64(path).map_err(io)?);
    let options = PutMultipartOptions { attributes: checksum_metadata(&crc), ..PutMultipartOptions::default() };
    let upload = block_on(t.store.put_multipart_opts(&t.url.path(), options))
        .map_err(|e| t.failed("PUT (create multipart upload)", &e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, s.part_size);
    let (mut sent, mut parts) = (0u64, 0usize);
    let max_in_flight = s.max_concurrency.clamp(1, 8);
    let mut send_all = || -> Result<(), StoreError> {
        while sent < size {
            if interrupted() {
                return Err(t.local(format!("upload to {} interrupted; the partial upload was aborted", t.shown)));
            }
            block_on(writer.wait_for_capacity(max_in_flight)).map_err(|e| t.failed("PUT (part)", &e))?;
            let n = (s.part_size as u64).min(size - sent) as usize;
            let block = read_block(n)?;
            // `put` starts the part's upload as a task: inside the runtime.
            block_on(async { writer.put(Bytes::from(block)) });
            sent += n as u64;
            parts += 1;
            PUTS.fetch_add(1, Ordering::Relaxed);
            PUT_BYTES.fetch_add(n as u64, Ordering::Relaxed);
            progress(n as u64);
        }
        Ok(())
    };
    if let Err(e) = send_all() {
        let _ = block_on(writer.abort());
        return Err(e);
    }
    let etag = block_on(writer.finish()).map_err(|e| t.failed("PUT (complete multipart upload)", &e))?.e_tag;
    Ok(Uploaded { size, etag, crc64: crc, parts })
}

/// Delete the object at `url` (no error when it does not exist).
pub fn delete(url: &str) -> Result<(), StoreError> {
    let t = Target::of(url)?;
    match block_on(t.store.delete(&t.url.path())) {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(t.failed("DELETE", &e)),
    }
}

/// Fetch `ranges` of several objects at once (one runtime call; the GETs of
/// all objects share the permits): per object, `(start, bytes)` sorted.
pub fn fetch_all(jobs: &[(Arc<RemoteObject>, Vec<Range<u64>>)]) -> Vec<Result<Vec<(u64, Bytes)>, StoreError>> {
    block_on(futures_util::future::join_all(jobs.iter().map(|(object, ranges)| object.get_ranges(ranges))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_refuse() {
        let u = ObjectUrl::parse("s3://bucket-1/a/b.parquet").unwrap();
        assert_eq!((u.bucket.as_str(), u.key.as_str()), ("bucket-1", "a/b.parquet"));
        assert_eq!(u.url(), "s3://bucket-1/a/b.parquet");
        assert_eq!(ObjectUrl::parse("s3://b").unwrap().key, "");
        for bad in ["s3://", "s3:///key", "s3://Upper/k", "s3://b/a/../k", "s3://b/a//k", "/local/path", "gs://b/k"] {
            let e = ObjectUrl::parse(bad).unwrap_err();
            assert_eq!(e.kind, StoreErrorKind::Config, "{bad}");
        }
        assert!(is_remote("s3://b/k") && !is_remote("/tmp/x") && !is_remote("s3:/b"));
    }

    #[test]
    fn ranges_merge_when_they_touch() {
        let m = merge_ranges(&[10..20, 0..5, 20..30, 40..50, 45..48, 7..7]);
        assert_eq!(m, vec![0..5, 10..30, 40..50]);
    }

    #[test]
    fn statuses_and_codes_are_found_in_messages() {
        assert_eq!(status_in("Server returned non-2xx status code: 503 Service Unavailable: "), Some(503));
        assert_eq!(status_in("no status here"), None);
        assert_eq!(xml_code("<Error><Code>NoSuchBucket</Code></Error>").as_deref(), Some("NoSuchBucket"));
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k: &str| map.get(k).cloned()
    }

    #[test]
    fn config_from_variables_and_profiles() {
        let dir = std::env::temp_dir().join(format!("hpd-store-cfg-{}", std::process::id()));
        let (creds, config) = (dir.join("credentials"), dir.join("config"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&creds, "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n[work]\naws_access_key_id=W\naws_secret_access_key=WS\naws_session_token = WT\n").unwrap();
        std::fs::write(
            &config,
            "[profile work]\nregion = eu-west-3\nendpoint_url = https://s3.example\n[default]\nregion=us-west-2\n",
        )
        .unwrap();
        let files =
            [("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()), ("AWS_CONFIG_FILE", config.to_str().unwrap())];
        let c = resolve_config(&env_of(&files)).unwrap();
        assert_eq!(
            (c.access_key_id.as_deref(), c.region.as_str(), c.endpoint.as_deref()),
            (Some("D"), "us-west-2", None)
        );
        let mut with_profile = files.to_vec();
        with_profile.push(("AWS_PROFILE", "work"));
        let c = resolve_config(&env_of(&with_profile)).unwrap();
        assert_eq!(c.access_key_id.as_deref(), Some("W"));
        assert_eq!(c.session_token.as_deref(), Some("WT"));
        assert_eq!((c.region.as_str(), c.endpoint.as_deref()), ("eu-west-3", Some("https://s3.example")));
        // Variables win over the profile.
        let mut vars = with_profile.clone();
        vars.extend([("AWS_ACCESS_KEY_ID", "E"), ("AWS_SECRET_ACCESS_KEY", "ES"), ("AWS_REGION", "ap-south-1")]);
        let c = resolve_config(&env_of(&vars)).unwrap();
        assert_eq!((c.access_key_id.as_deref(), c.session_token, c.region.as_str()), (Some("E"), None, "ap-south-1"));
        // A profile nobody defines, half a key pair, plain http without AWS_ALLOW_HTTP: refused.
        let mut missing = files.to_vec();
        missing.push(("AWS_PROFILE", "nope"));
        assert!(resolve_config(&env_of(&missing)).unwrap_err().message.contains("'nope'"));
        let half = [("AWS_ACCESS_KEY_ID", "x"), ("HOME", "/nonexistent")];
        assert!(resolve_config(&env_of(&half)).is_err());
        let http = [("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"), ("HOME", "/nonexistent")];
        assert!(resolve_config(&env_of(&http)).unwrap_err().message.contains("AWS_ALLOW_HTTP"));
        let http_ok =
            [("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"), ("AWS_ALLOW_HTTP", "true"), ("HOME", "/nonexistent")];
        assert!(resolve_config(&env_of(&http_ok)).unwrap().allow_http);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
