//! The notifications domain: a message for the user on each event that
//! concerns them. It only listens; no other domain knows it exists.

use microcore::Domain;

pub mod notify;

pub mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

/// The domain as a service runs it.
pub fn domain() -> Domain {
    Domain::new("notifications", env!("CARGO_PKG_VERSION"))
        .description("Messages for users about their account and orders")
        .plugins(plugins::all())
        .migrations(microcore::migrations!())
}
