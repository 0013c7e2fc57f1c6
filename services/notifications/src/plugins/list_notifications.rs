//! `GET /notifications`: the signed-in user's notifications, newest first.

use microcore::prelude::*;

#[derive(Debug, Deserialize, ToSchema)]
pub struct ListNotificationsRequest {
    /// At most this many, 1 to 100 (default 20).
    #[serde(default = "default_limit")]
    pub limit: i64,
}

fn default_limit() -> i64 {
    20
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct NotificationData {
    pub id: i64,
    pub message: String,
    /// The event that caused it.
    pub event_id: String,
    /// The request that started the chain of events, for support.
    pub correlation_id: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

pub struct ListNotificationsPlugin {
    db: Db,
    http: Http,
}

impl Plugin for ListNotificationsPlugin {
    type Tools = (Db, Http);

    fn new((db, http): Self::Tools) -> Self {
        Self { db, http }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        self.http
            .get("/notifications")
            .tag("Notifications")
            .summary("Your notifications, newest first")
            .authenticated()
            .handler(&self, Self::list)?;
        Ok(())
    }
}

impl ListNotificationsPlugin {
    async fn list(self: Arc<Self>, req: ListNotificationsRequest, ctx: Context) -> HandlerResult<Vec<NotificationData>> {
        if !(1..=100).contains(&req.limit) {
            return Err(HandlerError::reject("limit must be between 1 and 100"));
        }
        let user = ctx.user()?;
        let notifications = sqlx::query_as(
            "SELECT id, message, event_id, correlation_id, created_at
             FROM notifications WHERE user_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(&user.sub)
        .bind(req.limit)
        .fetch_all(self.db.pool())
        .await?;
        Ok(notifications)
    }
}
