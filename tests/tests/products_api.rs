//! The products domain through the gateway: what a client of the catalogue
//! relies on, checked against the database and the event stream.

use futures_util::StreamExt;
use microcore_e2e::{System, wait};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Inserts products straight into the service's table, for tests about the
/// read side.
async fn seed(system: &System, count: usize) -> Vec<i64> {
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO products.products (name, price) VALUES ($1, $2) RETURNING id",
        )
        .bind(format!("seeded {n}"))
        .bind(n as f64 + 0.5)
        .fetch_one(system.db().pool())
        .await
        .expect("seeding the products table");
        ids.push(id);
    }
    ids
}

/// The next message on `subscription`, as JSON.
async fn next_event(system: &System, subscription: &mut async_nats::Subscriber) -> Value {
    match tokio::time::timeout(wait::PROMPT, subscription.next()).await {
        Ok(Some(message)) => serde_json::from_slice(&message.payload).unwrap_or_else(|e| {
            system.fail(format!(
                "the event is not JSON ({e}): {}",
                String::from_utf8_lossy(&message.payload)
            ))
        }),
        Ok(None) => system.fail("the event subscription ended"),
        Err(_) => system.fail(format!("no event arrived within {:?}", wait::PROMPT)),
    }
}

#[tokio::test]
async fn creating_a_product_stores_it_announces_it_and_serves_it() {
    let (system, _products) = System::with_products().await;
    let mut events = system
        .subscribe(&system.subject("events.product.created"))
        .await;

    let request_id = format!("e2e-create-{}", uuid::Uuid::new_v4());
    let reply = system
        .http()
        .send(
            system
                .http()
                .request(Method::POST, "/products")
                .header("X-Request-ID", &request_id)
                .json(&json!({"name": "Teapot", "price": 12.5})),
        )
        .await;
    let created = reply.expect_success(StatusCode::CREATED);
    let id = created["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("the created product has an integer id: {reply}"));
    assert_eq!(
        created,
        json!({"id": id, "name": "Teapot", "price": 12.5, "stock": 0})
    );

    let row: (String, f64) =
        sqlx::query_as("SELECT name, price FROM products.products WHERE id = $1")
            .bind(id)
            .fetch_one(system.db().pool())
            .await
            .expect("the created product is in the database");
    assert_eq!(row, ("Teapot".to_owned(), 12.5));

    let event = next_event(&system, &mut events).await;
    assert_eq!(event["event"], "product.created", "{event}");
    assert_eq!(
        event["payload"],
        json!({"id": id, "name": "Teapot", "price": 12.5}),
        "{event}"
    );
    assert_eq!(event["emitter"], "products.create_product", "{event}");
    assert_eq!(
        event["parent_id"], request_id,
        "the event's parent is the request that caused it: {event}"
    );
    assert!(
        event["id"].as_str().is_some_and(|s| !s.is_empty()),
        "the envelope has an id: {event}"
    );

    let fetched = system.http().get(&format!("/products/{id}")).await;
    assert_eq!(
        fetched.expect_success(StatusCode::OK),
        json!({"id": id, "name": "Teapot", "price": 12.5, "stock": 0})
    );
}

#[tokio::test]
async fn refused_input_changes_nothing() {
    let (system, _products) = System::with_products().await;
    let http = system.http();
    let mut events = system
        .subscribe(&system.subject("events.product.created"))
        .await;

    let not_json = http
        .send(
            http.request(Method::POST, "/products")
                .header("Content-Type", "application/json")
                .body("{name: Teapot"),
        )
        .await;
    not_json.expect_error(StatusCode::UNPROCESSABLE_ENTITY);

    for (case, body) in [
        ("wrong type", json!({"name": "Teapot", "price": "cheap"})),
        ("missing field", json!({"name": "Teapot"})),
    ] {
        let reply = http.post_json("/products", &body).await;
        let error = reply.expect_error(StatusCode::UNPROCESSABLE_ENTITY);
        let fields: Vec<&str> = error["details"]
            .as_array()
            .unwrap_or_else(|| panic!("{case}: a 422 lists the offending fields: {reply}"))
            .iter()
            .filter_map(|d| d["field"].as_str())
            .collect();
        assert!(
            fields.contains(&"price"),
            "{case}: `price` is named as the offending field: {reply}"
        );
        for detail in error["details"].as_array().into_iter().flatten() {
            assert!(
                detail["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{case}: every detail explains itself: {reply}"
            );
        }
    }

    // Well-formed but against the catalogue's rules: a business failure.
    for (case, body) in [
        ("blank name", json!({"name": "  ", "price": 1.0})),
        ("negative price", json!({"name": "Teapot", "price": -1.0})),
    ] {
        let reply = http.post_json("/products", &body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{case}: {reply}");
        reply.expect_error(StatusCode::BAD_REQUEST);
    }

    assert_eq!(system.product_count().await, 0, "refused input wrote rows");

    // Nothing was published for the refused requests: the first event on
    // the subject is the one of the next valid request.
    let valid = http
        .post_json("/products", &json!({"name": "Kettle", "price": 30.0}))
        .await
        .expect_success(StatusCode::CREATED);
    let event = next_event(&system, &mut events).await;
    assert_eq!(event["payload"]["id"], valid["id"], "{event}");
    assert_eq!(system.product_count().await, 1);
}

#[tokio::test]
async fn a_missing_product_is_404_and_a_malformed_id_422() {
    let (system, _products) = System::with_products().await;
    let missing = system.http().get("/products/987654321").await;
    missing.expect_error(StatusCode::NOT_FOUND);

    let malformed = system.http().get("/products/not-a-number").await;
    let error = malformed.expect_error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        error["details"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["field"] == "id")),
        "the 422 names `id`: {malformed}"
    );
}

#[tokio::test]
async fn path_parameters_reach_the_service_percent_decoded() {
    let (system, _products) = System::with_products().await;
    let ids = seed(&system, 1).await;
    let encoded: String = ids[0]
        .to_string()
        .bytes()
        .map(|b| format!("%{b:02X}"))
        .collect();
    let found = system
        .http()
        .get(&format!("/products/{encoded}"))
        .await
        .expect_success(StatusCode::OK);
    assert_eq!(found["id"], ids[0], "`{encoded}` is read as {}", ids[0]);
}

#[tokio::test]
async fn the_catalogue_is_listed_in_pages() {
    let (system, _products) = System::with_products().await;
    let ids = seed(&system, 25).await;
    let http = system.http();

    let ids_of = |data: &Value| -> Vec<i64> {
        data.as_array()
            .unwrap_or_else(|| panic!("`data` is an array: {data}"))
            .iter()
            .map(|p| p["id"].as_i64().expect("products have integer ids"))
            .collect()
    };

    let first_page = http.get("/products").await.expect_success(StatusCode::OK);
    assert_eq!(
        ids_of(&first_page),
        ids[..20],
        "the default page is 20, by id"
    );
    assert_eq!(
        first_page[0],
        json!({"id": ids[0], "name": "seeded 0", "price": 0.5, "stock": 0})
    );

    let page = http
        .get("/products?limit=3&offset=22")
        .await
        .expect_success(StatusCode::OK);
    assert_eq!(ids_of(&page), ids[22..]);

    let past_the_end = http
        .get("/products?offset=100")
        .await
        .expect_success(StatusCode::OK);
    assert_eq!(ids_of(&past_the_end), Vec::<i64>::new());

    let all = http
        .get("/products?limit=100")
        .await
        .expect_success(StatusCode::OK);
    assert_eq!(ids_of(&all), ids);

    let too_many = http.get("/products?limit=101").await;
    assert!(
        too_many.status.is_client_error(),
        "a page larger than 100 is refused: {too_many}"
    );
    assert_eq!(too_many.json()["success"], false, "{too_many}");
}

#[tokio::test]
async fn a_custom_subject_prefix_carries_all_traffic() {
    let (system, _products) = System::builder()
        .subject_prefix("shop")
        .with_products()
        .await;
    // A plain subscriber on every subject sees a copy of each message,
    // including the gateway's requests to the service's queue group.
    let mut everything = system.subscribe(">").await;

    let created = system
        .http()
        .post_json("/products", &json!({"name": "Mug", "price": 4.0}))
        .await
        .expect_success(StatusCode::CREATED);

    let mut subjects = Vec::new();
    let mut event = None;
    let deadline = tokio::time::Instant::now() + wait::PROMPT;
    while event.is_none()
        || !subjects
            .iter()
            .any(|s| s == "shop.http.products.create_product")
    {
        match tokio::time::timeout_at(deadline, everything.next()).await {
            Ok(Some(message)) => {
                if message.subject.as_str() == "shop.events.product.created" {
                    event = serde_json::from_slice::<Value>(&message.payload).ok();
                }
                subjects.push(message.subject.to_string());
            }
            Ok(None) | Err(_) => system.fail(format!(
                "expected the request on shop.http.products.create_product and the event on \
                 shop.events.product.created; saw {subjects:?}"
            )),
        }
    }
    let event = event.expect("seen above");
    assert_eq!(event["payload"]["id"], created["id"], "{event}");
    let unprefixed: Vec<&String> = subjects.iter().filter(|s| s.starts_with("mc.")).collect();
    assert!(
        unprefixed.is_empty(),
        "traffic escaped the prefix: {unprefixed:?}"
    );
}
