//! The invalidator's background task: the side connection and the publication, a temporary slot
//! and its stream, heartbeats, the health it reports, and retries with backoff.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use strata_core::TableName;
use strata_normalizer::WriteEffect;
use tokio::task::JoinHandle;

use super::decode::{self, Message, RelationMap};
use super::lease::{Health, Lease};
use super::transaction::Transaction;
use super::{Target, WalConfig, DDL_PREFIX, FIRST_RETRY, HEARTBEAT_PREFIX, MAX_RETRY, WARN_EVERY};
use crate::keys::WrittenKeys;
use crate::metrics::WalGauges;

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

    /// Whether the server's configuration (not its reachability) stops the stream: changing it
    /// needs an operator.
    fn is_configuration(&self, config: &WalConfig) -> bool {
        !self.hint(config).starts_with("check that")
    }

    /// What the operator should change, when the error says.
    fn hint(&self, config: &WalConfig) -> String {
        let m = self.message();
        if let Self::Publication(_) = self {
            return format!(
                "a superuser (or the tables' owner) must run: CREATE PUBLICATION {0} WITH (publish_via_partition_root = true); COMMENT ON PUBLICATION {0} IS '{MANAGED}'",
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
    pub(super) target: Target,
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
        match self.config.lease.as_ref().map(|l| Lease::new(l, &self.config)) {
            None => self.run_alone().await,
            Some(Ok(lease)) => self.run_leased(lease).await,
            Some(Err(e)) => {
                // Validated when the configuration was built; stay closed rather than guess.
                tracing::error!(error = %e, "strata: the WAL lease cannot be used; the cache is bypassed");
                self.report(false, false);
            }
        }
    }

    /// One invalidator per process: streams for as long as the process lives.
    async fn run_alone(self) {
        let mut ever_streamed = false;
        let mut backoff = FIRST_RETRY;
        let mut warned: Option<(String, Instant)> = None;
        loop {
            let mut streamed = false;
            let failure = self.session(&mut streamed, None).await;
            ever_streamed |= streamed;
            if streamed {
                backoff = FIRST_RETRY;
            }
            // Once a stream has been up, only a new stream (and a bump) vouches for versions;
            // before, the cache behaves as if no invalidator were attached.
            self.report(false, !ever_streamed);
            self.warn(&failure, ever_streamed, &mut warned);
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2).min(MAX_RETRY);
        }
    }

    /// One invalidator per upstream for every process sharing the lease: the holder streams and
    /// publishes its health; the others follow that health and take over when the lease is free.
    async fn run_leased(self, lease: Lease) {
        let mut ever_streamed = false;
        let mut backoff = FIRST_RETRY;
        let mut warned: Option<(String, Instant)> = None;
        loop {
            match lease.acquire().await {
                Ok(true) => {
                    self.gauges.lease_held.set(1);
                    tracing::info!(database = %self.config.database, "strata: holding the WAL lease; this process streams for the fleet");
                    let mut streamed = false;
                    let failure = tokio::select! {
                        failure = self.session(&mut streamed, Some(&lease)) => failure,
                        why = lease.keep() => Failure::Stream(format!("the WAL lease was lost: {why}")),
                    };
                    ever_streamed |= streamed;
                    if streamed {
                        backoff = FIRST_RETRY;
                    }
                    self.gauges.lease_held.set(0);
                    // Followers behave as without an invalidator only when none can ever stream
                    // here; otherwise they bypass until a stream is up again.
                    let off = !ever_streamed && failure.is_configuration(&self.config);
                    if off {
                        let _ = lease.publish(Health::Off).await;
                    } else {
                        lease.withdraw().await;
                    }
                    self.report(false, off);
                    self.warn(&failure, ever_streamed, &mut warned);
                    // Another process may do better (its own network path to the server).
                    lease.release().await;
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2).min(MAX_RETRY);
                }
                Ok(false) => self.follow(&lease).await,
                Err(e) => {
                    // Neither the lease nor (very likely) the shared versions are reachable.
                    self.report(false, false);
                    self.warn(&Failure::Stream(e), ever_streamed, &mut warned);
                    tokio::time::sleep(self.config.heartbeat_interval).await;
                }
            }
        }
    }

    /// Follows the holder's health for one lease period: lookups are answered while it applied a
    /// heartbeat recent enough.
    async fn follow(&self, lease: &Lease) {
        let config = &self.config;
        let until = Instant::now() + lease_period(config);
        while Instant::now() < until {
            match lease.read().await {
                Ok(Some(Health::Up(sent))) => {
                    let since = Duration::from_micros(now_micros().saturating_sub(sent));
                    self.gauges.lag_seconds.set(since.as_secs_f64());
                    // The holder publishes at each heartbeat: as for its own watchdog, one
                    // interval between two of them is not lag.
                    let open = since.saturating_sub(config.heartbeat_interval) <= config.lag_bound;
                    self.report(open, open);
                }
                Ok(Some(Health::Off)) => self.report(false, true),
                Ok(None) | Err(_) => self.report(false, false),
            }
            tokio::time::sleep(config.heartbeat_interval).await;
        }
    }

    /// Logs a failure, at most once per [`WARN_EVERY`] for the same message.
    fn warn(&self, failure: &Failure, ever_streamed: bool, warned: &mut Option<(String, Instant)>) {
        let message = format!("{}: {}", failure.message(), failure.hint(&self.config));
        let now = Instant::now();
        let repeat =
            warned.as_ref().is_some_and(|(m, at)| *m == message && now.duration_since(*at) < WARN_EVERY);
        if repeat {
            return;
        }
        *warned = Some((message.clone(), now));
        if ever_streamed {
            tracing::warn!(error = %message, database = %self.config.database, "strata: the WAL stream is down; the cache is bypassed until it is back");
        } else {
            tracing::warn!(error = %message, database = %self.config.database, "strata: WAL invalidation cannot run; the cache works without it (only writes through Strata invalidate)");
        }
    }

    /// Reports whether the stream is up and whether lookups may be answered.
    fn report(&self, stream_up: bool, open: bool) {
        self.target.cache().shared.metrics.wal.report(self.id, stream_up, open);
    }

    /// One connection: side connection and publication, slot, stream, until something fails.
    /// `streamed` becomes true once the stream is up.
    async fn session(&self, streamed: &mut bool, lease: Option<&Lease>) -> Failure {
        let config = &self.config;
        let timeout = config.connect_timeout;
        let side = match self.side_connection().await {
            Ok(side) => side,
            Err(failure) => return failure,
        };
        if let Err(failure) = self.ensure_publication(&side).await {
            return failure;
        }
        let ddl_trigger = config.ddl_trigger && self.ensure_ddl_trigger(&side).await;
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
        let side = Arc::new(side);
        let schema =
            Schema { side: side.clone(), publication: config.publication.clone(), ddl_trigger, timeout };
        // Read before what it guards: DDL committed after the unseen relations are read, even
        // before the heartbeats start, changes it.
        let fingerprint = match schema.fingerprint().await {
            Ok(f) => f,
            Err(e) => return Failure::Stream(e),
        };
        if let Err(e) = schema.install_unstreamed(&self.target).await {
            return Failure::Stream(e);
        }
        // Everything committed while no slot existed is lost, DDL included: invalidate it all
        // (and read catalogs again) before the versions are vouched for again.
        if let Err(e) =
            self.target.committed(&config.database, WriteEffect::Unknown, &WrittenKeys::new(), true).await
        {
            return stream("cannot invalidate everything after (re)connecting", &e);
        }
        if let Some(lease) = lease {
            if let Err(e) = lease.publish(Health::Up(now_micros())).await {
                return Failure::Stream(e);
            }
        }
        *streamed = true;
        self.report(true, true);
        tracing::info!(slot = %slot, database = %config.database, publication = %config.publication, "strata: WAL invalidation streaming");

        let newest_heartbeat = Arc::new(AtomicU64::new(now_micros()));
        // Aborted when the session ends, also when the task is aborted.
        let mut emitter = AbortOnDrop(tokio::spawn(emit_heartbeats(
            schema.clone(),
            fingerprint,
            self.target.clone(),
            config.database.clone(),
            slot.clone(),
            config.heartbeat_interval,
        )));
        let session = Session { slot: &slot, newest_heartbeat: &newest_heartbeat, schema: &schema, lease };
        self.stream(&mut client, &session, &mut emitter.0).await
    }

    /// Whether the DDL event trigger is there, installing it when missing and bringing its
    /// functions up to date (superuser only).
    async fn ensure_ddl_trigger(&self, side: &tokio_postgres::Client) -> bool {
        let timeout = self.config.connect_timeout;
        let present =
            "SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = 'strata_ddl' AND evtenabled <> 'D'";
        let present = match tokio::time::timeout(timeout, side.query(present, &[])).await {
            Ok(Ok(rows)) => !rows.is_empty(),
            Ok(Err(e)) => {
                tracing::warn!(error = %pg_error(&e), "strata: cannot read pg_event_trigger; DDL made directly reaches the catalog map through the schema fingerprint");
                return false;
            }
            Err(_) => return false,
        };
        match tokio::time::timeout(timeout, side.batch_execute(&ddl_trigger_sql(!present))).await {
            Ok(Ok(())) => {
                if !present {
                    tracing::info!(database = %self.config.database, "strata: installed the DDL event trigger strata_ddl (schema strata_wal)");
                }
                true
            }
            // Installed by someone who may; this role cannot update its functions.
            Ok(Err(_)) if present => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %pg_error(&e), database = %self.config.database, "strata: cannot install the DDL event trigger (it needs a superuser; see the README): DDL made directly reaches the catalog map through the schema fingerprint, and materialized views are not cached");
                false
            }
            Err(_) => present,
        }
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
        let exists = "SELECT pubviaroot, puballtables FROM pg_catalog.pg_publication WHERE pubname = $1";
        let rows = match tokio::time::timeout(timeout, side.query(exists, &[&config.publication])).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => return Err(failed(&pg_error(&e))),
            Err(_) => return Err(failed(&"reading pg_publication timed out")),
        };
        if let Some(row) = rows.first() {
            if !row.try_get::<_, bool>(0).unwrap_or(true) {
                tracing::warn!(publication = %config.publication, "strata: the WAL publication lacks publish_via_partition_root = true: a write to a partition invalidates only the partition's name");
            }
            if row.try_get::<_, bool>(1).unwrap_or(false) {
                tracing::warn!(publication = %config.publication, "strata: the WAL publication is FOR ALL TABLES: PostgreSQL refuses UPDATE and DELETE on tables without a replica identity (no primary key) while it exists; let Strata manage its own publication instead (drop this one)");
            }
            return Ok(());
        }
        // A publication of its own, holding only the tables PostgreSQL can publish updates of
        // (FOR ALL TABLES would make UPDATE and DELETE fail on every table without a replica
        // identity); the tables are added by `sync_publications`, and the others are never cached.
        let create = format!(
            "CREATE PUBLICATION {0} WITH (publish_via_partition_root = true); COMMENT ON PUBLICATION {0} IS '{MANAGED}'",
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
        session: &Session<'_>,
        emitter: &mut JoinHandle<String>,
    ) -> Failure {
        let Session { slot, newest_heartbeat, schema, lease } = *session;
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
                            if let Err(e) = self.target.cache().invalidate(&WriteEffect::Unknown).await {
                                return Failure::Stream(format!("cannot invalidate: {e}"));
                            }
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "strata: undecodable WAL message; invalidating everything");
                        match transaction.as_mut() {
                            Some(t) => t.unknown = true,
                            None => {
                                if let Err(e) = self.target.cache().invalidate(&WriteEffect::Unknown).await {
                                    return Failure::Stream(format!("cannot invalidate: {e}"));
                                }
                            }
                        }
                    }
                },
                ReplicationEvent::Commit { end_lsn, .. } => {
                    let relations = self.target.cache().relations();
                    let (effect, keys, ddl) =
                        transaction.take().map_or((WriteEffect::Nothing, WrittenKeys::new(), false), |t| {
                            let ddl = t.ddl;
                            let (effect, keys) = t.effect(&relations);
                            (effect, keys, ddl)
                        });
                    if ddl {
                        // A relation may have become unlogged, a view may read one: know it
                        // before the invalidation below makes older fills unreachable.
                        if let Err(e) = schema.install_unstreamed(&self.target).await {
                            return Failure::Stream(e);
                        }
                    }
                    if let Err(e) = self.target.committed(&config.database, effect, &keys, ddl).await {
                        // The bump is lost: reconnecting bumps everything.
                        return Failure::Stream(format!("cannot invalidate a committed write: {e}"));
                    }
                    client.update_applied_lsn(end_lsn);
                }
                ReplicationEvent::Message { prefix, .. } if prefix == DDL_PREFIX => {
                    match transaction.as_mut() {
                        Some(t) => t.ddl = true,
                        None => {
                            // Emitted outside a transaction (by hand): treat it as DDL now.
                            if let Err(e) = schema.install_unstreamed(&self.target).await {
                                return Failure::Stream(e);
                            }
                            if let Err(e) = self
                                .target
                                .committed(&config.database, WriteEffect::Unknown, &WrittenKeys::new(), true)
                                .await
                            {
                                return Failure::Stream(format!("cannot invalidate after DDL: {e}"));
                            }
                        }
                    }
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
                    if let Some(lease) = lease {
                        // Everything before this heartbeat is applied: followers may answer.
                        if let Err(e) = lease.publish(Health::Up(sent)).await {
                            return Failure::Stream(e);
                        }
                    }
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

/// What one stream session needs besides the replication client.
#[derive(Clone, Copy)]
struct Session<'a> {
    slot: &'a str,
    newest_heartbeat: &'a AtomicU64,
    schema: &'a Schema,
    lease: Option<&'a Lease>,
}

/// The period of a follower's look at the lease: one lease TTL.
fn lease_period(config: &WalConfig) -> Duration {
    config.lease.as_ref().map_or(Duration::from_secs(1), |l| l.ttl)
}

/// The comment that marks a publication Strata created and keeps in step with the schema.
const MANAGED: &str = "strata: managed";

/// Brings every publication Strata manages in step with the schema: adds each permanent user
/// table (partition roots, not their partitions) whose rows have a replica identity (a primary
/// key, `REPLICA IDENTITY FULL` or `USING INDEX`, for every leaf partition), and drops those that
/// lost it (`ONLY`: an inheritance parent and its children are published one by one), since PostgreSQL refuses UPDATE and DELETE on a published table without one
/// (`pg_partition_tree` lists nothing for a table outside a partition tree, hence the table's own
/// check). One
/// table that cannot be changed does not stop the others.
const SYNC_BODY: &str = r"
DECLARE
  p record;
  r record;
BEGIN
  FOR p IN SELECT b.oid, b.pubname FROM pg_catalog.pg_publication b
           WHERE NOT b.puballtables
             AND pg_catalog.obj_description(b.oid, 'pg_publication') OPERATOR(pg_catalog.=) 'strata: managed' LOOP
    FOR r IN
      WITH rel AS (
        SELECT c.oid, c.relkind, c.relispartition, c.relpersistence, n.nspname,
               (c.relreplident IN ('f', 'i') OR (c.relreplident OPERATOR(pg_catalog.=) 'd'
                  AND EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                              WHERE i.indrelid OPERATOR(pg_catalog.=) c.oid AND i.indisprimary)))
               AND NOT EXISTS (
                 SELECT 1 FROM pg_catalog.pg_partition_tree(c.oid) t
                 JOIN pg_catalog.pg_class l ON l.oid OPERATOR(pg_catalog.=) t.relid
                 WHERE t.isleaf AND NOT (l.relreplident IN ('f', 'i') OR (l.relreplident OPERATOR(pg_catalog.=) 'd'
                   AND EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                               WHERE i.indrelid OPERATOR(pg_catalog.=) l.oid AND i.indisprimary)))
               ) AS identified,
               EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel pr
                       WHERE pr.prpubid OPERATOR(pg_catalog.=) p.oid AND pr.prrelid OPERATOR(pg_catalog.=) c.oid) AS published
        FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
        WHERE c.relkind IN ('r', 'p')
      )
      SELECT oid, published FROM rel
      WHERE published IS DISTINCT FROM (identified AND NOT relispartition AND relpersistence OPERATOR(pg_catalog.=) 'p'
            AND nspname NOT IN ('pg_catalog', 'information_schema', 'strata_wal')
            AND nspname NOT LIKE 'pg\_%')
    LOOP
      BEGIN
        EXECUTE pg_catalog.format('ALTER PUBLICATION %I %s TABLE ONLY %s', p.pubname,
                                  CASE WHEN r.published THEN 'DROP' ELSE 'ADD' END, r.oid::pg_catalog.regclass);
      EXCEPTION WHEN OTHERS THEN
        NULL;
      END;
    END LOOP;
  END LOOP;
END";

/// Installs the event trigger that reports DDL through the WAL and keeps the managed
/// publications in step with the schema within the DDL's own transaction. Its function swallows
/// every error, so that it can never make a DDL statement fail (for example after `wal_level` was
/// lowered), and runs as its owner (a superuser) so that any role's DDL can emit the message.
fn ddl_trigger_sql(create_trigger: bool) -> String {
    let create = if create_trigger {
        "CREATE EVENT TRIGGER strata_ddl ON ddl_command_end EXECUTE FUNCTION strata_wal.ddl_message();"
    } else {
        ""
    };
    format!(
        r"
CREATE SCHEMA IF NOT EXISTS strata_wal;
CREATE OR REPLACE FUNCTION strata_wal.sync_publications() RETURNS void
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $strata$ {SYNC_BODY} $strata$;
REVOKE ALL ON FUNCTION strata_wal.sync_publications() FROM PUBLIC;
CREATE OR REPLACE FUNCTION strata_wal.ddl_message() RETURNS event_trigger
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $strata$
BEGIN
  BEGIN
    PERFORM pg_catalog.pg_logical_emit_message(true, 'strata_ddl', tg_tag);
  EXCEPTION WHEN OTHERS THEN
    NULL;
  END;
  IF tg_tag NOT IN ('CREATE PUBLICATION', 'ALTER PUBLICATION', 'DROP PUBLICATION') THEN
    BEGIN
      PERFORM strata_wal.sync_publications();
    EXCEPTION WHEN OTHERS THEN
      NULL;
    END;
  END IF;
END $strata$;
REVOKE ALL ON FUNCTION strata_wal.ddl_message() FROM PUBLIC;
{create}
"
    )
}

/// The publication sync run by the invalidator itself, with its own privileges, where the
/// trigger's function is not installed.
fn sync_sql(ddl_trigger: bool) -> String {
    if ddl_trigger {
        "SELECT strata_wal.sync_publications()".to_owned()
    } else {
        format!("DO $strata$ {SYNC_BODY} $strata$")
    }
}

/// The relations whose changes never reach the stream, as names. Leaves are published through
/// their partition root; views, inheritance parents and partition roots reading an unseen
/// relation are unseen too. Materialized views count unless the DDL trigger reports refreshes.
/// Sequences always count: `nextval` is not decoded as a change.
/// `$1`: the publication; `$2`: whether the DDL trigger is installed.
const UNSTREAMED_SQL: &str = r"
WITH RECURSIVE rel AS (
  SELECT c.oid, c.relkind, c.relispartition
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p', 'm', 'f', 'S') AND c.relpersistence <> 't'
    AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%'
),
published AS (
  SELECT c.oid FROM pg_catalog.pg_publication_tables t
  JOIN pg_catalog.pg_namespace n ON n.nspname = t.schemaname
  JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename
  WHERE t.pubname = $1
),
unseen(oid) AS (
  SELECT r.oid FROM rel r WHERE r.relkind = 'S'
  UNION
  SELECT r.oid FROM rel r
  WHERE (r.relkind IN ('r', 'f') OR (r.relkind = 'm' AND NOT $2))
    AND r.oid NOT IN (SELECT oid FROM published)
    AND NOT (r.relispartition AND pg_catalog.pg_partition_root(r.oid) IN (SELECT oid FROM published))
  UNION
  SELECT x.oid FROM (
    SELECT w.ev_class AS oid, d.refobjid AS base
      FROM pg_catalog.pg_rewrite w
      JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
           AND d.objid = w.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
      WHERE d.refobjid <> w.ev_class
    UNION ALL
    SELECT i.inhparent, i.inhrelid FROM pg_catalog.pg_inherits i
  ) x JOIN unseen u ON u.oid = x.base
)
SELECT DISTINCT c.relname::text FROM unseen u JOIN pg_catalog.pg_class c ON c.oid = u.oid
";

/// Changes the catalog rows that decide what the stream covers leave in this sum (every row a
/// DDL statement inserts or updates carries a new `xmin`).
/// What changes when DDL runs, also DDL no event trigger reports: relations (and their
/// privileges), the publications, and the roles, in catalogs every database shares (membership in
/// `pg_auth_members`; superuser, inheritance and `BYPASSRLS` in `pg_roles`, a view that shows no
/// `xmin`): a direct `REVOKE role FROM member` or `ALTER ROLE ... NOBYPASSRLS` changes which rows
/// a role's statements return.
const SCHEMA_FINGERPRINT_SQL: &str = r"
SELECT (SELECT pg_catalog.count(*) || ':' || pg_catalog.sum(xmin::text::int8) FROM pg_catalog.pg_class)
    || ' ' || (SELECT pg_catalog.count(*) || ':' || COALESCE(pg_catalog.sum(xmin::text::int8), 0) FROM pg_catalog.pg_publication_rel)
    || ' ' || (SELECT pg_catalog.count(*) || ':' || COALESCE(pg_catalog.sum(xmin::text::int8), 0) FROM pg_catalog.pg_publication)
    || ' ' || (SELECT pg_catalog.count(*) || ':' || COALESCE(pg_catalog.sum(xmin::text::int8), 0) FROM pg_catalog.pg_auth_members)
    || ' ' || (SELECT pg_catalog.md5(COALESCE(pg_catalog.string_agg(
                   oid::text || ':' || rolname || ':' || rolsuper::text || rolinherit::text || rolbypassrls::text,
                   ',' ORDER BY oid), ''))
               FROM pg_catalog.pg_roles)
";

/// How often the schema fingerprint is read, in heartbeats.
const FINGERPRINT_EVERY: u32 = 4;

/// What decides which relations the stream covers, read on the side connection.
#[derive(Clone)]
struct Schema {
    side: Arc<tokio_postgres::Client>,
    publication: String,
    ddl_trigger: bool,
    timeout: Duration,
}

impl Schema {
    /// Brings the managed publications in step with the schema, then reads the unseen relations
    /// and installs them in the cache.
    async fn install_unstreamed(&self, target: &Target) -> Result<(), String> {
        match tokio::time::timeout(self.timeout, self.side.batch_execute(&sync_sql(self.ddl_trigger))).await {
            Ok(Ok(())) => {}
            // Tables it could not add stay unpublished, hence unseen (never cached).
            Ok(Err(e)) => {
                tracing::debug!(error = %pg_error(&e), "strata: could not bring the WAL publication in step")
            }
            Err(_) => return Err("bringing the WAL publication in step timed out".to_owned()),
        }
        let rows = match tokio::time::timeout(
            self.timeout,
            self.side.query(UNSTREAMED_SQL, &[&self.publication, &self.ddl_trigger]),
        )
        .await
        {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                return Err(format!("cannot read which relations the stream covers: {}", pg_error(&e)))
            }
            Err(_) => return Err("reading which relations the stream covers timed out".to_owned()),
        };
        let unseen: HashSet<TableName> =
            rows.iter().filter_map(|r| r.try_get::<_, String>(0).ok()).map(TableName::new).collect();
        if !unseen.is_empty() {
            tracing::debug!(relations = ?unseen, "strata: relations the WAL stream cannot see are not cached");
        }
        target.cache().set_unstreamed(unseen);
        Ok(())
    }

    async fn fingerprint(&self) -> Result<String, String> {
        match tokio::time::timeout(self.timeout, self.side.query_one(SCHEMA_FINGERPRINT_SQL, &[])).await {
            Ok(Ok(row)) => row.try_get::<_, String>(0).map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(pg_error(&e)),
            Err(_) => Err("reading the schema fingerprint timed out".to_owned()),
        }
    }
}

/// Emits a heartbeat every `interval` until one fails, and every few heartbeats compares the
/// schema fingerprint: a change (DDL the trigger did not report) reloads the unseen relations and
/// invalidates everything. `fingerprint` was read before the unseen relations were. Returns why
/// it stopped.
async fn emit_heartbeats(
    schema: Schema,
    mut fingerprint: String,
    target: Target,
    database: String,
    slot: String,
    interval: Duration,
) -> String {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beats: u32 = 0;
    loop {
        tick.tick().await;
        // Transactional: its commit (with synchronous_commit on) flushes the WAL, so the walsender
        // decodes it at once; a non-transactional message waits for the WAL writer on PG 15/16.
        let sql = format!(
            "SELECT pg_catalog.pg_logical_emit_message(true, '{HEARTBEAT_PREFIX}', '{slot} {}')",
            now_micros()
        );
        match tokio::time::timeout(schema.timeout, schema.side.batch_execute(&sql)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return pg_error(&e),
            Err(_) => return "a heartbeat timed out".to_owned(),
        }
        beats = beats.wrapping_add(1);
        if !beats.is_multiple_of(FINGERPRINT_EVERY) {
            continue;
        }
        let now = match schema.fingerprint().await {
            Ok(f) => f,
            Err(e) => return e,
        };
        if now != fingerprint {
            if let Err(e) = schema.install_unstreamed(&target).await {
                return e;
            }
            if let Err(e) = target.committed(&database, WriteEffect::Unknown, &WrittenKeys::new(), true).await
            {
                return format!("cannot invalidate after a schema change: {e}");
            }
            fingerprint = now;
        }
    }
}

fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}
