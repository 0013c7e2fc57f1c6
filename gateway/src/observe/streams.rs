//! Live streams over server-sent events: `/system/events/stream`, every
//! event as it passes (`event:` its name, `id:` its id, `data:` the
//! envelope), and `/system/logs/stream`, the log records of every process
//! (`event: log`, `data:` the record).
//!
//! Each client gets its own subscription on the bus, narrowed by its
//! filter where the subject can say it (an event name, a service), and it
//! is dropped with the connection. A stream opens with a comment, so the
//! client knows it is listening, and sends keep-alive comments while
//! nothing passes. A client that reads too slowly misses messages; it
//! never holds up the bus.

use std::convert::Infallible;
use std::str::FromStr;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use futures_util::stream::{self, Stream};
use http::StatusCode;
use microcore::transport::Message;
use serde::{Deserialize, Deserializer};

use super::{Observer, Params};
use crate::envelope;

/// `GET /system/events/stream`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventStreamQuery {
    /// Only this event (`order.placed`); NATS wildcards allowed
    /// (`order.*`, `stock.>`).
    event: Option<String>,
}

pub async fn events(
    State(observer): State<Observer>,
    Params(query): Params<EventStreamQuery>,
) -> Response {
    let subject = match &query.event {
        Some(event) if is_subject_pattern(event) => observer.subjects.event(event),
        Some(event) => {
            return envelope::error(
                StatusCode::BAD_REQUEST,
                format!("`{event}` is not an event name or pattern"),
            );
        }
        None => observer.subjects.events_wildcard(),
    };
    let messages = match observer.transport.subscribe(&subject).await {
        Ok(messages) => messages,
        Err(e) => return unavailable(&e),
    };
    live(
        &observer,
        messages.filter_map(|m| std::future::ready(event_for(&m))),
    )
}

/// `GET /system/logs/stream`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogStreamQuery {
    /// Only the records of this service.
    service: Option<String>,
    /// Only records at least this severe: `error`, `warn`, `info`,
    /// `debug` or `trace`.
    #[serde(default, deserialize_with = "level")]
    level: Option<tracing::Level>,
}

pub async fn logs(
    State(observer): State<Observer>,
    Params(query): Params<LogStreamQuery>,
) -> Response {
    let subject = match &query.service {
        Some(service) if is_service_name(service) => observer.subjects.logs(service),
        Some(service) => {
            return envelope::error(
                StatusCode::BAD_REQUEST,
                format!("`{service}` is not a service name"),
            );
        }
        None => observer.subjects.logs_wildcard(),
    };
    let messages = match observer.transport.subscribe(&subject).await {
        Ok(messages) => messages,
        Err(e) => return unavailable(&e),
    };
    let least_severe = query.level.unwrap_or(tracing::Level::TRACE);
    live(
        &observer,
        messages.filter_map(move |m| std::future::ready(log_event_for(&m, least_severe))),
    )
}

/// The SSE response: an opening comment, then `events` until the client
/// leaves or the gateway shuts down, with keep-alives in between.
fn live(observer: &Observer, events: impl Stream<Item = Event> + Send + 'static) -> Response {
    let opening = stream::once(std::future::ready(Event::default().comment("listening")));
    let stream = opening
        .chain(events)
        .take_until(observer.closing.clone().cancelled_owned())
        .map(Ok::<_, Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn unavailable(error: &microcore::transport::TransportError) -> Response {
    tracing::warn!(%error, "cannot open a live stream");
    envelope::error(StatusCode::SERVICE_UNAVAILABLE, "the bus is unavailable")
}

/// An envelope as an SSE event; `None` for what is not one, or what SSE
/// cannot carry.
fn event_for(message: &Message) -> Option<Event> {
    #[derive(Deserialize)]
    struct Head<'a> {
        id: &'a str,
        event: &'a str,
    }
    let data = std::str::from_utf8(&message.body).ok()?;
    let head: Head<'_> = serde_json::from_str(data).ok()?;
    (fits_a_field(head.id) && fits_a_field(head.event))
        .then(|| Event::default().event(head.event).id(head.id).data(data))
}

/// A log record as an SSE event, if it is at least `least_severe`.
fn log_event_for(message: &Message, least_severe: tracing::Level) -> Option<Event> {
    #[derive(Deserialize)]
    struct Head<'a> {
        level: &'a str,
    }
    let data = std::str::from_utf8(&message.body).ok()?;
    let head: Head<'_> = serde_json::from_str(data).ok()?;
    // `Level` orders the more verbose as the greater.
    let level = tracing::Level::from_str(head.level).ok()?;
    (level <= least_severe).then(|| Event::default().event("log").data(data))
}

/// SSE `event:` and `id:` lines end at a line break; ids may not hold NUL.
fn fits_a_field(value: &str) -> bool {
    !value.contains(['\r', '\n', '\0'])
}

/// An event name or a pattern of them: dot-separated non-empty tokens
/// without whitespace, `>` only last.
fn is_subject_pattern(pattern: &str) -> bool {
    let tokens: Vec<&str> = pattern.split('.').collect();
    tokens.iter().enumerate().all(|(i, token)| {
        !token.is_empty()
            && !token.contains(char::is_whitespace)
            && (*token != ">" || i == tokens.len() - 1)
            && (token.len() == 1 || !token.contains(['*', '>']))
    })
}

/// What a service may be called (the NATS micro protocol's names).
fn is_service_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn level<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<tracing::Level>, D::Error> {
    let text = String::deserialize(deserializer)?;
    tracing::Level::from_str(&text)
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("`{text}` is not a log level")))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::HeaderMap;
    use serde_json::{Value, json};

    use super::*;

    fn message(body: Value) -> Message {
        Message::new(HeaderMap::new(), Bytes::from(body.to_string()))
    }

    #[test]
    fn only_records_at_least_as_severe_pass() {
        let record = |level: &str| message(json!({"level": level, "message": "m"}));
        let warn = tracing::Level::WARN;
        assert!(log_event_for(&record("ERROR"), warn).is_some());
        assert!(log_event_for(&record("WARN"), warn).is_some());
        assert!(log_event_for(&record("INFO"), warn).is_none());
        assert!(log_event_for(&record("DEBUG"), tracing::Level::TRACE).is_some());
        assert!(log_event_for(&message(json!({"message": "no level"})), warn).is_none());
    }

    #[test]
    fn an_envelope_becomes_a_named_event_and_what_sse_cannot_carry_is_skipped() {
        assert!(event_for(&message(json!({"id": "1", "event": "order.placed"}))).is_some());
        assert!(event_for(&message(json!({"id": "1", "event": "bad\nname"}))).is_none());
        assert!(event_for(&message(json!({"id": "1"}))).is_none());
        assert!(event_for(&Message::new(HeaderMap::new(), "not json")).is_none());
    }

    #[test]
    fn filters_are_checked_before_they_become_subjects() {
        for good in ["order.placed", "order.*", "stock.>", ">"] {
            assert!(is_subject_pattern(good), "{good}");
        }
        for bad in ["", "order.", "a..b", ">.x", "or der", "ord*er"] {
            assert!(!is_subject_pattern(bad), "{bad}");
        }
        assert!(is_service_name("products"));
        assert!(!is_service_name("products.x"));
        assert!(!is_service_name("*"));
    }
}
