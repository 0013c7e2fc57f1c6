//! SQL spans and database metrics from sqlx's own statement log. sqlx
//! reports every statement it runs as a `sqlx::query` event: its text with
//! placeholders (never the bound values) and how long it took. Plugins
//! call sqlx directly, so this event is the one place every statement
//! passes; this layer turns each into
//!
//! - a client span under the span that ran it, while traces are exported
//!   and that trace is sampled, so a trace shows the queries of every
//!   handler without plugins doing anything;
//! - a `db.client.operation.duration` measurement (seconds, by
//!   `db.system.name`, `db.operation.name` and `db.collection.name`) in the
//!   metrics of the instance that ran it: the nearest enclosing span that
//!   carries [`DbMetrics`] ([`record_statements`]; the service attaches
//!   them to its instance span, so its handlers, consumers and outbox
//!   relay all count, and each instance of the embedded process counts its
//!   own).
//!
//! What it costs: for these events to exist, sqlx must emit them, so the
//! layer always asks for `sqlx::query` at debug level. sqlx then builds,
//! per statement, a four-word summary and, for a longer statement, a copy
//! of its text; the layer reads both without copying them (unless a span
//! is recorded), looks up the instance in the span tree and records one
//! histogram value, allocating only the table name. That is some 8k
//! instructions per statement in all (about 3 µs, a third of it sqlx's),
//! against a database round trip of tens of microseconds at the very
//! least. The log layer still filters these events out (`sqlx=warn` by
//! default), so they do not reach the logs.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter};
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt as _, Tracer as _};
use opentelemetry_sdk::trace::SdkTracer;
use tracing::dispatcher::{Dispatch, WeakDispatch};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::{LookupSpan, SpanRef};

/// The target of sqlx's statement events.
pub(super) const TARGET: &str = "sqlx::query";

/// Bucket boundaries, in seconds, of `db.client.operation.duration`: the
/// ones the OpenTelemetry database conventions recommend.
const DB_DURATION_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

/// The database instrument of one instance.
#[derive(Clone)]
pub(crate) struct DbMetrics {
    duration: Histogram<f64>,
    /// `db.system.name`: `postgresql` or `sqlite`.
    system: KeyValue,
}

impl DbMetrics {
    pub fn new(meter: &Meter, system: &'static str) -> Self {
        Self {
            duration: meter
                .f64_histogram("db.client.operation.duration")
                .with_description("Duration of database client operations")
                .with_unit("s")
                .with_boundaries(DB_DURATION_BUCKETS.to_vec())
                .build(),
            system: KeyValue::new("db.system.name", system),
        }
    }

    fn record(&self, statement: &Statement) {
        let operation = KeyValue::new("db.operation.name", statement.operation.clone());
        match statement.collection() {
            Some(collection) => self.duration.record(
                statement.elapsed_secs,
                &[
                    self.system.clone(),
                    operation,
                    KeyValue::new("db.collection.name", collection.to_owned()),
                ],
            ),
            None => self
                .duration
                .record(statement.elapsed_secs, &[self.system.clone(), operation]),
        }
    }
}

/// Counts every statement run inside `span`, or inside any span under it,
/// in `metrics`. Does nothing when the process did not install
/// [`init`](super::init)'s subscriber.
pub(crate) fn record_statements(span: &tracing::Span, metrics: DbMetrics) {
    super::in_registry(span, |span| {
        span.extensions_mut().insert(metrics);
        Some(())
    });
}

pub(super) struct SqlSpans {
    /// `None` while traces are not exported: no spans, metrics only.
    tracer: Option<SdkTracer>,
    dispatch: OnceLock<WeakDispatch>,
}

impl SqlSpans {
    pub fn new(tracer: Option<SdkTracer>) -> Self {
        Self {
            tracer,
            dispatch: OnceLock::new(),
        }
    }

    /// The trace context of `span` when a statement under it is to be
    /// recorded as a span: traces are exported and this one is sampled.
    fn sampled_parent<S>(
        &self,
        span: &SpanRef<'_, S>,
        dispatch: &Dispatch,
    ) -> Option<opentelemetry::Context>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        if self.tracer.is_none() || super::sampling::is_unrecorded(span) {
            return None;
        }
        let parent = tracing_opentelemetry::get_otel_context(&span.id(), dispatch)?;
        // An unsampled trace records nothing: spare the string work.
        parent.span().span_context().is_sampled().then_some(parent)
    }

    /// The metrics of the instance that ran the statement `event` reports:
    /// those of the nearest enclosing span that carries [`DbMetrics`].
    /// Looked up in the registry itself, not through this layer's filter:
    /// the spans in between (a request's) need not pass it, and on the
    /// thread SQLite runs statements on, the span stack holds only the
    /// span sqlx entered there, not its ancestors.
    fn instance_metrics(event: &Event<'_>, dispatch: &Dispatch) -> Option<DbMetrics> {
        let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
        let id = if event.is_root() {
            return None;
        } else if event.is_contextual() {
            registry.current_span().id()?.clone()
        } else {
            event.parent()?.clone()
        };
        registry
            .span(&id)?
            .scope()
            .find_map(|span| span.extensions().get::<DbMetrics>().cloned())
    }
}

impl<S> tracing_subscriber::Layer<S> for SqlSpans
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, dispatch: &Dispatch) {
        let _ = self.dispatch.set(dispatch.downgrade());
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let Some(dispatch) = self.dispatch.get().and_then(WeakDispatch::upgrade) else {
            return;
        };
        // A statement outside any span belongs to no instance and no trace.
        let metrics = Self::instance_metrics(event, &dispatch);
        let parent = ctx
            .event_span(event)
            .and_then(|leaf| self.sampled_parent(&leaf, &dispatch));
        if metrics.is_none() && parent.is_none() {
            return;
        }
        let mut statement = Statement {
            keep_text: parent.is_some(),
            ..Statement::default()
        };
        event.record(&mut statement);
        if let Some(metrics) = &metrics {
            metrics.record(&statement);
        }
        if let (Some(parent), Some(tracer)) = (parent, &self.tracer) {
            let system = metrics.as_ref().map(|m| m.system.clone());
            statement.span(tracer, &parent, system);
        }
    }
}

/// The fields of one `sqlx::query` event.
#[derive(Default)]
struct Statement {
    /// Keep the text, for a span.
    keep_text: bool,
    /// The first word, upper case: `SELECT`, `INSERT` …
    operation: Cow<'static, str>,
    /// The table, as found in the summary and, for a longer statement, in
    /// the whole text.
    collection_in_summary: Option<String>,
    collection_in_text: Option<String>,
    summary: String,
    /// The whole statement, when longer than its summary.
    full: String,
    elapsed_secs: f64,
}

impl Statement {
    fn collection(&self) -> Option<&str> {
        self.collection_in_text
            .as_deref()
            .or(self.collection_in_summary.as_deref())
    }

    /// The statement on one line: every run of whitespace between its
    /// words (ASCII, as SQL's is) one space.
    fn text(&self) -> String {
        if self.full.trim().is_empty() {
            return self.summary.clone();
        }
        let mut text = String::with_capacity(self.full.len());
        for word in self.full.split_ascii_whitespace() {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(word);
        }
        text
    }

    /// Records the statement as a client span of `parent`, ending now,
    /// with the database conventions' attributes (`db.system.name` when
    /// the instance that ran it is known).
    fn span(&self, tracer: &SdkTracer, parent: &opentelemetry::Context, system: Option<KeyValue>) {
        let text = self.text();
        let name = match self.collection() {
            Some(collection) => format!("{} {collection}", self.operation),
            None => self.operation.to_string(),
        };
        let end = SystemTime::now();
        let elapsed = Duration::try_from_secs_f64(self.elapsed_secs).unwrap_or_default();
        let mut attributes = vec![
            KeyValue::new("db.query.text", text),
            KeyValue::new("db.operation.name", self.operation.clone()),
        ];
        attributes.extend(system);
        if let Some(collection) = self.collection() {
            attributes.push(KeyValue::new("db.collection.name", collection.to_owned()));
        }
        let mut span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_start_time(end - elapsed)
            .with_attributes(attributes)
            .start_with_context(tracer, parent);
        span.end_with_timestamp(end);
    }
}

impl Visit for Statement {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "summary" => {
                self.operation = operation(value);
                self.collection_in_summary = collection(value);
                if self.keep_text {
                    value.clone_into(&mut self.summary);
                }
            }
            "db.statement" => {
                self.collection_in_text = collection(value);
                if self.keep_text {
                    value.clone_into(&mut self.full);
                }
            }
            _ => {}
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "elapsed_secs" {
            self.elapsed_secs = value;
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

/// The table a statement works on: the word after `FROM`, `INTO`,
/// `UPDATE` or `TABLE`. SQL keywords are ASCII, so is the whitespace
/// between them: a byte scan, on every statement, is enough.
fn collection(text: &str) -> Option<String> {
    let mut words = text.split_ascii_whitespace();
    while let Some(word) = words.next() {
        if ["FROM", "INTO", "UPDATE", "TABLE"]
            .iter()
            .any(|keyword| word.eq_ignore_ascii_case(keyword))
        {
            // `CREATE TABLE IF NOT EXISTS name`
            let name = words.find(|w| {
                !["IF", "NOT", "EXISTS"]
                    .iter()
                    .any(|keyword| w.eq_ignore_ascii_case(keyword))
            })?;
            let name = name.trim_matches(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'));
            return (!name.is_empty()).then(|| name.to_owned());
        }
    }
    None
}

/// The operation a statement starts with, upper case; the common ones
/// without allocating.
fn operation(text: &str) -> Cow<'static, str> {
    const KNOWN: &[&str] = &[
        "SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "BEGIN", "COMMIT", "ROLLBACK", "CREATE",
        "ALTER", "DROP", "SET", "PRAGMA",
    ];
    let first = text.split_ascii_whitespace().next().unwrap_or("SQL");
    match KNOWN.iter().find(|known| first.eq_ignore_ascii_case(known)) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(first.to_ascii_uppercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::{Statement, collection, operation};

    #[test]
    fn spans_are_named_after_the_table() {
        assert_eq!(
            collection("INSERT INTO orders (user_id) VALUES ($1)").as_deref(),
            Some("orders")
        );
        assert_eq!(
            collection("SELECT id FROM products WHERE id = $1").as_deref(),
            Some("products")
        );
        assert_eq!(
            collection("UPDATE products SET stock = 1").as_deref(),
            Some("products")
        );
        assert_eq!(collection("BEGIN"), None);
        assert_eq!(
            collection("CREATE TABLE IF NOT EXISTS mc_outbox (id TEXT)").as_deref(),
            Some("mc_outbox")
        );
    }

    #[test]
    fn a_statement_is_traced_on_one_line() {
        let statement = |summary: &str, full: &str| Statement {
            summary: summary.to_owned(),
            full: full.to_owned(),
            ..Statement::default()
        };
        let long = statement(
            "SELECT id FROM …",
            "\n\nSELECT id, name\n  FROM products\r\n\tWHERE id = $1\n",
        );
        assert_eq!(long.text(), "SELECT id, name FROM products WHERE id = $1");
        let short = statement("SELECT 1", " \n");
        assert_eq!(short.text(), "SELECT 1");
    }

    #[test]
    fn operations_are_the_first_word_upper_case() {
        assert_eq!(operation("select id from products"), "SELECT");
        assert_eq!(operation("VACUUM"), "VACUUM");
        assert_eq!(operation(""), "SQL");
    }
}
