//! The NATS micro services protocol (`$SRV.PING`, `$SRV.INFO`,
//! `$SRV.STATS`, each also scoped by `.<name>` and `.<name>.<id>`), served
//! by the kernel itself rather than by async-nats' `service` module, for
//! one reason: a stopping instance must *drain* its endpoint subscriptions.
//! Unsubscribing outright drops the requests the server already sent this
//! way; draining answers them first, so a rolling restart loses nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_nats::Client;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream, SelectAll};
use serde_json::{Value, json};
use shared_schemas::discovery::ServiceInfo;
use tokio::sync::watch;

/// The queue group of every endpoint: replicas share the load.
pub const QUEUE_GROUP: &str = "q";

/// Counters behind `$SRV.STATS` for one endpoint.
#[derive(Default)]
pub struct EndpointStats {
    requests: AtomicU64,
    errors: AtomicU64,
    processing_ns: AtomicU64,
}

impl EndpointStats {
    pub fn record(&self, started: Instant, failed: bool) {
        let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.processing_ns.fetch_add(elapsed, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn json(&self) -> Value {
        let requests = self.requests.load(Ordering::Relaxed);
        let processing = self.processing_ns.load(Ordering::Relaxed);
        json!({
            "num_requests": requests,
            "num_errors": self.errors.load(Ordering::Relaxed),
            "processing_time": processing,
            "average_processing_time": processing.checked_div(requests).unwrap_or(0),
        })
    }
}

/// One instance as the protocol describes it.
pub struct Instance {
    pub info: ServiceInfo,
    pub stats: Vec<Arc<EndpointStats>>,
    pub started: String,
}

impl Instance {
    fn ping(&self) -> Value {
        json!({
            "type": "io.nats.micro.v1.ping_response",
            "name": self.info.name,
            "id": self.info.id,
            "version": self.info.version,
            "metadata": self.info.metadata,
        })
    }

    fn info(&self) -> Value {
        let mut info = serde_json::to_value(&self.info).unwrap_or_default();
        info["type"] = "io.nats.micro.v1.info_response".into();
        info
    }

    fn stats(&self) -> Value {
        let endpoints: Vec<Value> = self
            .info
            .endpoints
            .iter()
            .zip(&self.stats)
            .map(|(endpoint, stats)| {
                let mut entry = stats.json();
                entry["name"] = endpoint.name.clone().into();
                entry["subject"] = endpoint.subject.clone().into();
                entry["queue_group"] = endpoint.queue_group.clone().into();
                entry
            })
            .collect();
        json!({
            "type": "io.nats.micro.v1.stats_response",
            "name": self.info.name,
            "id": self.info.id,
            "version": self.info.version,
            "metadata": self.info.metadata,
            "started": self.started,
            "endpoints": endpoints,
        })
    }
}

/// A subscription that keeps delivering until drained: on the drain
/// signal it unsubscribes at the server and ends only once the server has
/// confirmed, after the last message sent before that.
pub fn drainable(
    subscriber: async_nats::Subscriber,
    drain: watch::Receiver<bool>,
) -> BoxStream<'static, async_nats::Message> {
    stream::unfold((subscriber, drain, false), |(mut subscriber, mut drain, draining)| async move {
        let mut draining = draining;
        loop {
            tokio::select! {
                message = subscriber.next() => return message.map(|m| (m, (subscriber, drain, draining))),
                _ = drain.changed(), if !draining => {
                    draining = true;
                    if subscriber.drain().await.is_err() {
                        return None;
                    }
                }
            }
        }
    })
    .boxed()
}

/// Answers the protocol's verbs for `instance` until drained.
pub async fn serve_verbs(
    client: &Client,
    instance: Arc<Instance>,
    drain: watch::Receiver<bool>,
) -> Result<(), async_nats::SubscribeError> {
    let (name, id) = (&instance.info.name, &instance.info.id);
    let mut verbs = SelectAll::new();
    for verb in ["PING", "INFO", "STATS"] {
        for subject in [
            format!("$SRV.{verb}"),
            format!("$SRV.{verb}.{name}"),
            format!("$SRV.{verb}.{name}.{id}"),
        ] {
            let subscriber = client.subscribe(subject).await?;
            verbs.push(drainable(subscriber, drain.clone()).map(move |m| (verb, m)));
        }
    }
    let client = client.clone();
    tokio::spawn(async move {
        while let Some((verb, message)) = verbs.next().await {
            let Some(reply) = message.reply else { continue };
            let answer = match verb {
                "PING" => instance.ping(),
                "INFO" => instance.info(),
                _ => instance.stats(),
            };
            let body = serde_json::to_vec(&answer).unwrap_or_default();
            if let Err(e) = client.publish(reply, body.into()).await {
                tracing::debug!(error = %e, "could not answer a $SRV request");
            }
        }
    });
    Ok(())
}
