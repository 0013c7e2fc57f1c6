//! (f) and (g): the event bus across processes.
//!
//! The `bench` service (`bench-echo`) publishes durable `bench.tick`
//! events with the kernel's bus when `POST /bench/publish` asks it to;
//! the `bench-sink` service, another process, subscribes to them the
//! default way and records each event's latency from the start of its
//! publish to its handler. The benchmark drives both through the gateway,
//! which is not on the events' path.
//!
//! - (f) throughput: the publisher keeps `--publish-concurrency` publishes
//!   awaiting the server's acknowledgement until `--events` are stored.
//!   Events/s are the publisher's own count over its own clock, from the
//!   first publish to the last acknowledgement; the sink's latencies
//!   under such a load are mostly queueing.
//! - (g) latency: the publisher offers `--event-rate` events/s, a rate the
//!   bus keeps up with, for `--duration-secs`; the sink's latencies are
//!   what one event costs from publisher to subscriber.

use std::cell::Cell;
use std::time::Duration;

use anyhow::{Context as _, bail};
use microcore_e2e::wait;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// The most events one scenario publishes: the publisher's own bound.
pub const MAX_EVENTS: u64 = 10_000_000;

/// The most publishes in flight: the publisher's own bound.
pub const MAX_PUBLISH_CONCURRENCY: usize = 4096;

/// Publishes in flight in (g): more than a paced publisher ever needs, so
/// that it never waits for a slot.
const PACED_CONCURRENCY: usize = 64;

/// Published and received before (f), so that neither the stream nor the
/// consumer is measured cold.
const WARM_UP_EVENTS: u64 = 1000;

/// How long the sink may take to receive the last event once the
/// publisher has its acknowledgements.
const DRAIN: Duration = Duration::from_secs(60);

/// The publisher's own bound on one burst, which the gateway honours.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(300);

/// The targets the scenarios are held to.
const TARGET_EVENTS_PER_SEC: f64 = 10_000.0;
const TARGET_P50_MS: f64 = 2.0;

pub struct EventOptions {
    /// Events published in (f).
    pub events: u64,
    /// Publishes in flight in (f).
    pub publish_concurrency: usize,
    /// Events offered per second in (g).
    pub rate_per_sec: u64,
    /// How long (g) lasts.
    pub duration: Duration,
}

/// The publisher's answer to `POST /bench/publish`.
#[derive(Deserialize)]
struct PublishReport {
    published: u64,
    failed: u64,
    elapsed_ms: f64,
    first_error: Option<String>,
}

/// The sink's answer to `GET /bench/latency`.
#[derive(Deserialize)]
struct SinkLatency {
    count: u64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

/// One event scenario's results.
pub struct EventMeasurement {
    label: String,
    published: u64,
    failed: u64,
    first_error: Option<String>,
    /// The publisher's, from the first publish to the last acknowledgement.
    elapsed: Duration,
    /// Publish → handler in the sink.
    p50_ms: f64,
    p99_ms: f64,
}

impl EventMeasurement {
    fn per_second(&self) -> f64 {
        self.published as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs the warm-up, (f) and (g), through the gateway at `gateway`.
pub async fn measure(
    client: &reqwest::Client,
    gateway: &str,
    options: &EventOptions,
) -> anyhow::Result<Vec<EventMeasurement>> {
    let bench = EventBench { client, gateway };
    eprintln!("warming up the event bus…");
    bench
        .run("warm-up", WARM_UP_EVENTS, options.publish_concurrency, None)
        .await?;

    let throughput = format!(
        "(f) publish flat out, {} in flight",
        options.publish_concurrency
    );
    eprintln!("measuring {throughput}…");
    let throughput = bench
        .run(
            &throughput,
            options.events,
            options.publish_concurrency,
            None,
        )
        .await?;

    let rate = options.rate_per_sec;
    let count = rate
        .saturating_mul(options.duration.as_secs())
        .min(MAX_EVENTS);
    let paced = format!("(g) publish at {rate}/s, {PACED_CONCURRENCY} in flight");
    eprintln!("measuring {paced}…");
    let paced = bench
        .run(&paced, count, PACED_CONCURRENCY, Some(rate))
        .await?;
    Ok(vec![throughput, paced])
}

/// The publisher and the sink, through the gateway.
struct EventBench<'a> {
    client: &'a reqwest::Client,
    gateway: &'a str,
}

impl EventBench<'_> {
    /// Clears the sink, has `count` events published and waits until the
    /// sink has every one the server acknowledged.
    async fn run(
        &self,
        label: &str,
        count: u64,
        concurrency: usize,
        rate_per_sec: Option<u64>,
    ) -> anyhow::Result<EventMeasurement> {
        self.call::<Value>(
            self.client
                .post(format!("{}/bench/latency/reset", self.gateway))
                .json(&json!({})),
        )
        .await
        .context("resetting the sink")?;
        let report: PublishReport = self
            .call(
                self.client
                    .post(format!("{}/bench/publish", self.gateway))
                    .timeout(PUBLISH_TIMEOUT + Duration::from_secs(10))
                    .json(&json!({
                        "count": count,
                        "concurrency": concurrency,
                        "rate_per_sec": rate_per_sec,
                    })),
            )
            .await
            .with_context(|| format!("{label}: publishing {count} events"))?;
        if report.published == 0 {
            bail!(
                "{label}: no event was published; first error: {}",
                report.first_error.as_deref().unwrap_or("none")
            );
        }
        let latency = self.wait_for_sink(report.published).await?;
        Ok(EventMeasurement {
            label: label.to_owned(),
            published: report.published,
            failed: report.failed,
            first_error: report.first_error,
            elapsed: Duration::from_secs_f64(report.elapsed_ms / 1000.0),
            p50_ms: latency.p50_ms.unwrap_or(f64::NAN),
            p99_ms: latency.p99_ms.unwrap_or(f64::NAN),
        })
    }

    /// Polls the sink until it has received `published` events.
    async fn wait_for_sink(&self, published: u64) -> anyhow::Result<SinkLatency> {
        let seen = Cell::new(0);
        let received = wait::poll(DRAIN, || {
            let seen = &seen;
            async move {
                let latency = self.sink_latency().await.ok()?;
                seen.set(latency.count);
                (latency.count >= published).then_some(latency)
            }
        })
        .await;
        received.with_context(|| {
            format!(
                "the sink received {} of the {published} published events within {DRAIN:?}",
                seen.get()
            )
        })
    }

    async fn sink_latency(&self) -> anyhow::Result<SinkLatency> {
        self.call(self.client.get(format!("{}/bench/latency", self.gateway)))
            .await
    }

    /// Sends `request` and returns the `data` of a successful answer.
    async fn call<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let response = request.send().await?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("a {status} answer that is not JSON"))?;
        if !status.is_success() || body["success"] != json!(true) {
            bail!("answered {status}: {body}");
        }
        serde_json::from_value(body["data"].clone())
            .with_context(|| format!("unexpected data in {body}"))
    }
}

/// The event table; `None` when the workspace has no bench services.
pub fn print_report(rows: Option<&[EventMeasurement]>) {
    println!();
    let Some(rows) = rows else {
        println!("event bus: skipped: the workspace has no `bench-echo` or `bench-sink` binary");
        return;
    };
    println!(
        "event bus: `bench` publishes durable events (JetStream, file storage, each publish \
         awaits the server's acknowledgement), `bench-sink` subscribes in another process; \
         latency from the start of a publish to the subscriber's handler"
    );
    println!();
    let width = rows.iter().map(|row| row.label.len()).max().unwrap_or(0);
    println!(
        "{:<width$} {:>10} {:>8} {:>11} {:>9} {:>9}",
        "scenario", "events", "failed", "events/s", "p50 ms", "p99 ms"
    );
    for row in rows {
        println!(
            "{:<width$} {:>10} {:>8} {:>11.0} {:>9.2} {:>9.2}",
            row.label,
            row.published,
            row.failed,
            row.per_second(),
            row.p50_ms,
            row.p99_ms
        );
        if let Some(error) = &row.first_error {
            println!("  first failure: {error}");
        }
    }
    println!("(f)'s latencies are under saturation: mostly time queued behind other events");

    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    println!();
    if let Some(throughput) = rows.iter().find(|r| r.label.starts_with("(f)")) {
        let per_second = throughput.per_second();
        println!(
            "target (f): >= 10,000 durable events/s published by one service: {per_second:.0} \
             events/s, {}",
            verdict(per_second >= TARGET_EVENTS_PER_SEC)
        );
    }
    if let Some(paced) = rows.iter().find(|r| r.label.starts_with("(g)")) {
        println!(
            "target (g): publish->subscriber p50 < 2 ms across processes: {:.2} ms, {}",
            paced.p50_ms,
            verdict(paced.p50_ms < TARGET_P50_MS)
        );
    }
}
