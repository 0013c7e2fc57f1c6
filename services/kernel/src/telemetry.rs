//! Logging setup shared by every binary.
//!
//! Lines are JSON when stderr is not a terminal (containers, log shippers)
//! and human-readable when it is; `MC_LOG_FORMAT=json` or `pretty` decides
//! explicitly. `RUST_LOG` filters (default `info,sqlx=warn`). Every line
//! carries the fields of the spans it happens in: the service and its
//! instance id, and inside a handler the plugin, the request id and the
//! route.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, span fields included.
    Json,
    /// For people at a terminal.
    Pretty,
}

impl LogFormat {
    /// `MC_LOG_FORMAT`, or by whether stderr is a terminal; `Err` names
    /// an unknown value.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("MC_LOG_FORMAT").ok().as_deref() {
            Some("json") => Ok(Self::Json),
            Some("pretty") => Ok(Self::Pretty),
            None | Some("") if std::io::stderr().is_terminal() => Ok(Self::Pretty),
            None | Some("") => Ok(Self::Json),
            Some(other) => Err(format!("MC_LOG_FORMAT={other:?} is not `json` or `pretty`")),
        }
    }
}

/// Installs the global subscriber; a second call is a no-op.
pub fn init_logging() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let (format, unknown) = match LogFormat::from_env() {
        Ok(format) => (format, None),
        Err(unknown) => (LogFormat::Pretty, Some(unknown)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
        LogFormat::Pretty => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
    if let Some(unknown) = unknown {
        tracing::warn!("{unknown}; writing pretty logs");
    }
}
