//! The store's error type: a small [`ErrorKind`] to match on, a context string, and the
//! underlying cause when there is one.

use scsi::DeviceError;

/// What went wrong, coarsely; match on this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A volume or snapshot id that does not exist.
    NotFound,
    /// A volume or snapshot id that is already taken.
    Exists,
    /// The operation conflicts with the object's state (clones depend on it, shrink, …).
    Conflict,
    /// A parameter is out of range (size, block size, extent size, reserve, …).
    Invalid,
    /// The pool (or a snapshot reserve) has no room left.
    NoSpace,
    /// The on-disk format was written by a newer version of the store.
    FormatTooNew,
    /// The on-disk state is not what this store wrote.
    Corrupt,
    /// The volume is offline (its snapshot reserve ran out under the offline policy).
    Offline,
    /// The index database failed.
    Index,
    /// A file operation failed.
    Io,
}

/// An error of the store.
#[derive(Debug, thiserror::Error)]
#[error("{kind:?}: {context}")]
pub struct Error {
    /// What went wrong.
    pub kind: ErrorKind,
    /// What the store was doing.
    pub context: String,
    /// The underlying error, if any.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// Result with the store's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        Error {
            kind,
            context: context.into(),
            source: None,
        }
    }
    pub(crate) fn with(
        kind: ErrorKind,
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error {
            kind,
            context: context.into(),
            source: Some(Box::new(source)),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::with(ErrorKind::Io, "file i/o", e)
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::with(ErrorKind::Index, "index database", e)
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<Error> for DeviceError {
    fn from(e: Error) -> Self {
        match e.kind {
            ErrorKind::NoSpace => DeviceError::NoSpace,
            _ => DeviceError::Io(std::io::Error::other(e)),
        }
    }
}
