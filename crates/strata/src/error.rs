//! The integration crate's error type.

/// What kind of error occurred.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A configuration value is invalid.
    Config,
    /// A backing service (Redis for shared versions or L2) is unreachable.
    Unavailable,
    /// A call did not finish within its deadline.
    Timeout,
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error from [`QueryCache`](crate::QueryCache).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<BoxError>,
}

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Config, message: message.into(), source: None }
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl From<strata_core::Error> for Error {
    fn from(err: strata_core::Error) -> Self {
        let kind = match err.kind() {
            strata_core::ErrorKind::Config => ErrorKind::Config,
            strata_core::ErrorKind::Timeout => ErrorKind::Timeout,
            _ => ErrorKind::Unavailable,
        };
        Self { kind, message: err.message().to_owned(), source: Some(Box::new(err)) }
    }
}
