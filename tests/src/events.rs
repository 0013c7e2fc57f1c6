//! The durable event streams as a test sees them: publish an event the way
//! any service would (the envelope, on the event subject, through
//! JetStream with its id as the de-duplication key), and read back what a
//! stream holds on a subject.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;
use shared_schemas::Subjects;

use crate::wait;

/// JetStream access for one system.
#[derive(Clone)]
pub struct Streams {
    js: jetstream::Context,
    prefix: String,
}

impl Streams {
    pub fn new(client: async_nats::Client, prefix: &str) -> Self {
        Self {
            js: jetstream::new(client),
            prefix: prefix.to_owned(),
        }
    }

    /// Publishes `payload` as event `event` with a fresh id and no cause;
    /// returns the id once the server stored it.
    ///
    /// # Panics
    /// When the events stream does not exist yet (no service created it)
    /// or the server does not acknowledge.
    pub async fn publish(&self, event: &str, payload: &impl Serialize) -> String {
        self.publish_envelope(envelope(event, payload)).await
    }

    /// Publishes a ready envelope (with a key, a correlation id …).
    pub async fn publish_envelope(&self, envelope: Value) -> String {
        let id = envelope["id"].as_str().expect("envelope id").to_owned();
        let event = envelope["event"].as_str().expect("envelope event");
        let subject = format!("{}.events.{event}", self.prefix);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        let body = serde_json::to_vec(&envelope).expect("envelope serializes");
        self.js
            .publish_with_headers(subject.clone(), headers, body.into())
            .await
            .unwrap_or_else(|e| panic!("publishing to {subject}: {e}"))
            .await
            .unwrap_or_else(|e| panic!("no acknowledgement for {subject}: {e}"));
        id
    }

    /// Every event stored on `<prefix>.events.<event>`, oldest first.
    pub async fn events(&self, event: &str) -> Vec<Value> {
        self.read("EVENTS", &format!("{}.events.{event}", self.prefix))
            .await
    }

    /// Every dead letter stored for `event`, oldest first.
    pub async fn dead_letters(&self, event: &str) -> Vec<Value> {
        self.read("DLQ", &format!("{}.dlq.{event}", self.prefix))
            .await
    }

    /// Waits until `event` has at least `count` stored messages.
    pub async fn wait_for_events(&self, event: &str, count: usize) -> Vec<Value> {
        wait::poll(wait::PROMPT, || async {
            let events = self.events(event).await;
            (events.len() >= count).then_some(events)
        })
        .await
        .unwrap_or_else(|| panic!("fewer than {count} `{event}` events stored"))
    }

    /// Everything `stream_suffix` (`EVENTS`, `DLQ`) holds on `subject`,
    /// read with a throwaway consumer. Empty when the stream does
    /// not exist.
    async fn read(&self, stream_suffix: &'static str, subject: &str) -> Vec<Value> {
        let subjects = Subjects::new(&self.prefix);
        let name = match stream_suffix {
            "DLQ" => subjects.dlq_stream(),
            _ => subjects.events_stream(),
        };
        let Ok(mut stream) = self.js.get_stream(&name).await else {
            return Vec::new();
        };
        let Ok(info) = stream.info().await else {
            return Vec::new();
        };
        if info.state.messages == 0 {
            return Vec::new();
        }
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: subject.to_owned(),
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(5),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("reading {subject}: {e}"));
        let mut messages = consumer
            .fetch()
            .max_messages(10_000)
            .expires(Duration::from_millis(300))
            .messages()
            .await
            .unwrap_or_else(|e| panic!("reading {subject}: {e}"));
        let mut found = Vec::new();
        while let Some(Ok(message)) = messages.next().await {
            found.push(serde_json::from_slice(&message.payload).unwrap_or(Value::Null));
        }
        found
    }
}

/// A fresh envelope for `payload`, as a service without a cause builds it.
pub fn envelope(event: &str, payload: &impl Serialize) -> Value {
    serde_json::json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "event": event,
        "payload": payload,
        "emitter": "test.harness",
        "timestamp": "2026-01-01T00:00:00Z",
        "parent_id": null,
        "correlation_id": null,
    })
}
