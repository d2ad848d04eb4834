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
///
/// A flight's channel is made when its first follower arrives: the usual miss flies alone, and
/// then joining and landing are one insert and one removal under the lock, with nothing to
/// allocate or wake.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    in_air: Mutex<InAir>,
}

#[derive(Debug, Default)]
struct InAir {
    flights: HashMap<CacheKey, Flight, foldhash::fast::RandomState>,
    /// Numbers flights, so that a lead removes its own flight and never a later one on its key.
    next: u64,
}

#[derive(Debug)]
struct Flight {
    id: u64,
    /// Made by the first follower; the lead lands on it.
    seats: Option<watch::Sender<Landing>>,
}

/// What joining a flight gives: the lead (fill it), or a seat (wait for it).
pub(crate) enum Joined {
    Lead(FlightLead),
    Follow(watch::Receiver<Landing>),
}

impl Flights {
    pub(crate) fn join(self: &Arc<Self>, key: &CacheKey) -> Joined {
        let mut in_air = self.in_air.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flight) = in_air.flights.get_mut(key) {
            let seats = flight.seats.get_or_insert_with(|| watch::channel(Landing::Pending).0);
            return Joined::Follow(seats.subscribe());
        }
        Joined::Lead(self.take_off(&mut in_air, key))
    }

    /// Takes the lead only if nobody flies this key (a soft-TTL refresh: others keep serving
    /// the old value rather than waiting).
    pub(crate) fn try_lead(self: &Arc<Self>, key: &CacheKey) -> Option<FlightLead> {
        let mut in_air = self.in_air.lock().unwrap_or_else(|e| e.into_inner());
        if in_air.flights.contains_key(key) {
            return None;
        }
        Some(self.take_off(&mut in_air, key))
    }

    fn take_off(self: &Arc<Self>, in_air: &mut InAir, key: &CacheKey) -> FlightLead {
        let id = in_air.next;
        in_air.next = in_air.next.wrapping_add(1);
        in_air.flights.insert(key.clone(), Flight { id, seats: None });
        FlightLead { flights: self.clone(), key: key.clone(), id, landed: false }
    }

    fn land(&self, key: &CacheKey, id: u64, landing: Landing) {
        let flight = {
            let mut in_air = self.in_air.lock().unwrap_or_else(|e| e.into_inner());
            match in_air.flights.get(key) {
                Some(flight) if flight.id == id => in_air.flights.remove(key),
                _ => None,
            }
        };
        // Seats are only handed out through the map, and this flight is no longer there: with
        // nobody seated now, nobody ever will be.
        if let Some(seats) = flight.and_then(|f| f.seats) {
            seats.send_replace(landing);
        }
    }

    /// Flights in the air (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.in_air.lock().unwrap_or_else(|e| e.into_inner()).flights.len()
    }
}

/// The leader's side of a flight. Dropping it without landing tells the followers it failed.
pub(crate) struct FlightLead {
    flights: Arc<Flights>,
    key: CacheKey,
    id: u64,
    landed: bool,
}

impl FlightLead {
    pub(crate) fn land(mut self, landing: Landing) {
        self.landed = true;
        self.flights.land(&self.key, self.id, landing);
    }
}

impl Drop for FlightLead {
    fn drop(&mut self) {
        if !self.landed {
            self.flights.land(&self.key, self.id, Landing::Failed);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use strata_core::{CacheKey, CachedResult, KeyScope, SettingsDigest};

    use super::*;

    fn key(statement: &str) -> CacheKey {
        let scope = KeyScope::new("db", "role", SettingsDigest::of([]));
        CacheKey::builder(&scope, statement.as_bytes()).build()
    }

    fn lead(joined: Joined) -> FlightLead {
        match joined {
            Joined::Lead(lead) => lead,
            Joined::Follow(_) => panic!("expected the lead"),
        }
    }

    fn seat(joined: Joined) -> watch::Receiver<Landing> {
        match joined {
            Joined::Follow(seat) => seat,
            Joined::Lead(_) => panic!("expected a seat"),
        }
    }

    #[test]
    fn a_lone_flight_leaves_nothing_behind() {
        let flights = Arc::new(Flights::default());
        let first = lead(flights.join(&key("a")));
        assert_eq!(flights.len(), 1);
        first.land(Landing::Failed);
        assert_eq!(flights.len(), 0);
        // The key flies again from scratch.
        drop(lead(flights.join(&key("a"))));
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn followers_get_the_leads_result_and_other_keys_fly_apart() {
        let flights = Arc::new(Flights::default());
        let first = lead(flights.join(&key("a")));
        let other = lead(flights.join(&key("b")));
        let waiting = seat(flights.join(&key("a")));
        let also_waiting = seat(flights.join(&key("a")));
        assert!(flights.try_lead(&key("a")).is_none());
        let result = CachedResult::builder(bytes::Bytes::from_static(b"rows")).build();
        first.land(Landing::Filled(result.clone()));
        for seat in [waiting, also_waiting] {
            let served = wait(seat, Duration::from_secs(5)).await.expect("the lead filled");
            assert_eq!(served.payload(), result.payload());
        }
        // The other key is still in the air, and only it.
        assert_eq!(flights.len(), 1);
        drop(other);
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn a_lead_that_goes_away_fails_its_followers() {
        let flights = Arc::new(Flights::default());
        let first = lead(flights.join(&key("a")));
        let waiting = seat(flights.join(&key("a")));
        drop(first);
        assert!(wait(waiting, Duration::from_secs(5)).await.is_none());
        assert!(flights.try_lead(&key("a")).is_some());
    }

    #[test]
    fn keys_hash_by_their_digest() {
        use std::hash::BuildHasher as _;
        let state = std::hash::RandomState::new();
        let (a, same) = (key("select 1"), key("select 1"));
        assert_eq!(a, same);
        assert_eq!(state.hash_one(&a), state.hash_one(&same));
        assert_ne!(a, key("select 2"));
    }
}
