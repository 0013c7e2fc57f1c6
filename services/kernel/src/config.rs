//! Service configuration from the environment (12-factor). Every variable
//! has a documented default except where a wrong guess would be worse than
//! failing at boot.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use shared_schemas::subjects::DEFAULT_PREFIX;

/// How a domain service reaches its infrastructure.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// `NATS_URL`. Unset: a service process connects to
    /// [`DEFAULT_NATS_URL`]; the all-in-one process runs its services on
    /// the in-process transport instead.
    pub nats_url: Option<String>,
    /// `DATABASE_URL` (`postgres://…` or `sqlite://…`). Unset: a SQLite
    /// file per service in the data directory.
    pub database_url: Option<String>,
    /// `MC_DATA_DIR`: where the default SQLite files live, default `data`.
    pub data_dir: PathBuf,
    /// `MC_DB_SCHEMA`: the Postgres schema the service owns; default: the
    /// service name.
    pub database_schema: Option<String>,
    /// `MC_DB_MAX_CONNECTIONS`, default 10.
    pub database_max_connections: u32,
    /// `MC_SUBJECT_PREFIX`, default `mc`.
    pub subject_prefix: String,
    /// `MC_REQUEST_TIMEOUT_MS`: default handler timeout, default 10000.
    pub request_timeout: Duration,
    /// `MC_SHUTDOWN_GRACE_SECS`: how long in-flight requests may take to
    /// finish after SIGTERM, default 30.
    pub shutdown_grace: Duration,
    /// `MC_OUTBOX_RELAY_DELAY_MS`: wait between a commit and the relay of
    /// its events, default 0. Only crash tests want a wider window.
    pub outbox_relay_delay: Duration,
    /// `MC_AUTH_SECRET`: the key access tokens are signed with (at least 32
    /// bytes), shared with the gateway. Unset: no `auth` tool.
    pub auth_secret: Option<String>,
    /// `MC_AUTH_TOKEN_TTL_SECS`: how long an issued token is valid,
    /// default 3600.
    pub auth_token_ttl: Duration,
    /// `MC_HEALTH_ADDR`: where the instance answers `/health/live` and
    /// `/health/ready`. Unset: no health listener, so instances on one
    /// machine never compete for a port.
    pub health_addr: Option<SocketAddr>,
    /// `MC_MIGRATE_ON_BOOT`, default `true`. `false`: migrations are a
    /// step of their own (`<service> migrate`), and a service that finds
    /// one pending refuses to start.
    pub migrate_on_boot: bool,
}

/// A variable a binary reads, as `<binary> env` prints it.
#[derive(Debug, Clone, Copy)]
pub struct Variable {
    pub name: &'static str,
    /// What applies when it is unset, in words where it is not a value.
    pub default: &'static str,
    pub meaning: &'static str,
    /// A deployment must set it: the default suits only a laptop.
    pub required: bool,
}

pub const HEALTH_ADDR: &str = "MC_HEALTH_ADDR";
pub const AUTH_SECRET: &str = "MC_AUTH_SECRET";

impl Variable {
    pub const fn optional(
        name: &'static str,
        default: &'static str,
        meaning: &'static str,
    ) -> Self {
        Self {
            name,
            default,
            meaning,
            required: false,
        }
    }

    pub const fn required(name: &'static str, meaning: &'static str) -> Self {
        Self {
            name,
            default: "",
            meaning,
            required: true,
        }
    }
}

/// The variables [`ServiceConfig::from_env`] reads.
pub const SERVICE_VARIABLES: &[Variable] = &[
    Variable::required("NATS_URL", "NATS server(s), comma-separated"),
    Variable::required(
        "DATABASE_URL",
        "postgres://… or sqlite://… (unset: a SQLite file in MC_DATA_DIR)",
    ),
    Variable::required(
        HEALTH_ADDR,
        "listen address of /health/live and /health/ready (unset: none)",
    ),
    Variable::optional(
        AUTH_SECRET,
        "",
        "HS256 key of access tokens, at least 32 bytes, shared with the gateway",
    ),
    Variable::optional(
        "MC_AUTH_TOKEN_TTL_SECS",
        "3600",
        "lifetime of an issued access token",
    ),
    Variable::optional("MC_DATA_DIR", "data", "where the default SQLite files live"),
    Variable::optional(
        "MC_DB_SCHEMA",
        "<the service name>",
        "Postgres schema the service owns",
    ),
    Variable::optional("MC_DB_MAX_CONNECTIONS", "10", "database pool size"),
    Variable::optional(
        "MC_MIGRATE_ON_BOOT",
        "true",
        "false: `<service> migrate` is a separate step, and a pending migration stops the boot",
    ),
    Variable::optional("MC_SUBJECT_PREFIX", "mc", "prefix of every subject"),
    Variable::optional("MC_REQUEST_TIMEOUT_MS", "10000", "default handler timeout"),
    Variable::optional(
        "MC_SHUTDOWN_GRACE_SECS",
        "30",
        "time in-flight work gets after SIGTERM",
    ),
    Variable::optional(
        "MC_OUTBOX_RELAY_DELAY_MS",
        "0",
        "minimum age of a committed event before it is relayed",
    ),
];

/// Where a service process finds NATS when `NATS_URL` is unset.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            nats_url: None,
            database_url: None,
            data_dir: PathBuf::from("data"),
            database_schema: None,
            database_max_connections: 10,
            subject_prefix: DEFAULT_PREFIX.into(),
            request_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            outbox_relay_delay: Duration::ZERO,
            auth_secret: None,
            auth_token_ttl: Duration::from_secs(3600),
            health_addr: None,
            migrate_on_boot: true,
        }
    }
}

/// A variable is set to something that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?} is invalid: {reason}")]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub reason: String,
}

impl ServiceConfig {
    /// The database of `service`: `DATABASE_URL`, or its own SQLite file in
    /// the data directory.
    pub fn database_url_for(&self, service: &str) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                self.data_dir.join(format!("{service}.db")).display()
            )
        })
    }

    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup`, so tests need not touch
    /// the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        Ok(Self {
            nats_url: lookup("NATS_URL").filter(|s| !s.is_empty()),
            database_url: lookup("DATABASE_URL").filter(|s| !s.is_empty()),
            data_dir: lookup("MC_DATA_DIR")
                .filter(|s| !s.is_empty())
                .map_or(defaults.data_dir, PathBuf::from),
            database_schema: lookup("MC_DB_SCHEMA").filter(|s| !s.is_empty()),
            database_max_connections: parse(&lookup, "MC_DB_MAX_CONNECTIONS")?
                .unwrap_or(defaults.database_max_connections),
            subject_prefix: lookup("MC_SUBJECT_PREFIX").unwrap_or(defaults.subject_prefix),
            request_timeout: parse(&lookup, "MC_REQUEST_TIMEOUT_MS")?
                .map(Duration::from_millis)
                .unwrap_or(defaults.request_timeout),
            shutdown_grace: parse(&lookup, "MC_SHUTDOWN_GRACE_SECS")?
                .map(Duration::from_secs)
                .unwrap_or(defaults.shutdown_grace),
            outbox_relay_delay: parse(&lookup, "MC_OUTBOX_RELAY_DELAY_MS")?
                .map(Duration::from_millis)
                .unwrap_or(defaults.outbox_relay_delay),
            auth_secret: auth_secret(&lookup)?,
            auth_token_ttl: parse(&lookup, "MC_AUTH_TOKEN_TTL_SECS")?
                .map(Duration::from_secs)
                .unwrap_or(defaults.auth_token_ttl),
            health_addr: parse(&lookup, HEALTH_ADDR)?,
            migrate_on_boot: parse(&lookup, "MC_MIGRATE_ON_BOOT")?
                .unwrap_or(defaults.migrate_on_boot),
        })
    }
}

/// `MC_AUTH_SECRET`, refused at boot when too short to sign with.
pub fn auth_secret(
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, ConfigError> {
    const NAME: &str = "MC_AUTH_SECRET";
    match lookup(NAME).filter(|s| !s.is_empty()) {
        Some(secret) if secret.len() < crate::tools::MIN_SECRET_LEN => Err(ConfigError {
            name: NAME,
            // Never echo a secret, even a bad one.
            value: "<hidden>".into(),
            reason: format!(
                "it must be at least {} bytes long",
                crate::tools::MIN_SECRET_LEN
            ),
        }),
        secret => Ok(secret),
    }
}

/// Parses an optional numeric variable.
pub fn parse<T>(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<T>, ConfigError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    lookup(name)
        .filter(|value| !value.trim().is_empty())
        .map(|value| {
            value.trim().parse().map_err(|e: T::Err| ConfigError {
                name,
                reason: e.to_string(),
                value,
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_and_bad_numbers_are_named() {
        let config = ServiceConfig::from_lookup(|_| None).unwrap();
        assert_eq!(config.subject_prefix, "mc");
        assert_eq!(config.request_timeout, Duration::from_secs(10));
        assert_eq!(config.database_url_for("users"), "sqlite://data/users.db");

        let err = ServiceConfig::from_lookup(|name| {
            (name == "MC_REQUEST_TIMEOUT_MS").then(|| "soon".to_owned())
        })
        .unwrap_err();
        assert_eq!(err.name, "MC_REQUEST_TIMEOUT_MS");
    }

    #[test]
    fn a_short_auth_secret_fails_early_without_being_echoed() {
        let err = ServiceConfig::from_lookup(|name| {
            (name == "MC_AUTH_SECRET").then(|| "hunter2".to_owned())
        })
        .unwrap_err();
        assert_eq!(err.name, "MC_AUTH_SECRET");
        assert!(!err.to_string().contains("hunter2"));
    }
}
