//! Payloads of events that cross domains. A subscriber may declare a
//! smaller struct with only the fields it reads.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `product.created`: a product was added to the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProductCreated {
    pub id: i64,
    pub name: String,
    pub price: f64,
}

impl ProductCreated {
    pub const EVENT: &'static str = "product.created";
}

/// The envelope every event travels in. `payload` is the event's own
/// schema; subscribers deserialize only the fields they need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope<P = serde_json::Value> {
    /// Unique per event; the de-duplication key.
    pub id: String,
    /// The event name, e.g. `product.created`.
    pub event: String,
    pub payload: P,
    /// The identity of the publishing plugin, `service.plugin`.
    pub emitter: String,
    /// RFC 3339, UTC.
    pub timestamp: String,
    /// The request or event being handled when this one was published.
    pub parent_id: Option<String>,
    /// Shared by every event of one causal chain (the root request id).
    pub correlation_id: Option<String>,
    /// Events with the same key are delivered in publish order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
}
