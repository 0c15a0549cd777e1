//! The host crate's error type: a small [`ErrorKind`] to match on, a context string saying
//! what was being done, and the underlying cause when there is one.

use std::fmt;

/// What went wrong, coarsely; match on this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    /// a file or process operation failed
    #[error("a file or process operation failed")]
    Io,
    /// could not connect to the QMP socket
    #[error("could not connect to the QMP socket")]
    Connect,
    /// the peer does not speak QMP as expected
    #[error("the peer does not speak QMP as expected")]
    Protocol,
    /// QEMU refused a QMP command
    #[error("QEMU refused a QMP command")]
    Command,
    /// the QMP connection is closed
    #[error("the QMP connection is closed")]
    Disconnected,
    /// the operation timed out
    #[error("the operation timed out")]
    Timeout,
    /// the VM definition or a parameter is invalid
    #[error("the VM definition or a parameter is invalid")]
    Invalid,
    /// the QEMU process exited
    #[error("the QEMU process exited")]
    Exited,
    /// no such process, device or disk
    #[error("no such process, device or disk")]
    NotFound,
    /// no free hotplug slot is left
    #[error("no free hotplug slot is left")]
    NoSlot,
}

/// An error of the host crate.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {kind}")]
pub struct Error {
    /// What went wrong.
    pub kind: ErrorKind,
    /// What was being done.
    pub context: String,
    /// The underlying error, if any.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// Result with the host crate's [`Error`].
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

    /// The QMP error (class and description) when QEMU refused a command.
    pub fn qmp(&self) -> Option<&QmpError> {
        self.source.as_ref()?.downcast_ref::<QmpError>()
    }
}

/// An error reply of QEMU to a QMP command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpError {
    /// QMP's error class (`GenericError`, `CommandNotFound`, `DeviceNotFound`, …).
    pub class: String,
    /// QEMU's human-readable description.
    pub desc: String,
}

impl fmt::Display for QmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.desc)
    }
}

impl std::error::Error for QmpError {}
