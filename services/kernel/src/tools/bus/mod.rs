//! The bus tool: the only channel between domains.
//!
//! - [`Bus::publish`] stores an event durably (the server acknowledged it
//!   when the call returns); [`Bus::publish_in`] stages it in a database
//!   transaction instead, and the outbox relays it after commit, so a crash
//!   between the two loses nothing.
//! - [`Bus::subscribe`] declares an event handler in `on_boot`; the kernel
//!   runs it with acks, retries with backoff and a dead-letter queue.
//! - [`Bus::request`] asks one handler declared with [`Bus::respond`] and
//!   waits for its answer.
//!
//! Every event travels in the standard envelope. The emitter is the
//! publishing plugin and the parent is what the plugin is handling (the
//! HTTP request or the event), so the causal chain builds itself.

mod consumer;
mod counters;
mod outbox;
mod rpc;
mod subscribe;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use http::HeaderMap;
use serde::Serialize;
use shared_schemas::Subjects;
use shared_schemas::events::EventEnvelope;
use tracing::Instrument;

use crate::causality;
use crate::plugin::PluginId;
use crate::tools::{DbError, Health, Tool, Transaction};
use crate::transport::{Message, Transport, TransportError};

pub(crate) use consumer::start as start_subscription;
pub(crate) use counters::{BusCounters, PublishedCell, observe as observe_counters};
pub(crate) use outbox::{OutboxRelay, ensure_outbox_table};
pub use rpc::{RespondBuilder, RpcError};
pub(crate) use rpc::{Responder, ResponderMetrics, serve as serve_rpc};
pub(crate) use subscribe::{Audience, Subscription};
pub use subscribe::{EventResult, SubscribeBuilder, SubscribeError};

/// Publishes, subscribes and asks on behalf of one plugin.
#[derive(Clone)]
pub struct Bus {
    transport: Arc<dyn Transport>,
    subjects: Subjects,
    emitter: Option<PluginId>,
    declared: Arc<Mutex<Declared>>,
    counters: Arc<BusCounters>,
}

/// What the plugins declared in `on_boot`, for the service to run.
#[derive(Default)]
struct Declared {
    subscriptions: Vec<Subscription>,
    responders: Vec<Responder>,
}

impl Tool for Bus {
    const NAME: &'static str = "bus";

    fn for_plugin(&self, plugin: &PluginId) -> Self {
        Self {
            emitter: Some(plugin.clone()),
            ..self.clone()
        }
    }

    /// Whether the transport is connected to the bus now (always, in
    /// process). No round trip: over NATS the client notices a lost server
    /// by its own pings, and an instance cut off from NATS cannot be asked
    /// anyway.
    async fn check_health(&self) -> Option<Health> {
        Some(if self.transport.is_connected() {
            Health::healthy()
        } else {
            Health::unhealthy("not connected to the bus")
        })
    }
}

/// An event could not be published.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("event `{0}` could not be serialized: {1}")]
    Serialize(String, #[source] serde_json::Error),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("event could not be staged in the outbox: {0}")]
    Outbox(#[from] DbError),
}

impl Bus {
    pub fn new(transport: Arc<dyn Transport>, subjects: Subjects) -> Self {
        Self {
            transport,
            subjects,
            emitter: None,
            declared: Arc::default(),
            counters: Arc::default(),
        }
    }

    /// What this bus and its plugins' copies have done so far.
    pub(crate) fn counters(&self) -> &Arc<BusCounters> {
        &self.counters
    }

    /// Publishes `payload` as event `event` and returns its id once the
    /// server has stored it.
    pub async fn publish<P: Serialize>(
        &self,
        event: &str,
        payload: &P,
    ) -> Result<String, BusError> {
        self.event(event).publish(payload).await
    }

    /// Stages `payload` as event `event` in `tx`: it is published after
    /// the transaction commits, and never if it rolls back.
    pub async fn publish_in<P: Serialize>(
        &self,
        tx: &mut Transaction,
        event: &str,
        payload: &P,
    ) -> Result<String, BusError> {
        self.event(event).publish_in(tx, payload).await
    }

    /// An event with options: an ordering key, headers.
    pub fn event(&self, event: &str) -> Publication<'_> {
        Publication {
            bus: self,
            event: event.to_owned(),
            key: None,
            headers: BTreeMap::new(),
        }
    }

    /// The emitter of what this bus publishes: its plugin, or the kernel.
    fn identity(&self) -> &str {
        self.emitter.as_ref().map_or("kernel", PluginId::as_str)
    }

    fn declare(&self, change: impl FnOnce(&mut Declared)) {
        change(&mut self.declared.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// The subscriptions declared so far, taken for the service to run.
    pub(crate) fn take_subscriptions(&self) -> Vec<Subscription> {
        std::mem::take(
            &mut self
                .declared
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .subscriptions,
        )
    }

    /// The request-reply handlers declared so far, taken for the service
    /// to register.
    pub(crate) fn take_responders(&self) -> Vec<Responder> {
        std::mem::take(
            &mut self
                .declared
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .responders,
        )
    }

    /// Forgets what a plugin declared: it did not boot.
    pub(crate) fn remove_plugin(&self, plugin: &PluginId) {
        self.declare(|d| {
            d.subscriptions.retain(|s| &s.plugin != plugin);
            d.responders.retain(|r| &r.plugin != plugin);
        });
    }
}

/// One event about to be published; see [`Bus::event`].
#[must_use = "an event is published by `.publish()` or `.publish_in()`"]
pub struct Publication<'a> {
    bus: &'a Bus,
    event: String,
    key: Option<String>,
    headers: BTreeMap<String, String>,
}

impl Publication<'_> {
    /// Events with the same key are handled in publish order.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Publishes now; returns the event id once the server stored it.
    pub async fn publish<P: Serialize>(self, payload: &P) -> Result<String, BusError> {
        let (id, body) = self.envelope(payload)?;
        let subject = self.bus.subjects.event(&self.event);
        let (span, headers) = producer_span(&self.event, &subject, &id);
        self.bus
            .transport
            .publish_durable(&subject, &id, Message::new(headers, body))
            .instrument(span)
            .await?;
        self.published().count();
        Ok(id)
    }

    /// Stages the event in `tx`; see [`Bus::publish_in`].
    pub async fn publish_in<P: Serialize>(
        self,
        tx: &mut Transaction,
        payload: &P,
    ) -> Result<String, BusError> {
        let (id, body) = self.envelope(payload)?;
        let subject = self.bus.subjects.event(&self.event);
        // The relay publishes later; the event still belongs to this trace.
        let (span, trace) = producer_span(&self.event, &subject, &id);
        outbox::stage(tx, &id, &subject, &body, &trace)
            .instrument(span)
            .await?;
        // Counted if and when the transaction commits.
        tx.staged_event(self.published());
        Ok(id)
    }

    /// The counter of this event by this emitter.
    fn published(&self) -> PublishedCell {
        self.bus
            .counters
            .published(self.bus.identity(), &self.event)
    }

    /// The envelope around `payload`, serialized, and its id.
    fn envelope<P: Serialize>(&self, payload: &P) -> Result<(String, Vec<u8>), BusError> {
        let envelope = envelope(self.bus.identity(), &self.event, payload);
        let envelope = EventEnvelope {
            key: self.key.clone(),
            headers: self.headers.clone(),
            ..envelope
        };
        let body = serde_json::to_vec(&envelope)
            .map_err(|e| BusError::Serialize(self.event.clone(), e))?;
        Ok((envelope.id, body))
    }
}

/// The span of publishing one event (OpenTelemetry messaging conventions)
/// and the headers that carry its trace context to the consumers.
fn producer_span(event: &str, subject: &str, id: &str) -> (tracing::Span, HeaderMap) {
    crate::telemetry::outgoing(|| {
        tracing::info_span!(
            "publish",
            otel.name = %format_args!("publish {event}"),
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.operation.type = "send",
            messaging.destination.name = subject,
            messaging.message.id = id,
        )
    })
}

/// A fresh envelope for `payload`, caused by whatever the current task
/// is handling.
fn envelope<'p, P>(emitter: &str, event: &str, payload: &'p P) -> EventEnvelope<&'p P> {
    let cause = causality::current();
    EventEnvelope {
        id: uuid::Uuid::new_v4().to_string(),
        event: event.to_owned(),
        payload,
        emitter: emitter.to_owned(),
        timestamp: crate::now_rfc3339(),
        parent_id: cause.as_ref().map(|c| c.id.clone()),
        correlation_id: cause.map(|c| c.correlation_id),
        key: None,
        headers: BTreeMap::new(),
    }
}
