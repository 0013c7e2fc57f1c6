//! Gateway configuration from the environment (12-factor), with documented
//! defaults. A value that is set but unusable stops the gateway at boot
//! with an error naming the variable, rather than being replaced by a guess.

use std::net::SocketAddr;
use std::time::Duration;

pub use microcore::config::ConfigError;
use microcore::config::parse;
use shared_schemas::subjects::DEFAULT_PREFIX;

/// The largest `max_payload` a NATS server accepts in its configuration. A
/// body limit above it can never be delivered.
const NATS_PAYLOAD_CEILING: usize = 64 * 1024 * 1024;

/// How the gateway reaches the bus and serves HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// `NATS_URL`, default `nats://127.0.0.1:4222` (comma-separated for a
    /// cluster).
    pub nats_url: String,
    /// `MC_SUBJECT_PREFIX`, default `mc`: the system's subject namespace.
    pub subject_prefix: String,
    /// `MC_HTTP_ADDR`, default `0.0.0.0:8080`.
    pub http_addr: SocketAddr,
    /// `MC_BODY_LIMIT`: the largest request body in bytes, default 524288
    /// (larger bodies get 413). The body and the forwarded headers travel
    /// as one NATS message, so it must stay under the server's
    /// `max_payload` (1 MiB unless configured otherwise).
    pub body_limit: usize,
    /// `MC_DISCOVERY_INTERVAL_MS`: the fallback discovery sweep, default
    /// 5000. Announcements make changes visible at once; the sweep catches
    /// instances that died without saying so.
    pub discovery_interval: Duration,
    /// `MC_ROUTE_RETENTION_SECS`: how long the routes of a service with no
    /// live instance keep answering 503 before they are forgotten and
    /// answer 404, default 300. Checked at each sweep.
    pub route_retention: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".into(),
            subject_prefix: DEFAULT_PREFIX.into(),
            http_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            body_limit: 512 * 1024,
            discovery_interval: Duration::from_secs(5),
            route_retention: Duration::from_secs(300),
        }
    }
}

impl GatewayConfig {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup`, so tests need not touch
    /// the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let config = Self {
            nats_url: lookup("NATS_URL").unwrap_or(defaults.nats_url),
            subject_prefix: lookup("MC_SUBJECT_PREFIX").unwrap_or(defaults.subject_prefix),
            http_addr: parse(&lookup, "MC_HTTP_ADDR")?.unwrap_or(defaults.http_addr),
            body_limit: parse(&lookup, "MC_BODY_LIMIT")?.unwrap_or(defaults.body_limit),
            discovery_interval: parse(&lookup, "MC_DISCOVERY_INTERVAL_MS")?
                .map(Duration::from_millis)
                .unwrap_or(defaults.discovery_interval),
            route_retention: parse(&lookup, "MC_ROUTE_RETENTION_SECS")?
                .map(Duration::from_secs)
                .unwrap_or(defaults.route_retention),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks what parsing alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name: &'static str, value: String, reason: &str| ConfigError {
            name,
            value,
            reason: reason.to_owned(),
        };
        if self.nats_url.trim().is_empty() {
            return Err(invalid("NATS_URL", self.nats_url.clone(), "it is empty"));
        }
        if let Err(reason) = check_prefix(&self.subject_prefix) {
            return Err(invalid(
                "MC_SUBJECT_PREFIX",
                self.subject_prefix.clone(),
                reason,
            ));
        }
        if self.body_limit == 0 || self.body_limit >= NATS_PAYLOAD_CEILING {
            return Err(invalid(
                "MC_BODY_LIMIT",
                self.body_limit.to_string(),
                "it must be at least 1 and below NATS's 64 MiB payload ceiling",
            ));
        }
        if self.discovery_interval.is_zero() {
            return Err(invalid(
                "MC_DISCOVERY_INTERVAL_MS",
                "0".to_owned(),
                "the sweep interval must be at least 1 ms",
            ));
        }
        Ok(())
    }
}

/// A prefix is one or more NATS subject tokens: no wildcards, no
/// whitespace, no empty token.
fn check_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.is_empty() {
        return Err("it is empty");
    }
    if prefix.split('.').any(str::is_empty) {
        return Err("it has an empty subject token (a leading, trailing or double `.`)");
    }
    if prefix
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '>')
    {
        return Err("subject tokens may not contain whitespace or the wildcards `*` and `>`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &'static str, value: &'static str) -> Result<GatewayConfig, ConfigError> {
        GatewayConfig::from_lookup(|n| (n == name).then(|| value.to_owned()))
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let config = GatewayConfig::from_lookup(|_| None).unwrap();
        assert_eq!(config, GatewayConfig::default());
        assert_eq!(config.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(config.subject_prefix, "mc");
        assert_eq!(config.http_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(config.body_limit, 524_288);
        assert_eq!(config.discovery_interval, Duration::from_millis(5000));
        assert_eq!(config.route_retention, Duration::from_secs(300));
    }

    #[test]
    fn set_values_are_read() {
        let config = GatewayConfig::from_lookup(|name| {
            Some(
                match name {
                    "NATS_URL" => "nats://nats:4222",
                    "MC_SUBJECT_PREFIX" => "shop.eu",
                    "MC_HTTP_ADDR" => "127.0.0.1:9000",
                    "MC_BODY_LIMIT" => "1024",
                    "MC_DISCOVERY_INTERVAL_MS" => "250",
                    "MC_ROUTE_RETENTION_SECS" => "0",
                    _ => return None,
                }
                .to_owned(),
            )
        })
        .unwrap();
        assert_eq!(config.nats_url, "nats://nats:4222");
        assert_eq!(config.subject_prefix, "shop.eu");
        assert_eq!(config.http_addr.port(), 9000);
        assert_eq!(config.body_limit, 1024);
        assert_eq!(config.discovery_interval, Duration::from_millis(250));
        assert_eq!(config.route_retention, Duration::ZERO);
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        for (name, value) in [
            ("MC_HTTP_ADDR", "localhost"),
            ("MC_BODY_LIMIT", "lots"),
            ("MC_BODY_LIMIT", "0"),
            ("MC_BODY_LIMIT", "67108864"),
            ("MC_DISCOVERY_INTERVAL_MS", "-1"),
            ("MC_DISCOVERY_INTERVAL_MS", "0"),
            ("MC_ROUTE_RETENTION_SECS", "5m"),
            ("MC_SUBJECT_PREFIX", ""),
            ("MC_SUBJECT_PREFIX", "mc."),
            ("MC_SUBJECT_PREFIX", "a..b"),
            ("MC_SUBJECT_PREFIX", "mc.*"),
            ("MC_SUBJECT_PREFIX", "my app"),
            ("NATS_URL", " "),
        ] {
            let err = with(name, value).expect_err(value);
            assert_eq!(err.name, name, "{value:?}: {err}");
            assert!(err.to_string().starts_with(name), "{err}");
        }
    }
}
