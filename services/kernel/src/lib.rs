//! The microcore kernel: what every domain service links.
//!
//! A domain is a set of plugins, one feature per file. The kernel injects
//! the tools each plugin names ([`tools`]), boots the plugins
//! ([`plugin`]), serves their HTTP endpoints over the bus ([`http`],
//! [`transport`]) and runs the process until it is told to stop
//! ([`service`]).
//!
//! Start with [`prelude`]: it is all a plugin file needs.

pub mod causality;
pub mod cli;
pub mod config;
pub mod domain;
pub mod http;
pub mod plugin;
pub mod probes;
pub mod service;
mod status;
mod system;
pub mod telemetry;
pub mod tools;
pub mod transport;

pub use config::ServiceConfig;
pub use domain::{Domain, Migrations};
pub use plugin::{BootError, Plugin, PluginEntry, PluginId, PluginState};
pub use service::{RunningService, Service, ServiceError};

/// The current time, RFC 3339 UTC: envelope and protocol timestamps.
pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Everything a plugin file uses.
pub mod prelude {
    pub use std::sync::Arc;

    pub use http::{Method, StatusCode};
    pub use serde::{Deserialize, Serialize};
    pub use utoipa::ToSchema;

    pub use crate::http::{Context, Cookie, HandlerError, HandlerResult, Http};
    pub use crate::plugin::{BootError, Plugin};
    pub use shared_schemas::events::EventEnvelope;

    pub use crate::tools::{
        Auth, Bus, Db, DbError, DbErrorKind, EventResult, Logger, RpcError, Transaction,
    };
    pub use shared_schemas::auth::Claims;
}
