//! Gateway configuration from the environment, with documented defaults.

use std::net::SocketAddr;
use std::time::Duration;

use microcore::config::{ConfigError, Variable, auth_secret, parse};
use shared_schemas::subjects::DEFAULT_PREFIX;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `NATS_URL`, default `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// `MC_SUBJECT_PREFIX`, default `mc`.
    pub subject_prefix: String,
    /// `MC_HTTP_ADDR`, default `0.0.0.0:8080`.
    pub http_addr: SocketAddr,
    /// `MC_BODY_LIMIT`: largest request body in bytes, default 524288. It
    /// must stay under the NATS server's `max_payload` (1 MiB by default).
    pub body_limit: usize,
    /// `MC_DISCOVERY_INTERVAL_MS`: the fallback discovery sweep, default
    /// 5000. Announcements make changes visible at once; the sweep catches
    /// instances that died without saying so.
    pub discovery_interval: Duration,
    /// `MC_ROUTE_RETENTION_SECS`: how long the routes of a service with no
    /// live instance answer 503 before they are forgotten (404), default 300.
    pub route_retention: Duration,
    /// `MC_AUTH_SECRET`: verifies the access tokens of authenticated
    /// routes (the services that issue tokens share it). Unset: those
    /// routes are refused.
    pub auth_secret: Option<String>,
    /// `MC_TRACE_BUFFER`: how many of the latest events and dead letters
    /// `/system/traces` keeps in memory, default 500, at least 1.
    pub trace_buffer: usize,
}

/// The variables [`GatewayConfig::from_env`] reads, as `gateway env`
/// prints them.
pub const VARIABLES: &[Variable] = &[
    Variable::required("NATS_URL", "NATS server(s), comma-separated"),
    Variable::optional(
        "MC_HTTP_ADDR",
        "0.0.0.0:8080",
        "HTTP listen address (probes too: /health/live, /health/ready)",
    ),
    Variable::optional(
        "MC_AUTH_SECRET",
        "",
        "HS256 key verifying access tokens, shared with the services that issue them (unset: authenticated routes are refused)",
    ),
    Variable::optional("MC_SUBJECT_PREFIX", "mc", "prefix of every subject"),
    Variable::optional("MC_BODY_LIMIT", "524288", "largest request body in bytes"),
    Variable::optional(
        "MC_DISCOVERY_INTERVAL_MS",
        "5000",
        "discovery sweep interval",
    ),
    Variable::optional(
        "MC_ROUTE_RETENTION_SECS",
        "300",
        "how long routes of vanished services answer 503 before 404",
    ),
    Variable::optional(
        "MC_TRACE_BUFFER",
        "500",
        "events and dead letters /system/traces keeps",
    ),
];

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".into(),
            subject_prefix: DEFAULT_PREFIX.into(),
            http_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            body_limit: 512 * 1024,
            discovery_interval: Duration::from_secs(5),
            route_retention: Duration::from_secs(300),
            auth_secret: None,
            trace_buffer: 500,
        }
    }
}

impl GatewayConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        if let Some(value) = lookup("MC_DISCOVERY_INTERVAL_MS").filter(|v| v.trim() == "0") {
            return Err(ConfigError {
                name: "MC_DISCOVERY_INTERVAL_MS",
                value,
                reason: "the sweep interval must be at least 1 ms".into(),
            });
        }
        let trace_buffer = parse(&lookup, "MC_TRACE_BUFFER")?.unwrap_or(defaults.trace_buffer);
        if trace_buffer == 0 {
            return Err(ConfigError {
                name: "MC_TRACE_BUFFER",
                value: lookup("MC_TRACE_BUFFER").unwrap_or_default(),
                reason: "the trace buffer must hold at least one event".into(),
            });
        }
        Ok(Self {
            nats_url: lookup("NATS_URL")
                .filter(|url| !url.is_empty())
                .unwrap_or(defaults.nats_url),
            subject_prefix: lookup("MC_SUBJECT_PREFIX").unwrap_or(defaults.subject_prefix),
            http_addr: parse(&lookup, "MC_HTTP_ADDR")?.unwrap_or(defaults.http_addr),
            body_limit: parse(&lookup, "MC_BODY_LIMIT")?.unwrap_or(defaults.body_limit),
            discovery_interval: parse(&lookup, "MC_DISCOVERY_INTERVAL_MS")?
                .map(Duration::from_millis)
                .unwrap_or(defaults.discovery_interval),
            route_retention: parse(&lookup, "MC_ROUTE_RETENTION_SECS")?
                .map(Duration::from_secs)
                .unwrap_or(defaults.route_retention),
            auth_secret: auth_secret(&lookup)?,
            trace_buffer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_buffer_defaults_to_500_and_holds_at_least_one_event() {
        let config = GatewayConfig::from_lookup(|_| None).unwrap();
        assert_eq!(config.trace_buffer, 500);
        let set = |value: &'static str| {
            GatewayConfig::from_lookup(move |name| {
                (name == "MC_TRACE_BUFFER").then(|| value.into())
            })
        };
        assert_eq!(set("20").unwrap().trace_buffer, 20);
        assert_eq!(set("0").unwrap_err().name, "MC_TRACE_BUFFER");
        assert_eq!(set("many").unwrap_err().name, "MC_TRACE_BUFFER");
    }
}
