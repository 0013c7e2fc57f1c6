//! The microcore gateway: the one HTTP entry point of the system.
//!
//! It learns which services are live and which endpoints they offer from
//! the bus (`discovery`), routes each request to the owning service over
//! request-reply (`proxy`), and serves one OpenAPI document merged from
//! every live service with a docs page (`docs`). It knows the bus only as
//! an `Arc<dyn Transport>`, so the same gateway runs in front of a fleet
//! over NATS or beside the services in one process.
//!
//! How the parts fit:
//!
//! - `registry` keeps the known services and instances (pure);
//!   `discovery` is the task that feeds it announcements and sweeps;
//! - on each change, a `snapshot` is derived: the `routes` table, the
//!   `openapi` document and the conflict report, swapped in whole;
//! - requests read the current snapshot without waiting on discovery:
//!   `proxy` for service routes, `system` and `docs` for the
//!   gateway's own paths;
//! - every response carries the request id (`request_id`), and a panic
//!   becomes a generic 500 envelope.
//!
//! ```no_run
//! # async fn run(transport: std::sync::Arc<dyn microcore::transport::Transport>) -> anyhow::Result<()> {
//! use gateway::{Gateway, GatewayConfig};
//!
//! let config = GatewayConfig::from_env()?;
//! let gateway = Gateway::start(&config, transport).await?;
//! let listener = tokio::net::TcpListener::bind(config.http_addr).await?;
//! gateway.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```

mod config;
mod discovery;
mod docs;
mod envelope;
mod openapi;
mod proxy;
mod registry;
mod request_id;
mod routes;
mod snapshot;
mod system;

use std::any::Any;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use axum::routing::{MethodRouter, get};
use axum::serve::ListenerExt;
use http::{Method, StatusCode, Uri};
use microcore::transport::{Transport, TransportError};
use shared_schemas::Subjects;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower::util::MapRequestLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

pub use config::{ConfigError, GatewayConfig};

use crate::discovery::Discovery;
use crate::snapshot::SnapshotCell;

/// What every handler shares.
struct AppState {
    transport: Arc<dyn Transport>,
    snapshot: Arc<SnapshotCell>,
    body_limit: usize,
}

/// A gateway with discovery running.
///
/// Discovery stops when the `Gateway` is dropped: keep it alive for as long
/// as its [`router`](Self::router) serves.
pub struct Gateway {
    state: Arc<AppState>,
    _discovery: Discovery,
}

impl Gateway {
    /// Subscribes to announcements and sweeps once over `transport`, so the
    /// route table holds every live service when this returns, then keeps
    /// it current in the background. Fails only when the announcements
    /// cannot be subscribed to.
    pub async fn start(
        config: &GatewayConfig,
        transport: Arc<dyn Transport>,
    ) -> Result<Self, TransportError> {
        let (snapshot, discovery) = discovery::start(
            transport.clone(),
            Subjects::new(&config.subject_prefix),
            config.discovery_interval,
            config.route_retention,
        )
        .await?;
        let state = Arc::new(AppState {
            transport,
            snapshot,
            body_limit: config.body_limit,
        });
        Ok(Self {
            state,
            _discovery: discovery,
        })
    }

    /// The HTTP application: the gateway's own paths, and every other path
    /// proxied to the service that owns it.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/health", own(system::health))
            .route("/system/routes", own(system::routes))
            .route("/openapi.json", own(docs::openapi))
            .route("/docs", own(docs::redirect))
            .route("/docs/", own(docs::index))
            .route("/docs/{*file}", own(docs::file))
            .fallback(proxy::forward)
            .with_state(self.state.clone())
            .layer(
                // Outermost first: the id is settled before anything can
                // fail, and the panic answer still passes the layer that
                // echoes it.
                ServiceBuilder::new()
                    .layer(MapRequestLayer::new(request_id::drop_unusable::<Body>))
                    .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                    .layer(PropagateRequestIdLayer::x_request_id())
                    .layer(CatchPanicLayer::custom(internal_error)),
            )
    }

    /// Serves HTTP on `listener` until `shutdown` resolves; then stops
    /// accepting connections, lets the requests in flight finish, and stops
    /// discovery.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        // Replies are written whole: never hold one back for coalescing.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        });
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}

/// A `GET` route of the gateway's own; other methods get the 405 envelope.
fn own<H, T>(handler: H) -> MethodRouter<Arc<AppState>>
where
    H: axum::handler::Handler<T, Arc<AppState>>,
    T: 'static,
{
    get(handler).fallback(method_not_allowed)
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    envelope::error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// The answer to a panic: generic for the client, the cause in the log.
fn internal_error(panic: Box<dyn Any + Send + 'static>) -> Response {
    let cause = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a non-text panic payload");
    tracing::error!(cause, "a gateway handler panicked");
    envelope::error(StatusCode::INTERNAL_SERVER_ERROR, "internal server error")
}

#[cfg(test)]
mod tests;
