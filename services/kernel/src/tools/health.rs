//! What a tool's health check finds, and how the toolbox runs the checks.
//!
//! A tool that depends on something outside the process (the database, the
//! bus, an application's payment provider) says whether it can do its work
//! through [`Tool::check_health`](crate::tools::Tool::check_health); a tool
//! with nothing outside to check (the logger, HTTP registration, token
//! signing) keeps the default and is not listed, rather than being listed
//! as healthy by a check that checks nothing.
//!
//! The checks run when the instance is asked for its health (the gateway's
//! `/system/status`), all at once, each bounded by [`CHECK_TIMEOUT`]: a
//! check that hangs, say on a database that accepts connections but never
//! answers, reports its tool unhealthy instead of holding up the answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, join_all};

use crate::tools::Tool;

/// How long one check may take. Well inside the time the gateway waits for
/// an instance's report (a second), so that a slow tool is reported as
/// such and the instance as answering.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// What one check found.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// `Err` says what is wrong, in words fit for an operator: never a
    /// connection string or a credential.
    pub status: Result<(), String>,
    /// How long the check's round trip took, for checks that make one.
    pub latency: Option<Duration>,
}

impl Health {
    pub fn healthy() -> Self {
        Self {
            status: Ok(()),
            latency: None,
        }
    }

    pub fn unhealthy(detail: impl Into<String>) -> Self {
        Self {
            status: Err(detail.into()),
            latency: None,
        }
    }

    /// The same finding, with the round trip it took.
    #[must_use]
    pub fn with_latency(self, latency: Duration) -> Self {
        Self {
            latency: Some(latency),
            ..self
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.status.is_ok()
    }
}

/// One tool's check, type-erased so that the toolbox can hold the checks
/// of tools of every type.
#[derive(Clone)]
pub(super) struct HealthCheck {
    tool: &'static str,
    check: Arc<dyn Fn() -> BoxFuture<'static, Option<Health>> + Send + Sync>,
}

impl HealthCheck {
    pub(super) fn of<T: Tool>(tool: &T) -> Self {
        let tool = tool.clone();
        Self {
            tool: T::NAME,
            check: Arc::new(move || {
                let tool = tool.clone();
                Box::pin(async move { tool.check_health().await })
            }),
        }
    }
}

/// Runs `checks` concurrently, each bounded by `timeout`: the findings of
/// the tools that check, by tool name.
pub(super) async fn run(
    checks: &[HealthCheck],
    timeout: Duration,
) -> BTreeMap<&'static str, Health> {
    let findings = checks.iter().map(|check| async move {
        let health = tokio::time::timeout(timeout, (check.check)())
            .await
            .unwrap_or_else(|_| Some(Health::unhealthy(format!("no answer within {timeout:?}"))));
        health.map(|health| (check.tool, health))
    });
    join_all(findings).await.into_iter().flatten().collect()
}
