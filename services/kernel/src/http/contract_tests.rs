//! The request contract of the kernel, exercised without a transport: a
//! request goes through `serve` and the reply is read back.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared_schemas::http as wire;
use tokio::sync::oneshot;
use utoipa::ToSchema;

use super::*;
use crate::transport::{Incoming, Message, Respond, TransportError};

struct Reply(oneshot::Sender<Message>);

#[async_trait]
impl Respond for Reply {
    async fn respond(self: Box<Self>, reply: Message) -> Result<(), TransportError> {
        let _ = self.0.send(reply);
        Ok(())
    }
}

#[derive(Deserialize, ToSchema)]
struct Input {
    id: i64,
    mode: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct Output {
    id: i64,
    request_id: String,
}

struct Fixture;

impl Fixture {
    async fn handle(self: Arc<Self>, input: Input, ctx: Context) -> HandlerResult<Output> {
        match input.mode.as_deref() {
            Some("missing") => {
                ctx.set_status(StatusCode::NOT_FOUND);
                Err(HandlerError::reject("no such thing"))
            }
            Some("refuse") => Err(HandlerError::reject("refused")),
            Some("broken") => Err(HandlerError::internal("secret database detail")),
            Some("panic") => panic!("secret panic detail"),
            Some("slow") => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                unreachable!("abandoned at the timeout")
            }
            _ => Ok(Output {
                id: input.id,
                request_id: ctx.request_id().to_owned(),
            }),
        }
    }

    fn compute(&self, input: Input, _ctx: Context) -> HandlerResult<Output> {
        std::thread::sleep(Duration::from_millis(300));
        Ok(Output {
            id: input.id,
            request_id: String::new(),
        })
    }
}

fn route(blocking: bool) -> Arc<Route> {
    let http = Http::new(Duration::from_millis(200));
    let plugin = Arc::new(Fixture);
    let builder = http.get("/things/{id}");
    if blocking {
        builder.blocking_handler(&plugin, Fixture::compute).unwrap();
    } else {
        builder.handler(&plugin, Fixture::handle).unwrap();
    }
    Arc::new(http.routes().remove(0))
}

async fn call(route: &Route, id: &str, query: &str) -> (StatusCode, Value) {
    let unrecorded = RouteMetrics::new(&opentelemetry::global::meter("contract-tests"), route);
    call_measured(route, &unrecorded, id, query).await
}

async fn call_measured(
    route: &Route,
    metrics: &RouteMetrics,
    id: &str,
    query: &str,
) -> (StatusCode, Value) {
    let mut headers = HeaderMap::new();
    headers.insert(
        wire::PATH_PARAMS,
        HeaderValue::from_str(&format!("id={id}")).unwrap(),
    );
    headers.insert(wire::QUERY, HeaderValue::from_str(query).unwrap());
    headers.insert(wire::REQUEST_ID, HeaderValue::from_static("req-1"));
    let (tx, rx) = oneshot::channel();
    serve(
        route,
        metrics,
        Incoming::new(Message::new(headers, ""), Reply(tx)),
    )
    .await;
    let reply = rx.await.unwrap();
    (
        wire::reply_status(&reply.headers).expect("a readable status"),
        serde_json::from_slice(&reply.body).unwrap(),
    )
}

#[tokio::test]
async fn success_carries_data_and_the_request_id() {
    let (status, body) = call(&route(false), "7", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["success"], true);
    assert_eq!(body["data"]["id"], 7);
    assert_eq!(body["data"]["request_id"], "req-1");
}

#[tokio::test]
async fn every_answer_is_measured_by_route_plugin_and_status() {
    let metrics = crate::telemetry::Metrics::new(crate::telemetry::InstanceIdentity {
        service: "things",
        instance: "t1",
        version: "0.1.0",
    })
    .unwrap();
    let route = route(false);
    let measured = RouteMetrics::new(metrics.meter(), &route);
    call_measured(&route, &measured, "1", "").await;
    call_measured(&route, &measured, "seven", "").await;
    let text = metrics.prometheus_text().unwrap();
    for status in ["200", "422"] {
        let line = format!(
            r#"microcore_handler_duration_seconds_count{{http_request_method="GET",http_response_status_code="{status}",http_route="/things/{{id}}",microcore_plugin="kernel.http",otel_scope_name="microcore"}} 1"#
        );
        assert!(text.contains(&line), "{line} not in\n{text}");
    }
}

#[tokio::test]
async fn invalid_input_is_422_with_the_field() {
    let (status, body) = call(&route(false), "seven", "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["details"][0]["field"], "id");
}

#[tokio::test]
async fn business_failures_default_to_400_and_the_context_status_wins() {
    let route = route(false);
    assert_eq!(
        call(&route, "1", "mode=refuse").await.0,
        StatusCode::BAD_REQUEST
    );
    let (status, body) = call(&route, "1", "mode=missing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "no such thing");
}

#[tokio::test]
async fn internal_errors_and_panics_are_generic_500s() {
    let route = route(false);
    for mode in ["mode=broken", "mode=panic"] {
        let (status, body) = call(&route, "1", mode).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"], "internal server error");
        assert!(!body.to_string().contains("secret"));
    }
}

#[tokio::test]
async fn a_handler_past_its_timeout_is_504() {
    let (status, body) = call(&route(false), "1", "mode=slow").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body["success"], false);
}

#[tokio::test(flavor = "current_thread")]
async fn blocking_handlers_do_not_stall_the_event_loop() {
    let route = route(true);
    let ticks = tokio::spawn(async {
        let mut ticks = 0;
        let mut interval = tokio::time::interval(Duration::from_millis(10));
        let start = tokio::time::Instant::now();
        while start.elapsed() < Duration::from_millis(250) {
            interval.tick().await;
            ticks += 1;
        }
        ticks
    });
    // The handler sleeps 300 ms on a thread; on the single event-loop
    // thread the ticker must keep running meanwhile.
    let route = Arc::new(Route {
        timeout: Duration::from_secs(2),
        ..(*route).clone()
    });
    let (status, _) = call(&route, "3", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(ticks.await.unwrap() >= 10);
}
