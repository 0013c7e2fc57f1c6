//! `GET /users/me`: the account of whoever holds the token.

use microcore::prelude::*;

use super::register_user::UserData;

/// Nothing to send: the identity comes from the access token.
#[derive(Debug, Deserialize, ToSchema)]
pub struct GetMeRequest {}

pub struct GetMePlugin {
    db: Db,
    http: Http,
}

impl Plugin for GetMePlugin {
    type Tools = (Db, Http);

    fn new((db, http): Self::Tools) -> Self {
        Self { db, http }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        self.http
            .get("/users/me")
            .tag("Users")
            .summary("Your account")
            .authenticated()
            .handler(&self, Self::me)?;
        Ok(())
    }
}

impl GetMePlugin {
    async fn me(self: Arc<Self>, _req: GetMeRequest, ctx: Context) -> HandlerResult<UserData> {
        let user = ctx.user()?;
        let Ok(id) = user.sub.parse::<i64>() else {
            return Err(HandlerError::not_found("the account no longer exists"));
        };
        sqlx::query_as("SELECT id, email, name FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| HandlerError::not_found("the account no longer exists"))
    }
}
