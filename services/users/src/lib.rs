//! The users domain: accounts. Passwords are stored as Argon2id hashes and
//! never leave the service; a login issues a signed access token that the
//! gateway verifies for every authenticated route of every domain.

use microcore::Domain;

pub mod password;

pub mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

/// The domain as a service runs it.
pub fn domain() -> Domain {
    Domain::new("users", env!("CARGO_PKG_VERSION"))
        .description("Accounts, passwords and access tokens")
        .plugins(plugins::all())
        .migrations(microcore::migrations!())
}
