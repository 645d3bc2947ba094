//! Time as an argument. The core never reads the clock; components that need "now" are handed
//! a [`Clock`], which tests replace with a manual one.

/// A source of the current time in unix milliseconds.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;

    fn now_unix_seconds(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }
}
