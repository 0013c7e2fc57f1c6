//! `POST /orders`: the signed-in user orders products. The catalogue prices
//! the lines and confirms they are in stock (request-reply); the order and
//! its `order.placed` commit together (outbox).

use std::collections::BTreeMap;
use std::time::Duration;

use microcore::prelude::*;
use shared_schemas::events::{OrderLine, OrderPlaced};
use shared_schemas::rpc::{Quote, QuoteRequest};

#[derive(Debug, Deserialize, ToSchema)]
pub struct PlaceOrderRequest {
    pub lines: Vec<OrderLineRequest>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct OrderLineRequest {
    pub product_id: i64,
    pub quantity: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PlacedOrderData {
    pub id: i64,
    /// `placed` until the catalogue reserves the stock (`reserved`) or
    /// cannot (`rejected`).
    pub status: String,
    pub total: f64,
    pub lines: Vec<PricedLine>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PricedLine {
    pub product_id: i64,
    pub quantity: i64,
    pub unit_price: f64,
}

/// Lines per order, at most.
const MAX_LINES: usize = 100;

/// How long the catalogue may take to quote.
const QUOTE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct PlaceOrderPlugin {
    db: Db,
    http: Http,
    bus: Bus,
}

impl Plugin for PlaceOrderPlugin {
    type Tools = (Db, Http, Bus);

    fn new((db, http, bus): Self::Tools) -> Self {
        Self { db, http, bus }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        self.http
            .post("/orders")
            .tag("Orders")
            .summary("Place an order")
            .status(StatusCode::CREATED)
            .authenticated()
            .handler(&self, Self::place)?;
        Ok(())
    }
}

impl PlaceOrderPlugin {
    async fn place(self: Arc<Self>, req: PlaceOrderRequest, ctx: Context) -> HandlerResult<PlacedOrderData> {
        let user_id = ctx.user()?.sub.clone();
        let lines = merged(req.lines)?;
        let quote: Quote = self
            .bus
            .request(QuoteRequest::NAME, &QuoteRequest { lines: lines.clone() }, QUOTE_TIMEOUT)
            .await
            .map_err(|e| match e {
                RpcError::NoResponder(_) | RpcError::TimedOut { .. } => HandlerError::with_status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the catalogue is unavailable; try again shortly",
                ),
                e => HandlerError::internal(e),
            })?;

        let mut priced = Vec::with_capacity(lines.len());
        for (line, quoted) in lines.iter().zip(&quote.lines) {
            let Some(unit_price) = quoted.unit_price.filter(|_| quoted.product_id == line.product_id) else {
                return Err(HandlerError::not_found(format!("product {} does not exist", line.product_id)));
            };
            if quoted.in_stock < line.quantity {
                return Err(HandlerError::conflict(format!(
                    "only {} of product {} in stock",
                    quoted.in_stock, line.product_id
                )));
            }
            priced.push(PricedLine {
                product_id: line.product_id,
                quantity: line.quantity,
                unit_price,
            });
        }
        let total = priced.iter().map(|l| l.unit_price * l.quantity as f64).sum();

        let mut tx = self.db.begin().await?;
        let id: i64 = sqlx::query_scalar("INSERT INTO orders (user_id, total) VALUES ($1, $2) RETURNING id")
            .bind(&user_id)
            .bind(total)
            .fetch_one(&mut *tx)
            .await?;
        for line in &priced {
            sqlx::query("INSERT INTO order_lines (order_id, product_id, quantity, unit_price) VALUES ($1, $2, $3, $4)")
                .bind(id)
                .bind(line.product_id)
                .bind(line.quantity)
                .bind(line.unit_price)
                .execute(&mut *tx)
                .await?;
        }
        let placed = OrderPlaced {
            order_id: id,
            user_id,
            lines,
            total,
        };
        self.bus.publish_in(&mut tx, OrderPlaced::EVENT, &placed).await?;
        tx.commit().await?;
        Ok(PlacedOrderData {
            id,
            status: "placed".to_owned(),
            total,
            lines: priced,
        })
    }
}

/// One line per product, quantities added up; refuses empty orders and
/// non-positive quantities.
fn merged(lines: Vec<OrderLineRequest>) -> Result<Vec<OrderLine>, HandlerError> {
    if lines.is_empty() {
        return Err(HandlerError::reject("an order needs at least one line"));
    }
    if lines.len() > MAX_LINES {
        return Err(HandlerError::reject(format!("an order has at most {MAX_LINES} lines")));
    }
    let mut quantities = BTreeMap::new();
    for line in lines {
        if line.quantity <= 0 {
            return Err(HandlerError::reject("quantities must be positive"));
        }
        let quantity = quantities.entry(line.product_id).or_insert(0i64);
        *quantity = quantity.saturating_add(line.quantity);
    }
    Ok(quantities
        .into_iter()
        .map(|(product_id, quantity)| OrderLine { product_id, quantity })
        .collect())
}
