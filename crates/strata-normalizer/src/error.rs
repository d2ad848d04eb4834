//! The crate's one error type, with a kind callers can match on.

use std::fmt;

/// What went wrong, for callers that branch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A configuration value was rejected by a builder.
    Config,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Config => f.write_str("config"),
        }
    }
}

/// An error from this crate. Analysis itself never fails: bad SQL yields an [`Analysis`](crate::Analysis)
/// whose verdict says why it is not cacheable. Only building a configuration can fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[error("{kind} error: {message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Config, message: message.into() }
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}
