//! The four domains of the sample shop, each its own process, talking only
//! through the bus: a customer registers, logs in and orders; the catalogue
//! prices the order over request-reply and reserves its stock on
//! `order.placed`; notifications tells the customer about both events.

use std::time::Duration;

use microcore_e2e::{ServiceInstance, System, wait};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

/// The gateway and the four services, configured with one auth secret.
async fn shop() -> (System, Vec<ServiceInstance>) {
    let mut system = System::builder()
        .gateway_env("MC_AUTH_SECRET", SECRET)
        .service_env("MC_AUTH_SECRET", SECRET)
        .start()
        .await;
    let mut services = Vec::new();
    for name in ["products", "users", "orders", "notifications"] {
        services.push(system.start_service(name, name, &[]).await);
    }
    system.start_gateway().await;
    system.wait_until_routable().await;
    (system, services)
}

/// Registers and logs in a customer; returns their id and bearer token.
async fn customer(system: &System, email: &str) -> (String, String) {
    let http = system.http();
    let user = http
        .post_json(
            "/users",
            &json!({"email": email, "password": "correct horse battery", "name": "Ada"}),
        )
        .await
        .expect_success(StatusCode::CREATED);
    let login = http
        .post_json(
            "/auth/login",
            &json!({"email": email, "password": "correct horse battery"}),
        )
        .await
        .expect_success(StatusCode::OK);
    let token = login["access_token"].as_str().expect("a token").to_owned();
    (user["id"].to_string(), token)
}

async fn product(system: &System, name: &str, price: f64, stock: i64) -> i64 {
    let created = system
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
async fn order(
    system: &System,
    token: &str,
    request_id: &str,
    lines: Value,
) -> microcore_e2e::Reply {
    let http = system.http();
    http.send(
        http.request(Method::POST, "/orders")
            .bearer_auth(token)
            .header("X-Request-ID", request_id)
            .json(&json!({ "lines": lines })),
    )
    .await
}

async fn get(system: &System, token: &str, path: &str) -> microcore_e2e::Reply {
    let http = system.http();
    http.send(http.request(Method::GET, path).bearer_auth(token))
        .await
}

/// Waits until the holder of `token` has at least `count` notifications.
async fn notifications(system: &System, token: &str, count: usize) -> Vec<Value> {
    wait::poll(Duration::from_secs(15), || async {
        let reply = get(system, token, "/notifications").await;
        let list = reply.json()["data"].as_array().cloned().unwrap_or_default();
        (list.len() >= count).then_some(list)
    })
    .await
    .unwrap_or_else(|| system.fail(format!("fewer than {count} notifications")))
}

async fn stock(system: &System, product_id: i64) -> i64 {
    let reply = system.http().get(&format!("/products/{product_id}")).await;
    reply.expect_success(StatusCode::OK)["stock"]
        .as_i64()
        .expect("stock")
}

#[tokio::test]
async fn register_login_order_reserve_and_notify_across_four_services() {
    let (system, _services) = shop().await;
    let (user_id, token) = customer(&system, "ada@example.com").await;
    let teapot = product(&system, "Teapot", 12.5, 10).await;
    let cup = product(&system, "Cup", 3.0, 4).await;

    let request_id = format!("order-{}", uuid::Uuid::new_v4());
    let placed = order(
        &system,
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
        let order = get(&system, &token, &format!("/orders/{order_id}")).await;
        (order.json()["data"]["status"] == "reserved").then_some(())
    })
    .await
    .unwrap_or_else(|| system.fail("the order was never reserved"));
    assert_eq!(stock(&system, teapot).await, 8);
    assert_eq!(stock(&system, cup).await, 0);

    // Welcome, then the order, newest first.
    let list = notifications(&system, &token, 2).await;
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(
        list[0]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("#{order_id}")),
        "{list:?}"
    );
    assert!(
        list[1]["message"].as_str().unwrap().starts_with("Welcome"),
        "{list:?}"
    );

    // The chain: the notification was caused by `order.placed`, which the
    // HTTP request caused.
    let placed_events = system.streams().events("order.placed").await;
    assert_eq!(placed_events.len(), 1, "{placed_events:?}");
    let event = &placed_events[0];
    assert_eq!(event["parent_id"], request_id.as_str());
    assert_eq!(event["emitter"], "orders.place_order");
    assert_eq!(event["payload"]["user_id"], user_id.trim_matches('"'));
    assert_eq!(list[0]["event_id"], event["id"]);
    assert_eq!(list[0]["correlation_id"], request_id.as_str());
    let reserved = system.streams().wait_for_events("stock.reserved", 1).await;
    assert_eq!(
        reserved[0]["parent_id"], event["id"],
        "reserved because of the order"
    );
    assert_eq!(reserved[0]["correlation_id"], request_id.as_str());
}

#[tokio::test]
async fn an_order_is_readable_by_its_owner_only() {
    let (system, _services) = shop().await;
    let (_, owner) = customer(&system, "owner@example.com").await;
    let (_, stranger) = customer(&system, "stranger@example.com").await;
    let teapot = product(&system, "Teapot", 12.5, 10).await;
    let placed = order(
        &system,
        &owner,
        "r-1",
        json!([{"product_id": teapot, "quantity": 1}]),
    )
    .await
    .expect_success(StatusCode::CREATED);
    let path = format!("/orders/{}", placed["id"]);

    get(&system, &owner, &path)
        .await
        .expect_success(StatusCode::OK);
    get(&system, &stranger, &path)
        .await
        .expect_error(StatusCode::FORBIDDEN);
    get(&system, &owner, "/orders/999999")
        .await
        .expect_error(StatusCode::NOT_FOUND);
    let anonymous = system.http().get(&path).await;
    anonymous.expect_error(StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn ordering_refuses_unknown_products_short_stock_and_an_absent_catalogue() {
    let (system, mut services) = shop().await;
    let (_, token) = customer(&system, "ada@example.com").await;
    let cup = product(&system, "Cup", 3.0, 1).await;

    let unknown = order(
        &system,
        &token,
        "r-1",
        json!([{"product_id": 424242, "quantity": 1}]),
    )
    .await;
    assert!(
        unknown.expect_error(StatusCode::NOT_FOUND)["error"]
            .as_str()
            .unwrap()
            .contains("424242")
    );
    let short = order(
        &system,
        &token,
        "r-2",
        json!([{"product_id": cup, "quantity": 2}]),
    )
    .await;
    assert!(
        short.expect_error(StatusCode::CONFLICT)["error"]
            .as_str()
            .unwrap()
            .contains("in stock")
    );

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
    let (system, mut services) = shop().await;
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
    let (system, mut services) = shop().await;
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
