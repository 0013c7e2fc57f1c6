//! The instance's system endpoint: where the gateway asks this one
//! instance (not any replica of its service) for its live figures, the bus
//! counters, the Prometheus text of its metrics and the health of its
//! tools.
//!
//! It is an endpoint like the others, registered through the transport,
//! so it works the same in-process and over NATS and is listed in
//! `$SRV.INFO`; its subject is unique to the instance
//! ([`Subjects::system`]), and its metadata marks it as the system
//! endpoint so that the gateway never routes it as HTTP. The request and
//! the reply are the wire contract of [`shared_schemas::system`].

use std::sync::Arc;

use http::HeaderMap;
use shared_schemas::Subjects;
use shared_schemas::discovery::{EndpointInfo, meta};
use shared_schemas::system::{InstanceReport, ToolHealth, VIEW, View};

use crate::telemetry::Metrics;
use crate::tools::bus::BusCounters;
use crate::tools::{Health, Toolbox};
use crate::transport::{Incoming, Message};

/// The micro endpoint name of the system endpoint.
const ENDPOINT_NAME: &str = "system";

/// Answers for one instance.
pub(crate) struct SystemEndpoint {
    pub service: String,
    pub instance: String,
    pub bus: Arc<BusCounters>,
    pub metrics: Metrics,
    /// The service's tools, for their health checks.
    pub tools: Toolbox,
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
        let report = self.report(&incoming.message.headers).await;
        let body = serde_json::to_vec(&report).unwrap_or_default();
        // A 200 with a JSON body: the reply needs no headers.
        if let Err(e) = incoming.respond(Message::new(HeaderMap::new(), body)).await {
            tracing::debug!(error = %e, "could not answer a system request");
        }
    }

    async fn report(&self, request: &HeaderMap) -> InstanceReport {
        let wanted = Wanted::of(request);
        let metrics = wanted
            .metrics
            .then(|| match self.metrics.prometheus_text() {
                Ok(text) => Some(text),
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the instance's metrics");
                    None
                }
            })
            .flatten();
        let health = if wanted.health {
            let found = self.tools.check_health().await;
            Some(
                found
                    .into_iter()
                    .map(|(tool, health)| tool_health(tool, health))
                    .collect(),
            )
        } else {
            None
        };
        InstanceReport {
            service: self.service.clone(),
            instance: self.instance.clone(),
            bus: wanted.bus.then(|| self.bus.report()),
            metrics,
            health,
        }
    }
}

/// The parts of the report a request asks for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Wanted {
    bus: bool,
    metrics: bool,
    health: bool,
}

impl Wanted {
    /// What the [`VIEW`] header names; everything without one.
    fn of(request: &HeaderMap) -> Self {
        let Some(views) = request.get(VIEW).and_then(|v| v.to_str().ok()) else {
            return Self {
                bus: true,
                metrics: true,
                health: true,
            };
        };
        let mut wanted = Self::default();
        for view in View::parse_list(views) {
            match view {
                View::Bus => wanted.bus = true,
                View::Metrics => wanted.metrics = true,
                View::Health => wanted.health = true,
            }
        }
        wanted
    }
}

/// A tool's finding as the report carries it.
pub(crate) fn tool_health(tool: &str, health: Health) -> ToolHealth {
    ToolHealth {
        tool: tool.to_owned(),
        healthy: health.is_healthy(),
        detail: health.status.err(),
        latency_ms: health.latency.map(|latency| latency.as_secs_f64() * 1000.0),
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::telemetry::InstanceIdentity;
    use crate::tools::Tool;

    /// A tool that is always down.
    #[derive(Clone)]
    struct Mailer;
    impl Tool for Mailer {
        const NAME: &'static str = "mailer";

        async fn check_health(&self) -> Option<Health> {
            Some(Health::unhealthy("the relay refuses connections"))
        }
    }

    fn endpoint() -> SystemEndpoint {
        let mut tools = Toolbox::new();
        tools.insert(Mailer).unwrap();
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
            tools,
        }
    }

    fn asking_for(views: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(VIEW, HeaderValue::from_static(views));
        headers
    }

    #[tokio::test]
    async fn the_view_header_selects_the_parts_of_the_report() {
        let endpoint = endpoint();
        let everything = endpoint.report(&HeaderMap::new()).await;
        assert!(everything.bus.is_some() && everything.metrics.is_some());
        assert!(everything.health.is_some());

        let bus_only = endpoint.report(&asking_for("bus")).await;
        assert!(bus_only.bus.is_some() && bus_only.metrics.is_none());
        assert!(bus_only.health.is_none());
        assert_eq!(bus_only.instance, "p1");
    }

    #[tokio::test]
    async fn the_health_view_lists_what_the_tools_found() {
        let report = endpoint().report(&asking_for("health")).await;
        assert!(report.bus.is_none() && report.metrics.is_none());
        assert_eq!(
            report.health,
            Some(vec![ToolHealth {
                tool: "mailer".into(),
                healthy: false,
                detail: Some("the relay refuses connections".into()),
                latency_ms: None,
            }])
        );
    }

    #[test]
    fn the_endpoint_is_marked_and_specific_to_the_instance() {
        let info = endpoint().info(&Subjects::default());
        assert_eq!(info.subject, "mc.system.products.p1");
        assert_eq!(info.metadata[meta::SYSTEM], meta::SYSTEM_INSTANCE);
    }
}
