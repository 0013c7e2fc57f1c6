//! Settles an order's status from the catalogue's answer to
//! `order.placed`. Setting a status twice is harmless, so redeliveries are
//! too.

use microcore::prelude::*;
use shared_schemas::events::{StockReserved, StockShortage};

/// The part of `stock.reserved` and `stock.shortage` this plugin reads.
#[derive(Debug, Deserialize)]
pub struct ReservationOutcome {
    pub order_id: i64,
}

pub struct TrackReservationPlugin {
    db: Db,
    bus: Bus,
}

impl Plugin for TrackReservationPlugin {
    type Tools = (Db, Bus);

    fn new((db, bus): Self::Tools) -> Self {
        Self { db, bus }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        self.bus
            .subscribe(StockReserved::EVENT)
            .handler(&self, Self::reserved)?;
        self.bus
            .subscribe(StockShortage::EVENT)
            .handler(&self, Self::rejected)?;
        Ok(())
    }
}

impl TrackReservationPlugin {
    async fn reserved(self: Arc<Self>, event: EventEnvelope<ReservationOutcome>) -> EventResult {
        self.settle(event.payload.order_id, "reserved").await
    }

    async fn rejected(self: Arc<Self>, event: EventEnvelope<ReservationOutcome>) -> EventResult {
        self.settle(event.payload.order_id, "rejected").await
    }

    async fn settle(&self, order_id: i64, status: &str) -> EventResult {
        sqlx::query("UPDATE orders SET status = $1 WHERE id = $2 AND status = 'placed'")
            .bind(status)
            .bind(order_id)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }
}
