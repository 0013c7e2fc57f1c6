//! What an orchestrator relies on to run a service: migrations as a step
//! of their own, and the readiness and liveness probes, asked the way
//! Kubernetes asks (HTTP) and the way a compose health check asks (the
//! binary's `health` command).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use microcore_e2e::env_template::Variables;
use microcore_e2e::{PRODUCTS, PRODUCTS_TABLE, System, binary, free_port, wait};
use reqwest::StatusCode;
use serde_json::Value;

/// Runs `bin args…` to completion with only `env`, as a pipeline step or a
/// container's health check would.
async fn run(bin: &Path, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut command = Command::new(bin);
    command
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null());
    let what = format!("{} {args:?}", bin.display());
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the command's thread")
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `GET http://addr/path`: the status and the envelope.
async fn probe(addr: &str, path: &str) -> Option<(StatusCode, Value)> {
    let reply = reqwest::get(format!("http://{addr}{path}")).await.ok()?;
    let status = reply.status();
    Some((status, reply.json().await.ok()?))
}

#[tokio::test]
async fn a_service_that_must_not_migrate_at_boot_waits_for_its_migrate_step() {
    let system = System::start().await;
    let no_migration = [("MC_MIGRATE_ON_BOOT", "false")];

    let mut refused = system.spawn_service(PRODUCTS, &no_migration);
    let status = refused.wait_for_exit(wait::BOOT).await;
    assert!(
        !status.success(),
        "it must not start on an unmigrated database"
    );
    let log = refused.log_tail(20);
    assert!(
        log.contains("run `products migrate` first"),
        "the refusal says what to do: {log}"
    );

    let database = [("DATABASE_URL", system.db().url().to_owned())];
    for attempt in ["first", "second"] {
        let migrated = run(&binary(PRODUCTS), &["migrate"], &database).await;
        assert!(
            migrated.status.success(),
            "the {attempt} `products migrate` fails: {}",
            stderr(&migrated)
        );
    }
    assert_eq!(system.product_count().await, 0, "{PRODUCTS_TABLE} exists");

    system
        .start_service(PRODUCTS, PRODUCTS, &no_migration)
        .await;
}

#[tokio::test]
async fn readiness_follows_what_the_instance_can_do_while_liveness_only_asks_that_it_runs() {
    let mut system = System::start().await;
    system.start_gateway().await;
    let health_addr = format!("127.0.0.1:{}", free_port());
    let mut products = system
        .start_service(PRODUCTS, PRODUCTS, &[("MC_HEALTH_ADDR", &health_addr)])
        .await;
    system.wait_until_routable().await;

    // The compose health check: the binary asks its own instance.
    let probe_env = [(
        "MC_HEALTH_ADDR",
        health_addr.replace("127.0.0.1", "0.0.0.0"),
    )];
    for args in [&["health"][..], &["health", "--live"]] {
        let checked = run(&binary(PRODUCTS), args, &probe_env).await;
        assert!(checked.status.success(), "{args:?}: {}", stderr(&checked));
    }
    let (status, ready) = probe(&health_addr, "/health/ready")
        .await
        .expect("ready answers");
    assert_eq!(status, StatusCode::OK);
    let tools: Vec<&str> = ready["data"]["tools"]
        .as_array()
        .expect("the tools it checked")
        .iter()
        .filter_map(|tool| tool["tool"].as_str())
        .collect();
    assert_eq!(tools, ["bus", "db"]);

    // No database: alive, not ready, and it says why.
    system.db().refuse_connections().await;
    let unready = system
        .wait_for(
            "readiness to fail without the database",
            wait::BOOT,
            || async {
                probe(&health_addr, "/health/ready")
                    .await
                    .filter(|(status, _)| *status == StatusCode::SERVICE_UNAVAILABLE)
            },
        )
        .await;
    let reason = unready.1["error"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("db is unhealthy"), "{reason}");
    let unready_check = run(&binary(PRODUCTS), &["health"], &probe_env).await;
    assert!(
        !unready_check.status.success(),
        "`health` fails when not ready"
    );
    let (live, _) = probe(&health_addr, "/health/live")
        .await
        .expect("live answers");
    assert_eq!(live, StatusCode::OK);
    system.db().accept_connections().await;
    system
        .wait_for(
            "readiness to come back with the database",
            wait::BOOT,
            || async {
                probe(&health_addr, "/health/ready")
                    .await
                    .filter(|(status, _)| *status == StatusCode::OK)
            },
        )
        .await;

    // Draining: a request holds the instance (its row is locked), SIGTERM
    // makes it unready at once, alive until the request is answered.
    let mut lock = system.db().pool().begin().await.expect("a transaction");
    sqlx::query("LOCK TABLE products.products IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("the products table locks");
    let http = system.http().clone();
    let held = tokio::spawn(async move { http.get("/products/1").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    products.process().send_sigterm();
    let (_, stopping) = system
        .wait_for("readiness to say it is stopping", wait::BOOT, || async {
            probe(&health_addr, "/health/ready")
                .await
                .filter(|(status, _)| *status == StatusCode::SERVICE_UNAVAILABLE)
        })
        .await;
    assert_eq!(stopping["data"]["status"], "stopping");
    let (live, _) = probe(&health_addr, "/health/live")
        .await
        .expect("alive while it drains");
    assert_eq!(live, StatusCode::OK);
    lock.rollback().await.expect("the lock is released");
    let answered = held.await.expect("the held request");
    assert_eq!(answered.status, StatusCode::NOT_FOUND, "{answered}");
    assert!(products.process().wait_for_exit(wait::BOOT).await.success());
    assert!(
        probe(&health_addr, "/health/live").await.is_none(),
        "gone with the process"
    );
}

#[tokio::test]
async fn the_gateway_answers_its_probes_on_its_http_address() {
    let mut system = System::start().await;
    system.start_gateway().await;
    let (status, _) = probe(
        system.http().base().trim_start_matches("http://"),
        "/health/ready",
    )
    .await
    .expect("the gateway answers");
    assert_eq!(status, StatusCode::OK);
    let addr = system
        .http()
        .base()
        .trim_start_matches("http://")
        .to_owned();
    for args in [&["health"][..], &["health", "--live"]] {
        let checked = run(&binary("gateway"), args, &[("MC_HTTP_ADDR", addr.clone())]).await;
        assert!(checked.status.success(), "{args:?}: {}", stderr(&checked));
    }
}

#[test]
fn each_binary_lists_what_a_deployment_must_set() {
    let required = |bin: &str| Variables::of(bin).required;
    let names = |names: &[&str]| {
        names
            .iter()
            .map(|n| (*n).to_owned())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        required(PRODUCTS),
        names(&["NATS_URL", "DATABASE_URL", "MC_HEALTH_ADDR"])
    );
    // Its login plugin signs tokens: the `auth` tool.
    assert_eq!(
        required("users"),
        names(&[
            "NATS_URL",
            "DATABASE_URL",
            "MC_HEALTH_ADDR",
            "MC_AUTH_SECRET"
        ])
    );
    assert_eq!(required("gateway"), names(&["NATS_URL"]));
}
