//! Errors of the control plane.

use std::error::Error as StdError;
use std::fmt;

/// What went wrong, coarsely: callers (the REST API) map each kind to a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    /// No leader could be found or reached before the deadline; the group may have lost its
    /// quorum or be electing. Retrying later is safe: the command was not applied.
    #[error("no leader available")]
    NoLeader,
    /// A forwarded write failed after it may have reached the leader: it may or may not have
    /// been applied. Retrying can apply it twice.
    #[error("outcome unknown")]
    Indeterminate,
    /// The local Raft storage (log database or snapshot files) failed.
    #[error("storage failure")]
    Storage,
    /// Talking to another member failed.
    #[error("network failure")]
    Network,
    /// Raft refused the request (for example an invalid membership change).
    #[error("refused by raft")]
    Refused,
    /// The control plane is shut down (or its Raft core stopped).
    #[error("control plane shut down")]
    Shutdown,
    /// The configuration is invalid.
    #[error("invalid configuration")]
    Config,
}

/// An error of the control plane: a [`kind`](ErrorKind), what was being done, and the cause.
#[derive(thiserror::Error)]
#[error("{context}: {kind}")]
pub struct ControlError {
    kind: ErrorKind,
    context: String,
    #[source]
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl ControlError {
    /// An error of `kind` while doing `context`, without an underlying cause.
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        Self {
            kind,
            context: context.into(),
            source: None,
        }
    }

    /// An error of `kind` while doing `context`, caused by `source`.
    pub fn with_source(
        kind: ErrorKind,
        context: impl Into<String>,
        source: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            kind,
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// The coarse kind of the error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// What was being done when the error happened.
    pub fn context(&self) -> &str {
        &self.context
    }
}

impl fmt::Debug for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&chain(self))
    }
}

/// An error and its causes, as one line: `error: cause: cause`.
pub(crate) fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// An [`openraft::AnyError`] whose message is the whole cause chain of `e` (openraft logs
/// only the top message).
pub(crate) fn any_error(e: &(dyn StdError + 'static)) -> openraft::AnyError {
    openraft::AnyError::error(chain(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_debug_chain() {
        let io = std::io::Error::other("disk on fire");
        let e = ControlError::with_source(ErrorKind::Storage, "opening raft.redb", io);
        assert_eq!(e.kind(), ErrorKind::Storage);
        assert_eq!(e.to_string(), "opening raft.redb: storage failure");
        assert!(format!("{e:?}").ends_with("disk on fire"));
        assert!(e.source().is_some());
    }
}
