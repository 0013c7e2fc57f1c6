//! `GET /system/events`: the event topology of the live fleet. For every
//! event a live instance publishes or subscribes to, who publishes it (by
//! service and plugin, with the count summed over instances) and who
//! subscribes to it (by service and subscriber, with its audience and its
//! handled, retried and dead-lettered counts summed over instances, and
//! the instances where it was dropped).
//!
//! Subscribers come from what instances announce, so a subscriber is
//! listed before it handles anything. Publishers are known only from the
//! counters: a plugin that has not published an event since its instance
//! started does not appear under it. Every live instance is asked at once
//! with a short timeout ([`instances::REPORT_TIMEOUT`]); one that does not
//! answer is listed under `unreachable`, and its counts are missing from
//! the sums rather than failing the view.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use futures_util::future::join_all;
use serde::Serialize;
use shared_schemas::discovery::{ServiceInfo, SubscriptionInfo, meta};
use shared_schemas::system::{BusReport, View};

use crate::envelope;
use crate::instances;
use crate::proxy::Proxy;

/// `GET /system/events`.
pub async fn topology(State(proxy): State<Arc<Proxy>>) -> Response {
    let snapshot = proxy.routes.load();
    let live: Vec<&ServiceInfo> = snapshot
        .fleet
        .iter()
        .flat_map(|(_, instances)| instances.iter().map(Arc::as_ref))
        .collect();
    let reports = join_all(
        live.iter()
            .map(|info| instances::report(proxy.transport.as_ref(), info, &[View::Bus])),
    )
    .await;
    let answers = live.into_iter().zip(reports).map(|(info, report)| {
        let bus = report
            .map(|report| report.bus.unwrap_or_default())
            .map_err(|e| e.to_string());
        (info, bus)
    });
    envelope::ok(Topology::build(answers))
}

/// The view.
#[derive(Debug, Default, PartialEq, Serialize)]
pub struct Topology {
    /// By event name.
    pub events: Vec<EventTopology>,
    /// Live instances that gave no report: their counts are missing.
    pub unreachable: Vec<Unreachable>,
}

#[derive(Debug, PartialEq, Serialize)]
pub struct EventTopology {
    pub event: String,
    pub publishers: Vec<Publisher>,
    pub subscribers: Vec<Subscriber>,
}

#[derive(Debug, PartialEq, Serialize)]
pub struct Publisher {
    pub service: String,
    /// The emitting plugin, `service.plugin`.
    pub plugin: String,
    pub published: u64,
}

#[derive(Debug, Default, PartialEq, Serialize)]
pub struct Subscriber {
    pub service: String,
    /// `service.plugin.name`.
    pub subscriber: String,
    /// `plugin`, `group:<name>` or `broadcast`, as announced; `None` when
    /// only the counters know the subscriber.
    pub audience: Option<String>,
    /// Live instances running it.
    pub instances: usize,
    pub handled: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    /// Instances where it stopped consuming.
    pub dropped_on: Vec<String>,
}

#[derive(Debug, PartialEq, Serialize)]
pub struct Unreachable {
    pub service: String,
    pub instance: String,
    pub reason: String,
}

#[derive(Default)]
struct EventEntry {
    publishers: BTreeMap<(String, String), u64>,
    subscribers: BTreeMap<(String, String), Subscriber>,
}

impl Topology {
    /// The topology of these instances and their answers.
    pub fn build<'a>(
        answers: impl IntoIterator<Item = (&'a ServiceInfo, Result<BusReport, String>)>,
    ) -> Self {
        let mut events: BTreeMap<String, EventEntry> = BTreeMap::new();
        let mut unreachable = Vec::new();
        for (info, answer) in answers {
            let service = &info.name;
            for announced in announced_subscriptions(info) {
                let subscriber = subscriber(
                    &mut events,
                    service,
                    &announced.event,
                    &announced.subscriber,
                );
                subscriber.audience = Some(announced.audience);
                subscriber.instances += 1;
            }
            let report = match answer {
                Ok(report) => report,
                Err(reason) => {
                    unreachable.push(Unreachable {
                        service: service.clone(),
                        instance: info.id.clone(),
                        reason,
                    });
                    continue;
                }
            };
            for published in report.published {
                let entry = events.entry(published.event).or_default();
                *entry
                    .publishers
                    .entry((service.clone(), published.emitter))
                    .or_default() += published.count;
            }
            for counts in report.subscriptions {
                let subscriber =
                    subscriber(&mut events, service, &counts.event, &counts.subscriber);
                subscriber.handled += counts.handled;
                subscriber.retried += counts.retried;
                subscriber.dead_lettered += counts.dead_lettered;
                if counts.dropped {
                    subscriber.dropped_on.push(info.id.clone());
                }
            }
        }
        Self {
            events: events
                .into_iter()
                .map(|(event, entry)| EventTopology {
                    event,
                    publishers: entry
                        .publishers
                        .into_iter()
                        .map(|((service, plugin), published)| Publisher {
                            service,
                            plugin,
                            published,
                        })
                        .collect(),
                    subscribers: entry.subscribers.into_values().collect(),
                })
                .collect(),
            unreachable,
        }
    }
}

/// The entry of `subscriber` of `service` under `event`, created empty.
fn subscriber<'e>(
    events: &'e mut BTreeMap<String, EventEntry>,
    service: &str,
    event: &str,
    subscriber: &str,
) -> &'e mut Subscriber {
    events
        .entry(event.to_owned())
        .or_default()
        .subscribers
        .entry((service.to_owned(), subscriber.to_owned()))
        .or_insert_with(|| Subscriber {
            service: service.to_owned(),
            subscriber: subscriber.to_owned(),
            ..Subscriber::default()
        })
}

/// The subscriptions an instance announces; none for one that announces
/// them unreadably (an older kernel).
fn announced_subscriptions(info: &ServiceInfo) -> Vec<SubscriptionInfo> {
    info.metadata
        .get(meta::SUBSCRIPTIONS)
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use shared_schemas::system::{Published, SubscriptionCounts};

    use super::*;

    fn instance(service: &str, id: &str, subscriptions: &[(&str, &str)]) -> ServiceInfo {
        let subscriptions: Vec<SubscriptionInfo> = subscriptions
            .iter()
            .map(|(subscriber, event)| SubscriptionInfo {
                subscriber: (*subscriber).into(),
                event: (*event).into(),
                audience: "plugin".into(),
            })
            .collect();
        ServiceInfo {
            name: service.into(),
            id: id.into(),
            version: "0.1.0".into(),
            description: String::new(),
            metadata: [(
                meta::SUBSCRIPTIONS.to_owned(),
                serde_json::to_string(&subscriptions).unwrap(),
            )]
            .into(),
            endpoints: Vec::new(),
        }
    }

    fn counts(subscriber: &str, event: &str, handled: u64, dropped: bool) -> SubscriptionCounts {
        SubscriptionCounts {
            subscriber: subscriber.into(),
            event: event.into(),
            handled,
            retried: 1,
            dead_lettered: 0,
            dropped,
        }
    }

    #[test]
    fn counts_are_summed_over_instances_and_silent_instances_listed() {
        let reserve = "products.reserve_stock.order.placed";
        let orders = instance("orders", "o1", &[]);
        let products_a = instance("products", "p1", &[(reserve, "order.placed")]);
        let products_b = instance("products", "p2", &[(reserve, "order.placed")]);
        let products_c = instance("products", "p3", &[(reserve, "order.placed")]);
        let published = |count| BusReport {
            published: vec![Published {
                emitter: "orders.place_order".into(),
                event: "order.placed".into(),
                count,
            }],
            subscriptions: Vec::new(),
        };
        let subscribed = |handled, dropped| BusReport {
            published: Vec::new(),
            subscriptions: vec![counts(reserve, "order.placed", handled, dropped)],
        };
        let topology = Topology::build([
            (&orders, Ok(published(3))),
            (&products_a, Ok(subscribed(2, false))),
            (&products_b, Ok(subscribed(1, true))),
            (&products_c, Err("the instance does not answer".to_owned())),
        ]);

        assert_eq!(topology.events.len(), 1);
        let placed = &topology.events[0];
        assert_eq!(placed.event, "order.placed");
        assert_eq!(
            placed.publishers,
            [Publisher {
                service: "orders".into(),
                plugin: "orders.place_order".into(),
                published: 3,
            }]
        );
        assert_eq!(
            placed.subscribers,
            [Subscriber {
                service: "products".into(),
                subscriber: reserve.into(),
                audience: Some("plugin".into()),
                instances: 3,
                handled: 3,
                retried: 2,
                dead_lettered: 0,
                dropped_on: vec!["p2".into()],
            }]
        );
        assert_eq!(
            topology.unreachable,
            [Unreachable {
                service: "products".into(),
                instance: "p3".into(),
                reason: "the instance does not answer".into(),
            }]
        );
    }

    #[test]
    fn a_subscriber_that_handled_nothing_yet_is_listed() {
        let notifications = instance(
            "notifications",
            "n1",
            &[("notifications.on_user.user.created", "user.created")],
        );
        let topology = Topology::build([(&notifications, Ok(BusReport::default()))]);
        let created = &topology.events[0];
        assert_eq!(created.event, "user.created");
        assert!(created.publishers.is_empty());
        assert_eq!(created.subscribers[0].handled, 0);
        assert_eq!(created.subscribers[0].instances, 1);
    }
}
