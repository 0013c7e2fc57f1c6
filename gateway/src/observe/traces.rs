//! `/system/traces`: the latest events and dead letters, as causal trees.
//!
//! The gateway keeps the last `MC_TRACE_BUFFER` records that passed on the
//! event and dead-letter subjects (default 500; the oldest go first), each
//! once, however often the bus repeats it. A record is what the envelope
//! says about causality — id, event, emitter, parent id, correlation id,
//! timestamp — and for a dead letter who gave up on the event, why and
//! after how many attempts; payloads are not kept.
//!
//! The tree view links each event to its parent (the event whose id is its
//! `parent_id`). An event whose parent is not in the buffer — an HTTP
//! request id, or an event already forgotten — is a root, and roots are
//! grouped by correlation id into traces, the newest first. A dead letter
//! hangs on the node of the event it is about.
//!
//! Records are kept in the order they arrive. Events and dead letters come
//! through two subscriptions, so between an event and a dead letter that
//! arrive at the same moment the order is not fixed; a real dead letter
//! follows its event by the subscriber's retries.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::response::Response;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use microcore::transport::Message;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::json;
use shared_schemas::events::{DeadLetter, EventEnvelope};

use super::{Observer, Params};
use crate::envelope;

/// A message from one of the two taps.
pub enum Tapped {
    Event(Message),
    DeadLetter(Message),
}

/// Feeds `buffer` from both taps until they end.
pub async fn collect(
    buffer: Arc<TraceBuffer>,
    events: BoxStream<'static, Tapped>,
    dead_letters: BoxStream<'static, Tapped>,
) {
    let mut tapped = stream::select(events, dead_letters);
    while let Some(message) = tapped.next().await {
        let record = match &message {
            Tapped::Event(message) => {
                serde_json::from_slice::<EventEnvelope<IgnoredAny>>(&message.body)
                    .map(|envelope| TraceRecord::event(&envelope))
            }
            Tapped::DeadLetter(message) => {
                serde_json::from_slice::<DeadLetter>(&message.body).map(TraceRecord::dead_letter)
            }
        };
        match record {
            Ok(record) => buffer.push(record),
            // Anyone may publish on these subjects; a stranger's message
            // is not the gateway's problem to report loudly.
            Err(e) => tracing::debug!(error = %e, "ignoring a message that is not an envelope"),
        }
    }
}

/// What the envelope says about an event's place in its chain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TracedEvent {
    pub id: String,
    pub event: String,
    pub emitter: String,
    pub parent_id: Option<String>,
    pub correlation_id: Option<String>,
    pub timestamp: String,
}

impl TracedEvent {
    fn of<P>(envelope: &EventEnvelope<P>) -> Self {
        Self {
            id: envelope.id.clone(),
            event: envelope.event.clone(),
            emitter: envelope.emitter.clone(),
            parent_id: envelope.parent_id.clone(),
            correlation_id: envelope.correlation_id.clone(),
            timestamp: envelope.timestamp.clone(),
        }
    }

    /// The trace it belongs to: its correlation id, or itself when it
    /// started a chain of its own (as its children's correlation id says).
    fn trace(&self) -> &str {
        self.correlation_id.as_deref().unwrap_or(&self.id)
    }
}

/// A subscriber gave up on an event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    pub subscriber: String,
    pub error: String,
    pub attempts: u32,
    pub failed_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Event,
    DeadLetter,
}

/// One entry of the buffer: an event, or the dead letter of one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceRecord {
    pub kind: RecordKind,
    #[serde(flatten)]
    pub event: TracedEvent,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
}

impl TraceRecord {
    fn event<P>(envelope: &EventEnvelope<P>) -> Self {
        Self {
            kind: RecordKind::Event,
            event: TracedEvent::of(envelope),
            failure: None,
        }
    }

    fn dead_letter(letter: DeadLetter) -> Self {
        Self {
            kind: RecordKind::DeadLetter,
            event: TracedEvent::of(&letter.original),
            failure: Some(Failure {
                subscriber: letter.subscriber,
                error: letter.error,
                attempts: letter.attempts,
                failed_at: letter.failed_at,
            }),
        }
    }

    /// What makes two records the same: the bus may repeat a message.
    fn key(&self) -> RecordKey {
        RecordKey {
            id: self.event.id.clone(),
            subscriber: self.failure.as_ref().map(|f| f.subscriber.clone()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RecordKey {
    id: String,
    /// Set for a dead letter: one per subscriber that gave up.
    subscriber: Option<String>,
}

/// The latest records, oldest first, at most `capacity`.
pub struct TraceBuffer {
    capacity: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    records: VecDeque<Arc<TraceRecord>>,
    keys: HashSet<RecordKey>,
}

impl TraceBuffer {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            held: Mutex::default(),
        }
    }

    /// Keeps `record` unless it is already held, forgetting the oldest
    /// beyond the capacity.
    pub fn push(&self, record: TraceRecord) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if !held.keys.insert(record.key()) {
            return;
        }
        held.records.push_back(Arc::new(record));
        while held.records.len() > self.capacity {
            if let Some(oldest) = held.records.pop_front() {
                held.keys.remove(&oldest.key());
            }
        }
    }

    /// The records of the trace `correlation_id` (all without one),
    /// oldest first.
    fn records(&self, correlation_id: Option<&str>) -> (Vec<Arc<TraceRecord>>, usize) {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let records = held
            .records
            .iter()
            .filter(|r| correlation_id.is_none_or(|c| r.event.trace() == c))
            .cloned()
            .collect();
        (records, held.records.len())
    }
}

/// The query of both views.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceQuery {
    /// Only the trace of this correlation id (an HTTP request id, or the
    /// id of the event that started the chain).
    correlation_id: Option<String>,
}

/// `GET /system/traces`: the buffer as causal trees, newest first.
pub async fn tree(State(observer): State<Observer>, Params(query): Params<TraceQuery>) -> Response {
    let (records, buffered) = observer.traces.records(query.correlation_id.as_deref());
    envelope::ok(json!({
        "capacity": observer.traces.capacity,
        "buffered": buffered,
        "traces": traces(&records),
    }))
}

/// `GET /system/traces/flat`: the buffer as a list, newest first.
pub async fn flat(State(observer): State<Observer>, Params(query): Params<TraceQuery>) -> Response {
    let (records, buffered) = observer.traces.records(query.correlation_id.as_deref());
    let newest_first: Vec<&TraceRecord> = records.iter().rev().map(Arc::as_ref).collect();
    envelope::ok(json!({
        "capacity": observer.traces.capacity,
        "buffered": buffered,
        "events": newest_first,
    }))
}

/// One causal chain.
#[derive(Debug, Serialize)]
pub struct Trace<'a> {
    pub correlation_id: &'a str,
    /// Events in the trace (dead letters hang on theirs).
    pub events: usize,
    pub roots: Vec<Node<'a>>,
}

/// An event and what it caused.
#[derive(Debug, Serialize)]
pub struct Node<'a> {
    #[serde(flatten)]
    pub event: &'a TracedEvent,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dead_letters: Vec<&'a Failure>,
    pub children: Vec<Node<'a>>,
}

/// The trees of `records` (oldest first), grouped into traces, the trace
/// with the latest record first; roots and children in arrival order.
fn traces(records: &[Arc<TraceRecord>]) -> Vec<Trace<'_>> {
    let forest = Forest::grow(records);
    let mut grouped: Vec<(Trace<'_>, usize)> = Vec::new();
    for &root in &forest.roots {
        let (node, events, latest) = forest.node(root);
        let correlation_id = forest.slots[root].event.trace();
        match grouped
            .iter_mut()
            .find(|(trace, _)| trace.correlation_id == correlation_id)
        {
            Some((trace, trace_latest)) => {
                trace.events += events;
                trace.roots.push(node);
                *trace_latest = (*trace_latest).max(latest);
            }
            None => grouped.push((
                Trace {
                    correlation_id,
                    events,
                    roots: vec![node],
                },
                latest,
            )),
        }
    }
    grouped.sort_by_key(|(_, latest)| std::cmp::Reverse(*latest));
    grouped.into_iter().map(|(trace, _)| trace).collect()
}

/// The events of the buffer linked to their children.
struct Forest<'a> {
    /// One per event, in order of first appearance.
    slots: Vec<Slot<'a>>,
    roots: Vec<usize>,
}

struct Slot<'a> {
    event: &'a TracedEvent,
    dead_letters: Vec<&'a Failure>,
    children: Vec<usize>,
    /// Arrival of its newest record.
    latest: usize,
}

impl<'a> Forest<'a> {
    fn grow(records: &'a [Arc<TraceRecord>]) -> Self {
        let mut slots: Vec<Slot<'a>> = Vec::new();
        let mut by_id: HashMap<&str, usize> = HashMap::new();
        for (arrival, record) in records.iter().enumerate() {
            // A dead letter may come before its event: it carries the
            // envelope too.
            let index = *by_id.entry(record.event.id.as_str()).or_insert_with(|| {
                slots.push(Slot {
                    event: &record.event,
                    dead_letters: Vec::new(),
                    children: Vec::new(),
                    latest: arrival,
                });
                slots.len() - 1
            });
            let slot = &mut slots[index];
            slot.latest = arrival;
            match &record.failure {
                Some(failure) => slot.dead_letters.push(failure),
                None => slot.event = &record.event,
            }
        }
        let mut roots = Vec::new();
        for index in 0..slots.len() {
            let parent = slots[index]
                .event
                .parent_id
                .as_deref()
                .and_then(|parent| by_id.get(parent).copied())
                .filter(|&parent| parent != index);
            match parent {
                Some(parent) => slots[parent].children.push(index),
                None => roots.push(index),
            }
        }
        let mut forest = Self { slots, roots };
        forest.cut_loops();
        forest
    }

    /// Parent links that loop (only forged envelopes can) reach no root:
    /// each loop is cut above its earliest event, which becomes a root.
    fn cut_loops(&mut self) {
        let mut reached = vec![false; self.slots.len()];
        for root in self.roots.clone() {
            self.reach(root, &mut reached);
        }
        for index in 0..self.slots.len() {
            if !reached[index] {
                for slot in &mut self.slots {
                    slot.children.retain(|&child| child != index);
                }
                self.roots.push(index);
                self.reach(index, &mut reached);
            }
        }
    }

    fn reach(&self, from: usize, reached: &mut [bool]) {
        let mut pending = vec![from];
        while let Some(index) = pending.pop() {
            reached[index] = true;
            pending.extend(self.slots[index].children.iter().copied());
        }
    }

    /// The tree below `index`, how many events it holds and the arrival
    /// of its newest record.
    fn node(&self, index: usize) -> (Node<'a>, usize, usize) {
        let slot = &self.slots[index];
        let (mut events, mut latest) = (1, slot.latest);
        let children = slot
            .children
            .iter()
            .map(|&child| {
                let (node, count, child_latest) = self.node(child);
                events += count;
                latest = latest.max(child_latest);
                node
            })
            .collect();
        let node = Node {
            event: slot.event,
            dead_letters: slot.dead_letters.clone(),
            children,
        };
        (node, events, latest)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn event(id: &str, name: &str, parent: Option<&str>, correlation: Option<&str>) -> TraceRecord {
        TraceRecord {
            kind: RecordKind::Event,
            event: TracedEvent {
                id: id.to_owned(),
                event: name.to_owned(),
                emitter: "test.plugin".to_owned(),
                parent_id: parent.map(str::to_owned),
                correlation_id: correlation.map(str::to_owned),
                timestamp: "2025-01-01T00:00:00Z".to_owned(),
            },
            failure: None,
        }
    }

    fn dead_letter(of: &TraceRecord, subscriber: &str) -> TraceRecord {
        TraceRecord {
            kind: RecordKind::DeadLetter,
            failure: Some(Failure {
                subscriber: subscriber.to_owned(),
                error: "boom".to_owned(),
                attempts: 3,
                failed_at: "2025-01-01T00:00:01Z".to_owned(),
            }),
            ..of.clone()
        }
    }

    fn view(buffer: &TraceBuffer, correlation_id: Option<&str>) -> Value {
        let (records, _) = buffer.records(correlation_id);
        serde_json::to_value(traces(&records)).expect("serializable")
    }

    #[test]
    fn children_hang_on_their_parents_and_traces_come_newest_first() {
        let buffer = TraceBuffer::new(10);
        let placed = event("e1", "order.placed", Some("req-1"), Some("req-1"));
        buffer.push(placed.clone());
        buffer.push(event("u1", "user.created", Some("req-0"), Some("req-0")));
        buffer.push(event("e2", "stock.reserved", Some("e1"), Some("req-1")));
        buffer.push(dead_letter(&placed, "mail.send.order.placed"));
        buffer.push(event("e3", "order.reserved", Some("e2"), Some("req-1")));

        let traces = view(&buffer, None);
        assert_eq!(traces[0]["correlation_id"], "req-1", "{traces}");
        assert_eq!(traces[0]["events"], 3);
        let root = &traces[0]["roots"][0];
        assert_eq!(root["id"], "e1");
        assert_eq!(root["parent_id"], "req-1");
        assert_eq!(
            root["dead_letters"][0]["subscriber"],
            "mail.send.order.placed"
        );
        assert_eq!(root["children"][0]["id"], "e2");
        assert_eq!(root["children"][0]["children"][0]["id"], "e3");
        assert_eq!(traces[1]["correlation_id"], "req-0");
        assert_eq!(traces.as_array().map(Vec::len), Some(2));

        let one = view(&buffer, Some("req-0"));
        assert_eq!(one.as_array().map(Vec::len), Some(1));
        assert_eq!(one[0]["roots"][0]["event"], "user.created");
    }

    #[test]
    fn the_buffer_keeps_the_newest_records_once_each() {
        let buffer = TraceBuffer::new(3);
        for n in 0..5 {
            let record = event(&format!("e{n}"), "t", None, None);
            buffer.push(record.clone());
            buffer.push(record);
        }
        let (records, buffered) = buffer.records(None);
        assert_eq!(buffered, 3);
        let ids: Vec<&str> = records.iter().map(|r| r.event.id.as_str()).collect();
        assert_eq!(ids, ["e2", "e3", "e4"]);
        // Forgotten ids may come back.
        buffer.push(event("e0", "t", None, None));
        assert_eq!(buffer.records(None).1, 3);
    }

    #[test]
    fn an_event_whose_parent_was_forgotten_is_a_root_and_a_dead_letter_stands_for_its_event() {
        let buffer = TraceBuffer::new(10);
        buffer.push(event("e2", "stock.reserved", Some("e1"), Some("req-1")));
        let lost = event("e9", "order.placed", None, None);
        buffer.push(dead_letter(&lost, "s"));
        let traces = view(&buffer, None);
        assert_eq!(traces[0]["correlation_id"], "e9");
        assert_eq!(traces[0]["roots"][0]["dead_letters"][0]["error"], "boom");
        assert_eq!(traces[1]["roots"][0]["id"], "e2");
    }

    #[test]
    fn looping_parent_links_still_show_every_event() {
        let buffer = TraceBuffer::new(10);
        buffer.push(event("a", "t", Some("b"), Some("x")));
        buffer.push(event("b", "t", Some("a"), Some("x")));
        let traces = view(&buffer, None);
        assert_eq!(traces[0]["events"], 2, "{traces}");
        assert_eq!(traces[0]["roots"][0]["children"][0]["id"], "b", "{traces}");
    }

    #[test]
    fn a_flat_record_says_what_it_is() {
        let placed = event("e1", "order.placed", Some("r"), Some("r"));
        let letter = serde_json::to_value(dead_letter(&placed, "s")).expect("serializable");
        assert_eq!(letter["kind"], "dead_letter");
        assert_eq!(letter["id"], "e1");
        assert_eq!(letter["attempts"], 3);
        let plain = serde_json::to_value(&placed).expect("serializable");
        assert_eq!(plain["kind"], "event");
        assert!(plain.get("subscriber").is_none(), "{plain}");
    }
}
