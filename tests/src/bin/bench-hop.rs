//! The bare hop of the benchmark's (d): what a gateway → NATS → service
//! request-reply costs written by hand, with axum and async-nats and none
//! of the framework. Two processes, like the gateway and a service:
//!
//! ```text
//! NATS_URL=… bench-hop respond         # answers `bench.hop` with a static body
//! NATS_URL=… bench-hop serve 127.0.0.1:8081   # GET /hop: one NATS request
//! ```
//!
//! Same allocator as the framework's binaries, so that (e)/(d) is what the
//! framework costs, not what an allocator saves.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SUBJECT: &str = "bench.hop";

/// What the responder answers: the framework's envelope, as `bench-echo`
/// answers `GET /bench/ping`.
const PONG: &[u8] = br#"{"success":true,"data":{"pong":true},"error":null}"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("NATS_URL").context("NATS_URL is not set")?;
    let client = async_nats::connect(&url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (Some("respond"), None) => respond(client).await,
        (Some("serve"), Some(address)) => {
            let address: SocketAddr = address
                .parse()
                .with_context(|| format!("{address}: not a socket address"))?;
            serve(client, address).await
        }
        _ => bail!("usage: bench-hop respond | bench-hop serve ADDRESS"),
    }
}

/// Answers every request on [`SUBJECT`] with [`PONG`]; says `ready` once
/// the server routes the subscription.
async fn respond(client: async_nats::Client) -> anyhow::Result<()> {
    let mut requests = client.subscribe(SUBJECT).await?;
    client.flush().await?;
    println!("ready");
    while let Some(request) = requests.next().await {
        if let Some(reply) = request.reply {
            client.publish(reply, Bytes::from_static(PONG)).await?;
        }
    }
    Ok(())
}

async fn serve(client: async_nats::Client, address: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding {address}"))?;
    let router = Router::new().route("/hop", get(hop)).with_state(client);
    axum::serve(listener, router).await?;
    Ok(())
}

/// One NATS request-reply behind an HTTP handler.
async fn hop(State(client): State<async_nats::Client>) -> Response {
    match client.request(SUBJECT, Bytes::new()).await {
        Ok(reply) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            reply.payload,
        )
            .into_response(),
        Err(_) => (StatusCode::BAD_GATEWAY, "no reply").into_response(),
    }
}
