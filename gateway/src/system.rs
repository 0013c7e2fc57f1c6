//! The gateway's fleet views, built from what every live instance
//! announces about itself (see the kernel's `status`): `/system/routes`,
//! the route table (each route with the live versions serving it) and its
//! conflicts: claims ignored, and routes the live versions of a service
//! describe differently; and `/system/status`, every service
//! with its instances, their plugins (ready, or dead and why), endpoints
//! and subscriptions. The views built from what instances answer when
//! asked are in `events` and `metrics`, and one part of `/system/status`
//! is too: the health of each instance's tools, which no announcement can
//! carry since it is only true when asked. Every live instance is asked at
//! once with the usual short timeout ([`instances::REPORT_TIMEOUT`]); one
//! that does not answer is listed with a `health_error` instead of its
//! tools, and the view answers all the same.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use futures_util::future::join_all;
use microcore::transport::Transport;
use serde::Serialize;
use serde::de::DeserializeOwned;
use shared_schemas::discovery::{HttpEndpoint, PluginStatus, ServiceInfo, SubscriptionInfo, meta};
use shared_schemas::system::{ToolHealth, View};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::discovery::RoutesView;
use crate::envelope;
use crate::instances;
use crate::proxy::Proxy;

/// `GET /system/routes`.
pub async fn routes(State(proxy): State<Arc<Proxy>>) -> Response {
    let snapshot = proxy.routes.load();
    envelope::ok(RoutesView::of(&snapshot))
}

/// `GET /system/status`.
pub async fn status(State(proxy): State<Arc<Proxy>>) -> Response {
    let snapshot = proxy.routes.load();
    let asked = snapshot.fleet.iter().map(|(_, instances)| {
        join_all(
            instances
                .iter()
                .map(|info| tools_health(proxy.transport.as_ref(), info)),
        )
    });
    let health = join_all(asked).await;
    let now = OffsetDateTime::now_utc();
    let services: Vec<ServiceStatus> = snapshot
        .fleet
        .iter()
        .zip(health)
        .map(|((name, instances), health)| ServiceStatus {
            name,
            live: !instances.is_empty(),
            instances: instances
                .iter()
                .zip(health)
                .map(|(info, health)| InstanceStatus::of(info, health, now))
                .collect(),
        })
        .collect();
    envelope::ok(StatusView { services })
}

/// What the instance `info` describes says of its tools' health.
async fn tools_health(
    transport: &dyn Transport,
    info: &ServiceInfo,
) -> Result<Vec<ToolHealth>, String> {
    let report = instances::report(transport, info, &[View::Health])
        .await
        .map_err(|e| e.to_string())?;
    report
        .health
        .ok_or_else(|| "the instance does not report its tools' health".to_owned())
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
    /// The health of the instance's tools that check it, as it answered
    /// just now; `None` when it did not.
    tools: Option<Vec<ToolHealth>>,
    /// Why `tools` is `None`: the instance did not answer in time, or
    /// runs a kernel that does not report its tools' health.
    health_error: Option<String>,
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
    fn of(
        info: &'a ServiceInfo,
        health: Result<Vec<ToolHealth>, String>,
        now: OffsetDateTime,
    ) -> Self {
        let metadata = |key: &str| info.metadata.get(key).map(String::as_str);
        let (tools, health_error) = match health {
            Ok(tools) => (Some(tools), None),
            Err(reason) => (None, Some(reason)),
        };
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
            tools,
            health_error,
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
