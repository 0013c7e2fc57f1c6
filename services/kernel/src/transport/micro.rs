//! The NATS micro services protocol (`$SRV.PING`, `$SRV.INFO`,
//! `$SRV.STATS`, each also scoped by `.<name>` and `.<name>.<id>`), served
//! by the kernel itself rather than by async-nats' `service` module, for
//! one reason: a stopping instance must *drain* its endpoint subscriptions
//! ([`drainable`]). Unsubscribing outright drops the requests the server
//! already sent this way; draining answers them first, so a rolling
//! restart loses nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

/// Messages the server may already have sent when it reads our
/// unsubscribe: far more than a loopback or LAN pipe holds at once.
const DRAIN_ALLOWANCE: u64 = 256;

/// A draining subscription quiet this long has nothing left in flight.
const DRAIN_QUIET: Duration = Duration::from_millis(200);

/// A subscription that keeps delivering until drained.
///
/// Unsubscribing outright loses the messages the server sent before it
/// read the unsubscribe. So on the drain signal we ask the server to stop
/// after [`DRAIN_ALLOWANCE`] more messages (`UNSUB <sid> <max>`): server and
/// client count the same messages, so whatever was in flight is delivered
/// and nothing after it is routed here. Under light traffic the allowance
/// may never fill; once the subscription has been quiet for
/// [`DRAIN_QUIET`], it is closed outright.
pub fn drainable(
    subscriber: async_nats::Subscriber,
    drain: watch::Receiver<bool>,
) -> BoxStream<'static, async_nats::Message> {
    let state = Drainable {
        subscriber,
        drain,
        received: 0,
        quiet: None,
    };
    stream::unfold(state, |mut state| async move {
        loop {
            let draining = state.quiet.is_some();
            let quiet = async {
                match &mut state.quiet {
                    Some(sleep) => sleep.as_mut().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                message = state.subscriber.next() => {
                    let message = message?;
                    state.received += 1;
                    if let Some(sleep) = &mut state.quiet {
                        sleep.as_mut().reset(tokio::time::Instant::now() + DRAIN_QUIET);
                    }
                    return Some((message, state));
                }
                _ = state.drain.changed(), if !draining => {
                    let last = state.received + DRAIN_ALLOWANCE;
                    state.quiet = Some(Box::pin(tokio::time::sleep(DRAIN_QUIET)));
                    if state.subscriber.unsubscribe_after(last).await.is_err() {
                        return None;
                    }
                }
                _ = quiet => {
                    // Buffered messages still come out; then the stream ends.
                    if state.subscriber.unsubscribe().await.is_err() {
                        return None;
                    }
                    state.quiet = Some(Box::pin(tokio::time::sleep(Duration::MAX / 4)));
                }
            }
        }
    })
    .boxed()
}

struct Drainable {
    subscriber: async_nats::Subscriber,
    drain: watch::Receiver<bool>,
    received: u64,
    quiet: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
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
