//! Log records on the bus, for the gateway's live log stream.
//!
//! [`init`](super::init) stacks a [`LogForwarding`] layer beside the log
//! writer, behind the same filter (`RUST_LOG`). It is idle until
//! [`forward_logs`] hands it the process's transport; from then on every
//! record that passes the filter becomes a [`LogRecord`] — the fields of a
//! JSON log line — published plainly (nothing stores it) on
//! `{prefix}.logs.{service}`. The service is the one named by the
//! record's `service` span, so in the all-in-one process, where every
//! service shares one subscriber, each record still names its own; outside
//! any service span it is the process (`gateway`, `microcore`).
//!
//! Logging never waits for the bus: the layer hands each record to a
//! bounded queue ([`BACKLOG`]) and one task publishes from there. When the
//! queue is full the record is not forwarded — its log line is written all
//! the same — and counted; the task reports the count in the process's own
//! log. Nothing that task logs is forwarded (it would feed on itself), nor
//! anything the NATS client logs: it logs about the very messages the
//! forwarding sends.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use http::HeaderMap;
use serde_json::{Map, Value};
use shared_schemas::Subjects;
use shared_schemas::logs::LogRecord;
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::transport::{Message, Transport};

/// Records waiting to be published before new ones are dropped.
const BACKLOG: usize = 1024;

/// Targets whose records are never forwarded: the NATS client logs about
/// the messages it sends, forwarded records included.
const UNFORWARDED_TARGETS: &[&str] = &["async_nats"];

/// What the layer and [`forward_logs`] share.
pub(super) struct Forwarding {
    /// The service of records outside any service span.
    process: String,
    queue: mpsc::Sender<LogRecord>,
    /// The other end of `queue`, until forwarding starts.
    waiting: Mutex<Option<mpsc::Receiver<LogRecord>>>,
    started: AtomicBool,
    dropped: AtomicU64,
}

impl Forwarding {
    pub(super) fn new(process: &str) -> Arc<Self> {
        let (queue, records) = mpsc::channel(BACKLOG);
        Arc::new(Self {
            process: process.to_owned(),
            queue,
            waiting: Mutex::new(Some(records)),
            started: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        })
    }

    fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }
}

/// The forwarding of the process, once [`init`](super::init) installed it.
static FORWARDING: OnceLock<Arc<Forwarding>> = OnceLock::new();

/// Makes `forwarding` the one [`forward_logs`] starts.
pub(super) fn install(forwarding: Arc<Forwarding>) {
    // A second `init` installs nothing, so there is no second one.
    let _ = FORWARDING.set(forwarding);
}

tokio::task_local! {
    /// Set inside the task that publishes records.
    static PUBLISHING: ();
}

/// Starts publishing this process's log records over `transport`, from
/// now on. Does nothing when [`init`](super::init) did not install
/// logging, or when forwarding already runs (the first transport keeps
/// it). Spans opened before this call carry only their names.
pub fn forward_logs(transport: Arc<dyn Transport>, subjects: Subjects) {
    let Some(forwarding) = FORWARDING.get() else {
        return;
    };
    let waiting = forwarding
        .waiting
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let Some(records) = waiting else {
        return;
    };
    tokio::spawn(PUBLISHING.scope(
        (),
        publish(forwarding.clone(), records, transport, subjects),
    ));
    forwarding.started.store(true, Ordering::Release);
}

async fn publish(
    forwarding: Arc<Forwarding>,
    mut records: mpsc::Receiver<LogRecord>,
    transport: Arc<dyn Transport>,
    subjects: Subjects,
) {
    let mut failing = false;
    while let Some(record) = records.recv().await {
        let dropped = forwarding.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "the log stream fell behind; records were not forwarded"
            );
        }
        let body = match serde_json::to_vec(&record) {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(error = %e, "a log record could not be serialized");
                continue;
            }
        };
        let subject = subjects.logs(&record.service);
        match transport
            .publish(&subject, Message::new(HeaderMap::new(), body))
            .await
        {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("log records are forwarded again");
            }
            Ok(()) => {}
            // Once per outage: a line per lost record would double the log.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "log records cannot be forwarded");
            }
            Err(_) => {}
        }
    }
}

/// The layer that turns log records into [`LogRecord`]s; see the module.
pub(super) struct LogForwarding {
    forwarding: Arc<Forwarding>,
}

impl LogForwarding {
    pub(super) fn new(forwarding: Arc<Forwarding>) -> Self {
        Self { forwarding }
    }

    fn record<S>(&self, event: &Event<'_>, ctx: &Context<'_, S>) -> LogRecord
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let metadata = event.metadata();
        let mut fields = Map::new();
        event.record(&mut JsonFields(&mut fields));
        let message = match fields.remove("message") {
            Some(Value::String(message)) => message,
            Some(other) => other.to_string(),
            None => String::new(),
        };
        let mut spans = Vec::new();
        let (mut service, mut instance) = (None, None);
        for span in ctx
            .event_scope(event)
            .into_iter()
            .flat_map(|s| s.from_root())
        {
            let mut entry = Map::new();
            entry.insert("name".to_owned(), span.name().into());
            if let Some(SpanFields(recorded)) = span.extensions().get::<SpanFields>() {
                entry.extend(recorded.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            if span.name() == "service" {
                let text = |key: &str| entry.get(key).and_then(Value::as_str).map(str::to_owned);
                service = text("service");
                instance = text("instance");
            }
            spans.push(entry);
        }
        LogRecord {
            timestamp: crate::now_rfc3339(),
            level: metadata.level().to_string(),
            target: metadata.target().to_owned(),
            message,
            fields,
            service: service.unwrap_or_else(|| self.forwarding.process.clone()),
            instance,
            spans,
        }
    }
}

/// The fields a span was opened or recorded with.
struct SpanFields(Map<String, Value>);

impl<S> Layer<S> for LogForwarding
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if !self.forwarding.started() {
            return;
        }
        if let Some(span) = ctx.span(id) {
            let mut fields = Map::new();
            attrs.record(&mut JsonFields(&mut fields));
            span.extensions_mut().insert(SpanFields(fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(SpanFields(fields)) = span.extensions_mut().get_mut::<SpanFields>()
        {
            values.record(&mut JsonFields(fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if !self.forwarding.started()
            || PUBLISHING.try_with(|_| ()).is_ok()
            || UNFORWARDED_TARGETS
                .iter()
                .any(|target| event.metadata().target().starts_with(target))
        {
            return;
        }
        let record = self.record(event, &ctx);
        if self.forwarding.queue.try_send(record).is_err() {
            self.forwarding.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Records fields as JSON values: numbers and booleans as themselves,
/// everything else as its text.
struct JsonFields<'a>(&'a mut Map<String, Value>);

impl JsonFields<'_> {
    fn insert(&mut self, field: &Field, value: impl Into<Value>) {
        self.0.insert(field.name().to_owned(), value.into());
    }
}

impl Visit for JsonFields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.insert(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert(field, value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert(field, value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.insert(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.insert(field, format!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// The records `log` makes while forwarding is started, as the
    /// publishing task would receive them.
    fn forwarded(log: impl FnOnce()) -> Vec<LogRecord> {
        let forwarding = Forwarding::new("test-process");
        let mut records = forwarding
            .waiting
            .lock()
            .expect("not poisoned")
            .take()
            .expect("the queue's other end");
        forwarding.started.store(true, Ordering::Release);
        let subscriber =
            tracing_subscriber::registry().with(LogForwarding::new(forwarding.clone()));
        tracing::subscriber::with_default(subscriber, log);
        std::iter::from_fn(|| records.try_recv().ok()).collect()
    }

    #[test]
    fn a_record_names_its_service_span_and_keeps_every_field() {
        let records = forwarded(|| {
            let service = tracing::info_span!("service", service = "products", instance = "i-1");
            let _service = service.enter();
            let request = tracing::info_span!(
                "request",
                plugin = "products.create_product",
                request_id = "r-1",
                trace_id = tracing::field::Empty,
            );
            request.record("trace_id", "abc");
            let _request = request.enter();
            tracing::warn!(attempt = 2, ok = false, error = %"boom", "it {}", "failed");
        });
        assert_eq!(records.len(), 1, "{records:?}");
        let record = &records[0];
        assert_eq!(record.level, "WARN");
        assert_eq!(record.message, "it failed");
        assert_eq!(record.service, "products");
        assert_eq!(record.instance.as_deref(), Some("i-1"));
        assert_eq!(record.fields["attempt"], 2);
        assert_eq!(record.fields["ok"], false);
        assert_eq!(record.fields["error"], "boom");
        assert_eq!(record.spans[0]["name"], "service");
        assert_eq!(record.spans[1]["request_id"], "r-1");
        assert_eq!(record.spans[1]["trace_id"], "abc", "recorded later");
    }

    #[test]
    fn outside_a_service_the_process_logs_and_the_bus_client_is_not_forwarded() {
        let records = forwarded(|| {
            tracing::info!("listening");
            tracing::info!(target: "async_nats::connection", "write operation: PUB");
        });
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(records[0].service, "test-process");
        assert!(records[0].spans.is_empty());
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let forwarding = Forwarding::new("p");
        forwarding.started.store(true, Ordering::Release);
        let subscriber =
            tracing_subscriber::registry().with(LogForwarding::new(forwarding.clone()));
        tracing::subscriber::with_default(subscriber, || {
            for n in 0..BACKLOG + 5 {
                tracing::info!(n, "line");
            }
        });
        assert_eq!(forwarding.dropped.load(Ordering::Relaxed), 5);
    }
}
