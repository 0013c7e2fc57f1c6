//! The all-in-one binary (`cargo run` at the workspace root): the gateway and
//! every domain in one process must serve the same API as the separate
//! processes do.

use futures_util::StreamExt;
use microcore_e2e::{System, wait};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn the_all_in_one_binary_serves_the_products_api() {
    let mut system = System::start().await;
    system.start_all_in_one().await;
    system.wait_until_routable().await;
    let mut events = system
        .subscribe(&system.subject("events.product.created"))
        .await;

    let created = system
        .http()
        .post_json("/products", &json!({"name": "Lamp", "price": 20.0}))
        .await
        .expect_success(StatusCode::CREATED);
    let id = created["id"].as_i64().expect("an integer id");
    assert_eq!(created, json!({"id": id, "name": "Lamp", "price": 20.0}));
    assert_eq!(system.product_count().await, 1);

    let fetched = system
        .http()
        .get(&format!("/products/{id}"))
        .await
        .expect_success(StatusCode::OK);
    assert_eq!(fetched, created);

    let event = match tokio::time::timeout(wait::PROMPT, events.next()).await {
        Ok(Some(message)) => serde_json::from_slice::<serde_json::Value>(&message.payload)
            .expect("the event is JSON"),
        _ => system.fail("no product.created event"),
    };
    assert_eq!(event["payload"]["id"], id, "{event}");

    let doc = system.http().get("/openapi.json").await.json();
    for path in ["/products", "/products/{id}"] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} is documented: {doc}"
        );
    }
}
