//! The in-process baselines the gateway is measured against: (c) axum
//! handlers doing the products service's work by hand, the same SQL on
//! the same database and the same durable publish on the same NATS,
//! without gateway or framework; (c') the POST without the outbox; and (d)
//! a bare axum → NATS request → responder hop, in two processes of its own
//! ([`BareHop`]) and (d') inside this one.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use microcore_e2e::{ServiceProcess, System, bare_hop, binaries, free_port, wait};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shared_schemas::Subjects;
use shared_schemas::events::{EventEnvelope, ProductCreated};
use sqlx::PgPool;

/// Database connections of the direct handler: the services' default
/// (`MC_DB_MAX_CONNECTIONS`), so both sides get the same pool.
pub(crate) const POOL_SIZE: u32 = 10;

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
        // The shape of the kernel's `mc_outbox`, in `public` rather than the
        // products schema, so that the service's relay never sees its rows.
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS bench_outbox (
                position BIGSERIAL PRIMARY KEY,
                id TEXT NOT NULL,
                subject TEXT NOT NULL,
                body TEXT NOT NULL,
                traceparent TEXT,
                staged_at_ms BIGINT NOT NULL
            )",
        )
        .execute(&pool)
        .await
        .context("creating the direct handler's outbox")?;
        Ok(Self {
            pool,
            jetstream,
            product_created: subjects.event(ProductCreated::EVENT),
        })
    }

    /// The row, its event staged beside it in one transaction, then the
    /// event published and its outbox row deleted.
    async fn create_through_outbox(&self, new: &NewProduct) -> anyhow::Result<Product> {
        let mut tx = self.pool.begin().await?;
        let product = insert_product(&mut *tx, new).await?;
        let (id, body) = created_event(&product)?;
        let position: i64 = sqlx::query_scalar(
            "INSERT INTO bench_outbox (id, subject, body, staged_at_ms) \
             VALUES ($1, $2, $3, $4) RETURNING position",
        )
        .bind(&id)
        .bind(&self.product_created)
        .bind(std::str::from_utf8(&body)?)
        .bind(time::OffsetDateTime::now_utc().unix_timestamp() * 1000)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        self.publish(&id, body).await?;
        sqlx::query("DELETE FROM bench_outbox WHERE position = $1")
            .bind(position)
            .execute(&self.pool)
            .await?;
        Ok(product)
    }

    /// Publishes `product.created` with its envelope id as the
    /// de-duplication key, and returns once the server stored it.
    async fn publish(&self, id: &str, body: Vec<u8>) -> anyhow::Result<()> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        self.jetstream
            .publish_with_headers(self.product_created.clone(), headers, body.into())
            .await?
            .await?;
        Ok(())
    }
}

/// `product.created` for `product` in the envelope the kernel builds: its
/// id and its JSON.
fn created_event(product: &Product) -> anyhow::Result<(String, Vec<u8>)> {
    // The gateway's request id, which the kernel makes the event's cause.
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
    Ok((envelope.id.clone(), serde_json::to_vec(&envelope)?))
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

/// Inserts a product on `executor`.
async fn insert_product<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    new: &NewProduct,
) -> sqlx::Result<Product> {
    sqlx::query_as(
        "INSERT INTO products.products (name, price, stock) VALUES ($1, $2, $3) \
         RETURNING id, name, price, stock",
    )
    .bind(&new.name)
    .bind(new.price)
    .bind(new.stock)
    .fetch_one(executor)
    .await
}

/// (c): what `POST /products` of the products service does, written by
/// hand without gateway or framework: the row and its `product.created`
/// commit together (an outbox row in the same transaction, as the kernel
/// stages it), then the event is published, the answer waits for the
/// server's acknowledgement, and the outbox row is deleted. The service
/// does the same, but answers at the commit and relays in batches.
pub(crate) async fn direct_create(
    State(direct): State<Direct>,
    Json(new): Json<NewProduct>,
) -> Response {
    match direct.create_through_outbox(&new).await {
        Ok(product) => envelope(StatusCode::CREATED, json!(product)),
        Err(_) => failure(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    }
}

/// (c'): the row and `product.created` without the guarantee that both or
/// neither exist: the INSERT commits on its own and the event is published
/// right after it, the answer waiting for the server's acknowledgement.
/// What the outbox costs is the gap between (c) and this.
pub(crate) async fn direct_create_unstaged(
    State(direct): State<Direct>,
    Json(new): Json<NewProduct>,
) -> Response {
    let Ok(product) = insert_product(&direct.pool, &new).await else {
        return failure(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
    };
    let (id, body) = match created_event(&product) {
        Ok(event) => event,
        Err(_) => return failure(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    };
    match direct.publish(&id, body).await {
        Ok(()) => envelope(StatusCode::CREATED, json!(product)),
        Err(_) => failure(StatusCode::INTERNAL_SERVER_ERROR, "event not published"),
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

/// (d'): both halves of the bare hop inside this process; the address of
/// its `GET /hop`.
pub(crate) async fn start_hop_in_process(system: &System) -> anyhow::Result<SocketAddr> {
    let answering = bare_hop::responder(system.nats().connect().await)
        .await
        .map_err(|e| anyhow::anyhow!("subscribing the in-process responder: {e}"))?;
    tokio::spawn(answering);
    serve(bare_hop::router(system.nats().connect().await)).await
}

/// (d): the `bench-hop` binary's two processes, the HTTP server and the
/// NATS responder, as the gateway and a service would be.
pub(crate) struct BareHop {
    pub server: ServiceProcess,
    pub responder: ServiceProcess,
    pub address: SocketAddr,
}

impl BareHop {
    /// Starts both on the system's NATS and waits until `GET /hop` is
    /// answered; `None` when the workspace has no `bench-hop` binary.
    pub(crate) async fn start(
        system: &System,
        client: &reqwest::Client,
    ) -> anyhow::Result<Option<Self>> {
        let Some(bin) = binaries::try_binary("bench-hop") else {
            return Ok(None);
        };
        let nats = [("NATS_URL", system.nats().url())];
        let responder = ServiceProcess::spawn_with_args(&bin, ["respond"], nats);
        let address = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let server = ServiceProcess::spawn_with_args(&bin, ["serve", &address.to_string()], nats);
        let url = format!("http://{address}/hop");
        let answered = wait::poll(wait::BOOT, || async {
            let reply = client.get(&url).send().await.ok()?;
            reply.status().is_success().then_some(())
        })
        .await;
        if answered.is_none() {
            bail!(
                "the bare hop did not answer GET /hop in time\n{}\n{}",
                server.log_tail(20),
                responder.log_tail(20)
            );
        }
        Ok(Some(Self {
            server,
            responder,
            address,
        }))
    }
}
