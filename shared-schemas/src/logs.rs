//! The log records every process publishes for the gateway's live log
//! stream, on `{prefix}.logs.{service}` (see
//! [`Subjects::logs`](crate::Subjects::logs)). Nothing stores them: a
//! record reaches whoever listens when it passes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One log record: the fields of a JSON log line, and the service that
/// wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// RFC 3339, UTC.
    pub timestamp: String,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub level: String,
    /// Where it was logged, e.g. `microcore::http::handler`.
    pub target: String,
    pub message: String,
    /// The record's own fields beside the message.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub fields: Map<String, Value>,
    /// The service named by the `service` span the record happened in,
    /// else the process (`gateway`, or the all-in-one `microcore`).
    pub service: String,
    /// The instance of that service, inside its span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The spans it happened in, outermost first: each with its `name`
    /// and fields (`plugin`, `request_id`, `route`, `trace_id` …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spans: Vec<Map<String, Value>>,
}
