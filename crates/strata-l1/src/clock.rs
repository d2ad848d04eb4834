//! A millisecond-coarse wall clock for the hit path, where reading the OS clock costs as much as
//! the whole lookup (80 ns measured on this project's kvm-clock VMs, against 60 ns for a hit).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Once, OnceLock};
use std::thread::Thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strata_core::Clock;

/// How often the ticker refreshes the time.
const TICK: Duration = Duration::from_millis(1);
/// Ticks in a row with no read after which the ticker sleeps until the next read.
const IDLE_TICKS: u32 = 100;

/// The system's wall clock, read from a value a background thread refreshes every millisecond.
///
/// Reading it is one atomic load. Expiry decided with it may be late by about a millisecond (more
/// if the machine is so loaded that the ticker thread is not scheduled), never early by more than
/// that. If the ticker thread cannot be started, every read falls back to the OS clock.
///
/// The ticker sleeps once nothing has read the time for about 100 ms, so that an idle process is
/// not woken a thousand times a second. While it sleeps, reads take the OS clock, and the first
/// of them wakes it.
#[derive(Debug, Clone, Copy, Default)]
pub struct CoarseClock;

/// The process-wide ticker behind [`CoarseClock`].
static TICKER: Ticker = Ticker::new();

/// A time refreshed by a thread of its own while it is being read.
struct Ticker {
    /// Nanoseconds since the Unix epoch.
    nanos: AtomicU64,
    /// Set while the thread refreshes `nanos`; otherwise (before it starts, if it could not
    /// start, while it sleeps) reads take the OS clock.
    ticking: AtomicBool,
    /// A read came since the thread last looked. Written only when clear, so that readers on
    /// every core share its cache line instead of taking turns owning it.
    read: AtomicBool,
    /// Set while the thread sleeps for want of readers; the read that clears it wakes the thread.
    parked: AtomicBool,
    thread: OnceLock<Thread>,
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Ticker {
    const fn new() -> Self {
        Self {
            nanos: AtomicU64::new(0),
            ticking: AtomicBool::new(false),
            read: AtomicBool::new(false),
            parked: AtomicBool::new(false),
            thread: OnceLock::new(),
        }
    }

    /// Starts the thread; reads take the OS clock until it runs (and forever if it cannot start).
    fn start(&'static self) {
        let _ = std::thread::Builder::new().name("strata-l1-clock".to_owned()).spawn(|| self.run());
    }

    fn run(&self) {
        // Known before it can sleep, so that a read can always wake it.
        let _ = self.thread.set(std::thread::current());
        self.nanos.store(now_nanos(), Ordering::Relaxed);
        self.ticking.store(true, Ordering::Release);
        let mut idle = 0;
        loop {
            std::thread::sleep(TICK);
            self.nanos.store(now_nanos(), Ordering::Relaxed);
            if self.read.swap(false, Ordering::Relaxed) {
                idle = 0;
                continue;
            }
            idle += 1;
            if idle < IDLE_TICKS {
                continue;
            }
            // Reads take the OS clock from here on; the first to see `parked` wakes the thread.
            self.ticking.store(false, Ordering::Release);
            self.parked.store(true, Ordering::Release);
            while self.parked.load(Ordering::Acquire) {
                std::thread::park();
            }
            // A fresh time before it is read again.
            self.nanos.store(now_nanos(), Ordering::Relaxed);
            self.ticking.store(true, Ordering::Release);
            idle = 0;
        }
    }

    #[inline]
    fn now(&self) -> SystemTime {
        if self.ticking.load(Ordering::Acquire) {
            if !self.read.load(Ordering::Relaxed) {
                self.read.store(true, Ordering::Relaxed);
            }
            UNIX_EPOCH + Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
        } else {
            self.wake();
            SystemTime::now()
        }
    }

    /// Wakes the thread if it sleeps for want of readers (once: the read that clears `parked`).
    #[cold]
    fn wake(&self) {
        if self.parked.load(Ordering::Relaxed) && self.parked.swap(false, Ordering::AcqRel) {
            if let Some(thread) = self.thread.get() {
                thread.unpark();
            }
        }
    }
}

impl CoarseClock {
    /// The process-wide coarse clock, starting its ticker thread on first use.
    pub fn new() -> Self {
        static STARTED: Once = Once::new();
        STARTED.call_once(|| TICKER.start());
        CoarseClock
    }
}

impl Clock for CoarseClock {
    #[inline]
    fn now(&self) -> SystemTime {
        TICKER.now()
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

    /// Waits (bounded: a loaded machine ticks late) until `done` holds.
    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// A ticker of the test's own (not the process-wide one other tests read), once it runs.
    fn running_ticker() -> &'static Ticker {
        let ticker: &'static Ticker = Box::leak(Box::new(Ticker::new()));
        ticker.start();
        wait_until("the ticker runs", || ticker.ticking.load(Ordering::Acquire));
        ticker
    }

    #[test]
    fn a_ticker_read_all_along_keeps_ticking() {
        let ticker = running_ticker();
        let until = std::time::Instant::now() + TICK * IDLE_TICKS * 3;
        while std::time::Instant::now() < until {
            let _ = ticker.now();
            assert!(!ticker.parked.load(Ordering::Acquire), "the ticker slept while read");
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    #[test]
    fn an_unread_ticker_sleeps_and_the_next_read_wakes_it_with_a_fresh_time() {
        let ticker = running_ticker();
        let _ = ticker.now();
        wait_until("the unread ticker sleeps", || ticker.parked.load(Ordering::Acquire));
        assert!(!ticker.ticking.load(Ordering::Acquire));

        // A read while it sleeps takes the OS clock and wakes it.
        let before = SystemTime::now();
        assert!(ticker.now() >= before);
        wait_until("the ticker runs again", || ticker.ticking.load(Ordering::Acquire));
        assert!(!ticker.parked.load(Ordering::Acquire));
        let woken = ticker.now();
        assert!(woken >= before, "the woken ticker served a time from before it slept");
        wait_until("the woken ticker moves", || ticker.now() > woken);
    }
}
