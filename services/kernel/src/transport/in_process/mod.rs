//! The embedded transport: every service of the system in one process,
//! nothing to install. It keeps the semantics of the NATS transport that
//! plugins and the gateway rely on, so they cannot tell which one they run
//! on:
//!
//! - endpoints are queue groups: one instance answers each request, round
//!   robin; "nobody answers" and "too slow" are distinct errors;
//! - instances announce themselves when they come and go, and `discover`
//!   lists the live ones;
//! - durable messages are de-duplicated by id and consumed with acks,
//!   retries after a delay, redelivery after the ack wait, shared consumers
//!   (one delivery per name across instances, progress kept while no
//!   instance runs) and broadcast ones (see [`durable`]);
//! - plain subscriptions see what is published from then on, plain or
//!   durable (a de-duplicated message once), and never slow a publisher
//!   down (see [`taps`]).
//!
//! What it does not give: durability across restarts. Events live in
//! memory and die with the process; what a crash loses is whatever the
//! transactional outbox had already relayed but no subscriber had handled
//! yet.

mod durable;
mod taps;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use shared_schemas::discovery::{EndpointInfo, InstanceDown, ServiceInfo};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{
    Announcement, ConsumerSpec, Delivery, Deregister, Incoming, Message, Registration,
    RequestError, Respond, ServiceSpec, Transport, TransportError,
};
use durable::Durable;
use taps::Taps;

/// The queue group name instances report, as the NATS transport does.
const QUEUE_GROUP: &str = "q";

/// Requests waiting for one instance's endpoint to take them.
const ENDPOINT_BACKLOG: usize = 1024;

/// Announcements a slow listener may fall behind by before it misses some
/// (it then relies on `discover`, as over NATS).
const ANNOUNCEMENT_BACKLOG: usize = 256;

/// [`Transport`] between the services of one process. Clones share the
/// same bus.
#[derive(Clone)]
pub struct InProcessTransport {
    hub: Arc<Hub>,
}

struct Hub {
    /// Subject → the instances serving it, in registration order.
    endpoints: Mutex<HashMap<String, Vec<EndpointSender>>>,
    /// Round-robin position shared by every subject.
    next: AtomicUsize,
    /// Instance id → its description.
    instances: Mutex<HashMap<String, ServiceInfo>>,
    announcements: broadcast::Sender<Announcement>,
    durable: Durable,
    taps: Taps,
}

#[derive(Clone)]
struct EndpointSender {
    instance: String,
    requests: mpsc::Sender<Incoming>,
}

impl Default for InProcessTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessTransport {
    pub fn new() -> Self {
        Self {
            hub: Arc::new(Hub {
                endpoints: Mutex::default(),
                next: AtomicUsize::new(0),
                instances: Mutex::default(),
                announcements: broadcast::channel(ANNOUNCEMENT_BACKLOG).0,
                durable: Durable::default(),
                taps: Taps::default(),
            }),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing here panics while holding a lock; if something did, the data
    // is still a consistent map.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl Transport for InProcessTransport {
    async fn register(&self, spec: ServiceSpec) -> Result<Registration, TransportError> {
        let id = spec.id.clone();
        let mut streams = Vec::with_capacity(spec.endpoints.len());
        let mut infos = Vec::with_capacity(spec.endpoints.len());
        {
            let mut endpoints = lock(&self.hub.endpoints);
            for endpoint in spec.endpoints.iter().cloned() {
                let (requests, incoming) = mpsc::channel(ENDPOINT_BACKLOG);
                endpoints
                    .entry(endpoint.subject.clone())
                    .or_default()
                    .push(EndpointSender {
                        instance: id.clone(),
                        requests,
                    });
                streams.push(receiver_stream(incoming));
                infos.push(EndpointInfo {
                    queue_group: QUEUE_GROUP.to_owned(),
                    ..endpoint
                });
            }
        }
        let info = spec.announce(infos, "in-process");
        lock(&self.hub.instances).insert(id, info.clone());
        // Nobody listening is fine: the gateway may start later.
        let _ = self.hub.announcements.send(Announcement::Up(info.clone()));
        Ok(Registration {
            handle: Box::new(InProcessRegistration {
                hub: self.hub.clone(),
                down: InstanceDown {
                    name: info.name.clone(),
                    id: info.id.clone(),
                },
            }),
            info,
            endpoints: streams,
        })
    }

    async fn request(
        &self,
        subject: &str,
        message: Message,
        timeout: Duration,
    ) -> Result<Message, RequestError> {
        let (reply, answer) = oneshot::channel();
        let mut incoming = Incoming::new(message, InProcessResponder(reply));
        // Try each instance once, starting at the next in turn; one that is
        // stopping (its stream closed) passes the request on.
        let candidates = lock(&self.hub.endpoints)
            .get(subject)
            .cloned()
            .unwrap_or_default();
        let start = self.hub.next.fetch_add(1, Ordering::Relaxed);
        let mut delivered = false;
        for offset in 0..candidates.len() {
            let endpoint = &candidates[(start + offset) % candidates.len()];
            match endpoint.requests.send(incoming).await {
                Ok(()) => {
                    delivered = true;
                    break;
                }
                Err(mpsc::error::SendError(back)) => incoming = back,
            }
        }
        if !delivered {
            return Err(RequestError::NoResponders(subject.to_owned()));
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(reply)) => Ok(reply),
            // The instance dropped the request unanswered: as over NATS,
            // the caller hears nothing back.
            Ok(Err(_)) | Err(_) => Err(RequestError::TimedOut(subject.to_owned(), timeout)),
        }
    }

    async fn publish(&self, subject: &str, message: Message) -> Result<(), TransportError> {
        // Announcements and discovery travel through the hub itself; what
        // is published on a subject reaches its taps.
        self.hub.taps.publish(subject, &message);
        Ok(())
    }

    async fn subscribe(
        &self,
        pattern: &str,
    ) -> Result<BoxStream<'static, Message>, TransportError> {
        self.hub
            .taps
            .subscribe(pattern)
            .map_err(|e| TransportError::new("subscribing", e))
    }

    async fn publish_durable(
        &self,
        subject: &str,
        id: &str,
        message: Message,
    ) -> Result<(), TransportError> {
        // A duplicate is neither stored nor seen again.
        if self.hub.durable.publish(subject, id, message.clone()) {
            self.hub.taps.publish(subject, &message);
        }
        Ok(())
    }

    async fn consume(
        &self,
        consumer: ConsumerSpec,
    ) -> Result<BoxStream<'static, Delivery>, TransportError> {
        Ok(receiver_stream(self.hub.durable.consume(consumer)))
    }

    async fn discover(&self, _window: Duration) -> Result<Vec<ServiceInfo>, TransportError> {
        Ok(lock(&self.hub.instances).values().cloned().collect())
    }

    async fn announcements(&self) -> Result<BoxStream<'static, Announcement>, TransportError> {
        let receiver = self.hub.announcements.subscribe();
        Ok(stream::unfold(receiver, |mut receiver| async move {
            loop {
                match receiver.recv().await {
                    Ok(announcement) => return Some((announcement, receiver)),
                    // Missed ones are caught up by the next `discover`.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed())
    }

    async fn flush(&self) -> Result<(), TransportError> {
        Ok(())
    }

    fn is_connected(&self) -> bool {
        true
    }
}

fn receiver_stream<T: Send + 'static>(receiver: mpsc::Receiver<T>) -> BoxStream<'static, T> {
    stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
    .boxed()
}

struct InProcessRegistration {
    hub: Arc<Hub>,
    down: InstanceDown,
}

#[async_trait]
impl Deregister for InProcessRegistration {
    async fn deregister(self: Box<Self>) -> Result<(), TransportError> {
        // Dropping the senders ends the endpoint streams once the requests
        // already queued are taken: those are still answered.
        lock(&self.hub.endpoints).retain(|_, senders| {
            senders.retain(|s| s.instance != self.down.id);
            !senders.is_empty()
        });
        lock(&self.hub.instances).remove(&self.down.id);
        let _ = self.hub.announcements.send(Announcement::Down(self.down));
        Ok(())
    }
}

struct InProcessResponder(oneshot::Sender<Message>);

#[async_trait]
impl Respond for InProcessResponder {
    async fn respond(self: Box<Self>, reply: Message) -> Result<(), TransportError> {
        // A caller that stopped waiting is not an error.
        let _ = self.0.send(reply);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_duplicate_durable_message_reaches_taps_once() {
        let transport = InProcessTransport::new();
        let mut tap = transport.subscribe("mc.events.>").await.expect("a tap");
        for body in ["first", "again"] {
            let message = Message::new(Default::default(), body);
            transport
                .publish_durable("mc.events.t", "same-id", message)
                .await
                .expect("published");
        }
        transport
            .publish("mc.events.t", Message::new(Default::default(), "plain"))
            .await
            .expect("published");
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(2), tap.next())
                .await
                .expect("a message in time")
                .expect("an open tap")
                .body
        };
        assert_eq!(next().await, "first");
        assert_eq!(next().await, "plain", "the duplicate is not seen");
    }
}
