//! Running one subscription: pull deliveries, hand each to the handler in
//! the event's causal scope, and settle it.
//!
//! - Success acks. A failure is retried by the server after an
//!   exponential backoff; after the last attempt the envelope goes to the
//!   dead-letter subject with the subscriber, the error and the attempt
//!   count, and only then is the delivery acked, so nothing is lost.
//! - Deliveries fan out to `concurrency` lanes. An event with a key always
//!   takes the lane of its key, so one key is handled in order.
//! - A subscriber that fails for good on too many events in a row stops
//!   consuming on this instance and says so with `system.subscriber.dropped`;
//!   its events wait in the stream until it is fixed.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use http::HeaderMap;
use shared_schemas::events::{DeadLetter, EventEnvelope, SubscriberDropped};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::Bus;
use super::counters::SubscriptionCounters;
use super::subscribe::{Audience, Subscription};
use crate::causality::{self, Cause};
use crate::transport::{ConsumerMode, ConsumerSpec, Delivery, Message, TransportError};

/// Final failures in a row after which a subscriber is dropped.
const MAX_CONSECUTIVE_FAILURES: u32 = 5;

/// How long a handler may hold a delivery before the server offers it
/// again.
const ACK_WAIT: Duration = Duration::from_secs(30);

/// The longest wait between two attempts, whatever the backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Creates the consumer of `subscription`, then returns what consumes it
/// until `stop` is cancelled. Handlers run on `tasks`, so the service can
/// wait for the ones in flight.
pub(crate) async fn start(
    subscription: Subscription,
    bus: Bus,
    stop: CancellationToken,
    tasks: TaskTracker,
) -> Result<BoxFuture<'static, ()>, TransportError> {
    let spec = ConsumerSpec {
        subject: bus.subjects.event(&subscription.event),
        mode: match &subscription.audience {
            Audience::Plugin => ConsumerMode::Shared {
                name: subscription.subscriber.clone(),
            },
            Audience::Group(group) => ConsumerMode::Shared {
                name: format!("group.{group}.{}", subscription.event),
            },
            Audience::Broadcast => ConsumerMode::Broadcast,
        },
        ack_wait: ACK_WAIT,
        // Each lane holds one event in hand and one queued: an instance
        // never sits on events it is not about to handle, so a stopping one
        // leaves nothing behind for the ack wait.
        max_in_flight: subscription.concurrency * 2,
    };
    let deliveries = bus.transport.consume(spec).await?;
    let worker = Worker {
        counters: bus
            .counters()
            .subscription(&subscription.subscriber, &subscription.event),
        subscription,
        bus,
        consecutive_failures: AtomicU32::new(0),
        dropped: CancellationToken::new(),
    };
    Ok(consume(deliveries, Arc::new(worker), stop, tasks).boxed())
}

async fn consume(
    mut deliveries: BoxStream<'static, Delivery>,
    worker: Arc<Worker>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let lanes: Vec<_> = (0..worker.subscription.concurrency)
        .map(|_| {
            let (lane, mut queue) = mpsc::channel::<(Delivery, EventEnvelope)>(1);
            let worker = worker.clone();
            let work = async move {
                while let Some((delivery, envelope)) = queue.recv().await {
                    worker.handle(delivery, envelope).await;
                }
            };
            tasks.spawn(work.in_current_span());
            lane
        })
        .collect();
    let next_lane = AtomicUsize::new(0);
    loop {
        let delivery = tokio::select! {
            _ = stop.cancelled() => break,
            _ = worker.dropped.cancelled() => break,
            delivery = deliveries.next() => match delivery {
                Some(delivery) => delivery,
                None => break,
            },
        };
        let envelope = match serde_json::from_slice::<EventEnvelope>(&delivery.message.body) {
            Ok(envelope) => envelope,
            Err(e) => {
                // Never handleable, so never retried.
                tracing::error!(
                    subscriber = %worker.subscription.subscriber, error = %e,
                    "dropping a message that is not an event envelope"
                );
                let _ = delivery.ack().await;
                continue;
            }
        };
        let lane = match &envelope.key {
            Some(key) => {
                let mut hasher = DefaultHasher::new();
                key.hash(&mut hasher);
                (hasher.finish() % lanes.len() as u64) as usize
            }
            None => next_lane.fetch_add(1, Ordering::Relaxed) % lanes.len(),
        };
        if lanes[lane].send((delivery, envelope)).await.is_err() {
            break;
        }
    }
}

struct Worker {
    subscription: Subscription,
    bus: Bus,
    counters: Arc<SubscriptionCounters>,
    consecutive_failures: AtomicU32,
    dropped: CancellationToken,
}

impl Worker {
    /// Handles one delivery in a consumer span, a child of the span that
    /// published the event: the trace goes on across services.
    async fn handle(&self, delivery: Delivery, envelope: EventEnvelope) {
        let trace = crate::telemetry::continue_trace(&delivery.message.headers, || {
            tracing::info_span!(
                "process",
                otel.name = %format_args!("process {}", envelope.event),
                otel.kind = "consumer",
                messaging.system = "nats",
                messaging.operation.type = "process",
                messaging.destination.name = envelope.event.as_str(),
                messaging.message.id = envelope.id.as_str(),
                messaging.consumer.group.name = self.subscription.subscriber.as_str(),
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
            )
        });
        trace.instrument(self.settle(delivery, envelope)).await;
    }

    /// Runs the handler, then acks, retries or dead-letters the delivery.
    async fn settle(&self, delivery: Delivery, envelope: EventEnvelope) {
        let sub = &self.subscription;
        let attempt = delivery.attempt;
        let last_attempt = attempt > sub.retries;
        let outcome = match (sub.handler)(envelope.clone()) {
            Ok(handling) => {
                let handling = causality::scope(Cause::event(&envelope), handling);
                match AssertUnwindSafe(handling).catch_unwind().await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err((e.to_string(), last_attempt)),
                    Err(_) => Err(("the handler panicked".to_owned(), last_attempt)),
                }
            }
            // No retry turns a payload into another type.
            Err(e) => Err((format!("the payload does not fit the handler: {e}"), true)),
        };
        let settled = match outcome {
            Ok(()) => {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                let acked = delivery.ack().await;
                if acked.is_ok() {
                    self.counters.handled();
                }
                acked
            }
            Err((error, false)) => {
                let delay = backoff(sub.backoff, attempt);
                tracing::warn!(
                    subscriber = %sub.subscriber, event = %envelope.event, event_id = %envelope.id,
                    attempt, retry_in = ?delay, %error, "event handler failed, will retry"
                );
                // Offered again even if the retry cannot be sent: then after
                // the ack wait.
                self.counters.retried();
                delivery.retry(delay).await
            }
            Err((error, true)) => self.give_up(delivery, envelope, error).await,
        };
        if let Err(e) = settled {
            tracing::warn!(subscriber = %sub.subscriber, error = %e, "could not settle a delivery; the server will offer it again");
        }
    }

    /// Dead-letters the event, then acks it; drops the subscriber after
    /// too many final failures in a row.
    async fn give_up(
        &self,
        delivery: Delivery,
        envelope: EventEnvelope,
        error: String,
    ) -> Result<(), TransportError> {
        let sub = &self.subscription;
        let attempts = delivery.attempt;
        tracing::error!(
            subscriber = %sub.subscriber, event = %envelope.event, event_id = %envelope.id,
            attempts, %error, "event handler failed for good; dead-lettering the event"
        );
        let letter = DeadLetter {
            original: envelope.clone(),
            subscriber: sub.subscriber.clone(),
            error: error.clone(),
            attempts,
            failed_at: crate::now_rfc3339(),
        };
        let body =
            serde_json::to_vec(&letter).map_err(|e| TransportError::new("dead-lettering", e))?;
        // One dead letter per event and subscriber, even if this races a
        // redelivery.
        let id = format!("{}:{}", envelope.id, sub.subscriber);
        if let Err(e) = self
            .bus
            .transport
            .publish_durable(
                &self.bus.subjects.dlq(&envelope.event),
                &id,
                Message::new(HeaderMap::new(), body),
            )
            .await
        {
            // Not dead-lettered, so not done: offer it again later.
            self.counters.retried();
            delivery.retry(backoff(sub.backoff, attempts)).await?;
            return Err(e);
        }
        self.counters.dead_lettered();
        delivery.ack().await?;

        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= MAX_CONSECUTIVE_FAILURES && !self.dropped.is_cancelled() {
            self.dropped.cancel();
            self.counters.dropped();
            tracing::error!(
                subscriber = %sub.subscriber, event = %sub.event, failures,
                "subscriber dropped on this instance after consecutive final failures; its events wait in the stream"
            );
            if envelope.event != SubscriberDropped::EVENT {
                let signal = SubscriberDropped {
                    event: sub.event.clone(),
                    subscriber: sub.subscriber.clone(),
                    error,
                    consecutive_failures: failures,
                };
                let published = causality::scope(
                    Cause::event(&envelope),
                    self.bus.publish(SubscriberDropped::EVENT, &signal),
                )
                .await;
                if let Err(e) = published {
                    tracing::warn!(error = %e, "could not publish {}", SubscriberDropped::EVENT);
                }
            }
        }
        Ok(())
    }
}

/// `base * 2^(attempt-1)`, capped.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
    base.saturating_mul(factor).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_and_is_capped() {
        let base = Duration::from_millis(500);
        assert_eq!(backoff(base, 1), Duration::from_millis(500));
        assert_eq!(backoff(base, 2), Duration::from_secs(1));
        assert_eq!(backoff(base, 3), Duration::from_secs(2));
        assert_eq!(backoff(base, 60), MAX_BACKOFF);
    }
}
