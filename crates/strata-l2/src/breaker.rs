//! A circuit breaker: after repeated storage failures the tier stops calling the storage for a cool-down.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The state of the warm tier's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go to the storage.
    Closed,
    /// Calls return at once (lookups miss, writes are dropped) without touching the storage.
    Open,
    /// The cool-down has passed and one probe call is deciding whether to close the breaker.
    HalfOpen,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// The breaker. Its lock is held for a few instructions and never across an `.await`, and the
/// healthy path does not take it at all: two atomics say "closed, no failures pending".
/// Time is tokio's, so tests can pause and advance it.
#[derive(Debug)]
pub(crate) struct Breaker {
    state: Mutex<State>,
    /// True exactly when `state` is `Closed` (written under the lock).
    closed: AtomicBool,
    /// True when `state` is `Closed` with a failure count above zero (written under the lock).
    failures_pending: AtomicBool,
    failure_threshold: u32,
    cooldown: Duration,
    opens: AtomicU64,
}

/// Permission to make one storage call; report how it went with [`Permit::success`] or
/// [`Permit::failure`]. A probe permit dropped without a report (the caller gave up) counts as a
/// failure, so the breaker can never stay half-open.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    reported: bool,
}

impl Breaker {
    pub(crate) fn new(failure_threshold: u32, cooldown: Duration) -> Self {
        Self {
            state: Mutex::new(State::Closed { consecutive_failures: 0 }),
            closed: AtomicBool::new(true),
            failures_pending: AtomicBool::new(false),
            failure_threshold,
            cooldown,
            opens: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value that is always consistent; a panic elsewhere cannot corrupt it.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A permit, or `None` while the breaker is open (or half-open with its probe in flight).
    pub(crate) fn try_acquire(&self) -> Option<Permit<'_>> {
        if self.closed.load(Relaxed) {
            return Some(Permit { breaker: self, probe: false, reported: false });
        }
        let mut state = self.lock();
        let probe = match *state {
            State::Closed { .. } => false,
            State::Open { until } if Instant::now() >= until => {
                *state = State::HalfOpen;
                self.closed.store(false, Relaxed);
                true
            }
            State::Open { .. } | State::HalfOpen => return None,
        };
        Some(Permit { breaker: self, probe, reported: false })
    }

    pub(crate) fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if Instant::now() >= until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen => BreakerState::HalfOpen,
        }
    }

    /// How many times the breaker has opened.
    pub(crate) fn opens(&self) -> u64 {
        self.opens.load(Relaxed)
    }

    fn on_success(&self) {
        if self.closed.load(Relaxed) && !self.failures_pending.load(Relaxed) {
            return;
        }
        *self.lock() = State::Closed { consecutive_failures: 0 };
        self.failures_pending.store(false, Relaxed);
        self.closed.store(true, Relaxed);
    }

    fn on_failure(&self, probe: bool) {
        let mut state = self.lock();
        let open = match *state {
            State::Closed { consecutive_failures } => {
                let failures = consecutive_failures.saturating_add(1);
                *state = State::Closed { consecutive_failures: failures };
                self.failures_pending.store(true, Relaxed);
                failures >= self.failure_threshold
            }
            State::HalfOpen => probe,
            // Calls admitted before the breaker opened may still fail; the cool-down already runs.
            State::Open { .. } => false,
        };
        if open {
            *state = State::Open { until: Instant::now() + self.cooldown };
            self.closed.store(false, Relaxed);
            self.failures_pending.store(false, Relaxed);
            self.opens.fetch_add(1, Relaxed);
        }
    }
}

impl Permit<'_> {
    pub(crate) fn success(mut self) {
        self.reported = true;
        self.breaker.on_success();
    }

    pub(crate) fn failure(mut self) {
        self.reported = true;
        self.breaker.on_failure(self.probe);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.reported && self.probe {
            self.breaker.on_failure(true);
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    fn fail(b: &Breaker) {
        b.try_acquire().expect("breaker admits the call").failure();
    }

    fn succeed(b: &Breaker) {
        b.try_acquire().expect("breaker admits the call").success();
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_then_probes_after_cooldown() {
        let b = Breaker::new(3, Duration::from_millis(500));
        for _ in 0..2 {
            fail(&b);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.opens(), 1);
        assert!(b.try_acquire().is_none(), "open breaker admits nothing");

        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(b.try_acquire().is_none());
        tokio::time::advance(Duration::from_millis(1)).await;
        let probe = b.try_acquire();
        assert!(probe.is_some(), "after the cool-down one probe goes through");
        assert!(b.try_acquire().is_none(), "only one probe at a time");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        probe.expect("probe permit").failure();
        assert_eq!(b.state(), BreakerState::Open, "a failed probe reopens");
        assert_eq!(b.opens(), 2);

        tokio::time::advance(Duration::from_millis(500)).await;
        succeed(&b);
        assert_eq!(b.state(), BreakerState::Closed, "a good probe closes");
        assert!(b.try_acquire().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_the_failure_count_and_abandoned_probe_reopens() {
        let b = Breaker::new(2, Duration::from_millis(100));
        fail(&b);
        succeed(&b);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed, "failures must be consecutive");
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_millis(100)).await;
        drop(b.try_acquire());
        assert_eq!(b.state(), BreakerState::Open, "a probe dropped mid-call counts as failed");
    }
}
