//! Serving one request: wire metadata in, envelope out. Invalid input never
//! reaches the handler (422); neither does an authenticated route's request
//! without the gateway's verified claims (401); a panic or internal error is
//! a generic 500 with the cause in the log; a handler past its timeout is
//! abandoned (504). Every answer is measured ([`RouteMetrics`]).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue, StatusCode};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter};
use shared_schemas::auth::Claims;
use shared_schemas::{ApiResponse, http as wire};

use super::{Context, HandlerError, RequestData, Route};
use crate::causality::{self, Cause};
use crate::transport::{Incoming, Message};

/// `microcore.handler.duration` for one route: how long the service took
/// to answer a request, from its arrival to its reply (input checks
/// included, the gateway and the bus not), by `http.request.method`,
/// `http.route`, `http.response.status_code` and `microcore.plugin`. No
/// semantic convention covers a handler behind a gateway, and reusing
/// `http.server.request.duration` would count each request twice in a
/// fleet-wide sum, hence a name of its own.
#[derive(Clone)]
pub(crate) struct RouteMetrics {
    duration: Histogram<f64>,
    /// Method, route template and plugin: the same for every request.
    attributes: Arc<[KeyValue; 3]>,
}

impl RouteMetrics {
    pub fn new(meter: &Meter, route: &Route) -> Self {
        let duration = crate::telemetry::metrics::duration_histogram(
            meter,
            "microcore.handler.duration",
            "Time the service took to answer a request routed to a plugin",
        );
        let attributes = [
            KeyValue::new(
                "http.request.method",
                Arc::<str>::from(route.method.as_str()),
            ),
            KeyValue::new("http.route", Arc::<str>::from(route.path.as_str())),
            KeyValue::new("microcore.plugin", Arc::<str>::from(route.plugin.as_str())),
        ];
        Self {
            duration,
            attributes: Arc::new(attributes),
        }
    }

    fn record(&self, started: Instant, reply: &Message) {
        let status = wire::reply_status(&reply.headers).map_or(0, |s| i64::from(s.as_u16()));
        let [method, route, plugin] = &*self.attributes;
        self.duration.record(
            started.elapsed().as_secs_f64(),
            &[
                method.clone(),
                route.clone(),
                plugin.clone(),
                KeyValue::new("http.response.status_code", status),
            ],
        );
    }
}

/// Handles `incoming` with `route`, measures it and sends the reply.
pub(crate) async fn serve(route: &Route, metrics: &RouteMetrics, mut incoming: Incoming) {
    let started = Instant::now();
    let reply = answer(route, std::mem::take(&mut incoming.message)).await;
    metrics.record(started, &reply);
    if let Err(e) = incoming.respond(reply).await {
        tracing::warn!(plugin = %route.plugin, error = %e, "could not send the reply");
    }
}

async fn answer(route: &Route, request: Message) -> Message {
    let Message { headers, body } = request;
    let request_id = text(&headers, wire::REQUEST_ID)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut params: Vec<(String, String)> = Vec::new();
    for source in [wire::QUERY, wire::PATH_PARAMS] {
        if let Some(encoded) = text(&headers, source) {
            params.extend(form_urlencoded::parse(encoded.as_bytes()).into_owned());
        }
    }
    let data = RequestData {
        params,
        body: &body,
    };
    // Claims are read on authenticated routes only, so nothing can lend
    // an identity to a public one.
    let user = if route.auth {
        match text(&headers, wire::AUTH).map(Claims::from_header) {
            Some(Ok(claims)) => Some(claims),
            invalid => {
                if let Some(Err(e)) = invalid {
                    tracing::warn!(plugin = %route.plugin, error = %e, "unreadable claims from the gateway");
                }
                let body = ApiResponse::<()>::error("authentication required");
                return envelope(StatusCode::UNAUTHORIZED, &body, Default::default());
            }
        }
    } else {
        None
    };
    // The gateway's span is the parent: one trace from the client on.
    let trace = crate::telemetry::continue_trace(&headers, || {
        tracing::info_span!(
            "request",
            otel.name = route.endpoint.as_str(),
            otel.kind = "server",
            plugin = route.plugin.as_str(),
            request_id = request_id.as_str(),
            route = route.endpoint.as_str(),
            http.request.method = route.method.as_str(),
            http.route = route.path.as_str(),
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        )
    });
    let span = trace.span.clone();
    let ctx = Context::new(request_id.clone(), user, headers);
    let future = match (route.handler)(&data, ctx.clone()) {
        Ok(future) => future,
        Err(invalid) => {
            span.in_scope(|| tracing::debug!(error = %invalid.message, "invalid input"));
            let body = ApiResponse::<()>::invalid(invalid.message, invalid.fields);
            return envelope(StatusCode::UNPROCESSABLE_ENTITY, &body, Default::default());
        }
    };
    let run = causality::scope(
        Cause::request(&request_id),
        AssertUnwindSafe(future).catch_unwind(),
    );
    let outcome = trace
        .instrument(tokio::time::timeout(route.timeout, run))
        .await;
    let parts = ctx.take_reply();
    let _entered = span.enter();
    match outcome {
        Ok(Ok(Ok(body))) => reply(
            parts.status.unwrap_or(route.success),
            parts.headers,
            body.into(),
        ),
        Ok(Ok(Err(HandlerError::Rejected { status, message }))) => {
            let status = status.or(parts.status).unwrap_or(StatusCode::BAD_REQUEST);
            envelope(status, &ApiResponse::<()>::error(message), parts.headers)
        }
        Ok(Ok(Err(HandlerError::Internal(cause)))) => {
            tracing::error!(error = %cause, "handler failed");
            internal_error()
        }
        Ok(Err(panic)) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %message, "handler panicked");
            internal_error()
        }
        Err(_) => {
            tracing::warn!(timeout = ?route.timeout, "handler timed out");
            let message = format!("the handler did not answer within {:?}", route.timeout);
            envelope(
                StatusCode::GATEWAY_TIMEOUT,
                &ApiResponse::<()>::error(message),
                Default::default(),
            )
        }
    }
}

fn internal_error() -> Message {
    envelope(
        StatusCode::INTERNAL_SERVER_ERROR,
        &ApiResponse::<()>::error("internal server error"),
        Default::default(),
    )
}

fn envelope(status: StatusCode, body: &ApiResponse<()>, headers: HeaderMap) -> Message {
    let body = serde_json::to_vec(body).unwrap_or_default();
    reply(status, headers, body.into())
}

/// The wire leaves out what the gateway assumes: a `200 OK` status and a
/// JSON body, so that the common reply carries no headers at all.
fn reply(status: StatusCode, mut headers: HeaderMap, body: Bytes) -> Message {
    if status != StatusCode::OK {
        headers.insert(wire::STATUS, HeaderValue::from(status.as_u16()));
    }
    Message { headers, body }
}

fn text(headers: &HeaderMap, name: impl http::header::AsHeaderName) -> Option<&str> {
    headers.get(name)?.to_str().ok()
}
