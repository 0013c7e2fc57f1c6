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
    /// All lines or none: each takes its units only if enough are left
    /// (one conditional `UPDATE`, atomic on every engine); the first short
    /// line rolls the whole order back and refuses it instead.
    async fn reserve(self: Arc<Self>, event: EventEnvelope<PlacedOrder>) -> EventResult {
        let order = event.payload;
        let mut tx = self.db.begin().await?;
        if !first_sight(&mut tx, order.order_id, true).await? {
            return Ok(());
        }

        // One quantity per product, however the lines were split.
        let mut wanted = BTreeMap::new();
        for line in &order.lines {
            *wanted.entry(line.product_id).or_insert(0) += line.quantity;
        }
        for (&product_id, &quantity) in &wanted {
            let taken = sqlx::query(
                "UPDATE products SET stock = stock - $1 WHERE id = $2 AND stock >= $1",
            )
            .bind(quantity)
            .bind(product_id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !taken {
                tx.rollback().await?;
                return self.refuse(order.order_id, product_id).await;
            }
            sqlx::query(
                "INSERT INTO reserved_lines (order_id, product_id, quantity) VALUES ($1, $2, $3)",
            )
            .bind(order.order_id)
            .bind(product_id)
            .bind(quantity)
            .execute(&mut *tx)
            .await?;
        }
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

    /// Records that the order was not reserved and says so, once.
    async fn refuse(&self, order_id: i64, product_id: i64) -> EventResult {
        let mut tx = self.db.begin().await?;
        if !first_sight(&mut tx, order_id, false).await? {
            return Ok(());
        }
        let shortage = StockShortage {
            order_id,
            product_id,
        };
        self.bus
            .publish_in(&mut tx, StockShortage::EVENT, &shortage)
            .await?;
        tx.commit().await?;
        self.logger.warn(format_args!(
            "order {order_id} not reserved: product {product_id} is short"
        ));
        Ok(())
    }
}

/// Records the outcome for `order_id`; false when a redelivery finds it
/// already there.
async fn first_sight(tx: &mut Transaction, order_id: i64, reserved: bool) -> Result<bool, DbError> {
    let inserted = sqlx::query(
        "INSERT INTO order_reservations (order_id, reserved) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(order_id)
    .bind(reserved)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}
