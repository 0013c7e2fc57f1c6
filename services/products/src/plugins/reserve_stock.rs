//! On `order.placed`: set the ordered units aside, all lines or none, and
//! say which it was. A redelivered event finds its order already handled
//! and changes nothing.

use std::collections::BTreeMap;

use microcore::prelude::*;
use shared_schemas::events::{OrderLine, OrderPlaced, StockReserved, StockShortage};

/// The part of `order.placed` this plugin reads.
#[derive(Debug, Deserialize)]
pub struct PlacedOrder {
    pub order_id: i64,
    pub lines: Vec<OrderLine>,
}

pub struct ReserveStockPlugin {
    db: Db,
    bus: Bus,
    logger: Logger,
}

impl Plugin for ReserveStockPlugin {
    type Tools = (Db, Bus, Logger);

    fn new((db, bus, logger): Self::Tools) -> Self {
        Self { db, bus, logger }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        self.bus
            .subscribe(OrderPlaced::EVENT)
            .retries(5)
            .handler(&self, Self::reserve)?;
        Ok(())
    }
}

impl ReserveStockPlugin {
    async fn reserve(self: Arc<Self>, event: EventEnvelope<PlacedOrder>) -> EventResult {
        let order = event.payload;
        let mut tx = self.db.begin().await?;
        let first_time = sqlx::query(
            "INSERT INTO order_reservations (order_id, reserved) VALUES ($1, FALSE) ON CONFLICT DO NOTHING",
        )
        .bind(order.order_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !first_time {
            return Ok(());
        }

        // One quantity per product, however the lines were split.
        let mut wanted = BTreeMap::new();
        for line in &order.lines {
            *wanted.entry(line.product_id).or_insert(0) += line.quantity;
        }
        for (&product_id, &quantity) in &wanted {
            let stock: Option<i64> =
                sqlx::query_scalar("SELECT stock FROM products WHERE id = $1 FOR UPDATE")
                    .bind(product_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if stock.is_none_or(|stock| stock < quantity) {
                let shortage = StockShortage {
                    order_id: order.order_id,
                    product_id,
                };
                self.bus
                    .publish_in(&mut tx, StockShortage::EVENT, &shortage)
                    .await?;
                tx.commit().await?;
                self.logger.warn(format_args!(
                    "order {} not reserved: product {product_id} is short",
                    order.order_id
                ));
                return Ok(());
            }
        }

        for (&product_id, &quantity) in &wanted {
            sqlx::query("UPDATE products SET stock = stock - $1 WHERE id = $2")
                .bind(quantity)
                .bind(product_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO reserved_lines (order_id, product_id, quantity) VALUES ($1, $2, $3)",
            )
            .bind(order.order_id)
            .bind(product_id)
            .bind(quantity)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE order_reservations SET reserved = TRUE WHERE order_id = $1")
            .bind(order.order_id)
            .execute(&mut *tx)
            .await?;
        let reserved = StockReserved {
            order_id: order.order_id,
            lines: order.lines,
        };
        self.bus
            .publish_in(&mut tx, StockReserved::EVENT, &reserved)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
