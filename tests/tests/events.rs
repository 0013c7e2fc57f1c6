//! The durable event bus between processes: delivery semantics, retries
//! and dead letters, request-reply and the transactional outbox, checked
//! with the `probe` service (`tests/src/bin/bus-probe.rs`), which records
//! what its handlers saw in its own tables.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use microcore_e2e::{ServiceInstance, System, wait};
use serde_json::{Value, json};

const PROBE: &str = "probe";

async fn start_probe(system: &System, instance: &str, env: &[(&str, &str)]) -> ServiceInstance {
    let mut all = vec![("PROBE_INSTANCE", instance)];
    all.extend_from_slice(env);
    system.start_service("bus-probe", PROBE, &all).await
}

/// `(event id, instance, seq)` of every event `subscriber` handled, in the
/// order it handled them.
async fn handled(system: &System, subscriber: &str) -> Vec<(String, String, i64)> {
    sqlx::query_as(
        "SELECT event_id, instance, seq FROM probe.handled WHERE subscriber = $1 ORDER BY position",
    )
    .bind(subscriber)
    .fetch_all(system.db().pool())
    .await
    .expect("reading probe.handled")
}

/// Waits until `subscriber` handled at least `count` events.
async fn wait_handled(
    system: &System,
    subscriber: &str,
    count: usize,
) -> Vec<(String, String, i64)> {
    let found = wait::poll(Duration::from_secs(15), || async {
        let rows = handled(system, subscriber).await;
        (rows.len() >= count).then_some(rows)
    })
    .await;
    match found {
        Some(rows) => rows,
        None => {
            let seen = handled(system, subscriber).await.len();
            system.fail(format!(
                "{subscriber} handled {seen} events, expected {count}"
            ))
        }
    }
}

/// Milliseconds since the epoch of each attempt at `event_id`.
async fn attempts(system: &System, event_id: &str) -> Vec<f64> {
    sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM at)::float8 * 1000 FROM probe.attempts
         WHERE event_id = $1 ORDER BY position",
    )
    .bind(event_id)
    .fetch_all(system.db().pool())
    .await
    .expect("reading probe.attempts")
}

/// Lets anything that should not happen have the time to happen.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(700)).await;
}

fn ids(rows: &[(String, String, i64)]) -> BTreeSet<String> {
    rows.iter().map(|(id, ..)| id.clone()).collect()
}

#[tokio::test]
async fn each_subscribing_plugin_gets_each_event_once_across_replicas() {
    let system = System::start().await;
    let _a = start_probe(&system, "a", &[]).await;
    let _b = start_probe(&system, "b", &[]).await;
    let streams = system.streams();

    let mut published = BTreeSet::new();
    for seq in 0..60 {
        published.insert(
            streams
                .publish("probe.work", &json!({"seq": seq, "sleep_ms": 20}))
                .await,
        );
    }

    wait_handled(&system, "worker.probe.work", 60).await;
    wait_handled(&system, "other.probe.work", 60).await;
    settle().await;
    let worker = handled(&system, "worker.probe.work").await;
    let other = handled(&system, "other.probe.work").await;
    assert_eq!(worker.len(), 60, "each event once for the worker plugin");
    assert_eq!(other.len(), 60, "each event once for the other plugin");
    assert_eq!(ids(&worker), published);
    assert_eq!(ids(&other), published);
    let instances: BTreeSet<_> = worker.iter().map(|(_, i, _)| i.as_str()).collect();
    assert_eq!(
        instances,
        BTreeSet::from(["a", "b"]),
        "both replicas share the work"
    );
}

#[tokio::test]
async fn a_broadcast_reaches_every_instance() {
    let system = System::start().await;
    let _a = start_probe(&system, "a", &[]).await;
    let _b = start_probe(&system, "b", &[]).await;
    let streams = system.streams();

    let mut published = BTreeSet::new();
    for seq in 0..5 {
        published.insert(
            streams
                .publish("probe.broadcast", &json!({"seq": seq}))
                .await,
        );
    }

    wait_handled(&system, "worker.probe.broadcast", 10).await;
    settle().await;
    let rows = handled(&system, "worker.probe.broadcast").await;
    let mut per_instance: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (id, instance, _) in &rows {
        per_instance
            .entry(instance.as_str())
            .or_default()
            .insert(id.clone());
    }
    assert_eq!(rows.len(), 10, "one copy per instance: {rows:?}");
    assert_eq!(per_instance.get("a"), Some(&published));
    assert_eq!(per_instance.get("b"), Some(&published));
}

#[tokio::test]
async fn a_group_is_one_pool_across_plugins_and_replicas() {
    let system = System::start().await;
    let _a = start_probe(&system, "a", &[]).await;
    let _b = start_probe(&system, "b", &[]).await;
    let streams = system.streams();

    let mut published = BTreeSet::new();
    for seq in 0..30 {
        published.insert(streams.publish("probe.pool", &json!({"seq": seq})).await);
    }

    let count = || async {
        let worker = handled(&system, "worker.probe.pool").await;
        let other = handled(&system, "other.probe.pool").await;
        worker.into_iter().chain(other).collect::<Vec<_>>()
    };
    wait::poll(Duration::from_secs(15), || async {
        (count().await.len() >= 30).then_some(())
    })
    .await
    .unwrap_or_else(|| system.fail("the pool did not handle 30 events"));
    settle().await;
    let rows = count().await;
    assert_eq!(rows.len(), 30, "each event once for the whole pool");
    assert_eq!(ids(&rows), published);
}

#[tokio::test]
async fn a_subscriber_that_was_down_gets_every_event_once_after_restart() {
    let system = System::start().await;
    let mut probe = start_probe(&system, "first", &[]).await;
    probe.terminate().await;
    let streams = system.streams();

    let mut published = BTreeSet::new();
    for seq in 0..10 {
        published.insert(streams.publish("probe.work", &json!({"seq": seq})).await);
    }
    // Published twice with the same id: stored once.
    let duplicate = json!({"id": published.first().unwrap(), "event": "probe.work", "payload": {"seq": 0},
        "emitter": "test", "timestamp": "2026-01-01T00:00:00Z", "parent_id": null, "correlation_id": null});
    streams.publish_envelope(duplicate).await;

    let _probe = start_probe(&system, "second", &[]).await;
    wait_handled(&system, "worker.probe.work", 10).await;
    settle().await;
    let rows = handled(&system, "worker.probe.work").await;
    assert_eq!(rows.len(), 10, "nothing handled twice: {rows:?}");
    assert_eq!(ids(&rows), published);
}

#[tokio::test]
async fn a_failing_handler_is_retried_with_backoff_then_dead_lettered_once() {
    let system = System::start().await;
    let _probe = start_probe(
        &system,
        "a",
        &[("PROBE_RETRIES", "2"), ("PROBE_BACKOFF_MS", "200")],
    )
    .await;
    let streams = system.streams();

    let poisoned = streams
        .publish("probe.work", &json!({"seq": 1, "fail_times": -1}))
        .await;
    let flaky = streams
        .publish("probe.work", &json!({"seq": 2, "fail_times": 1}))
        .await;

    wait::poll(Duration::from_secs(15), || async {
        (!streams.dead_letters("probe.work").await.is_empty()).then_some(())
    })
    .await
    .unwrap_or_else(|| system.fail("no dead letter"));
    wait_handled(&system, "worker.probe.work", 1).await;
    settle().await;

    let letters = streams.dead_letters("probe.work").await;
    assert_eq!(letters.len(), 1, "one dead letter: {letters:?}");
    let letter = &letters[0];
    assert_eq!(letter["original"]["id"], poisoned.as_str());
    assert_eq!(letter["subscriber"], "probe.worker.probe.work");
    assert_eq!(letter["attempts"], 3);
    assert!(
        letter["error"]
            .as_str()
            .unwrap()
            .contains("planned failure"),
        "{letter}"
    );

    let times = attempts(&system, &poisoned).await;
    assert_eq!(times.len(), 3, "first attempt and two retries");
    let (first_wait, second_wait) = (times[1] - times[0], times[2] - times[1]);
    assert!(
        first_wait >= 190.0,
        "first retry after the backoff: {first_wait} ms"
    );
    assert!(
        second_wait >= 390.0,
        "second retry after twice the backoff: {second_wait} ms"
    );

    assert_eq!(
        attempts(&system, &flaky).await.len(),
        2,
        "failed once, then succeeded"
    );
    let worker = handled(&system, "worker.probe.work").await;
    assert_eq!(
        ids(&worker),
        BTreeSet::from([flaky]),
        "the flaky event is processed once"
    );
}

#[tokio::test]
async fn a_subscriber_failing_for_good_again_and_again_is_dropped_and_says_so() {
    let system = System::start().await;
    let mut probe = start_probe(
        &system,
        "a",
        &[("PROBE_RETRIES", "0"), ("PROBE_CONCURRENCY", "1")],
    )
    .await;
    let streams = system.streams();

    let mut poisoned = Vec::new();
    for seq in 0..5 {
        poisoned.push(
            streams
                .publish("probe.work", &json!({"seq": seq, "fail_times": -1}))
                .await,
        );
    }
    let dropped = streams
        .wait_for_events("system.subscriber.dropped", 1)
        .await;
    let signal = &dropped[0];
    assert_eq!(signal["payload"]["subscriber"], "probe.worker.probe.work");
    assert_eq!(signal["payload"]["consecutive_failures"], 5);
    assert_eq!(
        signal["parent_id"],
        poisoned[4].as_str(),
        "chained to the last failure"
    );
    assert_eq!(streams.dead_letters("probe.work").await.len(), 5);

    // Dropped here: the next event waits in the stream …
    let healthy = streams.publish("probe.work", &json!({"seq": 9})).await;
    wait_handled(&system, "other.probe.work", 6).await;
    settle().await;
    assert!(handled(&system, "worker.probe.work").await.is_empty());

    // … until the subscriber runs again.
    probe.terminate().await;
    let _probe = start_probe(&system, "b", &[]).await;
    let worker = wait_handled(&system, "worker.probe.work", 1).await;
    assert_eq!(ids(&worker), BTreeSet::from([healthy]));
}

#[tokio::test]
async fn events_with_one_key_are_handled_in_publish_order() {
    let system = System::start().await;
    let _probe = start_probe(&system, "a", &[("PROBE_CONCURRENCY", "8")]).await;
    let streams = system.streams();

    for seq in 0..40 {
        let mut keyed = microcore_e2e::events::envelope(
            "probe.work",
            &json!({"seq": seq, "sleep_ms": (seq * 7) % 5}),
        );
        keyed["key"] = json!("customer-1");
        streams.publish_envelope(keyed).await;
        streams
            .publish("probe.work", &json!({"seq": 1000 + seq}))
            .await;
    }

    wait_handled(&system, "worker.probe.work", 80).await;
    let keyed: Vec<i64> = handled(&system, "worker.probe.work")
        .await
        .into_iter()
        .filter(|(_, _, seq)| *seq < 1000)
        .map(|(_, _, seq)| seq)
        .collect();
    assert_eq!(keyed, (0..40).collect::<Vec<_>>());
}

#[tokio::test]
async fn an_event_published_by_a_handler_is_chained_to_the_event_it_handles() {
    let system = System::start().await;
    let _probe = start_probe(&system, "a", &[]).await;
    let streams = system.streams();

    let mut cause = microcore_e2e::events::envelope("probe.chain", &json!({"seq": 7}));
    cause["correlation_id"] = json!("root-request");
    let cause_id = streams.publish_envelope(cause).await;

    let chained = streams.wait_for_events("probe.chained", 1).await;
    let event = &chained[0];
    assert_eq!(event["parent_id"], cause_id.as_str());
    assert_eq!(event["correlation_id"], "root-request");
    assert_eq!(event["emitter"], "probe.worker");
    assert_eq!(event["payload"]["seq"], 7);
}

/// Publishes a `probe.ask` and returns the outcome the caller recorded.
async fn ask(system: &System, payload: Value) -> String {
    let id = system.streams().publish("probe.ask", &payload).await;
    wait::poll(Duration::from_secs(10), || async {
        sqlx::query_scalar::<_, String>("SELECT outcome FROM probe.asked WHERE trigger_id = $1")
            .bind(&id)
            .fetch_optional(system.db().pool())
            .await
            .ok()
            .flatten()
    })
    .await
    .unwrap_or_else(|| system.fail(format!("no outcome recorded for {payload}")))
}

#[tokio::test]
async fn request_reply_tells_no_responder_timeout_and_refusal_apart() {
    let system = System::start().await;
    let _caller = start_probe(&system, "caller", &[("PROBE_RESPONDER", "off")]).await;
    let quick = json!({"timeout_ms": 2000, "sleep_ms": 0, "reject": false});

    assert_eq!(ask(&system, quick.clone()).await, "no responder");

    let _responder = start_probe(&system, "responder", &[]).await;
    assert_eq!(ask(&system, quick).await, "ok 0");
    assert_eq!(
        ask(
            &system,
            json!({"timeout_ms": 200, "sleep_ms": 1500, "reject": false})
        )
        .await,
        "timed out"
    );
    assert_eq!(
        ask(
            &system,
            json!({"timeout_ms": 2000, "sleep_ms": 0, "reject": true})
        )
        .await,
        "rejected: asked to refuse"
    );
}

/// Stored `probe.work` events whose parent is `trigger`.
async fn staged_events(system: &System, trigger: &str) -> Vec<Value> {
    system
        .streams()
        .events("probe.work")
        .await
        .into_iter()
        .filter(|e| e["parent_id"] == trigger)
        .collect()
}

#[tokio::test]
async fn the_outbox_publishes_after_commit_and_never_after_rollback() {
    let system = System::start().await;
    let _probe = start_probe(&system, "a", &[]).await;
    let streams = system.streams();

    let committed = streams
        .publish("probe.stage", &json!({"count": 3, "rollback": false}))
        .await;
    let rolled_back = streams
        .publish("probe.stage", &json!({"count": 2, "rollback": true}))
        .await;

    wait_handled(&system, "worker.probe.work", 3).await;
    settle().await;
    assert_eq!(handled(&system, "worker.probe.work").await.len(), 3);
    assert_eq!(staged_events(&system, &committed).await.len(), 3);
    assert!(staged_events(&system, &rolled_back).await.is_empty());
    assert_eq!(
        system.db().count("probe.writes").await,
        1,
        "the rolled back row is gone too"
    );
    assert_eq!(
        system.db().count("probe.mc_outbox").await,
        0,
        "relayed rows are deleted"
    );
}

#[tokio::test]
async fn an_event_committed_before_a_crash_is_delivered_once_after_restart() {
    let system = System::start().await;
    // The relay holds committed events for a minute: the crash comes first.
    let mut probe = start_probe(&system, "a", &[("MC_OUTBOX_RELAY_DELAY_MS", "60000")]).await;
    let trigger = system
        .streams()
        .publish("probe.stage", &json!({"count": 3, "rollback": false}))
        .await;
    wait::poll(wait::PROMPT, || async {
        (system.db().count("probe.mc_outbox").await == 3).then_some(())
    })
    .await
    .unwrap_or_else(|| system.fail("the events were not staged"));
    probe.process().kill();
    assert!(
        staged_events(&system, &trigger).await.is_empty(),
        "not relayed before the crash"
    );

    let _probe = start_probe(&system, "b", &[]).await;
    let worker = wait_handled(&system, "worker.probe.work", 3).await;
    settle().await;
    assert_eq!(
        handled(&system, "worker.probe.work").await.len(),
        3,
        "{worker:?}"
    );
    assert_eq!(
        staged_events(&system, &trigger).await.len(),
        3,
        "stored once each"
    );
    assert_eq!(system.db().count("probe.mc_outbox").await, 0);
    assert_eq!(system.db().count("probe.writes").await, 1);
}

#[tokio::test]
async fn a_stopping_instance_finishes_the_events_it_holds_and_leaves_the_rest() {
    let system = System::start().await;
    let env = [("PROBE_CONCURRENCY", "2")];
    let mut a = start_probe(&system, "a", &env).await;
    let _b = start_probe(&system, "b", &env).await;
    let streams = system.streams();

    let mut published = BTreeSet::new();
    for seq in 0..30 {
        published.insert(
            streams
                .publish("probe.work", &json!({"seq": seq, "sleep_ms": 100}))
                .await,
        );
    }
    wait::poll(wait::PROMPT, || async {
        let rows = handled(&system, "worker.probe.work").await;
        rows.iter()
            .any(|(_, instance, _)| instance == "a")
            .then_some(())
    })
    .await
    .unwrap_or_else(|| system.fail("instance a handled nothing"));
    let status = a.terminate().await;
    assert!(status.success(), "a stops cleanly: {status}");

    // An instance holds no more events than it is handling, so nothing
    // waits for the ack wait (30 s) to pass.
    let all = wait::poll(Duration::from_secs(12), || async {
        let rows = handled(&system, "worker.probe.work").await;
        (ids(&rows) == published).then_some(rows)
    })
    .await
    .unwrap_or_else(|| system.fail("the events were not all handled after a stopped"));
    settle().await;
    assert_eq!(handled(&system, "worker.probe.work").await.len(), all.len());
    assert_eq!(all.len(), 30, "nothing handled twice");
}
