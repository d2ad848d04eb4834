//! The invalidator's background task: the side connection and the publication, a temporary slot
//! and its stream, heartbeats, the health it reports, and retries with backoff.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use strata_normalizer::WriteEffect;
use tokio::task::JoinHandle;

use super::decode::{self, Message, RelationMap};
use super::transaction::Transaction;
use super::{WalConfig, FIRST_RETRY, HEARTBEAT_PREFIX, MAX_RETRY, WARN_EVERY};
use crate::metrics::WalGauges;
use crate::QueryCache;

/// Why a session ended.
#[derive(Debug)]
enum Failure {
    /// The publication is missing and could not be created.
    Publication(String),
    /// Anything else: connecting, the slot, the stream, a bump.
    Stream(String),
}

impl Failure {
    fn message(&self) -> &str {
        match self {
            Self::Publication(m) | Self::Stream(m) => m,
        }
    }

    /// What the operator should change, when the error says.
    fn hint(&self, config: &WalConfig) -> String {
        let m = self.message();
        if let Self::Publication(_) = self {
            return format!(
                "a superuser must run: CREATE PUBLICATION {} FOR ALL TABLES WITH (publish_via_partition_root = true)",
                config.publication
            );
        }
        if m.contains("wal_level") {
            "set wal_level = logical in postgresql.conf and restart PostgreSQL".to_owned()
        } else if m.contains("replication role") || m.contains("permission denied") || m.contains("42501") {
            format!("grant the role replication: ALTER ROLE {} WITH REPLICATION", config.user)
        } else if m.contains("replication slots are in use") || m.contains("max_replication_slots") {
            "raise max_replication_slots (restart needed) or drop unused slots".to_owned()
        } else if m.contains("max_wal_senders") || m.contains("standby connections") || m.contains("53300") {
            "raise max_wal_senders (restart needed)".to_owned()
        } else if m.contains("pg_hba.conf") {
            format!("allow the role {} to connect to {} in pg_hba.conf", config.user, config.database)
        } else {
            "check that the upstream is reachable".to_owned()
        }
    }
}

/// The task's state across sessions.
pub(super) struct Runner {
    pub(super) config: WalConfig,
    pub(super) cache: QueryCache,
    /// The invalidator's id in the cache's gate.
    pub(super) id: u64,
    pub(super) gauges: WalGauges,
}

/// Makes slot names unique within the process.
static SLOTS: AtomicU64 = AtomicU64::new(0);

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Runner {
    pub(super) async fn run(self) {
        let mut ever_streamed = false;
        let mut backoff = FIRST_RETRY;
        let mut warned: Option<(String, Instant)> = None;
        loop {
            let mut streamed = false;
            let failure = self.session(&mut streamed).await;
            ever_streamed |= streamed;
            if streamed {
                backoff = FIRST_RETRY;
            }
            // Once a stream has been up, only a new stream (and a bump) vouches for versions;
            // before, the cache behaves as if no invalidator were attached.
            self.report(false, !ever_streamed);
            let message = format!("{}: {}", failure.message(), failure.hint(&self.config));
            let now = Instant::now();
            let repeat =
                warned.as_ref().is_some_and(|(m, at)| *m == message && now.duration_since(*at) < WARN_EVERY);
            if !repeat {
                warned = Some((message.clone(), now));
                if ever_streamed {
                    tracing::warn!(error = %message, database = %self.config.database, "strata: the WAL stream is down; the cache is bypassed until it is back");
                } else {
                    tracing::warn!(error = %message, database = %self.config.database, "strata: WAL invalidation cannot run; the cache works without it (only writes through Strata invalidate)");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2).min(MAX_RETRY);
        }
    }

    /// Reports whether the stream is up and whether lookups may be answered.
    fn report(&self, stream_up: bool, open: bool) {
        self.cache.shared.metrics.wal.report(self.id, stream_up, open);
    }

    /// One connection: side connection and publication, slot, stream, until something fails.
    /// `streamed` becomes true once the stream is up.
    async fn session(&self, streamed: &mut bool) -> Failure {
        let config = &self.config;
        let timeout = config.connect_timeout;
        let side = match self.side_connection().await {
            Ok(side) => side,
            Err(failure) => return failure,
        };
        if let Err(failure) = self.ensure_publication(&side).await {
            return failure;
        }
        let slot = format!(
            "{}_{:x}_{:x}_{}",
            config.slot_prefix,
            std::process::id(),
            now_micros() & 0xFFFF_FFFF,
            SLOTS.fetch_add(1, Ordering::Relaxed)
        );
        let replication = pgwire_replication::ReplicationConfig::new(
            config.host.clone(),
            config.user.clone(),
            config.password.clone().unwrap_or_default(),
            config.database.clone(),
            slot.clone(),
            config.publication.clone(),
        )
        .with_port(config.port)
        .with_application_name(config.application_name.clone())
        .with_status_interval(Duration::from_secs(1));
        let stream = |what: &str, e: &dyn fmt::Display| Failure::Stream(format!("{what}: {e}"));
        let mut client = match tokio::time::timeout(
            timeout,
            pgwire_replication::ReplicationClient::connect_gated(replication),
        )
        .await
        {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return stream("cannot connect for replication", &e),
            Err(_) => return Failure::Stream("connecting for replication timed out".to_owned()),
        };
        match tokio::time::timeout(timeout, client.identify_system()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return stream("cannot start a replication session", &e),
            Err(_) => return Failure::Stream("IDENTIFY_SYSTEM timed out".to_owned()),
        }
        let create =
            format!("CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput (SNAPSHOT 'nothing')");
        match tokio::time::timeout(timeout, client.simple_query(&create)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return stream("cannot create a temporary logical replication slot", &e),
            Err(_) => return Failure::Stream("creating the replication slot timed out".to_owned()),
        }
        if let Err(e) = client.start().await {
            return stream("cannot start replication", &e);
        }
        match tokio::time::timeout(timeout, client.wait_started()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return stream("cannot start replication", &e),
            Err(_) => return Failure::Stream("starting replication timed out".to_owned()),
        }
        // Everything committed while no slot existed is lost: invalidate it all before the
        // versions are vouched for again.
        if let Err(e) = self.cache.invalidate(&WriteEffect::Unknown).await {
            return stream("cannot invalidate everything after (re)connecting", &e);
        }
        *streamed = true;
        self.report(true, true);
        tracing::info!(slot = %slot, database = %config.database, publication = %config.publication, "strata: WAL invalidation streaming");

        let side = Arc::new(side);
        let newest_heartbeat = Arc::new(AtomicU64::new(now_micros()));
        // Aborted when the session ends, also when the task is aborted.
        let mut emitter = AbortOnDrop(tokio::spawn(emit_heartbeats(
            side.clone(),
            slot.clone(),
            config.heartbeat_interval,
            timeout,
        )));
        self.stream(&mut client, &slot, &newest_heartbeat, &mut emitter.0).await
    }

    /// The side connection: heartbeats and the publication.
    async fn side_connection(&self) -> Result<tokio_postgres::Client, Failure> {
        let config = &self.config;
        let mut pg = tokio_postgres::Config::new();
        pg.host(&config.host)
            .port(config.port)
            .user(&config.user)
            .dbname(&config.database)
            .application_name(&config.application_name)
            .connect_timeout(config.connect_timeout);
        if let Some(p) = &config.password {
            pg.password(p);
        }
        let (client, connection) =
            match tokio::time::timeout(config.connect_timeout, pg.connect(tokio_postgres::NoTls)).await {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => return Err(Failure::Stream(format!("cannot connect: {}", pg_error(&e)))),
                Err(_) => return Err(Failure::Stream("connecting timed out".to_owned())),
            };
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "strata: WAL side connection ended");
            }
        });
        // A heartbeat commits with a WAL flush, so the walsender decodes it at once.
        match tokio::time::timeout(
            config.connect_timeout,
            client.batch_execute("SET synchronous_commit = on"),
        )
        .await
        {
            Ok(Ok(())) => Ok(client),
            Ok(Err(e)) => {
                Err(Failure::Stream(format!("cannot set up the side connection: {}", pg_error(&e))))
            }
            Err(_) => Err(Failure::Stream("setting up the side connection timed out".to_owned())),
        }
    }

    async fn ensure_publication(&self, side: &tokio_postgres::Client) -> Result<(), Failure> {
        let config = &self.config;
        let timeout = config.connect_timeout;
        let failed =
            |e: &dyn fmt::Display| Failure::Publication(format!("publication {}: {e}", config.publication));
        let exists = "SELECT pubviaroot FROM pg_catalog.pg_publication WHERE pubname = $1";
        let rows = match tokio::time::timeout(timeout, side.query(exists, &[&config.publication])).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => return Err(failed(&pg_error(&e))),
            Err(_) => return Err(failed(&"reading pg_publication timed out")),
        };
        if let Some(row) = rows.first() {
            if !row.try_get::<_, bool>(0).unwrap_or(true) {
                tracing::warn!(publication = %config.publication, "strata: the WAL publication lacks publish_via_partition_root = true: a write to a partition invalidates only the partition's name");
            }
            return Ok(());
        }
        let create = format!(
            "CREATE PUBLICATION {} FOR ALL TABLES WITH (publish_via_partition_root = true)",
            config.publication
        );
        match tokio::time::timeout(timeout, side.batch_execute(&create)).await {
            Ok(Ok(())) => Ok(()),
            // Another process created it meanwhile.
            Ok(Err(e)) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => Ok(()),
            Ok(Err(e)) => Err(failed(&pg_error(&e))),
            Err(_) => Err(failed(&"creating it timed out")),
        }
    }

    /// Applies the stream until it fails.
    async fn stream(
        &self,
        client: &mut pgwire_replication::ReplicationClient,
        slot: &str,
        newest_heartbeat: &AtomicU64,
        emitter: &mut JoinHandle<String>,
    ) -> Failure {
        use pgwire_replication::ReplicationEvent;
        let config = &self.config;
        let mut relations = RelationMap::default();
        let mut transaction: Option<Transaction> = None;
        let mut watchdog = tokio::time::interval(config.heartbeat_interval);
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lagging = false;
        let heartbeat_token = format!("{slot} ");
        loop {
            let event = tokio::select! {
                event = client.recv() => event,
                ended = &mut *emitter => {
                    let why = ended.unwrap_or_else(|e| format!("heartbeat task ended: {e}"));
                    return Failure::Stream(format!("heartbeat failed: {why}"));
                }
                _ = watchdog.tick() => {
                    // No heartbeat for longer than the bound allows: the stream stalls.
                    let since = now_micros().saturating_sub(newest_heartbeat.load(Ordering::Relaxed));
                    let stalled = Duration::from_micros(since).saturating_sub(config.heartbeat_interval);
                    if stalled > config.lag_bound {
                        self.gauges.lag_seconds.set(stalled.as_secs_f64());
                        if !lagging {
                            lagging = true;
                            self.report(true, false);
                            tracing::debug!(stalled = ?stalled, "strata: no WAL heartbeat within the lag bound; bypassing");
                        }
                    }
                    continue;
                }
            };
            let event = match event {
                Ok(Some(event)) => event,
                Ok(None) => return Failure::Stream("the replication stream ended".to_owned()),
                Err(e) => return Failure::Stream(format!("the replication stream failed: {e}")),
            };
            match event {
                ReplicationEvent::Begin { .. } => transaction = Some(Transaction::default()),
                ReplicationEvent::XLogData { data, .. } => match decode::decode(&data) {
                    Ok(Message::Relation(relation)) => relations.remember(relation),
                    Ok(message) => match transaction.as_mut() {
                        Some(t) => t.apply(&relations, &message),
                        None => {
                            // pgoutput sends changes only between B and C: something was lost.
                            tracing::warn!(
                                "strata: WAL change outside a transaction; invalidating everything"
                            );
                            if let Err(e) = self.cache.invalidate(&WriteEffect::Unknown).await {
                                return Failure::Stream(format!("cannot invalidate: {e}"));
                            }
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "strata: undecodable WAL message; invalidating everything");
                        match transaction.as_mut() {
                            Some(t) => t.unknown = true,
                            None => {
                                if let Err(e) = self.cache.invalidate(&WriteEffect::Unknown).await {
                                    return Failure::Stream(format!("cannot invalidate: {e}"));
                                }
                            }
                        }
                    }
                },
                ReplicationEvent::Commit { end_lsn, .. } => {
                    let effect = transaction.take().map_or(WriteEffect::Nothing, |t| t.effect());
                    if let Err(e) = self.cache.invalidate(&effect).await {
                        // The bump is lost: reconnecting bumps everything.
                        return Failure::Stream(format!("cannot invalidate a committed write: {e}"));
                    }
                    client.update_applied_lsn(end_lsn);
                }
                ReplicationEvent::Message { prefix, content, .. } if prefix == HEARTBEAT_PREFIX => {
                    let Some(sent) = std::str::from_utf8(&content)
                        .ok()
                        .and_then(|c| c.strip_prefix(heartbeat_token.as_str()))
                        .and_then(|micros| micros.parse::<u64>().ok())
                    else {
                        // Another invalidator's heartbeat.
                        continue;
                    };
                    newest_heartbeat.fetch_max(sent, Ordering::Relaxed);
                    let lag = Duration::from_micros(now_micros().saturating_sub(sent));
                    self.gauges.lag_seconds.set(lag.as_secs_f64());
                    let over = lag > config.lag_bound;
                    if over != lagging {
                        lagging = over;
                        self.report(true, !over);
                        tracing::debug!(lag = ?lag, bypassing = over, "strata: WAL lag crossed its bound");
                    }
                }
                _ => {}
            }
        }
    }
}

/// A task that ends with its handle.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Emits a heartbeat every `interval` until one fails; returns why.
async fn emit_heartbeats(
    side: Arc<tokio_postgres::Client>,
    slot: String,
    interval: Duration,
    timeout: Duration,
) -> String {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Transactional: its commit (with synchronous_commit on) flushes the WAL, so the walsender
        // decodes it at once; a non-transactional message waits for the WAL writer on PG 15/16.
        let sql = format!(
            "SELECT pg_catalog.pg_logical_emit_message(true, '{HEARTBEAT_PREFIX}', '{slot} {}')",
            now_micros()
        );
        match tokio::time::timeout(timeout, side.batch_execute(&sql)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return pg_error(&e),
            Err(_) => return "a heartbeat timed out".to_owned(),
        }
    }
}

fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}
