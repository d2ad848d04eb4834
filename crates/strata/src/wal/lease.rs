//! One invalidator per upstream for a fleet: a lease in Redis elects the process that streams,
//! and the holder publishes the stream's health for the others.
//!
//! The lease is a key set with `NX` and a TTL, renewed by its holder every third of the TTL with
//! a script that extends it only while the holder still owns it. A holder that cannot renew in
//! time stops streaming; another process takes the lease once it expires. Two processes
//! streaming at once (a holder that has not noticed yet) is harmless: both bump versions.
//!
//! The health record says what the followers' gate does:
//! - `up <micros>`: the holder applied everything up to a heartbeat emitted at `<micros>` (the
//!   holder's clock; clocks in a fleet must agree to well within the lag bound);
//! - `off`: the holder cannot stream at all for a configuration reason and never streamed: the
//!   cache works as without an invalidator;
//! - missing: no holder, or its stream is down: lookups bypass.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{LeaseConfig, WalConfig};
use crate::redis_conn::RedisConn;

/// Extends the lease only for its holder. KEYS: lease. ARGV: holder, ttl in ms.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Releases the lease only for its holder. KEYS: lease. ARGV: holder.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// What the holder last published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Health {
    /// Applied up to a heartbeat emitted at these microseconds since the epoch.
    Up(u64),
    /// The holder cannot stream for a configuration reason and never streamed.
    Off,
}

impl Health {
    fn encode(self) -> String {
        match self {
            Health::Up(micros) => format!("up {micros}"),
            Health::Off => "off".to_owned(),
        }
    }

    fn decode(value: &str) -> Option<Self> {
        match value.split_once(' ') {
            Some(("up", micros)) => micros.parse().ok().map(Health::Up),
            None if value == "off" => Some(Health::Off),
            _ => None,
        }
    }
}

/// A process's handle on the fleet's lease and health record.
pub(super) struct Lease {
    conn: RedisConn,
    key: String,
    health_key: String,
    holder: String,
    ttl: Duration,
    /// How long a health record lives unless rewritten.
    health_ttl: Duration,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Lease {
    pub(super) fn new(lease: &LeaseConfig, config: &WalConfig) -> Result<Self, String> {
        let deadline = config.connect_timeout.min(lease.ttl / 3);
        let conn =
            RedisConn::open(&lease.target, deadline, Duration::from_millis(50), Duration::from_secs(1))
                .map_err(|e| format!("redis connection settings: {e}"))?;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        Ok(Self {
            conn,
            key: config.lease_key(&lease.prefix),
            health_key: config.health_key(&lease.prefix),
            holder: format!("{}:{nanos:x}", std::process::id()),
            ttl: lease.ttl,
            // Outlives a few heartbeats: a stream that stops writing it is seen as down by the
            // lag check well before the record expires.
            health_ttl: (config.lag_bound * 4).max(lease.ttl),
        })
    }

    /// Takes the lease if nobody holds it; whether this process holds it now.
    pub(super) async fn acquire(&self) -> Result<bool, String> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(&self.key)
            .arg(&self.holder)
            .arg("NX")
            .arg("PX")
            .arg(millis(self.ttl))
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("cannot take the WAL lease: {e}"))?;
        if set.is_some() {
            return Ok(true);
        }
        // Still ours (a retry after a failed session): keep it.
        self.renew().await
    }

    /// Extends the lease; false when another process holds it now.
    async fn renew(&self) -> Result<bool, String> {
        let mut conn = self.conn.clone();
        let renewed: i64 = redis::cmd("EVAL")
            .arg(RENEW)
            .arg(1)
            .arg(&self.key)
            .arg(&self.holder)
            .arg(millis(self.ttl))
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("cannot renew the WAL lease: {e}"))?;
        Ok(renewed == 1)
    }

    /// Renews the lease until it is lost or cannot be renewed in time; returns why.
    pub(super) async fn keep(&self) -> String {
        let period = self.ttl / 3;
        let mut renewed_at = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(period).await;
            match self.renew().await {
                Ok(true) => renewed_at = tokio::time::Instant::now(),
                Ok(false) => return "another process holds the WAL lease".to_owned(),
                Err(e) => {
                    // The lease may expire before the next attempt: stop before another process
                    // can take over, so that the takeover's full invalidation covers this one.
                    if renewed_at.elapsed() + period >= self.ttl {
                        return e;
                    }
                }
            }
        }
    }

    /// Gives the lease up (best effort) so that another process can take over at once.
    pub(super) async fn release(&self) {
        let mut conn = self.conn.clone();
        let released: Result<i64, _> = redis::cmd("EVAL")
            .arg(RELEASE)
            .arg(1)
            .arg(&self.key)
            .arg(&self.holder)
            .query_async(&mut conn)
            .await;
        if let Err(e) = released {
            tracing::debug!(error = %e, "strata: could not release the WAL lease; it expires on its own");
        }
    }

    /// Publishes the stream's health.
    pub(super) async fn publish(&self, health: Health) -> Result<(), String> {
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(&self.health_key)
            .arg(health.encode())
            .arg("PX")
            .arg(millis(self.health_ttl))
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| format!("cannot publish the WAL stream's health: {e}"))
    }

    /// Withdraws the health record: followers bypass until a stream is up again.
    pub(super) async fn withdraw(&self) {
        let mut conn = self.conn.clone();
        let _: Result<i64, _> = redis::cmd("DEL").arg(&self.health_key).query_async(&mut conn).await;
    }

    /// What the holder published; `None` when nothing is published.
    pub(super) async fn read(&self) -> Result<Option<Health>, String> {
        let mut conn = self.conn.clone();
        let value: Option<String> = redis::cmd("GET")
            .arg(&self.health_key)
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("cannot read the WAL stream's health: {e}"))?;
        Ok(value.as_deref().and_then(Health::decode))
    }
}

#[cfg(test)]
mod tests {
    use super::Health;

    #[test]
    fn health_records_round_trip_and_garbage_is_nothing() {
        for health in [Health::Up(0), Health::Up(1_733_000_000_123_456), Health::Off] {
            assert_eq!(Health::decode(&health.encode()), Some(health));
        }
        for garbage in ["", "up", "up x", "on 5", "off 1", "up -1"] {
            assert_eq!(Health::decode(garbage), None, "{garbage:?}");
        }
    }
}
