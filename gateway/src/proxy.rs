//! Forwarding an HTTP request to its service over the bus. Metadata goes
//! in headers and the body as raw bytes; the gateway never parses JSON on
//! this path. Reserved `Mc-` headers from the client are dropped, so no
//! client input can pose as gateway metadata.

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use microcore::tools::Auth;
use microcore::transport::{Message, RequestError, Transport};
use percent_encoding::percent_decode_str;
use shared_schemas::http as wire;

use crate::auth;
use crate::discovery::Shared;
use crate::envelope;
use crate::routes::{Lookup, Target};

/// What the proxy needs, shared by every request.
pub struct Proxy {
    pub transport: Arc<dyn Transport>,
    pub routes: Shared,
    /// Verifies access tokens; `None` without `MC_AUTH_SECRET`.
    pub auth: Option<Auth>,
    pub body_limit: usize,
}

/// Set on the response of a forwarded request: the route it matched, for
/// the gateway's request metrics.
#[derive(Clone)]
pub struct ForwardedRoute(pub Arc<Target>);

/// The fallback handler: every path the gateway does not serve itself.
pub async fn forward(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let snapshot = proxy.routes.load();
    let path = parts.uri.path();
    let (target, params) = match snapshot.table.lookup(&parts.method, path) {
        Lookup::Found { target, params } => (target, params),
        Lookup::MethodNotAllowed(allow) => {
            let message = format!("{} is not allowed on {path}", parts.method);
            let mut response = envelope::error(StatusCode::METHOD_NOT_ALLOWED, message);
            if let Ok(allow) = HeaderValue::from_str(&allow) {
                response.headers_mut().insert(header::ALLOW, allow);
            }
            return response;
        }
        Lookup::NotFound => {
            return envelope::error(
                StatusCode::NOT_FOUND,
                format!("no route for {} {path}", parts.method),
            );
        }
    };

    // The server span of the trace; the service's handler continues it.
    // Its fields are strings, which no layer formats.
    let trace = microcore::telemetry::continue_trace(&parts.headers, || {
        let name = match target.wire_route.to_str() {
            Ok(name) => Cow::Borrowed(name),
            Err(_) => Cow::Owned(format!("{} {}", parts.method, target.route)),
        };
        tracing::info_span!(
            "http request",
            otel.name = &*name,
            otel.kind = "server",
            http.request.method = parts.method.as_str(),
            http.route = &*target.route,
            url.path = path,
            http.response.status_code = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        )
    });
    let span = trace.span.clone();
    let mut response = trace
        .instrument(relay(&proxy, &parts, body, target, params))
        .await;
    response
        .extensions_mut()
        .insert(ForwardedRoute(target.clone()));
    // As i64: OpenTelemetry has no unsigned attribute values.
    span.record(
        "http.response.status_code",
        i64::from(response.status().as_u16()),
    );
    response
}

/// Authenticates, reads the body and sends the request to `target`.
async fn relay(
    proxy: &Proxy,
    parts: &Parts,
    body: Body,
    target: &Target,
    params: Vec<(&str, &str)>,
) -> Response {
    let user = if target.auth {
        match auth::authenticate(proxy.auth.as_ref(), parts) {
            Ok(claims) => Some(claims),
            Err(refused) => return refused.into_response(),
        }
    } else {
        None
    };

    let too_large = || {
        envelope::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body exceeds {} bytes", proxy.body_limit),
        )
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|len| len > proxy.body_limit) {
        return too_large();
    }
    let body = match Limited::new(body, proxy.body_limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return too_large(),
        Err(e) => {
            tracing::debug!(error = %e, "could not read the request body");
            return envelope::error(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            );
        }
    };

    // matchit hands out raw segments; services get the decoded values.
    let mut decoded = Vec::with_capacity(params.len());
    for (name, raw) in params {
        match percent_decode_str(raw).decode_utf8() {
            Ok(value) => decoded.push((name, value)),
            Err(_) => {
                let message = format!("path parameter `{name}` is not valid UTF-8");
                return envelope::error(StatusCode::BAD_REQUEST, message);
            }
        }
    }

    let mut headers = forwardable(&parts.headers);
    headers.insert(wire::ROUTE, target.wire_route.clone());
    if !decoded.is_empty() {
        let encoded = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&decoded)
            .finish();
        headers.insert(wire::PATH_PARAMS, value(&encoded));
    }
    if let Some(query) = parts.uri.query() {
        headers.insert(wire::QUERY, value(query));
    }
    microcore::telemetry::inject(&tracing::Span::current(), &mut headers);
    if let Some(claims) = user {
        headers.insert(wire::AUTH, value(&claims.to_header()));
    }

    match proxy
        .transport
        .request(&target.subject, Message { headers, body }, target.timeout)
        .await
    {
        Ok(reply) => into_response(reply, target),
        // Nobody subscribes to the subject: the service restarts, or the
        // only version serving this route left (it is retained for a while).
        Err(RequestError::NoResponders(_)) => envelope::error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no live instance of service `{}` serves {} {}",
                target.service, parts.method, target.route
            ),
        ),
        Err(RequestError::TimedOut(_, timeout)) => envelope::error(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "service `{}` did not answer within {timeout:?}",
                target.service
            ),
        ),
        Err(RequestError::Transport(e)) => {
            tracing::warn!(service = %target.service, error = %e, "bus request failed");
            envelope::error(
                StatusCode::BAD_GATEWAY,
                "the bus could not deliver the request",
            )
        }
    }
}

/// The client's headers minus hop-by-hop and reserved ones (the request id
/// set by the request-id layer is kept).
fn forwardable(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len() + 5);
    for (name, value) in headers {
        let name_str = name.as_str();
        if !wire::is_reserved(name_str) && !wire::HOP_BY_HOP.contains(&name_str) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

fn into_response(reply: Message, target: &Target) -> Response {
    let Some(status) = wire::reply_status(&reply.headers) else {
        tracing::warn!(service = %target.service, status = ?reply.headers.get(wire::STATUS), "a reply with an unreadable status");
        return envelope::error(
            StatusCode::BAD_GATEWAY,
            "the service sent an unreadable reply",
        );
    };
    let mut response = Response::new(Body::from(reply.body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    // Repeated headers (several `set-cookie`) come as one name, then values.
    let mut current: Option<HeaderName> = None;
    for (name, value) in reply.headers {
        if name.is_some() {
            current = name;
        }
        let Some(name) = &current else { continue };
        if !wire::is_reserved(name.as_str()) && !wire::HOP_BY_HOP.contains(&name.as_str()) {
            headers.append(name.clone(), value);
        }
    }
    if !headers.contains_key(header::CONTENT_TYPE) {
        let json = HeaderValue::from_static(wire::DEFAULT_CONTENT_TYPE);
        headers.insert(header::CONTENT_TYPE, json);
    }
    response
}

fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `GET /openapi.json`.
pub async fn openapi(State(proxy): State<Arc<Proxy>>) -> impl IntoResponse {
    let document: Bytes = proxy.routes.load().openapi.clone();
    ([(header::CONTENT_TYPE, "application/json")], document)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn target() -> Target {
        Target {
            service: "products".into(),
            subject: "mc.http.products.get".into(),
            route: "/products/{id}".into(),
            wire_route: HeaderValue::from_static("GET /products/{id}"),
            timeout: Duration::from_secs(1),
            auth: false,
        }
    }

    fn reply(headers: &[(&'static str, &'static str)]) -> Response {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, HeaderValue::from_static(value));
        }
        into_response(Message::new(map, "{}"), &target())
    }

    #[test]
    fn a_reply_without_headers_is_a_json_200() {
        let response = reply(&[]);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn the_reply_status_and_headers_reach_the_client_but_not_the_metadata() {
        let response = reply(&[
            ("mc-status", "201"),
            ("content-type", "text/plain"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
        ]);
        assert_eq!(response.status(), StatusCode::CREATED);
        let headers = response.headers();
        assert_eq!(headers[header::CONTENT_TYPE], "text/plain");
        assert_eq!(headers.get_all(header::SET_COOKIE).iter().count(), 2);
        assert!(!headers.contains_key(wire::STATUS), "{headers:?}");
    }

    #[test]
    fn an_unreadable_status_is_a_bad_gateway() {
        assert_eq!(
            reply(&[("mc-status", "fine")]).status(),
            StatusCode::BAD_GATEWAY
        );
    }
}
