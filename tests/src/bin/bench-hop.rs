//! The bare hop of the benchmark's (d) ([`microcore_e2e::bare_hop`]),
//! one half per process, like the gateway and a service:
//!
//! ```text
//! NATS_URL=… bench-hop respond                # answers `bench.hop`
//! NATS_URL=… bench-hop serve 127.0.0.1:8081   # GET /hop: one NATS request
//! ```
//!
//! Same allocator as the framework's binaries, so that (e)/(d) is what the
//! framework costs, not what an allocator saves.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use microcore_e2e::bare_hop;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("NATS_URL").context("NATS_URL is not set")?;
    let client = async_nats::connect(&url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (Some("respond"), None) => {
            let answering = bare_hop::responder(client)
                .await
                .map_err(|e| anyhow::anyhow!("subscribing: {e}"))?;
            answering.await;
            Ok(())
        }
        (Some("serve"), Some(address)) => {
            let address: SocketAddr = address
                .parse()
                .with_context(|| format!("{address}: not a socket address"))?;
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("binding {address}"))?;
            axum::serve(listener, bare_hop::router(client)).await?;
            Ok(())
        }
        _ => bail!("usage: bench-hop respond | bench-hop serve ADDRESS"),
    }
}
