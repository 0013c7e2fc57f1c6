//! The wire contracts of a microcore system.
//!
//! Everything two processes must agree on lives here and nowhere else: the
//! HTTP response envelope, the NATS subject names, the headers that carry an
//! HTTP request over NATS, the discovery manifest a service announces, the
//! payloads of events that cross domains, the live figures an instance
//! reports about itself and the log records of the live log stream.
//! Domains depend on this crate, never on each other.
//!
//! The contract is versioned by [`WIRE_VERSION`]: a breaking change to any
//! shape here bumps it.

pub mod auth;
pub mod discovery;
pub mod envelope;
pub mod events;
pub mod http;
pub mod logs;
pub mod rpc;
pub mod subjects;
pub mod system;

/// Version of the wire contracts in this crate, announced by every service.
pub const WIRE_VERSION: &str = "1";

pub use envelope::{ApiResponse, FieldError};
pub use subjects::Subjects;
