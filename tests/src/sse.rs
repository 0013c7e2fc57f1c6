//! Reading a server-sent event stream as a browser's `EventSource` does:
//! events end at a blank line, `event:`, `id:` and `data:` lines fill them,
//! lines starting with `:` are comments (the gateway's opening line and
//! keep-alives) and are skipped.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::http::HttpClient;

/// One event of the stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    /// `event:`; `None` is a browser's `message`.
    pub event: Option<String>,
    pub id: Option<String>,
    /// The `data:` lines, joined by newlines.
    pub data: String,
}

impl SseEvent {
    /// The data as JSON.
    ///
    /// # Panics
    /// When it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("the data of {self:?} is not JSON: {e}"))
    }
}

/// An open stream; dropping it closes the connection.
#[derive(Debug)]
pub struct EventStream {
    response: reqwest::Response,
    /// Received and not yet parsed into events.
    pending: String,
    url: String,
}

impl HttpClient {
    /// Opens the event stream at `path`, once its response has begun: the
    /// server is listening when this returns.
    ///
    /// # Panics
    /// Unless it answers 200 with `text/event-stream`.
    pub async fn event_stream(&self, path: &str) -> EventStream {
        // The client of [`HttpClient`] bounds whole requests; a stream is
        // as long as the test wants it.
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client without TLS always builds");
        let url = self.url(path);
        let response = client
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url} failed: {e}"));
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(response.status(), StatusCode::OK, "GET {url}");
        assert!(
            content_type.starts_with("text/event-stream"),
            "GET {url} answered {content_type:?}"
        );
        let mut stream = EventStream {
            response,
            pending: String::new(),
            url,
        };
        // The opening comment says the subscription is in place.
        stream.read_more(crate::wait::PROMPT).await;
        stream
    }
}

impl EventStream {
    /// The next event, skipping comments; `None` when the server ended
    /// the stream.
    ///
    /// # Panics
    /// When none comes within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(event) = self.parse_one() {
                return Some(event);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !self.read_more(left).await {
                return None;
            }
        }
    }

    /// Reads events until one satisfies `wanted` and returns it.
    ///
    /// # Panics
    /// When none does within `timeout`, listing what came instead.
    pub async fn until(
        &mut self,
        timeout: Duration,
        mut wanted: impl FnMut(&SseEvent) -> bool,
    ) -> (SseEvent, Vec<SseEvent>) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(event) = self.next(left).await else {
                panic!("{} ended; it sent {before:#?}", self.url);
            };
            if wanted(&event) {
                return (event, before);
            }
            before.push(event);
        }
    }

    /// Whether the server ends the stream within `timeout`, reading what
    /// comes before.
    pub async fn ends_within(&mut self, timeout: Duration) -> bool {
        let read = tokio::time::timeout(timeout, async {
            while let Ok(Some(_)) = self.response.chunk().await {}
        });
        read.await.is_ok()
    }

    /// Appends the next chunk; false when the stream ended.
    ///
    /// # Panics
    /// When nothing arrives within `timeout`.
    async fn read_more(&mut self, timeout: Duration) -> bool {
        match tokio::time::timeout(timeout, self.response.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                self.pending.push_str(&String::from_utf8_lossy(&chunk));
                true
            }
            Ok(Ok(None)) => false,
            Ok(Err(e)) => panic!("reading {} failed: {e}", self.url),
            Err(_) => panic!(
                "nothing came from {} within {timeout:?}; unparsed: {:?}",
                self.url, self.pending
            ),
        }
    }

    /// Takes the first complete event (or comment block) out of what was
    /// received; `None` when there is none yet or only comments.
    fn parse_one(&mut self) -> Option<SseEvent> {
        loop {
            let end = self.pending.find("\n\n")?;
            let block: String = self.pending.drain(..end + 2).collect();
            let mut event = SseEvent::default();
            let mut data = Vec::new();
            for line in block.lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => event.event = Some(value.to_owned()),
                    "id" => event.id = Some(value.to_owned()),
                    "data" => data.push(value),
                    _ => {}
                }
            }
            if event.event.is_some() || !data.is_empty() {
                event.data = data.join("\n");
                return Some(event);
            }
        }
    }
}
