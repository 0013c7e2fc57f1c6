//! Storing a notification once per event, whatever the redeliveries.

use microcore::prelude::*;

/// Stores `message` for `user_id` unless the event was already handled.
pub async fn store<P>(
    db: &Db,
    event: &EventEnvelope<P>,
    user_id: &str,
    message: &str,
) -> EventResult {
    sqlx::query(
        "INSERT INTO notifications (user_id, event_id, correlation_id, message)
         VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(user_id)
    .bind(&event.id)
    .bind(event.correlation_id.as_deref())
    .bind(message)
    .execute(db.pool())
    .await?;
    Ok(())
}
