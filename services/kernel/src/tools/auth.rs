//! The auth tool: access tokens. A login plugin issues them with
//! [`Auth::issue`]; the gateway checks the one a client presents with
//! [`Auth::verify`] before the request reaches an endpoint declared
//! `.authenticated()`, and the handler reads the verified claims with
//! [`Context::user`](crate::http::Context::user).
//!
//! Tokens are JWTs signed with HS256 under one secret (`MC_AUTH_SECRET`)
//! shared by the gateway and the services that issue tokens. A service
//! without the secret has no `auth` tool, so only the plugins that issue
//! tokens are marked dead; the rest of the service boots.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use shared_schemas::auth::Claims;

use crate::tools::Tool;

/// The shortest secret accepted: HS256 wants 256 bits of key.
pub const MIN_SECRET_LEN: usize = 32;

/// Issues and verifies access tokens.
#[derive(Clone)]
pub struct Auth {
    keys: Arc<Keys>,
}

struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl Tool for Auth {
    const NAME: &'static str = "auth";
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Auth")
            .field("algorithm", &Algorithm::HS256)
            .field("ttl", &self.keys.ttl)
            .finish_non_exhaustive()
    }
}

/// A token could not be issued or is not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the auth secret must be at least {MIN_SECRET_LEN} bytes long")]
    WeakSecret,
    #[error("the auth secret is not a usable key: {0}")]
    Key(#[source] jsonwebtoken::errors::Error),
    #[error("the access token has expired")]
    Expired,
    #[error("the access token is invalid: {0}")]
    Invalid(#[source] jsonwebtoken::errors::Error),
    #[error("the access token could not be signed: {0}")]
    Signing(#[source] jsonwebtoken::errors::Error),
}

/// A freshly issued token and what it says.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: String,
    pub claims: Claims,
    /// How long it is valid from now.
    pub expires_in: Duration,
}

impl Auth {
    /// Tokens signed with `secret`, valid for `ttl` once issued.
    pub fn new(secret: &[u8], ttl: Duration) -> Result<Self, AuthError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(AuthError::WeakSecret);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Self {
            keys: Arc::new(Keys {
                encoding: EncodingKey::from_secret(secret).map_err(AuthError::Key)?,
                decoding: DecodingKey::from_secret(secret).map_err(AuthError::Key)?,
                validation,
                ttl,
            }),
        })
    }

    /// A token for `subject` (the user id), carrying `extra` claims too.
    pub fn issue(
        &self,
        subject: impl Into<String>,
        extra: Map<String, Value>,
    ) -> Result<AccessToken, AuthError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            sub: subject.into(),
            iat: now,
            exp: now.saturating_add(self.keys.ttl.as_secs()),
            extra,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.keys.encoding)
                .map_err(AuthError::Signing)?;
        Ok(AccessToken {
            token,
            claims,
            expires_in: self.keys.ttl,
        })
    }

    /// The claims of `token` if it was signed with this secret and has not
    /// expired.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        jsonwebtoken::decode::<Claims>(token, &self.keys.decoding, &self.keys.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn an_issued_token_verifies_and_carries_its_claims() {
        let auth = Auth::new(SECRET, Duration::from_secs(60)).unwrap();
        let mut extra = Map::new();
        extra.insert("email".into(), "ada@example.com".into());
        let issued = auth.issue("42", extra).unwrap();
        let claims = auth.verify(&issued.token).unwrap();
        assert_eq!(claims, issued.claims);
        assert_eq!(claims.sub, "42");
        assert_eq!(claims.extra["email"], "ada@example.com");
    }

    #[test]
    fn foreign_tampered_and_expired_tokens_are_refused() {
        let auth = Auth::new(SECRET, Duration::from_secs(60)).unwrap();
        let other = Auth::new(
            b"another secret that is long enough!!",
            Duration::from_secs(60),
        )
        .unwrap();
        let foreign = other.issue("42", Map::new()).unwrap().token;
        assert!(matches!(auth.verify(&foreign), Err(AuthError::Invalid(_))));

        let token = auth.issue("42", Map::new()).unwrap().token;
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = Claims::from_header(parts[1]).map(|mut c| {
            c.sub = "1".into();
            c.to_header()
        });
        let forged = forged.unwrap();
        parts[1] = &forged;
        assert!(auth.verify(&parts.join(".")).is_err());
        assert!(auth.verify("not.a.token").is_err());

        let expired = Auth::new(SECRET, Duration::ZERO).unwrap();
        let mut claims = expired.issue("42", Map::new()).unwrap().claims;
        claims.exp -= 3600;
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &auth.keys.encoding)
                .unwrap();
        assert!(matches!(auth.verify(&token), Err(AuthError::Expired)));
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(matches!(
            Auth::new(b"short", Duration::from_secs(1)),
            Err(AuthError::WeakSecret)
        ));
    }
}
