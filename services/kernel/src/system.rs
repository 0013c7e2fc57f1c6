//! The instance's system endpoint: where the gateway asks this one
//! instance (not any replica of its service) for its live figures, the bus
//! counters and the Prometheus text of its metrics.
//!
//! It is an endpoint like the others, registered through the transport,
//! so it works the same in-process and over NATS and is listed in
//! `$SRV.INFO`; its subject is unique to the instance
//! ([`Subjects::system`]), and its metadata marks it as the system
//! endpoint so that the gateway never routes it as HTTP. The request and
//! the reply are the wire contract of [`shared_schemas::system`].

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, header};
use shared_schemas::Subjects;
use shared_schemas::discovery::{EndpointInfo, meta};
use shared_schemas::system::{InstanceReport, VIEW, View};

use crate::telemetry::Metrics;
use crate::tools::bus::BusCounters;
use crate::transport::{Incoming, Message};

/// The micro endpoint name of the system endpoint.
const ENDPOINT_NAME: &str = "system";

/// Answers for one instance.
pub(crate) struct SystemEndpoint {
    pub service: String,
    pub instance: String,
    pub bus: Arc<BusCounters>,
    pub metrics: Metrics,
}

impl SystemEndpoint {
    /// How the endpoint is registered and announced.
    pub fn info(&self, subjects: &Subjects) -> EndpointInfo {
        EndpointInfo {
            name: ENDPOINT_NAME.to_owned(),
            subject: subjects.system(&self.service, &self.instance),
            queue_group: String::new(),
            metadata: [(meta::SYSTEM.to_owned(), meta::SYSTEM_INSTANCE.to_owned())].into(),
        }
    }

    /// Answers one request with the parts it asks for.
    pub async fn serve(&self, incoming: Incoming) {
        let report = self.report(&incoming.message.headers);
        let body = serde_json::to_vec(&report).unwrap_or_default();
        let mut headers = HeaderMap::new();
        headers.insert(
            shared_schemas::http::STATUS,
            HeaderValue::from_static("200"),
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Err(e) = incoming.respond(Message::new(headers, body)).await {
            tracing::debug!(error = %e, "could not answer a system request");
        }
    }

    fn report(&self, request: &HeaderMap) -> InstanceReport {
        let (mut bus, mut metrics) = (false, false);
        match request.get(VIEW).and_then(|v| v.to_str().ok()) {
            None => (bus, metrics) = (true, true),
            Some(views) => {
                for view in View::parse_list(views) {
                    match view {
                        View::Bus => bus = true,
                        View::Metrics => metrics = true,
                    }
                }
            }
        }
        InstanceReport {
            service: self.service.clone(),
            instance: self.instance.clone(),
            bus: bus.then(|| self.bus.report()),
            metrics: metrics
                .then(|| match self.metrics.prometheus_text() {
                    Ok(text) => Some(text),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not read the instance's metrics");
                        None
                    }
                })
                .flatten(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::InstanceIdentity;

    fn endpoint() -> SystemEndpoint {
        SystemEndpoint {
            service: "products".into(),
            instance: "p1".into(),
            bus: Arc::default(),
            metrics: Metrics::new(InstanceIdentity {
                service: "products",
                instance: "p1",
                version: "0.1.0",
            })
            .unwrap(),
        }
    }

    #[test]
    fn the_view_header_selects_the_parts_of_the_report() {
        let endpoint = endpoint();
        let everything = endpoint.report(&HeaderMap::new());
        assert!(everything.bus.is_some() && everything.metrics.is_some());

        let mut headers = HeaderMap::new();
        headers.insert(VIEW, HeaderValue::from_static("bus"));
        let bus_only = endpoint.report(&headers);
        assert!(bus_only.bus.is_some() && bus_only.metrics.is_none());
        assert_eq!(bus_only.instance, "p1");
    }

    #[test]
    fn the_endpoint_is_marked_and_specific_to_the_instance() {
        let info = endpoint().info(&Subjects::default());
        assert_eq!(info.subject, "mc.system.products.p1");
        assert_eq!(info.metadata[meta::SYSTEM], meta::SYSTEM_INSTANCE);
    }
}
