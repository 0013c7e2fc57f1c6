//! The composition root: the gateway and every domain in one process,
//! sharing one bus connection. The only crate that depends on every domain.
//!
//! `cargo run --release` starts it with the configuration of the
//! environment (`NATS_URL`, `DATABASE_URL`, `MC_HTTP_ADDR` …); each domain
//! still owns its own schema in the database. The gateway and the services
//! share one `MC_AUTH_SECRET`, random for the process when unset.

use std::sync::Arc;

use anyhow::Context as _;
use gateway::{Gateway, GatewayConfig};
use microcore::tools::Db;
use microcore::transport::{NatsTransport, Transport};
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = dotenvy::dotenv();
    microcore::telemetry::init_logging();
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

    let transport: Arc<dyn Transport> = Arc::new(
        NatsTransport::connect(
            &config.nats_url,
            "microcore",
            Subjects::new(&config.subject_prefix),
        )
        .await
        .context("connecting to NATS")?,
    );
    let mut services = Vec::new();
    for domain in domains() {
        let schema = config
            .database_schema
            .clone()
            .unwrap_or_else(|| domain.name.to_owned());
        let db = Db::connect(
            &config.database_url,
            Some(&schema),
            config.database_max_connections,
        )
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
