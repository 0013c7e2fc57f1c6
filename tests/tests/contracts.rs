//! The gateway's HTTP contract: every answer is an envelope, errors have the
//! right status, request ids are honoured, and clients cannot pose as the
//! gateway towards services.

use futures_util::StreamExt;
use microcore_e2e::{System, wait};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn health_answers_in_the_envelope() {
    let mut system = System::start().await;
    system.start_gateway().await;
    let data = system
        .http()
        .get("/health")
        .await
        .expect_success(StatusCode::OK);
    assert_eq!(data["status"], "ok", "{data}");
}

#[tokio::test]
async fn an_unknown_route_is_404_in_the_envelope() {
    let (system, _products) = System::with_products().await;
    for path in ["/nothing-here", "/products/1/reviews"] {
        system
            .http()
            .get(path)
            .await
            .expect_error(StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn a_wrong_method_is_405_with_allow() {
    let (system, _products) = System::with_products().await;
    let http = system.http();

    let reply = http.send(http.request(Method::DELETE, "/products")).await;
    reply.expect_error(StatusCode::METHOD_NOT_ALLOWED);
    let allow = allowed(&reply);
    assert_eq!(allow, ["GET", "POST"], "{reply:?}");

    let reply = http
        .send(http.request(Method::PUT, "/products/1").json(&json!({})))
        .await;
    reply.expect_error(StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(allowed(&reply), ["GET"], "{reply:?}");
}

/// The methods of an `Allow` header, sorted.
fn allowed(reply: &microcore_e2e::Reply) -> Vec<String> {
    let header = reply
        .header("allow")
        .unwrap_or_else(|| panic!("a 405 carries Allow: {reply:?}"));
    let mut methods: Vec<String> = header
        .split(',')
        .map(|m| m.trim().to_ascii_uppercase())
        .filter(|m| !m.is_empty() && m != "HEAD" && m != "OPTIONS")
        .collect();
    methods.sort();
    methods
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_and_reaches_no_service() {
    const LIMIT: usize = 1024;
    let (system, _products) = System::builder()
        .gateway_env("MC_BODY_LIMIT", LIMIT)
        .with_products()
        .await;

    let oversized = json!({"name": "x".repeat(2 * LIMIT), "price": 1.0});
    let reply = system.http().post_json("/products", &oversized).await;
    reply.expect_error(StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        system.product_count().await,
        0,
        "the oversized product was stored"
    );

    let fits = json!({"name": "y".repeat(LIMIT / 2), "price": 1.0});
    system
        .http()
        .post_json("/products", &fits)
        .await
        .expect_success(StatusCode::CREATED);
    assert_eq!(system.product_count().await, 1);
}

#[tokio::test]
async fn request_ids_are_honoured_echoed_and_generated() {
    let (system, _products) = System::with_products().await;
    let http = system.http();

    // Success, a service's 404, the gateway's 404 and 405.
    for (method, path) in [
        (Method::GET, "/products"),
        (Method::GET, "/products/424242"),
        (Method::GET, "/no-such-route"),
        (Method::DELETE, "/products"),
    ] {
        let reply = http
            .send(
                http.request(method.clone(), path)
                    .header("X-Request-ID", "client-chosen-id-1"),
            )
            .await;
        assert_eq!(
            reply.header("x-request-id"),
            Some("client-chosen-id-1"),
            "{method} {path} echoes the client's request id: {reply:?}"
        );
    }

    let mut generated = Vec::new();
    for path in ["/products", "/products", "/no-such-route"] {
        let reply = http.get(path).await;
        let id = reply
            .header("x-request-id")
            .filter(|id| !id.trim().is_empty())
            .unwrap_or_else(|| panic!("GET {path} without an id gets one: {reply:?}"))
            .to_owned();
        generated.push(id);
    }
    generated.sort();
    generated.dedup();
    assert_eq!(
        generated.len(),
        3,
        "generated ids are unique: {generated:?}"
    );
}

#[tokio::test]
async fn clients_cannot_send_reserved_mc_headers_to_services() {
    let (system, _products) = System::with_products().await;
    let http = system.http();
    let first = http
        .post_json("/products", &json!({"name": "Real", "price": 1.0}))
        .await
        .expect_success(StatusCode::CREATED);
    let other = http
        .post_json("/products", &json!({"name": "Other", "price": 2.0}))
        .await
        .expect_success(StatusCode::CREATED);
    let id = first["id"].as_i64().expect("an integer id");

    // A plain subscriber sees a copy of what the gateway sends to the
    // service's queue group.
    let mut wire = system.subscribe(&system.subject("http.products.>")).await;

    let reply = http
        .send(
            http.request(Method::GET, &format!("/products/{id}"))
                .header("Mc-Status", "500")
                .header("Mc-Path-Params", format!("id={}", other["id"]))
                .header("MC-ROUTE", "/products")
                .header("mc-query", "limit=1")
                .header("Mc-Smuggled", "yes"),
        )
        .await;
    let data = reply.expect_success(StatusCode::OK);
    assert_eq!(data, first, "the spoofed headers changed the answer");

    let message = match tokio::time::timeout(wait::PROMPT, wire.next()).await {
        Ok(Some(message)) => message,
        _ => system.fail("the forwarded request was not seen on the wire"),
    };
    let headers = message.headers.unwrap_or_default();
    let values = |wanted: &str| -> Vec<String> {
        headers
            .iter()
            .filter(|(name, _)| AsRef::<str>::as_ref(*name).eq_ignore_ascii_case(wanted))
            .flat_map(|(_, values)| values.iter().map(|v| v.as_str().to_owned()))
            .collect()
    };
    assert!(values("Mc-Smuggled").is_empty(), "{headers:?}");
    assert!(values("Mc-Status").is_empty(), "{headers:?}");
    assert!(
        !values("Mc-Query").iter().any(|q| q.contains("limit")),
        "{headers:?}"
    );
    assert_eq!(
        values("Mc-Path-Params"),
        [format!("id={id}")],
        "{headers:?}"
    );
    assert_eq!(values("Mc-Route"), ["GET /products/{id}"], "{headers:?}");
    let request_id = reply.header("x-request-id").expect("every reply has an id");
    assert_eq!(
        values("X-Request-ID"),
        [request_id],
        "the service sees the request id the client sees: {headers:?}"
    );
}
