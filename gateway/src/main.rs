//! The gateway process: configuration from the environment, NATS, HTTP,
//! graceful shutdown on SIGTERM or SIGINT.

use std::sync::Arc;

use anyhow::Context as _;
use gateway::{Gateway, GatewayConfig};
use microcore::transport::NatsTransport;
use shared_schemas::Subjects;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = dotenvy::dotenv();
    let _telemetry = microcore::telemetry::init("gateway");
    let config = GatewayConfig::from_env()?;
    let transport = NatsTransport::connect(
        &config.nats_url,
        "gateway",
        Subjects::new(&config.subject_prefix),
    )
    .await
    .context("connecting to NATS")?;
    let gateway = Gateway::start(&config, Arc::new(transport)).await?;
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding {}", config.http_addr))?;
    tracing::info!(addr = %config.http_addr, "gateway listening");
    gateway
        .serve(listener, microcore::service::shutdown_signal())
        .await?;
    tracing::info!("gateway stopped");
    Ok(())
}
