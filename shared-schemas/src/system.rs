//! The system endpoint every instance registers beside its HTTP and RPC
//! endpoints, on [`Subjects::system`](crate::Subjects::system): the gateway
//! asks one specific instance for its live figures there, the way it
//! forwards an HTTP request, and builds the fleet views from the answers.
//!
//! The request has no body. Its [`VIEW`] header names the parts wanted,
//! comma-separated ([`View::Bus`], [`View::Metrics`], [`View::Health`]);
//! without it the instance sends every part. Asking for less matters: the
//! Prometheus text is the larger part, and the event topology does not need
//! it; the health of the tools costs a database round trip. The reply is an
//! [`InstanceReport`] as JSON.
//!
//! Both sides ignore what they do not know, so gateways and instances of
//! different versions work together: an instance skips the views it does
//! not know, and a part it leaves out is `None` on the gateway's side.

use serde::{Deserialize, Serialize};

/// Request header: the parts of the report wanted, comma-separated.
pub const VIEW: &str = "mc-system-view";

/// One part of an [`InstanceReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The bus counters: [`InstanceReport::bus`].
    Bus,
    /// The Prometheus text: [`InstanceReport::metrics`].
    Metrics,
    /// The health of the instance's tools: [`InstanceReport::health`].
    Health,
}

impl View {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Bus => "bus",
            Self::Metrics => "metrics",
            Self::Health => "health",
        }
    }

    /// The views a [`VIEW`] header value asks for; unknown names are
    /// ignored, so a newer gateway can ask an older instance.
    pub fn parse_list(value: &str) -> impl Iterator<Item = Self> + '_ {
        value.split(',').filter_map(|name| match name.trim() {
            "bus" => Some(Self::Bus),
            "metrics" => Some(Self::Metrics),
            "health" => Some(Self::Health),
            _ => None,
        })
    }
}

/// What one instance reports about itself, since it started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceReport {
    pub service: String,
    pub instance: String,
    /// Present when [`View::Bus`] was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<BusReport>,
    /// The instance's metrics in the Prometheus text exposition format
    /// (version 0.0.4); present when [`View::Metrics`] was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// One entry per tool of the instance that checks its health (the
    /// database, the bus …), by tool name; present when [`View::Health`]
    /// was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Vec<ToolHealth>>,
}

/// How one tool of an instance is doing, as its check found when asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolHealth {
    /// The tool's name, as plugins ask for it (`db`, `bus` …).
    pub tool: String,
    pub healthy: bool,
    /// What is wrong, when it is not healthy: words for an operator, never
    /// a connection string or a credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// How long the check's round trip took, in milliseconds, for checks
    /// that make one (the database's query), succeeded or not; absent when
    /// the check did not finish in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
}

/// The events an instance published and how its subscriptions fared.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusReport {
    /// One entry per emitting plugin and event that was published at least
    /// once. An event staged in a transaction counts when it commits.
    #[serde(default)]
    pub published: Vec<Published>,
    /// One entry per subscription the instance runs.
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionCounts>,
}

/// Events one plugin published under one name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The emitting plugin, `service.plugin` (the envelope's `emitter`).
    pub emitter: String,
    pub event: String,
    pub count: u64,
}

/// How one subscription of an instance fared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionCounts {
    /// `service.plugin.name`, as in
    /// [`SubscriptionInfo`](crate::discovery::SubscriptionInfo).
    pub subscriber: String,
    pub event: String,
    /// Deliveries handled and acknowledged.
    pub handled: u64,
    /// Failed attempts that were offered again.
    pub retried: u64,
    /// Events that failed for good and went to the dead-letter subject.
    pub dead_lettered: u64,
    /// The subscriber stopped consuming on this instance after too many
    /// final failures in a row.
    pub dropped: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_lists_ignore_unknown_names() {
        let views: Vec<View> = View::parse_list("bus, traces,metrics,health").collect();
        assert_eq!(views, [View::Bus, View::Metrics, View::Health]);
    }

    #[test]
    fn a_report_without_parts_reads_back() {
        let report: InstanceReport =
            serde_json::from_str(r#"{"service":"products","instance":"1"}"#).unwrap();
        assert_eq!(report.bus, None);
        assert_eq!(report.metrics, None);
        assert_eq!(report.health, None);
    }

    #[test]
    fn a_healthy_tool_reads_without_detail() {
        let health: ToolHealth = serde_json::from_str(r#"{"tool":"bus","healthy":true}"#).unwrap();
        assert_eq!(health.detail, None);
        assert_eq!(health.latency_ms, None);
    }
}
