//! The NATS micro services protocol (`$SRV.PING`, `$SRV.INFO`,
//! `$SRV.STATS`, each also scoped by `.<name>` and `.<name>.<id>`), served
//! by the kernel itself rather than by async-nats' `service` module, for
//! one reason: a stopping instance must *drain* its endpoint subscriptions
//! ([`drainable`]). Unsubscribing outright drops the requests the server
//! already sent this way; draining answers them first, so a rolling
//! restart loses nothing.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use async_nats::Client;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::{self, BoxStream, SelectAll};
use futures_util::{Stream, StreamExt};
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
///
/// Until the signal, a message costs one poll of the subscription and
/// one of the signal: nothing is built per message on the request path.
pub fn drainable(
    subscriber: async_nats::Subscriber,
    mut drain: watch::Receiver<bool>,
) -> BoxStream<'static, async_nats::Message> {
    Drainable {
        serving: Some(Serving {
            subscriber,
            received: 0,
            signal: async move {
                // A dropped sender drains too.
                let _ = drain.changed().await;
            }
            .boxed(),
        }),
        draining: stream::empty().boxed(),
    }
    .boxed()
}

struct Drainable {
    /// Until the drain signal.
    serving: Option<Serving>,
    /// After it: what the subscription still delivers ([`drain`]).
    draining: BoxStream<'static, async_nats::Message>,
}

struct Serving {
    subscriber: async_nats::Subscriber,
    /// Messages delivered so far, as the server counts them.
    received: u64,
    signal: BoxFuture<'static, ()>,
}

impl Stream for Drainable {
    type Item = async_nats::Message;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(serving) = &mut this.serving {
            if serving.signal.as_mut().poll(cx).is_pending() {
                let message = ready!(serving.subscriber.poll_next_unpin(cx));
                serving.received += u64::from(message.is_some());
                return Poll::Ready(message);
            }
            if let Some(Serving {
                subscriber,
                received,
                ..
            }) = this.serving.take()
            {
                this.draining = drain(subscriber, received);
            }
        }
        this.draining.poll_next_unpin(cx)
    }
}

/// The rest of a subscription that has delivered `received` messages:
/// the server stops after [`DRAIN_ALLOWANCE`] more, the client closes it
/// once it has been quiet for [`DRAIN_QUIET`].
fn drain(
    subscriber: async_nats::Subscriber,
    received: u64,
) -> BoxStream<'static, async_nats::Message> {
    let state = Draining {
        subscriber,
        last: Some(received + DRAIN_ALLOWANCE),
        quiet: Box::pin(tokio::time::sleep(DRAIN_QUIET)),
        closed: false,
    };
    stream::unfold(state, |mut state| async move {
        if let Some(last) = state.last.take() {
            state.subscriber.unsubscribe_after(last).await.ok()?;
        }
        loop {
            tokio::select! {
                message = state.subscriber.next() => {
                    let message = message?;
                    state.quiet.as_mut().reset(tokio::time::Instant::now() + DRAIN_QUIET);
                    return Some((message, state));
                }
                () = &mut state.quiet, if !state.closed => {
                    // Buffered messages still come out; then the stream ends.
                    state.subscriber.unsubscribe().await.ok()?;
                    state.closed = true;
                }
            }
        }
    })
    .boxed()
}

struct Draining {
    subscriber: async_nats::Subscriber,
    /// The server's last message, until it has been told.
    last: Option<u64>,
    quiet: Pin<Box<tokio::time::Sleep>>,
    closed: bool,
}

/// Answers the protocol's verbs for `instance` until the drain signal,
/// then stops at once: a stopping instance is no longer one to discover
/// (a sweep that found it would list it again after its down
/// announcement), and a verb left unanswered loses nothing.
pub async fn serve_verbs(
    client: &Client,
    instance: Arc<Instance>,
    mut drain: watch::Receiver<bool>,
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
            verbs.push(subscriber.map(move |m| (verb, m)));
        }
    }
    let client = client.clone();
    tokio::spawn(async move {
        loop {
            let (verb, message) = tokio::select! {
                biased;
                // A dropped sender stops them too.
                _ = drain.changed() => break,
                next = verbs.next() => match next {
                    Some(next) => next,
                    None => break,
                },
            };
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
        // Dropping the subscriptions unsubscribes them.
    });
    Ok(())
}
