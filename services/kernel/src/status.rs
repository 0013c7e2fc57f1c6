//! What an instance tells about itself beyond its endpoints: when and
//! where it started, how each plugin booted (ready, or dead and why) and
//! what it subscribes to. It rides in the service metadata of `$SRV.INFO`,
//! so the gateway's fleet views and standard NATS tooling read the same.

use std::collections::HashMap;

use shared_schemas::discovery::{PluginStatus, SubscriptionInfo, meta};

use crate::plugin::{PluginId, PluginState};
use crate::tools::bus::{Audience, Subscription};

/// The metadata entries of an instance with these plugins and
/// subscriptions.
pub(crate) fn metadata(
    plugins: &[(PluginId, PluginState)],
    subscriptions: &[Subscription],
) -> HashMap<String, String> {
    let plugins: Vec<PluginStatus> = plugins
        .iter()
        .map(|(id, state)| match state {
            PluginState::Ready => PluginStatus {
                plugin: id.to_string(),
                state: "ready".to_owned(),
                reason: None,
            },
            PluginState::Dead { reason } => PluginStatus {
                plugin: id.to_string(),
                state: "dead".to_owned(),
                reason: Some(reason.clone()),
            },
        })
        .collect();
    let subscriptions: Vec<SubscriptionInfo> = subscriptions
        .iter()
        .map(|s| SubscriptionInfo {
            subscriber: s.subscriber.clone(),
            event: s.event.clone(),
            audience: match &s.audience {
                Audience::Plugin => "plugin".to_owned(),
                Audience::Group(group) => format!("group:{group}"),
                Audience::Broadcast => "broadcast".to_owned(),
            },
        })
        .collect();
    HashMap::from([
        (meta::STARTED.to_owned(), crate::now_rfc3339()),
        (meta::HOST.to_owned(), host()),
        (meta::PLUGINS.to_owned(), json(&plugins)),
        (meta::SUBSCRIPTIONS.to_owned(), json(&subscriptions)),
    ])
}

fn json<T: serde::Serialize>(value: &T) -> String {
    // Lists of strings always serialize.
    serde_json::to_string(value).unwrap_or_else(|_| "[]".to_owned())
}

/// The host name: the kernel's own idea of it, or `HOSTNAME`.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}
