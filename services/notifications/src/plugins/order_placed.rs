//! On `order.placed`: tell the customer their order is in.

use microcore::prelude::*;
use shared_schemas::events::OrderPlaced;

/// The part of `order.placed` this plugin reads.
#[derive(Debug, Deserialize)]
pub struct PlacedOrder {
    pub order_id: i64,
    pub user_id: String,
    pub total: f64,
}

pub struct OrderPlacedPlugin {
    db: Db,
    bus: Bus,
}

impl Plugin for OrderPlacedPlugin {
    type Tools = (Db, Bus);

    fn new((db, bus): Self::Tools) -> Self {
        Self { db, bus }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        self.bus.subscribe(OrderPlaced::EVENT).handler(&self, Self::notify)?;
        Ok(())
    }
}

impl OrderPlacedPlugin {
    async fn notify(self: Arc<Self>, event: EventEnvelope<PlacedOrder>) -> EventResult {
        let order = &event.payload;
        let message = format!("Your order #{} is placed: {:.2} in total.", order.order_id, order.total);
        crate::notify::store(&self.db, &event, &order.user_id, &message).await
    }
}
