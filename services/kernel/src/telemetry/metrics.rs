//! Metrics through OpenTelemetry: each instance (every service instance,
//! and the gateway) owns a [`Metrics`], one meter provider whose resource
//! names the instance (`service.name`, `service.instance.id`,
//! `service.version`), read two ways:
//!
//! - **Prometheus text**, always: a pull reader encodes the provider's
//!   instruments on demand ([`Metrics::prometheus_text`]). The gateway
//!   serves its own at `/metrics` and a service instance's through that
//!   instance's system endpoint.
//! - **OTLP/HTTP**, when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//!   `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` is set: a periodic reader pushes
//!   them every `OTEL_METRIC_EXPORT_INTERVAL` milliseconds (default 60000),
//!   in the protocol `OTEL_EXPORTER_OTLP_PROTOCOL` names, as for traces.
//!
//! Why a provider per instance rather than the process-global one: the
//! embedded process runs several services, and each instance's figures
//! must be its own. A provider per instance keeps them apart by
//! construction: separate instruments, a separate Prometheus text, and in
//! OTLP a separate resource, which is how OpenTelemetry tells instances
//! apart. Instruments are therefore created from [`Metrics::meter`], never
//! from `opentelemetry::global`.

use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter, MeterProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkError;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use prometheus::{Encoder as _, TextEncoder};

use crate::transport::Transport;

/// Bucket boundaries, in seconds, of request and handler durations: the
/// ones the OpenTelemetry HTTP conventions recommend.
pub const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// A histogram of durations in seconds over [`DURATION_BUCKETS`]: the
/// shape of every request and handler duration.
pub fn duration_histogram(
    meter: &Meter,
    name: &'static str,
    description: &'static str,
) -> Histogram<f64> {
    meter
        .f64_histogram(name)
        .with_description(description)
        .with_unit("s")
        .with_boundaries(DURATION_BUCKETS.to_vec())
        .build()
}

/// The content type of [`Metrics::prometheus_text`].
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The instrumentation scope of every instrument the kernel and the
/// gateway create.
const SCOPE: &str = "microcore";

/// The metrics of one instance. Clones share the provider.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    provider: SdkMeterProvider,
    meter: Meter,
    registry: prometheus::Registry,
}

/// Metrics could not be set up or read.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("the Prometheus reader could not start: {0}")]
    Reader(#[from] OTelSdkError),
    #[error("the metrics could not be encoded as Prometheus text: {0}")]
    Encode(#[from] prometheus::Error),
}

/// Who an instance is, for the resource of its metrics.
#[derive(Debug, Clone, Copy)]
pub struct InstanceIdentity<'a> {
    /// `service.name`, unless `OTEL_SERVICE_NAME` says otherwise.
    pub service: &'a str,
    /// `service.instance.id`.
    pub instance: &'a str,
    /// `service.version`.
    pub version: &'a str,
}

impl Metrics {
    /// The metrics of the instance `identity` describes: a Prometheus
    /// reader, and the OTLP exporter when one is configured. An exporter
    /// that cannot start is reported and left out; the Prometheus text
    /// still works.
    pub fn new(identity: InstanceIdentity<'_>) -> Result<Self, MetricsError> {
        let registry = prometheus::Registry::new();
        let prometheus = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()?;
        let mut builder = SdkMeterProvider::builder()
            .with_resource(resource(identity))
            .with_reader(prometheus);
        match otlp_reader() {
            Ok(Some(reader)) => builder = builder.with_reader(reader),
            Ok(None) => {}
            Err(e) => tracing::warn!(
                error = %e,
                "OTLP metrics export is configured but could not start; metrics are only served as Prometheus text"
            ),
        }
        let provider = builder.build();
        let meter = provider.meter(SCOPE);
        Ok(Self {
            inner: Arc::new(Inner {
                provider,
                meter,
                registry,
            }),
        })
    }

    /// Where this instance's instruments are created.
    pub fn meter(&self) -> &Meter {
        &self.inner.meter
    }

    /// Every instrument, collected now, in the Prometheus text exposition
    /// format (served as [`PROMETHEUS_CONTENT_TYPE`]).
    pub fn prometheus_text(&self) -> Result<String, MetricsError> {
        let mut text = Vec::new();
        TextEncoder::new().encode(&self.inner.registry.gather(), &mut text)?;
        // The encoder writes UTF-8 only.
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    /// Exports what the OTLP reader has not sent yet and stops it. It
    /// blocks for up to the export timeout, so it runs on the blocking
    /// pool.
    pub async fn shutdown(&self) {
        let provider = self.inner.provider.clone();
        let stopped = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        match stopped {
            Ok(Ok(())) | Ok(Err(OTelSdkError::AlreadyShutdown)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not flush the last metrics"),
            Err(e) => tracing::warn!(error = %e, "the metrics shutdown ended abnormally"),
        }
    }
}

/// Registers `microcore.transport.connected` in `meter`: 1 while
/// `transport` reaches the bus, 0 while it does not (a NATS connection
/// reconnecting). The in-process transport is always connected.
pub fn observe_connection(meter: &Meter, transport: Arc<dyn Transport>) {
    meter
        .u64_observable_gauge("microcore.transport.connected")
        .with_description("1 while the instance's transport reaches the bus, 0 while it does not")
        .with_callback(move |observer| observer.observe(u64::from(transport.is_connected()), &[]))
        .build();
}

fn resource(identity: InstanceIdentity<'_>) -> Resource {
    // The default detectors read OTEL_SERVICE_NAME and
    // OTEL_RESOURCE_ATTRIBUTES.
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(identity.service.to_owned());
    }
    resource
        .with_attributes([
            KeyValue::new("service.instance.id", identity.instance.to_owned()),
            KeyValue::new("service.version", identity.version.to_owned()),
        ])
        .build()
}

/// The periodic OTLP reader, when an endpoint is configured.
fn otlp_reader() -> Result<
    Option<PeriodicReader<opentelemetry_otlp::MetricExporter>>,
    opentelemetry_otlp::ExporterBuildError,
> {
    if !super::otlp_configured("METRICS") {
        return Ok(None);
    }
    let mut exporter = opentelemetry_otlp::MetricExporter::builder().with_http();
    if let Some(protocol) = super::otlp_default_protocol("METRICS") {
        exporter = exporter.with_protocol(protocol);
    }
    let exporter = exporter.build()?;
    Ok(Some(PeriodicReader::builder(exporter).build()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(service: &str, instance: &str) -> Metrics {
        Metrics::new(InstanceIdentity {
            service,
            instance,
            version: "0.1.0",
        })
        .unwrap()
    }

    #[test]
    fn each_instance_reads_only_its_own_instruments() {
        let products = metrics("products", "p1");
        let users = metrics("users", "u1");
        let requests =
            duration_histogram(products.meter(), "microcore.handler.duration", "handlers");
        requests.record(0.02, &[KeyValue::new("http.route", "/products/{id}")]);

        let text = products.prometheus_text().unwrap();
        assert!(
            text.contains(r#"microcore_handler_duration_seconds_bucket{http_route="/products/{id}",otel_scope_name="microcore",le="0.025"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"service_instance_id="p1""#), "{text}");
        let other = users.prometheus_text().unwrap();
        assert!(!other.contains("microcore_handler_duration"), "{other}");
        assert!(other.contains(r#"service_instance_id="u1""#), "{other}");
    }
}
