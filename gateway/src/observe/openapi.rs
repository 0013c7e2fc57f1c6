//! The OpenAPI operations of the observing routes, under the `System`
//! tag: the trace views and the live streams. The gateway's document
//! merges them with its other system paths.

use serde_json::{Map, Value, json};
use shared_schemas::envelope::success_schema;

/// The OpenAPI operations of the trace views.
pub fn traces() -> Map<String, Value> {
    let correlation = json!({
        "name": "correlation_id",
        "in": "query",
        "required": false,
        "description": "Only the trace of this correlation id: the id of the HTTP request (`X-Request-ID`) or of the event that started the chain.",
        "schema": {"type": "string"},
    });
    let event_properties = json!({
        "id": {"type": "string"},
        "event": {"type": "string", "examples": ["order.placed"]},
        "emitter": {"type": "string", "description": "`service.plugin` that published it"},
        "parent_id": {"type": ["string", "null"], "description": "The request or event it was published while handling"},
        "correlation_id": {"type": ["string", "null"]},
        "timestamp": {"type": "string", "format": "date-time"},
    });
    let failure_properties = json!({
        "subscriber": {"type": "string"},
        "error": {"type": "string"},
        "attempts": {"type": "integer", "minimum": 1},
        "failed_at": {"type": "string", "format": "date-time"},
    });
    let mut node_properties = event_properties.clone();
    node_properties["dead_letters"] = json!({
        "type": "array",
        "items": {"type": "object", "properties": failure_properties},
    });
    node_properties["children"] = json!({
        "type": "array",
        "description": "Nodes of the same shape: the events published while handling this one",
        "items": {"type": "object"},
    });
    let mut record_properties = event_properties;
    record_properties["kind"] = json!({"type": "string", "enum": ["event", "dead_letter"]});
    if let (Some(record), Some(failure)) = (
        record_properties.as_object_mut(),
        failure_properties.as_object(),
    ) {
        record.extend(failure.clone());
    }
    let answer = |data: Value| {
        json!({"200": {
            "description": "OK",
            "content": {"application/json": {"schema": success_schema(data)}},
        }, "400": {"description": "An unknown query parameter"}})
    };
    let buffer = |key: &str, items: Value| {
        json!({
            "type": "object",
            "properties": {
                "capacity": {"type": "integer", "description": "Records kept at most (`MC_TRACE_BUFFER`)"},
                "buffered": {"type": "integer", "description": "Records held now"},
                key: {"type": "array", "items": items},
            },
        })
    };
    let trace = json!({
        "type": "object",
        "properties": {
            "correlation_id": {"type": "string"},
            "events": {"type": "integer"},
            "roots": {"type": "array", "items": {"type": "object", "properties": node_properties}},
        },
    });
    [
        (
            "/system/traces",
            json!({"get": {
                "operationId": "system_traces",
                "tags": ["System"],
                "summary": "The latest events as causal trees, grouped by correlation id, newest first",
                "description": "An event's children are the events published while handling it; an event whose parent is not in the buffer (an HTTP request, a forgotten event) is a root. Dead letters hang on the event they are about. Also at `/system/traces/tree`.",
                "parameters": [correlation.clone()],
                "responses": answer(buffer("traces", trace)),
            }}),
        ),
        (
            "/system/traces/flat",
            json!({"get": {
                "operationId": "system_traces_flat",
                "tags": ["System"],
                "summary": "The latest events and dead letters as a list, newest first",
                "parameters": [correlation],
                "responses": answer(buffer("events", json!({"type": "object", "properties": record_properties}))),
            }}),
        ),
    ]
    .into_iter()
    .map(|(path, item)| (path.to_owned(), item))
    .collect()
}

/// The OpenAPI operations of the streams.
pub fn streams() -> Map<String, Value> {
    let stream = |id: &str, summary: &str, description: &str, parameters: Value| {
        json!({"get": {
            "operationId": id,
            "tags": ["System"],
            "summary": summary,
            "description": description,
            "parameters": parameters,
            "responses": {
                "200": {
                    "description": "A stream of server-sent events, until the client disconnects",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "400": {"description": "An invalid filter"},
                "503": {"description": "The bus is unavailable"},
            },
        }})
    };
    let query = |name: &str, description: &str, schema: Value| json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema});
    [
        (
            "/system/events/stream",
            stream(
                "system_events_stream",
                "Every event as it passes on the bus, live",
                "One server-sent event per event: `event:` its name, `id:` its id, `data:` its envelope (JSON). Keep-alive comments while nothing passes.",
                json!([query(
                    "event",
                    "Only this event, e.g. `order.placed`; NATS wildcards allowed (`order.*`, `stock.>`)",
                    json!({"type": "string"}),
                )]),
            ),
        ),
        (
            "/system/logs/stream",
            stream(
                "system_logs_stream",
                "The log records of every service and the gateway, live",
                "One server-sent event per record that passes the process's `RUST_LOG`: `event: log`, `data:` the record (JSON: timestamp, level, target, message, fields, service, instance, spans). Keep-alive comments while nothing passes.",
                json!([
                    query("service", "Only the records of this service", json!({"type": "string"})),
                    query(
                        "level",
                        "Only records at least this severe",
                        json!({"type": "string", "enum": ["error", "warn", "info", "debug", "trace"]}),
                    ),
                ]),
            ),
        ),
    ]
    .into_iter()
    .map(|(path, item)| (path.to_owned(), item))
    .collect()
}
