//! The HTTP behaviour of the whole router, over an in-memory transport that
//! records what the gateway sends and answers as each test says. (The
//! end-to-end suite runs the same contract against real NATS.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use http_body_util::BodyExt;
use microcore::transport::{
    Announcement, Message, Registration, RequestError, ServiceSpec, Transport, TransportError,
};
use serde_json::{Value, json};
use shared_schemas::discovery::{EndpointInfo, InstanceDown, ServiceInfo};
use tokio::sync::mpsc;
use tower::ServiceExt;

use crate::routes::tests::endpoint;
use crate::{Gateway, GatewayConfig};

type Reply = dyn Fn(&str, &Message) -> Result<Message, RequestError> + Send + Sync;

/// A transport whose services are whatever the test says.
struct Stub {
    services: Vec<ServiceInfo>,
    announcements: Mutex<Option<mpsc::UnboundedReceiver<Announcement>>>,
    /// Every request the gateway sent: subject and message.
    sent: Mutex<Vec<(String, Message)>>,
    reply: Box<Reply>,
}

#[async_trait]
impl Transport for Stub {
    async fn register(&self, _: ServiceSpec) -> Result<Registration, TransportError> {
        Err(TransportError::new(
            "register",
            "the gateway never registers",
        ))
    }

    async fn request(
        &self,
        subject: &str,
        message: Message,
        _timeout: Duration,
    ) -> Result<Message, RequestError> {
        let reply = (self.reply)(subject, &message);
        self.sent
            .lock()
            .unwrap()
            .push((subject.to_owned(), message));
        reply
    }

    async fn publish(&self, _: &str, _: Message) -> Result<(), TransportError> {
        Ok(())
    }

    async fn discover(&self, _: Duration) -> Result<Vec<ServiceInfo>, TransportError> {
        Ok(self.services.clone())
    }

    async fn announcements(&self) -> Result<BoxStream<'static, Announcement>, TransportError> {
        let receiver = self.announcements.lock().unwrap().take();
        Ok(match receiver {
            Some(mut receiver) => {
                futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx)).boxed()
            }
            None => futures_util::stream::pending().boxed(),
        })
    }

    async fn flush(&self) -> Result<(), TransportError> {
        Ok(())
    }
}

fn products(id: &str) -> ServiceInfo {
    let endpoints = [
        ("list", "GET", "/products"),
        ("create", "POST", "/products"),
        ("get", "GET", "/products/{id}"),
        ("search", "GET", "/products/search"),
    ]
    .into_iter()
    .map(|(name, method, path)| EndpointInfo {
        name: name.into(),
        subject: format!("mc.http.products.{name}"),
        queue_group: "q".into(),
        metadata: endpoint(method, path).to_metadata(),
    })
    .collect();
    ServiceInfo {
        name: "products".into(),
        id: id.into(),
        version: "0.1.0".into(),
        description: String::new(),
        metadata: Default::default(),
        endpoints,
    }
}

/// Answers 200 with the subject as the body.
fn echo_subject(subject: &str, _: &Message) -> Result<Message, RequestError> {
    Ok(Message::new(HeaderMap::new(), subject.to_owned()))
}

struct Harness {
    stub: Arc<Stub>,
    gateway: Gateway,
    announce: mpsc::UnboundedSender<Announcement>,
}

impl Harness {
    async fn start(services: Vec<ServiceInfo>, reply: Box<Reply>) -> Self {
        Self::with_config(services, reply, GatewayConfig::default()).await
    }

    async fn with_config(
        services: Vec<ServiceInfo>,
        reply: Box<Reply>,
        config: GatewayConfig,
    ) -> Self {
        let (announce, receiver) = mpsc::unbounded_channel();
        let stub = Arc::new(Stub {
            services,
            announcements: Mutex::new(Some(receiver)),
            sent: Mutex::new(Vec::new()),
            reply,
        });
        let config = GatewayConfig {
            discovery_interval: Duration::from_secs(3600),
            ..config
        };
        let gateway = Gateway::start(&config, stub.clone()).await.unwrap();
        Self {
            stub,
            gateway,
            announce,
        }
    }

    async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.gateway.router().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(Request::get(path).body(Body::empty()).unwrap())
            .await
    }

    fn sent(&self) -> Vec<(String, Message)> {
        self.stub.sent.lock().unwrap().clone()
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Asserts a gateway error in the envelope; returns its message.
    #[track_caller]
    fn error(&self, status: StatusCode) -> String {
        assert_eq!(self.status, status, "{:?}", self.body);
        assert_eq!(self.header("content-type"), Some("application/json"));
        let body = self.json();
        assert_eq!(body["success"], false, "{body}");
        assert_eq!(body["data"], Value::Null, "{body}");
        body["error"].as_str().unwrap().to_owned()
    }
}

#[tokio::test]
async fn an_unknown_path_is_a_404_envelope_with_a_request_id() {
    let harness = Harness::start(vec![products("a")], Box::new(echo_subject)).await;
    let answer = harness.get("/x").await;
    assert_eq!(answer.error(StatusCode::NOT_FOUND), "no route for GET /x");
    assert_eq!(
        answer.json(),
        json!({"success": false, "data": null, "error": "no route for GET /x"})
    );
    assert!(
        answer
            .header("x-request-id")
            .is_some_and(|id| id.len() == 36)
    );
    assert!(harness.sent().is_empty());
}

#[tokio::test]
async fn a_wrong_method_is_a_405_envelope_with_allow() {
    let harness = Harness::start(vec![products("a")], Box::new(echo_subject)).await;
    let answer = harness
        .send(Request::delete("/products").body(Body::empty()).unwrap())
        .await;
    answer.error(StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer.header("allow"), Some("GET, HEAD, POST"));

    // The gateway's own paths answer the same way.
    let answer = harness
        .send(Request::post("/health").body(Body::empty()).unwrap())
        .await;
    answer.error(StatusCode::METHOD_NOT_ALLOWED);
    assert!(answer.header("allow").is_some_and(|a| a.contains("GET")));
    assert!(answer.header("x-request-id").is_some());
    assert!(harness.sent().is_empty());
}

#[tokio::test]
async fn a_request_crosses_with_its_metadata_and_without_reserved_headers() {
    let reply = |_: &str, _: &Message| {
        let mut headers = HeaderMap::new();
        headers.insert("mc-status", HeaderValue::from_static("201"));
        headers.insert("mc-internal", HeaderValue::from_static("secret"));
        headers.insert("x-request-id", HeaderValue::from_static("not-the-id"));
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.append("set-cookie", HeaderValue::from_static("a=1; HttpOnly"));
        headers.append("set-cookie", HeaderValue::from_static("b=2; HttpOnly"));
        Ok(Message::new(
            headers,
            Bytes::from_static(&[0, 159, 146, 150]),
        ))
    };
    let harness = Harness::start(vec![products("a")], Box::new(reply)).await;
    let answer = harness
        .send(
            Request::get("/products/caf%C3%A9%20au%20lait?limit=1&q=a+b")
                .header("x-request-id", "client-chosen-1")
                .header("cookie", "session=s")
                .header("connection", "x-hop")
                .header("x-hop", "1")
                .header("Mc-Status", "500")
                .header("MC-ROUTE", "/products")
                .header("mc-path-params", "id=2")
                .header("mc-smuggled", "yes")
                .body(Body::empty())
                .unwrap(),
        )
        .await;

    let [(subject, message)] = harness.sent().try_into().unwrap();
    assert_eq!(subject, "mc.http.products.get");
    let sent = |name: &str| -> Vec<&str> {
        message
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    };
    assert_eq!(sent("mc-method"), ["GET"]);
    assert_eq!(sent("mc-path"), ["/products/caf%C3%A9%20au%20lait"]);
    assert_eq!(sent("mc-route"), ["/products/{id}"]);
    assert_eq!(sent("mc-path-params"), ["id=caf%C3%A9+au+lait"]);
    assert_eq!(sent("mc-query"), ["limit=1&q=a+b"]);
    assert_eq!(sent("x-request-id"), ["client-chosen-1"]);
    assert_eq!(sent("cookie"), ["session=s"]);
    for dropped in ["mc-status", "mc-smuggled", "x-hop", "connection", "host"] {
        assert!(sent(dropped).is_empty(), "{dropped} was forwarded");
    }
    assert!(message.body.is_empty());

    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.body.as_ref(), [0, 159, 146, 150]);
    assert_eq!(
        answer.header("content-type"),
        Some("application/octet-stream")
    );
    let cookies: Vec<&str> = answer
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(cookies, ["a=1; HttpOnly", "b=2; HttpOnly"]);
    assert_eq!(answer.header("x-request-id"), Some("client-chosen-1"));
    assert_eq!(answer.headers.get_all("x-request-id").iter().count(), 1);
    assert!(
        answer
            .headers
            .keys()
            .all(|name| !name.as_str().starts_with("mc-")),
        "{:?}",
        answer.headers
    );
}

#[tokio::test]
async fn a_static_path_wins_and_head_follows_get() {
    let harness = Harness::start(vec![products("a")], Box::new(echo_subject)).await;
    let answer = harness.get("/products/search").await;
    assert_eq!(answer.body, "mc.http.products.search");
    let answer = harness.get("/products/42").await;
    assert_eq!(answer.body, "mc.http.products.get");

    let answer = harness
        .send(Request::head("/products").body(Body::empty()).unwrap())
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.is_empty());
    let (subject, message) = harness.sent().pop().unwrap();
    assert_eq!(subject, "mc.http.products.list");
    assert_eq!(message.headers["mc-method"], "HEAD");
}

#[tokio::test]
async fn bus_failures_are_503_504_and_502_envelopes() {
    let reply = |subject: &str, _: &Message| {
        Err(match subject {
            "mc.http.products.list" => RequestError::NoResponders(subject.to_owned()),
            "mc.http.products.get" => {
                RequestError::TimedOut(subject.to_owned(), Duration::from_millis(1000))
            }
            _ => TransportError::new("request", "connection reset").into(),
        })
    };
    let harness = Harness::start(vec![products("a")], Box::new(reply)).await;
    let message = harness
        .get("/products")
        .await
        .error(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(message, "service `products` has no live instance");
    let message = harness
        .get("/products/1")
        .await
        .error(StatusCode::GATEWAY_TIMEOUT);
    assert!(message.contains("1000 ms"), "{message}");
    let message = harness
        .get("/products/search")
        .await
        .error(StatusCode::BAD_GATEWAY);
    assert!(!message.contains("connection reset"), "{message}");
}

#[tokio::test]
async fn an_unusable_reply_status_is_a_502() {
    let reply = |_: &str, _: &Message| {
        let mut headers = HeaderMap::new();
        headers.insert("mc-status", HeaderValue::from_static("abc"));
        Ok(Message::new(headers, "{}"))
    };
    let harness = Harness::start(vec![products("a")], Box::new(reply)).await;
    harness
        .get("/products")
        .await
        .error(StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_and_never_sent() {
    let config = GatewayConfig {
        body_limit: 16,
        ..GatewayConfig::default()
    };
    let harness = Harness::with_config(vec![products("a")], Box::new(echo_subject), config).await;
    let post = |body: Body| Request::post("/products").body(body).unwrap();

    let declared = harness.send(post(Body::from(vec![b'x'; 17]))).await;
    declared.error(StatusCode::PAYLOAD_TOO_LARGE);
    assert!(declared.header("x-request-id").is_some());

    let chunks = futures_util::stream::iter([
        Ok::<_, std::io::Error>(Bytes::from_static(b"0123456789")),
        Ok(Bytes::from_static(b"0123456789")),
    ]);
    let streamed = harness.send(post(Body::from_stream(chunks))).await;
    streamed.error(StatusCode::PAYLOAD_TOO_LARGE);
    assert!(harness.sent().is_empty());

    let fits = harness
        .send(post(Body::from(Bytes::from_static(b"{\"name\":\"x\"}"))))
        .await;
    assert_eq!(fits.status, StatusCode::OK);
    let [(_, message)] = harness.sent().try_into().unwrap();
    assert_eq!(message.body, "{\"name\":\"x\"}");
}

#[tokio::test]
async fn an_unusable_request_id_is_replaced_and_the_service_sees_the_new_one() {
    let harness = Harness::start(vec![products("a")], Box::new(echo_subject)).await;
    let answer = harness
        .send(
            Request::get("/products")
                .header("x-request-id", "has spaces")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    let id = answer.header("x-request-id").unwrap();
    assert_ne!(id, "has spaces");
    let [(_, message)] = harness.sent().try_into().unwrap();
    assert_eq!(message.headers["x-request-id"], id);
}

#[tokio::test]
async fn a_panic_is_a_generic_500_envelope_with_the_request_id() {
    let reply =
        |_: &str, _: &Message| -> Result<Message, RequestError> { panic!("the secret cause") };
    let harness = Harness::start(vec![products("a")], Box::new(reply)).await;
    let answer = harness
        .send(
            Request::get("/products")
                .header("x-request-id", "r-500")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        answer.error(StatusCode::INTERNAL_SERVER_ERROR),
        "internal server error"
    );
    assert_eq!(answer.header("x-request-id"), Some("r-500"));
}

#[tokio::test]
async fn health_routes_and_the_document_describe_the_live_services() {
    let harness = Harness::start(vec![products("a"), products("b")], Box::new(echo_subject)).await;
    let health = harness.get("/health").await;
    assert_eq!(
        health.json(),
        json!({"success": true, "data": {"status": "ok", "services": 1}, "error": null})
    );

    let routes = harness.get("/system/routes").await.json();
    let listed = routes["data"]["routes"].as_array().unwrap();
    assert_eq!(listed.len(), 4, "{routes}");
    assert!(
        listed
            .iter()
            .all(|r| r["service"] == "products" && r["live"] == true)
    );
    assert!(listed.iter().any(|r| r["method"] == "GET"
        && r["path"] == "/products/{id}"
        && r["subject"] == "mc.http.products.get"));
    assert_eq!(
        routes["data"]["conflicts"],
        json!([]),
        "replicas are not rivals"
    );

    let document = harness.get("/openapi.json").await;
    assert_eq!(document.header("content-type"), Some("application/json"));
    let document = document.json();
    assert_eq!(document["openapi"], "3.1.0");
    let paths: Vec<&String> = document["paths"].as_object().unwrap().keys().collect();
    assert_eq!(paths, ["/products", "/products/search", "/products/{id}"]);
}

#[tokio::test]
async fn announcements_change_the_routes_at_once() {
    let reply = |subject: &str, _: &Message| Err(RequestError::NoResponders(subject.to_owned()));
    let harness = Harness::start(Vec::new(), Box::new(reply)).await;
    harness.get("/products").await.error(StatusCode::NOT_FOUND);

    harness
        .announce
        .send(Announcement::Up(products("a")))
        .unwrap();
    let documented = || async {
        let document = harness.get("/openapi.json").await.json();
        document["paths"]["/products"].is_object()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while !documented().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not routed within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    harness
        .announce
        .send(Announcement::Down(InstanceDown {
            name: "products".into(),
            id: "a".into(),
        }))
        .unwrap();
    while documented().await {
        assert!(tokio::time::Instant::now() < deadline, "still documented");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Still routed: the bus says at once that nobody answers.
    harness
        .get("/products")
        .await
        .error(StatusCode::SERVICE_UNAVAILABLE);
    let health = harness.get("/health").await.json();
    assert_eq!(health["data"]["services"], 0);
    let routes = harness.get("/system/routes").await.json();
    assert_eq!(routes["data"]["routes"][0]["live"], false);
}

#[tokio::test]
async fn the_docs_page_is_served_locally_and_reads_the_merged_document() {
    let harness = Harness::start(Vec::new(), Box::new(echo_subject)).await;
    let redirect = harness.get("/docs").await;
    assert!(redirect.status.is_redirection());
    assert_eq!(redirect.header("location"), Some("/docs/"));

    let page = harness.get("/docs/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(String::from_utf8_lossy(&page.body).contains("swagger-initializer.js"));

    let initializer = harness.get("/docs/swagger-initializer.js").await;
    assert_eq!(initializer.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&initializer.body).contains("\"/openapi.json\""));

    let missing = harness.get("/docs/nothing.js").await;
    missing.error(StatusCode::NOT_FOUND);
    assert_eq!(
        harness
            .get("/docs/swagger-ui.css")
            .await
            .headers
            .get(header::CONTENT_TYPE)
            .unwrap(),
        "text/css"
    );
}
