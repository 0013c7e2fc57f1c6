//! Rolling out a new version while the system serves:
//!
//! - a rolling restart of every replica under continuous traffic fails no
//!   request and loses no event;
//! - a domain the gateway has never seen is routed and documented as soon
//!   as it announces itself, and once its last instance stops it leaves the
//!   document at once, answers 503 for the route retention, then 404;
//! - a canary (a newer version beside the current one) adds its routes to
//!   the service's, shares the routes both have, has the route they
//!   describe differently reported and documented as the newest version
//!   describes it, and takes all of that with it when it stops.
//!
//! What this suite does not repeat: discovery.rs shows one replica leaving
//! under light load, 503s without instances and a restarted service routed
//! within a second; openapi.rs what the document holds for one service.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use microcore_e2e::{HttpClient, PRODUCTS, ServiceInstance, System, free_port, micro, wait};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

/// How long the routes of a vanished service answer 503 in these tests:
/// longer than a stopping instance takes to drain and exit.
const RETENTION: Duration = Duration::from_secs(3);

/// The bound on reacting to an instance joining or leaving.
const REACTION: Duration = Duration::from_secs(1);

/// Starts `bin` with a health listener on a free port and returns once it
/// is ready to take work: it announced itself and `/health/ready` answers
/// 200 (the readiness an orchestrator waits for before it stops the next
/// replica).
async fn start_ready(system: &System, bin: &str, service: &str) -> ServiceInstance {
    let health = format!("127.0.0.1:{}", free_port());
    let instance = system
        .start_service(bin, service, &[("MC_HEALTH_ADDR", &health)])
        .await;
    let probe = HttpClient::new(format!("http://{health}"));
    system
        .wait_for(
            &format!("{service} at {health} answers /health/ready with 200"),
            wait::BOOT,
            || async {
                let reply = probe
                    .try_send(probe.request(Method::GET, "/health/ready"))
                    .await
                    .ok()?;
                (reply.status == StatusCode::OK).then_some(())
            },
        )
        .await;
    instance
}

// ---- a rolling restart under load ----

/// Client loops reading the same product, creating products, and
/// registering users (which hash passwords: a few are plenty).
const READERS: usize = 8;
const PRODUCT_WRITERS: usize = 4;
const USER_WRITERS: usize = 2;

/// What one client loop sends, again and again.
#[derive(Debug, Clone, Copy)]
enum Traffic {
    ReadProduct(i64),
    CreateProduct,
    CreateUser,
}

/// What one client loop saw.
#[derive(Debug, Default)]
struct LoopReport {
    sent: usize,
    /// Every answer that was not the expected success, with its status
    /// and body, or the transport error.
    failures: Vec<String>,
    products: Vec<i64>,
    users: Vec<i64>,
}

/// Sends `traffic` until `stop`; counts every answer in `answered`.
fn client_loop(
    http: HttpClient,
    traffic: Traffic,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<LoopReport> {
    tokio::spawn(async move {
        let mut report = LoopReport::default();
        while !stop.load(Ordering::Relaxed) {
            report.sent += 1;
            let n = report.sent;
            let (request, expected) = match traffic {
                Traffic::ReadProduct(id) => (
                    http.request(Method::GET, &format!("/products/{id}")),
                    StatusCode::OK,
                ),
                Traffic::CreateProduct => (
                    http.request(Method::POST, "/products")
                        .json(&json!({"name": format!("Rolling {n}"), "price": 1.5, "stock": 3})),
                    StatusCode::CREATED,
                ),
                Traffic::CreateUser => (
                    http.request(Method::POST, "/users").json(&json!({
                        "email": format!("rolling-{}@example.com", uuid::Uuid::new_v4().simple()),
                        "password": "correct horse battery",
                        "name": "Ada",
                    })),
                    StatusCode::CREATED,
                ),
            };
            let reply = http.try_send(request).await;
            answered.fetch_add(1, Ordering::Relaxed);
            let reply = match reply {
                Ok(reply) => reply,
                Err(e) => {
                    report.failures.push(format!("{traffic:?}: {e}"));
                    continue;
                }
            };
            let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
            if reply.status != expected || body["success"] != true {
                report.failures.push(format!("{traffic:?}: {reply}"));
                continue;
            }
            let id = body["data"]["id"].as_i64();
            match (traffic, id) {
                (Traffic::CreateProduct, Some(id)) => report.products.push(id),
                (Traffic::CreateUser, Some(id)) => report.users.push(id),
                (Traffic::ReadProduct(_), _) => {}
                _ => report
                    .failures
                    .push(format!("{traffic:?}: no id in {reply}")),
            }
        }
        report
    })
}

/// Waits until the client loops have answered `more` requests beyond
/// what they had at `since`.
async fn wait_for_traffic(system: &System, answered: &AtomicUsize, since: usize, more: usize) {
    system
        .wait_for(
            &format!("{more} more requests answered"),
            Duration::from_secs(60),
            || async { (answered.load(Ordering::Relaxed) >= since + more).then_some(()) },
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_fails_no_request_and_loses_no_event() {
    let mut system = System::builder()
        .gateway_env("MC_AUTH_SECRET", SECRET)
        .service_env("MC_AUTH_SECRET", SECRET)
        .start()
        .await;
    system.start_gateway().await;
    let mut replicas = Vec::new();
    for bin in ["products", "products", "notifications", "notifications"] {
        replicas.push((bin, start_ready(&system, bin, bin).await));
    }
    let _users = start_ready(&system, "users", "users").await;
    system.wait_until_routable().await;
    // An authenticated route of users: 401 once the gateway knows it.
    system
        .wait_for_status("/users/me", StatusCode::UNAUTHORIZED, wait::BOOT)
        .await;
    let seed = system
        .http()
        .post_json("/products", &json!({"name": "Seed", "price": 2.0}))
        .await
        .expect_success(StatusCode::CREATED)["id"]
        .as_i64()
        .expect("a product id");

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    // Enough concurrent clients that every replica has requests in flight
    // whenever it is told to stop.
    let loops: Vec<_> = std::iter::repeat_n(Traffic::ReadProduct(seed), READERS)
        .chain(std::iter::repeat_n(Traffic::CreateProduct, PRODUCT_WRITERS))
        .chain(std::iter::repeat_n(Traffic::CreateUser, USER_WRITERS))
        .map(|traffic| {
            client_loop(
                system.http().clone(),
                traffic,
                stop.clone(),
                answered.clone(),
            )
        })
        .collect();
    wait_for_traffic(&system, &answered, 0, 100).await;

    // One replica at a time: drain it, replace it, wait until the new one
    // is ready and has had traffic, then the next.
    for (bin, instance) in &mut replicas {
        let bin = *bin;
        let status = instance.terminate().await;
        if !status.success() {
            system.fail(format!(
                "{bin} {} exited with {status} on SIGTERM",
                instance.id()
            ));
        }
        *instance = start_ready(&system, bin, bin).await;
        let now = answered.load(Ordering::Relaxed);
        wait_for_traffic(&system, &answered, now, 100).await;
    }

    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    let mut failures = Vec::new();
    let mut products = Vec::new();
    let mut users = Vec::new();
    for handle in loops {
        let report = handle.await.expect("a client loop does not panic");
        sent += report.sent;
        failures.extend(report.failures);
        products.extend(report.products);
        users.extend(report.users);
    }
    for failure in &failures {
        eprintln!("failed during the rollout: {failure}");
    }
    if !failures.is_empty() {
        system.fail(format!(
            "{} of {sent} requests failed during the rolling restart:\n{}",
            failures.len(),
            failures.join("\n")
        ));
    }
    assert!(
        !products.is_empty() && !users.is_empty(),
        "products and users were created during the rollout"
    );
    eprintln!(
        "rolling restart: {sent} requests, {} products and {} users created, no failure",
        products.len(),
        users.len()
    );

    // The replacements took the traffic.
    let new_ids: BTreeSet<String> = replicas
        .iter()
        .filter(|(bin, _)| *bin == PRODUCTS)
        .map(|(_, instance)| instance.id().to_owned())
        .collect();
    let stats = micro::stats(system.client(), PRODUCTS, 2).await;
    assert_eq!(micro::instance_ids(&stats), new_ids, "{stats:?}");
    for instance in &stats {
        assert!(
            micro::requests_handled(instance) > 0,
            "a new replica handled no request: {instance}"
        );
    }

    // Every product created has its event, once.
    let created: BTreeSet<i64> = products.iter().copied().collect();
    let streams = system.streams();
    let events = system
        .wait_for(
            "every created product has its product.created event",
            Duration::from_secs(15),
            || async {
                let events = streams.events("product.created").await;
                let announced: BTreeSet<i64> = events
                    .iter()
                    .filter_map(|e| e["payload"]["id"].as_i64())
                    .collect();
                created.is_subset(&announced).then_some(events)
            },
        )
        .await;
    let mut per_product: BTreeMap<i64, usize> = BTreeMap::new();
    for event in &events {
        if let Some(id) = event["payload"]["id"].as_i64() {
            *per_product.entry(id).or_default() += 1;
        }
    }
    let repeated: Vec<_> = per_product.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "events stored twice: {repeated:?}");

    // Every user created was welcomed, once, by whichever notifications
    // replica was running. Usually within seconds; but an event the server
    // sent just as a replica stopped reaches no handler and comes back only
    // after the consumers' 30 s ack wait, late but not lost.
    let welcomed_after = Instant::now();
    let expected: BTreeSet<String> = users.iter().map(i64::to_string).collect();
    let pool = system.db().pool();
    let rows: Vec<(String, i64)> = system
        .wait_for(
            "every created user has its welcome notification",
            Duration::from_secs(45),
            || async {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT user_id, count(*) FROM notifications.notifications GROUP BY user_id",
                )
                .fetch_all(pool)
                .await
                .ok()?;
                let welcomed: BTreeSet<String> = rows.iter().map(|(u, _)| u.clone()).collect();
                expected.is_subset(&welcomed).then_some(rows)
            },
        )
        .await;
    let twice: Vec<_> = rows.iter().filter(|(_, n)| *n > 1).collect();
    assert!(twice.is_empty(), "users notified twice: {twice:?}");
    eprintln!(
        "every notification arrived {:?} after the load stopped",
        welcomed_after.elapsed()
    );
}

// ---- a domain the gateway has never seen ----

fn paths(doc: &Value) -> BTreeSet<String> {
    doc["paths"]
        .as_object()
        .map(|paths| paths.keys().cloned().collect())
        .unwrap_or_default()
}

async fn openapi(system: &System) -> Value {
    let reply = system.http().get("/openapi.json").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply}");
    reply.json()
}

/// `/system/routes` as `METHOD path` → the live versions serving it.
async fn routes(system: &System) -> (BTreeMap<String, Vec<String>>, Vec<Value>) {
    let view = system
        .http()
        .get("/system/routes")
        .await
        .expect_success(StatusCode::OK);
    let routes = view["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let versions = r["versions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            (
                format!(
                    "{} {}",
                    r["method"].as_str().unwrap_or("?"),
                    r["path"].as_str().unwrap_or("?")
                ),
                versions,
            )
        })
        .collect();
    let conflicts = view["conflicts"].as_array().cloned().unwrap_or_default();
    (routes, conflicts)
}

/// `/system/status`: service name → (live, instance id → version).
async fn fleet(system: &System) -> BTreeMap<String, (bool, BTreeMap<String, String>)> {
    let view = system
        .http()
        .get("/system/status")
        .await
        .expect_success(StatusCode::OK);
    view["services"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let instances = s["instances"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    (
                        i["id"].as_str().unwrap_or_default().to_owned(),
                        i["version"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            (
                s["name"].as_str().unwrap_or_default().to_owned(),
                (s["live"] == true, instances),
            )
        })
        .collect()
}

/// Subscribes to down announcements: the moment the gateway hears one is
/// the moment the retention of the routes left behind starts.
async fn departures(system: &System) -> async_nats::Subscriber {
    system.subscribe(&system.subject("discovery.down")).await
}

/// Waits for the down announcement of instance `id`; returns when it came.
async fn departed(system: &System, departures: &mut async_nats::Subscriber, id: &str) -> Instant {
    let heard = tokio::time::timeout(wait::SHUTDOWN, async {
        while let Some(message) = departures.next().await {
            let payload: Value = serde_json::from_slice(&message.payload).unwrap_or_default();
            if payload["id"] == id {
                return Some(Instant::now());
            }
        }
        None
    })
    .await;
    match heard {
        Ok(Some(at)) => at,
        _ => system.fail(format!("instance {id} did not announce its departure")),
    }
}

/// Asserts `method path` (with a JSON `body`) answers 503 now, keeps
/// doing so until the retention after `down` is nearly over, and answers
/// 404 soon after it ends.
async fn assert_retained_then_removed(
    system: &System,
    method: Method,
    path: &str,
    body: &Value,
    down: Instant,
) {
    let http = system.http();
    let send = || http.send(http.request(method.clone(), path).json(body));
    send().await.expect_error(StatusCode::SERVICE_UNAVAILABLE);
    // The gateway heard the announcement when the test did, give or take
    // the scheduling of two processes.
    let slack = Duration::from_millis(300);
    let removed = system
        .wait_for(
            &format!("{method} {path} answers 404 after the retention"),
            RETENTION + REACTION,
            || async {
                let reply = send().await;
                match reply.status {
                    StatusCode::NOT_FOUND => Some(Ok(down.elapsed())),
                    StatusCode::SERVICE_UNAVAILABLE => None,
                    _ => Some(Err(reply)),
                }
            },
        )
        .await;
    match removed {
        Ok(after) => assert!(
            after + slack >= RETENTION,
            "{method} {path} answered 404 {after:?} after the departure, before the {RETENTION:?} retention"
        ),
        Err(reply) => system.fail(format!("{method} {path} during the retention: {reply}")),
    }
    send().await.expect_error(StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_domain_is_served_at_once_and_removed_when_its_last_instance_stops() {
    let mut system = System::builder()
        .gateway_env("MC_AUTH_SECRET", SECRET)
        .gateway_env("MC_ROUTE_RETENTION_SECS", RETENTION.as_secs())
        .service_env("MC_AUTH_SECRET", SECRET)
        .start()
        .await;
    system.start_gateway().await;
    let register = || {
        json!({
            "email": format!("new-{}@example.com", uuid::Uuid::new_v4().simple()),
            "password": "correct horse battery",
            "name": "Ada",
        })
    };
    let http = system.http().clone();
    http.post_json("/users", &register())
        .await
        .expect_error(StatusCode::NOT_FOUND);
    assert!(!paths(&openapi(&system).await).contains("/users"));

    // The first instance of a domain the gateway never saw.
    let mut first = system.start_service("users", "users", &[]).await;
    let left = REACTION.saturating_sub(first.announced_at().elapsed());
    system
        .wait_for(
            "POST /users answers 201 after the announcement",
            left,
            || async {
                let reply = http.post_json("/users", &register()).await;
                (reply.status == StatusCode::CREATED).then_some(())
            },
        )
        .await;
    let doc = openapi(&system).await;
    let documented = paths(&doc);
    for path in ["/users", "/users/me", "/auth/login"] {
        assert!(
            documented.contains(path),
            "{path} is documented: {documented:?}"
        );
    }
    assert!(
        doc["paths"]["/users"]["post"].is_object(),
        "{}",
        doc["paths"]["/users"]
    );
    let (table, _) = routes(&system).await;
    assert!(table.contains_key("POST /users"), "{table:?}");

    // One of two instances leaving changes nothing.
    let mut second = system.start_service("users", "users", &[]).await;
    let status = first.terminate().await;
    assert!(status.success(), "SIGTERM ends users with 0: {status}");
    http.post_json("/users", &register())
        .await
        .expect_success(StatusCode::CREATED);
    assert!(paths(&openapi(&system).await).contains("/users"));

    // The last one leaving: out of the document at once, 503 for the
    // retention, then gone.
    let mut downs = departures(&system).await;
    second.process().send_sigterm();
    let down = departed(&system, &mut downs, second.id()).await;
    system
        .wait_for(
            "the users operations leave /openapi.json",
            REACTION,
            || async {
                let documented = paths(&openapi(&system).await);
                (!documented.contains("/users") && !documented.contains("/users/me")).then_some(())
            },
        )
        .await;
    let services = fleet(&system).await;
    assert_eq!(
        services
            .get("users")
            .map(|(live, instances)| (*live, instances.len())),
        Some((false, 0)),
        "users is listed as not live during the retention: {services:?}"
    );
    let (table, _) = routes(&system).await;
    assert_eq!(
        table.get("POST /users"),
        Some(&Vec::new()),
        "a retained route is listed without live versions: {table:?}"
    );
    // What reached the instance before it unsubscribed, it answers; once
    // it is gone, nobody does.
    let status = second.process().wait_for_exit(wait::SHUTDOWN).await;
    assert!(status.success(), "SIGTERM ends users with 0: {status}");
    let reply = http.post_json("/users", &register()).await;
    let error = reply.expect_error(StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        error["error"]
            .as_str()
            .unwrap_or_default()
            .contains("users"),
        "{reply}"
    );
    let login = json!({"email": "nobody@example.com", "password": "correct horse battery"});
    assert_retained_then_removed(&system, Method::POST, "/auth/login", &login, down).await;
    http.post_json("/users", &register())
        .await
        .expect_error(StatusCode::NOT_FOUND);
    let (table, _) = routes(&system).await;
    assert!(!table.keys().any(|r| r.contains("/users")), "{table:?}");
    assert!(!fleet(&system).await.contains_key("users"));
    let gateway = system.gateway().process();
    assert!(gateway.exit_status().is_none(), "the gateway kept running");
}

// ---- a canary ----

const GET_PRODUCT: &str = "GET /products/{id}";
const AVAILABILITY: &str = "GET /products/{id}/availability";

/// The canary's own endpoint name (its plugin's).
const AVAILABILITY_ENDPOINT: &str = "product_availability";

/// Requests one endpoint of the instance in `stats` has handled.
fn handled_by(stats: &[Value], instance: &str, endpoint: &str) -> u64 {
    stats
        .iter()
        .find(|s| s["id"] == instance)
        .and_then(|s| s["endpoints"].as_array())
        .into_iter()
        .flatten()
        .filter(|e| e["name"] == endpoint)
        .filter_map(|e| e["num_requests"].as_u64())
        .sum()
}

/// How many times the gateway's log says a route's versions differ.
fn version_conflicts_logged(system: &mut System) -> usize {
    let log = std::fs::read_to_string(system.gateway().process().log_path()).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("live versions describe a route differently"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_adds_its_routes_shares_the_common_ones_and_takes_its_own_when_it_stops() {
    let mut system = System::builder()
        .gateway_env("MC_ROUTE_RETENTION_SECS", RETENTION.as_secs())
        // Sweeps while the canary runs: a conflict is logged once all the same.
        .gateway_env("MC_DISCOVERY_INTERVAL_MS", 1000)
        .start()
        .await;
    system.start_gateway().await;
    let stable = system.start_products().await;
    system.wait_until_routable().await;
    let product = system
        .http()
        .post_json(
            "/products",
            &json!({"name": "Teapot", "price": 12.5, "stock": 2}),
        )
        .await
        .expect_success(StatusCode::CREATED)["id"]
        .as_i64()
        .expect("a product id");
    let availability = format!("/products/{product}/availability");
    system
        .http()
        .get(&availability)
        .await
        .expect_error(StatusCode::NOT_FOUND);
    let before = openapi(&system).await;
    assert!(
        !before["paths"]["/products/{id}"]["get"]
            .to_string()
            .contains("StockedProduct"),
        "{}",
        before["paths"]["/products/{id}"]
    );

    let mut canary = system.start_service("products-canary", PRODUCTS, &[]).await;
    let left = REACTION.saturating_sub(canary.announced_at().elapsed());
    let (table, conflicts) = system
        .wait_for("the canary's route is in the table", left, || async {
            let (table, conflicts) = routes(&system).await;
            table
                .contains_key(AVAILABILITY)
                .then_some((table, conflicts))
        })
        .await;

    // Both versions are listed, each with its instance.
    let services = fleet(&system).await;
    let instances = &services[PRODUCTS].1;
    let stable_version = instances[stable.id()].clone();
    let canary_version = instances[canary.id()].clone();
    assert!(canary_version.ends_with("-canary"), "{instances:?}");
    assert_ne!(stable_version, canary_version);

    // The union of routes: shared ones by both, the new one by the canary.
    assert_eq!(
        table[GET_PRODUCT],
        [canary_version.clone(), stable_version.clone()],
        "{table:?}"
    );
    assert_eq!(
        table[AVAILABILITY],
        std::slice::from_ref(&canary_version),
        "{table:?}"
    );
    assert_eq!(
        table["POST /products"],
        [canary_version.clone(), stable_version.clone()]
    );

    // The route they describe differently is reported, naming both.
    let [conflict] = &conflicts[..] else {
        system.fail(format!("one conflict, the changed route's: {conflicts:#?}"));
    };
    assert_eq!(conflict["kind"], "versions", "{conflict}");
    assert_eq!(conflict["service"], PRODUCTS, "{conflict}");
    assert_eq!(
        format!(
            "{} {}",
            conflict["method"].as_str().unwrap_or("?"),
            conflict["path"].as_str().unwrap_or("?")
        ),
        GET_PRODUCT
    );
    assert_eq!(
        conflict["versions"],
        json!([canary_version, stable_version]),
        "{conflict}"
    );
    assert_eq!(
        conflict["documented_version"],
        canary_version.as_str(),
        "{conflict}"
    );
    let reason = conflict["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&canary_version) && reason.contains(&stable_version),
        "{conflict}"
    );

    // The document: the canary's route, and the changed one as the newer
    // version describes it.
    let doc = openapi(&system).await;
    assert!(
        doc["paths"]["/products/{id}/availability"]["get"].is_object(),
        "{}",
        doc["paths"]
    );
    assert!(
        doc["paths"]["/products/{id}"]["get"]
            .to_string()
            .contains("StockedProduct"),
        "{}",
        doc["paths"]["/products/{id}"]
    );
    assert!(doc["components"]["schemas"]["StockedProduct"].is_object());

    // Traffic to the shared route reaches both versions: their answers
    // differ, and both instances count requests.
    let before_stats = micro::stats(system.client(), PRODUCTS, 2).await;
    let (mut from_canary, mut from_stable) = (0, 0);
    for _ in 0..40 {
        let data = system
            .http()
            .get(&format!("/products/{product}"))
            .await
            .expect_success(StatusCode::OK);
        assert_eq!(data["name"], "Teapot", "{data}");
        match data.get("in_stock") {
            Some(in_stock) => {
                assert_eq!(in_stock, true, "{data}");
                from_canary += 1;
            }
            None => from_stable += 1,
        }
    }
    assert!(
        from_canary > 0 && from_stable > 0,
        "40 requests: {from_canary} answered by the canary, {from_stable} by the current release"
    );
    // The canary-only route reaches the canary, every time.
    for _ in 0..20 {
        let data = system
            .http()
            .get(&availability)
            .await
            .expect_success(StatusCode::OK);
        assert_eq!(data, json!({"id": product, "in_stock": true}));
    }
    let after_stats = micro::stats(system.client(), PRODUCTS, 2).await;
    for id in [stable.id(), canary.id()] {
        let delta = handled_by(&after_stats, id, "get_product")
            - handled_by(&before_stats, id, "get_product");
        assert!(
            delta > 0,
            "instance {id} served none of GET /products/{{id}}"
        );
    }
    assert_eq!(
        handled_by(&after_stats, canary.id(), AVAILABILITY_ENDPOINT)
            - handled_by(&before_stats, canary.id(), AVAILABILITY_ENDPOINT),
        20
    );

    // Through a few discovery sweeps, the conflict was logged once.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(version_conflicts_logged(&mut system), 1);

    // The canary stops: its route leaves the document and the table's
    // live routes at once, answers 503 for the retention, then 404; the
    // conflict is gone, the shared route is the current release's.
    let mut downs = departures(&system).await;
    canary.process().send_sigterm();
    let down = departed(&system, &mut downs, canary.id()).await;
    let (table, conflicts) = system
        .wait_for(
            "the canary is gone from the route table",
            REACTION,
            || async {
                let (table, conflicts) = routes(&system).await;
                (table[GET_PRODUCT] == [stable_version.clone()]).then_some((table, conflicts))
            },
        )
        .await;
    assert!(conflicts.is_empty(), "{conflicts:#?}");
    assert_eq!(
        table.get(AVAILABILITY),
        Some(&Vec::new()),
        "retained: {table:?}"
    );
    let doc = openapi(&system).await;
    assert!(
        doc["paths"]["/products/{id}/availability"].is_null(),
        "{}",
        doc["paths"]
    );
    assert!(
        !doc["paths"]["/products/{id}"]["get"]
            .to_string()
            .contains("StockedProduct"),
        "{}",
        doc["paths"]["/products/{id}"]
    );
    let services = fleet(&system).await;
    assert_eq!(
        services[PRODUCTS].1,
        BTreeMap::from([(stable.id().to_owned(), stable_version.clone())])
    );
    // The requests that reached the canary before it unsubscribed, it
    // answers while it drains; once it has exited, only the current
    // release answers.
    let status = canary.process().wait_for_exit(wait::SHUTDOWN).await;
    assert!(status.success(), "SIGTERM ends the canary with 0: {status}");
    for _ in 0..10 {
        let data = system
            .http()
            .get(&format!("/products/{product}"))
            .await
            .expect_success(StatusCode::OK);
        assert!(data.get("in_stock").is_none(), "{data}");
    }
    assert_retained_then_removed(&system, Method::GET, &availability, &Value::Null, down).await;
    let (table, _) = routes(&system).await;
    assert!(!table.contains_key(AVAILABILITY), "{table:?}");
}
