//! The orders domain: orders placed by users. Prices and availability come
//! from the catalogue over request-reply; the placed order leaves through
//! the outbox as `order.placed`, and the catalogue's answer (`stock.reserved`
//! or `stock.shortage`) settles its status.

use microcore::Domain;

pub mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

/// The domain as a service runs it.
pub fn domain() -> Domain {
    Domain::new("orders", env!("CARGO_PKG_VERSION"))
        .description("Orders placed by users")
        .plugins(plugins::all())
        .migrations(microcore::migrations!())
}
