//! Durable messages over JetStream. One stream per system captures every
//! event subject and one every dead-letter subject; both are created on
//! first use by whichever process needs them, so no deployment step has to
//! run before the services.
//!
//! Publishing waits for the server's acknowledgement: once `publish`
//! returns, the event survives a crash of the publisher. The server drops
//! a second message with the same id inside the de-duplication window, so
//! a publisher may safely retry (the outbox relay does).
//!
//! Consumers are pull consumers with explicit acks: shared ones are
//! durable and named, so replicas split the work and progress survives
//! restarts; broadcast ones are per instance and vanish when it stops.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use shared_schemas::Subjects;
use tokio::sync::OnceCell;

use super::nats::{from_nats, to_nats};
use super::{Acknowledge, ConsumerMode, ConsumerSpec, Delivery, Message, TransportError};

/// Messages with the same id inside this window are stored once.
const DEDUPLICATION_WINDOW: Duration = Duration::from_secs(120);

/// How long events stay in the stream, consumed or not.
const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a broadcast consumer outlives its instance.
const BROADCAST_INACTIVE: Duration = Duration::from_secs(30);

pub(super) struct JetStreamEvents {
    context: jetstream::Context,
    subjects: Subjects,
    streams: OnceCell<()>,
}

impl JetStreamEvents {
    pub fn new(client: async_nats::Client, subjects: Subjects) -> Self {
        Self {
            context: jetstream::new(client),
            subjects,
            streams: OnceCell::new(),
        }
    }

    pub async fn publish(
        &self,
        subject: &str,
        id: &str,
        message: Message,
    ) -> Result<(), TransportError> {
        self.ensure_streams().await?;
        let mut headers = to_nats(&message.headers);
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        self.context
            .publish_with_headers(subject.to_owned(), headers, message.body)
            .await
            .map_err(|e| TransportError::new("durable publish", e))?
            .await
            .map_err(|e| TransportError::new("durable publish", e))?;
        Ok(())
    }

    pub async fn consume(
        &self,
        spec: ConsumerSpec,
    ) -> Result<BoxStream<'static, Delivery>, TransportError> {
        self.ensure_streams().await?;
        const CONSUMING: &str = "consuming durable messages";
        let stream_name = if spec.subject.starts_with(&self.subjects.dlq("")) {
            self.subjects.dlq_stream()
        } else {
            self.subjects.events_stream()
        };
        let mut config = pull::Config {
            filter_subject: spec.subject.clone(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: spec.ack_wait,
            max_ack_pending: i64::try_from(spec.max_in_flight).unwrap_or(i64::MAX),
            ..Default::default()
        };
        match &spec.mode {
            ConsumerMode::Shared { name } => {
                config.durable_name = Some(consumer_name(name));
                config.deliver_policy = jetstream::consumer::DeliverPolicy::All;
            }
            ConsumerMode::Broadcast => {
                config.deliver_policy = jetstream::consumer::DeliverPolicy::New;
                config.inactive_threshold = BROADCAST_INACTIVE;
            }
        }
        let consumer = self
            .context
            .create_consumer_on_stream(config, stream_name)
            .await
            .map_err(|e| TransportError::new(CONSUMING, e))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(spec.max_in_flight.max(1))
            .messages()
            .await
            .map_err(|e| TransportError::new(CONSUMING, e))?;
        let subject = spec.subject;
        Ok(messages
            .filter_map(move |message| {
                let delivery = match message {
                    Ok(message) => Some(delivery(message)),
                    Err(e) => {
                        tracing::warn!(%subject, error = %e, "durable consumer hiccup");
                        None
                    }
                };
                std::future::ready(delivery)
            })
            .boxed())
    }

    async fn ensure_streams(&self) -> Result<(), TransportError> {
        self.streams
            .get_or_try_init(|| async {
                let streams = [
                    (
                        self.subjects.events_stream(),
                        self.subjects.events_wildcard(),
                    ),
                    (self.subjects.dlq_stream(), self.subjects.dlq_wildcard()),
                ];
                for (name, subject) in streams {
                    self.context
                        .get_or_create_stream(stream::Config {
                            name,
                            subjects: vec![subject],
                            storage: stream::StorageType::File,
                            duplicate_window: DEDUPLICATION_WINDOW,
                            max_age: RETENTION,
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| TransportError::new("creating the event streams", e))?;
                }
                Ok(())
            })
            .await
            .copied()
    }
}

fn delivery(message: jetstream::Message) -> Delivery {
    // A message without delivery info cannot come from a pull consumer;
    // counting it as a first attempt is the safe reading.
    let attempt = message
        .info()
        .map_or(1, |info| u32::try_from(info.delivered).unwrap_or(u32::MAX));
    let (message, acker) = message.split();
    let message = Message {
        headers: message.headers.as_ref().map(from_nats).unwrap_or_default(),
        body: message.payload,
    };
    Delivery::new(message, attempt, JetStreamAcker(acker))
}

struct JetStreamAcker(jetstream::message::Acker);

#[async_trait]
impl Acknowledge for JetStreamAcker {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        self.0
            .ack()
            .await
            .map_err(|e| TransportError::new("ack", e))
    }

    async fn retry(self: Box<Self>, delay: Duration) -> Result<(), TransportError> {
        self.0
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| TransportError::new("nak", e))
    }
}

/// Consumer names may not hold `.`, `*`, `>` or whitespace.
fn consumer_name(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => c,
            _ => '_',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn consumer_names_are_valid() {
        assert_eq!(
            super::consumer_name("products.reserve_stock.order.placed"),
            "products_reserve_stock_order_placed"
        );
    }
}
