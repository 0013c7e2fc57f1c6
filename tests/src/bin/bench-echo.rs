//! The `bench` service, for the benchmark:
//!
//! - `GET /bench/ping` touches no database: what the gateway hop and the
//!   kernel cost on their own;
//! - `POST /bench/publish` publishes a burst of durable `bench.tick`
//!   events with the kernel's bus, so that the benchmark can count the
//!   events one service publishes per second and, with the `bench-sink`
//!   service on the other end, how long an event takes from the publisher
//!   to a subscriber in another process.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use futures_util::stream;
use microcore::prelude::*;
use microcore::{Domain, PluginEntry, Service};

/// The event `POST /bench/publish` publishes.
const TICK: &str = "bench.tick";

/// The most events one `POST /bench/publish` may ask for.
const MAX_COUNT: u64 = 10_000_000;

/// The most publishes one `POST /bench/publish` may keep in flight.
const MAX_CONCURRENCY: usize = 4096;

/// How long a burst may take before the gateway answers 504: long enough
/// for the largest burst the benchmark asks for on a slow machine.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Deserialize, ToSchema)]
struct PingRequest {}

#[derive(Serialize, ToSchema)]
struct Pong {
    pong: bool,
}

struct PingPlugin {
    http: Http,
}

impl Plugin for PingPlugin {
    type Tools = Http;

    fn new(http: Http) -> Self {
        Self { http }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        self.http
            .get("/bench/ping")
            .tag("Bench")
            .handler(&self, Self::ping)?;
        Ok(())
    }
}

impl PingPlugin {
    async fn ping(self: Arc<Self>, _: PingRequest, _: Context) -> HandlerResult<Pong> {
        Ok(Pong { pong: true })
    }
}

/// A burst of events to publish.
#[derive(Deserialize, ToSchema)]
struct PublishRequest {
    /// Events to publish, at most 10 000 000.
    count: u64,
    /// Publishes awaiting the server's acknowledgement at once, 1 to 4096.
    concurrency: usize,
    /// Publish at this steady rate instead of as fast as acknowledgements
    /// come back.
    rate_per_sec: Option<u64>,
}

/// What a burst achieved.
#[derive(Serialize, ToSchema)]
struct PublishReport {
    /// Events the server acknowledged.
    published: u64,
    /// Publishes that failed.
    failed: u64,
    /// From the first publish to the last acknowledgement.
    elapsed_ms: f64,
    /// Why the first failed publish failed, if any did.
    first_error: Option<String>,
}

/// The payload of `bench.tick`; the subscriber measures its latency from
/// `sent_at_us`.
#[derive(Serialize)]
struct Tick {
    seq: u64,
    /// When the publish began, in microseconds since the UNIX epoch. Both
    /// services run on one machine, so they read the same clock.
    sent_at_us: u64,
}

struct PublishPlugin {
    http: Http,
    bus: Bus,
}

impl Plugin for PublishPlugin {
    type Tools = (Http, Bus);

    fn new((http, bus): Self::Tools) -> Self {
        Self { http, bus }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        self.http
            .post("/bench/publish")
            .tag("Bench")
            .summary("Publish a burst of durable bench.tick events")
            .timeout(PUBLISH_TIMEOUT)
            .handler(&self, Self::publish)?;
        Ok(())
    }
}

impl PublishPlugin {
    /// Publishes `count` events with `concurrency` of them awaiting the
    /// server's acknowledgement at a time. With a rate, event `n` is due
    /// `n / rate` seconds after the start: a publish that is late (all
    /// slots busy) goes out as soon as a slot frees up, so a slow server
    /// does not lower the offered rate.
    async fn publish(
        self: Arc<Self>,
        request: PublishRequest,
        _: Context,
    ) -> HandlerResult<PublishReport> {
        if request.count == 0 || request.count > MAX_COUNT {
            return Err(HandlerError::reject(format!(
                "count must be between 1 and {MAX_COUNT}"
            )));
        }
        if request.concurrency == 0 || request.concurrency > MAX_CONCURRENCY {
            return Err(HandlerError::reject(format!(
                "concurrency must be between 1 and {MAX_CONCURRENCY}"
            )));
        }
        if request.rate_per_sec == Some(0) {
            return Err(HandlerError::reject("rate_per_sec must be positive"));
        }

        let published = AtomicU64::new(0);
        let failed = AtomicU64::new(0);
        let first_error = Mutex::new(None);
        let started = Instant::now();
        let rate = request.rate_per_sec;
        stream::iter(0..request.count)
            .then(|seq| async move {
                if let Some(rate) = rate {
                    let due = Duration::from_micros(seq.saturating_mul(1_000_000) / rate);
                    tokio::time::sleep_until((started + due).into()).await;
                }
                seq
            })
            .for_each_concurrent(request.concurrency, |seq| {
                let (published, failed, first_error) = (&published, &failed, &first_error);
                let bus = &self.bus;
                async move {
                    let tick = Tick {
                        seq,
                        sent_at_us: micros_since_epoch(),
                    };
                    match bus.publish(TICK, &tick).await {
                        Ok(_) => {
                            published.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert_with(|| e.to_string());
                        }
                    }
                }
            })
            .await;
        Ok(PublishReport {
            published: published.into_inner(),
            failed: failed.into_inner(),
            elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
            first_error: first_error.into_inner().unwrap_or_else(|p| p.into_inner()),
        })
    }
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
    let _telemetry = microcore::telemetry::init("bench");
    let domain = Domain::new("bench", env!("CARGO_PKG_VERSION")).plugins(vec![
        PluginEntry::of::<PingPlugin>("ping"),
        PluginEntry::of::<PublishPlugin>("publish"),
    ]);
    Service::from_env(domain)?.run().await?;
    Ok(())
}
