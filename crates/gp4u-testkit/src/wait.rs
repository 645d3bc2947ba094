//! Waiting for something to happen, with a limit: tests poll state rather than sleep a guess.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is looked at.
const POLL: Duration = Duration::from_millis(50);

/// Waits until `check` holds, looking every 50 ms, up to `limit`; whether it held.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    eventually_async(limit, || std::future::ready(check())).await
}

/// [`eventually`] for a check that must await (an HTTP call, a query).
pub async fn eventually_async<F>(limit: Duration, mut check: impl FnMut() -> F) -> bool
where
    F: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if started.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_until_the_condition_holds_or_the_limit_passes() {
        let mut looks = 0;
        assert!(
            eventually(Duration::from_secs(5), || {
                looks += 1;
                looks == 3
            })
            .await
        );
        assert_eq!(looks, 3);
        assert!(!eventually(Duration::from_millis(120), || false).await);
    }
}
