//! `PUT /products/{id}/stock`: set the units on hand of a product.

use microcore::prelude::*;

#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateStockRequest {
    pub id: i64,
    /// Units on hand from now on.
    pub stock: i64,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct StockLevel {
    pub id: i64,
    pub stock: i64,
}

pub struct UpdateStockPlugin {
    db: Db,
    http: Http,
}

impl Plugin for UpdateStockPlugin {
    type Tools = (Db, Http);

    fn new((db, http): Self::Tools) -> Self {
        Self { db, http }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        self.http
            .put("/products/{id}/stock")
            .tag("Products")
            .summary("Set the stock of a product")
            .handler(&self, Self::update)?;
        Ok(())
    }
}

impl UpdateStockPlugin {
    async fn update(
        self: Arc<Self>,
        req: UpdateStockRequest,
        ctx: Context,
    ) -> HandlerResult<StockLevel> {
        if req.stock < 0 {
            return Err(HandlerError::reject("the stock must not be negative"));
        }
        let level =
            sqlx::query_as("UPDATE products SET stock = $1 WHERE id = $2 RETURNING id, stock")
                .bind(req.stock)
                .bind(req.id)
                .fetch_optional(self.db.pool())
                .await?;
        level.ok_or_else(|| {
            ctx.set_status(StatusCode::NOT_FOUND);
            HandlerError::reject(format!("product {} not found", req.id))
        })
    }
}
