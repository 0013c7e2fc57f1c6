//! The identity of an authenticated request as it crosses the bus.
//!
//! The gateway verifies the client's access token and forwards its claims
//! in the reserved [`AUTH`](crate::http::AUTH) header, base64url-encoded
//! JSON. Clients cannot send that header (the whole `Mc-` namespace is
//! dropped at the edge), so a handler's identity comes from a verified
//! token or from nowhere.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The OpenAPI security scheme protected operations name; the gateway
/// defines it (HTTP bearer, JWT) in the merged document.
pub const OPENAPI_SCHEME: &str = "bearerAuth";

/// The claims of a verified access token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token was issued to: the user id.
    pub sub: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
    /// Any other claim the issuer added (`email`, `roles` …).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The [`AUTH`](crate::http::AUTH) header does not hold claims.
#[derive(Debug, thiserror::Error)]
pub enum ClaimsHeaderError {
    #[error("the auth header is not base64url: {0}")]
    Encoding(#[from] base64::DecodeError),
    #[error("the auth header is not a claims object: {0}")]
    Json(#[from] serde_json::Error),
}

impl Claims {
    /// The value of the [`AUTH`](crate::http::AUTH) header for these claims.
    pub fn to_header(&self) -> String {
        // A struct of strings, numbers and JSON values always serializes.
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Reads the claims back from an [`AUTH`](crate::http::AUTH) header.
    pub fn from_header(value: &str) -> Result<Self, ClaimsHeaderError> {
        Ok(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(value)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_round_trip_through_the_header_whatever_the_characters() {
        let mut extra = Map::new();
        extra.insert("name".into(), "Zoë ☕".into());
        let claims = Claims {
            sub: "42".into(),
            iat: 1,
            exp: 2,
            extra,
        };
        let header = claims.to_header();
        assert!(header.bytes().all(|b| b.is_ascii_graphic()));
        assert_eq!(Claims::from_header(&header).unwrap(), claims);
        assert!(Claims::from_header("not base64!").is_err());
        assert!(Claims::from_header(&URL_SAFE_NO_PAD.encode(b"[1]")).is_err());
    }
}
