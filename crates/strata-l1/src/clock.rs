//! A millisecond-coarse wall clock for the hit path, where reading the OS clock costs as much as
//! the whole lookup (80 ns measured on this project's kvm-clock VMs, against 60 ns for a hit).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Once;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strata_core::Clock;

/// How often the shared ticker refreshes the time.
const TICK: Duration = Duration::from_millis(1);

/// The system's wall clock, read from a value a background thread refreshes every millisecond.
///
/// Reading it is one atomic load. Expiry decided with it may be late by about a millisecond (more
/// if the machine is so loaded that the ticker thread is not scheduled), never early by more than
/// that. If the ticker thread cannot be started, every read falls back to the OS clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct CoarseClock;

/// Nanoseconds since the Unix epoch, refreshed by the ticker thread.
static NANOS_SINCE_EPOCH: AtomicU64 = AtomicU64::new(0);
/// Set once the ticker thread runs; until then (or if it could not start) reads use the OS clock.
static TICKING: AtomicBool = AtomicBool::new(false);

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn start_ticker() {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        NANOS_SINCE_EPOCH.store(now_nanos(), Ordering::Relaxed);
        let spawned = std::thread::Builder::new().name("strata-l1-clock".to_owned()).spawn(|| loop {
            NANOS_SINCE_EPOCH.store(now_nanos(), Ordering::Relaxed);
            std::thread::sleep(TICK);
        });
        TICKING.store(spawned.is_ok(), Ordering::Release);
    });
}

impl CoarseClock {
    /// The process-wide coarse clock, starting its ticker thread on first use.
    pub fn new() -> Self {
        start_ticker();
        CoarseClock
    }
}

impl Clock for CoarseClock {
    #[inline]
    fn now(&self) -> SystemTime {
        if TICKING.load(Ordering::Acquire) {
            UNIX_EPOCH + Duration::from_nanos(NANOS_SINCE_EPOCH.load(Ordering::Relaxed))
        } else {
            SystemTime::now()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_time_stays_within_a_few_ticks_of_the_system_clock_and_moves() {
        let clock = CoarseClock::new();
        let first = clock.now();
        let drift = SystemTime::now().duration_since(first).unwrap_or_default();
        assert!(drift < Duration::from_secs(1), "coarse clock lags by {drift:?}");
        // Wait (bounded) for the ticker to move the time forward at least once.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while clock.now() <= first {
            assert!(std::time::Instant::now() < deadline, "the coarse clock never moved");
            std::thread::yield_now();
        }
    }
}
