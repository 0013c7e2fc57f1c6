//! The composition root: the gateway and every domain in one process. The
//! only crate that depends on every domain.
//!
//! `cargo run --release` needs nothing installed: the services talk over
//! the in-process transport and each keeps its tables in its own SQLite
//! file under `MC_DATA_DIR` (default `data/`). Set `NATS_URL` and the same
//! process joins a NATS system instead; set `DATABASE_URL` (Postgres) and
//! each domain owns a schema there. The gateway and the services share one
//! `MC_AUTH_SECRET`, random for the process when unset.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use gateway::{Gateway, GatewayConfig};
use microcore::tools::Db;
use microcore::transport::{InProcessTransport, NatsTransport, Transport};
use microcore::{Domain, Service, ServiceConfig};
use shared_schemas::Subjects;

/// Every domain of the application.
fn domains() -> Vec<Domain> {
    vec![
        products::domain(),
        users::domain(),
        orders::domain(),
        notifications::domain(),
    ]
}

// The hot paths allocate many small, short-lived buffers (headers,
// subjects, spans), which mimalloc serves at a fraction of glibc's cost.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let _ = dotenvy::dotenv();
    let _telemetry = microcore::telemetry::init("microcore");
    let mut config = ServiceConfig::from_env()?;
    let mut gateway_config = GatewayConfig::from_env()?;
    if config.auth_secret.is_none() {
        // One process signs and verifies, so a key of its own will do; the
        // tokens it issues end with it.
        tracing::warn!(
            "MC_AUTH_SECRET is not set: access tokens are valid until this process stops"
        );
        config.auth_secret = Some(format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        ));
    }
    gateway_config.auth_secret = config.auth_secret.clone();

    let transport: Arc<dyn Transport> = match &config.nats_url {
        Some(url) => Arc::new(
            NatsTransport::connect(url, "microcore", Subjects::new(&config.subject_prefix))
                .await
                .context("connecting to NATS")?,
        ),
        None => {
            tracing::info!(
                "NATS_URL is not set: services talk in-process; events live in memory and end with the process"
            );
            Arc::new(InProcessTransport::new())
        }
    };
    // One subscriber logs for every service; each record names its own.
    microcore::telemetry::forward_logs(transport.clone(), Subjects::new(&config.subject_prefix));
    let mut services = Vec::new();
    for domain in domains() {
        let db = Db::for_service(&config, domain.name)
            .await
            .with_context(|| format!("connecting {} to its database", domain.name))?;
        services.push(
            Service::new(domain, config.clone())
                .start(transport.clone(), db)
                .await?,
        );
    }

    let gateway = Gateway::start(&gateway_config, transport).await?;
    let listener = tokio::net::TcpListener::bind(gateway_config.http_addr)
        .await
        .with_context(|| format!("binding {}", gateway_config.http_addr))?;
    tracing::info!(
        ready_in_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "microcore is up: http://{}/docs",
        gateway_config
            .http_addr
            .to_string()
            .replace("0.0.0.0", "localhost")
    );
    gateway
        .serve(listener, microcore::service::shutdown_signal())
        .await?;
    for service in services {
        service.shutdown().await?;
    }
    Ok(())
}
