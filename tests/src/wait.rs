//! Waiting for conditions, never for time.
//!
//! A fixed sleep is either too short on a loaded machine (a flaky test) or
//! too long everywhere else (a slow suite). [`poll`] re-checks a condition
//! with a short, growing pause until it holds or a deadline passes; the
//! caller decides what giving up means and says so in its panic message.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Generous bound for a process to boot (connect, migrate, register) on a
/// busy two-core machine.
pub const BOOT: Duration = Duration::from_secs(30);

/// Bound for a graceful shutdown to complete.
pub const SHUTDOWN: Duration = Duration::from_secs(15);

/// Bound for something that should be immediate (a message to arrive, a
/// request to be answered) when it is not itself the behaviour under test.
pub const PROMPT: Duration = Duration::from_secs(5);

/// Calls `probe` until it yields `Some`, for at most `timeout` in total
/// (including the time `probe` itself takes). `None` when time ran out.
pub async fn poll<T, F, Fut>(timeout: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        match tokio::time::timeout_at(deadline, probe()).await {
            Ok(Some(value)) => return Some(value),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep_until((Instant::now() + pause).min(deadline)).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Waits until `process` answers `GET /health` with 200 through `http`:
/// `Some(Ok)` then, `Some(Err)` with its status if it exits first, `None`
/// when [`BOOT`] passes.
pub async fn healthy(
    process: &mut crate::ServiceProcess,
    http: &crate::HttpClient,
) -> Option<Result<(), std::process::ExitStatus>> {
    poll(BOOT, || {
        let exited = process.exit_status();
        async move {
            if let Some(status) = exited {
                return Some(Err(status));
            }
            let reply = http
                .try_send(http.request(reqwest::Method::GET, "/health"))
                .await;
            reply
                .ok()
                .filter(|r| r.status == reqwest::StatusCode::OK)
                .map(|_| Ok(()))
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[tokio::test]
    async fn poll_returns_as_soon_as_the_condition_holds() {
        let calls = Cell::new(0);
        let value = poll(Duration::from_secs(5), || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { (n == 3).then_some(n) }
        })
        .await;
        assert_eq!(value, Some(3));
    }

    #[tokio::test]
    async fn poll_gives_up_at_the_deadline() {
        let started = Instant::now();
        let value: Option<()> = poll(Duration::from_millis(100), || async { None }).await;
        assert_eq!(value, None);
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    }

    #[tokio::test]
    async fn a_probe_that_hangs_is_cut_at_the_deadline() {
        let value: Option<()> = poll(Duration::from_millis(50), std::future::pending).await;
        assert_eq!(value, None);
    }
}
