//! The bus seen from the kernel and the gateway: a [`Transport`] moves
//! requests, replies, events and discovery between processes.
//!
//! Plugins and the gateway only ever hold an `Arc<dyn Transport>`, so the
//! NATS transport of the distributed system and an in-process one for the
//! embedded mode are interchangeable without touching either.

mod in_process;
mod jetstream;
mod micro;
mod nats;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use http::HeaderMap;
use shared_schemas::discovery::{EndpointInfo, InstanceDown, ServiceInfo, meta};

pub use in_process::InProcessTransport;
pub use nats::NatsTransport;

/// A message as it crosses the transport: metadata in headers, body as
/// raw bytes.
#[derive(Debug, Clone, Default)]
pub struct Message {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Message {
    pub fn new(headers: HeaderMap, body: impl Into<Bytes>) -> Self {
        Self {
            headers,
            body: body.into(),
        }
    }
}

/// The instance a service registers: its identity and endpoints.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    /// Unique per instance, chosen by the kernel before it registers, so
    /// that endpoints can be specific to the instance (its system
    /// endpoint) and its logs and metrics name it from the start.
    pub id: String,
    pub version: String,
    pub description: String,
    pub endpoints: Vec<EndpointInfo>,
    /// Announced beside what the transport adds (see [`meta`]).
    pub metadata: HashMap<String, String>,
}

impl ServiceSpec {
    /// A fresh instance id.
    pub fn new_instance_id() -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    /// What this instance announces: its `endpoints` as the transport
    /// registered them, the wire version and the transport.
    pub(crate) fn announce(&self, endpoints: Vec<EndpointInfo>, transport: &str) -> ServiceInfo {
        let mut metadata = self.metadata.clone();
        metadata.extend([
            (
                meta::WIRE_VERSION.to_owned(),
                shared_schemas::WIRE_VERSION.to_owned(),
            ),
            (meta::TRANSPORT.to_owned(), transport.to_owned()),
        ]);
        ServiceInfo {
            name: self.name.clone(),
            id: self.id.clone(),
            version: self.version.clone(),
            description: self.description.clone(),
            metadata,
            endpoints,
        }
    }
}

/// An incoming request and the way back to its caller.
pub struct Incoming {
    pub message: Message,
    responder: Box<dyn Respond>,
}

impl Incoming {
    pub fn new(message: Message, responder: impl Respond) -> Self {
        Self {
            message,
            responder: Box::new(responder),
        }
    }

    /// Sends the reply. A caller that stopped waiting is not an error.
    pub async fn respond(self, reply: Message) -> Result<(), TransportError> {
        self.responder.respond(reply).await
    }
}

/// The transport-specific half of [`Incoming`].
#[async_trait]
pub trait Respond: Send + 'static {
    async fn respond(self: Box<Self>, reply: Message) -> Result<(), TransportError>;
}

/// A registered instance: one request stream per endpoint, in the order of
/// [`ServiceSpec::endpoints`].
pub struct Registration {
    pub info: ServiceInfo,
    pub endpoints: Vec<BoxStream<'static, Incoming>>,
    pub handle: Box<dyn Deregister>,
}

/// Takes a registered instance off the bus: it stops receiving requests
/// and announces that it is gone.
#[async_trait]
pub trait Deregister: Send + Sync {
    async fn deregister(self: Box<Self>) -> Result<(), TransportError>;
}

/// Instances coming and going, as announced by themselves.
#[derive(Debug, Clone, PartialEq)]
pub enum Announcement {
    Up(ServiceInfo),
    Down(InstanceDown),
}

#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Registers an instance and its endpoints (queue groups: replicas
    /// share the load) and announces it.
    async fn register(&self, spec: ServiceSpec) -> Result<Registration, TransportError>;

    /// Sends a request to one responder of `subject` and waits for its reply.
    async fn request(
        &self,
        subject: &str,
        message: Message,
        timeout: Duration,
    ) -> Result<Message, RequestError>;

    /// Publishes a message to every subscriber of `subject`, now or never.
    async fn publish(&self, subject: &str, message: Message) -> Result<(), TransportError>;

    /// Every message published from now on to a subject `pattern` matches
    /// (NATS wildcards: `*` is one token, a final `>` one or more), plain
    /// or durable, until the stream is dropped. When this returns the
    /// subscription is in place: whatever is published next reaches it.
    ///
    /// A tap for observers — the gateway's traces and live streams — never
    /// for work: nothing is stored, acknowledged or redelivered, and a
    /// subscriber that falls behind misses messages instead of slowing
    /// anyone down. Over NATS a duplicate of a durable message may pass
    /// again (the server de-duplicates its stream, not the subject).
    async fn subscribe(&self, pattern: &str)
    -> Result<BoxStream<'static, Message>, TransportError>;

    /// Stores a message durably and returns once the server has it. A
    /// second message with the same `id` within the de-duplication window
    /// is stored once.
    async fn publish_durable(
        &self,
        subject: &str,
        id: &str,
        message: Message,
    ) -> Result<(), TransportError>;

    /// Delivers durably stored messages to this consumer until the stream
    /// is dropped; each delivery is acknowledged or retried by its receiver.
    async fn consume(
        &self,
        consumer: ConsumerSpec,
    ) -> Result<BoxStream<'static, Delivery>, TransportError>;

    /// Asks every live instance to describe itself; waits `window` for answers.
    async fn discover(&self, window: Duration) -> Result<Vec<ServiceInfo>, TransportError>;

    /// Live up/down announcements of instances.
    async fn announcements(&self) -> Result<BoxStream<'static, Announcement>, TransportError>;

    /// Waits until everything sent so far has left the process.
    async fn flush(&self) -> Result<(), TransportError>;

    /// Whether the transport can reach the bus right now (a NATS
    /// connection may be reconnecting; a process is always connected to
    /// itself).
    fn is_connected(&self) -> bool;
}

/// Who receives the durable messages of a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    pub subject: String,
    pub mode: ConsumerMode,
    /// How long a delivery may go unanswered before it is delivered again.
    pub ack_wait: Duration,
    /// How many deliveries may be unanswered at once.
    pub max_in_flight: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerMode {
    /// One delivery per message across every instance that consumes under
    /// this name; progress survives restarts, so messages published while
    /// no instance runs are delivered later.
    Shared { name: String },
    /// A copy for this instance alone, from now on, forgotten when it goes.
    Broadcast,
}

/// One durable message delivered to a consumer.
pub struct Delivery {
    pub message: Message,
    /// 1 on the first delivery.
    pub attempt: u32,
    acker: Box<dyn Acknowledge>,
}

impl Delivery {
    pub fn new(message: Message, attempt: u32, acker: impl Acknowledge) -> Self {
        Self {
            message,
            attempt,
            acker: Box::new(acker),
        }
    }

    /// Done: never deliver it again.
    pub async fn ack(self) -> Result<(), TransportError> {
        self.acker.ack().await
    }

    /// Not done: deliver it again after `delay`.
    pub async fn retry(self, delay: Duration) -> Result<(), TransportError> {
        self.acker.retry(delay).await
    }
}

/// The transport-specific half of [`Delivery`].
#[async_trait]
pub trait Acknowledge: Send + 'static {
    async fn ack(self: Box<Self>) -> Result<(), TransportError>;
    async fn retry(self: Box<Self>, delay: Duration) -> Result<(), TransportError>;
}

/// The transport failed to do what was asked.
#[derive(Debug, thiserror::Error)]
#[error("{operation} failed: {source}")]
pub struct TransportError {
    pub operation: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl TransportError {
    pub fn new(
        operation: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            operation,
            source: source.into(),
        }
    }
}

/// Why a request got no reply. "Nobody listens" and "too slow" are
/// distinct so callers can answer 503 and 504.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("no responder for {0}")]
    NoResponders(String),
    #[error("no reply from {0} within {1:?}")]
    TimedOut(String, Duration),
    #[error(transparent)]
    Transport(#[from] TransportError),
}
