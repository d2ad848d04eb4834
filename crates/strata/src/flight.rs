//! Single-flight: concurrent misses on one key run one fill; the others wait for its result.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use strata_core::{CacheKey, CachedResult};
use tokio::sync::watch;

/// How a flight ended.
#[derive(Clone, Debug)]
pub(crate) enum Landing {
    /// Still in the air.
    Pending,
    /// The leader filled the key: followers serve this.
    Filled(CachedResult),
    /// The leader failed, gave up, or its result may not be cached: followers go to the database.
    Failed,
}

/// The flights in progress, keyed by the full cache key (digest *and* canonical form, so a
/// digest collision never hands one key's result to another's waiters). Every miss joins and
/// lands once, so the map hashes with foldhash rather than SipHash: the keys are already
/// digests of caller input, and a flight lives only as long as one query.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    in_air: Mutex<HashMap<CacheKey, Arc<watch::Sender<Landing>>, foldhash::fast::RandomState>>,
}

/// What joining a flight gives: the lead (fill it), or a seat (wait for it).
pub(crate) enum Joined {
    Lead(FlightLead),
    Follow(watch::Receiver<Landing>),
}

impl Flights {
    pub(crate) fn join(self: &Arc<Self>, key: &CacheKey) -> Joined {
        let mut in_air = self.in_air.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = in_air.get(key) {
            return Joined::Follow(sender.subscribe());
        }
        let (sender, _) = watch::channel(Landing::Pending);
        let sender = Arc::new(sender);
        in_air.insert(key.clone(), sender.clone());
        Joined::Lead(FlightLead { flights: self.clone(), key: key.clone(), sender, landed: false })
    }

    /// Takes the lead only if nobody flies this key (a soft-TTL refresh: others keep serving
    /// the old value rather than waiting).
    pub(crate) fn try_lead(self: &Arc<Self>, key: &CacheKey) -> Option<FlightLead> {
        let mut in_air = self.in_air.lock().unwrap_or_else(|e| e.into_inner());
        if in_air.contains_key(key) {
            return None;
        }
        let (sender, _) = watch::channel(Landing::Pending);
        let sender = Arc::new(sender);
        in_air.insert(key.clone(), sender.clone());
        Some(FlightLead { flights: self.clone(), key: key.clone(), sender, landed: false })
    }

    fn land(&self, key: &CacheKey, sender: &Arc<watch::Sender<Landing>>, landing: Landing) {
        {
            let mut in_air = self.in_air.lock().unwrap_or_else(|e| e.into_inner());
            if in_air.get(key).is_some_and(|s| Arc::ptr_eq(s, sender)) {
                in_air.remove(key);
            }
        }
        // Seats are only handed out through the map, and this flight is no longer there: with
        // nobody seated now, nobody ever will be, and the usual lone miss skips the wake-up.
        if sender.receiver_count() > 0 {
            sender.send_replace(landing);
        }
    }
}

/// The leader's side of a flight. Dropping it without landing tells the followers it failed.
pub(crate) struct FlightLead {
    flights: Arc<Flights>,
    key: CacheKey,
    sender: Arc<watch::Sender<Landing>>,
    landed: bool,
}

impl FlightLead {
    pub(crate) fn land(mut self, landing: Landing) {
        self.landed = true;
        self.flights.land(&self.key, &self.sender, landing);
    }
}

impl Drop for FlightLead {
    fn drop(&mut self) {
        if !self.landed {
            self.flights.land(&self.key, &self.sender, Landing::Failed);
        }
    }
}

impl std::fmt::Debug for FlightLead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightLead").field("key", &self.key).finish()
    }
}

/// Waits for a flight to land; `None` when it failed or the wait ran out.
pub(crate) async fn wait(
    mut seat: watch::Receiver<Landing>,
    limit: std::time::Duration,
) -> Option<CachedResult> {
    let landed = tokio::time::timeout(limit, seat.wait_for(|l| !matches!(l, Landing::Pending))).await;
    match landed {
        Ok(Ok(landing)) => match &*landing {
            Landing::Filled(result) => Some(result.clone()),
            _ => None,
        },
        // Timed out, or the leader vanished without a word (its sender dropped).
        _ => None,
    }
}
