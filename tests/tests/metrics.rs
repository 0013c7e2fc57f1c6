//! The live figures of a running system, from the gateway: the event
//! topology (`/system/events`) built from every instance's bus counters,
//! the gateway's own Prometheus metrics (`/metrics`), and every service
//! instance's, listed for Prometheus service discovery
//! (`/system/metrics/targets`) and served through the gateway
//! (`/system/metrics/{service}/{instance}`). After real traffic: the shop's
//! order flow, and the `probe` service's failing subscriber. Distributed
//! over NATS and Postgres, and in the embedded process, where each
//! instance's figures must still be its own.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use microcore_e2e::otlp::Collector;
use microcore_e2e::{Embedded, Front, SHOP, System, wait};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

/// Subscribers of `order.placed` in the shop.
const RESERVE_STOCK: &str = "products.reserve_stock.order.placed";
const NOTIFY_ORDER: &str = "notifications.order_placed.order.placed";

// ---- reading Prometheus text ----

/// One sample of the Prometheus text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| parse_sample(line).unwrap_or_else(|| panic!("not a sample: {line}")))
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find('{') {
        Some(brace) => (&line[..brace], &line[brace + 1..]),
        None => {
            let (name, value) = line.split_once(' ')?;
            return Some(Sample {
                name: name.to_owned(),
                labels: BTreeMap::new(),
                value: value.split_whitespace().next()?.parse().ok()?,
            });
        }
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest.chars();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.push(chars.next()?),
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        match chars.next()? {
            ',' => continue,
            '}' => break,
            _ => return None,
        }
    }
    let value = chars.as_str().split_whitespace().next()?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value: if value == "+Inf" {
            f64::INFINITY
        } else {
            value.parse().ok()?
        },
    })
}

/// The sum of the samples named `name` carrying every label of `with`.
fn total(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[test]
fn the_sample_reader_reads_labels_with_braces_and_escapes() {
    let parsed = samples(
        "# TYPE x counter\nx_total{http_route=\"/products/{id}\",note=\"a \\\"b\\\"\"} 3\ny 1.5\n",
    );
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[0].labels["http_route"], "/products/{id}");
    assert_eq!(parsed[0].labels["note"], "a \"b\"");
    assert_eq!(
        total(&parsed, "x_total", &[("http_route", "/products/{id}")]),
        3.0
    );
    assert_eq!(total(&parsed, "y", &[]), 1.5);
}

// ---- the views ----

async fn topology(front: &impl Front) -> Value {
    front
        .http()
        .get("/system/events")
        .await
        .expect_success(StatusCode::OK)
}

fn event<'a>(topology: &'a Value, name: &str) -> Option<&'a Value> {
    topology["events"]
        .as_array()?
        .iter()
        .find(|e| e["event"] == name)
}

fn subscriber<'a>(event: &'a Value, name: &str) -> Option<&'a Value> {
    event["subscribers"]
        .as_array()?
        .iter()
        .find(|s| s["subscriber"] == name)
}

fn publisher<'a>(event: &'a Value, plugin: &str) -> Option<&'a Value> {
    event["publishers"]
        .as_array()?
        .iter()
        .find(|p| p["plugin"] == plugin)
}

/// Polls the topology until `ready` accepts it (counters move when a
/// handler's ack is sent, a moment after its effects are visible).
async fn topology_where(front: &impl Front, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let last = std::cell::RefCell::new(Value::Null);
    let found = wait::poll(Duration::from_secs(15), || {
        let (last, ready) = (&last, &ready);
        async move {
            let view = topology(front).await;
            let done = ready(&view);
            *last.borrow_mut() = view.clone();
            done.then_some(view)
        }
    })
    .await;
    found.unwrap_or_else(|| {
        let last = last.into_inner();
        front.fail(format!("/system/events never showed {what}: {last:#}"))
    })
}

/// `GET /metrics` of the gateway, parsed.
async fn gateway_metrics(front: &impl Front) -> Vec<Sample> {
    let reply = front.http().get("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply}");
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{reply}"
    );
    samples(&reply.text())
}

/// `(service, instance id) → metrics path` of every scrape target, after
/// checking that each is scraped through the gateway as the client
/// addressed it.
async fn scrape_targets(front: &impl Front) -> BTreeMap<(String, String), String> {
    let reply = front.http().get("/system/metrics/targets").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply}");
    let address = front.http().base().trim_start_matches("http://").to_owned();
    let targets = reply.json();
    let targets = targets
        .as_array()
        .expect("a bare list, as Prometheus wants");
    targets
        .iter()
        .map(|target| {
            assert_eq!(target["targets"], json!([address]), "{target}");
            let labels = &target["labels"];
            let (service, id) = (
                labels["service"].as_str().expect("a service label"),
                labels["instance_id"]
                    .as_str()
                    .expect("an instance_id label"),
            );
            let path = labels["__metrics_path__"].as_str().expect("a metrics path");
            assert_eq!(path, format!("/system/metrics/{service}/{id}"), "{target}");
            ((service.to_owned(), id.to_owned()), path.to_owned())
        })
        .collect()
}

/// The metrics of one instance through the gateway, after checking that
/// they are that instance's own.
async fn instance_metrics(front: &impl Front, path: &str, service: &str, id: &str) -> Vec<Sample> {
    let reply = front.http().get(path).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply}");
    let parsed = samples(&reply.text());
    assert_eq!(
        total(
            &parsed,
            "target_info",
            &[("service_name", service), ("service_instance_id", id)]
        ),
        1.0,
        "{path} is not {service} {id}:\n{}",
        reply.text()
    );
    assert_eq!(total(&parsed, "microcore_transport_connected", &[]), 1.0);
    parsed
}

// ---- the shop ----

/// A customer orders a teapot; waits until the stock is reserved and the
/// customer notified. Returns the order id.
async fn order_a_teapot(shop: &impl Front) -> i64 {
    let account = shop
        .http()
        .sign_up("ada@example.com", "correct horse battery")
        .await;
    let teapot = shop
        .http()
        .post_json(
            "/products",
            &json!({"name": "Teapot", "price": 12.5, "stock": 10}),
        )
        .await
        .expect_success(StatusCode::CREATED);
    let http = shop.http();
    let placed = http
        .send(
            http.request(Method::POST, "/orders")
                .bearer_auth(&account.token)
                .json(&json!({"lines": [{"product_id": teapot["id"], "quantity": 2}]})),
        )
        .await
        .expect_success(StatusCode::CREATED);
    let order_id = placed["id"].as_i64().expect("an order id");
    let settled = wait::poll(Duration::from_secs(15), || async {
        let order = http
            .send(
                http.request(Method::GET, &format!("/orders/{order_id}"))
                    .bearer_auth(&account.token),
            )
            .await;
        let notified = http
            .send(
                http.request(Method::GET, "/notifications")
                    .bearer_auth(&account.token),
            )
            .await;
        let reserved = order.json()["data"]["status"] == "reserved";
        let count = notified.json()["data"].as_array().map_or(0, Vec::len);
        (reserved && count >= 2).then_some(())
    })
    .await;
    settled.unwrap_or_else(|| shop.fail("the order was never reserved and notified"));
    order_id
}

/// The topology once the order's events are counted everywhere.
async fn topology_after_order(shop: &impl Front) -> Value {
    let view = topology_where(shop, "order.placed published and handled twice", |view| {
        let Some(placed) = event(view, "order.placed") else {
            return false;
        };
        let handled =
            |name| subscriber(placed, name).is_some_and(|s| s["handled"].as_u64() >= Some(1));
        publisher(placed, "orders.place_order").is_some_and(|p| p["published"].as_u64() >= Some(1))
            && handled(RESERVE_STOCK)
            && handled(NOTIFY_ORDER)
    })
    .await;
    let placed = event(&view, "order.placed").expect("order.placed");
    let published_by = publisher(placed, "orders.place_order").expect("its publisher");
    assert_eq!(published_by["service"], "orders", "{placed}");
    for (name, service) in [(RESERVE_STOCK, "products"), (NOTIFY_ORDER, "notifications")] {
        let consumed_by = subscriber(placed, name).expect("its subscriber");
        assert_eq!(consumed_by["service"], service, "{consumed_by}");
        assert_eq!(consumed_by["audience"], "plugin", "{consumed_by}");
        assert_eq!(consumed_by["retried"], 0, "{consumed_by}");
        assert_eq!(consumed_by["dead_lettered"], 0, "{consumed_by}");
        assert_eq!(consumed_by["dropped_on"], json!([]), "{consumed_by}");
    }
    // Staged in the reservation's transaction, counted once committed.
    let reserved = event(&view, "stock.reserved").expect("stock.reserved");
    assert_eq!(
        publisher(reserved, "products.reserve_stock").map(|p| &p["published"]),
        Some(&json!(1)),
        "{reserved}"
    );
    assert_eq!(view["unreachable"], json!([]), "{view:#}");
    view
}

/// The gateway measured the order by its route template and status.
async fn check_gateway_metrics(shop: &impl Front, order_id: i64) {
    let gateway = gateway_metrics(shop).await;
    let requests = |route: &str, method: &str, status: &str| {
        total(
            &gateway,
            "http_server_request_duration_seconds_count",
            &[
                ("http_route", route),
                ("http_request_method", method),
                ("http_response_status_code", status),
            ],
        )
    };
    assert!(requests("/orders", "POST", "201") >= 1.0);
    assert!(requests("/orders/{id}", "GET", "200") >= 1.0);
    assert!(requests("/system/events", "GET", "200") >= 1.0);
    assert!(
        total(
            &gateway,
            "http_server_request_duration_seconds_bucket",
            &[("http_route", "/orders"), ("le", "+Inf")]
        ) >= 1.0
    );
    let raw = format!("/orders/{order_id}");
    assert!(
        gateway
            .iter()
            .all(|s| s.labels.get("http_route") != Some(&raw)),
        "a raw path became a label"
    );
}

/// Every instance of the shop is a scrape target whose metrics are its
/// own and moved with the order.
async fn check_instance_metrics(
    shop: &impl Front,
    expected: &BTreeSet<(String, String)>,
    engine: &str,
) {
    let targets = scrape_targets(shop).await;
    let listed: BTreeSet<(String, String)> = targets.keys().cloned().collect();
    assert_eq!(&listed, expected, "every live instance, and only those");
    let metrics_of = |service: &str| {
        let ((_, id), path) = targets
            .iter()
            .find(|((s, _), _)| s == service)
            .unwrap_or_else(|| panic!("{service} is not a target"));
        (id.clone(), path.clone())
    };

    let (id, path) = metrics_of("products");
    let products = instance_metrics(shop, &path, "products", &id).await;
    let handled = |route: &str, method: &str, status: &str| {
        total(
            &products,
            "microcore_handler_duration_seconds_count",
            &[
                ("http_route", route),
                ("http_request_method", method),
                ("http_response_status_code", status),
                ("microcore_plugin", "products.create_product"),
            ],
        )
    };
    assert_eq!(handled("/products", "POST", "201"), 1.0);
    assert!(
        products.iter().all(|s| s
            .labels
            .get("http_route")
            .is_none_or(|r| r.starts_with("/products"))),
        "products measures only its own routes"
    );
    assert!(
        total(
            &products,
            "rpc_server_call_duration_seconds_count",
            &[
                ("rpc_method", "products.quote"),
                ("microcore_plugin", "products.quote_products")
            ]
        ) >= 1.0
    );
    assert!(
        total(
            &products,
            "db_client_operation_duration_seconds_count",
            &[
                ("db_system_name", engine),
                ("db_operation_name", "INSERT"),
                ("db_collection_name", "products")
            ]
        ) >= 1.0
    );
    assert_eq!(
        total(
            &products,
            "microcore_bus_handled_total",
            &[
                ("messaging_destination_name", "order.placed"),
                ("messaging_consumer_group_name", RESERVE_STOCK)
            ]
        ),
        1.0
    );
    assert_eq!(
        total(
            &products,
            "microcore_bus_published_total",
            &[
                ("messaging_destination_name", "stock.reserved"),
                ("microcore_plugin", "products.reserve_stock")
            ]
        ),
        1.0
    );

    let (id, path) = metrics_of("orders");
    let orders = instance_metrics(shop, &path, "orders", &id).await;
    assert_eq!(
        total(
            &orders,
            "microcore_bus_published_total",
            &[
                ("messaging_destination_name", "order.placed"),
                ("microcore_plugin", "orders.place_order")
            ]
        ),
        1.0
    );
    assert!(
        total(
            &orders,
            "db_client_operation_duration_seconds_count",
            &[("db_system_name", engine), ("db_collection_name", "orders")]
        ) >= 1.0
    );
    assert_eq!(
        total(
            &orders,
            "microcore_bus_published_total",
            &[("messaging_destination_name", "stock.reserved")]
        ),
        0.0,
        "what products published is not in the metrics of orders"
    );

    let (id, path) = metrics_of("users");
    let users = instance_metrics(shop, &path, "users", &id).await;
    assert_eq!(
        total(
            &users,
            "microcore_handler_duration_seconds_count",
            &[
                ("http_route", "/users"),
                ("http_response_status_code", "201")
            ]
        ),
        1.0
    );

    let unknown = shop
        .http()
        .get("/system/metrics/products/not-an-instance")
        .await;
    unknown.expect_error(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_shop_order_shows_in_the_event_topology_and_in_every_instance_metrics() {
    let (system, services) = System::builder()
        .gateway_env("MC_AUTH_SECRET", SECRET)
        .service_env("MC_AUTH_SECRET", SECRET)
        .with_shop()
        .await;

    let order_id = order_a_teapot(&system).await;
    topology_after_order(&system).await;
    check_gateway_metrics(&system, order_id).await;
    let expected = SHOP
        .iter()
        .zip(&services)
        .map(|(name, instance)| ((*name).to_owned(), instance.id().to_owned()))
        .collect();
    check_instance_metrics(&system, &expected, "postgresql").await;
}

#[tokio::test]
async fn the_embedded_process_reports_each_instance_on_its_own() {
    let shop = Embedded::start().await;
    let order_id = order_a_teapot(&shop).await;
    let view = topology_after_order(&shop).await;
    assert!(view["unreachable"].as_array().is_some_and(Vec::is_empty));
    check_gateway_metrics(&shop, order_id).await;

    let status = shop
        .http()
        .get("/system/status")
        .await
        .expect_success(StatusCode::OK);
    let expected: BTreeSet<(String, String)> = status["services"]
        .as_array()
        .expect("services")
        .iter()
        .flat_map(|service| {
            let name = service["name"].as_str().unwrap_or_default().to_owned();
            service["instances"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |i| {
                    (
                        name.clone(),
                        i["id"].as_str().unwrap_or_default().to_owned(),
                    )
                })
        })
        .collect();
    assert_eq!(expected.len(), SHOP.len(), "{status}");
    check_instance_metrics(&shop, &expected, "sqlite").await;
}

// ---- failures and departures ----

const PROBE: &str = "probe";
const WORKER: &str = "probe.worker.probe.work";
const OTHER: &str = "probe.other.probe.work";

#[tokio::test]
async fn a_failing_subscriber_shows_its_retries_dead_letters_and_drop() {
    let mut system = System::start().await;
    let probe = system
        .start_service(
            "bus-probe",
            PROBE,
            &[
                ("PROBE_RETRIES", "1"),
                ("PROBE_BACKOFF_MS", "50"),
                ("PROBE_CONCURRENCY", "1"),
            ],
        )
        .await;
    system.start_gateway().await;
    let streams = system.streams();
    // Five events that always fail: each is tried twice, then
    // dead-lettered; the fifth final failure in a row drops the worker.
    for seq in 0..5 {
        streams
            .publish("probe.work", &json!({"seq": seq, "fail_times": -1}))
            .await;
    }
    streams
        .wait_for_events("system.subscriber.dropped", 1)
        .await;

    // The instance counts its drop signal once the stream has taken it,
    // so the view may lag the stream by a moment: wait for all three.
    let settled = "the worker dropped, the other done and the drop announced";
    let view = topology_where(&system, settled, |view| {
        let (Some(work), Some(dropped)) = (
            event(view, "probe.work"),
            event(view, "system.subscriber.dropped"),
        ) else {
            return false;
        };
        subscriber(work, WORKER).is_some_and(|s| s["dropped_on"] != json!([]))
            && subscriber(work, OTHER).is_some_and(|s| s["handled"] == 5)
            && publisher(dropped, "probe.worker").is_some()
    })
    .await;
    let work = event(&view, "probe.work").expect("probe.work");
    let worker = subscriber(work, WORKER).expect("the worker");
    assert_eq!(worker["handled"], 0, "{worker}");
    assert_eq!(worker["retried"], 5, "{worker}");
    assert_eq!(worker["dead_lettered"], 5, "{worker}");
    assert_eq!(worker["dropped_on"], json!([probe.id()]), "{worker}");
    let other = subscriber(work, OTHER).expect("the other worker");
    assert_eq!(other["retried"], 0, "{other}");
    assert_eq!(other["dropped_on"], json!([]), "{other}");
    // The harness published probe.work: no instance did.
    assert_eq!(work["publishers"], json!([]), "{work}");
    let dropped = event(&view, "system.subscriber.dropped").expect("the drop signal");
    assert_eq!(
        publisher(dropped, "probe.worker").map(|p| &p["published"]),
        Some(&json!(1)),
        "{dropped}"
    );

    let path = format!("/system/metrics/{PROBE}/{}", probe.id());
    let metrics = instance_metrics(&system, &path, PROBE, probe.id()).await;
    let of_worker = [("messaging_consumer_group_name", WORKER)];
    assert_eq!(
        total(&metrics, "microcore_bus_retried_total", &of_worker),
        5.0
    );
    assert_eq!(
        total(&metrics, "microcore_bus_dead_lettered_total", &of_worker),
        5.0
    );
    assert_eq!(
        total(&metrics, "microcore_bus_subscriber_dropped", &of_worker),
        1.0
    );
    assert_eq!(
        total(
            &metrics,
            "microcore_bus_subscriber_dropped",
            &[("messaging_consumer_group_name", OTHER)]
        ),
        0.0
    );
}

#[tokio::test]
async fn an_instance_that_dies_is_unreachable_and_one_that_stops_is_gone() {
    // No sweep during the test: only announcements change the fleet.
    let mut system = System::builder()
        .gateway_env("MC_DISCOVERY_INTERVAL_MS", 600_000)
        .start()
        .await;
    let mut killed = system.start_products().await;
    let mut stopped = system.start_products().await;
    system.start_gateway().await;
    system.wait_until_routable().await;
    let targets = scrape_targets(&system).await;
    assert_eq!(targets.len(), 2, "{targets:?}");

    // Killed: it never said goodbye, so it is still listed, and the views
    // say it does not answer instead of failing.
    // Until the server notices the closed connection, a request to the
    // killed instance times out; then it has no responder at once.
    killed.process().kill();
    let view = topology_where(&system, "the killed instance without a responder", |view| {
        view["unreachable"].as_array().is_some_and(|u| {
            u.iter().any(|i| {
                i["instance"] == killed.id()
                    && i["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("does not answer"))
            })
        })
    })
    .await;
    let unreachable = &view["unreachable"][0];
    assert_eq!(unreachable["service"], "products", "{view}");
    assert_eq!(unreachable["instance"], killed.id(), "{view}");
    let reserve = event(&view, "order.placed")
        .and_then(|e| subscriber(e, RESERVE_STOCK))
        .expect("the live instance's subscription");
    assert_eq!(reserve["instances"], 2, "{reserve}");
    let scrape = system
        .http()
        .get(&format!("/system/metrics/products/{}", killed.id()))
        .await;
    scrape.expect_error(StatusCode::SERVICE_UNAVAILABLE);

    // Stopped: it announced its departure and is gone from every view.
    assert!(stopped.terminate().await.success());
    topology_where(&system, "the stopped instance gone", |view| {
        let listed = view.to_string().contains(stopped.id());
        !listed
    })
    .await;
    let targets = scrape_targets(&system).await;
    assert!(
        targets.keys().all(|(_, id)| id != stopped.id()),
        "{targets:?}"
    );
}

#[tokio::test]
async fn metrics_are_pushed_over_otlp_when_a_collector_is_configured() {
    let collector = Collector::start().await;
    let mut system = System::start().await;
    let mut env: Vec<(&str, String)> = collector.env();
    env.push(("OTEL_METRIC_EXPORT_INTERVAL", "200".to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let products = system.start_service("products", "products", &env).await;
    system.start_gateway().await;
    system.wait_until_routable().await;
    system
        .http()
        .post_json("/products", &json!({"name": "Teapot", "price": 12.5}))
        .await
        .expect_success(StatusCode::CREATED);

    let wanted = [
        "microcore.handler.duration",
        "db.client.operation.duration",
        "microcore.bus.published",
        "microcore.transport.connected",
    ];
    let exported = wait::poll(Duration::from_secs(15), || async {
        let received = collector.metrics();
        wanted
            .iter()
            .all(|name| {
                received.contains(&(
                    "products".to_owned(),
                    products.id().to_owned(),
                    (*name).to_owned(),
                ))
            })
            .then_some(received)
    })
    .await;
    if exported.is_none() {
        system.fail(format!(
            "the collector never got {wanted:?} from products {}: {:?}",
            products.id(),
            collector.metrics()
        ));
    }
}
