//! The gateway's fleet views, built from what every live instance
//! announces about itself (see the kernel's `status`): `/system/routes`,
//! the route table with its conflicts, and `/system/status`, every service
//! with its instances, their plugins (ready, or dead and why), endpoints
//! and subscriptions. The views built from what instances answer when
//! asked are in `events` and `metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use serde::Serialize;
use serde::de::DeserializeOwned;
use shared_schemas::discovery::{HttpEndpoint, PluginStatus, ServiceInfo, SubscriptionInfo, meta};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::discovery::RoutesView;
use crate::envelope;
use crate::proxy::Proxy;

/// `GET /system/routes`.
pub async fn routes(State(proxy): State<Arc<Proxy>>) -> Response {
    let snapshot = proxy.routes.load();
    envelope::ok(RoutesView {
        routes: &snapshot.table.routes,
        conflicts: &snapshot.conflicts,
    })
}

/// `GET /system/status`.
pub async fn status(State(proxy): State<Arc<Proxy>>) -> Response {
    let snapshot = proxy.routes.load();
    let now = OffsetDateTime::now_utc();
    let services: Vec<ServiceStatus> = snapshot
        .fleet
        .iter()
        .map(|(name, instances)| ServiceStatus {
            name,
            live: !instances.is_empty(),
            instances: instances
                .iter()
                .map(|i| InstanceStatus::of(i, now))
                .collect(),
        })
        .collect();
    envelope::ok(StatusView { services })
}

#[derive(Serialize)]
struct StatusView<'a> {
    services: Vec<ServiceStatus<'a>>,
}

#[derive(Serialize)]
struct ServiceStatus<'a> {
    name: &'a str,
    /// False while its routes are retained after the last instance left.
    live: bool,
    instances: Vec<InstanceStatus<'a>>,
}

#[derive(Serialize)]
struct InstanceStatus<'a> {
    id: &'a str,
    version: &'a str,
    host: Option<&'a str>,
    transport: Option<&'a str>,
    started: Option<&'a str>,
    uptime_secs: Option<i64>,
    plugins: Vec<PluginStatus>,
    endpoints: Vec<EndpointStatus<'a>>,
    subscriptions: Vec<SubscriptionInfo>,
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum EndpointStatus<'a> {
    Http {
        name: &'a str,
        method: String,
        path: String,
        authenticated: bool,
    },
    Rpc {
        name: &'a str,
    },
    /// The instance's own system endpoint (its live figures).
    System {
        name: &'a str,
    },
    Other {
        name: &'a str,
    },
}

impl<'a> InstanceStatus<'a> {
    fn of(info: &'a ServiceInfo, now: OffsetDateTime) -> Self {
        let metadata = |key: &str| info.metadata.get(key).map(String::as_str);
        let started = metadata(meta::STARTED);
        let uptime_secs = started
            .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
            .map(|started| (now - started).whole_seconds());
        let endpoints = info
            .endpoints
            .iter()
            .map(
                |endpoint| match HttpEndpoint::from_metadata(&endpoint.metadata) {
                    Ok(Some(http)) => EndpointStatus::Http {
                        name: &endpoint.name,
                        method: http.method,
                        path: http.path,
                        authenticated: http.auth,
                    },
                    _ if endpoint.metadata.contains_key(meta::RPC_NAME) => EndpointStatus::Rpc {
                        name: endpoint.metadata[meta::RPC_NAME].as_str(),
                    },
                    _ if endpoint.metadata.contains_key(meta::SYSTEM) => EndpointStatus::System {
                        name: &endpoint.name,
                    },
                    _ => EndpointStatus::Other {
                        name: &endpoint.name,
                    },
                },
            )
            .collect();
        Self {
            id: &info.id,
            version: &info.version,
            host: metadata(meta::HOST),
            transport: metadata(meta::TRANSPORT),
            started,
            uptime_secs,
            plugins: listed(info, meta::PLUGINS),
            endpoints,
            subscriptions: listed(info, meta::SUBSCRIPTIONS),
        }
    }
}

/// A JSON list of the instance's metadata. Instances of older kernels
/// lack these entries: empty, not an error.
fn listed<T: DeserializeOwned>(info: &ServiceInfo, key: &str) -> Vec<T> {
    info.metadata
        .get(key)
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default()
}
