//! The Python exception hierarchy, rooted in `hpd_encode.HpdError`, and the
//! one conversion from the crate's error type.

use pyo3::create_exception;
use pyo3::exceptions::{
    PyException, PyFileNotFoundError, PyIndexError, PyMemoryError, PyNotADirectoryError, PyOSError, PyPermissionError,
    PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};
use pyo3::PyErr;

use crate::error::{Error, ImageFailure};

create_exception!(hpd_encode._core, HpdError, PyException, "Base class of hpd-encode's errors.");
create_exception!(hpd_encode._core, ImageDecodeError, HpdError, "An image could not be decoded.");
create_exception!(hpd_encode._core, ImageTooLargeError, ImageDecodeError, "An image is over the pixel limit.");
create_exception!(hpd_encode._core, WriterError, HpdError, "The Parquet writer failed.");

/// The errors that are an `HpdError` *and* keep a built-in base, so that
/// `except ValueError` / `except OSError` / `except MemoryError` still
/// catch them: classes with two bases, which `create_exception!` cannot
/// make, built once with `type(name, bases, namespace)`.
pub(crate) struct MultiBase {
    name: &'static str,
    doc: &'static str,
    /// The hpd-encode base (`HpdError` or one of its subclasses).
    ours: fn(Python<'_>) -> Bound<'_, PyType>,
    base: fn(Python<'_>) -> Bound<'_, PyType>,
    /// Class attributes, `None` on the class (set on an instance when raised).
    attrs: &'static [&'static str],
    cell: PyOnceLock<Py<PyType>>,
}

fn hpd_error(py: Python<'_>) -> Bound<'_, PyType> {
    py.get_type::<HpdError>()
}

/// A class of two bases, its attributes `None` on the class.
macro_rules! multi_base {
    ($(#[$m:meta])* $vis:vis $id:ident: $name:literal, $ours:expr, $base:ty, $attrs:expr, $doc:literal) => {
        $(#[$m])*
        $vis static $id: MultiBase = MultiBase {
            name: $name,
            doc: $doc,
            ours: $ours,
            base: |py| py.get_type::<$base>(),
            attrs: $attrs,
            cell: PyOnceLock::new(),
        };
    };
}

multi_base!(UNSAFE_PATH: "UnsafePathError", hpd_error, PyValueError, &[],
    "A metadata path that is absolute or leaves the data root.");
multi_base!(NOT_REGULAR: "NotRegularFileError", |py| FILE_ACCESS.get_or_root(py), PyOSError, &[],
    "A FIFO, socket, device or directory where a regular file was expected.");
multi_base!(
    /// A row given to `ParquetWriter.submit` that cannot be written.
    pub(crate) INVALID_ROW: "InvalidRowError", |py| py.get_type::<WriterError>(), PyValueError,
    &["field", "record_index", "position"],
    "A submitted row cannot be written. ``field``, ``record_index`` (None when the row has none) \
     and ``position`` (in the submitted list) say which; nothing of that submit() call was queued.");
multi_base!(OUT_OF_MEMORY: "OutOfMemoryError", hpd_error, PyMemoryError, &[],
    "A batch or image that this machine's memory cannot hold (refused, not an abort).");
multi_base!(pub(crate) OPTION: "OptionError", hpd_error, PyValueError, &[],
    "An option or argument whose value cannot be used; the message names it and what is allowed.");
multi_base!(pub(crate) USAGE: "UsageError", hpd_error, PyTypeError, &[],
    "A call with an unknown or missing argument, or an argument of the wrong type.");
multi_base!(FILE_ACCESS: "FileAccessError", hpd_error, PyOSError, &[],
    "A file or directory that cannot be opened, read or written; the message names it.");
multi_base!(NOT_FOUND: "InputNotFoundError", |py| FILE_ACCESS.get_or_root(py), PyFileNotFoundError, &[],
    "A file or directory that does not exist.");
multi_base!(PERMISSION: "AccessDeniedError", |py| FILE_ACCESS.get_or_root(py), PyPermissionError, &[],
    "A file or directory this process may not open.");
multi_base!(NOT_A_DIR: "PathNotADirectoryError", |py| FILE_ACCESS.get_or_root(py), PyNotADirectoryError, &[],
    "A path that goes through something other than a directory.");
multi_base!(pub(crate) PART_FILE: "PartFileError", hpd_error, PyValueError, &[],
    "A part file, or a value in it, cannot be read (damaged footer or page, malformed ``.npy`` bytes); \
     the message names the file, row group and row.");
multi_base!(pub(crate) OUT_OF_RANGE: "RowOutOfRangeError", hpd_error, PyIndexError, &[],
    "A row group or row that the part file or dataset does not have.");

/// Every two-base class, in the order they are built (a base before its subclasses).
static ALL: [&MultiBase; 12] = [
    &UNSAFE_PATH,
    &FILE_ACCESS,
    &NOT_REGULAR,
    &OUT_OF_MEMORY,
    &INVALID_ROW,
    &OPTION,
    &USAGE,
    &NOT_FOUND,
    &PERMISSION,
    &NOT_A_DIR,
    &PART_FILE,
    &OUT_OF_RANGE,
];

impl MultiBase {
    pub(crate) fn get<'py>(&self, py: Python<'py>) -> PyResult<&Bound<'py, PyType>> {
        let ty = self.cell.get_or_try_init(py, || -> PyResult<Py<PyType>> {
            let bases = PyTuple::new(py, [(self.ours)(py), (self.base)(py)])?;
            let namespace = PyDict::new(py);
            namespace.set_item("__module__", "hpd_encode._core")?;
            namespace.set_item("__doc__", self.doc)?;
            for attr in self.attrs {
                namespace.set_item(*attr, py.None())?;
            }
            let made = py.get_type::<PyType>().call1((self.name, bases, namespace))?;
            Ok(made.cast_into::<PyType>()?.unbind())
        })?;
        Ok(ty.bind(py))
    }

    /// The class, or `HpdError` should building it fail (it never does: the bases are built-ins).
    fn get_or_root<'py>(&self, py: Python<'py>) -> Bound<'py, PyType> {
        self.get(py).cloned().unwrap_or_else(|_| hpd_error(py))
    }

    pub(crate) fn err(&self, msg: impl Into<String>) -> PyErr {
        let msg = msg.into();
        Python::attach(|py| match self.get(py) {
            Ok(ty) => PyErr::from_type(ty.clone(), msg),
            Err(e) => e,
        })
    }
}

/// Add the two-base classes to the module.
pub fn add_multi_base_errors(m: &Bound<'_, PyModule>) -> PyResult<()> {
    for class in ALL {
        m.add(class.name, class.get(m.py())?)?;
    }
    Ok(())
}

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        let msg = e.to_string();
        match e {
            Error::Io { source, .. } => io_error(&source, msg),
            Error::Image { failure: ImageFailure::TooLarge { .. } | ImageFailure::FileTooLarge { .. }, .. } => {
                ImageTooLargeError::new_err(msg)
            }
            Error::Image { failure: ImageFailure::OutOfMemory { .. }, .. } => OUT_OF_MEMORY.err(msg),
            Error::Image { .. } => ImageDecodeError::new_err(msg),
            Error::UnsafePath { .. } => UNSAFE_PATH.err(msg),
            Error::NotRegular { .. } => NOT_REGULAR.err(msg),
            Error::OutOfMemory { .. } => OUT_OF_MEMORY.err(msg),
            Error::InvalidArgument(_) => OPTION.err(msg),
            Error::Writer(_) => WriterError::new_err(msg),
            Error::Parquet { .. } => PART_FILE.err(msg),
        }
    }
}

/// The class for an I/O error: not found, permission denied, not a directory, or any other.
pub(crate) fn io_error(source: &std::io::Error, msg: String) -> PyErr {
    match source.kind() {
        std::io::ErrorKind::NotFound => NOT_FOUND.err(msg),
        std::io::ErrorKind::PermissionDenied => PERMISSION.err(msg),
        _ if source.raw_os_error() == Some(libc::ENOTDIR) => NOT_A_DIR.err(msg),
        _ => FILE_ACCESS.err(msg),
    }
}
