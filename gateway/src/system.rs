//! The gateway's own views: `/health` for probes, `/system/routes` for
//! operators (which service answers what, and which claims were refused).

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use serde::Serialize;

use crate::AppState;
use crate::envelope;
use crate::routes::{Conflict, RouteInfo};

#[derive(Serialize)]
struct Health {
    status: &'static str,
    /// Services with at least one live instance.
    services: usize,
}

/// `GET /health`: the gateway is serving; how many services it reaches.
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    let services = state.snapshot.load().live.len();
    envelope::ok(Health {
        status: "ok",
        services,
    })
}

#[derive(Serialize)]
struct RoutesView<'a> {
    routes: Vec<RouteView<'a>>,
    conflicts: &'a [Conflict],
}

#[derive(Serialize)]
struct RouteView<'a> {
    #[serde(flatten)]
    route: &'a RouteInfo,
    /// False while the service has no live instance: the route answers 503
    /// until one returns or the route is forgotten.
    live: bool,
}

/// `GET /system/routes`.
pub async fn routes(State(state): State<Arc<AppState>>) -> Response {
    let snapshot = state.snapshot.load();
    let routes = snapshot
        .table
        .routes()
        .iter()
        .map(|route| RouteView {
            route,
            live: snapshot.live.contains(&route.service),
        })
        .collect();
    envelope::ok(RoutesView {
        routes,
        conflicts: &snapshot.conflicts,
    })
}
