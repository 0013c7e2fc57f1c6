//! `POST /products`: add a product to the catalogue and tell the world.

use microcore::prelude::*;
use shared_schemas::events::ProductCreated;

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateProductRequest {
    pub name: String,
    pub price: f64,
    /// Units on hand; none if omitted.
    #[serde(default)]
    pub stock: i64,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ProductData {
    pub id: i64,
    pub name: String,
    pub price: f64,
    pub stock: i64,
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
        Self {
            db,
            http,
            bus,
            logger,
        }
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
    /// The row and its `product.created` commit together: the event is
    /// published if and only if the product exists.
    async fn create(
        self: Arc<Self>,
        req: CreateProductRequest,
        _ctx: Context,
    ) -> HandlerResult<ProductData> {
        if req.name.trim().is_empty() {
            return Err(HandlerError::reject("the name must not be empty"));
        }
        let mut tx = self.db.begin().await?;
        let product: ProductData = sqlx::query_as(
            "INSERT INTO products (name, price, stock) VALUES ($1, $2, $3) RETURNING id, name, price, stock",
        )
        .bind(&req.name)
        .bind(req.price)
        .bind(req.stock)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| match DbError::from(e) {
            e if e.kind() == DbErrorKind::Check => HandlerError::reject("the price and the stock must not be negative"),
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
        self.bus
            .publish_in(&mut tx, ProductCreated::EVENT, &event)
            .await?;
        tx.commit().await?;
        Ok(product)
    }
}
