//! The `bench-sink` service, for the benchmark: subscribes to the
//! `bench.tick` events the `bench` service publishes and keeps, in memory,
//! how long each took from the start of its publish to its handler here,
//! in another process.
//!
//! - `GET /bench/latency` answers how many events arrived and the p50 and
//!   p99 of their latencies;
//! - `POST /bench/latency/reset` forgets them, between two measurements.
//!
//! The latency is that of the kernel's whole path: the publisher's
//! envelope and JetStream store, the pull consumer's delivery, decoding
//! and dispatch to the handler. It ends when the handler runs, before its
//! acknowledgement.

use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use microcore::prelude::*;
use microcore::{Domain, PluginEntry, Service};

/// The event the sink measures.
const TICK: &str = "bench.tick";

/// Events handled at once: enough that the sink keeps up with a publisher
/// running flat out.
const CONCURRENCY: usize = 64;

/// What the sink reads of a `bench.tick`.
#[derive(Deserialize)]
struct Tick {
    /// When the publish began, in microseconds since the UNIX epoch.
    sent_at_us: u64,
}

#[derive(Deserialize, ToSchema)]
struct LatencyRequest {}

/// The latencies recorded since the last reset.
#[derive(Serialize, ToSchema)]
struct LatencyReport {
    /// Events received (a redelivered event counts again).
    count: usize,
    /// None before the first event.
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
}

#[derive(Serialize, ToSchema)]
struct Cleared {
    /// Latencies forgotten.
    cleared: usize,
}

struct SinkPlugin {
    bus: Bus,
    http: Http,
    /// Publish → handler, in microseconds, in arrival order.
    latencies: Mutex<Vec<u32>>,
}

impl Plugin for SinkPlugin {
    type Tools = (Bus, Http);

    fn new((bus, http): Self::Tools) -> Self {
        Self {
            bus,
            http,
            latencies: Mutex::new(Vec::new()),
        }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        self.bus
            .subscribe(TICK)
            .concurrency(CONCURRENCY)
            .handler(&self, Self::tick)?;
        self.http
            .get("/bench/latency")
            .tag("Bench")
            .summary("Publish-to-subscriber latency of bench.tick since the last reset")
            .handler(&self, Self::latency)?;
        self.http
            .post("/bench/latency/reset")
            .tag("Bench")
            .summary("Forget the latencies recorded so far")
            .handler(&self, Self::reset)?;
        Ok(())
    }
}

impl SinkPlugin {
    async fn tick(self: Arc<Self>, event: EventEnvelope<Tick>) -> EventResult {
        let latency = micros_since_epoch().saturating_sub(event.payload.sent_at_us);
        let latency = u32::try_from(latency).unwrap_or(u32::MAX);
        self.lock().push(latency);
        Ok(())
    }

    async fn latency(
        self: Arc<Self>,
        _: LatencyRequest,
        _: Context,
    ) -> HandlerResult<LatencyReport> {
        // Sorted outside the lock, so that handlers never wait for it.
        let mut latencies = self.lock().clone();
        latencies.sort_unstable();
        Ok(LatencyReport {
            count: latencies.len(),
            p50_ms: quantile_ms(&latencies, 0.50),
            p99_ms: quantile_ms(&latencies, 0.99),
            max_ms: quantile_ms(&latencies, 1.0),
        })
    }

    async fn reset(self: Arc<Self>, _: LatencyRequest, _: Context) -> HandlerResult<Cleared> {
        let cleared = std::mem::take(&mut *self.lock()).len();
        Ok(Cleared { cleared })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u32>> {
        self.latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The `q` quantile (0..=1) of sorted microseconds, in milliseconds.
fn quantile_ms(sorted: &[u32], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let rank = (last as f64 * q).round() as usize;
    Some(f64::from(sorted[rank]) / 1000.0)
}

fn micros_since_epoch() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
}

// The hot paths allocate many small, short-lived buffers (headers,
// subjects, spans), which mimalloc serves at a fraction of glibc's cost.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = microcore::telemetry::init("bench-sink");
    let domain = Domain::new("bench-sink", env!("CARGO_PKG_VERSION"))
        .plugins(vec![PluginEntry::of::<SinkPlugin>("sink")]);
    Service::from_env(domain)?.run().await?;
    Ok(())
}
