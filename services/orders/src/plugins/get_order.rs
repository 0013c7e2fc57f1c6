//! `GET /orders/{id}`: one order, for the user who placed it only.

use microcore::prelude::*;

#[derive(Debug, Deserialize, ToSchema)]
pub struct GetOrderRequest {
    pub id: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderData {
    pub id: i64,
    /// `placed`, `reserved` or `rejected`.
    pub status: String,
    pub total: f64,
    pub lines: Vec<OrderLineData>,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct OrderLineData {
    pub product_id: i64,
    pub quantity: i64,
    pub unit_price: f64,
}

pub struct GetOrderPlugin {
    db: Db,
    http: Http,
}

impl Plugin for GetOrderPlugin {
    type Tools = (Db, Http);

    fn new((db, http): Self::Tools) -> Self {
        Self { db, http }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        self.http
            .get("/orders/{id}")
            .tag("Orders")
            .summary("Get one of your orders")
            .authenticated()
            .handler(&self, Self::get)?;
        Ok(())
    }
}

impl GetOrderPlugin {
    async fn get(self: Arc<Self>, req: GetOrderRequest, ctx: Context) -> HandlerResult<OrderData> {
        let user = ctx.user()?;
        let order: Option<(String, String, f64)> =
            sqlx::query_as("SELECT user_id, status, total FROM orders WHERE id = $1")
                .bind(req.id)
                .fetch_optional(self.db.pool())
                .await?;
        let Some((owner, status, total)) = order else {
            return Err(HandlerError::not_found(format!("order {} not found", req.id)));
        };
        if owner != user.sub {
            return Err(HandlerError::with_status(StatusCode::FORBIDDEN, "this order belongs to another user"));
        }
        let lines = sqlx::query_as(
            "SELECT product_id, quantity, unit_price FROM order_lines WHERE order_id = $1 ORDER BY product_id",
        )
        .bind(req.id)
        .fetch_all(self.db.pool())
        .await?;
        Ok(OrderData {
            id: req.id,
            status,
            total,
            lines,
        })
    }
}
