//! Span export over OTLP/HTTP in protobuf, the protocol's default.
//!
//! opentelemetry-otlp turns each batch into its generated protobuf types
//! (an allocation per id, key and value, and a hash of every span's
//! scope), and prost then sizes each nested message once for every level
//! above it: about 10k instructions per span, as much as a traced request
//! spends on all of tracing's other work. Spans are the one signal made in
//! proportion to traffic, so this exporter writes the wire format straight
//! from the SDK's spans ([`protobuf`]) and posts it as opentelemetry-otlp
//! does: from the same variables, to the same endpoint, with the same
//! retries. The JSON protocol and compression stay with opentelemetry-otlp
//! ([`ProtobufExporter::from_env`] declines them), as do metrics.

mod protobuf;

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// The timeout of one export, retries included, unless
/// `OTEL_EXPORTER_OTLP_TIMEOUT` says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Retries after the first attempt, and the backoff between them: the
/// policy opentelemetry-otlp recommends and applies by default.
const MAX_RETRIES: u32 = 3;
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_millis(1600);
const MAX_JITTER_MS: u32 = 100;

/// Why trace export could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExportSetupError {
    #[error("{variable}={value:?} is not a URL: {reason}")]
    InvalidEndpoint {
        variable: &'static str,
        value: String,
        reason: String,
    },
    #[error("could not build the HTTP client: {0}")]
    Client(String),
}

/// Posts batches of spans, encoded by [`protobuf`], to one OTLP endpoint.
#[derive(Debug)]
pub(crate) struct ProtobufExporter {
    endpoint: reqwest::Url,
    headers: HeaderMap,
    timeout: Duration,
    /// Taken at shutdown: the blocking client must be dropped outside any
    /// async runtime, and the batch processor's thread is.
    client: Mutex<Option<reqwest::blocking::Client>>,
    resource: EncodedResource,
}

/// The resource every request carries, encoded once.
#[derive(Debug, Default)]
struct EncodedResource {
    message: Vec<u8>,
    schema_url: String,
}

impl ProtobufExporter {
    /// The exporter the `OTEL_EXPORTER_OTLP_*` variables describe, or
    /// `None` when they ask for JSON or for compression, which
    /// opentelemetry-otlp serves.
    pub(crate) fn from_env() -> Result<Option<Self>, ExportSetupError> {
        let protocol = traces_setting("PROTOCOL");
        let compression = traces_setting("COMPRESSION");
        if protocol.is_some_and(|p| p != "http/protobuf")
            || compression.is_some_and(|c| c != "none")
        {
            return Ok(None);
        }
        let endpoint = endpoint()?;
        let headers = traces_setting("HEADERS")
            .map(|list| parse_headers(&list))
            .unwrap_or_default();
        let timeout = traces_setting("TIMEOUT")
            .and_then(|ms| ms.parse().ok())
            .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
        // Built on a thread of its own: the blocking client starts a
        // runtime, which it cannot do inside the caller's.
        let client = std::thread::spawn(move || {
            reqwest::blocking::Client::builder()
                .timeout(timeout)
                .build()
        })
        .join()
        .map_err(|_| ExportSetupError::Client("its thread panicked".to_owned()))?
        .map_err(|e| ExportSetupError::Client(e.to_string()))?;
        Ok(Some(Self {
            endpoint,
            headers,
            timeout,
            client: Mutex::new(Some(client)),
            resource: EncodedResource::default(),
        }))
    }

    /// Posts `body`, retrying as [`retry_delay`] allows until the timeout.
    fn post(&self, body: Vec<u8>) -> OTelSdkResult {
        let client = self
            .client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(OTelSdkError::AlreadyShutdown)?;
        let deadline = Instant::now() + self.timeout;
        let body = bytes::Bytes::from(body);
        let mut attempt = 0;
        loop {
            let outcome = client
                .post(self.endpoint.clone())
                .headers(self.headers.clone())
                .header(CONTENT_TYPE, "application/x-protobuf")
                .body(reqwest::blocking::Body::from(body.clone()))
                .timeout(deadline.saturating_duration_since(Instant::now()))
                .send();
            let failure = match outcome {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) => Failure::Status {
                    status: response.status().as_u16(),
                    retry_after: response
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|value| value.to_str().ok()?.parse().ok())
                        .map(Duration::from_secs),
                },
                Err(e) => Failure::Network(e.to_string()),
            };
            match retry_delay(&failure, attempt) {
                Some(delay) if Instant::now() + delay < deadline => {
                    std::thread::sleep(delay);
                    attempt += 1;
                }
                _ => return Err(OTelSdkError::InternalFailure(failure.to_string())),
            }
        }
    }
}

impl SpanExporter for ProtobufExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let body =
            protobuf::export_request(&self.resource.message, &self.resource.schema_url, &batch);
        // Freed now, not after a post that may wait out retries.
        drop(batch);
        self.post(body)
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        match self
            .client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            Some(_) => Ok(()),
            None => Err(OTelSdkError::AlreadyShutdown),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = EncodedResource {
            message: protobuf::resource(resource),
            schema_url: resource.schema_url().unwrap_or_default().to_owned(),
        };
    }
}

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("OTLP export answered {status}")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("OTLP export failed: {0}")]
    Network(String),
}

/// How long to wait before attempt `attempt + 1` after `failure`, or
/// `None` when it is not worth one: OTLP/HTTP retries 429, 502, 503, 504
/// and failures without an answer, with exponential backoff, unless the
/// server asks for a delay.
fn retry_delay(failure: &Failure, attempt: u32) -> Option<Duration> {
    if attempt >= MAX_RETRIES {
        return None;
    }
    match failure {
        Failure::Status {
            status: 429 | 503,
            retry_after: Some(delay),
        } => return Some(*delay),
        Failure::Status {
            status: 429 | 502 | 503 | 504,
            ..
        }
        | Failure::Network(_) => {}
        Failure::Status { .. } => return None,
    }
    let backoff = INITIAL_BACKOFF
        .saturating_mul(1 << attempt)
        .min(MAX_BACKOFF);
    let jitter = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |now| now.subsec_nanos() % (MAX_JITTER_MS * 1_000_000));
    Some(backoff + Duration::from_nanos(jitter.into()))
}

/// `OTEL_EXPORTER_OTLP_TRACES_<setting>`, else `OTEL_EXPORTER_OTLP_<setting>`.
fn traces_setting(setting: &str) -> Option<String> {
    super::otlp_setting(setting, "TRACES")
}

/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as it is, else
/// `OTEL_EXPORTER_OTLP_ENDPOINT` with `/v1/traces` after it, as the
/// specification says.
fn endpoint() -> Result<reqwest::Url, ExportSetupError> {
    let (variable, url) = match std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        Ok(url) if !url.is_empty() => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url),
        _ => {
            let base = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default();
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("{}/v1/traces", base.trim_end_matches('/')),
            )
        }
    };
    reqwest::Url::parse(&url).map_err(|e| ExportSetupError::InvalidEndpoint {
        variable,
        value: url,
        reason: e.to_string(),
    })
}

/// `key=value` pairs separated by commas, values percent-decoded; pairs
/// that are not valid headers are left out.
fn parse_headers(list: &str) -> HeaderMap {
    list.split(',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .ok()?;
            Some((
                HeaderName::try_from(key.trim()).ok()?,
                HeaderValue::try_from(value.as_ref()).ok()?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_comma_separated_pairs_with_percent_encoded_values() {
        let headers = parse_headers("api-key=secret, x-team = a%20b%2Cc ,broken,=empty-name");
        assert_eq!(headers.len(), 2);
        assert_eq!(headers["api-key"], "secret");
        assert_eq!(headers["x-team"], "a b,c");
    }

    #[test]
    fn only_throttling_unavailability_and_lost_connections_are_retried() {
        let status = |status| Failure::Status {
            status,
            retry_after: None,
        };
        for retried in [429, 502, 503, 504] {
            assert!(retry_delay(&status(retried), 0).is_some(), "{retried}");
        }
        for final_answer in [400, 401, 404, 413, 500] {
            assert!(
                retry_delay(&status(final_answer), 0).is_none(),
                "{final_answer}"
            );
        }
        let lost = Failure::Network("connection refused".to_owned());
        assert!(retry_delay(&lost, 0).is_some());
        assert!(retry_delay(&lost, MAX_RETRIES).is_none());
    }

    #[test]
    fn backoff_doubles_up_to_its_bound_and_the_server_can_set_the_delay() {
        let lost = Failure::Network(String::new());
        let jitter = Duration::from_millis(MAX_JITTER_MS.into());
        for (attempt, base) in [(0, 100), (1, 200), (2, 400)] {
            let delay = retry_delay(&lost, attempt).expect("retried");
            let base = Duration::from_millis(base);
            assert!(
                delay >= base && delay < base + jitter,
                "{attempt}: {delay:?}"
            );
        }
        let throttled = Failure::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(2)),
        };
        assert_eq!(retry_delay(&throttled, 0), Some(Duration::from_secs(2)));
    }
}
