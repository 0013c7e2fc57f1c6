//! `http.server.request.duration` of every request the gateway answers
//! (seconds, the OpenTelemetry HTTP convention), by `http.request.method`,
//! `http.route` (the route template, never the raw path, so the label set
//! stays bounded) and `http.response.status_code`. A request that matches
//! no route has no `http.route`.
//!
//! A tower layer rather than a middleware function: it runs on every
//! request, and a layer measures without boxing the request's future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use http::Method;
use microcore::telemetry::Metrics;
use microcore::telemetry::metrics::duration_histogram;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Histogram;
use tower::{Layer, Service};

use crate::proxy::ForwardedRoute;

/// The layer measuring each request.
#[derive(Clone)]
pub struct RequestMetricsLayer {
    duration: Histogram<f64>,
}

impl RequestMetricsLayer {
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            duration: duration_histogram(
                metrics.meter(),
                "http.server.request.duration",
                "Duration of HTTP server requests",
            ),
        }
    }
}

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics {
            inner,
            duration: self.duration.clone(),
        }
    }
}

/// The service [`RequestMetricsLayer`] wraps around the gateway's router.
#[derive(Clone)]
pub struct RequestMetrics<S> {
    inner: S,
    duration: Histogram<f64>,
}

impl<S> Service<Request> for RequestMetrics<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Measured<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let method = method_attribute(request.method());
        let own_route = request.extensions().get::<MatchedPath>().cloned();
        Measured {
            inner: self.inner.call(request),
            measure: Some(Measure {
                started: Instant::now(),
                method,
                own_route,
                duration: self.duration.clone(),
            }),
        }
    }
}

/// What a request's measurement needs once its answer is there.
struct Measure {
    started: Instant,
    method: &'static str,
    /// The gateway's own routes are matched by axum, before the layer.
    own_route: Option<MatchedPath>,
    duration: Histogram<f64>,
}

impl Measure {
    fn record(self, response: &Response) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let method = KeyValue::new("http.request.method", self.method);
        let status = KeyValue::new(
            "http.response.status_code",
            i64::from(response.status().as_u16()),
        );
        // A forwarded request's route is the service's template.
        let route = match response.extensions().get::<ForwardedRoute>() {
            Some(forwarded) => Some(forwarded.0.route.clone()),
            None => self.own_route.map(|m| m.as_str().into()),
        };
        match route {
            Some(route) => self.duration.record(
                elapsed,
                &[method, KeyValue::new("http.route", route), status],
            ),
            None => self.duration.record(elapsed, &[method, status]),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer, measured when it is ready.
    pub struct Measured<F> {
        #[pin]
        inner: F,
        measure: Option<Measure>,
    }
}

impl<F, E> Future for Measured<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let (Ok(response), Some(measure)) = (&result, this.measure.take()) {
            measure.record(response);
        }
        Poll::Ready(result)
    }
}

/// The method as the convention names it: one of the standard methods,
/// or `_OTHER`, so that a client cannot grow the label set at will.
fn method_attribute(method: &Method) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == method.as_str())
        .unwrap_or("_OTHER")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_attribute(&Method::PATCH), "PATCH");
        assert_eq!(method_attribute(&Method::GET), "GET");
        let custom = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(method_attribute(&custom), "_OTHER");
    }
}
