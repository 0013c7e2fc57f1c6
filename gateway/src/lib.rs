//! The microcore gateway: the one HTTP entry point of the system.
//!
//! It discovers the endpoints live services announce ([`discovery`]),
//! authenticates the requests of protected routes (`auth`), routes each
//! request to its service over the bus ([`proxy`]), serves one OpenAPI
//! document merged from every live service with a docs page ([`openapi`],
//! `docs`), the fleet views (`system`, `events`), what passes on the bus:
//! traces and live streams (`observe`), and metrics: its own and, through
//! each instance's system endpoint, every instance's (`metrics`). It knows
//! the bus only as a
//! [`Transport`](microcore::transport::Transport), so it runs the same
//! beside services in one process or in front of a fleet over NATS.

mod auth;
pub mod config;
pub mod discovery;
mod docs;
mod envelope;
mod events;
mod instances;
mod metrics;
mod observe;
pub mod openapi;
pub mod proxy;
pub mod routes;
mod system;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::get;
use http::{HeaderValue, StatusCode};
use microcore::telemetry::{InstanceIdentity, Metrics, MetricsError};
use microcore::tools::{Auth, AuthError};
use microcore::transport::{Transport, TransportError};
use serde_json::json;
use shared_schemas::Subjects;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

pub use config::GatewayConfig;

use crate::observe::Observer;
use crate::proxy::Proxy;

/// The longest client `X-Request-ID` kept; longer ones are replaced.
const MAX_REQUEST_ID: usize = 200;

/// The gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("MC_AUTH_SECRET: {0}")]
    Auth(#[from] AuthError),
    #[error("metrics: {0}")]
    Metrics(#[from] MetricsError),
}

/// A gateway with discovery running.
pub struct Gateway {
    proxy: Arc<Proxy>,
    discovery: tokio::task::JoinHandle<()>,
    /// The gateway's own metrics, as an instance of service `gateway`.
    metrics: Metrics,
    observer: Observer,
    trace_collector: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Starts discovery over `transport`; the route table is filled before
    /// this returns.
    pub async fn start(
        config: &GatewayConfig,
        transport: Arc<dyn Transport>,
    ) -> Result<Self, GatewayError> {
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let metrics = Metrics::new(InstanceIdentity {
            service: "gateway",
            instance: &instance,
            version: env!("CARGO_PKG_VERSION"),
        })?;
        microcore::telemetry::metrics::observe_connection(metrics.meter(), transport.clone());
        let subjects = Subjects::new(&config.subject_prefix);
        let (routes, discovery) = discovery::start(
            transport.clone(),
            subjects.clone(),
            config.discovery_interval,
            config.route_retention,
        )
        .await?;
        let (observer, trace_collector) =
            Observer::start(transport.clone(), subjects, config.trace_buffer).await?;
        let auth = config
            .auth_secret
            .as_deref()
            .map(|secret| Auth::new(secret.as_bytes(), Duration::ZERO))
            .transpose()?;
        let proxy = Arc::new(Proxy {
            transport,
            routes,
            auth,
            body_limit: config.body_limit,
        });
        Ok(Self {
            proxy,
            discovery,
            metrics,
            observer,
            trace_collector,
        })
    }

    /// The HTTP application.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/openapi.json", get(proxy::openapi))
            .route("/health", get(health))
            .route("/health/live", get(live))
            .route("/health/ready", get(ready))
            .route("/system/routes", get(system::routes))
            .route("/system/status", get(system::status))
            .route("/system/events", get(events::topology))
            .route("/system/metrics/targets", get(metrics::scrape_targets))
            .route(
                "/system/metrics/{service}/{instance}",
                get(metrics::instance_metrics),
            )
            .merge(docs::router())
            .merge(metrics::own_metrics_router(self.metrics.clone()))
            .merge(self.observer.clone().router())
            .fallback(proxy::forward)
            .with_state(self.proxy.clone())
            .layer(
                // Outermost first: the request id is set before anything
                // else runs and echoed on every answer, a panic's 500 too.
                ServiceBuilder::new()
                    .map_request(drop_unusable_request_id)
                    .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                    .layer(PropagateRequestIdLayer::x_request_id())
                    .layer(CatchPanicLayer::custom(|_| {
                        tracing::error!("gateway handler panicked");
                        envelope::error(StatusCode::INTERNAL_SERVER_ERROR, "internal server error")
                    })),
            )
            // Outermost, so that every answer is measured, a panic's too.
            .layer(metrics::RequestMetricsLayer::new(&self.metrics))
    }

    /// Serves HTTP on `listener` until `shutdown` resolves, then finishes
    /// the requests in flight.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = self.router();
        // Live streams never end by themselves: end them, or the graceful
        // shutdown would wait for their clients.
        let observer = self.observer.clone();
        let shutdown = async move {
            shutdown.await;
            observer.close_streams();
        };
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        self.discovery.abort();
        self.metrics.shutdown().await;
        self.trace_collector.abort();
        result
    }
}

/// A client request id is honoured only if it is short and printable;
/// otherwise the request-id layer makes a fresh one.
fn drop_unusable_request_id(mut request: Request) -> Request {
    let usable = |v: &HeaderValue| {
        !v.is_empty()
            && v.len() <= MAX_REQUEST_ID
            && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    };
    if request
        .headers()
        .get(shared_schemas::http::REQUEST_ID)
        .is_some_and(|v| !usable(v))
    {
        request
            .headers_mut()
            .remove(shared_schemas::http::REQUEST_ID);
    }
    request
}

/// The process answers: what a liveness probe asks.
async fn live() -> Response {
    envelope::ok(json!({ "status": "alive" }))
}

/// It can forward requests: connected to NATS. A gateway that knows no
/// service yet is ready all the same: it answers their routes as soon as
/// they announce themselves, and until then says why it cannot.
async fn ready(State(proxy): State<Arc<Proxy>>) -> Response {
    if proxy.transport.is_connected() {
        envelope::ok(json!({ "status": "ready" }))
    } else {
        envelope::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: disconnected from NATS",
        )
    }
}

async fn health(State(proxy): State<Arc<Proxy>>) -> Response {
    let snapshot = proxy.routes.load();
    envelope::ok(json!({
        "status": "ok",
        "services": snapshot.live_services(),
        "transports": snapshot.transports(),
    }))
}
