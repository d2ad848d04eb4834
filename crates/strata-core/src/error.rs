//! The one error type of the tier contract, with a kind callers can match on.

use std::borrow::Cow;
use std::fmt;

/// What went wrong, in a form a caller can match on.
///
/// A miss is never an error: tiers return `Ok(None)` for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The backing store cannot be reached or refused the call.
    Unavailable,
    /// The call did not finish within its deadline.
    Timeout,
    /// A stored value or a message could not be encoded or decoded.
    Codec,
    /// A configuration value is invalid.
    Config,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Codec => "codec",
            ErrorKind::Config => "config",
        })
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error from a cache tier.
///
/// Messages are lowercase with no final period; the backend's own error, when there is one,
/// is kept as the [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    #[source]
    source: Option<BoxError>,
}

impl Error {
    /// An error of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self { kind, message: message.into(), source: None }
    }

    /// Attaches the underlying error.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the kind prefix.
    pub fn message(&self) -> &str {
        &self.message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_kind_and_message_and_keeps_source() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = Error::new(ErrorKind::Unavailable, "redis connection refused").with_source(io);
        assert_eq!(err.to_string(), "unavailable: redis connection refused");
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        let source = std::error::Error::source(&err).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("refused"));
    }
}
