//! Request-reply between domains, for the rare question that cannot wait
//! for an event ("what does this cost now?"). A handler declared with
//! [`Bus::respond`] becomes an endpoint of its service (a queue group, so
//! one replica answers, and visible to NATS micro tooling); a caller uses
//! [`Bus::request`] and learns apart "nobody answers", "too slow" and
//! "answered no".
//!
//! The request travels in the event envelope, so the handler runs in the
//! caller's causal chain; the reply is the standard `ApiResponse`.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter};
use serde::Serialize;
use serde::de::DeserializeOwned;
use shared_schemas::ApiResponse;
use shared_schemas::events::EventEnvelope;
use tracing::Instrument;

use super::subscribe::{SubscribeError, check_name};
use super::{Bus, envelope};
use crate::causality::{self, Cause};
use crate::http::{HandlerError, HandlerResult};
use crate::plugin::PluginId;
use crate::transport::{Incoming, Message, RequestError, TransportError};

/// Erased handler: the request envelope in, the reply body out.
type RpcHandler =
    Arc<dyn Fn(EventEnvelope) -> BoxFuture<'static, ApiResponse<serde_json::Value>> + Send + Sync>;

/// A declared request-reply handler.
#[derive(Clone)]
pub(crate) struct Responder {
    pub plugin: PluginId,
    pub name: String,
    handler: RpcHandler,
}

/// A request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("nobody answers `{0}`")]
    NoResponder(String),
    #[error("`{name}` did not answer within {after:?}")]
    TimedOut { name: String, after: Duration },
    /// The handler answered no; the message is its own.
    #[error("`{name}` refused: {message}")]
    Rejected { name: String, message: String },
    #[error("the request to `{0}` could not be serialized: {1}")]
    Serialize(String, #[source] serde_json::Error),
    #[error("the answer of `{0}` is not what was expected: {1}")]
    InvalidReply(String, #[source] serde_json::Error),
    #[error(transparent)]
    Transport(TransportError),
}

impl Bus {
    /// Declares the handler answering requests named `name`, in `on_boot`.
    pub fn respond(&self, name: &str) -> RespondBuilder<'_> {
        RespondBuilder {
            bus: self,
            name: name.to_owned(),
        }
    }

    /// Asks the handler of `name` and waits up to `timeout` for its answer.
    pub async fn request<Q, R>(
        &self,
        name: &str,
        request: &Q,
        timeout: Duration,
    ) -> Result<R, RpcError>
    where
        Q: Serialize,
        R: DeserializeOwned,
    {
        let envelope = envelope(self.identity(), name, request);
        let body =
            serde_json::to_vec(&envelope).map_err(|e| RpcError::Serialize(name.to_owned(), e))?;
        let subject = self.subjects.rpc(name);
        let (span, headers) = crate::telemetry::outgoing(|| {
            tracing::info_span!(
                "request",
                otel.name = %format_args!("request {name}"),
                otel.kind = "client",
                rpc.system = "nats",
                rpc.method = name,
            )
        });
        let reply = self
            .transport
            .request(&subject, Message::new(headers, body), timeout)
            .instrument(span)
            .await
            .map_err(|e| match e {
                RequestError::NoResponders(_) => RpcError::NoResponder(name.to_owned()),
                RequestError::TimedOut(_, after) => RpcError::TimedOut {
                    name: name.to_owned(),
                    after,
                },
                RequestError::Transport(e) => RpcError::Transport(e),
            })?;
        let invalid = |e| RpcError::InvalidReply(name.to_owned(), e);
        let reply: ApiResponse<serde_json::Value> =
            serde_json::from_slice(&reply.body).map_err(invalid)?;
        if !reply.success {
            return Err(RpcError::Rejected {
                name: name.to_owned(),
                message: reply.error.unwrap_or_default(),
            });
        }
        serde_json::from_value(reply.data.unwrap_or_default()).map_err(invalid)
    }
}

/// Declares one request-reply handler; finished by
/// [`RespondBuilder::handler`].
#[must_use = "a handler is declared only by `.handler(..)`"]
pub struct RespondBuilder<'a> {
    bus: &'a Bus,
    name: String,
}

impl RespondBuilder<'_> {
    /// Declares `handler`. A [`HandlerError::Rejected`] reaches the caller
    /// as [`RpcError::Rejected`]; an internal error is logged here and the
    /// caller learns only that it failed.
    pub fn handler<P, Q, R, F, Fut>(self, plugin: &Arc<P>, handler: F) -> Result<(), SubscribeError>
    where
        P: Send + Sync + 'static,
        Q: DeserializeOwned + Send + 'static,
        R: Serialize + 'static,
        F: Fn(Arc<P>, Q) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult<R>> + Send + 'static,
    {
        let owner = self.bus.emitter.clone().ok_or(SubscribeError::NoPlugin)?;
        check_name("name", &self.name)?;
        let plugin = plugin.clone();
        let (name, who) = (self.name.clone(), owner.clone());
        let handler: RpcHandler = Arc::new(move |envelope: EventEnvelope| {
            let cause = Cause::event(&envelope);
            let request = serde_json::from_value::<Q>(envelope.payload);
            let handling = request.map(|request| handler(plugin.clone(), request));
            let (name, who) = (name.clone(), who.clone());
            async move {
                let handling = match handling {
                    Ok(handling) => handling,
                    Err(e) => return ApiResponse::error(format!("invalid request: {e}")),
                };
                let outcome = AssertUnwindSafe(causality::scope(cause, handling))
                    .catch_unwind()
                    .await;
                match outcome {
                    Ok(Ok(data)) => match serde_json::to_value(data) {
                        Ok(data) => ApiResponse::ok(data),
                        Err(e) => failed(&who, &name, &e),
                    },
                    Ok(Err(HandlerError::Rejected { message, .. })) => ApiResponse::error(message),
                    Ok(Err(HandlerError::Internal(e))) => failed(&who, &name, &e),
                    Err(_) => failed(&who, &name, &"the handler panicked"),
                }
            }
            .boxed()
        });
        let responder = Responder {
            plugin: owner,
            name: self.name,
            handler,
        };
        let mut result = Ok(());
        self.bus.declare(|declared| {
            if declared.responders.iter().any(|r| r.name == responder.name) {
                result = Err(SubscribeError::Duplicate {
                    subscriber: responder.name.clone(),
                });
            } else {
                declared.responders.push(responder);
            }
        });
        result
    }
}

fn failed(
    plugin: &PluginId,
    name: &str,
    cause: &dyn std::fmt::Display,
) -> ApiResponse<serde_json::Value> {
    tracing::error!(%plugin, request = name, error = %cause, "request handler failed");
    ApiResponse::error("the handler failed")
}

/// `rpc.server.call.duration` for one request-reply handler (the
/// OpenTelemetry RPC convention): from the request's arrival to the
/// reply, by `rpc.system.name` (`nats`), `rpc.method`, `microcore.plugin`
/// and, for an answer that says no, `error.type` (`rejected`).
#[derive(Clone)]
pub(crate) struct ResponderMetrics {
    duration: Histogram<f64>,
    attributes: Arc<[KeyValue; 3]>,
}

impl ResponderMetrics {
    pub fn new(meter: &Meter, responder: &Responder) -> Self {
        let duration = crate::telemetry::metrics::duration_histogram(
            meter,
            "rpc.server.call.duration",
            "Time a request-reply handler took to answer",
        );
        let attributes = [
            KeyValue::new("rpc.system.name", "nats"),
            KeyValue::new("rpc.method", Arc::<str>::from(responder.name.as_str())),
            KeyValue::new(
                "microcore.plugin",
                Arc::<str>::from(responder.plugin.as_str()),
            ),
        ];
        Self {
            duration,
            attributes: Arc::new(attributes),
        }
    }

    fn record(&self, started: Instant, success: bool) {
        let elapsed = started.elapsed().as_secs_f64();
        let [system, method, plugin] = &*self.attributes;
        if success {
            self.duration
                .record(elapsed, &[system.clone(), method.clone(), plugin.clone()]);
        } else {
            self.duration.record(
                elapsed,
                &[
                    system.clone(),
                    method.clone(),
                    plugin.clone(),
                    KeyValue::new("error.type", "rejected"),
                ],
            );
        }
    }
}

/// Answers one request with `responder`, in a server span continuing the
/// caller's trace, and measures it.
pub(crate) async fn serve(responder: &Responder, metrics: &ResponderMetrics, incoming: Incoming) {
    let trace = crate::telemetry::continue_trace(&incoming.message.headers, || {
        tracing::info_span!(
            "respond",
            otel.name = %format_args!("respond {}", responder.name),
            otel.kind = "server",
            rpc.system = "nats",
            rpc.method = responder.name.as_str(),
            plugin = responder.plugin.as_str(),
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        )
    });
    trace.instrument(answer(responder, metrics, incoming)).await;
}

async fn answer(responder: &Responder, metrics: &ResponderMetrics, incoming: Incoming) {
    let started = Instant::now();
    let reply = match serde_json::from_slice::<EventEnvelope>(&incoming.message.body) {
        Ok(envelope) => (responder.handler)(envelope).await,
        Err(e) => ApiResponse::error(format!("invalid request envelope: {e}")),
    };
    metrics.record(started, reply.success);
    let mut headers = HeaderMap::new();
    if !reply.success {
        headers.insert(
            shared_schemas::http::STATUS,
            HeaderValue::from_static("400"),
        );
    }
    let body = serde_json::to_vec(&reply).unwrap_or_default();
    if let Err(e) = incoming.respond(Message::new(headers, body)).await {
        tracing::warn!(request = %responder.name, error = %e, "could not send a reply");
    }
}
