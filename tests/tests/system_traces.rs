//! What the gateway sees passing on the bus: the causal trees of the
//! latest events (`/system/traces`), and the live streams of events and
//! log records (`/system/events/stream`, `/system/logs/stream`). The flows
//! run on both topologies, unchanged: four service processes over NATS and
//! Postgres, and the embedded all-in-one process, where every service logs
//! through one subscriber. What needs processes to come and go, or raw
//! messages on NATS, runs on the distributed system alone.

use std::collections::BTreeSet;
use std::time::Duration;

use microcore_e2e::{Embedded, Front, ServiceInstance, SseEvent, System, on_both_topologies, wait};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

/// Products logs `invalid input` at debug level under this filter.
const RUST_LOG: &str = "info,microcore=debug";

/// The gateway and the four services.
async fn distributed() -> (System, Vec<ServiceInstance>) {
    System::builder()
        .gateway_env("MC_AUTH_SECRET", SECRET)
        .service_env("MC_AUTH_SECRET", SECRET)
        .service_env("RUST_LOG", RUST_LOG)
        .with_shop()
        .await
}

async fn embedded() -> Embedded {
    Embedded::start_with(&[("RUST_LOG", RUST_LOG)]).await
}

async fn product(shop: &impl Front, name: &str, stock: i64) -> i64 {
    let created = shop
        .http()
        .post_json(
            "/products",
            &json!({"name": name, "price": 12.5, "stock": stock}),
        )
        .await
        .expect_success(StatusCode::CREATED);
    created["id"].as_i64().expect("a product id")
}

/// The `data` of `GET path`.
async fn view(shop: &impl Front, path: &str) -> Value {
    shop.http().get(path).await.expect_success(StatusCode::OK)
}

fn named(event: &SseEvent, name: &str) -> bool {
    event.event.as_deref() == Some(name)
}

// ---- the flows, on both topologies ----

async fn an_order_is_one_tree_rooted_at_its_request(shop: &impl Front) {
    let account = shop
        .http()
        .sign_up("ada@example.com", "correct horse battery")
        .await;
    let teapot = product(shop, "Teapot", 10).await;
    let request_id = format!("order-{}", uuid::Uuid::new_v4());
    let http = shop.http();
    http.send(
        http.request(Method::POST, "/orders")
            .bearer_auth(&account.token)
            .header("X-Request-ID", &request_id)
            .json(&json!({"lines": [{"product_id": teapot, "quantity": 2}]})),
    )
    .await
    .expect_success(StatusCode::CREATED);

    let path = format!("/system/traces?correlation_id={request_id}");
    let traces = wait::poll(Duration::from_secs(15), || async {
        let data = view(shop, &path).await;
        (data["traces"][0]["events"] == 2).then_some(data)
    })
    .await
    .unwrap_or_else(|| shop.fail(format!("no trace of two events for {request_id}")));
    let trace = &traces["traces"];
    assert_eq!(trace.as_array().map(Vec::len), Some(1), "{traces}");
    assert_eq!(trace[0]["correlation_id"], request_id.as_str());
    let roots = trace[0]["roots"].as_array().expect("roots");
    assert_eq!(roots.len(), 1, "one root: the order's event. {traces}");
    let placed = &roots[0];
    assert_eq!(placed["event"], "order.placed");
    assert_eq!(placed["emitter"], "orders.place_order");
    assert_eq!(
        placed["parent_id"],
        request_id.as_str(),
        "caused by the request"
    );
    let children = placed["children"].as_array().expect("children");
    assert_eq!(children.len(), 1, "{traces}");
    let reserved = &children[0];
    assert_eq!(reserved["event"], "stock.reserved");
    assert_eq!(reserved["emitter"], "products.reserve_stock");
    assert_eq!(reserved["parent_id"], placed["id"]);
    assert_eq!(reserved["correlation_id"], request_id.as_str());
    assert_eq!(reserved["children"], json!([]));

    let flat = view(
        shop,
        &format!("/system/traces/flat?correlation_id={request_id}"),
    )
    .await;
    let events = flat["events"].as_array().expect("events");
    let names: Vec<&Value> = events.iter().map(|e| &e["event"]).collect();
    assert_eq!(names, ["stock.reserved", "order.placed"], "newest first");
    assert!(events.iter().all(|e| e["kind"] == "event"), "{flat}");
    assert_eq!(flat["capacity"], 500);

    // Unfiltered, the order's trace is the newest; the sign-up and the
    // product have traces of their own.
    let all = view(shop, "/system/traces").await;
    let traces = all["traces"].as_array().expect("traces");
    assert_eq!(traces[0]["correlation_id"], request_id.as_str(), "{all}");
    let roots: BTreeSet<&str> = traces
        .iter()
        .filter_map(|t| t["roots"][0]["event"].as_str())
        .collect();
    assert_eq!(
        roots,
        BTreeSet::from(["order.placed", "product.created", "user.created"]),
        "{all}"
    );
    shop.http()
        .get("/system/traces?correlation=typo")
        .await
        .expect_error(StatusCode::BAD_REQUEST);

    let document = shop.http().get("/openapi.json").await.json();
    let paths = &document["paths"];
    for path in ["/system/traces", "/system/traces/flat"] {
        assert_eq!(paths[path]["get"]["tags"], json!(["System"]), "{path}");
        assert_eq!(
            paths[path]["get"]["parameters"][0]["name"],
            "correlation_id"
        );
    }
    for path in ["/system/events/stream", "/system/logs/stream"] {
        let ok = &paths[path]["get"]["responses"]["200"];
        assert!(
            ok["content"]["text/event-stream"].is_object(),
            "{path}: {ok}"
        );
    }
}

async fn the_event_stream_sends_each_event_as_it_passes(shop: &impl Front) {
    let mut everything = shop.http().event_stream("/system/events/stream").await;
    let mut products = shop
        .http()
        .event_stream("/system/events/stream?event=product.created")
        .await;
    shop.http()
        .sign_up("ada@example.com", "correct horse battery")
        .await;
    let lamp = product(shop, "Lamp", 3).await;

    let (created, before) = products
        .until(wait::PROMPT, |e| named(e, "product.created"))
        .await;
    assert!(before.is_empty(), "only product.created passes: {before:?}");
    let envelope = created.json();
    assert_eq!(envelope["payload"]["id"], lamp);
    assert_eq!(envelope["emitter"], "products.create_product");
    assert_eq!(created.id.as_deref(), envelope["id"].as_str());

    let mut seen = BTreeSet::new();
    while !seen.contains("user.created") || !seen.contains("product.created") {
        let event = everything
            .next(wait::PROMPT)
            .await
            .unwrap_or_else(|| shop.fail("the event stream ended"));
        let name = event.event.clone().unwrap_or_default();
        assert_eq!(event.json()["event"], name.as_str(), "{event:?}");
        seen.insert(name);
    }

    for bad in ["?event=order..placed", "?event=order%20placed", "?name=x"] {
        shop.http()
            .get(&format!("/system/events/stream{bad}"))
            .await
            .expect_error(StatusCode::BAD_REQUEST);
    }
}

async fn the_log_stream_carries_the_lines_of_each_service(shop: &impl Front) {
    let mut products = shop
        .http()
        .event_stream("/system/logs/stream?service=products")
        .await;
    let request_id = format!("log-{}", uuid::Uuid::new_v4());
    let http = shop.http();
    http.send(
        http.request(Method::POST, "/products")
            .header("X-Request-ID", &request_id)
            .json(&json!({"name": "Lamp", "price": "cheap"})),
    )
    .await
    .expect_error(StatusCode::UNPROCESSABLE_ENTITY);

    let (line, _) = products
        .until(wait::PROMPT, |e| e.json()["message"] == "invalid input")
        .await;
    assert_eq!(line.event.as_deref(), Some("log"));
    let record = line.json();
    assert_eq!(record["service"], "products", "{record}");
    assert_eq!(record["level"], "DEBUG", "{record}");
    assert!(record["instance"].is_string(), "{record}");
    assert!(record["timestamp"].is_string(), "{record}");
    assert!(record["fields"]["error"].is_string(), "{record}");
    let request = record["spans"]
        .as_array()
        .and_then(|spans| spans.iter().find(|s| s["name"] == "request"))
        .unwrap_or_else(|| panic!("no request span in {record}"));
    assert_eq!(request["request_id"], request_id.as_str(), "{record}");
    assert_eq!(request["plugin"], "products.create_product", "{record}");

    for bad in ["?level=loud", "?service=a.b"] {
        shop.http()
            .get(&format!("/system/logs/stream{bad}"))
            .await
            .expect_error(StatusCode::BAD_REQUEST);
    }
}

on_both_topologies! {
    an_order_is_one_tree_rooted_at_its_request,
    the_event_stream_sends_each_event_as_it_passes,
    the_log_stream_carries_the_lines_of_each_service,
}

// ---- what only the distributed system shows ----

/// An envelope as a publisher would send it.
fn envelope(id: &str, parent: Option<&str>) -> Value {
    json!({
        "id": id,
        "event": "bounded.tick",
        "payload": {},
        "emitter": "harness.publisher",
        "timestamp": "2025-01-01T00:00:00Z",
        "parent_id": parent,
        "correlation_id": "bounded",
    })
}

#[tokio::test]
async fn the_buffer_keeps_the_latest_events_once_each_and_their_dead_letters() {
    let mut system = System::builder()
        .gateway_env("MC_TRACE_BUFFER", 5)
        .start()
        .await;
    system.start_gateway().await;
    let client = system.client().clone();
    let publish = |subject: String, body: Value| {
        let client = client.clone();
        async move {
            client
                .publish(subject, body.to_string().into())
                .await
                .expect("published");
        }
    };
    let ids = |data: &Value| -> Vec<String> {
        data["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter_map(|e| e["id"].as_str().map(str::to_owned))
            .collect()
    };
    let tick = system.subject("events.bounded.tick");
    for n in 0..8 {
        let parent = (n > 0).then(|| format!("e{}", n - 1));
        publish(tick.clone(), envelope(&format!("e{n}"), parent.as_deref())).await;
    }
    // The bus may repeat a message: the buffer holds it once.
    publish(tick.clone(), envelope("e3", Some("e2"))).await;
    publish(tick.clone(), envelope("e8", Some("e7"))).await;
    let flat = system
        .wait_for("the last event in the buffer", wait::PROMPT, || async {
            let data = view(&system, "/system/traces/flat").await;
            (data["events"][0]["id"] == "e8").then_some(data)
        })
        .await;
    assert_eq!(flat["capacity"], 5);
    assert_eq!(flat["buffered"], 5);
    assert_eq!(
        ids(&flat),
        ["e8", "e7", "e6", "e5", "e4"],
        "the latest, newest first"
    );

    // A dead letter comes after its event (and the retries before it).
    let letter = json!({
        "original": envelope("e6", Some("e5")),
        "subscriber": "mail.send.bounded.tick",
        "error": "the mail server is down",
        "attempts": 3,
        "failed_at": "2025-01-01T00:00:05Z",
    });
    publish(system.subject("dlq.bounded.tick"), letter).await;
    let flat = system
        .wait_for("the dead letter in the buffer", wait::PROMPT, || async {
            let data = view(&system, "/system/traces/flat").await;
            (data["events"][0]["kind"] == "dead_letter").then_some(data)
        })
        .await;
    assert_eq!(ids(&flat), ["e6", "e8", "e7", "e6", "e5"]);
    let dead = &flat["events"][0];
    assert_eq!(dead["subscriber"], "mail.send.bounded.tick");
    assert_eq!(dead["error"], "the mail server is down");
    assert_eq!(dead["attempts"], 3);
    assert_eq!(flat["events"][1]["kind"], "event");

    let tree = view(&system, "/system/traces").await;
    let trace = &tree["traces"][0];
    assert_eq!(trace["correlation_id"], "bounded");
    assert_eq!(trace["events"], 4, "e5 to e8: {tree}");
    let root = &trace["roots"][0];
    assert_eq!(root["id"], "e5", "its parent is forgotten: {tree}");
    let e6 = &root["children"][0];
    assert_eq!(e6["id"], "e6", "{tree}");
    assert_eq!(
        e6["dead_letters"][0]["subscriber"],
        "mail.send.bounded.tick"
    );
    assert_eq!(e6["children"][0]["id"], "e7");
    assert_eq!(e6["children"][0]["children"][0]["id"], "e8");
}

#[tokio::test]
async fn the_log_stream_filters_by_level_and_carries_the_gateway_too() {
    let (mut system, _services) = distributed().await;
    let http = system.http().clone();
    let mut everything = http.event_stream("/system/logs/stream").await;
    let mut informative = http
        .event_stream("/system/logs/stream?service=products&level=info")
        .await;
    let mut gateway = http
        .event_stream("/system/logs/stream?service=gateway")
        .await;

    // A debug line, then a second instance that says it is ready.
    http.post_json("/products", &json!({"name": "Lamp", "price": "cheap"}))
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY);
    everything
        .until(wait::PROMPT, |e| e.json()["message"] == "invalid input")
        .await;
    let second = system.start_products().await;

    let (ready, before) = informative
        .until(wait::BOOT, |e| {
            let record = e.json();
            record["message"] == "service is ready" && record["instance"] == second.id()
        })
        .await;
    let levels: BTreeSet<String> = before
        .iter()
        .map(|e| e.json()["level"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        levels
            .iter()
            .all(|l| ["INFO", "WARN", "ERROR"].contains(&l.as_str())),
        "{levels:?}"
    );
    assert_eq!(ready.json()["service"], "products");

    let (up, _) = gateway
        .until(wait::PROMPT, |e| e.json()["message"] == "instance up")
        .await;
    let record = up.json();
    assert_eq!(record["service"], "gateway", "{record}");
    assert_eq!(record["fields"]["instance"], second.id(), "{record}");

    // A live stream does not hold the gateway's graceful shutdown open.
    let status = system.gateway().process().terminate(wait::SHUTDOWN).await;
    assert!(status.success(), "{status}");
    assert!(everything.ends_within(wait::PROMPT).await);
}
