//! The Python exception hierarchy, rooted in `hpd_encode.HpdError`, and the
//! one conversion from the crate's error type.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyOSError, PyPermissionError, PyValueError};
use pyo3::PyErr;

use crate::error::{Error, ImageFailure};

create_exception!(hpd_encode._core, HpdError, PyException, "Base class of hpd-encode's errors.");
create_exception!(hpd_encode._core, ImageDecodeError, HpdError, "An image could not be decoded.");
create_exception!(hpd_encode._core, ImageTooLargeError, ImageDecodeError, "An image is over the pixel limit.");
create_exception!(hpd_encode._core, WriterError, HpdError, "The Parquet writer failed.");

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        let msg = e.to_string();
        match e {
            Error::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
                std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(msg),
                _ => PyOSError::new_err(msg),
            },
            Error::Image { failure: ImageFailure::TooLarge { .. }, .. } => ImageTooLargeError::new_err(msg),
            Error::Image { .. } => ImageDecodeError::new_err(msg),
            Error::InvalidArgument(_) => PyValueError::new_err(msg),
            Error::Writer(_) => WriterError::new_err(msg),
            Error::Parquet { .. } => PyValueError::new_err(msg),
        }
    }
}
