//! The instance's health listener, for whatever runs it: `GET
//! /health/live` and `GET /health/ready` on `MC_HEALTH_ADDR`.
//!
//! A service has no HTTP of its own (its requests come over the bus), but
//! container orchestrators ask over HTTP, so the kernel opens this one
//! small listener and nothing else on it. It opens before the service
//! connects to anything: an instance that is still connecting, or
//! migrating, is alive but not ready, and says so. Ready means the plugins
//! have booted and every endpoint and subscription is registered, and,
//! asked each time, that the tools that depend on the outside (the
//! database, the bus, an application's own) can do their work. From
//! SIGTERM on the instance answers "stopping" while it drains, so nothing
//! new is sent its way, and stays alive until it exits.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use http::StatusCode;
use serde::Serialize;
use shared_schemas::envelope::ApiResponse;
use shared_schemas::system::ToolHealth;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::tools::Toolbox;

/// Where in its life the instance is, as the readiness probe reports it.
#[derive(Clone, Default)]
enum Phase {
    #[default]
    Starting,
    Ready(Toolbox),
    Stopping,
}

/// What the instance tells the readiness probe; shared between the
/// service, which moves it on, and the listener, which reads it.
#[derive(Clone, Default)]
pub struct Readiness(Arc<Mutex<Phase>>);

impl Readiness {
    /// Serving; `tools` are checked at each probe.
    pub fn ready(&self, tools: Toolbox) {
        self.set(Phase::Ready(tools));
    }

    /// Draining: no longer ready, still alive.
    pub fn stopping(&self) {
        self.set(Phase::Stopping);
    }

    fn set(&self, phase: Phase) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = phase;
    }

    fn phase(&self) -> Phase {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The readiness probe's answer (in the envelope).
#[derive(Debug, Serialize)]
struct ReadyReport {
    /// `starting`, `ready`, `unhealthy` or `stopping`.
    status: &'static str,
    /// What the tools' checks found, when the instance is serving.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolHealth>,
}

/// The health listener, serving until [`HealthListener::close`].
pub struct HealthListener {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The health listener's address cannot be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for health probes on {addr}: {source}")]
pub struct HealthListenerError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

impl HealthListener {
    /// Binds `addr` at once, so a taken port fails the boot, and serves
    /// the probes from `readiness`.
    pub async fn bind(addr: SocketAddr, readiness: Readiness) -> Result<Self, HealthListenerError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HealthListenerError { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| HealthListenerError { addr, source })?;
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router(readiness))
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::warn!(error = %e, "the health listener stopped");
            }
        });
        tracing::info!(%addr, "health probes listening");
        Ok(Self { addr, stop, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops answering, last of all, as the process exits.
    pub async fn close(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(readiness)
}

async fn live() -> Json<ApiResponse<serde_json::Value>> {
    Json(ApiResponse::ok(serde_json::json!({ "status": "alive" })))
}

async fn ready(State(readiness): State<Readiness>) -> (StatusCode, Json<ApiResponse<ReadyReport>>) {
    let (status, tools) = match readiness.phase() {
        Phase::Starting => ("starting", Vec::new()),
        Phase::Stopping => ("stopping", Vec::new()),
        Phase::Ready(tools) => {
            let found: Vec<ToolHealth> = tools
                .check_health()
                .await
                .into_iter()
                .map(|(tool, health)| crate::system::tool_health(tool, health))
                .collect();
            let healthy = found.iter().all(|tool| tool.healthy);
            (if healthy { "ready" } else { "unhealthy" }, found)
        }
    };
    let is_ready = status == "ready";
    let error = (!is_ready).then(|| match tools.iter().find(|tool| !tool.healthy) {
        Some(tool) => format!(
            "not ready: {} is unhealthy ({})",
            tool.tool,
            tool.detail.as_deref().unwrap_or("no detail")
        ),
        None => format!("not ready: {status}"),
    });
    let code = if is_ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let answer = ApiResponse {
        success: is_ready,
        data: Some(ReadyReport { status, tools }),
        error,
        details: Vec::new(),
    };
    (code, Json(answer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Probe, ProbeError, probe_addr};
    use crate::tools::{Health, Tool};

    #[derive(Clone)]
    struct Payments {
        healthy: bool,
    }

    impl Tool for Payments {
        const NAME: &'static str = "payments";

        async fn check_health(&self) -> Option<Health> {
            Some(if self.healthy {
                Health::healthy()
            } else {
                Health::unhealthy("the provider refuses the key")
            })
        }
    }

    fn tools(healthy: bool) -> Toolbox {
        let mut tools = Toolbox::new();
        tools.insert(Payments { healthy }).unwrap();
        tools
    }

    fn unhealthy_status(result: Result<(), ProbeError>) -> u16 {
        match result {
            Err(ProbeError::Unhealthy { status, .. }) => status.as_u16(),
            other => panic!("expected an unhealthy answer, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn readiness_follows_the_instance_and_its_tools_while_it_stays_alive() {
        let readiness = Readiness::default();
        let listener = HealthListener::bind("127.0.0.1:0".parse().unwrap(), readiness.clone())
            .await
            .unwrap();
        let addr = listener.local_addr();

        probe_addr(addr, Probe::Live).await.unwrap();
        assert_eq!(unhealthy_status(probe_addr(addr, Probe::Ready).await), 503);

        readiness.ready(tools(true));
        probe_addr(addr, Probe::Ready).await.unwrap();

        readiness.ready(tools(false));
        let Err(ProbeError::Unhealthy { body, .. }) = probe_addr(addr, Probe::Ready).await else {
            panic!("a failing tool makes the instance unready");
        };
        assert!(body.contains("payments is unhealthy"), "{body}");

        readiness.stopping();
        assert_eq!(unhealthy_status(probe_addr(addr, Probe::Ready).await), 503);
        probe_addr(addr, Probe::Live).await.unwrap();

        listener.close().await;
        assert!(matches!(
            probe_addr(addr, Probe::Live).await,
            Err(ProbeError::Unreachable { .. })
        ));
    }
}
