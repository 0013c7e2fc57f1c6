//! What the bus of one instance did since it started: events published
//! per emitting plugin and event, and per subscription the deliveries
//! handled, the attempts retried, the events dead-lettered and whether the
//! subscriber was dropped.
//!
//! These counters are the one source of truth for the instance's bus
//! figures: its system endpoint reports them to the gateway's event
//! topology, and its observable OpenTelemetry instruments ([`observe`])
//! read them at collection time, so the two can never disagree.
//!
//! They are touched once per event and never allocate once warm: a
//! publish takes a short lock on a map looked up by borrowed names (the
//! entry is created on the first event of its kind), a staged event holds
//! the cell it will increment when its transaction commits, and a
//! subscription owns its atomics outright.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;
use shared_schemas::system::{BusReport, Published, SubscriptionCounts};

/// The bus counters of one instance, shared by every plugin's bus.
#[derive(Default)]
pub(crate) struct BusCounters {
    /// Emitter → event → events published.
    published: Mutex<BTreeMap<String, BTreeMap<String, Arc<AtomicU64>>>>,
    subscriptions: Mutex<Vec<Arc<SubscriptionCounters>>>,
}

/// The counters of one running subscription.
pub(crate) struct SubscriptionCounters {
    pub subscriber: String,
    pub event: String,
    handled: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    dropped: AtomicBool,
}

/// One event published by `emitter`, counted once it is out of the
/// publisher's hands: at once for a direct publish, at commit for one
/// staged in a transaction.
#[derive(Clone)]
pub(crate) struct PublishedCell(Arc<AtomicU64>);

impl PublishedCell {
    pub fn count(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl BusCounters {
    /// The cell counting the events `emitter` publishes as `event`.
    pub fn published(&self, emitter: &str, event: &str) -> PublishedCell {
        let mut published = lock(&self.published);
        if let Some(cell) = published.get(emitter).and_then(|events| events.get(event)) {
            return PublishedCell(cell.clone());
        }
        let cell = Arc::new(AtomicU64::new(0));
        published
            .entry(emitter.to_owned())
            .or_default()
            .insert(event.to_owned(), cell.clone());
        PublishedCell(cell)
    }

    /// The counters of a subscription about to run.
    pub fn subscription(&self, subscriber: &str, event: &str) -> Arc<SubscriptionCounters> {
        let counters = Arc::new(SubscriptionCounters {
            subscriber: subscriber.to_owned(),
            event: event.to_owned(),
            handled: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            dropped: AtomicBool::new(false),
        });
        lock(&self.subscriptions).push(counters.clone());
        counters
    }

    /// Every counter as it stands.
    pub fn report(&self) -> BusReport {
        let published = lock(&self.published)
            .iter()
            .flat_map(|(emitter, events)| {
                events.iter().map(|(event, cell)| Published {
                    emitter: emitter.clone(),
                    event: event.clone(),
                    count: cell.load(Ordering::Relaxed),
                })
            })
            .filter(|p| p.count > 0)
            .collect();
        let subscriptions = lock(&self.subscriptions)
            .iter()
            .map(|s| SubscriptionCounts {
                subscriber: s.subscriber.clone(),
                event: s.event.clone(),
                handled: s.handled.load(Ordering::Relaxed),
                retried: s.retried.load(Ordering::Relaxed),
                dead_lettered: s.dead_lettered.load(Ordering::Relaxed),
                dropped: s.dropped.load(Ordering::Relaxed),
            })
            .collect();
        BusReport {
            published,
            subscriptions,
        }
    }
}

impl SubscriptionCounters {
    pub fn handled(&self) {
        self.handled.fetch_add(1, Ordering::Relaxed);
    }

    pub fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dropped(&self) {
        self.dropped.store(true, Ordering::Relaxed);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters stay consistent whatever panicked while holding the lock.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Attribute keys of the bus instruments.
const EVENT: &str = "messaging.destination.name";
const EMITTER: &str = "microcore.plugin";
const SUBSCRIBER: &str = "messaging.consumer.group.name";

/// Registers the bus instruments of `meter`, read from `counters` at each
/// collection:
///
/// - `microcore.bus.published` by event and emitting plugin;
/// - `microcore.bus.handled`, `microcore.bus.retried` and
///   `microcore.bus.dead_lettered` by event and subscriber;
/// - `microcore.bus.subscriber.dropped`, a gauge: 1 once the subscriber
///   stopped consuming on this instance.
pub(crate) fn observe(meter: &Meter, counters: &Arc<BusCounters>) {
    let bus = counters.clone();
    meter
        .u64_observable_counter("microcore.bus.published")
        .with_description("Events published, by event and emitting plugin; a staged event counts when its transaction commits")
        .with_unit("{event}")
        .with_callback(move |observer| {
            for (emitter, events) in lock(&bus.published).iter() {
                for (event, cell) in events {
                    observer.observe(
                        cell.load(Ordering::Relaxed),
                        &[
                            KeyValue::new(EVENT, event.clone()),
                            KeyValue::new(EMITTER, emitter.clone()),
                        ],
                    );
                }
            }
        })
        .build();
    type Read = fn(&SubscriptionCounters) -> u64;
    let outcomes: [(&'static str, &'static str, Read); 3] = [
        (
            "microcore.bus.handled",
            "Events handled and acknowledged",
            |s| s.handled.load(Ordering::Relaxed),
        ),
        (
            "microcore.bus.retried",
            "Failed handler attempts offered again",
            |s| s.retried.load(Ordering::Relaxed),
        ),
        (
            "microcore.bus.dead_lettered",
            "Events that failed for good and went to the dead-letter subject",
            |s| s.dead_lettered.load(Ordering::Relaxed),
        ),
    ];
    for (name, description, read) in outcomes {
        let bus = counters.clone();
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_unit("{event}")
            .with_callback(move |observer| {
                for subscription in lock(&bus.subscriptions).iter() {
                    observer.observe(read(subscription), &subscription.attributes());
                }
            })
            .build();
    }
    let bus = counters.clone();
    meter
        .u64_observable_gauge("microcore.bus.subscriber.dropped")
        .with_description("1 once the subscriber stopped consuming on this instance after too many final failures in a row")
        .with_callback(move |observer| {
            for subscription in lock(&bus.subscriptions).iter() {
                let dropped = subscription.dropped.load(Ordering::Relaxed);
                observer.observe(u64::from(dropped), &subscription.attributes());
            }
        })
        .build();
}

impl SubscriptionCounters {
    fn attributes(&self) -> [KeyValue; 2] {
        [
            KeyValue::new(EVENT, self.event.clone()),
            KeyValue::new(SUBSCRIBER, self.subscriber.clone()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_are_counted_per_emitter_and_event_and_unused_cells_are_not_reported() {
        let counters = BusCounters::default();
        counters
            .published("orders.place_order", "order.placed")
            .count();
        counters
            .published("orders.place_order", "order.placed")
            .count();
        let staged_but_rolled_back = counters.published("orders.cancel", "order.cancelled");
        drop(staged_but_rolled_back);
        let report = counters.report();
        assert_eq!(
            report.published,
            [Published {
                emitter: "orders.place_order".into(),
                event: "order.placed".into(),
                count: 2,
            }]
        );
    }

    #[test]
    fn subscription_outcomes_are_reported() {
        let counters = BusCounters::default();
        let subscription = counters.subscription("products.reserve.order.placed", "order.placed");
        subscription.handled();
        subscription.retried();
        subscription.retried();
        subscription.dead_lettered();
        subscription.dropped();
        let report = counters.report();
        assert_eq!(
            report.subscriptions,
            [SubscriptionCounts {
                subscriber: "products.reserve.order.placed".into(),
                event: "order.placed".into(),
                handled: 1,
                retried: 2,
                dead_lettered: 1,
                dropped: true,
            }]
        );
    }
}
