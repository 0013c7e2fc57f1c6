//! Metrics at the gateway: its own, and every instance's for Prometheus.
//!
//! - [`requests`] measures every request the gateway answers as
//!   `http.server.request.duration`.
//! - `GET /metrics` serves the gateway's own metrics as Prometheus text.
//! - `GET /system/metrics/{service}/{instance}` serves one service
//!   instance's, asked over its system endpoint: Prometheus scrapes every
//!   instance through the gateway and needs no network path to them.
//! - `GET /system/metrics/targets` lists those paths as a Prometheus HTTP
//!   service discovery document, so that one `http_sd_config` pointed at
//!   the gateway finds every live instance as it comes and goes:
//!
//! ```yaml
//! scrape_configs:
//!   - job_name: microcore
//!     http_sd_configs:
//!       - url: http://gateway:8080/system/metrics/targets
//! ```

mod requests;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::uri::Authority;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use http::{HeaderMap, StatusCode, Uri, header};
use microcore::telemetry::Metrics;
use microcore::telemetry::metrics::PROMETHEUS_CONTENT_TYPE;
use serde::Serialize;
use shared_schemas::system::View;

use crate::envelope;
use crate::instances::{self, ReportError};
use crate::proxy::Proxy;

pub use requests::RequestMetricsLayer;

/// `GET /metrics`, with the gateway's metrics as its state.
pub fn own_metrics_router<S: Clone + Send + Sync + 'static>(metrics: Metrics) -> Router<S> {
    Router::new()
        .route("/metrics", get(own_metrics))
        .with_state(metrics)
}

async fn own_metrics(State(metrics): State<Metrics>) -> Response {
    match metrics.prometheus_text() {
        Ok(text) => prometheus_text(text),
        Err(e) => {
            tracing::error!(error = %e, "could not encode the gateway's metrics");
            envelope::error(StatusCode::INTERNAL_SERVER_ERROR, "internal server error")
        }
    }
}

fn prometheus_text(text: String) -> Response {
    ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], text).into_response()
}

/// `GET /system/metrics/{service}/{instance}`.
pub async fn instance_metrics(
    State(proxy): State<Arc<Proxy>>,
    Path((service, instance)): Path<(String, String)>,
) -> Response {
    let snapshot = proxy.routes.load();
    let info = snapshot
        .fleet
        .iter()
        .filter(|(name, _)| *name == service)
        .flat_map(|(_, instances)| instances)
        .find(|info| info.id == instance);
    let Some(info) = info else {
        return envelope::error(
            StatusCode::NOT_FOUND,
            format!("no live instance `{instance}` of `{service}`"),
        );
    };
    let report = instances::report(proxy.transport.as_ref(), info, &[View::Metrics]).await;
    match report.map(|report| report.metrics) {
        Ok(Some(text)) => prometheus_text(text),
        Ok(None) => envelope::error(
            StatusCode::BAD_GATEWAY,
            format!("instance `{instance}` sent no metrics"),
        ),
        Err(e) => {
            let status = match e {
                ReportError::NoSystemEndpoint => StatusCode::NOT_FOUND,
                ReportError::NoResponder => StatusCode::SERVICE_UNAVAILABLE,
                ReportError::TimedOut(_) => StatusCode::GATEWAY_TIMEOUT,
                ReportError::Transport(_) | ReportError::InvalidReply(_) => StatusCode::BAD_GATEWAY,
            };
            envelope::error(status, format!("instance `{instance}` of `{service}`: {e}"))
        }
    }
}

/// One entry of a Prometheus HTTP service discovery document.
#[derive(Debug, PartialEq, Serialize)]
struct ScrapeTarget {
    targets: [String; 1],
    labels: ScrapeLabels,
}

#[derive(Debug, PartialEq, Serialize)]
struct ScrapeLabels {
    #[serde(rename = "__metrics_path__")]
    metrics_path: String,
    service: String,
    instance_id: String,
}

/// `GET /system/metrics/targets`: every live instance with a system
/// endpoint, scraped through this gateway at the address the client used
/// to reach it. The document is Prometheus's format, a bare JSON list,
/// not the envelope.
pub async fn scrape_targets(
    State(proxy): State<Arc<Proxy>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let Some(address) = gateway_address(&uri, &headers) else {
        return envelope::error(
            StatusCode::BAD_REQUEST,
            "a valid Host header is needed to name the scrape targets",
        );
    };
    let snapshot = proxy.routes.load();
    let targets: Vec<ScrapeTarget> = snapshot
        .fleet
        .iter()
        .flat_map(|(_, instances)| instances)
        .filter(|info| instances::system_subject(info).is_some())
        .map(|info| ScrapeTarget {
            targets: [address.to_string()],
            labels: ScrapeLabels {
                metrics_path: format!("/system/metrics/{}/{}", info.name, info.id),
                service: info.name.clone(),
                instance_id: info.id.clone(),
            },
        })
        .collect();
    Json(targets).into_response()
}

/// `host:port` of this gateway as the request names it: the authority of
/// an absolute URI (HTTP/2), else the `Host` header.
fn gateway_address(uri: &Uri, headers: &HeaderMap) -> Option<Authority> {
    if let Some(authority) = uri.authority() {
        return Some(authority.clone());
    }
    headers
        .get(header::HOST)?
        .to_str()
        .ok()?
        .parse::<Authority>()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scrape_address_is_the_one_the_client_used() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "gateway.local:8080".parse().unwrap());
        let relative: Uri = "/system/metrics/targets".parse().unwrap();
        assert_eq!(
            gateway_address(&relative, &headers).map(|a| a.to_string()),
            Some("gateway.local:8080".to_owned())
        );
        headers.insert(header::HOST, "not a host/".parse().unwrap());
        assert_eq!(gateway_address(&relative, &headers), None);
    }
}
