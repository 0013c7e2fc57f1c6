//! HTTP over NATS: request metadata travels in NATS headers, the body as
//! raw bytes (no JSON-in-JSON, no base64), and the reply the same way.
//!
//! Header names in the `Mc-` namespace are reserved: the gateway drops any
//! a client sends, so no client input can pose as gateway metadata. Other
//! client headers are forwarded under their own names, except hop-by-hop
//! ones.

pub use http::HeaderName;

/// The reserved header namespace (compared case-insensitively). Names are
/// written lower case, as HTTP/2 and the `http` crate write them; HTTP
/// compares them case-insensitively.
pub const RESERVED_PREFIX: &str = "mc-";

/// Request: the route that matched, as the service declared it: the
/// method and the template, `GET /products/{id}`.
pub const ROUTE: HeaderName = HeaderName::from_static("mc-route");
/// Request: path parameters, `application/x-www-form-urlencoded`.
pub const PATH_PARAMS: HeaderName = HeaderName::from_static("mc-path-params");
/// Request: the raw query string, without `?`.
pub const QUERY: HeaderName = HeaderName::from_static("mc-query");
/// Request and reply: the request id, the root of the causal chain.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Request: the verified claims of the caller's access token
/// ([`Claims::to_header`](crate::auth::Claims::to_header)), set by the
/// gateway on authenticated routes only.
pub const AUTH: HeaderName = HeaderName::from_static("mc-auth");
/// Reply: the HTTP status code, absent for `200 OK` (as NATS micro
/// replies carry error headers only on errors); see [`reply_status`].
pub const STATUS: HeaderName = HeaderName::from_static("mc-status");

/// What a reply without `Content-Type` holds: the JSON envelope.
pub const DEFAULT_CONTENT_TYPE: &str = "application/json";

/// The status a reply's headers give: [`STATUS`], `200 OK` when absent,
/// `None` when it is not a status code.
pub fn reply_status(headers: &http::HeaderMap) -> Option<http::StatusCode> {
    match headers.get(STATUS) {
        None => Some(http::StatusCode::OK),
        Some(value) => http::StatusCode::from_bytes(value.as_bytes()).ok(),
    }
}

/// True for a header name clients may not send through the gateway.
pub fn is_reserved(name: &str) -> bool {
    name.len() >= RESERVED_PREFIX.len()
        && name[..RESERVED_PREFIX.len()].eq_ignore_ascii_case(RESERVED_PREFIX)
}

/// Headers that describe one hop, not the request: never forwarded.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_without_a_status_is_ok() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(reply_status(&headers), Some(http::StatusCode::OK));
        headers.insert(STATUS, http::HeaderValue::from_static("404"));
        assert_eq!(reply_status(&headers), Some(http::StatusCode::NOT_FOUND));
        headers.insert(STATUS, http::HeaderValue::from_static("fine"));
        assert_eq!(reply_status(&headers), None);
    }

    #[test]
    fn reserved_names_are_case_insensitive() {
        assert!(is_reserved("Mc-Status"));
        assert!(is_reserved("mc-auth"));
        assert!(is_reserved("MC-ROUTE"));
        assert!(!is_reserved("mcx"));
        assert!(!is_reserved("m"));
        assert!(!is_reserved("content-type"));
    }
}
