//! The NATS micro services protocol, spoken with a plain client.
//!
//! Services answer `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` (optionally
//! followed by `.<name>` and `.<name>.<id>`), every instance separately. A
//! discovery request therefore has many replies: it is published with a
//! reply inbox and the replies are gathered until as many as expected have
//! arrived or a window closes. Using a plain client, not the kernel's own
//! code, is the point: this is what standard NATS tooling sees.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::Client;
use futures_util::StreamExt;
use serde_json::Value;

/// Publishes an empty request on `subject` and returns the JSON replies that
/// arrive within `window`, stopping early once there are `expected`.
///
/// # Panics
/// When NATS refuses the subscription or a reply is not JSON.
pub async fn collect(
    client: &Client,
    subject: &str,
    expected: usize,
    window: Duration,
) -> Vec<Value> {
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .unwrap_or_else(|e| panic!("cannot subscribe to {inbox}: {e}"));
    client
        .publish_with_reply(subject.to_owned(), inbox, Default::default())
        .await
        .unwrap_or_else(|e| panic!("cannot publish on {subject}: {e}"));
    client
        .flush()
        .await
        .unwrap_or_else(|e| panic!("cannot flush the request on {subject}: {e}"));

    let mut gathered = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while gathered.len() < expected {
        match tokio::time::timeout_at(deadline, replies.next()).await {
            Ok(Some(message)) => gathered.push(
                serde_json::from_slice(&message.payload).unwrap_or_else(|e| {
                    panic!(
                        "a reply on {subject} is not JSON ({e}): {}",
                        String::from_utf8_lossy(&message.payload)
                    )
                }),
            ),
            Ok(None) | Err(_) => break,
        }
    }
    gathered
}

/// `$SRV.PING.<service>` replies.
pub async fn ping(client: &Client, service: &str, expected: usize) -> Vec<Value> {
    collect(
        client,
        &format!("$SRV.PING.{service}"),
        expected,
        crate::wait::PROMPT,
    )
    .await
}

/// `$SRV.INFO.<service>` replies.
pub async fn info(client: &Client, service: &str, expected: usize) -> Vec<Value> {
    collect(
        client,
        &format!("$SRV.INFO.{service}"),
        expected,
        crate::wait::PROMPT,
    )
    .await
}

/// `$SRV.STATS.<service>` replies.
pub async fn stats(client: &Client, service: &str, expected: usize) -> Vec<Value> {
    collect(
        client,
        &format!("$SRV.STATS.{service}"),
        expected,
        crate::wait::PROMPT,
    )
    .await
}

/// The instance ids among `replies`.
pub fn instance_ids(replies: &[Value]) -> BTreeSet<String> {
    replies
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect()
}

/// Requests handled by one instance, summed over its endpoints, from its
/// `$SRV.STATS` reply.
pub fn requests_handled(stats: &Value) -> u64 {
    stats["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["num_requests"].as_u64())
        .sum()
}
