//! `GET /products?limit=&offset=`: a page of the catalogue, by id.

use microcore::prelude::*;

const DEFAULT_LIMIT: i64 = 20;
const MAX_LIMIT: i64 = 100;

#[derive(Debug, Deserialize, ToSchema)]
pub struct ListProductsRequest {
    /// Page size, 1 to 100 (default 20).
    pub limit: Option<i64>,
    /// Products to skip (default 0).
    pub offset: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ProductSummary {
    pub id: i64,
    pub name: String,
    pub price: f64,
    pub stock: i64,
}

pub struct ListProductsPlugin {
    db: Db,
    http: Http,
}

impl Plugin for ListProductsPlugin {
    type Tools = (Db, Http);

    fn new((db, http): Self::Tools) -> Self {
        Self { db, http }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        self.http
            .get("/products")
            .tag("Products")
            .summary("List products")
            .handler(&self, Self::list)?;
        Ok(())
    }
}

impl ListProductsPlugin {
    async fn list(
        self: Arc<Self>,
        req: ListProductsRequest,
        _ctx: Context,
    ) -> HandlerResult<Vec<ProductSummary>> {
        let limit = req.limit.unwrap_or(DEFAULT_LIMIT);
        let offset = req.offset.unwrap_or(0);
        if !(1..=MAX_LIMIT).contains(&limit) || offset < 0 {
            return Err(HandlerError::reject(format!(
                "limit must be between 1 and {MAX_LIMIT} and offset must not be negative"
            )));
        }
        let page = sqlx::query_as(
            "SELECT id, name, price, stock FROM products ORDER BY id LIMIT $1 OFFSET $2",
        )
        .bind(limit)
        .bind(offset)
        .fetch_all(self.db.pool())
        .await?;
        Ok(page)
    }
}
