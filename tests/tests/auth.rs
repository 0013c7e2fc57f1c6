//! Accounts and authentication across processes: the users service
//! registers and logs in, the gateway verifies tokens for every
//! authenticated route of every service, and handlers receive the verified
//! claims and nothing a client could make up.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use microcore_e2e::{Reply, System, wait};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared_schemas::auth::Claims;

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";
const PASSWORD: &str = "correct horse battery";

/// The gateway, users and the auth probe, sharing one secret.
async fn start() -> (System, Vec<microcore_e2e::ServiceInstance>) {
    let mut system = System::builder()
        .gateway_env("MC_AUTH_SECRET", SECRET)
        .service_env("MC_AUTH_SECRET", SECRET)
        .start()
        .await;
    let services = vec![
        system.start_service("users", "users", &[]).await,
        system.start_service("auth-probe", "auth-probe", &[]).await,
    ];
    system.start_gateway().await;
    system
        .wait_for_status("/users/me", StatusCode::UNAUTHORIZED, wait::BOOT)
        .await;
    (system, services)
}

async fn register(system: &System, email: &str) -> Value {
    system
        .http()
        .post_json(
            "/users",
            &json!({"email": email, "password": PASSWORD, "name": "Ada"}),
        )
        .await
        .expect_success(StatusCode::CREATED)
}

async fn login(system: &System, email: &str, password: &str) -> Reply {
    system
        .http()
        .post_json(
            "/auth/login",
            &json!({"email": email, "password": password}),
        )
        .await
}

/// Registers `email` and returns its user id and a bearer token.
async fn account(system: &System, email: &str) -> (String, String) {
    let account = system.http().sign_up(email, PASSWORD).await;
    (account.id, account.token)
}

/// A token signed with `secret` whose claims are `claims`.
fn signed(secret: &str, claims: &Claims) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("a key"),
    )
    .expect("a token")
}

fn claims(sub: &str, expires_in_secs: i64) -> Claims {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    Claims {
        sub: sub.to_owned(),
        iat: now,
        exp: now.saturating_add_signed(expires_in_secs),
        extra: Default::default(),
    }
}

#[tokio::test]
async fn accounts_register_log_in_and_read_themselves_without_exposing_the_password() {
    let (system, _services) = start().await;
    let user = register(&system, "  Ada@Example.com ").await;
    let fields: Vec<&str> = user
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        ["email", "id", "name"],
        "never the password or its hash"
    );
    assert_eq!(user["email"], "ada@example.com");

    let stored: String = sqlx::query_scalar("SELECT password_hash FROM users.users")
        .fetch_one(system.db().pool())
        .await
        .unwrap();
    assert!(
        stored.starts_with("$argon2id$") && !stored.contains(PASSWORD),
        "{stored}"
    );

    let again = system
        .http()
        .post_json(
            "/users",
            &json!({"email": "ada@example.com", "password": PASSWORD, "name": "Eve"}),
        )
        .await;
    again.expect_error(StatusCode::CONFLICT);
    let weak = system
        .http()
        .post_json(
            "/users",
            &json!({"email": "bob@example.com", "password": "short", "name": "Bob"}),
        )
        .await;
    assert!(
        weak.expect_error(StatusCode::BAD_REQUEST)["error"]
            .as_str()
            .unwrap()
            .contains("8")
    );
    assert_eq!(
        system.db().count("users.users").await,
        1,
        "refusals write nothing"
    );

    // A wrong password and an unknown address look the same.
    let wrong = login(&system, "ada@example.com", "wrong horse battery").await;
    let unknown = login(&system, "nobody@example.com", PASSWORD).await;
    assert_eq!(
        wrong.expect_error(StatusCode::UNAUTHORIZED),
        unknown.expect_error(StatusCode::UNAUTHORIZED)
    );

    let ok = login(&system, "ADA@example.com", PASSWORD).await;
    let cookie = ok.header("set-cookie").expect("a cookie").to_owned();
    let session = ok.expect_success(StatusCode::OK);
    assert_eq!(session["token_type"], "Bearer");
    assert_eq!(session["expires_in"], 3600);
    assert!(
        cookie.starts_with("access_token=") && cookie.contains("HttpOnly"),
        "{cookie}"
    );

    let http = system.http();
    let token = session["access_token"].as_str().unwrap();
    let me = http
        .send(http.request(Method::GET, "/users/me").bearer_auth(token))
        .await;
    assert_eq!(me.expect_success(StatusCode::OK), user);

    let created = system.streams().wait_for_events("user.created", 1).await;
    assert_eq!(created[0]["emitter"], "users.register_user");
    assert_eq!(created[0]["payload"]["id"], user["id"]);
    assert!(created[0]["payload"].get("password").is_none());
}

#[tokio::test]
async fn authenticated_routes_admit_valid_tokens_only() {
    let (system, _services) = start().await;
    let (user_id, token) = account(&system, "ada@example.com").await;
    let http = system.http();
    let get = |auth: Option<String>| {
        let request = http.request(Method::GET, "/probe/private/x");
        match auth {
            Some(value) => request.header("Authorization", value),
            None => request,
        }
    };

    let refused = [
        (None, "authentication required"),
        (Some("Bearer".to_owned()), "invalid"),
        (Some("Bearer not-a-token".to_owned()), "invalid"),
        (Some(format!("Basic {token}")), "invalid"),
        (
            Some(format!(
                "Bearer {}",
                signed(
                    "another-secret-that-is-long-enough!!",
                    &claims(&user_id, 600)
                )
            )),
            "invalid",
        ),
        (
            Some(format!(
                "Bearer {}",
                signed(SECRET, &claims(&user_id, -3600))
            )),
            "expired",
        ),
    ];
    for (authorization, why) in refused {
        let reply = http.send(get(authorization.clone())).await;
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"), "{reply}");
        let error = reply.expect_error(StatusCode::UNAUTHORIZED);
        assert!(
            error["error"].as_str().unwrap().contains(why),
            "{authorization:?}: {error}"
        );
    }

    let admitted = http.send(get(Some(format!("Bearer {token}")))).await;
    let identity = admitted.expect_success(StatusCode::OK);
    assert_eq!(
        identity["user"].to_string(),
        format!("\"{}\"", user_id.trim_matches('"'))
    );
    assert_eq!(identity["email"], "ada@example.com");

    // A browser's cookie works too, but a state change needs the proof a
    // cross-site form cannot give.
    let cookie = format!("access_token={token}");
    let by_cookie = http
        .send(
            http.request(Method::GET, "/probe/private/x")
                .header("Cookie", &cookie),
        )
        .await;
    by_cookie.expect_success(StatusCode::OK);
    let forged_form = http
        .send(
            http.request(Method::POST, "/probe/private/x")
                .header("Cookie", &cookie),
        )
        .await;
    forged_form.expect_error(StatusCode::FORBIDDEN);
    let from_the_app = http
        .send(
            http.request(Method::POST, "/probe/private/x")
                .header("Cookie", &cookie)
                .header("X-Requested-With", "fetch"),
        )
        .await;
    from_the_app.expect_success(StatusCode::OK);
}

#[tokio::test]
async fn no_client_input_can_set_the_identity_a_handler_receives() {
    let (system, _services) = start().await;
    let (ada, token) = account(&system, "ada@example.com").await;
    let ada = ada.trim_matches('"').to_owned();
    let forged = claims("mallory", 600).to_header();
    let http = system.http();
    let forging = |method: Method, path: &str| {
        http.request(
            method,
            &format!("{path}?sub=mallory&_auth=mallory&user=mallory"),
        )
        .header("Mc-Auth", &forged)
        .header("mc-auth", &forged)
        .header("X-User", "mallory")
        .header("X-Auth-User", "mallory")
        .json(&json!({"sub": "mallory", "_auth": "mallory", "user": "mallory"}))
    };

    for method in [Method::GET, Method::POST] {
        // Authenticated: the token's subject, whatever else the request says.
        let reply = http
            .send(forging(method.clone(), "/probe/private/mallory").bearer_auth(&token))
            .await;
        let seen = reply.expect_success(StatusCode::OK);
        assert_eq!(seen["user"], ada.as_str(), "{method}: {seen}");
        assert_eq!(seen["sub"], "mallory", "the client's field is only data");

        // Without a token the forged header opens nothing.
        let reply = http
            .send(forging(method.clone(), "/probe/private/mallory"))
            .await;
        reply.expect_error(StatusCode::UNAUTHORIZED);

        // Public routes never have an identity, forged or real.
        for request in [
            forging(method.clone(), "/probe/public/mallory"),
            forging(method.clone(), "/probe/public/mallory").bearer_auth(&token),
        ] {
            let seen = http.send(request).await.expect_success(StatusCode::OK);
            assert_eq!(seen["user"], Value::Null, "{method}: {seen}");
            assert_eq!(seen["email"], Value::Null, "{method}: {seen}");
        }
    }

    // Behind the gateway's back, straight over NATS without its claims:
    // the service itself refuses.
    let routes = http
        .get("/system/routes")
        .await
        .expect_success(StatusCode::OK);
    let subject = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["method"] == "GET" && r["path"] == "/probe/private/{sub}")
        .and_then(|r| r["subject"].as_str())
        .expect("the private route is listed")
        .to_owned();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Mc-Path-Params", "sub=mallory");
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        system
            .client()
            .request_with_headers(subject, headers, Default::default()),
    )
    .await
    .expect("an answer in time")
    .expect("an answer");
    // HTTP header names travel lower-cased.
    let status = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("mc-status"))
        .map(|v| v.as_str().to_owned());
    assert_eq!(status.as_deref(), Some("401"), "{reply:?}");
    let body: Value = serde_json::from_slice(&reply.payload).expect("an envelope");
    assert_eq!(body["success"], false);
}

#[tokio::test]
async fn the_docs_show_protected_operations_and_accept_a_bearer_token() {
    let (system, _services) = start().await;
    let document = system.http().get("/openapi.json").await.json();
    let scheme = &document["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    let me = &document["paths"]["/users/me"]["get"];
    assert_eq!(me["security"], json!([{"bearerAuth": []}]));
    assert!(me["responses"]["401"].is_object());
    for public in [
        &document["paths"]["/users"]["post"],
        &document["paths"]["/auth/login"]["post"],
    ] {
        assert!(
            public.is_object() && public.get("security").is_none(),
            "{public}"
        );
    }
}
