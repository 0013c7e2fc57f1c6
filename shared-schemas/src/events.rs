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

/// `user.created`: an account was registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UserCreated {
    pub id: i64,
    pub email: String,
    pub name: String,
}

impl UserCreated {
    pub const EVENT: &'static str = "user.created";
}

/// `order.placed`: an order was stored; its stock should be reserved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrderPlaced {
    pub order_id: i64,
    pub user_id: String,
    pub lines: Vec<OrderLine>,
    pub total: f64,
}

impl OrderPlaced {
    pub const EVENT: &'static str = "order.placed";
}

/// One product and quantity of an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrderLine {
    pub product_id: i64,
    pub quantity: i64,
}

/// `stock.reserved`: the stock of every line of an order is set aside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StockReserved {
    pub order_id: i64,
    pub lines: Vec<OrderLine>,
}

impl StockReserved {
    pub const EVENT: &'static str = "stock.reserved";
}

/// `stock.shortage`: an order could not be reserved; nothing was set aside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StockShortage {
    pub order_id: i64,
    /// The first line that could not be served.
    pub product_id: i64,
}

impl StockShortage {
    pub const EVENT: &'static str = "stock.shortage";
}

/// `system.subscriber.dropped`: a subscriber failed for good on too many
/// events in a row and stopped consuming on one instance. Its events stay
/// in the stream until it is fixed and restarted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SubscriberDropped {
    pub event: String,
    pub subscriber: String,
    pub error: String,
    pub consecutive_failures: u32,
}

impl SubscriberDropped {
    pub const EVENT: &'static str = "system.subscriber.dropped";
}

/// What lands on the dead-letter subject when a subscriber gave up on an
/// event: the event itself, who failed, why, and after how many attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub original: EventEnvelope,
    pub subscriber: String,
    pub error: String,
    pub attempts: u32,
    /// RFC 3339, UTC.
    pub failed_at: String,
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
