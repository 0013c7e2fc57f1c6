//! The bare hop the benchmark measures the framework against: an axum
//! handler making one NATS request per HTTP request, and a responder that
//! answers with a static body, written with axum and async-nats alone.
//! The `bench-hop` binary runs each in a process of its own, like the
//! gateway and a service (the benchmark's (d)); the benchmark also runs
//! both inside itself (d').

use std::future::Future;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;

/// The subject the hop's requests go to.
pub const SUBJECT: &str = "bench.hop";

/// What the responder answers: the framework's envelope, as `bench-echo`
/// answers `GET /bench/ping`.
pub const PONG: &[u8] = br#"{"success":true,"data":{"pong":true},"error":null}"#;

/// `GET /hop`: one NATS request to [`SUBJECT`], its reply as the body.
pub fn router(client: async_nats::Client) -> Router {
    Router::new().route("/hop", get(hop)).with_state(client)
}

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

/// Subscribes to [`SUBJECT`] and returns, once the server has the
/// subscription, the loop that answers every request with [`PONG`].
pub async fn responder(
    client: async_nats::Client,
) -> Result<impl Future<Output = ()>, async_nats::Error> {
    let mut requests = client.subscribe(SUBJECT).await?;
    client.flush().await?;
    Ok(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                // A caller that gave up is no error of the responder's.
                let _ = client.publish(reply, Bytes::from_static(PONG)).await;
            }
        }
    })
}
