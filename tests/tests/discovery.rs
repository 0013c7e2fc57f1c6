//! Discovery and the life of instances: the micro protocol as standard NATS
//! tooling sees it, load shared across replicas, instances leaving and
//! joining while the gateway keeps running.
//!
//! The one-second bounds below are behaviour, not performance: the gateway
//! polls for services only every `MC_DISCOVERY_INTERVAL_MS` (5 s by
//! default), so meeting them proves it reacts to announcements and to
//! "no responders" instead of waiting for its next sweep.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use microcore_e2e::{HttpClient, PRODUCTS, System, micro, wait};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The one-second bound on reacting to an instance joining or leaving.
const REACTION: Duration = Duration::from_secs(1);

#[tokio::test]
async fn the_micro_protocol_describes_the_service_and_its_endpoints() {
    // No gateway: this is the service as any NATS tooling sees it.
    let system = System::start().await;
    let products = system.start_products().await;
    let client = system.client();

    let pings = micro::ping(client, PRODUCTS, 1).await;
    assert_eq!(pings.len(), 1, "one instance answers PING: {pings:?}");
    assert_eq!(
        pings[0]["type"], "io.nats.micro.v1.ping_response",
        "{}",
        pings[0]
    );
    assert_eq!(pings[0]["name"], PRODUCTS);
    assert_eq!(pings[0]["id"], products.id());

    let everyone = micro::collect(client, "$SRV.PING", 1, wait::PROMPT).await;
    assert_eq!(
        micro::instance_ids(&everyone),
        BTreeSet::from([products.id().to_owned()])
    );

    let infos = micro::info(client, PRODUCTS, 1).await;
    assert_eq!(infos.len(), 1, "{infos:?}");
    let info = &infos[0];
    assert_eq!(info["type"], "io.nats.micro.v1.info_response", "{info}");
    assert_eq!(info["name"], PRODUCTS);
    assert!(
        info["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{info}"
    );

    let mut routes = BTreeSet::new();
    let mut requests = BTreeSet::new();
    let mut system_endpoints = Vec::new();
    for endpoint in info["endpoints"].as_array().expect("INFO lists endpoints") {
        let name = endpoint["name"].as_str().expect("endpoints are named");
        if endpoint["metadata"]["microcore.system"] == "instance" {
            system_endpoints.push(endpoint["subject"].clone());
            continue;
        }
        if let Some(request) = endpoint["metadata"]["rpc.name"].as_str() {
            assert_eq!(
                endpoint["subject"],
                format!("mc.rpc.{request}"),
                "{endpoint}"
            );
            assert_eq!(endpoint["queue_group"], "q", "{endpoint}");
            requests.insert(request.to_owned());
            continue;
        }
        assert_eq!(
            endpoint["subject"],
            format!("mc.http.products.{name}"),
            "{endpoint}"
        );
        let metadata = &endpoint["metadata"];
        let field = |key: &str| {
            metadata[key]
                .as_str()
                .unwrap_or_else(|| panic!("endpoint {name} has metadata `{key}`: {endpoint}"))
        };
        routes.insert(format!("{} {}", field("http.method"), field("http.path")));
        let timeout: u64 = field("http.timeout_ms")
            .parse()
            .unwrap_or_else(|e| panic!("http.timeout_ms of {name} is a number: {e}"));
        assert!(timeout > 0, "{endpoint}");
        let operation: Value = serde_json::from_str(field("openapi.operation"))
            .unwrap_or_else(|e| panic!("openapi.operation of {name} is JSON: {e}"));
        assert!(operation["responses"].is_object(), "{operation}");
        let schemas: Value = serde_json::from_str(field("openapi.schemas"))
            .unwrap_or_else(|e| panic!("openapi.schemas of {name} is JSON: {e}"));
        assert!(schemas.is_object(), "{schemas}");
    }
    assert_eq!(
        routes,
        BTreeSet::from([
            "GET /products".to_owned(),
            "GET /products/{id}".to_owned(),
            "POST /products".to_owned(),
            "PUT /products/{id}/stock".to_owned(),
        ])
    );
    assert_eq!(requests, BTreeSet::from(["products.quote".to_owned()]));
    // The instance's own endpoint, for the gateway's live views.
    assert_eq!(
        system_endpoints,
        [format!("mc.system.products.{}", products.id())]
    );

    let stats = micro::stats(client, PRODUCTS, 1).await;
    assert_eq!(stats.len(), 1, "{stats:?}");
    assert_eq!(
        stats[0]["type"], "io.nats.micro.v1.stats_response",
        "{}",
        stats[0]
    );
}

/// Requests handled per instance, by id.
async fn handled(system: &System, instances: usize) -> BTreeMap<String, u64> {
    let stats = micro::stats(system.client(), PRODUCTS, instances).await;
    assert_eq!(
        stats.len(),
        instances,
        "every instance answers STATS: {stats:?}"
    );
    stats
        .iter()
        .map(|s| {
            let id = s["id"].as_str().expect("STATS carries the id").to_owned();
            (id, micro::requests_handled(s))
        })
        .collect()
}

/// Sends `GET /products?limit=1` in a loop until stopped; returns how many
/// were sent and the answers that were not 200.
fn background_load(
    http: HttpClient,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let mut sent = 0;
        let mut failures = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            sent += 1;
            match http
                .try_send(http.request(Method::GET, "/products?limit=1"))
                .await
            {
                Ok(reply) if reply.status == StatusCode::OK => {}
                Ok(reply) => failures.push(reply.to_string()),
                Err(e) => failures.push(e.to_string()),
            }
        }
        (sent, failures)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_load_and_one_leaves_without_failing_a_request() {
    let (system, mut first) = System::with_products().await;
    let second = system.start_products().await;

    let before = handled(&system, 2).await;
    for _ in 0..50 {
        system
            .http()
            .get("/products?limit=1")
            .await
            .expect_success(StatusCode::OK);
    }
    let after = handled(&system, 2).await;
    for id in [first.id(), second.id()] {
        let delta = after[id] - before.get(id).copied().unwrap_or(0);
        assert!(
            delta > 0,
            "instance {id} handled none of 50 requests: before {before:?}, after {after:?}"
        );
    }

    // One replica stops while requests keep coming.
    let stop = Arc::new(AtomicBool::new(false));
    let load = background_load(system.http().clone(), stop.clone());
    let status = first.terminate().await;
    assert!(
        status.success(),
        "SIGTERM ends the instance with 0: {status}\n{}",
        system.diagnostics()
    );
    // A second reply would arrive within milliseconds on loopback.
    let remaining = micro::collect(
        system.client(),
        "$SRV.PING.products",
        2,
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(
        micro::instance_ids(&remaining),
        BTreeSet::from([second.id().to_owned()]),
        "the stopped instance deregistered"
    );
    for _ in 0..20 {
        system
            .http()
            .get("/products?limit=1")
            .await
            .expect_success(StatusCode::OK);
    }
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = load.await.expect("the load task does not panic");
    assert!(sent > 0, "requests were sent while the instance stopped");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed while a replica stopped: {failures:#?}\n{}",
        failures.len(),
        system.diagnostics()
    );
}

#[tokio::test]
async fn replicas_of_a_service_share_its_routes_without_conflicts() {
    let (system, _first) = System::with_products().await;
    let _second = system.start_products().await;

    let reply = system.http().get("/system/routes").await;
    let view = reply.expect_success(StatusCode::OK);
    let routes: BTreeSet<String> = view["routes"]
        .as_array()
        .unwrap_or_else(|| panic!("/system/routes lists routes: {reply}"))
        .iter()
        .map(|r| {
            assert_eq!(r["service"], PRODUCTS, "{r}");
            format!(
                "{} {}",
                r["method"].as_str().unwrap_or("?"),
                r["path"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert_eq!(
        routes,
        BTreeSet::from([
            "GET /products".to_owned(),
            "GET /products/{id}".to_owned(),
            "POST /products".to_owned(),
            "PUT /products/{id}/stock".to_owned(),
        ])
    );
    assert_eq!(
        view["conflicts"],
        json!([]),
        "two instances of one service are replicas, not rivals: {reply}"
    );
}

#[tokio::test]
async fn without_instances_routes_fail_fast_and_a_new_instance_is_routed_at_once() {
    let (mut system, mut first) = System::with_products().await;
    let mut second = system.start_products().await;
    let gateway_pid = system.gateway().process().pid();

    for instance in [&mut first, &mut second] {
        let status = instance.terminate().await;
        assert!(
            status.success(),
            "SIGTERM ends the instance with 0: {status}"
        );
    }

    let http = system.http();
    for request in [
        http.request(Method::GET, "/products"),
        http.request(Method::GET, "/products/1"),
        http.request(Method::POST, "/products")
            .json(&json!({"name": "Nobody home", "price": 1.0})),
    ] {
        let reply = http.send(request).await;
        reply.expect_error(StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            reply.elapsed < REACTION,
            "503 took {:?}, not an immediate answer: {reply}",
            reply.elapsed
        );
    }

    let third = system.start_products().await;
    let left = REACTION.saturating_sub(third.announced_at().elapsed());
    system
        .wait_for_status("/products?limit=1", StatusCode::OK, left)
        .await;
    let gateway = system.gateway().process();
    assert_eq!(gateway.pid(), gateway_pid);
    assert!(gateway.exit_status().is_none(), "the gateway kept running");
}

#[tokio::test]
async fn a_service_started_after_the_gateway_is_documented_within_a_second() {
    let mut system = System::start().await;
    system.start_gateway().await;
    let paths_of = |doc: &Value| -> BTreeSet<String> {
        doc["paths"]
            .as_object()
            .map(|paths| paths.keys().cloned().collect())
            .unwrap_or_default()
    };

    let before = system.http().get("/openapi.json").await;
    assert_eq!(before.status, StatusCode::OK, "{before}");
    assert!(
        !paths_of(&before.json()).contains("/products"),
        "no products routes before the service runs: {before}"
    );

    let products = system.start_products().await;
    let left = REACTION.saturating_sub(products.announced_at().elapsed());
    let http = system.http();
    system
        .wait_for(
            "/openapi.json documents the products routes after the announcement",
            left,
            || async {
                let reply = http.get("/openapi.json").await;
                let paths = paths_of(&reply.json());
                (paths.contains("/products") && paths.contains("/products/{id}")).then_some(())
            },
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_during_sigterm_completes() {
    let (system, mut products) = System::with_products().await;
    let created = system
        .http()
        .post_json("/products", &json!({"name": "Slow", "price": 3.0}))
        .await
        .expect_success(StatusCode::CREATED);
    let id = created["id"].as_i64().expect("an integer id");

    // Hold the table so the handler blocks inside its query.
    let mut lock = system.db().pool().begin().await.expect("a transaction");
    sqlx::query("LOCK TABLE products.products IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("locking the table");

    let http = system.http().clone();
    let in_flight = tokio::spawn(async move { http.get(&format!("/products/{id}")).await });
    let database = system.db().name().to_owned();
    system
        .wait_for(
            "the handler's query waits for the lock",
            wait::PROMPT,
            || async {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = $1 AND wait_event_type = 'Lock'",
                )
                .bind(&database)
                .fetch_one(system.db().pool())
                .await
                .ok()?;
                (waiting > 0).then_some(())
            },
        )
        .await;

    let mut down = system.subscribe(&system.subject("discovery.down")).await;
    products.process().send_sigterm();
    let announced = tokio::time::timeout(wait::SHUTDOWN, async {
        while let Some(message) = down.next().await {
            let payload: Value = serde_json::from_slice(&message.payload).unwrap_or_default();
            if payload["id"] == products.id() {
                return true;
            }
        }
        false
    })
    .await;
    if announced != Ok(true) {
        system.fail("the instance did not announce its departure after SIGTERM");
    }
    assert!(
        products.process().exit_status().is_none(),
        "the instance exited with a request in flight"
    );

    lock.commit().await.expect("releasing the lock");
    let reply = in_flight.await.expect("the request task does not panic");
    assert_eq!(reply.expect_success(StatusCode::OK), created);
    let status = products.process().wait_for_exit(wait::SHUTDOWN).await;
    assert!(status.success(), "graceful shutdown exits with 0: {status}");
}
