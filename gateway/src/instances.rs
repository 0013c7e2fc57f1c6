//! Asking one live instance for its figures, over the system endpoint it
//! announces (see `shared_schemas::system`).
//!
//! The subject always comes from the instance's own announcement, never
//! from client input: a view names an instance by service and id, and the
//! gateway asks only instances it knows.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use microcore::transport::{Message, RequestError, Transport, TransportError};
use shared_schemas::discovery::{ServiceInfo, meta};
use shared_schemas::system::{InstanceReport, VIEW, View};

/// How long an instance may take to report. Short: a fleet view waits for
/// its slowest instance, and an instance that cannot answer in this time
/// is listed as unreachable instead.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why an instance gave no report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("the instance announces no system endpoint")]
    NoSystemEndpoint,
    #[error("the instance does not answer")]
    NoResponder,
    #[error("the instance did not answer within {0:?}")]
    TimedOut(Duration),
    #[error("the bus could not deliver the request: {0}")]
    Transport(#[source] TransportError),
    #[error("the answer is not an instance report: {0}")]
    InvalidReply(#[source] serde_json::Error),
}

/// The subject of the system endpoint `info` announces, if any.
pub fn system_subject(info: &ServiceInfo) -> Option<&str> {
    info.endpoints
        .iter()
        .find(|e| e.metadata.get(meta::SYSTEM).map(String::as_str) == Some(meta::SYSTEM_INSTANCE))
        .map(|e| e.subject.as_str())
}

/// Asks the instance `info` describes for the parts `views` of its report.
pub async fn report(
    transport: &dyn Transport,
    info: &ServiceInfo,
    views: &[View],
) -> Result<InstanceReport, ReportError> {
    let subject = system_subject(info).ok_or(ReportError::NoSystemEndpoint)?;
    let views = views
        .iter()
        .map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let mut headers = HeaderMap::new();
    if let Ok(views) = HeaderValue::from_str(&views) {
        headers.insert(VIEW, views);
    }
    let reply = transport
        .request(subject, Message::new(headers, Vec::new()), REPORT_TIMEOUT)
        .await
        .map_err(|e| match e {
            RequestError::NoResponders(_) => ReportError::NoResponder,
            RequestError::TimedOut(_, after) => ReportError::TimedOut(after),
            RequestError::Transport(e) => ReportError::Transport(e),
        })?;
    serde_json::from_slice(&reply.body).map_err(ReportError::InvalidReply)
}

#[cfg(test)]
mod tests {
    use shared_schemas::discovery::EndpointInfo;

    use super::*;

    #[test]
    fn only_the_marked_endpoint_is_the_system_endpoint() {
        let endpoint = |name: &str, metadata: &[(&str, &str)]| EndpointInfo {
            name: name.into(),
            subject: format!("mc.{name}"),
            queue_group: "q".into(),
            metadata: metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let mut info = ServiceInfo {
            name: "products".into(),
            id: "p1".into(),
            version: "0.1.0".into(),
            description: String::new(),
            metadata: Default::default(),
            endpoints: vec![endpoint("rpc", &[(meta::RPC_NAME, "products.quote")])],
        };
        assert_eq!(system_subject(&info), None);
        info.endpoints
            .push(endpoint("system", &[(meta::SYSTEM, meta::SYSTEM_INSTANCE)]));
        assert_eq!(system_subject(&info), Some("mc.system"));
    }
}
