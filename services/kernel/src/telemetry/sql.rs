//! SQL spans from sqlx's own statement log. sqlx reports every statement
//! it runs as a `sqlx::query` event: its text with placeholders (never the
//! bound values) and how long it took. This layer turns each into a client
//! span under the span that ran it, so a trace shows the queries of every
//! handler without plugins doing anything.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt as _, Tracer as _};
use opentelemetry_sdk::trace::SdkTracer;
use tracing::dispatcher::{Dispatch, WeakDispatch};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The target of sqlx's statement events.
pub(super) const TARGET: &str = "sqlx::query";

pub(super) struct SqlSpans {
    /// `None` while traces are not exported: the layer does nothing.
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
}

impl<S> tracing_subscriber::Layer<S> for SqlSpans
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, dispatch: &Dispatch) {
        let _ = self.dispatch.set(dispatch.downgrade());
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(tracer) = &self.tracer else { return };
        if event.metadata().target() != TARGET {
            return;
        }
        // A statement outside any span belongs to no trace.
        let Some(parent) = ctx.event_span(event) else {
            return;
        };
        let Some(dispatch) = self.dispatch.get().and_then(WeakDispatch::upgrade) else {
            return;
        };
        let Some(parent) = tracing_opentelemetry::get_otel_context(&parent.id(), &dispatch) else {
            return;
        };
        // An unsampled trace records nothing: spare the string work.
        if !parent.span().span_context().is_sampled() {
            return;
        }
        let mut statement = Statement::default();
        event.record(&mut statement);
        let text = statement.text();
        let operation = text
            .split_whitespace()
            .next()
            .unwrap_or("SQL")
            .to_ascii_uppercase();
        let name = match collection(&text) {
            Some(collection) => format!("{operation} {collection}"),
            None => operation.clone(),
        };
        let end = SystemTime::now();
        let elapsed = Duration::try_from_secs_f64(statement.elapsed_secs).unwrap_or_default();
        let mut span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_start_time(end - elapsed)
            .with_attributes([
                KeyValue::new("db.query.text", text),
                KeyValue::new("db.operation.name", operation),
            ])
            .start_with_context(tracer, &parent);
        span.end_with_timestamp(end);
    }
}

/// The fields of one `sqlx::query` event.
#[derive(Default)]
struct Statement {
    summary: String,
    /// The whole statement, when longer than its summary.
    full: String,
    elapsed_secs: f64,
}

impl Statement {
    fn text(&self) -> String {
        let full = self.full.trim();
        if full.is_empty() {
            self.summary.clone()
        } else {
            full.split_whitespace().collect::<Vec<_>>().join(" ")
        }
    }
}

impl Visit for Statement {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "summary" => value.clone_into(&mut self.summary),
            "db.statement" => value.clone_into(&mut self.full),
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
/// `UPDATE` or `TABLE`.
fn collection(text: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    while let Some(word) = words.next() {
        if ["FROM", "INTO", "UPDATE", "TABLE"].contains(&word.to_ascii_uppercase().as_str()) {
            let name = words.next()?;
            let name = name.trim_matches(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'));
            return (!name.is_empty()).then(|| name.to_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::collection;

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
    }
}
