//! Durable messages inside one process, with the consumer semantics of
//! the JetStream transport:
//!
//! - a message published twice with the same id inside the
//!   de-duplication window is stored once;
//! - a *shared* consumer (by name) delivers each message once across every
//!   stream attached to it, starting from the oldest retained message, and
//!   keeps its position while no stream is attached;
//! - a *broadcast* consumer gets what is published after it starts, and
//!   ends with its stream;
//! - at most `max_in_flight` deliveries are unanswered at once; a retry
//!   comes back after its delay, an unanswered delivery after the ack wait,
//!   each with its attempt count.
//!
//! Each consumer has a pump task that hands out what is ready and sleeps
//! until something is published, settled or due.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::lock;
use crate::transport::{
    Acknowledge, ConsumerMode, ConsumerSpec, Delivery, Message, TransportError,
};

/// Messages with the same id inside this window are stored once.
const DEDUPLICATION_WINDOW: Duration = Duration::from_secs(120);

/// Messages kept per subject that no consumer reads yet, for a consumer
/// that starts later. Older ones are dropped.
const RETAINED_UNREAD: usize = 10_000;

/// Messages kept per subject at most, however far behind a consumer is.
const RETAINED_MAX: usize = 100_000;

/// How often an idle pump checks that its transport still exists.
const IDLE_CHECK: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(super) struct Durable {
    logs: Arc<Mutex<Logs>>,
}

#[derive(Default)]
struct Logs {
    subjects: HashMap<String, SubjectLog>,
    /// Ids published inside the de-duplication window.
    seen: RecentIds,
    /// Shared consumers by name.
    shared: HashMap<String, Arc<Consumer>>,
}

#[derive(Default)]
struct SubjectLog {
    /// Sequence number of the next message published.
    next_seq: u64,
    messages: VecDeque<Message>,
    readers: Vec<Weak<Consumer>>,
}

impl SubjectLog {
    fn first_seq(&self) -> u64 {
        self.next_seq - self.messages.len() as u64
    }

    fn get(&self, seq: u64) -> Option<&Message> {
        let index = seq.checked_sub(self.first_seq())?;
        self.messages.get(usize::try_from(index).ok()?)
    }

    /// Drops what every reader has taken; without readers, keeps the
    /// newest [`RETAINED_UNREAD`].
    fn prune(&mut self, subject: &str) {
        self.readers.retain(|r| r.strong_count() > 0);
        let cursors: Vec<u64> = self
            .readers
            .iter()
            .filter_map(Weak::upgrade)
            .map(|c| lock(&c.state).cursor)
            .collect();
        let keep_from = match cursors.iter().min() {
            Some(&slowest) => slowest,
            None => self.next_seq.saturating_sub(RETAINED_UNREAD as u64),
        };
        let keep_from = keep_from.max(self.next_seq.saturating_sub(RETAINED_MAX as u64));
        let mut dropped_unread = false;
        while self.first_seq() < keep_from && self.messages.pop_front().is_some() {
            dropped_unread |= cursors.iter().any(|&c| c < self.first_seq());
        }
        if dropped_unread {
            tracing::warn!(
                %subject,
                retained = RETAINED_MAX,
                "a consumer fell too far behind; its oldest messages were dropped"
            );
        }
    }
}

/// The ids seen inside the de-duplication window, with the order they
/// came in, so that forgetting the expired ones costs only those.
#[derive(Default)]
struct RecentIds {
    ids: HashSet<Arc<str>>,
    by_age: VecDeque<(Instant, Arc<str>)>,
}

impl RecentIds {
    /// Records `id` at `now`; false if it was seen inside the window.
    fn insert(&mut self, id: &str, now: Instant) -> bool {
        while let Some((at, _)) = self.by_age.front() {
            if now.duration_since(*at) < DEDUPLICATION_WINDOW {
                break;
            }
            if let Some((_, expired)) = self.by_age.pop_front() {
                self.ids.remove(&expired);
            }
        }
        if self.ids.contains(id) {
            return false;
        }
        let id: Arc<str> = Arc::from(id);
        self.ids.insert(id.clone());
        self.by_age.push_back((now, id));
        true
    }
}

impl Durable {
    /// Stores `message` unless its id was seen inside the de-duplication
    /// window; true when it was stored.
    pub fn publish(&self, subject: &str, id: &str, message: Message) -> bool {
        let readers = {
            let mut logs = lock(&self.logs);
            if !logs.seen.insert(id, Instant::now()) {
                return false;
            }
            let log = logs.subjects.entry(subject.to_owned()).or_default();
            log.messages.push_back(message);
            log.next_seq += 1;
            log.prune(subject);
            log.readers.clone()
        };
        for reader in readers.iter().filter_map(Weak::upgrade) {
            reader.wake.notify_one();
        }
        true
    }

    /// A stream of deliveries for `spec`, attached to the shared consumer
    /// of its name or to a new broadcast consumer.
    pub fn consume(&self, spec: ConsumerSpec) -> mpsc::Receiver<Delivery> {
        let (sender, receiver) = mpsc::channel(spec.max_in_flight.max(1));
        let mut logs = lock(&self.logs);
        let log = logs.subjects.entry(spec.subject.clone()).or_default();
        let (first, next) = (log.first_seq(), log.next_seq);
        let (consumer, is_new) = match &spec.mode {
            ConsumerMode::Shared { name } => match logs.shared.get(name) {
                Some(existing) => (existing.clone(), false),
                None => {
                    let consumer = Consumer::new(&spec, first, false);
                    logs.shared.insert(name.clone(), consumer.clone());
                    (consumer, true)
                }
            },
            ConsumerMode::Broadcast => (Consumer::new(&spec, next, true), true),
        };
        lock(&consumer.state).receivers.push(sender);
        if is_new {
            if let Some(log) = logs.subjects.get_mut(&spec.subject) {
                log.readers.push(Arc::downgrade(&consumer));
            }
            tokio::spawn(pump(consumer.clone(), Arc::downgrade(&self.logs)));
        }
        consumer.wake.notify_one();
        receiver
    }
}

struct Consumer {
    subject: String,
    ack_wait: Duration,
    max_in_flight: usize,
    /// Ends with its last stream instead of waiting for another.
    broadcast: bool,
    state: Mutex<ConsumerState>,
    wake: Notify,
}

#[derive(Default)]
struct ConsumerState {
    /// The next sequence number to take from the subject's log.
    cursor: u64,
    /// Delivered and unanswered, by sequence number: due back at the ack
    /// wait.
    in_flight: HashMap<u64, Pending>,
    /// Waiting for their retry delay, by sequence number.
    retries: BTreeMap<u64, Pending>,
    receivers: Vec<mpsc::Sender<Delivery>>,
    turn: usize,
}

struct Pending {
    message: Message,
    attempt: u32,
    due: Instant,
}

impl Consumer {
    fn new(spec: &ConsumerSpec, cursor: u64, broadcast: bool) -> Arc<Self> {
        Arc::new(Self {
            subject: spec.subject.clone(),
            ack_wait: spec.ack_wait,
            max_in_flight: spec.max_in_flight.max(1),
            broadcast,
            state: Mutex::new(ConsumerState {
                cursor,
                ..ConsumerState::default()
            }),
            wake: Notify::new(),
        })
    }

    /// Moves what is ready into flight: expired deliveries and due retries
    /// first, then new messages. Returns them with the next instant
    /// something falls due.
    fn take_ready(&self, logs: &Logs) -> (Vec<(u64, Message, u32)>, Option<Instant>) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        state.receivers.retain(|r| !r.is_closed());
        let expired: Vec<u64> = state
            .in_flight
            .iter()
            .filter(|(_, p)| p.due <= now)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            if let Some(p) = state.in_flight.remove(&seq) {
                let again = Pending {
                    attempt: p.attempt.saturating_add(1),
                    due: now,
                    message: p.message,
                };
                state.retries.insert(seq, again);
            }
        }
        let mut ready = Vec::new();
        if !state.receivers.is_empty() {
            let log = logs.subjects.get(&self.subject);
            while state.in_flight.len() < self.max_in_flight {
                let due_retry = state
                    .retries
                    .iter()
                    .filter(|(_, p)| p.due <= now)
                    .map(|(seq, _)| *seq)
                    .next();
                let (seq, message, attempt) = if let Some(seq) = due_retry {
                    let Some(p) = state.retries.remove(&seq) else {
                        break;
                    };
                    (seq, p.message, p.attempt)
                } else {
                    let Some(log) = log else { break };
                    state.cursor = state.cursor.max(log.first_seq());
                    let Some(message) = log.get(state.cursor) else {
                        break;
                    };
                    let seq = state.cursor;
                    state.cursor += 1;
                    (seq, message.clone(), 1)
                };
                state.in_flight.insert(
                    seq,
                    Pending {
                        message: message.clone(),
                        attempt,
                        due: now + self.ack_wait,
                    },
                );
                ready.push((seq, message, attempt));
            }
        }
        let next_due = state
            .in_flight
            .values()
            .chain(state.retries.values())
            .map(|p| p.due)
            .min();
        (ready, next_due)
    }

    /// Hands a delivery to the next stream in turn; gives it back if no
    /// stream takes it.
    fn dispatch(self: &Arc<Self>, seq: u64, message: Message, attempt: u32) {
        let mut delivery = Delivery::new(
            message,
            attempt,
            InProcessAcker {
                consumer: Arc::downgrade(self),
                seq,
            },
        );
        let mut state = lock(&self.state);
        let streams = state.receivers.len();
        for _ in 0..streams {
            let turn = state.turn % state.receivers.len();
            state.turn = state.turn.wrapping_add(1);
            match state.receivers[turn].try_send(delivery) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(back))
                | Err(mpsc::error::TrySendError::Closed(back)) => delivery = back,
            }
        }
        // Nobody took it: offer it again as soon as someone can.
        if let Some(p) = state.in_flight.remove(&seq) {
            state.retries.insert(
                seq,
                Pending {
                    due: Instant::now(),
                    ..p
                },
            );
        }
    }

    fn settle(&self, seq: u64, retry_after: Option<Duration>) {
        let mut state = lock(&self.state);
        // Like a JetStream ack, it settles the message, whichever delivery
        // of it is answered.
        let pending = state
            .in_flight
            .remove(&seq)
            .or_else(|| state.retries.remove(&seq));
        if let (Some(p), Some(delay)) = (pending, retry_after) {
            state.retries.insert(
                seq,
                Pending {
                    attempt: p.attempt.saturating_add(1),
                    due: Instant::now() + delay,
                    message: p.message,
                },
            );
        }
        drop(state);
        self.wake.notify_one();
    }
}

/// Hands out deliveries until the consumer ends (a broadcast one without
/// its stream) or the transport is gone.
async fn pump(consumer: Arc<Consumer>, logs: Weak<Mutex<Logs>>) {
    loop {
        let Some(shared) = logs.upgrade() else { return };
        let (ready, next_due) = consumer.take_ready(&lock(&shared));
        drop(shared);
        for (seq, message, attempt) in ready {
            consumer.dispatch(seq, message, attempt);
        }
        if consumer.broadcast
            && lock(&consumer.state)
                .receivers
                .iter()
                .all(|r| r.is_closed())
        {
            return;
        }
        let wake_at = next_due
            .unwrap_or_else(|| Instant::now() + IDLE_CHECK)
            .min(Instant::now() + IDLE_CHECK);
        tokio::select! {
            _ = consumer.wake.notified() => {},
            _ = tokio::time::sleep_until(wake_at) => {},
        }
    }
}

struct InProcessAcker {
    consumer: Weak<Consumer>,
    seq: u64,
}

#[async_trait]
impl Acknowledge for InProcessAcker {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        if let Some(consumer) = self.consumer.upgrade() {
            consumer.settle(self.seq, None);
        }
        Ok(())
    }

    async fn retry(self: Box<Self>, delay: Duration) -> Result<(), TransportError> {
        if let Some(consumer) = self.consumer.upgrade() {
            consumer.settle(self.seq, Some(delay));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_id_is_a_duplicate_inside_the_window_only() {
        let mut seen = RecentIds::default();
        let start = Instant::now();
        assert!(seen.insert("a", start));
        assert!(!seen.insert("a", start + DEDUPLICATION_WINDOW / 2));
        assert!(seen.insert("b", start + DEDUPLICATION_WINDOW / 2));
        // "a" has expired, "b" has not.
        let later = start + DEDUPLICATION_WINDOW;
        assert!(seen.insert("a", later));
        assert!(!seen.insert("b", later));
        assert_eq!(seen.ids.len(), 2);
        assert_eq!(seen.by_age.len(), 2);
    }

    fn spec(mode: ConsumerMode, ack_wait: Duration) -> ConsumerSpec {
        ConsumerSpec {
            subject: "mc.events.t".to_owned(),
            mode,
            ack_wait,
            max_in_flight: 4,
        }
    }

    fn shared(name: &str) -> ConsumerMode {
        ConsumerMode::Shared {
            name: name.to_owned(),
        }
    }

    fn message(n: u8) -> Message {
        Message::new(Default::default(), vec![n])
    }

    async fn next(receiver: &mut mpsc::Receiver<Delivery>) -> Delivery {
        tokio::time::timeout(Duration::from_secs(2), receiver.recv())
            .await
            .expect("a delivery in time")
            .expect("an open stream")
    }

    #[tokio::test]
    async fn a_repeated_id_is_stored_once() {
        let durable = Durable::default();
        let mut deliveries = durable.consume(spec(shared("c"), Duration::from_secs(30)));
        assert!(durable.publish("mc.events.t", "same", message(1)));
        assert!(!durable.publish("mc.events.t", "same", message(2)));
        assert!(durable.publish("mc.events.t", "other", message(3)));
        assert_eq!(next(&mut deliveries).await.message.body.as_ref(), [1]);
        assert_eq!(next(&mut deliveries).await.message.body.as_ref(), [3]);
    }

    #[tokio::test]
    async fn an_unanswered_delivery_comes_back_after_the_ack_wait_and_a_retry_after_its_delay() {
        let durable = Durable::default();
        let mut deliveries = durable.consume(spec(shared("c"), Duration::from_millis(50)));
        durable.publish("mc.events.t", "a", message(1));
        let first = next(&mut deliveries).await;
        assert_eq!(first.attempt, 1);
        drop(first);
        let again = next(&mut deliveries).await;
        assert_eq!(again.attempt, 2, "redelivered after the ack wait");
        let asked = Instant::now();
        again.retry(Duration::from_millis(100)).await.unwrap();
        let third = next(&mut deliveries).await;
        assert_eq!(third.attempt, 3);
        assert!(asked.elapsed() >= Duration::from_millis(95));
        third.ack().await.unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(200), deliveries.recv()).await;
        assert!(quiet.is_err(), "an acknowledged message stays settled");
    }

    #[tokio::test]
    async fn a_late_shared_consumer_reads_what_is_retained_and_a_broadcast_only_what_is_new() {
        let durable = Durable::default();
        for n in 0..3 {
            durable.publish("mc.events.t", &n.to_string(), message(n));
        }
        let mut late = durable.consume(spec(shared("late"), Duration::from_secs(30)));
        let mut broadcast = durable.consume(spec(ConsumerMode::Broadcast, Duration::from_secs(30)));
        durable.publish("mc.events.t", "new", message(9));
        for n in [0, 1, 2, 9] {
            let delivery = next(&mut late).await;
            assert_eq!(delivery.message.body.as_ref(), [n]);
            delivery.ack().await.unwrap();
        }
        assert_eq!(next(&mut broadcast).await.message.body.as_ref(), [9]);
    }

    #[test]
    fn a_subject_nobody_reads_keeps_only_its_newest_messages() {
        let mut log = SubjectLog::default();
        for n in 0..(RETAINED_UNREAD + 10) {
            log.messages.push_back(message((n % 256) as u8));
            log.next_seq += 1;
            log.prune("mc.events.t");
        }
        assert_eq!(log.messages.len(), RETAINED_UNREAD);
        assert_eq!(log.first_seq(), 10);
    }
}
