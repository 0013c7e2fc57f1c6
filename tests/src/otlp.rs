//! An OTLP/HTTP receiver for the tracing suite. Services export to it as
//! they would to a collector (in `http/protobuf`, the default, or in
//! `http/json`, with a short batch delay), and the test reads the spans
//! back, flattened, with the service that sent each. Metric exports are
//! received too, in JSON: the test reads which metrics each service and
//! instance sent.
//!
//! For the benchmark, which measures what export costs the way it is
//! shipped, the receiver only counts protobuf spans
//! ([`Collector::counting`]), by walking the wire format down to them, so
//! that, sharing the machine with the processes measured, it costs them
//! next to nothing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Map, Value};

/// The content type of `http/protobuf` export requests and answers.
const PROTOBUF: &str = "application/x-protobuf";

/// One exported span.
#[derive(Debug, Clone)]
pub struct Span {
    /// `service.name` of the resource that exported it.
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// OTLP span kind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i64,
    /// Attribute values as JSON (strings, numbers, booleans).
    pub attributes: Map<String, Value>,
}

/// What the receiver has been sent.
#[derive(Default)]
struct Received {
    /// Whether protobuf spans are only counted, not kept.
    counting: bool,
    /// The spans received and kept.
    spans: Mutex<Vec<Span>>,
    /// How many spans protobuf export requests carried, when counting.
    protobuf_spans: AtomicUsize,
    /// Export requests accepted, either protocol.
    requests: AtomicUsize,
    /// `(service.name, service.instance.id, metric name)` of every metric
    /// in a JSON metrics export.
    metrics: Mutex<std::collections::BTreeSet<(String, String, String)>>,
}

/// The receiver, serving on a loopback port until dropped.
pub struct Collector {
    address: SocketAddr,
    received: Arc<Received>,
    server: tokio::task::JoinHandle<()>,
}

impl Collector {
    /// A receiver that keeps every span.
    pub async fn start() -> Self {
        Self::serve(Received::default()).await
    }

    /// A receiver that only counts the spans sent in protobuf.
    pub async fn counting() -> Self {
        Self::serve(Received {
            counting: true,
            ..Received::default()
        })
        .await
    }

    async fn serve(received: Received) -> Self {
        let received = Arc::new(received);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port for the collector");
        let address = listener.local_addr().expect("its address");
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .route("/v1/metrics", post(receive_metrics))
            .with_state(received.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            address,
            received,
            server,
        }
    }

    /// Its base URL, the value of `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The variables that point a process's export here: spans in the
    /// default protocol, `http/protobuf`, metrics in JSON.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint()),
            (
                "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
                "http/json".to_owned(),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ]
    }

    /// As [`env`](Self::env), spans in `http/json` too.
    pub fn env_json(&self) -> Vec<(&'static str, String)> {
        let mut env = self.env();
        env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".to_owned()));
        env
    }

    /// Every span received so far, unless [counting](Self::counting).
    pub fn spans(&self) -> Vec<Span> {
        self.received
            .spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many spans were received so far, either protocol.
    pub fn span_count(&self) -> usize {
        let json = self
            .received
            .spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        json + self.received.protobuf_spans.load(Ordering::Relaxed)
    }

    /// The metrics exported so far in JSON, as `(service.name,
    /// service.instance.id, metric name)`.
    pub fn metrics(&self) -> std::collections::BTreeSet<(String, String, String)> {
        self.received
            .metrics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many export requests were accepted so far, either protocol.
    pub fn export_requests(&self) -> usize {
        self.received.requests.load(Ordering::Relaxed)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// One export request: protobuf bodies are decoded (or, counting, only
/// counted), anything else is read as JSON.
async fn receive(
    State(received): State<Arc<Received>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let protobuf = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with(PROTOBUF));
    if !protobuf {
        receive_json(&received, &body);
        received.requests.fetch_add(1, Ordering::Relaxed);
        return "{}".into_response();
    }
    let accepted = if received.counting {
        count_protobuf_spans(&body).map(|count| {
            received.protobuf_spans.fetch_add(count, Ordering::Relaxed);
        })
    } else {
        receive_protobuf(&received, &body)
    };
    match accepted {
        Some(_) => {
            received.requests.fetch_add(1, Ordering::Relaxed);
            // An empty `ExportTraceServiceResponse`: everything accepted.
            ([(header::CONTENT_TYPE, PROTOBUF)], Bytes::new()).into_response()
        }
        None => (StatusCode::BAD_REQUEST, "not an ExportTraceServiceRequest").into_response(),
    }
}

/// One metrics export request, read as JSON.
async fn receive_metrics(State(received): State<Arc<Received>>, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
    let mut found = Vec::new();
    for resource in request["resourceMetrics"].as_array().into_iter().flatten() {
        let resource_attributes = attributes(&resource["resource"]["attributes"]);
        let text = |key: &str| {
            resource_attributes
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (service, instance) = (text("service.name"), text("service.instance.id"));
        for scope in resource["scopeMetrics"].as_array().into_iter().flatten() {
            for metric in scope["metrics"].as_array().into_iter().flatten() {
                let name = metric["name"].as_str().unwrap_or_default().to_owned();
                found.push((service.clone(), instance.clone(), name));
            }
        }
    }
    received
        .metrics
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .extend(found);
    "{}".into_response()
}

fn receive_json(received: &Received, body: &[u8]) {
    let request: Value = serde_json::from_slice(body).unwrap_or_default();
    let mut spans = Vec::new();
    for resource in request["resourceSpans"].as_array().into_iter().flatten() {
        let resource_attributes = attributes(&resource["resource"]["attributes"]);
        let service = resource_attributes
            .get("service.name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let text = |key: &str| span[key].as_str().unwrap_or_default().to_owned();
                spans.push(Span {
                    service: service.clone(),
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent_span_id: text("parentSpanId"),
                    name: text("name"),
                    kind: span["kind"].as_i64().unwrap_or_default(),
                    attributes: attributes(&span["attributes"]),
                });
            }
        }
    }
    received
        .spans
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .extend(spans);
}

/// Keeps the spans of a protobuf `ExportTraceServiceRequest`; `None` when
/// the body is not one.
fn receive_protobuf(received: &Received, body: &[u8]) -> Option<()> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;

    let request = ExportTraceServiceRequest::decode(body).ok()?;
    let mut spans = Vec::new();
    for resource in request.resource_spans {
        let resource_attributes =
            protobuf_attributes(resource.resource.map(|r| r.attributes).unwrap_or_default());
        let service = resource_attributes
            .get("service.name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        for span in resource
            .scope_spans
            .into_iter()
            .flat_map(|scope| scope.spans)
        {
            spans.push(Span {
                service: service.clone(),
                trace_id: hex::encode(&span.trace_id),
                span_id: hex::encode(&span.span_id),
                parent_span_id: hex::encode(&span.parent_span_id),
                name: span.name,
                kind: i64::from(span.kind),
                attributes: protobuf_attributes(span.attributes),
            });
        }
    }
    received
        .spans
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .extend(spans);
    Some(())
}

/// Protobuf attributes as a map of JSON values, as [`attributes`] reads
/// JSON ones.
fn protobuf_attributes(
    list: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>,
) -> Map<String, Value> {
    use opentelemetry_proto::tonic::common::v1::AnyValue;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;

    fn json(value: Option<AnyValue>) -> Value {
        match value.and_then(|v| v.value) {
            Some(Any::StringValue(text)) => Value::from(text),
            Some(Any::BoolValue(flag)) => Value::from(flag),
            Some(Any::IntValue(number)) => Value::from(number),
            Some(Any::DoubleValue(number)) => Value::from(number),
            Some(Any::ArrayValue(array)) => {
                Value::Array(array.values.into_iter().map(|v| json(Some(v))).collect())
            }
            _ => Value::Null,
        }
    }
    list.into_iter()
        .map(|kv| (kv.key, json(kv.value)))
        .collect()
}

/// The spans of a protobuf `ExportTraceServiceRequest`, counted without
/// decoding them: its `resource_spans` (field 1), their `scope_spans`
/// (field 2), and their `spans` (field 2). `None` when the body is not
/// well-formed protobuf.
fn count_protobuf_spans(body: &[u8]) -> Option<usize> {
    let mut count = 0;
    for resource_spans in length_delimited(body, 1)? {
        for scope_spans in length_delimited(resource_spans, 2)? {
            count += length_delimited(scope_spans, 2)?.len();
        }
    }
    Some(count)
}

/// The length-delimited values of field `number` of a protobuf
/// `message`, every other field skipped.
fn length_delimited(message: &[u8], number: u64) -> Option<Vec<&[u8]>> {
    let mut rest = message;
    let mut values = Vec::new();
    while !rest.is_empty() {
        let key = varint(&mut rest)?;
        match key & 0b111 {
            // VARINT, I64, LEN, I32; groups are not in OTLP.
            0 => {
                varint(&mut rest)?;
            }
            1 => rest = rest.get(8..)?,
            2 => {
                let length = usize::try_from(varint(&mut rest)?).ok()?;
                let (value, after) = rest.split_at_checked(length)?;
                if key >> 3 == number {
                    values.push(value);
                }
                rest = after;
            }
            5 => rest = rest.get(4..)?,
            _ => return None,
        }
    }
    Some(values)
}

/// Reads a base-128 varint off the front of `bytes`.
fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// OTLP's `[{key, value: {stringValue | intValue | …}}]` as a map.
fn attributes(list: &Value) -> Map<String, Value> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            let key = kv["key"].as_str()?.to_owned();
            let (kind, value) = kv["value"].as_object()?.iter().next()?;
            // Proto3 JSON writes 64-bit integers as strings.
            let value = match (kind.as_str(), value.as_str()) {
                ("intValue", Some(text)) => text.parse::<i64>().map_or(value.clone(), Value::from),
                _ => value.clone(),
            };
            Some((key, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::count_protobuf_spans;

    /// Field `number` as a LEN record holding `value`.
    fn field(number: u8, value: &[u8]) -> Vec<u8> {
        let mut record = vec![number << 3 | 2];
        let mut length = value.len();
        while length >= 0x80 {
            record.push((length & 0x7f) as u8 | 0x80);
            length >>= 7;
        }
        record.push(length as u8);
        record.extend_from_slice(value);
        record
    }

    #[test]
    fn the_spans_of_a_protobuf_export_request_are_counted() {
        // A span with a name and a fixed64 start time, as the SDK sends.
        let span = [field(5, b"GET /products/{id}"), vec![7 << 3 | 1; 9]].concat();
        let scope = |spans: usize| {
            let mut scope = field(1, &field(1, b"microcore"));
            for _ in 0..spans {
                scope.extend(field(2, &span));
            }
            field(2, &scope)
        };
        let resource = field(1, &field(1, &[]));
        let request = field(1, &[resource, scope(2), scope(3)].concat());
        assert_eq!(count_protobuf_spans(&request), Some(5));
        assert_eq!(count_protobuf_spans(&[]), Some(0));
        assert_eq!(count_protobuf_spans(&request[..request.len() - 1]), None);
    }
}
