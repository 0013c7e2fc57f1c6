//! `POST /users`: open an account. The password is stored as an Argon2id
//! hash and never returned; `user.created` commits with the row.

use microcore::prelude::*;
use shared_schemas::events::UserCreated;

use crate::password;

#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterUserRequest {
    pub email: String,
    /// At least 8 characters.
    pub password: String,
    pub name: String,
}

/// An account as others may see it: never the password or its hash.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct UserData {
    pub id: i64,
    pub email: String,
    pub name: String,
}

const MIN_PASSWORD_CHARS: usize = 8;

/// Argon2 accepts longer ones, but nobody needs them and each costs work.
const MAX_PASSWORD_BYTES: usize = 1024;

pub struct RegisterUserPlugin {
    db: Db,
    http: Http,
    bus: Bus,
}

impl Plugin for RegisterUserPlugin {
    type Tools = (Db, Http, Bus);

    fn new((db, http, bus): Self::Tools) -> Self {
        Self { db, http, bus }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        self.http
            .post("/users")
            .tag("Users")
            .summary("Register an account")
            .status(StatusCode::CREATED)
            .handler(&self, Self::register)?;
        Ok(())
    }
}

impl RegisterUserPlugin {
    async fn register(self: Arc<Self>, req: RegisterUserRequest, _ctx: Context) -> HandlerResult<UserData> {
        let email = normalized_email(&req.email)?;
        let name = req.name.trim();
        if name.is_empty() {
            return Err(HandlerError::reject("the name must not be empty"));
        }
        if req.password.chars().count() < MIN_PASSWORD_CHARS {
            return Err(HandlerError::reject(format!(
                "the password needs at least {MIN_PASSWORD_CHARS} characters"
            )));
        }
        if req.password.len() > MAX_PASSWORD_BYTES {
            return Err(HandlerError::reject(format!(
                "the password may have at most {MAX_PASSWORD_BYTES} bytes"
            )));
        }
        let hash = password::hash(req.password).await?;

        let mut tx = self.db.begin().await?;
        let user: UserData = sqlx::query_as(
            "INSERT INTO users (email, name, password_hash) VALUES ($1, $2, $3) RETURNING id, email, name",
        )
        .bind(&email)
        .bind(name)
        .bind(&hash)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| match DbError::from(e) {
            e if e.kind() == DbErrorKind::Unique => {
                HandlerError::conflict("an account with this email already exists")
            }
            e => HandlerError::internal(e),
        })?;
        let event = UserCreated {
            id: user.id,
            email: user.email.clone(),
            name: user.name.clone(),
        };
        self.bus.publish_in(&mut tx, UserCreated::EVENT, &event).await?;
        tx.commit().await?;
        Ok(user)
    }
}

/// Trimmed and lower-cased, with one `@` between two non-empty parts.
pub fn normalized_email(email: &str) -> Result<String, HandlerError> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty() && !domain.contains('@'));
    if valid {
        Ok(email)
    } else {
        Err(HandlerError::reject("the email address is not valid"))
    }
}

#[cfg(test)]
mod tests {
    use super::normalized_email;

    #[test]
    fn emails_are_normalized_and_nonsense_refused() {
        assert_eq!(normalized_email("  Ada@Example.COM ").unwrap(), "ada@example.com");
        for bad in ["", "ada", "@example.com", "ada@", "a@b@c", "a da@example.com"] {
            assert!(normalized_email(bad).is_err(), "{bad}");
        }
    }
}
