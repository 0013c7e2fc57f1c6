//! `GET /products/{id}`: one product, or 404.

use microcore::prelude::*;

#[derive(Debug, Deserialize, ToSchema)]
pub struct GetProductRequest {
    pub id: i64,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Product {
    pub id: i64,
    pub name: String,
    pub price: f64,
    pub stock: i64,
}

pub struct GetProductPlugin {
    db: Db,
    http: Http,
}

impl Plugin for GetProductPlugin {
    type Tools = (Db, Http);

    fn new((db, http): Self::Tools) -> Self {
        Self { db, http }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        self.http
            .get("/products/{id}")
            .tag("Products")
            .summary("Get a product by id")
            .handler(&self, Self::get)?;
        Ok(())
    }
}

impl GetProductPlugin {
    async fn get(self: Arc<Self>, req: GetProductRequest, ctx: Context) -> HandlerResult<Product> {
        let product = sqlx::query_as("SELECT id, name, price, stock FROM products WHERE id = $1")
            .bind(req.id)
            .fetch_optional(self.db.pool())
            .await?;
        product.ok_or_else(|| {
            ctx.set_status(StatusCode::NOT_FOUND);
            HandlerError::reject(format!("product {} not found", req.id))
        })
    }
}
