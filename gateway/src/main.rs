//! The gateway process: configuration from the environment (and `.env`),
//! NATS, HTTP, and a graceful stop on SIGTERM or SIGINT: no new
//! connections, the requests in flight finish, exit code 0.

use std::sync::Arc;

use anyhow::{Context as _, bail};
use gateway::{Gateway, GatewayConfig};
use microcore::transport::NatsTransport;
use shared_schemas::Subjects;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match dotenvy::dotenv() {
        Err(e) if !e.not_found() => return Err(e).context("reading .env"),
        _ => {}
    }
    microcore::telemetry::init_logging();
    let config = GatewayConfig::from_env()?;

    let listener = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding {}", config.http_addr))?;
    let nats = NatsTransport::connect(
        &config.nats_url,
        "gateway",
        Subjects::new(&config.subject_prefix),
    )
    .await
    .with_context(|| format!("connecting to NATS at {}", config.nats_url))?;
    let client = nats.client().clone();
    let gateway = Gateway::start(&config, Arc::new(nats))
        .await
        .context("starting discovery")?;

    // Known once connected: a body that cannot fit one NATS message would
    // fail every such request with 502, so refuse to start instead.
    let max_payload = client.server_info().max_payload;
    if max_payload > 0 && config.body_limit >= max_payload {
        bail!(
            "MC_BODY_LIMIT={} is invalid: the body and its headers must fit the NATS server's \
             max_payload of {max_payload} bytes",
            config.body_limit
        );
    }

    tracing::info!(addr = %config.http_addr, "gateway listening");
    gateway
        .serve(listener, microcore::service::shutdown_signal())
        .await
        .context("serving HTTP")?;
    tracing::info!("gateway stopped");
    Ok(())
}
