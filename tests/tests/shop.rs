//! The sample shop end to end: a customer registers, logs in and orders;
//! the catalogue prices the order over request-reply and reserves its
//! stock on `order.placed`; notifications tells the customer about both
//! events. The flows run on both topologies, unchanged: four service
//! processes over NATS and Postgres, and the embedded default (one process,
//! in-process transport, SQLite). What only a distributed system can show
//! (a service down, a crash, the events in JetStream) runs there alone.

use std::time::Duration;

use microcore_e2e::{Embedded, Front, Reply, ServiceInstance, System, on_both_topologies, wait};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

/// The gateway and the four services, configured with one auth secret.
async fn distributed() -> (System, Vec<ServiceInstance>) {
    System::builder()
        .gateway_env("MC_AUTH_SECRET", SECRET)
        .service_env("MC_AUTH_SECRET", SECRET)
        .with_shop()
        .await
}

/// Registers and logs in a customer; returns their id and bearer token.
async fn customer(shop: &impl Front, email: &str) -> (String, String) {
    let account = shop.http().sign_up(email, "correct horse battery").await;
    (account.id, account.token)
}

async fn product(shop: &impl Front, name: &str, price: f64, stock: i64) -> i64 {
    let created = shop
        .http()
        .post_json(
            "/products",
            &json!({"name": name, "price": price, "stock": stock}),
        )
        .await
        .expect_success(StatusCode::CREATED);
    created["id"].as_i64().expect("a product id")
}

/// `POST /orders` as the holder of `token`, with `request_id`.
async fn order(shop: &impl Front, token: &str, request_id: &str, lines: Value) -> Reply {
    let http = shop.http();
    http.send(
        http.request(Method::POST, "/orders")
            .bearer_auth(token)
            .header("X-Request-ID", request_id)
            .json(&json!({ "lines": lines })),
    )
    .await
}

async fn get(shop: &impl Front, token: &str, path: &str) -> Reply {
    let http = shop.http();
    http.send(http.request(Method::GET, path).bearer_auth(token))
        .await
}

/// Waits until the holder of `token` has at least `count` notifications.
async fn notifications(shop: &impl Front, token: &str, count: usize) -> Vec<Value> {
    wait::poll(Duration::from_secs(15), || async {
        let reply = get(shop, token, "/notifications").await;
        let list = reply.json()["data"].as_array().cloned().unwrap_or_default();
        (list.len() >= count).then_some(list)
    })
    .await
    .unwrap_or_else(|| shop.fail(format!("fewer than {count} notifications")))
}

async fn stock(shop: &impl Front, product_id: i64) -> i64 {
    let reply = shop.http().get(&format!("/products/{product_id}")).await;
    reply.expect_success(StatusCode::OK)["stock"]
        .as_i64()
        .expect("stock")
}

/// A customer's order of two teapots and four cups, reserved: the
/// customer's token, the order id and the request id that placed it.
async fn reserved_order(shop: &impl Front) -> (String, String, i64, String) {
    let (user_id, token) = customer(shop, "ada@example.com").await;
    let teapot = product(shop, "Teapot", 12.5, 10).await;
    let cup = product(shop, "Cup", 3.0, 4).await;

    let request_id = format!("order-{}", uuid::Uuid::new_v4());
    let placed = order(
        shop,
        &token,
        &request_id,
        json!([{"product_id": teapot, "quantity": 2}, {"product_id": cup, "quantity": 4}]),
    )
    .await
    .expect_success(StatusCode::CREATED);
    assert_eq!(placed["total"], 37.0);
    assert_eq!(placed["status"], "placed");
    let order_id = placed["id"].as_i64().expect("an order id");

    // The catalogue reserves the stock and the order learns it.
    wait::poll(Duration::from_secs(15), || async {
        let order = get(shop, &token, &format!("/orders/{order_id}")).await;
        (order.json()["data"]["status"] == "reserved").then_some(())
    })
    .await
    .unwrap_or_else(|| shop.fail("the order was never reserved"));
    assert_eq!(stock(shop, teapot).await, 8);
    assert_eq!(stock(shop, cup).await, 0);
    (user_id, token, order_id, request_id)
}

// ---- the flows, on both topologies ----

async fn register_login_order_reserve_and_notify(shop: &impl Front) {
    let (_, token, order_id, request_id) = reserved_order(shop).await;

    // Welcome, then the order, newest first; the order's notification
    // comes from the chain the HTTP request started.
    let list = notifications(shop, &token, 2).await;
    assert_eq!(list.len(), 2, "{list:?}");
    let message = |i: usize| list[i]["message"].as_str().unwrap_or_default().to_owned();
    assert!(message(0).contains(&format!("#{order_id}")), "{list:?}");
    assert!(message(1).starts_with("Welcome"), "{list:?}");
    assert_eq!(list[0]["correlation_id"], request_id.as_str());
    assert!(list[0]["event_id"].is_string(), "{list:?}");
}

async fn an_order_is_readable_by_its_owner_only(shop: &impl Front) {
    let (_, owner) = customer(shop, "owner@example.com").await;
    let (_, stranger) = customer(shop, "stranger@example.com").await;
    let teapot = product(shop, "Teapot", 12.5, 10).await;
    let placed = order(
        shop,
        &owner,
        "r-1",
        json!([{"product_id": teapot, "quantity": 1}]),
    )
    .await
    .expect_success(StatusCode::CREATED);
    let path = format!("/orders/{}", placed["id"]);

    get(shop, &owner, &path)
        .await
        .expect_success(StatusCode::OK);
    get(shop, &stranger, &path)
        .await
        .expect_error(StatusCode::FORBIDDEN);
    get(shop, &owner, "/orders/999999")
        .await
        .expect_error(StatusCode::NOT_FOUND);
    let anonymous = shop.http().get(&path).await;
    anonymous.expect_error(StatusCode::UNAUTHORIZED);
}

async fn ordering_refuses_unknown_products_and_short_stock(shop: &impl Front) {
    let (_, token) = customer(shop, "ada@example.com").await;
    let cup = product(shop, "Cup", 3.0, 1).await;

    let unknown = order(
        shop,
        &token,
        "r-1",
        json!([{"product_id": 424242, "quantity": 1}]),
    )
    .await;
    let error = unknown.expect_error(StatusCode::NOT_FOUND);
    assert!(
        error["error"].as_str().unwrap().contains("424242"),
        "{error}"
    );
    let short = order(
        shop,
        &token,
        "r-2",
        json!([{"product_id": cup, "quantity": 2}]),
    )
    .await;
    let error = short.expect_error(StatusCode::CONFLICT);
    assert!(
        error["error"].as_str().unwrap().contains("in stock"),
        "{error}"
    );
    let none = order(shop, &token, "r-3", json!([])).await;
    none.expect_error(StatusCode::BAD_REQUEST);
    let mine = get(shop, &token, "/notifications").await;
    assert_eq!(
        mine.expect_success(StatusCode::OK).as_array().map(Vec::len),
        Some(1),
        "only the welcome"
    );
}

/// The embedded process, for [`on_both_topologies!`].
async fn embedded() -> Embedded {
    Embedded::start().await
}

on_both_topologies! {
    register_login_order_reserve_and_notify,
    an_order_is_readable_by_its_owner_only,
    ordering_refuses_unknown_products_and_short_stock,
}

// ---- what only the distributed system shows ----

#[tokio::test]
async fn the_events_in_the_stream_chain_back_to_the_http_request() {
    let (system, _services) = distributed().await;
    let (user_id, token, _, request_id) = reserved_order(&system).await;
    let list = notifications(&system, &token, 2).await;
    let streams = system.streams();

    let placed_events = streams.events("order.placed").await;
    assert_eq!(placed_events.len(), 1, "{placed_events:?}");
    let event = &placed_events[0];
    assert_eq!(event["parent_id"], request_id.as_str());
    assert_eq!(event["emitter"], "orders.place_order");
    assert_eq!(event["payload"]["user_id"], user_id.trim_matches('"'));
    assert_eq!(list[0]["event_id"], event["id"]);
    let reserved = streams.wait_for_events("stock.reserved", 1).await;
    assert_eq!(
        reserved[0]["parent_id"], event["id"],
        "reserved because of the order"
    );
    assert_eq!(reserved[0]["correlation_id"], request_id.as_str());
}

#[tokio::test]
async fn ordering_answers_clearly_while_the_catalogue_is_down() {
    let (system, mut services) = distributed().await;
    let (_, token) = customer(&system, "ada@example.com").await;
    let cup = product(&system, "Cup", 3.0, 1).await;

    services[0].terminate().await; // products
    let absent = order(
        &system,
        &token,
        "r-3",
        json!([{"product_id": cup, "quantity": 1}]),
    )
    .await;
    let error = absent.expect_error(StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        error["error"].as_str().unwrap().contains("catalogue"),
        "{error}"
    );
    assert_eq!(
        system.db().count("orders.orders").await,
        0,
        "no order without a price"
    );
}

#[tokio::test]
async fn notifications_published_while_the_service_was_down_arrive_after_it_restarts() {
    let (system, mut services) = distributed().await;
    services[3].terminate().await; // notifications
    let (_, ada) = customer(&system, "ada@example.com").await;
    let (_, bob) = customer(&system, "bob@example.com").await;
    let teapot = product(&system, "Teapot", 12.5, 10).await;
    order(
        &system,
        &ada,
        "r-1",
        json!([{"product_id": teapot, "quantity": 1}]),
    )
    .await
    .expect_success(StatusCode::CREATED);

    let _notifications = system
        .start_service("notifications", "notifications", &[])
        .await;
    assert_eq!(notifications(&system, &ada, 2).await.len(), 2);
    assert_eq!(notifications(&system, &bob, 1).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        system.db().count("notifications.notifications").await,
        3,
        "each event once"
    );
}

#[tokio::test]
async fn an_order_committed_before_a_crash_is_announced_once_after_restart() {
    let (system, mut services) = distributed().await;
    let (_, token) = customer(&system, "ada@example.com").await;
    let teapot = product(&system, "Teapot", 12.5, 10).await;

    // Swap in an orders instance whose relay holds events for a minute.
    services[2].terminate().await;
    let mut orders = system
        .start_service("orders", "orders", &[("MC_OUTBOX_RELAY_DELAY_MS", "60000")])
        .await;
    order(
        &system,
        &token,
        "r-1",
        json!([{"product_id": teapot, "quantity": 3}]),
    )
    .await
    .expect_success(StatusCode::CREATED);
    assert_eq!(
        system.db().count("orders.mc_outbox").await,
        1,
        "committed with the order"
    );
    orders.process().kill();
    assert!(system.streams().events("order.placed").await.is_empty());

    let _orders = system.start_service("orders", "orders", &[]).await;
    system.streams().wait_for_events("order.placed", 1).await;
    let list = notifications(&system, &token, 2).await;
    wait::poll(Duration::from_secs(10), || async {
        (stock(&system, teapot).await == 7).then_some(())
    })
    .await
    .unwrap_or_else(|| system.fail("the stock was not reserved"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(system.streams().events("order.placed").await.len(), 1);
    assert_eq!(list.len(), 2, "welcome and one order: {list:?}");
    assert_eq!(stock(&system, teapot).await, 7, "reserved once");
    assert_eq!(system.db().count("orders.mc_outbox").await, 0);
}
