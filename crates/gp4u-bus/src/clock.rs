//! Clocks for components that run loops: the system clock, and a manual one for tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use gp4u_core::clock::Clock;

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now_ms: Arc<AtomicI64>,
    /// Added after every read (0 by default): a clock that moves while a request runs, so that
    /// tests catch code that reads the time twice and assumes both readings agree.
    tick_ms: Arc<AtomicI64>,
}

impl ManualClock {
    pub fn new(start_ms: i64) -> ManualClock {
        ManualClock {
            now_ms: Arc::new(AtomicI64::new(start_ms)),
            tick_ms: Arc::new(AtomicI64::new(0)),
        }
    }

    /// From now on every read moves the clock on by `tick_ms` (0 stops it again).
    pub fn set_tick_ms(&self, tick_ms: i64) {
        self.tick_ms.store(tick_ms, Ordering::SeqCst);
    }

    pub fn advance_ms(&self, by_ms: i64) {
        self.now_ms.fetch_add(by_ms, Ordering::SeqCst);
    }

    pub fn set_ms(&self, to_ms: i64) {
        self.now_ms.store(to_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        let tick = self.tick_ms.load(Ordering::SeqCst);
        self.now_ms.fetch_add(tick, Ordering::SeqCst)
    }
}
