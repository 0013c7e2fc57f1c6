//! What passes on the bus, seen from the gateway: the causal traces of the
//! latest events (`/system/traces`, see [`traces`]) and live streams of
//! events and log records (`/system/events/stream`,
//! `/system/logs/stream`, see [`streams`]).
//!
//! Both only listen: they tap the bus with plain subscriptions
//! ([`Transport::subscribe`]), which see every message from then on and
//! store nothing, so observing never takes an event from a subscriber or
//! slows a publisher down. The trace buffer is the gateway's own memory,
//! bounded and lost with it; each stream client has its own subscription,
//! dropped with its connection.

mod openapi;
mod streams;
mod traces;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::response::Response;
use axum::routing::get;
use futures_util::StreamExt;
use http::StatusCode;
use http::request::Parts;
use microcore::transport::{Transport, TransportError};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use shared_schemas::Subjects;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::envelope;

use traces::TraceBuffer;

/// The state of the observing routes.
#[derive(Clone)]
pub struct Observer {
    transport: Arc<dyn Transport>,
    subjects: Subjects,
    traces: Arc<TraceBuffer>,
    /// Ends every live stream: the gateway is shutting down, and a
    /// graceful shutdown waits for open responses.
    closing: CancellationToken,
}

impl Observer {
    /// Taps the event and dead-letter subjects and keeps the latest
    /// `trace_capacity` of them; the task collects until the transport
    /// closes or it is aborted.
    pub async fn start(
        transport: Arc<dyn Transport>,
        subjects: Subjects,
        trace_capacity: usize,
    ) -> Result<(Self, JoinHandle<()>), TransportError> {
        let events = transport.subscribe(&subjects.events_wildcard()).await?;
        let dead_letters = transport.subscribe(&subjects.dlq_wildcard()).await?;
        let traces = Arc::new(TraceBuffer::new(trace_capacity));
        let collector = tokio::spawn(traces::collect(
            traces.clone(),
            events.map(traces::Tapped::Event).boxed(),
            dead_letters.map(traces::Tapped::DeadLetter).boxed(),
        ));
        let observer = Self {
            transport,
            subjects,
            traces,
            closing: CancellationToken::new(),
        };
        Ok((observer, collector))
    }

    /// Ends the live streams, so that a graceful shutdown is not held
    /// open by their clients.
    pub fn close_streams(&self) {
        self.closing.cancel();
    }

    /// The routes, their state provided, to merge into the gateway's
    /// router whatever its own state.
    pub fn router<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        Router::new()
            .route("/system/traces", get(traces::tree))
            .route("/system/traces/tree", get(traces::tree))
            .route("/system/traces/flat", get(traces::flat))
            .route("/system/events/stream", get(streams::events))
            .route("/system/logs/stream", get(streams::logs))
            .with_state(self)
    }
}

/// Query parameters deserialized into `T`; a query that does not fit
/// (an unknown parameter, a bad value) is refused with 400 in the
/// standard envelope.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        // Every value is text; the last of a repeated parameter wins.
        let object: Map<String, Value> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .map(|(name, value)| (name, Value::String(value)))
            .collect();
        serde_json::from_value(Value::Object(object))
            .map(Params)
            .map_err(|e| envelope::error(StatusCode::BAD_REQUEST, format!("invalid query: {e}")))
    }
}

/// The OpenAPI operations of these routes, under the `System` tag.
pub fn openapi_paths() -> Map<String, Value> {
    let mut paths = openapi::traces();
    paths.extend(openapi::streams());
    paths
}
