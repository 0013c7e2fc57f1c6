//! The products domain: the catalogue. Each feature is one file in
//! `src/plugins/`; the build discovers them.

use microcore::Domain;

pub mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

/// The domain as a service runs it.
pub fn domain() -> Domain {
    Domain::new("products", env!("CARGO_PKG_VERSION"))
        .description("The product catalogue")
        .plugins(plugins::all())
        .migrations(microcore::migrations!())
}
