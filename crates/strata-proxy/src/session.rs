//! The wire facts the proxy keeps of a client session, as the read-only [`SessionView`] a cache
//! sees when it opens its side of the session.
//!
//! What the session's statements did to its state (settings, role) is deliberately absent: the
//! proxy does not read SQL. The cache reads the state back from PostgreSQL when it needs it.

use std::{collections::BTreeMap, fmt, sync::Arc};

use crate::{protocol::StartupParams, seam::TransactionStatus};

#[derive(Clone, PartialEq, Eq)]
struct ViewInner {
    session_id: u64,
    database: String,
    user: String,
    startup: Vec<(String, String)>,
    server_parameters: BTreeMap<String, String>,
    transaction_status: TransactionStatus,
}

/// A snapshot of one session's wire facts: startup parameters, the parameters the server
/// reported, the transaction status of the last `ReadyForQuery`.
///
/// Cloning is cheap (shared); the proxy replaces the snapshot when a fact changes.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionView(Arc<ViewInner>);

impl SessionView {
    pub(crate) fn new(session_id: u64, startup: &StartupParams) -> Self {
        let user = startup.get("user").unwrap_or_default().to_owned();
        // PostgreSQL defaults the database name to the user name.
        let database = startup.get("database").filter(|d| !d.is_empty()).unwrap_or(&user).to_owned();
        Self(Arc::new(ViewInner {
            session_id,
            database,
            user,
            startup: startup.params.clone(),
            server_parameters: BTreeMap::new(),
            transaction_status: TransactionStatus::Idle,
        }))
    }

    /// The proxy's id of this session (unique within the process).
    pub fn session_id(&self) -> u64 {
        self.0.session_id
    }
    /// The database named in the startup message (defaulting to the user name, as PostgreSQL does).
    pub fn database(&self) -> &str {
        &self.0.database
    }
    /// The user named in the startup message (the authenticated role).
    pub fn user(&self) -> &str {
        &self.0.user
    }
    /// A startup parameter as the client sent it (`options`, `application_name`, ...).
    pub fn startup_parameter(&self, name: &str) -> Option<&str> {
        self.0.startup.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    /// All startup parameters in the order sent.
    pub fn startup_parameters(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.startup.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
    /// A parameter as last reported by the server in ParameterStatus (`TimeZone`, `DateStyle`, ...).
    pub fn server_parameter(&self, name: &str) -> Option<&str> {
        self.0.server_parameters.get(name).map(String::as_str)
    }
    /// All parameters reported by the server, sorted by name.
    pub fn server_parameters(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.server_parameters.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
    /// The transaction status of the last ReadyForQuery.
    pub fn transaction_status(&self) -> TransactionStatus {
        self.0.transaction_status
    }

    fn inner_mut(&mut self) -> &mut ViewInner {
        Arc::make_mut(&mut self.0)
    }

    pub(crate) fn set_server_parameter(&mut self, name: String, value: String) {
        if self.0.server_parameters.get(&name) != Some(&value) {
            self.inner_mut().server_parameters.insert(name, value);
        }
    }

    pub(crate) fn set_transaction_status(&mut self, status: TransactionStatus) {
        if self.0.transaction_status != status {
            self.inner_mut().transaction_status = status;
        }
    }
}

impl fmt::Debug for SessionView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.0;
        f.debug_struct("SessionView")
            .field("session_id", &i.session_id)
            .field("database", &i.database)
            .field("user", &i.user)
            .field("transaction_status", &i.transaction_status)
            .field("server_parameters", &i.server_parameters.len())
            .finish()
    }
}
