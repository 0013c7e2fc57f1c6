//! Forwarding an HTTP request to the service that owns its route, over the
//! bus (the router's fallback: every path the gateway does not serve
//! itself).
//!
//! The request becomes one bus message: metadata in headers (`Mc-Method`,
//! `Mc-Path`, `Mc-Route`, `Mc-Path-Params`, `Mc-Query`, `X-Request-ID`,
//! plus the client's own headers) and the body as raw bytes. The reply
//! comes back the same way, with its status in `Mc-Status`. Nothing on this
//! path parses JSON, and headers are filtered in place rather than copied.
//!
//! Headers in the reserved `Mc-` namespace are dropped both ways, so a
//! client can never pose as the gateway towards a service, and gateway
//! metadata never leaks to a client; hop-by-hop headers are dropped too.
//!
//! Failures the gateway answers itself, each in the JSON envelope:
//!
//! | status | when |
//! |--------|------|
//! | 404 | no route has the path |
//! | 405 | the path has routes, not for this method (`Allow` lists them) |
//! | 413 | the body is larger than `MC_BODY_LIMIT` |
//! | 400 | the body could not be read, or a path parameter is not UTF-8 |
//! | 503 | the service has no live instance ("no responders", at once) |
//! | 504 | the service did not reply within the endpoint's timeout |
//! | 502 | the bus failed otherwise, or the reply is unusable |
//!
//! 502 rather than 503 for a bus failure: the gateway knows a responder
//! exists but could not exchange this request with it, which says nothing
//! about whether retrying soon will help.

use std::sync::{Arc, LazyLock};

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use microcore::transport::{Message, RequestError};
use percent_encoding::percent_decode_str;
use shared_schemas::http as wire;

use crate::AppState;
use crate::envelope;
use crate::routes::{Lookup, Target};

// The wire names of `shared_schemas::http`, lower-cased as `http` stores
// them (checked by a test).
const MC_METHOD: HeaderName = HeaderName::from_static("mc-method");
const MC_PATH: HeaderName = HeaderName::from_static("mc-path");
const MC_ROUTE: HeaderName = HeaderName::from_static("mc-route");
const MC_PATH_PARAMS: HeaderName = HeaderName::from_static("mc-path-params");
const MC_QUERY: HeaderName = HeaderName::from_static("mc-query");
const MC_STATUS: HeaderName = HeaderName::from_static("mc-status");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// `shared_schemas::http::HOP_BY_HOP`, parsed once.
static HOP_BY_HOP: LazyLock<Vec<HeaderName>> = LazyLock::new(|| {
    wire::HOP_BY_HOP
        .iter()
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect()
});

/// Why the gateway answers a request itself instead of relaying the
/// service's reply. Each renders as the error envelope.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("no route for {method} {path}")]
    NotFound { method: Method, path: String },
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed {
        method: Method,
        path: String,
        allow: HeaderValue,
    },
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the request body could not be read")]
    UnreadableBody,
    #[error("the path parameter `{0}` is not valid UTF-8")]
    InvalidParam(String),
    #[error("the request target cannot be forwarded")]
    MalformedTarget,
    #[error("service `{0}` has no live instance")]
    NoInstance(String),
    #[error("service `{0}` did not answer within {1} ms")]
    TimedOut(String, u128),
    #[error("the request could not be delivered to service `{0}`")]
    Undelivered(String),
    #[error("service `{0}` sent an invalid reply")]
    InvalidReply(String),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnreadableBody | Self::InvalidParam(_) | Self::MalformedTarget => {
                StatusCode::BAD_REQUEST
            }
            Self::NoInstance(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::TimedOut(..) => StatusCode::GATEWAY_TIMEOUT,
            Self::Undelivered(_) | Self::InvalidReply(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = envelope::error(self.status(), self.to_string());
        if let Self::MethodNotAllowed { allow, .. } = self {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        response
    }
}

/// The router's fallback.
pub async fn forward(State(state): State<Arc<AppState>>, request: Request) -> Response {
    match relay(&state, request).await {
        Ok(response) => response,
        Err(refusal) => refusal.into_response(),
    }
}

async fn relay(state: &AppState, request: Request) -> Result<Response, Refusal> {
    let (parts, body) = request.into_parts();
    let (method, uri, mut headers) = (parts.method, parts.uri, parts.headers);

    let snapshot = state.snapshot.load();
    let (target, params) = match snapshot.table.lookup(&method, uri.path()) {
        Lookup::Found { target, params } => (target, params),
        Lookup::MethodNotAllowed { allow } => {
            return Err(Refusal::MethodNotAllowed {
                allow: allow.clone(),
                path: uri.path().to_owned(),
                method,
            });
        }
        Lookup::NotFound => {
            return Err(Refusal::NotFound {
                path: uri.path().to_owned(),
                method,
            });
        }
    };

    // Refuse what is announced too large before reading any of it.
    let limit = state.body_limit;
    if declared_length(&headers).is_some_and(|length| length > limit) {
        return Err(Refusal::TooLarge(limit));
    }
    add_metadata(&mut headers, &method, &uri, target, &params)?;
    let body = read_body(body, limit).await?;

    let message = Message { headers, body };
    match state
        .transport
        .request(&target.subject, message, target.timeout)
        .await
    {
        Ok(reply) => into_response(reply, &target.service),
        Err(RequestError::NoResponders(_)) => Err(Refusal::NoInstance(target.service.clone())),
        Err(RequestError::TimedOut(_, timeout)) => Err(Refusal::TimedOut(
            target.service.clone(),
            timeout.as_millis(),
        )),
        Err(RequestError::Transport(e)) => {
            tracing::warn!(service = %target.service, error = %e, "the bus could not carry a request");
            Err(Refusal::Undelivered(target.service.clone()))
        }
    }
}

/// Turns the client's headers into the message headers: what must not
/// cross is dropped, the gateway's metadata added.
fn add_metadata(
    headers: &mut HeaderMap,
    method: &Method,
    uri: &Uri,
    target: &Target,
    params: &matchit::Params<'_, '_>,
) -> Result<(), Refusal> {
    // A parsed URI holds visible ASCII only, so these fail only on a
    // malformed request.
    let uri_value = |part: &str| HeaderValue::from_str(part).map_err(|_| Refusal::MalformedTarget);
    strip(headers);
    // Room for the metadata below, so the map grows at most once.
    headers.reserve(6);
    headers.insert(MC_METHOD, method_value(method));
    headers.insert(MC_ROUTE, target.route.clone());
    headers.insert(MC_PATH, uri_value(uri.path())?);
    if let Some(query) = uri.query() {
        headers.insert(MC_QUERY, uri_value(query)?);
    }
    if let Some(encoded) = encode_params(params)? {
        headers.insert(MC_PATH_PARAMS, encoded);
    }
    Ok(())
}

/// The whole body, within the limit.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, Refusal> {
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(Refusal::TooLarge(limit)),
        Err(e) => {
            tracing::debug!(error = %e, "could not read a request body");
            Err(Refusal::UnreadableBody)
        }
    }
}

fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
}

/// Drops what must not cross the gateway, in either direction: hop-by-hop
/// headers (the fixed set and any named in `Connection`) and the reserved
/// `Mc-` namespace.
fn strip(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP.iter() {
        headers.remove(name);
    }
    if headers.keys().any(|name| wire::is_reserved(name.as_str())) {
        let reserved: Vec<HeaderName> = headers
            .keys()
            .filter(|name| wire::is_reserved(name.as_str()))
            .cloned()
            .collect();
        for name in reserved {
            headers.remove(name);
        }
    }
}

fn method_value(method: &Method) -> HeaderValue {
    let standard = match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        // A method is a token: always a valid header value.
        _ => {
            return HeaderValue::from_str(method.as_str())
                .unwrap_or_else(|_| HeaderValue::from_static(""));
        }
    };
    HeaderValue::from_static(standard)
}

/// Path parameters, percent-decoded, as `application/x-www-form-urlencoded`
/// (`None` for a route without parameters). The router matches the raw
/// path, so `%2F` inside a parameter never splits it.
fn encode_params(params: &matchit::Params<'_, '_>) -> Result<Option<HeaderValue>, Refusal> {
    if params.is_empty() {
        return Ok(None);
    }
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (name, raw) in params.iter() {
        let value = percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| Refusal::InvalidParam(name.to_owned()))?;
        form.append_pair(name, &value);
    }
    // Form encoding leaves visible ASCII only.
    HeaderValue::try_from(form.finish())
        .map(Some)
        .map_err(|_| Refusal::MalformedTarget)
}

/// The service's reply as the client's response.
fn into_response(reply: Message, service: &str) -> Result<Response, Refusal> {
    let Message { mut headers, body } = reply;
    let status = match headers.get(MC_STATUS) {
        None => StatusCode::OK,
        Some(value) => reply_status(value).ok_or_else(|| {
            tracing::warn!(service, status = ?value, "a reply has an unusable Mc-Status");
            Refusal::InvalidReply(service.to_owned())
        })?,
    };
    strip(&mut headers);
    // The client sees the id the gateway assigned, whatever the service says.
    headers.remove(X_REQUEST_ID);
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// A final status a client can be given: 200 to 599.
fn reply_status(value: &HeaderValue) -> Option<StatusCode> {
    StatusCode::from_bytes(value.as_bytes())
        .ok()
        .filter(|s| (200..600).contains(&s.as_u16()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_are_the_wire_contract() {
        for (ours, wire) in [
            (&MC_METHOD, wire::METHOD),
            (&MC_PATH, wire::PATH),
            (&MC_ROUTE, wire::ROUTE),
            (&MC_PATH_PARAMS, wire::PATH_PARAMS),
            (&MC_QUERY, wire::QUERY),
            (&MC_STATUS, wire::STATUS),
            (&X_REQUEST_ID, wire::REQUEST_ID),
        ] {
            assert!(ours.as_str().eq_ignore_ascii_case(wire), "{ours} vs {wire}");
        }
        assert_eq!(HOP_BY_HOP.len(), wire::HOP_BY_HOP.len());
    }

    #[test]
    fn hop_by_hop_and_reserved_headers_are_stripped() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("host", "example.com"),
            ("connection", "keep-alive, X-Trace-Hop"),
            ("x-trace-hop", "1"),
            ("content-length", "3"),
            ("transfer-encoding", "chunked"),
            ("mc-status", "500"),
            ("MC-Route", "/evil"),
            ("mc-anything", "x"),
            ("content-type", "application/json"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("x-request-id", "r-1"),
        ] {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static(value),
            );
        }
        strip(&mut headers);
        let mut left: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                ("content-type", "application/json"),
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
                ("x-request-id", "r-1"),
            ]
        );
    }

    #[test]
    fn path_params_are_decoded_then_form_encoded() {
        let mut router = matchit::Router::new();
        router.insert("/files/{dir}/{name}", ()).unwrap();
        router.insert("/plain", ()).unwrap();

        let matched = router.at("/files/a%2Fb/na%C3%AFve%20x&y=1+2").unwrap();
        let encoded = encode_params(&matched.params).unwrap().unwrap();
        let decoded: Vec<(String, String)> = form_urlencoded::parse(encoded.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(
            decoded,
            [
                ("dir".to_owned(), "a/b".to_owned()),
                ("name".to_owned(), "naïve x&y=1+2".to_owned()),
            ]
        );

        let plain = router.at("/plain").unwrap();
        assert!(encode_params(&plain.params).unwrap().is_none());
        let invalid = router.at("/files/%FF/x").unwrap();
        let refusal = encode_params(&invalid.params).unwrap_err();
        assert_eq!(refusal.status(), StatusCode::BAD_REQUEST);
        assert!(refusal.to_string().contains("`dir`"), "{refusal}");
    }

    #[test]
    fn reply_status_defaults_to_200_and_rejects_nonsense() {
        let status = |s: &'static str| reply_status(&HeaderValue::from_static(s));
        assert_eq!(status("201"), Some(StatusCode::CREATED));
        assert_eq!(status("599"), Some(StatusCode::from_u16(599).unwrap()));
        for bad in ["101", "600", "20", "2000", "abc", ""] {
            assert_eq!(status(bad), None, "{bad}");
        }

        let reply = Message::new(HeaderMap::new(), "raw");
        assert_eq!(into_response(reply, "s").unwrap().status(), StatusCode::OK);
        let mut headers = HeaderMap::new();
        headers.insert(MC_STATUS, HeaderValue::from_static("teapot"));
        let reply = Message::new(headers, "raw");
        let refusal = into_response(reply, "s").unwrap_err();
        assert_eq!(refusal.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn standard_methods_need_no_allocation_and_others_pass() {
        assert_eq!(method_value(&Method::DELETE), "DELETE");
        let custom = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(method_value(&custom), "PURGE");
    }
}
