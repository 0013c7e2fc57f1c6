//! Logs, traces and metrics. Logs and traces are set up once per process
//! by [`init`]; metrics once per instance ([`Metrics`], see [`metrics`]).
//!
//! - **Logs** are JSON lines when stderr is not a terminal (containers, log
//!   shippers) and human-readable when it is; `MC_LOG_FORMAT=json` or
//!   `pretty` decides explicitly, `RUST_LOG` filters (default
//!   `info,sqlx=warn`). Every line carries the fields of the spans it
//!   happens in: the service and its instance, and inside a handler the
//!   plugin, the request id and the route. Once the process's transport
//!   exists ([`forward_logs`]), the records that pass the filter are also
//!   published on the bus for the gateway's live log stream (see
//!   [`log_stream`]).
//! - **Traces** go to an OTLP collector when `OTEL_EXPORTER_OTLP_ENDPOINT`
//!   (or `…_TRACES_ENDPOINT`) is set, over HTTP (`OTEL_EXPORTER_OTLP_PROTOCOL`
//!   `http/protobuf`, the default, written by [`otlp`], or `http/json`), sampled as
//!   `OTEL_TRACES_SAMPLER` says, named by `OTEL_SERVICE_NAME` or the
//!   service. Unset, no span leaves the process and nothing is exported.
//!   The W3C trace context rides in the headers of every message
//!   ([`inject`], [`continue_trace`]), so one trace follows a request
//!   through every service it touches, its SQL statements included (see
//!   [`sql`]). Whether a trace is sampled is decided where it enters a
//!   process, before any of its spans is built: an unsampled request
//!   builds none anywhere (see [`sampling`]).
//! - **Metrics** are the instance's own: the gateway serves them as
//!   Prometheus text and they go to the OTLP collector when one is
//!   configured (see [`metrics`]). The statements of a service count in
//!   its `db.client.operation.duration` (see [`sql`]).

mod log_stream;
pub mod metrics;
mod otlp;
mod sampling;
mod sql;
mod trace_context;

pub use metrics::{InstanceIdentity, Metrics, MetricsError};
pub(crate) use sql::{DbMetrics, record_statements};

use std::future::Future;
use std::io::IsTerminal;
use std::sync::OnceLock;

use http::HeaderMap;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::{LookupSpan as _, SpanRef};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

pub use log_stream::forward_logs;

use crate::config::Variable;

/// The log filter when `RUST_LOG` is unset or unreadable.
const DEFAULT_LOG_FILTER: &str = "info,sqlx=warn";

/// The variables telemetry reads, in every binary.
pub const VARIABLES: &[Variable] = &[
    Variable::optional("RUST_LOG", DEFAULT_LOG_FILTER, "log filter"),
    Variable::optional(
        "MC_LOG_FORMAT",
        "<pretty on a terminal, json otherwise>",
        "json or pretty",
    ),
    Variable::optional(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "",
        "OTLP/HTTP collector of traces and metrics (unset: nothing exported)",
    ),
    Variable::optional(
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "http/protobuf",
        "or http/json",
    ),
    Variable::optional(
        "OTEL_SERVICE_NAME",
        "<the service name>",
        "service.name of exported traces and metrics",
    ),
    Variable::optional(
        "OTEL_TRACES_SAMPLER",
        "parentbased_always_on",
        "which traces are recorded",
    ),
    Variable::optional(
        "OTEL_TRACES_SAMPLER_ARG",
        "",
        "the sampler's argument (a ratio)",
    ),
    Variable::optional(
        "OTEL_METRIC_EXPORT_INTERVAL",
        "60000",
        "milliseconds between two OTLP metric exports",
    ),
];

/// The most verbose level `RUST_LOG` lets the logs show (`None`: no
/// bound is known), read once by [`init`].
static LOGS_MAX_LEVEL: OnceLock<Option<LevelFilter>> = OnceLock::new();

/// Whether the logs may show a span at `INFO`, the level of the spans that
/// messages are handled in.
fn logs_may_show_info_spans() -> bool {
    LOGS_MAX_LEVEL
        .get()
        .is_none_or(|max| max.is_none_or(|max| max >= LevelFilter::INFO))
}

/// The target of a service instance's span ([`log_context`]): the span
/// its SQL statements are counted under, traced or not.
pub(crate) const INSTANCE_TARGET: &str = "microcore::instance";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, span fields included.
    Json,
    /// For people at a terminal.
    Pretty,
}

impl LogFormat {
    /// `MC_LOG_FORMAT`, or by whether stderr is a terminal; `Err` names
    /// an unknown value.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("MC_LOG_FORMAT").ok().as_deref() {
            Some("json") => Ok(Self::Json),
            Some("pretty") => Ok(Self::Pretty),
            None | Some("") if std::io::stderr().is_terminal() => Ok(Self::Pretty),
            None | Some("") => Ok(Self::Json),
            Some(other) => Err(format!("MC_LOG_FORMAT={other:?} is not `json` or `pretty`")),
        }
    }
}

/// Keeps the trace exporter running; dropping it flushes what is
/// buffered. Hold it for the life of `main`.
#[must_use = "dropping the guard stops trace export"]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.tracer_provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("could not flush the last spans: {e}");
        }
    }
}

/// Installs logging and, when configured, trace export for the process
/// serving `service`. A second call installs nothing.
pub fn init(service: &str) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let (format, unknown_format) = match LogFormat::from_env() {
        Ok(format) => (format, None),
        Err(unknown) => (LogFormat::Pretty, Some(unknown)),
    };
    let log_filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let (tracer_provider, export_error) = match tracer_provider(service) {
        Ok(provider) => (provider, None),
        Err(e) => (None, Some(e)),
    };
    // Spans are traced whatever RUST_LOG lets the logs show. They carry
    // the attributes of the semantic conventions and nothing that costs on
    // every poll of an instrumented future: no busy/idle timings, no
    // thread or source location, and no OpenTelemetry context made current
    // on entry (trace context is read from the span itself, see
    // `inject`); and only sampled traces reach the layer (see `sampling`).
    let traces = tracer_provider.as_ref().map(|provider| {
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("microcore"))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            .with_context_activation(false);
        sampling::Recorded::new(layer)
    });
    // sqlx logs each statement at debug level; only this layer asks for
    // it: every statement is measured, and while spans are exported it
    // becomes a span too. It sees the spans, to find the instance that ran
    // the statement and the handler to place it under. (It is always in
    // the stack: an `Option` layer would not learn its dispatcher.)
    let sql_statements = sql::SqlSpans::new(
        tracer_provider
            .as_ref()
            .map(|provider| provider.tracer("microcore.sql")),
    );
    // Every layer under a filter of its own looks the span up each time a
    // span is entered or left, so layers that want the same records share
    // one filter: the log lines and the records forwarded to the bus pass
    // `RUST_LOG`; traces and statements take sqlx's statements, the
    // instance spans they are counted under, and, while traces are
    // exported, every span and event at `INFO` and above. Untraced, a
    // request's span costs only what `RUST_LOG` asks of it.
    let exporting = traces.is_some();
    let _ = LOGS_MAX_LEVEL.set(log_filter.max_level_hint());
    let forwarding = log_stream::Forwarding::new(service);
    let logs = logs
        .and_then(log_stream::LogForwarding::new(forwarding.clone()))
        .with_filter(log_filter);
    let spans = sql_statements.and_then(traces).with_filter(
        filter_fn(move |metadata| {
            (exporting && *metadata.level() <= tracing::Level::INFO)
                || metadata.target() == INSTANCE_TARGET
                || (metadata.target() == sql::TARGET && *metadata.level() <= tracing::Level::DEBUG)
        })
        .with_max_level_hint(LevelFilter::DEBUG),
    );
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()
        .is_ok();
    if installed {
        log_stream::install(forwarding);
    }
    if let Some(unknown) = unknown_format {
        tracing::warn!("{unknown}; writing pretty logs");
    }
    if let Some(e) = export_error {
        tracing::warn!(error = %e, "OTLP trace export is configured but could not start; no spans are exported");
    }
    Telemetry {
        tracer_provider: tracer_provider.filter(|_| installed),
    }
}

/// Whether OTLP export of `signal` (`TRACES`, `METRICS`) is configured:
/// `OTEL_EXPORTER_OTLP_ENDPOINT` or the signal's own endpoint is set.
fn otlp_configured(signal: &str) -> bool {
    otlp_setting("ENDPOINT", signal).is_some()
}

/// The OTLP protocol to set when the environment names none for `signal`:
/// `http/protobuf`, the specification's default (with both HTTP encodings
/// built in, the exporter would pick JSON). `None`: the exporter follows
/// the environment.
fn otlp_default_protocol(signal: &str) -> Option<opentelemetry_otlp::Protocol> {
    otlp_setting("PROTOCOL", signal)
        .is_none()
        .then_some(opentelemetry_otlp::Protocol::HttpBinary)
}

/// The `signal`'s own `OTEL_EXPORTER_OTLP_<signal>_<setting>`, else
/// `OTEL_EXPORTER_OTLP_<setting>`, when set and not empty.
fn otlp_setting(setting: &str, signal: &str) -> Option<String> {
    [
        format!("OTEL_EXPORTER_OTLP_{signal}_{setting}"),
        format!("OTEL_EXPORTER_OTLP_{setting}"),
    ]
    .iter()
    .find_map(|name| std::env::var(name).ok().filter(|value| !value.is_empty()))
}

/// Why trace export could not start.
#[derive(Debug, thiserror::Error)]
enum TraceExportError {
    #[error(transparent)]
    Protobuf(#[from] otlp::ExportSetupError),
    #[error(transparent)]
    Otlp(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The exporting provider when an OTLP endpoint is configured: with this
/// crate's exporter for `http/protobuf` (see [`otlp`]), with
/// opentelemetry-otlp's for the rest.
fn tracer_provider(service: &str) -> Result<Option<SdkTracerProvider>, TraceExportError> {
    if !otlp_configured("TRACES") {
        return Ok(None);
    }
    let provider = match otlp::ProtobufExporter::from_env()? {
        Some(exporter) => SdkTracerProvider::builder().with_batch_exporter(exporter),
        None => {
            let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
            if let Some(protocol) = otlp_default_protocol("TRACES") {
                exporter = exporter.with_protocol(protocol);
            }
            SdkTracerProvider::builder().with_batch_exporter(exporter.build()?)
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service.to_owned());
    }
    // `OTEL_TRACES_SAMPLER`, read by the SDK's default configuration, both
    // for the SDK and for the decisions taken before spans are built.
    let sampler = opentelemetry_sdk::trace::Config::default().sampler;
    let provider = provider
        .with_resource(resource.build())
        .with_sampler(sampler.clone())
        .with_id_generator(sampling::DecidedIds::default())
        .build();
    sampling::install(sampler);
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(Some(provider))
}

/// Writes the trace context of `span` into `headers` (`traceparent`,
/// `tracestate`), replacing any there; inside an unsampled trace (see
/// [`Trace::instrument`]), or for a span of one, the context it carries
/// on.
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    match sampling::carried().or_else(|| sampling::carried_context(span)) {
        Some(carried) => trace_context::inject(&carried, headers),
        None => trace_context::inject(span.context().span().span_context(), headers),
    }
}

/// Runs `f` on what the registry keeps of `span`, which no layer's filter
/// hides; `None` when the span is disabled or the process did not install
/// [`init`]'s subscriber.
fn in_registry<T>(
    span: &tracing::Span,
    f: impl FnOnce(SpanRef<'_, Registry>) -> Option<T>,
) -> Option<T> {
    span.with_subscriber(|(id, dispatch)| f(dispatch.downcast_ref::<Registry>()?.span(id)?))
        .flatten()
}

/// Creates, with `make_span`, a span that gives log lines their context
/// (the instance a service runs as) and is no trace: under it, only what
/// enters through [`continue_trace`] is traced, not the background work of
/// the instance (its outbox relay's statements, say), which would
/// otherwise gather in one trace as long as the process.
pub(crate) fn log_context(make_span: impl FnOnce() -> tracing::Span) -> tracing::Span {
    sampling::entry(
        Some(opentelemetry::trace::SpanContext::empty_context()),
        make_span,
    )
}

/// The span of sending a message inside the trace being handled (a
/// publish, a request to another service), created with `make_span`, and
/// the headers that carry the trace to the message's receivers. Inside an
/// unsampled trace whose spans the logs cannot show, no span is built: no
/// layer would record it, and the headers carry the trace on without it.
pub(crate) fn outgoing(make_span: impl FnOnce() -> tracing::Span) -> (tracing::Span, HeaderMap) {
    let span = if sampling::carried().is_some() && !logs_may_show_info_spans() {
        tracing::Span::none()
    } else {
        make_span()
    };
    let mut headers = HeaderMap::new();
    inject(&span, &mut headers);
    (span, headers)
}

/// Records `trace_id`, and `span_id` when there is one, on `span` as
/// strings: no layer formats them, and the OpenTelemetry layer is not
/// shown them (see [`sampling`]).
fn record_ids(
    span: &tracing::Span,
    trace_id: opentelemetry::trace::TraceId,
    span_id: Option<opentelemetry::trace::SpanId>,
) {
    let mut hex = [0; 32];
    trace_context::encode_hex(&trace_id.to_bytes(), &mut hex);
    span.record("trace_id", std::str::from_utf8(&hex).unwrap_or_default());
    if let Some(span_id) = span_id {
        let hex = &mut hex[..16];
        trace_context::encode_hex(&span_id.to_bytes(), hex);
        span.record("span_id", std::str::from_utf8(hex).unwrap_or_default());
    }
}

/// The handling of one message in its trace: the span it runs in and, for
/// an unsampled trace, the context its messages carry on.
pub struct Trace {
    /// Recorded when the trace is; built for the logs alone when it is
    /// not (disabled when they do not show it).
    pub span: tracing::Span,
    unrecorded: Option<opentelemetry::trace::SpanContext>,
}

impl Trace {
    /// Runs `future` in the trace: inside its span, and with what
    /// [`inject`] writes for an unsampled trace.
    pub fn instrument<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        sampling::carry(self.unrecorded, future.instrument(self.span))
    }
}

/// Creates, with `make_span`, the span of handling a message whose
/// `headers` carry (or not) a trace context: the span continues that trace
/// or starts one, and is recorded only when the sampler says so, decided
/// before the span is built. Records the span's `trace_id` and `span_id`
/// fields, where it declares them and the logs may show it, so that its
/// log lines name their trace (an unsampled one has a trace id but no
/// span id). Run the handling with [`Trace::instrument`].
pub fn continue_trace(headers: &HeaderMap, make_span: impl FnOnce() -> tracing::Span) -> Trace {
    let (span, unrecorded) = match sampling::decide(|| trace_context::extract(headers)) {
        sampling::Decision::Off => (make_span(), None),
        // No layer records the span of an unsampled trace: unless the logs
        // may show it, none is built, and its context goes on without one.
        sampling::Decision::Skip(carried) if !logs_may_show_info_spans() => {
            (tracing::Span::none(), Some(carried))
        }
        sampling::Decision::Skip(carried) => {
            let span = sampling::entry(Some(carried.clone()), make_span);
            record_ids(&span, carried.trace_id(), None);
            (span, Some(carried))
        }
        sampling::Decision::Record { parent, new_trace } => {
            let span = sampling::entry(None, make_span);
            if let Some(parent) = parent {
                // Cannot fail: the span has not started yet.
                let _ = span.set_parent(parent);
            }
            // Started now, so that a new trace gets the id it was decided with.
            let context = sampling::with_trace_id(new_trace, || span.context());
            let started = context.span();
            let ids = started.span_context();
            // For the log lines, and only if they may show the span.
            if ids.is_valid() && logs_may_show_info_spans() {
                record_ids(&span, ids.trace_id(), Some(ids.span_id()));
            }
            (span, None)
        }
    };
    Trace { span, unrecorded }
}
