//! `products.quote` (request-reply): the current price and stock of each
//! line of a prospective order, for the orders domain to price it.

use microcore::prelude::*;
use shared_schemas::rpc::{Quote, QuoteRequest, QuotedLine};

pub struct QuoteProductsPlugin {
    db: Db,
    bus: Bus,
}

impl Plugin for QuoteProductsPlugin {
    type Tools = (Db, Bus);

    fn new((db, bus): Self::Tools) -> Self {
        Self { db, bus }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        self.bus
            .respond(QuoteRequest::NAME)
            .handler(&self, Self::quote)?;
        Ok(())
    }
}

impl QuoteProductsPlugin {
    async fn quote(self: Arc<Self>, request: QuoteRequest) -> HandlerResult<Quote> {
        let mut lines = Vec::with_capacity(request.lines.len());
        for line in request.lines {
            let found: Option<(f64, i64)> =
                sqlx::query_as("SELECT price, stock FROM products WHERE id = $1")
                    .bind(line.product_id)
                    .fetch_optional(self.db.pool())
                    .await?;
            lines.push(QuotedLine {
                product_id: line.product_id,
                unit_price: found.map(|(price, _)| price),
                in_stock: found.map_or(0, |(_, stock)| stock),
            });
        }
        Ok(Quote { lines })
    }
}
