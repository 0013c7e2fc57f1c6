//! Authentication at the edge. Routes a service declared `.authenticated()`
//! admit only a request with a valid access token: from
//! `Authorization: Bearer …`, or else the `access_token` cookie. Its
//! verified claims travel to the service in the reserved `Mc-Auth` header,
//! which no client can send; everything else is a 401 in the envelope.
//!
//! A browser sends cookies on its own, so a cookie-authenticated request
//! that changes something must also carry `X-Requested-With`, which a
//! cross-site form cannot set (CSRF guard); a bearer token needs no such
//! proof.

use axum::response::{IntoResponse, Response};
use cookie::Cookie;
use http::request::Parts;
use http::{HeaderValue, Method, StatusCode, header};
use microcore::tools::{Auth, AuthError};
use shared_schemas::auth::Claims;

use crate::envelope;

/// The cookie a browser client keeps its token in.
pub const TOKEN_COOKIE: &str = "access_token";

/// Where the token came from: only cookies need the CSRF proof.
enum Presented<'a> {
    Bearer(&'a str),
    Cookie(&'a str),
}

/// Why a request may not reach an authenticated route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No token at all.
    Missing,
    Invalid,
    Expired,
    /// A cookie-authenticated mutation without `X-Requested-With`.
    NoCsrfProof,
    /// The gateway has no `MC_AUTH_SECRET` to verify tokens with.
    Unconfigured,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Self::Missing => (StatusCode::UNAUTHORIZED, "authentication required"),
            Self::Invalid => (StatusCode::UNAUTHORIZED, "the access token is invalid"),
            Self::Expired => (StatusCode::UNAUTHORIZED, "the access token has expired"),
            Self::NoCsrfProof => (
                StatusCode::FORBIDDEN,
                "a cookie-authenticated request that changes state needs the X-Requested-With header",
            ),
            Self::Unconfigured => {
                tracing::error!(
                    "a route requires authentication but the gateway has no MC_AUTH_SECRET"
                );
                (StatusCode::INTERNAL_SERVER_ERROR, "internal server error")
            }
        };
        let mut response = envelope::error(status, message);
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The verified claims of the request, or why it is refused.
pub fn authenticate(auth: Option<&Auth>, parts: &Parts) -> Result<Claims, Refusal> {
    let auth = auth.ok_or(Refusal::Unconfigured)?;
    let token = match token(parts).ok_or(Refusal::Missing)? {
        Presented::Bearer(token) => token,
        Presented::Cookie(token) => {
            let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
            if !safe && !parts.headers.contains_key("x-requested-with") {
                return Err(Refusal::NoCsrfProof);
            }
            token
        }
    };
    auth.verify(token).map_err(|e| {
        tracing::debug!(error = %e, "refused an access token");
        match e {
            AuthError::Expired => Refusal::Expired,
            _ => Refusal::Invalid,
        }
    })
}

fn token(parts: &Parts) -> Option<Presented<'_>> {
    if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
        // A malformed Authorization header is not silently replaced by a
        // cookie: the client meant to send this one.
        let bearer = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .unwrap_or_default();
        return Some(Presented::Bearer(bearer));
    }
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|cookie| cookie.name() == TOKEN_COOKIE)
        .and_then(|cookie| cookie.value_raw())
        .map(Presented::Cookie)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn auth() -> Auth {
        Auth::new(b"0123456789abcdef0123456789abcdef", Duration::from_secs(60)).unwrap()
    }

    fn parts(method: Method, headers: &[(&str, &str)]) -> Parts {
        let mut request = http::Request::builder().method(method).uri("/x");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn bearer_tokens_and_cookies_are_accepted_and_garbage_is_401() {
        let auth = auth();
        let token = auth.issue("7", Default::default()).unwrap().token;
        let bearer = format!("Bearer {token}");
        let claims = authenticate(
            Some(&auth),
            &parts(Method::POST, &[("authorization", &bearer)]),
        );
        assert_eq!(claims.unwrap().sub, "7");

        let cookie = format!("theme=dark; {TOKEN_COOKIE}={token}");
        let claims = authenticate(Some(&auth), &parts(Method::GET, &[("cookie", &cookie)]));
        assert_eq!(claims.unwrap().sub, "7");

        for (headers, refusal) in [
            (&[][..], Refusal::Missing),
            (&[("authorization", "Bearer nope")][..], Refusal::Invalid),
            (
                &[("authorization", "Basic Zm9vOmJhcg==")][..],
                Refusal::Invalid,
            ),
        ] {
            let refused = authenticate(Some(&auth), &parts(Method::GET, headers));
            assert_eq!(refused.unwrap_err(), refusal);
        }
        let response = Refusal::Missing.into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }

    #[test]
    fn cookie_authenticated_mutations_need_x_requested_with() {
        let auth = auth();
        let token = auth.issue("7", Default::default()).unwrap().token;
        let cookie = format!("{TOKEN_COOKIE}={token}");
        let refused = authenticate(Some(&auth), &parts(Method::POST, &[("cookie", &cookie)]));
        assert_eq!(refused.unwrap_err(), Refusal::NoCsrfProof);
        let admitted = authenticate(
            Some(&auth),
            &parts(
                Method::POST,
                &[("cookie", &cookie), ("x-requested-with", "fetch")],
            ),
        );
        assert!(admitted.is_ok());
    }

    #[test]
    fn without_a_secret_protected_routes_are_refused() {
        let refused = authenticate(None, &parts(Method::GET, &[]));
        assert_eq!(refused.unwrap_err(), Refusal::Unconfigured);
    }
}
