//! `POST /products`: add a product to the catalogue and tell the world.

use microcore::prelude::*;
use shared_schemas::events::ProductCreated;

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateProductRequest {
    pub name: String,
    pub price: f64,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ProductData {
    pub id: i64,
    pub name: String,
    pub price: f64,
}

pub struct CreateProductPlugin {
    db: Db,
    http: Http,
    bus: Bus,
    logger: Logger,
}

impl Plugin for CreateProductPlugin {
    type Tools = (Db, Http, Bus, Logger);

    fn new((db, http, bus, logger): Self::Tools) -> Self {
        Self { db, http, bus, logger }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        self.http
            .post("/products")
            .tag("Products")
            .summary("Create a product")
            .status(StatusCode::CREATED)
            .handler(&self, Self::create)?;
        Ok(())
    }
}

impl CreateProductPlugin {
    async fn create(self: Arc<Self>, req: CreateProductRequest, _ctx: Context) -> HandlerResult<ProductData> {
        if req.name.trim().is_empty() {
            return Err(HandlerError::reject("the name must not be empty"));
        }
        let product: ProductData = sqlx::query_as(
            "INSERT INTO products (name, price) VALUES ($1, $2) RETURNING id, name, price",
        )
        .bind(&req.name)
        .bind(req.price)
        .fetch_one(self.db.pool())
        .await
        .map_err(|e| match DbError::from(e) {
            e if e.kind() == DbErrorKind::Check => HandlerError::reject("the price must not be negative"),
            e => {
                self.logger.error(format_args!("could not insert the product: {e}"));
                HandlerError::reject("could not create the product")
            }
        })?;

        let event = ProductCreated {
            id: product.id,
            name: product.name.clone(),
            price: product.price,
        };
        if let Err(e) = self.bus.publish(ProductCreated::EVENT, &event).await {
            self.logger.error(format_args!("product {} created, event not published: {e}", product.id));
        }
        Ok(product)
    }
}
