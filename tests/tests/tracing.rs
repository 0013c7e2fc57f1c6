//! One trace across the fleet: an order placed through the gateway is
//! followed, with OTLP export on in every process, from the gateway's
//! server span through the orders handler, its request to the catalogue,
//! the `order.placed` it publishes and the consumers of it in two other
//! services, to the `stock.reserved` the catalogue answers with.

use std::time::Duration;

use futures_util::StreamExt;
use microcore_e2e::otlp::{Collector, Span};
use microcore_e2e::{HttpClient, ServiceInstance, System, wait};
use reqwest::{Method, StatusCode};
use serde_json::json;

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

const SERVER: i64 = 2;
const CLIENT: i64 = 3;
const PRODUCER: i64 = 4;
const CONSUMER: i64 = 5;

/// The one span of `trace` from `service` called `name`.
#[track_caller]
fn span<'a>(trace: &'a [Span], service: &str, name: &str) -> &'a Span {
    let found: Vec<&Span> = trace
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect();
    match found.as_slice() {
        [one] => one,
        _ => panic!(
            "expected one `{name}` span from {service}, found {}: {:#?}",
            found.len(),
            trace
                .iter()
                .map(|s| (&s.service, &s.name, &s.span_id, &s.parent_span_id))
                .collect::<Vec<_>>()
        ),
    }
}

/// The shop, every process exporting with `export` (a [`Collector`]'s
/// variables) and the default sampler (each follows the sampling of its
/// parent), the services logging as `rust_log` says.
async fn traced_shop(
    export: Vec<(&str, String)>,
    rust_log: &str,
) -> (System, Vec<ServiceInstance>) {
    let mut builder = System::builder()
        .gateway_env("MC_AUTH_SECRET", SECRET)
        .service_env("MC_AUTH_SECRET", SECRET)
        .service_env("RUST_LOG", rust_log);
    for (name, value) in export {
        builder = builder.gateway_env(name, &value).service_env(name, &value);
    }
    builder.with_shop().await
}

/// Adds a product with `stock` in store; its id.
async fn new_product(http: &HttpClient, name: &str, stock: i64) -> serde_json::Value {
    http.post_json(
        "/products",
        &json!({"name": name, "price": 12.5, "stock": stock}),
    )
    .await
    .expect_success(StatusCode::CREATED)["id"]
        .clone()
}

#[tokio::test]
async fn one_trace_follows_an_order_through_every_service_it_touches() {
    let collector = Collector::start().await;
    let (system, mut services) = traced_shop(collector.env(), "info,microcore=debug").await;
    let http = system.http();
    let token = http.sign_up("ada@example.com", "correct horse").await.token;
    let teapot = new_product(http, "Teapot", 3).await;
    // The client starts the trace; every span below belongs to it.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    http.send(
        http.request(Method::POST, "/orders")
            .bearer_auth(&token)
            .header(
                "traceparent",
                format!("00-{client_trace}-00f067aa0ba902b7-01"),
            )
            .json(&json!({"lines": [{"product_id": teapot, "quantity": 1}]})),
    )
    .await
    .expect_success(StatusCode::CREATED);

    let trace = system
        .wait_for("the consumers' spans", Duration::from_secs(20), || async {
            let trace: Vec<Span> = collector
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == client_trace)
                .collect();
            let consumed = |service: &str, name: &str| {
                trace.iter().any(|s| s.service == service && s.name == name)
            };
            // The last span of each process; each exports in the order
            // its spans end, so the others are in by then.
            (consumed("gateway", "POST /orders")
                && consumed("notifications", "process order.placed")
                && consumed("products", "process order.placed")
                && consumed("orders", "process stock.reserved"))
            .then_some(trace)
        })
        .await;

    let gateway = span(&trace, "gateway", "POST /orders");
    assert_eq!(gateway.kind, SERVER);
    assert_eq!(
        gateway.parent_span_id, "00f067aa0ba902b7",
        "the client's span"
    );
    assert_eq!(gateway.attributes["http.route"], "/orders");
    assert_eq!(gateway.attributes["http.response.status_code"], 201);

    let handler = span(&trace, "orders", "POST /orders");
    assert_eq!(handler.kind, SERVER);
    assert_eq!(handler.parent_span_id, gateway.span_id, "over NATS");

    let quote = span(&trace, "orders", "request products.quote");
    assert_eq!(
        (quote.kind, &quote.parent_span_id),
        (CLIENT, &handler.span_id)
    );
    let answer = span(&trace, "products", "respond products.quote");
    assert_eq!(
        (answer.kind, &answer.parent_span_id),
        (SERVER, &quote.span_id)
    );

    let placed = span(&trace, "orders", "publish order.placed");
    assert_eq!(
        (placed.kind, &placed.parent_span_id),
        (PRODUCER, &handler.span_id)
    );
    for service in ["products", "notifications"] {
        let consumed = span(&trace, service, "process order.placed");
        assert_eq!(consumed.kind, CONSUMER);
        assert_eq!(
            consumed.parent_span_id, placed.span_id,
            "{service}: through the outbox"
        );
    }
    let reserved = span(&trace, "products", "publish stock.reserved");
    let reserving = span(&trace, "products", "process order.placed");
    assert_eq!(reserved.parent_span_id, reserving.span_id);
    let settled = span(&trace, "orders", "process stock.reserved");
    assert_eq!(settled.parent_span_id, reserved.span_id);

    // The SQL of each handler, under it, with placeholders and no values.
    let insert = span(&trace, "orders", "INSERT orders");
    assert_eq!(
        (insert.kind, &insert.parent_span_id),
        (CLIENT, &handler.span_id)
    );
    let text = insert.attributes["db.query.text"]
        .as_str()
        .unwrap_or_default();
    assert!(
        text.starts_with("INSERT INTO orders") && text.contains("$1"),
        "{text}"
    );
    assert!(!text.contains("12.5"), "no bound value: {text}");
    for (name, value) in [
        ("db.system.name", "postgresql"),
        ("db.operation.name", "INSERT"),
        ("db.collection.name", "orders"),
    ] {
        assert_eq!(insert.attributes[name].as_str(), Some(value), "{name}");
    }
    let staged = trace
        .iter()
        .find(|s| s.name == "INSERT mc_outbox" && s.service == "orders")
        .expect("the outbox row's statement");
    assert_eq!(
        staged.parent_span_id, placed.span_id,
        "staged while publishing"
    );
    let taken = span(&trace, "products", "UPDATE products");
    assert_eq!(taken.parent_span_id, reserving.span_id);

    // The user's registration is another trace, never this one.
    assert!(trace.iter().all(|s| s.name != "POST /users"));
    // What the outbox relay does in the background belongs to no request:
    // it is in no trace.
    let relayed: Vec<_> = collector
        .spans()
        .into_iter()
        .filter(|s| {
            s.attributes
                .get("db.query.text")
                .and_then(|text| text.as_str())
                .is_some_and(|text| text.starts_with("DELETE FROM mc_outbox"))
        })
        .map(|s| (s.service, s.name, s.trace_id))
        .collect();
    assert!(
        relayed.is_empty(),
        "the relay's statements traced: {relayed:?}"
    );

    // Log lines name their trace and span.
    let other_trace = "0af7651916cd43dd8448eb211c80319c";
    http.send(
        http.request(Method::POST, "/orders")
            .bearer_auth(&token)
            .header(
                "traceparent",
                format!("00-{other_trace}-b7ad6b7169203331-01"),
            )
            .json(&json!({"lines": "not a list"})),
    )
    .await
    .expect_error(StatusCode::UNPROCESSABLE_ENTITY);
    let log = services[2].process().log_path().to_owned();
    let line = system
        .wait_for("the refusal's log line", Duration::from_secs(5), || {
            let log = log.clone();
            async move {
                let text = std::fs::read_to_string(&log).ok()?;
                text.lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .find(|l| l["message"] == "invalid input")
            }
        })
        .await;
    let request = line["spans"]
        .as_array()
        .and_then(|spans| spans.iter().find(|s| s["name"] == "request"))
        .unwrap_or_else(|| panic!("no request span in {line}"));
    assert_eq!(request["trace_id"], other_trace, "{line}");
    assert_eq!(
        request["span_id"].as_str().map(str::len),
        Some(16),
        "{line}"
    );
}

/// The first span called `name` with `field` = `value` in the span lists
/// of the JSON log lines of `process`.
async fn logged_span(
    system: &System,
    process: &mut microcore_e2e::ServiceProcess,
    (name, field, value): (&str, &str, &str),
) -> serde_json::Value {
    let log = process.log_path().to_owned();
    system
        .wait_for("the log line", Duration::from_secs(10), || {
            let log = log.clone();
            async move {
                let text = std::fs::read_to_string(&log).ok()?;
                text.lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .filter_map(|l| l["spans"].as_array().cloned())
                    .flatten()
                    .find(|span| span["name"] == name && span[field] == value)
            }
        })
        .await
}

#[tokio::test]
async fn an_unsampled_trace_records_nothing_yet_keeps_its_id_across_services() {
    let collector = Collector::start().await;
    // Statements are logged inside the spans that run them. Spans go out
    // in JSON, the protocol opentelemetry-otlp's exporter serves.
    let (system, mut services) = traced_shop(collector.env_json(), "info,sqlx::query=debug").await;
    let http = system.http();
    let token = http.sign_up("lin@example.com", "correct horse").await.token;
    let urn = new_product(http, "Urn", 5).await;
    let order = |trace_id: &str, flags: &str| order_in_trace(http, &token, &urn, trace_id, flags);

    // The client does not sample this one: no process records it, yet its
    // id goes through the gateway, the orders handler, the outbox and the
    // event to the catalogue, whose statements are logged under it.
    let unsampled = "5c1e9b4a74b5f1cebff7f5f775922427";
    http.send(order(unsampled, "00"))
        .await
        .expect_success(StatusCode::CREATED);
    let consumer = ("process", "messaging.destination.name", "order.placed");
    let processed = logged_span(&system, services[0].process(), consumer).await;
    assert_eq!(processed["trace_id"], unsampled, "{processed}");

    let sampled = "f9c32d7f0a29c4224274e6b7294b5c1e";
    http.send(order(sampled, "01"))
        .await
        .expect_success(StatusCode::CREATED);
    expect_nothing_recorded_of(&system, &collector, unsampled, sampled).await;
}

#[tokio::test]
async fn an_unsampled_trace_is_carried_on_where_no_span_is_built() {
    let collector = Collector::start().await;
    // At `warn` no log line shows a span, so no process builds one for an
    // unsampled request: its context travels without any.
    let (system, _services) = traced_shop(collector.env(), "warn").await;
    let http = system.http();
    let token = http.sign_up("kim@example.com", "correct horse").await.token;
    let vase = new_product(http, "Vase", 5).await;
    let mut placed = system
        .subscribe(&system.subject("events.order.placed"))
        .await;
    let mut reserved = system
        .subscribe(&system.subject("events.stock.reserved"))
        .await;

    // The orders handler publishes `order.placed` (through its outbox);
    // the catalogue's consumer of it publishes `stock.reserved`.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    http.send(order_in_trace(http, &token, &vase, unsampled, "00"))
        .await
        .expect_success(StatusCode::CREATED);
    for (event, subscription) in [
        ("order.placed", &mut placed),
        ("stock.reserved", &mut reserved),
    ] {
        let message = match tokio::time::timeout(wait::PROMPT, subscription.next()).await {
            Ok(Some(message)) => message,
            _ => system.fail(format!("no {event} arrived")),
        };
        let traceparent = message
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        assert!(
            traceparent.starts_with(&format!("00-{unsampled}-")) && traceparent.ends_with("-00"),
            "{event} carries {traceparent:?}"
        );
    }

    let sampled = "4bf92f3577b34da6a3ce929d0e0e4736";
    http.send(order_in_trace(http, &token, &vase, sampled, "01"))
        .await
        .expect_success(StatusCode::CREATED);
    expect_nothing_recorded_of(&system, &collector, unsampled, sampled).await;
}

/// `POST /orders` of one `product` in the trace `trace_id`, sampled or not
/// as `flags` says.
fn order_in_trace(
    http: &HttpClient,
    token: &str,
    product: &serde_json::Value,
    trace_id: &str,
    flags: &str,
) -> reqwest::RequestBuilder {
    http.request(Method::POST, "/orders")
        .bearer_auth(token)
        .header(
            "traceparent",
            format!("00-{trace_id}-b7ad6b7169203331-{flags}"),
        )
        .json(&json!({"lines": [{"product_id": product, "quantity": 1}]}))
}

/// Waits for the spans of the order placed in `sampled`, after the one in
/// `unsampled` (any span the first had produced would have arrived
/// before), then checks that the first left none: none in its trace, and
/// no trace started inside it (every span outside the gateway has a
/// parent, since every request enters through the gateway).
async fn expect_nothing_recorded_of(
    system: &System,
    collector: &Collector,
    unsampled: &str,
    sampled: &str,
) {
    system
        .wait_for(
            "the sampled order's spans",
            Duration::from_secs(20),
            || async {
                collector
                    .spans()
                    .iter()
                    .any(|s| {
                        s.trace_id == sampled
                            && s.service == "orders"
                            && s.name == "process stock.reserved"
                    })
                    .then_some(())
            },
        )
        .await;
    let stray: Vec<(String, String, String)> = collector
        .spans()
        .into_iter()
        .filter(|s| {
            s.trace_id == unsampled || (s.service != "gateway" && s.parent_span_id.is_empty())
        })
        .map(|s| (s.service, s.name, s.trace_id))
        .collect();
    assert!(
        stray.is_empty(),
        "spans of an unsampled trace, or of traces it started: {stray:?}"
    );
}
