//! The `products` service as its next release would run beside the
//! current one, for the rollout suite: the same domain and tables under a
//! newer version (the current one with its minor version raised and a
//! `-canary` pre-release: newer by semantic-version precedence), with
//!
//! - `GET /products/{id}` answering a changed schema (`StockedProduct`,
//!   which adds `in_stock`) on the same endpoint, so its subject is shared
//!   with the current release's replicas;
//! - `GET /products/{id}/availability`, a route the current release does
//!   not have, on a subject only canaries subscribe to.

use std::process::ExitCode;

use microcore::PluginEntry;
use microcore::prelude::*;

#[derive(Debug, Deserialize, ToSchema)]
struct ProductId {
    id: i64,
}

/// A product as the canary describes it.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
struct StockedProduct {
    id: i64,
    name: String,
    price: f64,
    stock: i64,
    /// Whether at least one unit is on hand.
    in_stock: bool,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
struct Availability {
    id: i64,
    in_stock: bool,
}

fn not_found(ctx: &Context, id: i64) -> HandlerError {
    ctx.set_status(StatusCode::NOT_FOUND);
    HandlerError::reject(format!("product {id} not found"))
}

/// Replaces the domain's `get_product`, under its name: the same endpoint.
struct GetStockedProductPlugin {
    db: Db,
    http: Http,
}

impl Plugin for GetStockedProductPlugin {
    type Tools = (Db, Http);

    fn new((db, http): Self::Tools) -> Self {
        Self { db, http }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        self.http
            .get("/products/{id}")
            .tag("Products")
            .summary("Get a product by id, with whether it is in stock")
            .handler(&self, Self::get)?;
        Ok(())
    }
}

impl GetStockedProductPlugin {
    async fn get(self: Arc<Self>, req: ProductId, ctx: Context) -> HandlerResult<StockedProduct> {
        let product = sqlx::query_as(
            "SELECT id, name, price, stock, stock > 0 AS in_stock FROM products WHERE id = $1",
        )
        .bind(req.id)
        .fetch_optional(self.db.pool())
        .await?;
        product.ok_or_else(|| not_found(&ctx, req.id))
    }
}

struct AvailabilityPlugin {
    db: Db,
    http: Http,
}

impl Plugin for AvailabilityPlugin {
    type Tools = (Db, Http);

    fn new((db, http): Self::Tools) -> Self {
        Self { db, http }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        self.http
            .get("/products/{id}/availability")
            .tag("Products")
            .summary("Whether a product is in stock")
            .handler(&self, Self::get)?;
        Ok(())
    }
}

impl AvailabilityPlugin {
    async fn get(self: Arc<Self>, req: ProductId, ctx: Context) -> HandlerResult<Availability> {
        let availability =
            sqlx::query_as("SELECT id, stock > 0 AS in_stock FROM products WHERE id = $1")
                .bind(req.id)
                .fetch_optional(self.db.pool())
                .await?;
        availability.ok_or_else(|| not_found(&ctx, req.id))
    }
}

/// `<major>.<minor + 1>.0-canary` of the products crate's version.
fn canary_version() -> &'static str {
    let current = products::domain().version;
    let mut numbers = current.split('.').map(|n| n.parse::<u64>().unwrap_or(0));
    let major = numbers.next().unwrap_or(0);
    let minor = numbers.next().unwrap_or(0);
    // Once per process, for the domain's `&'static str`.
    Box::leak(format!("{major}.{}.0-canary", minor + 1).into_boxed_str())
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut domain = products::domain();
    domain.version = canary_version();
    domain
        .plugins
        .retain(|plugin| plugin.name() != "get_product");
    domain
        .plugins
        .push(PluginEntry::of::<GetStockedProductPlugin>("get_product"));
    domain.plugins.push(PluginEntry::of::<AvailabilityPlugin>(
        "product_availability",
    ));
    microcore::cli::run(domain).await
}
