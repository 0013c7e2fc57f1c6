//! Password hashing, off the event loop. Argon2id is slow on purpose (tens
//! of milliseconds per hash with the recommended parameters), so every hash
//! and check runs on the blocking pool, never on a runtime worker.

use std::sync::LazyLock;

use argon2::Argon2;
use argon2::password_hash::{self, PasswordHasher, PasswordVerifier};

/// Hashing failed for a reason other than a wrong password.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password hashing failed: {0}")]
    Hash(password_hash::Error),
    #[error("the password hashing task did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The PHC string (`$argon2id$v=19$…`, salt and parameters included) of
/// `password`, with a fresh random salt.
pub async fn hash(password: String) -> Result<String, PasswordError> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|hash| hash.to_string())
            .map_err(PasswordError::Hash)
    })
    .await?
}

/// True when `password` matches `stored`. Without a stored hash (no such
/// account) a dummy hash is checked instead, so a login for an unknown
/// address takes as long as one with a wrong password and reveals nothing.
pub async fn verify(password: String, stored: Option<String>) -> Result<bool, PasswordError> {
    static DUMMY: LazyLock<Option<String>> = LazyLock::new(|| {
        Argon2::default()
            .hash_password(b"no account has this password")
            .map(|hash| hash.to_string())
            .ok()
    });
    tokio::task::spawn_blocking(move || {
        let known = stored.is_some();
        let Some(stored) = stored.or_else(|| DUMMY.clone()) else {
            return Ok(false);
        };
        match Argon2::default().verify_password(password.as_bytes(), stored.as_str()) {
            Ok(()) => Ok(known),
            Err(password_hash::Error::PasswordInvalid) => Ok(false),
            Err(e) => Err(PasswordError::Hash(e)),
        }
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_only_and_hides_it() {
        let stored = hash("correct horse".into()).await.unwrap();
        assert!(stored.starts_with("$argon2id$"));
        assert!(!stored.contains("correct horse"));
        assert!(
            verify("correct horse".into(), Some(stored.clone()))
                .await
                .unwrap()
        );
        assert!(!verify("wrong horse".into(), Some(stored)).await.unwrap());
        assert!(!verify("correct horse".into(), None).await.unwrap());
    }
}
