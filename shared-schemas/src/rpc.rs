//! Request-reply contracts between domains: the request and answer of
//! each named handler. Like event payloads, they are the only thing two
//! domains share.

use serde::{Deserialize, Serialize};

use crate::events::OrderLine;

/// `products.quote`: prices and availability of order lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuoteRequest {
    pub lines: Vec<OrderLine>,
}

impl QuoteRequest {
    pub const NAME: &'static str = "products.quote";
}

/// The answer to [`QuoteRequest`], one entry per requested line, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quote {
    pub lines: Vec<QuotedLine>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotedLine {
    pub product_id: i64,
    /// `None` when the product does not exist.
    pub unit_price: Option<f64>,
    /// Units in stock now (not reserved by this quote).
    pub in_stock: i64,
}
