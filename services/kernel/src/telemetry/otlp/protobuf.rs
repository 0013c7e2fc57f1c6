//! `ExportTraceServiceRequest` in protobuf, written straight from the
//! SDK's spans.
//!
//! The message is written in one pass: each nested message is written in
//! place and then shifted right by the few bytes of its tag and length
//! ([`Protobuf::message`]), so no size is computed twice and nothing is
//! allocated per span. Field numbers are those of the OTLP protos
//! (`opentelemetry/proto/trace/v1/trace.proto`, `common/v1/common.proto`,
//! `resource/v1/resource.proto`); fields at their default are left out,
//! as protobuf encoders do.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceState};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;

/// Bytes to reserve per span: a handler's span with its attributes, or a
/// statement's with its text.
const SPAN_SIZE_HINT: usize = 384;

/// `SpanFlags`: the span knows whether its parent is remote, and whether
/// it is (trace.proto).
const CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
const CONTEXT_IS_REMOTE: u32 = 0x200;

/// The export request for `spans`, under `resource` (as [`resource`]
/// encodes it) and its schema URL, grouped by instrumentation scope in the
/// order the scopes first appear.
pub(super) fn export_request(resource: &[u8], schema_url: &str, spans: &[SpanData]) -> Vec<u8> {
    // A few scopes at most: a linear scan beats hashing each span's.
    let mut scopes: Vec<&InstrumentationScope> = Vec::new();
    let scope_of: Vec<usize> = spans
        .iter()
        .map(|span| {
            let scope = &span.instrumentation_scope;
            scopes.iter().position(|s| *s == scope).unwrap_or_else(|| {
                scopes.push(scope);
                scopes.len() - 1
            })
        })
        .collect();
    let mut out = Protobuf(Vec::with_capacity(
        SPAN_SIZE_HINT * spans.len() + resource.len() + 64,
    ));
    // ExportTraceServiceRequest.resource_spans
    out.message(1, |out| {
        // ResourceSpans.resource, always present.
        out.field_bytes(1, resource);
        for (index, scope) in scopes.iter().enumerate() {
            // ResourceSpans.scope_spans
            out.message(2, |out| {
                out.message(1, |out| instrumentation_scope(out, scope));
                let in_scope = spans.iter().zip(&scope_of).filter(|(_, of)| **of == index);
                for (span, _) in in_scope {
                    out.message(2, |out| self::span(out, span));
                }
                out.string(3, scope.schema_url().unwrap_or_default());
            });
        }
        out.string(3, schema_url);
    });
    out.0
}

/// The `Resource` message of `resource`, written once per exporter.
pub(super) fn resource(resource: &Resource) -> Vec<u8> {
    let mut out = Protobuf(Vec::new());
    for (key, value) in resource.iter() {
        out.message(1, |out| key_value(out, key.as_str(), value));
    }
    out.0
}

fn instrumentation_scope(out: &mut Protobuf, scope: &InstrumentationScope) {
    out.string(1, scope.name());
    out.string(2, scope.version().unwrap_or_default());
    attributes(out, 3, scope.attributes());
}

fn span(out: &mut Protobuf, span: &SpanData) {
    let context = &span.span_context;
    out.field_bytes(1, &context.trace_id().to_bytes());
    out.field_bytes(2, &context.span_id().to_bytes());
    trace_state(out, 3, context.trace_state());
    if span.parent_span_id != opentelemetry::trace::SpanId::INVALID {
        out.field_bytes(4, &span.parent_span_id.to_bytes());
    }
    out.string(5, &span.name);
    out.uint(6, kind(&span.span_kind));
    out.fixed64(7, unix_nanos(span.start_time));
    out.fixed64(8, unix_nanos(span.end_time));
    attributes(out, 9, &span.attributes);
    out.uint(10, span.dropped_attributes_count.into());
    for event in span.events.iter() {
        out.message(11, |out| {
            out.fixed64(1, unix_nanos(event.timestamp));
            out.string(2, &event.name);
            attributes(out, 3, &event.attributes);
            out.uint(4, event.dropped_attributes_count.into());
        });
    }
    out.uint(12, span.events.dropped_count.into());
    for link in span.links.iter() {
        out.message(13, |out| {
            let context = &link.span_context;
            out.field_bytes(1, &context.trace_id().to_bytes());
            out.field_bytes(2, &context.span_id().to_bytes());
            trace_state(out, 3, context.trace_state());
            attributes(out, 4, &link.attributes);
            out.uint(5, link.dropped_attributes_count.into());
            out.fixed32(6, flags(context, context.is_remote()));
        });
    }
    out.uint(14, span.links.dropped_count.into());
    // Span.status, written even when unset, as the SDK's conversion does.
    out.message(15, |out| match &span.status {
        Status::Unset => {}
        Status::Ok => out.uint(3, 1),
        Status::Error { description } => {
            out.string(2, description);
            out.uint(3, 2);
        }
    });
    out.fixed32(16, flags(context, span.parent_span_is_remote));
}

fn flags(context: &SpanContext, remote: bool) -> u32 {
    let flags = u32::from(context.trace_flags().to_u8()) | CONTEXT_HAS_IS_REMOTE;
    if remote {
        flags | CONTEXT_IS_REMOTE
    } else {
        flags
    }
}

fn trace_state(out: &mut Protobuf, field: u32, state: &TraceState) {
    if *state != TraceState::NONE {
        out.string(field, &state.header());
    }
}

/// `Span.SpanKind`.
fn kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

/// Repeated `KeyValue` field `field`. The common attribute, one string,
/// number or flag, is sized before it is written, so it never moves.
fn attributes<'a>(
    out: &mut Protobuf,
    field: u32,
    attributes: impl IntoIterator<Item = &'a KeyValue>,
) {
    for attribute in attributes {
        let key = attribute.key.as_str();
        let Some(value_size) = scalar_size(&attribute.value) else {
            out.message(field, |out| key_value(out, key, &attribute.value));
            continue;
        };
        out.key(field, LENGTH_DELIMITED);
        out.varint((string_size(key) + delimited_size(value_size)) as u64);
        out.string(1, key);
        out.key(2, LENGTH_DELIMITED);
        out.varint(value_size as u64);
        any_value(out, &attribute.value);
    }
}

/// `KeyValue`.
fn key_value(out: &mut Protobuf, key: &str, value: &Value) {
    out.string(1, key);
    out.message(2, |out| any_value(out, value));
}

/// The size of the `AnyValue` of a string, number or flag; `None` for
/// anything else. Its fields' keys take a byte, as all OTLP's here do.
fn scalar_size(value: &Value) -> Option<usize> {
    let content = match value {
        Value::String(text) => delimited_size(text.as_str().len()) - 1,
        Value::Bool(_) => 1,
        Value::I64(number) => varint_size(*number as u64),
        Value::F64(_) => 8,
        _ => return None,
    };
    Some(1 + content)
}

/// The size of a string field as [`Protobuf::string`] writes it.
fn string_size(text: &str) -> usize {
    if text.is_empty() {
        0
    } else {
        delimited_size(text.len())
    }
}

/// The size of a length-delimited field of `len` bytes, key included.
fn delimited_size(len: usize) -> usize {
    1 + varint_size(len as u64) + len
}

fn varint_size(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// `AnyValue`: exactly one of its fields, even at its default.
fn any_value(out: &mut Protobuf, value: &Value) {
    match value {
        Value::String(value) => out.field_bytes(1, value.as_str().as_bytes()),
        Value::Bool(value) => {
            out.key(2, VARINT);
            out.varint(u64::from(*value));
        }
        Value::I64(value) => {
            out.key(3, VARINT);
            // int64: two's complement, as a varint.
            out.varint(*value as u64);
        }
        Value::F64(value) => {
            out.key(4, FIXED64);
            out.0.extend_from_slice(&value.to_le_bytes());
        }
        Value::Array(array) => out.message(5, |out| array_value(out, array)),
        // A kind of value newer than this encoder: as its text.
        other => out.field_bytes(1, other.as_str().as_bytes()),
    }
}

/// `ArrayValue`.
fn array_value(out: &mut Protobuf, array: &Array) {
    fn each<T>(out: &mut Protobuf, values: &[T], value: impl Fn(&T) -> Value) {
        for item in values {
            out.message(1, |out| any_value(out, &value(item)));
        }
    }
    match array {
        Array::Bool(values) => each(out, values, |v| Value::Bool(*v)),
        Array::I64(values) => each(out, values, |v| Value::I64(*v)),
        Array::F64(values) => each(out, values, |v| Value::F64(*v)),
        Array::String(values) => each(out, values, |v| Value::String(v.clone())),
        other => out.message(1, |out| {
            out.field_bytes(1, other.to_string().as_bytes());
        }),
    }
}

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LENGTH_DELIMITED: u32 = 2;
const FIXED32: u32 = 5;

/// Protobuf wire format, appended to a buffer.
struct Protobuf(Vec<u8>);

impl Protobuf {
    #[inline]
    fn varint(&mut self, value: u64) {
        // Keys and most sizes take one byte.
        if value < 0x80 {
            self.0.push(value as u8);
            return;
        }
        let mut buf = [0; MAX_VARINT];
        let len = put_varint(&mut buf, value);
        self.0.extend_from_slice(&buf[..len]);
    }

    #[inline]
    fn key(&mut self, field: u32, wire_type: u32) {
        self.varint(u64::from(field << 3 | wire_type));
    }

    /// A `bytes` or `string` field, or an encoded message, written even
    /// when empty.
    fn field_bytes(&mut self, field: u32, bytes: &[u8]) {
        self.key(field, LENGTH_DELIMITED);
        self.varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    /// A `string` field, left out when empty.
    fn string(&mut self, field: u32, value: &str) {
        if !value.is_empty() {
            self.field_bytes(field, value.as_bytes());
        }
    }

    /// An unsigned or enum field, left out when zero.
    fn uint(&mut self, field: u32, value: u64) {
        if value != 0 {
            self.key(field, VARINT);
            self.varint(value);
        }
    }

    fn fixed64(&mut self, field: u32, value: u64) {
        if value != 0 {
            self.key(field, FIXED64);
            self.0.extend_from_slice(&value.to_le_bytes());
        }
    }

    fn fixed32(&mut self, field: u32, value: u32) {
        if value != 0 {
            self.key(field, FIXED32);
            self.0.extend_from_slice(&value.to_le_bytes());
        }
    }

    /// A message field that `write` writes: its body goes in place, then
    /// moves right by the length of its key and size, known only then.
    fn message(&mut self, field: u32, write: impl FnOnce(&mut Self)) {
        let start = self.0.len();
        write(self);
        let size = self.0.len() - start;
        let mut prefix = [0; 2 * MAX_VARINT];
        let key_len = put_varint(&mut prefix, u64::from(field << 3 | LENGTH_DELIMITED));
        let len = key_len + put_varint(&mut prefix[key_len..], size as u64);
        self.0.extend_from_slice(&prefix[..len]);
        self.0.copy_within(start..start + size, start + len);
        self.0[start..start + len].copy_from_slice(&prefix[..len]);
    }
}

/// The longest varint, a `u64`'s.
const MAX_VARINT: usize = 10;

/// Writes `value` as a varint at the start of `buf`; returns its length.
fn put_varint(buf: &mut [u8], mut value: u64) -> usize {
    let mut len = 0;
    while value >= 0x80 {
        buf[len] = value as u8 | 0x80;
        value >>= 7;
        len += 1;
    }
    buf[len] = value as u8;
    len + 1
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry::trace::{
        Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
    use prost::Message as _;

    fn context(trace: u8, span: u8, remote: bool) -> SpanContext {
        let state = TraceState::from_key_value([("vendor", "value")]).expect("a valid trace state");
        SpanContext::new(
            TraceId::from_bytes([trace; 16]),
            SpanId::from_bytes([span; 8]),
            TraceFlags::SAMPLED,
            remote,
            state,
        )
    }

    /// A span of every shape the encoder has to handle: ids, a remote
    /// parent, attributes of each kind, events, links, a status.
    fn span(scope: &InstrumentationScope, n: u8, status: Status) -> SpanData {
        let start = std::time::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let mut events = SpanEvents::default();
        events.events.push(Event::new(
            "exception",
            start + Duration::from_micros(5),
            vec![
                KeyValue::new("exception.message", "boom"),
                KeyValue::new("level", ""),
            ],
            1,
        ));
        events.dropped_count = 2;
        let mut links = SpanLinks::default();
        links.links.push(Link::new(
            context(9, 9, true),
            vec![KeyValue::new("messaging.message.id", 7_i64)],
            0,
        ));
        links.dropped_count = 3;
        // Odd spans have a remote parent, even ones are roots.
        let child = !n.is_multiple_of(2);
        SpanData {
            span_context: context(1, n, false),
            parent_span_id: if child {
                SpanId::from_bytes([2; 8])
            } else {
                SpanId::INVALID
            },
            parent_span_is_remote: child,
            span_kind: match n % 3 {
                0 => SpanKind::Server,
                1 => SpanKind::Client,
                _ => SpanKind::Consumer,
            },
            name: format!("span {n}").into(),
            start_time: start,
            end_time: start + Duration::from_millis(3),
            attributes: vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("http.response.status_code", 200_i64),
                KeyValue::new("negative", -1_i64),
                KeyValue::new("error", false),
                KeyValue::new("ratio", 0.25),
                KeyValue::new("empty", ""),
                KeyValue::new("", "no key"),
                // Longer than 127 bytes: a two-byte size.
                KeyValue::new("db.query.text", "SELECT id, name FROM products ".repeat(9)),
                KeyValue::new(
                    "tags",
                    Value::Array(Array::String(vec!["a".into(), "b".into()])),
                ),
                KeyValue::new("codes", Value::Array(Array::I64(vec![1, -2]))),
                KeyValue::new("flags", Value::Array(Array::Bool(vec![true, false]))),
                KeyValue::new("weights", Value::Array(Array::F64(vec![0.5]))),
            ],
            dropped_attributes_count: u32::from(n),
            events,
            links,
            status,
            instrumentation_scope: scope.clone(),
        }
    }

    #[test]
    fn an_export_request_decodes_to_what_opentelemetry_proto_makes_of_the_same_spans() {
        let handlers = InstrumentationScope::builder("microcore")
            .with_version("0.1.0")
            .with_schema_url("https://opentelemetry.io/schemas/1.30.0")
            .with_attributes([KeyValue::new("scope.kind", "handlers")])
            .build();
        let statements = InstrumentationScope::builder("microcore.sql").build();
        let spans = vec![
            span(&handlers, 1, Status::Unset),
            span(&statements, 2, Status::Ok),
            span(&handlers, 3, Status::error("handler failed")),
            span(&statements, 4, Status::Unset),
        ];
        let resource = Resource::builder_empty()
            .with_service_name("products")
            .with_attribute(KeyValue::new("service.instance.id", "i-1"))
            .with_schema_url([], "https://opentelemetry.io/schemas/1.29.0")
            .build();

        let encoded = super::export_request(
            &super::resource(&resource),
            resource.schema_url().unwrap_or_default(),
            &spans,
        );

        let ours = ExportTraceServiceRequest::decode(encoded.as_slice()).expect("valid protobuf");
        let reference = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(spans, &(&resource).into()),
        };
        assert_eq!(ours, reference);
        assert_eq!(ours.resource_spans[0].scope_spans.len(), 2);
    }

    #[test]
    fn an_empty_batch_is_a_request_with_only_the_resource() {
        let resource = Resource::builder_empty().with_service_name("users").build();
        let encoded = super::export_request(&super::resource(&resource), "", &[]);
        let ours = ExportTraceServiceRequest::decode(encoded.as_slice()).expect("valid protobuf");
        let reference = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(Vec::new(), &(&resource).into()),
        };
        assert_eq!(ours, reference);
    }
}
