//! The bus tool: publishing events in the standard envelope. The emitter
//! is the publishing plugin and the parent is whatever the plugin is
//! handling (the HTTP request or the event), so the causal chain builds
//! itself.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use serde::Serialize;
use shared_schemas::Subjects;
use shared_schemas::events::EventEnvelope;

use crate::causality;
use crate::plugin::PluginId;
use crate::tools::Tool;
use crate::transport::{Message, Transport, TransportError};

/// Header carrying the envelope id (NATS/JetStream de-duplication key).
const MSG_ID: &str = "Nats-Msg-Id";

/// Publishes events on behalf of one plugin.
#[derive(Clone)]
pub struct Bus {
    transport: Arc<dyn Transport>,
    subjects: Subjects,
    emitter: Option<PluginId>,
}

impl Tool for Bus {
    const NAME: &'static str = "bus";

    fn for_plugin(&self, plugin: &PluginId) -> Self {
        Self {
            emitter: Some(plugin.clone()),
            ..self.clone()
        }
    }
}

/// Publishing failed: the event was not handed to the transport.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("event `{0}` could not be serialized: {1}")]
    Serialize(String, #[source] serde_json::Error),
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl Bus {
    pub fn new(transport: Arc<dyn Transport>, subjects: Subjects) -> Self {
        Self {
            transport,
            subjects,
            emitter: None,
        }
    }

    /// Publishes `payload` as event `event`; returns the envelope id.
    pub async fn publish<P: Serialize>(
        &self,
        event: &str,
        payload: &P,
    ) -> Result<String, BusError> {
        let cause = causality::current();
        let envelope = EventEnvelope {
            id: uuid::Uuid::new_v4().to_string(),
            event: event.to_owned(),
            payload,
            emitter: self
                .emitter
                .as_ref()
                .map_or_else(|| "kernel".to_owned(), |p| p.as_str().to_owned()),
            timestamp: crate::now_rfc3339(),
            parent_id: cause.as_ref().map(|c| c.id.clone()),
            correlation_id: cause.map(|c| c.correlation_id),
            key: None,
            headers: Default::default(),
        };
        let body =
            serde_json::to_vec(&envelope).map_err(|e| BusError::Serialize(event.to_owned(), e))?;
        let mut headers = HeaderMap::new();
        if let Ok(id) = HeaderValue::from_str(&envelope.id) {
            headers.insert(MSG_ID, id);
        }
        self.transport
            .publish(&self.subjects.event(event), Message::new(headers, body))
            .await?;
        Ok(envelope.id)
    }
}
