//! The crate's one error type. Per-item image failures carry the file they
//! concern; the Python layer maps each kind to an exception class.

use std::fmt;

/// Why one image could not be probed or loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageFailure {
    /// The file has no bytes at all.
    Empty,
    /// The bytes are not an image format we recognise.
    NotAnImage(String),
    /// A recognised format that this build does not decode.
    Unsupported(String),
    /// The stream ends before the image does.
    Truncated(String),
    /// Any other decoder complaint.
    Corrupt(String),
    /// The header announces more pixels than the configured limit.
    TooLarge { width: u64, height: u64, limit: u64 },
    /// The decoder panicked; caught and turned into this item's error.
    Panic(String),
    /// The file is larger than the byte limit (refused from its size, unread).
    FileTooLarge { size: u64, limit: u64 },
    /// Decoding would need more memory than this machine has.
    OutOfMemory { bytes: u64, available: u64 },
}

impl fmt::Display for ImageFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "file is empty (0 bytes)"),
            Self::NotAnImage(what) => write!(f, "not an image ({what})"),
            Self::Unsupported(what) => write!(f, "unsupported image format: {what}"),
            Self::Truncated(what) => {
                write!(f, "truncated image data ({what}); the file is incomplete, re-download or re-extract it")
            }
            Self::Corrupt(what) => write!(f, "corrupt image data ({what})"),
            Self::TooLarge { width, height, limit } => write!(
                f,
                "image is {width}x{height} = {} pixels, over the limit of {limit} pixels \
                 (refused from the header; raise max_pixels to load it)",
                width * height
            ),
            Self::Panic(msg) => write!(f, "the decoder crashed on this file (caught panic: {msg})"),
            Self::FileTooLarge { size, limit } => write!(
                f,
                "file is {size} bytes, over the limit of {limit} bytes for an image file \
                 (refused before reading; raise max_file_bytes to load it)"
            ),
            Self::OutOfMemory { bytes, available } => write!(
                f,
                "decoding it needs about {bytes} bytes of memory, more than this machine's {available} bytes \
                 (RAM and swap)"
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read '{path}': {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load '{path}': {failure}")]
    Image { path: String, failure: ImageFailure },
    /// A metadata path refused as unsafe (absolute, `..`, leaving the data
    /// root); `message` is the reason, naming the path as given.
    #[error("{message}")]
    UnsafePath { path: String, message: String },
    /// A FIFO, socket, device or directory where a file (an image, a part file) was expected.
    #[error("cannot read '{path}': not a regular file ({what}); only regular files are read")]
    NotRegular { path: String, what: &'static str },
    /// An allocation that cannot succeed (or failed): raised, never an abort.
    #[error(
        "not enough memory: {what} needs {bytes} bytes, and this machine has {available} bytes of RAM and swap \
         (refused before allocating)"
    )]
    OutOfMemory { what: String, bytes: u128, available: u64 },
    /// An allocation larger than the memory available now ([`crate::pool::available_memory`]):
    /// it might succeed on paper, then fault the machine into swap or the OOM killer.
    #[error(
        "not enough memory: {what} needs {bytes} bytes, more than the {available} bytes available now \
         (MemAvailable, or the cgroup's limit less its usage); use a smaller batch or free memory \
         (refused before allocating)"
    )]
    MemoryUnavailable { what: String, bytes: u128, available: u64 },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("parquet writer: {0}")]
    Writer(String),
    #[error("cannot read the Parquet footer of '{path}': {message}")]
    Parquet { path: String, message: String },
    /// A request to the object store failed (names the URL and HTTP status).
    #[error("{0}")]
    Store(crate::parts::store::StoreError),
    /// A part file (or a value in it) that cannot be used as it is: damaged,
    /// or not a part file; `message` says where and what to do.
    #[error("'{path}': {message}")]
    PartFile { path: String, message: String },
}

impl Error {
    pub fn image(path: impl Into<String>, failure: ImageFailure) -> Self {
        Error::Image { path: path.into(), failure }
    }
    pub fn io(path: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
