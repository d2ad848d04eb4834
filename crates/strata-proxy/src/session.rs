//! Session state the proxy tracks per client session, and the read-only [`SessionView`] the cache sees.

use std::{collections::BTreeMap, fmt, sync::Arc};

use crate::{effects::Effect, protocol::StartupParams, seam::TransactionStatus};

/// Whether the proxy could follow everything that changes how this session's queries are answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tracking {
    /// Every state change was observed; the view is complete.
    Tracked,
    /// The proxy saw something it cannot follow (the reason); a cache must not serve this session.
    Untracked(String),
}

#[derive(Clone, PartialEq, Eq)]
struct ViewInner {
    session_id: u64,
    database: String,
    user: String,
    startup: Vec<(String, String)>,
    server_parameters: BTreeMap<String, String>,
    transaction_status: TransactionStatus,
    role: Option<String>,
    session_authorization: Option<String>,
    settings: BTreeMap<String, String>,
    tracking: Tracking,
}

/// A snapshot of one session's state: what a cache key must depend on.
///
/// Cloning is cheap (shared); the proxy replaces the snapshot when the state changes.
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
            role: None,
            session_authorization: None,
            settings: BTreeMap::new(),
            tracking: Tracking::Tracked,
        }))
    }

    /// Whether `other` is this very snapshot (not merely an equal one): a cheap way for a cache
    /// to memoize what it derives from a view until the session's state changes.
    pub fn same_snapshot(&self, other: &SessionView) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
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
    /// The role set by `SET ROLE`, if any (otherwise the session user is in effect).
    pub fn role(&self) -> Option<&str> {
        self.0.role.as_deref()
    }
    /// The user set by `SET SESSION AUTHORIZATION`, if any.
    pub fn session_authorization(&self) -> Option<&str> {
        self.0.session_authorization.as_deref()
    }
    /// A setting changed with `SET` in this session (lowercased name, value as written), committed.
    pub fn setting(&self, name: &str) -> Option<&str> {
        self.0.settings.get(name).map(String::as_str)
    }
    /// All settings changed with `SET`, sorted by name.
    pub fn settings(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.settings.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
    /// Whether the view is complete.
    pub fn tracking(&self) -> &Tracking {
        &self.0.tracking
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

    pub(crate) fn mark_untracked(&mut self, reason: &str) {
        if self.0.tracking == Tracking::Tracked {
            self.inner_mut().tracking = Tracking::Untracked(reason.to_owned());
        }
    }

    /// Applies a successfully executed effect.
    pub(crate) fn apply(&mut self, effect: &Effect) {
        let inner = self.inner_mut();
        match effect {
            Effect::Set { name, value } => {
                inner.settings.insert(name.clone(), value.clone());
            }
            Effect::Reset { name } => {
                // The value after RESET is the session default, which is what "no entry" means.
                inner.settings.remove(name);
            }
            Effect::ResetAll => inner.settings.clear(),
            Effect::Role(role) => inner.role = role.clone(),
            Effect::SessionAuthorization(user) => {
                // SET SESSION AUTHORIZATION also resets the current role.
                inner.session_authorization = user.clone();
                inner.role = None;
            }
            Effect::DiscardAll => {
                inner.settings.clear();
                inner.role = None;
                inner.session_authorization = None;
            }
            Effect::SetLocal | Effect::Deallocate(_) => {}
            Effect::Untrackable(reason) => {
                if inner.tracking == Tracking::Tracked {
                    inner.tracking = Tracking::Untracked((*reason).to_owned());
                }
            }
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
            .field("role", &i.role)
            .field("session_authorization", &i.session_authorization)
            .field("settings", &i.settings)
            .field("server_parameters", &i.server_parameters.len())
            .field("tracking", &i.tracking)
            .finish()
    }
}
