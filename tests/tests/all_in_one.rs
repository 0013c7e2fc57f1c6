//! The all-in-one binary (`cargo run` at the workspace root): the gateway and
//! every domain in one process, on its own (the embedded default) or joined
//! to NATS and Postgres, serving the same system as the separate processes
//! do, events and authentication included.

use std::time::Duration;

use futures_util::StreamExt;
use microcore_e2e::{System, wait};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn the_all_in_one_binary_joins_nats_and_postgres_when_told_to() {
    let mut system = System::start().await;
    system.start_all_in_one().await;
    system.wait_until_routable().await;
    let mut events = system
        .subscribe(&system.subject("events.product.created"))
        .await;

    let created = system
        .http()
        .post_json(
            "/products",
            &json!({"name": "Lamp", "price": 20.0, "stock": 3}),
        )
        .await
        .expect_success(StatusCode::CREATED);
    let id = created["id"].as_i64().expect("an integer id");
    assert_eq!(
        created,
        json!({"id": id, "name": "Lamp", "price": 20.0, "stock": 3})
    );
    assert_eq!(system.product_count().await, 1);
    let event = match tokio::time::timeout(wait::PROMPT, events.next()).await {
        Ok(Some(message)) => serde_json::from_slice::<serde_json::Value>(&message.payload)
            .expect("the event is JSON"),
        _ => system.fail("no product.created event"),
    };
    assert_eq!(event["payload"]["id"], id, "{event}");

    // Without MC_AUTH_SECRET the process signs its own tokens.
    let http = system.http();
    let account = http.sign_up("ada@example.com", "correct horse").await;
    let token = account.token.as_str();
    let order = http
        .send(
            http.request(Method::POST, "/orders")
                .bearer_auth(token)
                .json(&json!({"lines": [{"product_id": id, "quantity": 2}]})),
        )
        .await
        .expect_success(StatusCode::CREATED);
    assert_eq!(order["total"], 40.0);

    let notified = system
        .wait_for(
            "the welcome and the order notifications",
            Duration::from_secs(15),
            || async {
                let reply = http
                    .send(
                        http.request(Method::GET, "/notifications")
                            .bearer_auth(token),
                    )
                    .await;
                let list = reply.json()["data"].as_array().cloned().unwrap_or_default();
                (list.len() == 2).then_some(list)
            },
        )
        .await;
    assert!(
        notified[1]["message"]
            .as_str()
            .unwrap()
            .starts_with("Welcome"),
        "{notified:?}"
    );

    let health = http.get("/health").await.expect_success(StatusCode::OK);
    assert_eq!(health["transports"], json!(["nats"]), "{health}");
    let doc = system.http().get("/openapi.json").await.json();
    for path in [
        "/products",
        "/products/{id}",
        "/users/me",
        "/orders",
        "/notifications",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} is documented: {doc}"
        );
    }
}

#[tokio::test]
async fn the_embedded_default_needs_nothing_installed_and_says_what_it_runs_on() {
    let embedded = microcore_e2e::Embedded::start().await;
    let health = embedded
        .http()
        .get("/health")
        .await
        .expect_success(StatusCode::OK);
    assert_eq!(health["services"], 4, "{health}");
    assert_eq!(health["transports"], json!(["in-process"]), "{health}");
    let status = embedded
        .http()
        .get("/system/status")
        .await
        .expect_success(StatusCode::OK);
    let services = status["services"].as_array().expect("a list of services");
    assert_eq!(services.len(), 4, "{status}");
    for instance in services
        .iter()
        .flat_map(|s| s["instances"].as_array().into_iter().flatten())
    {
        let tools = instance["tools"].as_array().expect("the tools' health");
        let tool = |name: &str| tools.iter().find(|t| t["tool"] == name);
        assert!(
            tool("db").is_some_and(|db| db["healthy"] == true && db["latency_ms"].is_f64()),
            "the SQLite file answers: {instance}"
        );
        assert!(
            tool("bus").is_some_and(|bus| bus["healthy"] == true),
            "{instance}"
        );
    }
    let mut files: Vec<String> = std::fs::read_dir(embedded.data_dir())
        .expect("the data directory exists")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".db"))
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["notifications.db", "orders.db", "products.db", "users.db"],
        "a SQLite file per service"
    );
}
