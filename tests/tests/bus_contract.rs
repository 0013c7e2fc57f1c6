//! The bus contract, written once and run on both transports: the
//! in-process one of the embedded default and NATS with JetStream. Each
//! case boots real services (the kernel, probe plugins, a SQLite database
//! each) on a transport and checks what plugins rely on, with the same
//! assertions on both sides. Plain subscriptions (taps) are checked on the
//! transports directly: they are what observers such as the gateway use.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use microcore::prelude::*;
use microcore::tools::Tool;
use microcore::transport::{
    ConsumerMode, ConsumerSpec, InProcessTransport, Message, NatsTransport, Transport,
};
use microcore::{Domain, PluginEntry, RunningService, Service, ServiceConfig};
use microcore_e2e::{NatsServer, wait};
use serde_json::{Value, json};
use shared_schemas::Subjects;
use shared_schemas::events::DeadLetter;
use tokio::time::Instant;

/// The transport a case runs on.
enum Topology {
    InProcess(InProcessTransport),
    Nats(NatsServer),
}

impl Topology {
    async fn in_process() -> Self {
        Self::InProcess(InProcessTransport::new())
    }

    async fn nats() -> Self {
        Self::Nats(NatsServer::start().await)
    }

    /// The bus as one process of the system reaches it: its own
    /// connection over NATS, the shared hub in-process.
    async fn transport(&self) -> Arc<dyn Transport> {
        match self {
            Self::InProcess(hub) => Arc::new(hub.clone()),
            Self::Nats(server) => Arc::new(NatsTransport::new(
                server.connect().await,
                Subjects::default(),
            )),
        }
    }

    /// A bus with no plugin behind it, to publish and ask from.
    async fn bus(&self) -> Bus {
        Bus::new(self.transport().await, Subjects::default())
    }

    /// Boots an instance of the probe service, `instance` in the journal.
    async fn probe(&self, journal: &Journal, instance: &str) -> RunningService {
        let domain = Domain::new("probe", "0.1.0").plugins(vec![
            PluginEntry::of::<WorkerPlugin>("worker"),
            PluginEntry::of::<OtherPlugin>("other"),
            PluginEntry::of::<ChainedPlugin>("chained"),
        ]);
        self.boot(domain, journal.instance(instance)).await
    }

    async fn boot(&self, domain: Domain, journal: Journal) -> RunningService {
        let db = Db::connect("sqlite::memory:", None, 1)
            .await
            .expect("an in-memory database");
        Service::new(domain, ServiceConfig::default())
            .tool(journal)
            .start(self.transport().await, db)
            .await
            .expect("the service starts")
    }
}

/// What handlers saw, across every instance of a case.
#[derive(Clone, Default)]
struct Journal {
    instance: String,
    entries: Arc<Mutex<Vec<Entry>>>,
}

#[derive(Debug, Clone)]
struct Entry {
    instance: String,
    subscriber: String,
    event: EventEnvelope<Value>,
    handled: bool,
    at: Instant,
}

impl Tool for Journal {
    const NAME: &'static str = "journal";
}

impl Journal {
    fn instance(&self, instance: &str) -> Self {
        Self {
            instance: instance.to_owned(),
            entries: self.entries.clone(),
        }
    }

    fn record(&self, subscriber: &str, event: &EventEnvelope<Value>, handled: bool) -> usize {
        let mut entries = self.entries.lock().expect("not poisoned");
        entries.push(Entry {
            instance: self.instance.clone(),
            subscriber: subscriber.to_owned(),
            event: event.clone(),
            handled,
            at: Instant::now(),
        });
        entries
            .iter()
            .filter(|e| e.subscriber == subscriber && e.event.id == event.id)
            .count()
    }

    fn entries(&self, subscriber: &str) -> Vec<Entry> {
        let entries = self.entries.lock().expect("not poisoned");
        entries
            .iter()
            .filter(|e| e.subscriber == subscriber)
            .cloned()
            .collect()
    }

    /// Handled events of `subscriber`: event id → how many times.
    fn handled(&self, subscriber: &str) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for entry in self.entries(subscriber).into_iter().filter(|e| e.handled) {
            *counts.entry(entry.event.id).or_insert(0) += 1;
        }
        counts
    }

    /// Waits until `subscriber` handled `count` distinct events.
    async fn wait_handled(&self, subscriber: &str, count: usize) -> BTreeMap<String, usize> {
        let done = wait::poll(Duration::from_secs(20), || async {
            let handled = self.handled(subscriber);
            (handled.len() >= count).then_some(handled)
        })
        .await;
        done.unwrap_or_else(|| {
            panic!(
                "{subscriber} handled {:?}, not {count} events",
                self.handled(subscriber)
            )
        })
    }
}

/// The work an event asks of its handler.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Work {
    /// Fail this many attempts first; negative: always.
    fail_times: i64,
}

fn outcome(journal: &Journal, subscriber: &str, event: &EventEnvelope<Value>) -> EventResult {
    let work: Work = serde_json::from_value(event.payload.clone())?;
    let attempt = journal.record(subscriber, event, false) as i64;
    if work.fail_times < 0 || attempt <= work.fail_times {
        return Err(format!("planned failure {attempt}").into());
    }
    journal.record(subscriber, event, true);
    Ok(())
}

/// Subscribes each way: its own copy, a pool, a broadcast, a chain.
struct WorkerPlugin {
    bus: Bus,
    journal: Journal,
}

impl Plugin for WorkerPlugin {
    type Tools = (Bus, Journal);

    fn new((bus, journal): Self::Tools) -> Self {
        Self { bus, journal }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        let retried = |event: &str| {
            self.bus
                .subscribe(event)
                .retries(2)
                .backoff(Duration::from_millis(100))
        };
        retried("contract.work").handler(&self, |p, e| async move {
            outcome(&p.journal, "worker", &e)
        })?;
        retried("contract.pool")
            .group("pool")
            .handler(&self, |p, e| async move { outcome(&p.journal, "pool", &e) })?;
        retried("contract.broadcast")
            .broadcast()
            .handler(
                &self,
                |p, e| async move { outcome(&p.journal, "broadcast", &e) },
            )?;
        self.bus
            .subscribe("contract.chain")
            .handler(&self, Self::chain)?;
        Ok(())
    }
}

impl WorkerPlugin {
    async fn chain(self: Arc<Self>, event: EventEnvelope<Value>) -> EventResult {
        self.bus.publish("contract.chained", &json!({})).await?;
        self.journal.record("chain", &event, true);
        Ok(())
    }
}

/// A second plugin: its own copy of `contract.work`, a member of the pool.
struct OtherPlugin {
    bus: Bus,
    journal: Journal,
}

impl Plugin for OtherPlugin {
    type Tools = (Bus, Journal);

    fn new((bus, journal): Self::Tools) -> Self {
        Self { bus, journal }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        self.bus
            .subscribe("contract.work")
            .handler(
                &self,
                |p, e| async move { outcome(&p.journal, "other", &e) },
            )?;
        self.bus
            .subscribe("contract.pool")
            .group("pool")
            .handler(&self, |p, e| async move { outcome(&p.journal, "pool", &e) })?;
        Ok(())
    }
}

/// Records the events the worker's chain handler publishes.
struct ChainedPlugin {
    bus: Bus,
    journal: Journal,
}

impl Plugin for ChainedPlugin {
    type Tools = (Bus, Journal);

    fn new((bus, journal): Self::Tools) -> Self {
        Self { bus, journal }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        self.bus.subscribe("contract.chained").handler(
            &self,
            |p, e: EventEnvelope<Value>| async move {
                p.journal.record("chained", &e, true);
                Ok::<(), BoxedError>(())
            },
        )?;
        Ok(())
    }
}

type BoxedError = Box<dyn std::error::Error + Send + Sync>;

/// Answers `contract.echo` as each request asks.
struct EchoPlugin {
    bus: Bus,
}

#[derive(Debug, Deserialize, Serialize)]
struct Echo {
    text: String,
    #[serde(default)]
    sleep_ms: u64,
    #[serde(default)]
    refuse: bool,
}

impl Plugin for EchoPlugin {
    type Tools = Bus;

    fn new(bus: Bus) -> Self {
        Self { bus }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        self.bus
            .respond("contract.echo")
            .handler(&self, |_, echo: Echo| async move {
                tokio::time::sleep(Duration::from_millis(echo.sleep_ms)).await;
                if echo.refuse {
                    return Err(HandlerError::reject("refused as asked"));
                }
                Ok(echo)
            })?;
        Ok(())
    }
}

async fn publish_many(bus: &Bus, event: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..count {
        ids.push(bus.publish(event, &json!({})).await.expect("published"));
    }
    ids.sort();
    ids
}

/// Lets redeliveries that should not happen show up.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

// ---- the cases ----

async fn each_subscribing_plugin_gets_each_event_once_across_replicas(topology: Topology) {
    let journal = Journal::default();
    let a = topology.probe(&journal, "a").await;
    let b = topology.probe(&journal, "b").await;
    let ids = publish_many(&topology.bus().await, "contract.work", 12).await;

    for subscriber in ["worker", "other"] {
        journal.wait_handled(subscriber, ids.len()).await;
        settle().await;
        let handled = journal.handled(subscriber);
        assert_eq!(
            handled.keys().cloned().collect::<Vec<_>>(),
            ids,
            "{subscriber}"
        );
        assert!(
            handled.values().all(|&n| n == 1),
            "{subscriber} once each: {handled:?}"
        );
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn a_group_is_one_pool_across_plugins(topology: Topology) {
    let journal = Journal::default();
    let probe = topology.probe(&journal, "a").await;
    let ids = publish_many(&topology.bus().await, "contract.pool", 12).await;
    journal.wait_handled("pool", ids.len()).await;
    settle().await;
    let handled = journal.handled("pool");
    assert_eq!(handled.keys().cloned().collect::<Vec<_>>(), ids);
    assert!(
        handled.values().all(|&n| n == 1),
        "one member each: {handled:?}"
    );
    probe.shutdown().await.unwrap();
}

async fn a_broadcast_reaches_every_instance(topology: Topology) {
    let journal = Journal::default();
    let a = topology.probe(&journal, "a").await;
    let b = topology.probe(&journal, "b").await;
    let ids = publish_many(&topology.bus().await, "contract.broadcast", 5).await;
    wait::poll(Duration::from_secs(20), || async {
        (journal
            .entries("broadcast")
            .iter()
            .filter(|e| e.handled)
            .count()
            >= 10)
            .then_some(())
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "not every instance got every broadcast: {:?}",
            journal.handled("broadcast")
        )
    });
    for instance in ["a", "b"] {
        let mut seen: Vec<String> = journal
            .entries("broadcast")
            .into_iter()
            .filter(|e| e.handled && e.instance == instance)
            .map(|e| e.event.id)
            .collect();
        seen.sort();
        assert_eq!(seen, ids, "instance {instance}");
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn request_reply_tells_no_responder_timeout_and_refusal_apart(topology: Topology) {
    let bus = topology.bus().await;
    let ask = |echo: Echo, timeout: Duration| {
        let bus = bus.clone();
        async move {
            bus.request::<_, Echo>("contract.echo", &echo, timeout)
                .await
        }
    };
    let echo = |text: &str, sleep_ms: u64, refuse: bool| Echo {
        text: text.to_owned(),
        sleep_ms,
        refuse,
    };
    let nobody = ask(echo("hi", 0, false), Duration::from_secs(2)).await;
    assert!(
        matches!(nobody, Err(RpcError::NoResponder(_))),
        "{nobody:?}"
    );

    let domain = Domain::new("echo", "0.1.0").plugins(vec![PluginEntry::of::<EchoPlugin>("echo")]);
    let service = topology.boot(domain, Journal::default()).await;
    let answer = ask(echo("hi", 0, false), Duration::from_secs(2)).await;
    assert_eq!(answer.expect("an answer").text, "hi");
    let slow = ask(echo("slow", 1000, false), Duration::from_millis(100)).await;
    assert!(matches!(slow, Err(RpcError::TimedOut { .. })), "{slow:?}");
    let refused = ask(echo("no", 0, true), Duration::from_secs(2)).await;
    match refused {
        Err(RpcError::Rejected { message, .. }) => assert_eq!(message, "refused as asked"),
        other => panic!("expected a refusal: {other:?}"),
    }
    service.shutdown().await.unwrap();
}

async fn failures_are_retried_with_backoff_then_dead_lettered_once(topology: Topology) {
    let journal = Journal::default();
    let probe = topology.probe(&journal, "a").await;
    let bus = topology.bus().await;
    let transport = topology.transport().await;
    let mut letters = transport
        .consume(ConsumerSpec {
            subject: Subjects::default().dlq("contract.work"),
            mode: ConsumerMode::Shared {
                name: "contract-dlq-reader".to_owned(),
            },
            ack_wait: Duration::from_secs(30),
            max_in_flight: 16,
        })
        .await
        .expect("a dead-letter reader");

    let poisoned = bus
        .publish("contract.work", &json!({"fail_times": -1}))
        .await
        .unwrap();
    let flaky = bus
        .publish("contract.work", &json!({"fail_times": 1}))
        .await
        .unwrap();

    let letter = tokio::time::timeout(Duration::from_secs(20), letters.next())
        .await
        .expect("a dead letter in time")
        .expect("a dead letter");
    let body: DeadLetter = serde_json::from_slice(&letter.message.body).expect("a dead letter");
    letter.ack().await.unwrap();
    assert_eq!(body.original.id, poisoned);
    assert_eq!(body.subscriber, "probe.worker.contract.work");
    assert_eq!(body.attempts, 3, "the first attempt and two retries");
    assert!(body.error.contains("planned failure"), "{}", body.error);

    let attempts: Vec<Instant> = journal
        .entries("worker")
        .into_iter()
        .filter(|e| e.event.id == poisoned && !e.handled)
        .map(|e| e.at)
        .collect();
    assert_eq!(attempts.len(), 3);
    assert!(
        attempts[1] - attempts[0] >= Duration::from_millis(95),
        "{attempts:?}"
    );
    assert!(
        attempts[2] - attempts[1] >= Duration::from_millis(195),
        "{attempts:?}"
    );

    journal.wait_handled("worker", 1).await;
    settle().await;
    assert_eq!(
        journal.handled("worker"),
        BTreeMap::from([(flaky, 1)]),
        "processed once"
    );
    let more = tokio::time::timeout(Duration::from_millis(300), letters.next()).await;
    assert!(more.is_err(), "one dead letter only");
    probe.shutdown().await.unwrap();
}

async fn an_event_published_by_a_handler_is_chained_to_the_event_it_handles(topology: Topology) {
    let journal = Journal::default();
    let probe = topology.probe(&journal, "a").await;
    let root = topology
        .bus()
        .await
        .publish("contract.chain", &json!({}))
        .await
        .unwrap();
    journal.wait_handled("chained", 1).await;
    let chained = &journal.entries("chained")[0].event;
    assert_eq!(chained.parent_id.as_deref(), Some(root.as_str()));
    assert_eq!(chained.correlation_id.as_deref(), Some(root.as_str()));
    assert_eq!(chained.emitter, "probe.worker");
    probe.shutdown().await.unwrap();
}

async fn a_subscriber_that_was_down_gets_what_was_published_meanwhile(topology: Topology) {
    let journal = Journal::default();
    topology
        .probe(&journal, "a")
        .await
        .shutdown()
        .await
        .unwrap();
    let ids = publish_many(&topology.bus().await, "contract.work", 5).await;
    let probe = topology.probe(&journal, "b").await;
    let handled = journal.wait_handled("worker", ids.len()).await;
    settle().await;
    assert_eq!(handled.keys().cloned().collect::<Vec<_>>(), ids);
    assert!(journal.handled("worker").values().all(|&n| n == 1));
    probe.shutdown().await.unwrap();
}

fn message(body: &str) -> Message {
    let mut headers = http::HeaderMap::new();
    headers.insert("x-contract", http::HeaderValue::from_static("kept"));
    Message::new(headers, body.to_owned())
}

/// The bodies `tap` yields up to and including `last`.
async fn read_until(tap: &mut BoxStream<'static, Message>, last: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let read = tokio::time::timeout(wait::PROMPT, async {
        while let Some(message) = tap.next().await {
            let body = String::from_utf8_lossy(&message.body).into_owned();
            assert_eq!(message.headers["x-contract"], "kept", "{body}");
            let done = body == last;
            seen.push(body);
            if done {
                return;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "`{last}` never came; the tap saw {seen:?}");
    seen
}

async fn a_tap_sees_what_is_published_on_matching_subjects_from_then_on(topology: Topology) {
    let publisher = topology.transport().await;
    let listener = topology.transport().await;
    let subject = |rest: &str| format!("mc.events.tap.{rest}");
    let id = || uuid::Uuid::new_v4().to_string();
    publisher
        .publish_durable(&subject("early.one"), &id(), message("early"))
        .await
        .unwrap();

    let mut everything = listener.subscribe("mc.events.tap.>").await.unwrap();
    let mut ones = listener.subscribe("mc.events.tap.*.one").await.unwrap();
    publisher
        .publish(&subject("a.one"), message("plain"))
        .await
        .unwrap();
    publisher
        .publish_durable(&subject("b.two"), &id(), message("durable"))
        .await
        .unwrap();
    publisher
        .publish(&subject("c.one.deep"), message("deep"))
        .await
        .unwrap();
    publisher
        .publish("mc.events.tap", message("bare"))
        .await
        .unwrap();
    publisher
        .publish("mc.other.a.one", message("elsewhere"))
        .await
        .unwrap();
    publisher
        .publish(&subject("end.one"), message("end"))
        .await
        .unwrap();

    assert_eq!(
        read_until(&mut everything, "end").await,
        ["plain", "durable", "deep", "end"],
        "`>` is one token or more, from the subscription on"
    );
    assert_eq!(
        read_until(&mut ones, "end").await,
        ["plain", "end"],
        "`*` is exactly one token"
    );
}

async fn a_tap_nobody_reads_never_holds_up_publishers(topology: Topology) {
    let publisher = topology.transport().await;
    let listener = topology.transport().await;
    let mut tap = listener.subscribe("mc.events.flood.>").await.unwrap();
    let flood = async {
        for n in 0..3000 {
            publisher
                .publish("mc.events.flood.x", message(&n.to_string()))
                .await
                .unwrap();
        }
        let id = uuid::Uuid::new_v4().to_string();
        publisher
            .publish_durable("mc.events.flood.x", &id, message("last"))
            .await
            .unwrap();
    };
    tokio::time::timeout(Duration::from_secs(30), flood)
        .await
        .expect("publishing never waits for a reader");
    // Whatever it missed, the reader gets the newest.
    let seen = read_until(&mut tap, "last").await;
    assert!(!seen.is_empty());
}

/// Each case, once per transport.
macro_rules! on_both_transports {
    ($($case:ident),* $(,)?) => {
        mod in_process {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Topology::in_process().await).await;
                }
            )*
        }
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Topology::nats().await).await;
                }
            )*
        }
    };
}

on_both_transports! {
    each_subscribing_plugin_gets_each_event_once_across_replicas,
    a_group_is_one_pool_across_plugins,
    a_broadcast_reaches_every_instance,
    request_reply_tells_no_responder_timeout_and_refusal_apart,
    failures_are_retried_with_backoff_then_dead_lettered_once,
    an_event_published_by_a_handler_is_chained_to_the_event_it_handles,
    a_subscriber_that_was_down_gets_what_was_published_meanwhile,
    a_tap_sees_what_is_published_on_matching_subjects_from_then_on,
    a_tap_nobody_reads_never_holds_up_publishers,
}
