//! The distributed transport: NATS request-reply with queue groups for
//! endpoints, the NATS micro protocol for discovery (standard tooling such
//! as `nats micro ls` sees every service, see [`micro`]), announcement
//! subjects so the gateway learns about instances at once instead of at
//! its next sweep, and JetStream for durable events (see [`jetstream`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Client, RequestErrorKind};
use async_trait::async_trait;
use futures_util::{StreamExt, stream::BoxStream};
use http::{HeaderMap, HeaderName, HeaderValue};
use shared_schemas::Subjects;
use shared_schemas::discovery::{EndpointInfo, InstanceDown, ServiceInfo};
use tokio::sync::watch;

use super::jetstream::JetStreamEvents;
use super::micro;
use super::{
    Announcement, ConsumerSpec, Delivery, Deregister, Incoming, Message, Registration,
    RequestError, Respond, ServiceSpec, Transport, TransportError,
};

/// [`Transport`] over one NATS connection.
#[derive(Clone)]
pub struct NatsTransport {
    client: Client,
    subjects: Subjects,
    events: Arc<JetStreamEvents>,
}

impl NatsTransport {
    /// Connects to `url` (comma-separated for a cluster). The connection
    /// retries in the background when the server goes away.
    pub async fn connect(
        url: &str,
        name: &str,
        subjects: Subjects,
    ) -> Result<Self, TransportError> {
        let client = async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .connect(url)
            .await
            .map_err(|e| TransportError::new("connecting to NATS", e))?;
        Ok(Self::new(client, subjects))
    }

    pub fn new(client: Client, subjects: Subjects) -> Self {
        Self {
            events: Arc::new(JetStreamEvents::new(client.clone(), subjects.clone())),
            client,
            subjects,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Returns once the server has processed everything this connection
    /// sent before (`flush` only empties the socket): a message to
    /// ourselves comes back only after what preceded it.
    async fn round_trip(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let probe = self.client.new_inbox();
        let mut echo = self.client.subscribe(probe.clone()).await?;
        self.client.publish(probe, Default::default()).await?;
        tokio::time::timeout(ROUND_TRIP_TIMEOUT, echo.next())
            .await
            .map_err(|_| "the server did not answer a round trip in time")?;
        Ok(())
    }
}

/// How long a server round trip may take before registration fails.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(10);

#[async_trait]
impl Transport for NatsTransport {
    async fn register(&self, spec: ServiceSpec) -> Result<Registration, TransportError> {
        let (drain, draining) = watch::channel(false);
        let mut endpoints = Vec::with_capacity(spec.endpoints.len());
        let mut infos = Vec::with_capacity(spec.endpoints.len());
        let mut stats = Vec::with_capacity(spec.endpoints.len());
        for endpoint in spec.endpoints.iter().cloned() {
            let subscriber = self
                .client
                .queue_subscribe(endpoint.subject.clone(), micro::QUEUE_GROUP.to_owned())
                .await
                .map_err(|e| TransportError::new("registering an endpoint", e))?;
            let endpoint_stats = Arc::new(micro::EndpointStats::default());
            let (client, counters) = (self.client.clone(), endpoint_stats.clone());
            endpoints.push(
                micro::drainable(subscriber, draining.clone())
                    .map(move |message| incoming(message, &client, &counters))
                    .boxed(),
            );
            stats.push(endpoint_stats);
            infos.push(EndpointInfo {
                queue_group: micro::QUEUE_GROUP.to_owned(),
                ..endpoint
            });
        }
        let info = spec.announce(infos, "nats");
        let instance = Arc::new(micro::Instance {
            info: info.clone(),
            stats,
            started: crate::now_rfc3339(),
        });
        micro::serve_verbs(&self.client, instance, draining)
            .await
            .map_err(|e| TransportError::new("registering the service", e))?;
        // Announce only what the server already routes: a caller that
        // hears "up" must find the endpoints.
        self.round_trip()
            .await
            .map_err(|e| TransportError::new("registering the service", e))?;

        let up = serde_json::to_vec(&info).map_err(|e| TransportError::new("announcing", e))?;
        self.client
            .publish(self.subjects.announce_up(), up.into())
            .await
            .map_err(|e| TransportError::new("announcing", e))?;

        let handle = NatsRegistration {
            drain,
            client: self.client.clone(),
            down_subject: self.subjects.announce_down(),
            down: InstanceDown {
                name: info.name.clone(),
                id: info.id.clone(),
            },
        };
        Ok(Registration {
            info,
            endpoints,
            handle: Box::new(handle),
        })
    }

    async fn request(
        &self,
        subject: &str,
        message: Message,
        timeout: Duration,
    ) -> Result<Message, RequestError> {
        let request = async_nats::Request::new()
            .headers(to_nats(&message.headers))
            .payload(message.body)
            .timeout(Some(timeout));
        match self.client.send_request(subject.to_owned(), request).await {
            Ok(reply) => Ok(Message {
                headers: reply.headers.as_ref().map(from_nats).unwrap_or_default(),
                body: reply.payload,
            }),
            Err(e) => Err(match e.kind() {
                RequestErrorKind::NoResponders => RequestError::NoResponders(subject.to_owned()),
                RequestErrorKind::TimedOut => RequestError::TimedOut(subject.to_owned(), timeout),
                _ => TransportError::new("request", e).into(),
            }),
        }
    }

    async fn publish(&self, subject: &str, message: Message) -> Result<(), TransportError> {
        self.client
            .publish_with_headers(subject.to_owned(), to_nats(&message.headers), message.body)
            .await
            .map_err(|e| TransportError::new("publish", e))
    }

    async fn subscribe(
        &self,
        pattern: &str,
    ) -> Result<BoxStream<'static, Message>, TransportError> {
        const SUBSCRIBING: &str = "subscribing";
        // A core subscription: JetStream publishes are plain publishes to
        // the server first, so durable messages reach it too. The client
        // buffers what it has not read yet and drops what overflows (a
        // slow consumer), so a lagging reader never holds up the socket.
        let subscriber = self
            .client
            .subscribe(pattern.to_owned())
            .await
            .map_err(|e| TransportError::new(SUBSCRIBING, e))?;
        self.round_trip()
            .await
            .map_err(|e| TransportError::new(SUBSCRIBING, e))?;
        Ok(subscriber
            .map(|message| Message {
                headers: message.headers.as_ref().map(from_nats).unwrap_or_default(),
                body: message.payload,
            })
            .boxed())
    }

    async fn publish_durable(
        &self,
        subject: &str,
        id: &str,
        message: Message,
    ) -> Result<(), TransportError> {
        self.events.publish(subject, id, message).await
    }

    async fn consume(
        &self,
        consumer: ConsumerSpec,
    ) -> Result<BoxStream<'static, Delivery>, TransportError> {
        self.events.consume(consumer).await
    }

    async fn discover(&self, window: Duration) -> Result<Vec<ServiceInfo>, TransportError> {
        let inbox = self.client.new_inbox();
        let mut replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| TransportError::new("discovery", e))?;
        self.client
            .publish_with_reply("$SRV.INFO", inbox, Default::default())
            .await
            .map_err(|e| TransportError::new("discovery", e))?;
        let mut found = Vec::new();
        let deadline = tokio::time::sleep(window);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                reply = replies.next() => match reply {
                    Some(reply) => match serde_json::from_slice::<ServiceInfo>(&reply.payload) {
                        Ok(info) => found.push(info),
                        Err(e) => tracing::debug!(error = %e, "ignoring a $SRV.INFO answer that is not a service description"),
                    },
                    None => break,
                },
            }
        }
        Ok(found)
    }

    async fn flush(&self) -> Result<(), TransportError> {
        self.client
            .flush()
            .await
            .map_err(|e| TransportError::new("flush", e))
    }

    fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    async fn announcements(&self) -> Result<BoxStream<'static, Announcement>, TransportError> {
        let wildcard = format!("{}.discovery.*", self.subjects.prefix());
        let up = self.subjects.announce_up();
        let subscriber = self
            .client
            .subscribe(wildcard)
            .await
            .map_err(|e| TransportError::new("subscribing to announcements", e))?;
        Ok(subscriber
            .filter_map(move |message| {
                let parsed = if message.subject.as_str() == up {
                    serde_json::from_slice(&message.payload).map(Announcement::Up)
                } else {
                    serde_json::from_slice(&message.payload).map(Announcement::Down)
                };
                if let Err(e) = &parsed {
                    tracing::warn!(subject = %message.subject, error = %e, "malformed announcement");
                }
                std::future::ready(parsed.ok())
            })
            .boxed())
    }
}

struct NatsRegistration {
    drain: watch::Sender<bool>,
    client: Client,
    down_subject: String,
    down: InstanceDown,
}

#[async_trait]
impl Deregister for NatsRegistration {
    async fn deregister(self: Box<Self>) -> Result<(), TransportError> {
        let down =
            serde_json::to_vec(&self.down).map_err(|e| TransportError::new("deregistering", e))?;
        // Endpoint streams end once the server confirms; requests it sent
        // before are still delivered and answered.
        self.drain.send_replace(true);
        self.client
            .publish(self.down_subject, down.into())
            .await
            .map_err(|e| TransportError::new("deregistering", e))?;
        self.client
            .flush()
            .await
            .map_err(|e| TransportError::new("deregistering", e))
    }
}

/// Replies to one request and counts it in the endpoint's stats.
struct NatsResponder {
    client: Client,
    reply: Option<async_nats::Subject>,
    stats: Arc<micro::EndpointStats>,
    started: Instant,
}

#[async_trait]
impl Respond for NatsResponder {
    async fn respond(self: Box<Self>, reply: Message) -> Result<(), TransportError> {
        let failed = reply
            .headers
            .get(shared_schemas::http::STATUS)
            .is_some_and(|s| s.as_bytes().first() == Some(&b'5'));
        self.stats.record(self.started, failed);
        let Some(subject) = self.reply else {
            return Ok(());
        };
        self.client
            .publish_with_headers(subject, to_nats(&reply.headers), reply.body)
            .await
            .map_err(|e| TransportError::new("reply", e))
    }
}

fn incoming(
    message: async_nats::Message,
    client: &Client,
    stats: &Arc<micro::EndpointStats>,
) -> Incoming {
    let request = Message {
        headers: message.headers.as_ref().map(from_nats).unwrap_or_default(),
        body: message.payload,
    };
    let responder = NatsResponder {
        client: client.clone(),
        reply: message.reply,
        stats: stats.clone(),
        started: Instant::now(),
    };
    Incoming::new(request, responder)
}

/// In one pass: `http` yields the values of a name one after another, so
/// the first value of a name (nearly every header has one) costs a single
/// insertion and only a repeated name an append.
pub(super) fn to_nats(headers: &HeaderMap) -> async_nats::HeaderMap {
    let mut out = async_nats::HeaderMap::new();
    let mut previous: Option<&HeaderName> = None;
    for (name, value) in headers {
        let Ok(value) = value.to_str() else {
            continue;
        };
        if previous == Some(name) {
            out.append(name.as_str(), value);
        } else {
            out.insert(name.as_str(), value);
            previous = Some(name);
        }
    }
    out
}

pub(super) fn from_nats(headers: &async_nats::HeaderMap) -> HeaderMap {
    let append = |out: &mut HeaderMap, name, value: &async_nats::HeaderValue| {
        if let Ok(value) = HeaderValue::from_str(value.as_str()) {
            out.append(name, value);
        }
    };
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, values) in headers.iter() {
        let (Ok(name), Some((last, others))) = (
            HeaderName::from_bytes(AsRef::<[u8]>::as_ref(name)),
            values.split_last(),
        ) else {
            continue;
        };
        // Cloned for a repeated name only.
        for value in others {
            append(&mut out, name.clone(), value);
        }
        append(&mut out, name, last);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn names_and_every_value_cross_both_ways() {
        let sent = headers(&[
            ("mc-route", "GET /products/{id}"),
            ("x-request-id", "r-1"),
            ("content-type", "text/plain"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("x-custom", "yes"),
        ]);
        let wire = to_nats(&sent);
        assert_eq!(
            wire.get("mc-route").map(|v| v.as_str()),
            Some("GET /products/{id}")
        );
        let cookies: Vec<_> = wire.get_all("set-cookie").map(|v| v.as_str()).collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(from_nats(&wire), sent);
    }

    #[test]
    fn names_from_the_wire_are_kept_whatever_their_case() {
        let mut wire = async_nats::HeaderMap::new();
        wire.insert("mc-status", "404");
        wire.insert("Mc-Other", "kept");
        let read = from_nats(&wire);
        assert_eq!(read[shared_schemas::http::STATUS], "404");
        assert_eq!(read["mc-other"], "kept");
    }
}
