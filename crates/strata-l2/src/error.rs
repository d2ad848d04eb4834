//! The warm tier's error type, with a kind callers (and storage implementors) can match on.

use std::borrow::Cow;
use std::fmt;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What kind of error occurred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A configuration value is invalid.
    Config,
    /// The storage cannot be reached, refused the call, or the circuit breaker is open.
    Unavailable,
    /// The storage did not answer within the deadline.
    Timeout,
    /// The storage answered but refused the command (Redis out of memory, read-only replica,
    /// missing permission). It is up, so this does not count towards the circuit breaker.
    Rejected,
    /// A stored value could not be decoded.
    Codec,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Config => "config",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Codec => "codec",
        })
    }
}

/// An error from the warm tier or one of its storages.
///
/// Lookups and writes through [`WarmTier`](crate::WarmTier) never return it (they fail open);
/// it comes from building a tier or a storage, from `remove`/`clear`, and from [`Storage`](crate::Storage)
/// implementations, which create it with [`Error::new`].
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    #[source]
    source: Option<BoxError>,
}

impl Error {
    /// An error of `kind` with a lowercase message without a final period.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self { kind, message: message.into(), source: None }
    }

    /// Attaches the underlying error (the backend's own error).
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn config(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Config, message)
    }
}

impl From<Error> for strata_core::Error {
    fn from(err: Error) -> Self {
        let kind = match err.kind {
            ErrorKind::Config => strata_core::ErrorKind::Config,
            ErrorKind::Unavailable | ErrorKind::Rejected => strata_core::ErrorKind::Unavailable,
            ErrorKind::Timeout => strata_core::ErrorKind::Timeout,
            ErrorKind::Codec => strata_core::ErrorKind::Codec,
        };
        strata_core::Error::new(kind, err.message.clone()).with_source(err)
    }
}
