//! `POST /auth/login`: trade an email and password for an access token.
//! The token comes in the body (for API clients, as a Bearer token) and as
//! the `access_token` cookie (for browsers); the gateway accepts either.

use microcore::prelude::*;

use super::register_user::normalized_email;
use crate::password;

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginData {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the token expires.
    pub expires_in: u64,
}

pub struct LoginPlugin {
    db: Db,
    http: Http,
    auth: Auth,
}

impl Plugin for LoginPlugin {
    type Tools = (Db, Http, Auth);

    fn new((db, http, auth): Self::Tools) -> Self {
        Self { db, http, auth }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        self.http
            .post("/auth/login")
            .tag("Users")
            .summary("Log in and get an access token")
            .handler(&self, Self::login)?;
        Ok(())
    }
}

impl LoginPlugin {
    async fn login(self: Arc<Self>, req: LoginRequest, ctx: Context) -> HandlerResult<LoginData> {
        let refused = || HandlerError::with_status(StatusCode::UNAUTHORIZED, "wrong email or password");
        // An address that cannot exist is a wrong one, not a hint.
        let email = normalized_email(&req.email).unwrap_or_default();
        let account: Option<(i64, String)> =
            sqlx::query_as("SELECT id, password_hash FROM users WHERE email = $1")
                .bind(&email)
                .fetch_optional(self.db.pool())
                .await?;
        let (id, hash) = account.unzip();
        if !password::verify(req.password, hash).await? {
            return Err(refused());
        }
        let id = id.ok_or_else(refused)?;

        let mut claims = serde_json::Map::new();
        claims.insert("email".into(), email.into());
        let issued = self.auth.issue(id.to_string(), claims)?;
        let mut cookie = Cookie::new("access_token", issued.token.clone());
        cookie.set_max_age(cookie::time::Duration::seconds(
            i64::try_from(issued.expires_in.as_secs()).unwrap_or(i64::MAX),
        ));
        ctx.set_cookie(cookie)?;
        Ok(LoginData {
            access_token: issued.token,
            token_type: "Bearer",
            expires_in: issued.expires_in.as_secs(),
        })
    }
}
