//! The gateway's fleet views, against live services: every service and
//! instance with its plugins (a dead one with its reason, while the rest
//! of its service serves), endpoints, subscriptions and the health of its
//! tools (a database that refuses connections, an instance that does not
//! answer, while the view answers).

use microcore_e2e::{System, TestDb, wait};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The instances of live `service` in a `/system/status` answer.
fn instances<'a>(status: &'a Value, service: &str) -> &'a [Value] {
    let services = status["services"].as_array().expect("a list of services");
    let entry = services
        .iter()
        .find(|s| s["name"] == service)
        .unwrap_or_else(|| panic!("{service} is not listed: {status}"));
    assert_eq!(entry["live"], true, "{entry}");
    entry["instances"].as_array().expect("its instances")
}

/// The one instance of `service` in a `/system/status` answer.
fn instance<'a>(status: &'a Value, service: &str) -> &'a Value {
    let instances = instances(status, service);
    assert_eq!(instances.len(), 1, "{service}: {instances:?}");
    &instances[0]
}

/// The health of `name` among the tools of `instance`.
fn tool<'a>(instance: &'a Value, name: &str) -> &'a Value {
    instance["tools"]
        .as_array()
        .and_then(|tools| tools.iter().find(|t| t["tool"] == name))
        .unwrap_or_else(|| panic!("no `{name}` among the tools: {instance}"))
}

/// Whether every instance of `service` reports its database and bus
/// healthy, the database with the latency of its round trip.
fn tools_healthy(status: &Value, service: &str) -> bool {
    instances(status, service).iter().all(|instance| {
        let db = tool(instance, "db");
        db["healthy"] == true
            && db["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0)
            && tool(instance, "bus")["healthy"] == true
            && instance["health_error"].is_null()
    })
}

async fn status(system: &System) -> Value {
    system
        .http()
        .get("/system/status")
        .await
        .expect_success(StatusCode::OK)
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

#[tokio::test]
async fn status_shows_the_health_of_each_instance_tools_and_answers_when_they_fail() {
    // No discovery sweep during the test: the instance it suspends stays
    // listed, as it does between two sweeps.
    let mut system = System::builder()
        .gateway_env("MC_DISCOVERY_INTERVAL_MS", 600_000)
        .start()
        .await;
    // The users service gets a database of its own, to lose it alone.
    let users_db = TestDb::create().await;
    let _products = system.start_products().await;
    let mut users = system
        .start_service("users", "users", &[("DATABASE_URL", users_db.url())])
        .await;
    system.start_gateway().await;
    system.wait_until_routable().await;

    let everything_up = status(&system).await;
    for service in ["products", "users"] {
        assert!(tools_healthy(&everything_up, service), "{everything_up}");
    }

    // The users database goes away: its pool's connections are ended and
    // new ones refused. The next check reports it.
    users_db.refuse_connections().await;
    let db_down = system
        .wait_for(
            "/system/status reports the users database unhealthy",
            wait::PROMPT,
            || async {
                let status = status(&system).await;
                let down = tool(instance(&status, "users"), "db")["healthy"] == false;
                down.then_some(status)
            },
        )
        .await;
    let users_db_health = tool(instance(&db_down, "users"), "db");
    let detail = users_db_health["detail"].as_str().unwrap_or_default();
    assert!(!detail.is_empty(), "{users_db_health}");
    assert!(!detail.contains(users_db.url()), "{users_db_health}");
    assert_eq!(tool(instance(&db_down, "users"), "bus")["healthy"], true);
    assert!(tools_healthy(&db_down, "products"), "{db_down}");

    users_db.accept_connections().await;
    system
        .wait_for(
            "/system/status reports the users database healthy again",
            wait::PROMPT,
            || async { tools_healthy(&status(&system).await, "users").then_some(()) },
        )
        .await;

    // A users instance that answers nothing: the view waits for it no
    // longer than the report timeout and says so.
    users.process().suspend();
    let silent = status(&system).await;
    users.process().resume();
    let silent_users = instance(&silent, "users");
    assert!(silent_users["tools"].is_null(), "{silent_users}");
    assert!(
        silent_users["health_error"]
            .as_str()
            .is_some_and(|e| e.contains("did not answer")),
        "{silent_users}"
    );
    assert_eq!(silent_users["id"], users.id());
    assert!(tools_healthy(&silent, "products"), "{silent}");
}
