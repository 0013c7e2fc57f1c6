//! The gateway's fleet views, against live services: every service and
//! instance with its plugins (a dead one with its reason, while the rest
//! of its service serves), endpoints and subscriptions.

use microcore_e2e::System;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The one instance of `service` in a `/system/status` answer.
fn instance<'a>(status: &'a Value, service: &str) -> &'a Value {
    let services = status["services"].as_array().expect("a list of services");
    let entry = services
        .iter()
        .find(|s| s["name"] == service)
        .unwrap_or_else(|| panic!("{service} is not listed: {status}"));
    assert_eq!(entry["live"], true, "{entry}");
    let instances = entry["instances"].as_array().expect("its instances");
    assert_eq!(instances.len(), 1, "{entry}");
    &instances[0]
}

#[tokio::test]
async fn status_lists_every_instance_with_its_plugins_endpoints_and_subscriptions() {
    // No MC_AUTH_SECRET: the users service has no `auth` tool, so its
    // login plugin is dead and the rest of the service serves.
    let mut system = System::start().await;
    let products = system.start_service("products", "products", &[]).await;
    let users = system.start_service("users", "users", &[]).await;
    system.start_gateway().await;
    system.wait_until_routable().await;

    let status = system
        .http()
        .get("/system/status")
        .await
        .expect_success(StatusCode::OK);
    let users_instance = instance(&status, "users");
    assert_eq!(users_instance["id"], users.id());
    assert_eq!(users_instance["transport"], "nats");
    assert!(
        users_instance["host"]
            .as_str()
            .is_some_and(|h| !h.is_empty())
    );
    assert!(
        users_instance["uptime_secs"]
            .as_i64()
            .is_some_and(|s| s >= 0)
    );
    let plugins = users_instance["plugins"].as_array().expect("plugins");
    let plugin = |name: &str| {
        plugins
            .iter()
            .find(|p| p["plugin"] == name)
            .unwrap_or_else(|| panic!("{name} is not listed: {plugins:?}"))
    };
    assert_eq!(plugin("users.register_user")["state"], "ready");
    let login = plugin("users.login");
    assert_eq!(login["state"], "dead");
    assert!(
        login["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("missing tool `auth`"),
        "{login}"
    );
    let endpoints = users_instance["endpoints"].as_array().expect("endpoints");
    assert!(endpoints.contains(&json!({
        "kind": "http", "name": "register_user", "method": "POST", "path": "/users", "authenticated": false,
    })), "{endpoints:?}");
    assert!(
        endpoints.iter().all(|e| e["path"] != "/auth/login"),
        "{endpoints:?}"
    );

    // The dead plugin's route does not exist; its neighbours serve.
    let login_attempt = system
        .http()
        .post_json("/auth/login", &json!({"email": "a@b.c", "password": "x"}))
        .await;
    login_attempt.expect_error(StatusCode::NOT_FOUND);
    system
        .http()
        .post_json(
            "/users",
            &json!({"email": "ada@example.com", "password": "correct horse", "name": "Ada"}),
        )
        .await
        .expect_success(StatusCode::CREATED);

    let products_instance = instance(&status, "products");
    assert_eq!(products_instance["id"], products.id());
    let subscriptions = products_instance["subscriptions"]
        .as_array()
        .expect("subscriptions");
    assert!(subscriptions.contains(&json!({
        "subscriber": "products.reserve_stock.order.placed", "event": "order.placed", "audience": "plugin",
    })), "{subscriptions:?}");
    let endpoints = products_instance["endpoints"]
        .as_array()
        .expect("endpoints");
    assert!(
        endpoints.contains(&json!({"kind": "rpc", "name": "products.quote"})),
        "{endpoints:?}"
    );

    let document = system.http().get("/openapi.json").await.json();
    assert_eq!(
        document["paths"]["/system/status"]["get"]["tags"],
        json!(["System"])
    );
}
