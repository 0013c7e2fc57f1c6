//! The in-process baselines the gateway is measured against: (c) axum
//! handlers doing the products service's externally visible work on the
//! same database and NATS, without gateway, framework or outbox, and (d) a
//! bare axum → NATS request → responder hop.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Context as _;
use async_nats::jetstream;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use futures_util::StreamExt;
use microcore_e2e::System;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shared_schemas::Subjects;
use shared_schemas::events::{EventEnvelope, ProductCreated};
use sqlx::PgPool;

/// Database connections of the direct handler: the services' default
/// (`MC_DB_MAX_CONNECTIONS`), so both sides get the same pool.
pub(crate) const POOL_SIZE: u32 = 10;

/// The static answer of the bare hop's responder.
const PONG: &[u8] = br#"{"success":true,"data":{"pong":true},"error":null}"#;

#[derive(Serialize, sqlx::FromRow)]
struct Product {
    id: i64,
    name: String,
    price: f64,
    stock: i64,
}

#[derive(Deserialize)]
pub(crate) struct NewProduct {
    name: String,
    price: f64,
    #[serde(default)]
    stock: i64,
}

/// What the direct handlers (c) work with: the products table, and the
/// events stream through their own NATS connection.
#[derive(Clone)]
pub(crate) struct Direct {
    pool: PgPool,
    jetstream: jetstream::Context,
    /// `<prefix>.events.product.created`.
    product_created: String,
}

impl Direct {
    /// Connects to the system's NATS; fails unless the events stream
    /// exists (the products service creates it at boot).
    pub(crate) async fn connect(system: &System, pool: PgPool) -> anyhow::Result<Self> {
        let subjects = Subjects::new(system.prefix());
        let jetstream = jetstream::new(system.nats().connect().await);
        let stream = subjects.events_stream();
        jetstream
            .get_stream(&stream)
            .await
            .with_context(|| format!("the events stream {stream} does not exist"))?;
        Ok(Self {
            pool,
            jetstream,
            product_created: subjects.event(ProductCreated::EVENT),
        })
    }

    /// Publishes `product.created` for `product` in the envelope the
    /// kernel builds, and returns once the server stored it.
    async fn publish_created(&self, product: &Product) -> anyhow::Result<()> {
        // The gateway's request id, which the kernel makes the event's
        // cause.
        let request_id = uuid::Uuid::new_v4().to_string();
        let envelope = EventEnvelope {
            id: uuid::Uuid::new_v4().to_string(),
            event: ProductCreated::EVENT.to_owned(),
            payload: ProductCreated {
                id: product.id,
                name: product.name.clone(),
                price: product.price,
            },
            emitter: "products.create_product".to_owned(),
            timestamp: rfc3339_now(),
            parent_id: Some(request_id.clone()),
            correlation_id: Some(request_id),
            key: None,
            headers: BTreeMap::new(),
        };
        let body = serde_json::to_vec(&envelope)?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, envelope.id.as_str());
        self.jetstream
            .publish_with_headers(self.product_created.clone(), headers, body.into())
            .await?
            .await?;
        Ok(())
    }
}

/// Now in RFC 3339, UTC, as envelopes are stamped.
fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn envelope(status: StatusCode, data: Value) -> Response {
    (
        status,
        Json(json!({"success": true, "data": data, "error": null})),
    )
        .into_response()
}

fn failure(status: StatusCode, error: &str) -> Response {
    (
        status,
        Json(json!({"success": false, "data": null, "error": error})),
    )
        .into_response()
}

/// (c): what `GET /products/{id}` of the products service does, without
/// gateway or NATS.
pub(crate) async fn direct_get(State(direct): State<Direct>, Path(id): Path<i64>) -> Response {
    let found = sqlx::query_as::<_, Product>(
        "SELECT id, name, price, stock FROM products.products WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&direct.pool)
    .await;
    match found {
        Ok(Some(product)) => envelope(StatusCode::OK, json!(product)),
        Ok(None) => failure(StatusCode::NOT_FOUND, "not found"),
        Err(_) => failure(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    }
}

/// (c): what `POST /products` of the products service does, seen from
/// outside — the row, then `product.created` stored durably — without
/// gateway, framework or outbox: the INSERT commits on its own and the
/// event is published right after it, the answer waiting for the
/// server's acknowledgement. (The service instead stages the event in the
/// INSERT's transaction and answers after the commit; its relay publishes
/// after that.)
pub(crate) async fn direct_create(
    State(direct): State<Direct>,
    Json(new): Json<NewProduct>,
) -> Response {
    let created = sqlx::query_as::<_, Product>(
        "INSERT INTO products.products (name, price, stock) VALUES ($1, $2, $3) \
         RETURNING id, name, price, stock",
    )
    .bind(new.name)
    .bind(new.price)
    .bind(new.stock)
    .fetch_one(&direct.pool)
    .await;
    let Ok(product) = created else {
        return failure(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
    };
    match direct.publish_created(&product).await {
        Ok(()) => envelope(StatusCode::CREATED, json!(product)),
        Err(_) => failure(StatusCode::INTERNAL_SERVER_ERROR, "event not published"),
    }
}

/// (d): one NATS request-reply behind an HTTP handler.
pub(crate) async fn hop(State(client): State<async_nats::Client>) -> Response {
    match client.request("bench.hop", Bytes::new()).await {
        Ok(reply) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            reply.payload,
        )
            .into_response(),
        Err(_) => failure(StatusCode::BAD_GATEWAY, "no reply"),
    }
}

/// Serves `router` on a free loopback port of this process.
pub(crate) async fn serve(router: Router) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            eprintln!("in-process server stopped: {e}");
        }
    });
    Ok(address)
}

/// Answers every request on `bench.hop` with [`PONG`].
pub(crate) async fn start_responder(client: async_nats::Client) -> anyhow::Result<()> {
    let mut requests = client.subscribe("bench.hop").await?;
    client.flush().await?;
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                let _ = client.publish(reply, Bytes::from_static(PONG)).await;
            }
        }
    });
    Ok(())
}
