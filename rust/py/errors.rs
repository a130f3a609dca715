//! The Python exception hierarchy, rooted in `hpd_encode.HpdError`, and the
//! one conversion from the crate's error type.

use pyo3::create_exception;
use pyo3::exceptions::{
    PyException, PyFileNotFoundError, PyMemoryError, PyNotADirectoryError, PyOSError, PyPermissionError, PyValueError,
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

static UNSAFE_PATH: MultiBase = MultiBase {
    name: "UnsafePathError",
    doc: "A metadata path that is absolute or leaves the data root.",
    base: |py| py.get_type::<PyValueError>(),
    ours: hpd_error,
    attrs: &[],
    cell: PyOnceLock::new(),
};
static NOT_REGULAR: MultiBase = MultiBase {
    name: "NotRegularFileError",
    doc: "A FIFO, socket, device or directory where an image file was expected.",
    base: |py| py.get_type::<PyOSError>(),
    ours: hpd_error,
    attrs: &[],
    cell: PyOnceLock::new(),
};
/// A row given to `ParquetWriter.submit` that cannot be written.
pub(crate) static INVALID_ROW: MultiBase = MultiBase {
    name: "InvalidRowError",
    doc: "A submitted row cannot be written. ``field``, ``record_index`` (None when the row has none) \
          and ``position`` (in the submitted list) say which; nothing of that submit() call was queued.",
    base: |py| py.get_type::<PyValueError>(),
    ours: |py| py.get_type::<WriterError>(),
    attrs: &["field", "record_index", "position"],
    cell: PyOnceLock::new(),
};
static OUT_OF_MEMORY: MultiBase = MultiBase {
    name: "OutOfMemoryError",
    doc: "A batch or image that this machine's memory cannot hold (refused, not an abort).",
    base: |py| py.get_type::<PyMemoryError>(),
    ours: hpd_error,
    attrs: &[],
    cell: PyOnceLock::new(),
};

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

    fn err(&self, msg: String) -> PyErr {
        Python::attach(|py| match self.get(py) {
            Ok(ty) => PyErr::from_type(ty.clone(), msg),
            Err(e) => e,
        })
    }
}

/// An exception class defined on the Python side (`hpd_encode.errors`, e.g.
/// `PartFileError`), looked up when raised; if even that fails, the lookup's
/// own error is raised.
pub(crate) fn python_error(name: &str, msg: String) -> PyErr {
    Python::attach(|py| {
        let class = py
            .import("hpd_encode.errors")
            .and_then(|m| m.getattr(name))
            .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
        match class {
            Ok(class) => PyErr::from_type(class, msg),
            Err(e) => e,
        }
    })
}

/// Add the two-base classes to the module.
pub fn add_multi_base_errors(m: &Bound<'_, PyModule>) -> PyResult<()> {
    for class in [&UNSAFE_PATH, &NOT_REGULAR, &OUT_OF_MEMORY, &INVALID_ROW] {
        m.add(class.name, class.get(m.py())?)?;
    }
    Ok(())
}

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        let msg = e.to_string();
        match e {
            Error::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
                std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(msg),
                _ if source.raw_os_error() == Some(libc::ENOTDIR) => PyNotADirectoryError::new_err(msg),
                _ => PyOSError::new_err(msg),
            },
            Error::Image { failure: ImageFailure::TooLarge { .. } | ImageFailure::FileTooLarge { .. }, .. } => {
                ImageTooLargeError::new_err(msg)
            }
            Error::Image { failure: ImageFailure::OutOfMemory { .. }, .. } => OUT_OF_MEMORY.err(msg),
            Error::Image { .. } => ImageDecodeError::new_err(msg),
            Error::UnsafePath { .. } => UNSAFE_PATH.err(msg),
            Error::NotRegular { .. } => NOT_REGULAR.err(msg),
            Error::OutOfMemory { .. } => OUT_OF_MEMORY.err(msg),
            Error::InvalidArgument(_) => PyValueError::new_err(msg),
            Error::Writer(_) => WriterError::new_err(msg),
            Error::Parquet { .. } => PyValueError::new_err(msg),
            Error::PartFile { .. } => python_error("PartFileError", msg),
        }
    }
}
