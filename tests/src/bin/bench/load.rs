//! Driving HTTP load: `concurrency` workers, each on its own keep-alive
//! connection, send requests back to back for a while; a [`Measurement`]
//! keeps every success's latency so any quantile can be read, and what
//! the requests cost the processes serving them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinSet;

use crate::Options;
use crate::cpu::{CpuPerRequest, CpuReading, Watched};

/// No scenario sends more than this, however fast it runs.
const MAX_REQUESTS: u64 = 20_000_000;

/// One scenario's results.
pub(crate) struct Measurement {
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Microseconds, sorted.
    pub latencies: Vec<u32>,
    /// CPU time per answered request of each watched process.
    pub cpu: Vec<CpuPerRequest>,
    /// Requests/s of each slice [absorbed](Self::absorb), in the order
    /// taken: one per round of [`measure_in_rounds`].
    pub rounds: Vec<f64>,
}

impl Measurement {
    /// Nothing measured yet, to [`absorb`](Self::absorb) slices into.
    pub fn empty() -> Self {
        Self {
            ok: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latencies: Vec::new(),
            cpu: Vec::new(),
            rounds: Vec::new(),
        }
    }

    /// Adds the requests, time, latencies and CPU time of `slice`, another
    /// measurement of the same scenario.
    pub fn absorb(&mut self, slice: Measurement) {
        let cpu_total = |m: &Measurement, name: &str| {
            m.cpu
                .iter()
                .find(|c| c.name == name)
                .map_or(Duration::ZERO, |c| {
                    c.per_request * u32::try_from(m.ok).unwrap_or(u32::MAX)
                })
        };
        let requests = u32::try_from((self.ok + slice.ok).max(1)).unwrap_or(u32::MAX);
        self.rounds.push(slice.per_second());
        let names: Vec<&'static str> = slice.cpu.iter().map(|c| c.name).collect();
        let cpu = names
            .into_iter()
            .map(|name| CpuPerRequest {
                name,
                per_request: (cpu_total(self, name) + cpu_total(&slice, name)) / requests,
            })
            .collect();
        self.ok += slice.ok;
        self.errors += slice.errors;
        self.elapsed += slice.elapsed;
        self.latencies.extend(slice.latencies);
        self.latencies.sort_unstable();
        self.cpu = cpu;
    }

    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile (0..=1) in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        f64::from(self.latencies[rank]) / 1000.0
    }
}

/// A throughput ratio taken round by round: each round measures both
/// sides within moments of each other, so each round's ratio is one
/// paired sample of it.
#[derive(Clone, Copy)]
pub(crate) struct RoundRatios {
    /// The middle round's ratio: the estimate a round disturbed from
    /// outside (a checkpoint, a neighbour's burst) does not move, where it
    /// would move the ratio of the totals.
    pub median: f64,
    /// The lowest and the highest: how far apart the rounds were.
    pub low: f64,
    pub high: f64,
}

/// `through[i] / base[i]` over the rounds both have; `None` when they
/// share none.
pub(crate) fn round_ratios(through: &[f64], base: &[f64]) -> Option<RoundRatios> {
    let mut ratios: Vec<f64> = through.iter().zip(base).map(|(t, b)| t / b).collect();
    ratios.sort_by(f64::total_cmp);
    let (low, high) = (*ratios.first()?, *ratios.last()?);
    let middle = ratios.len() / 2;
    let median = if ratios.len().is_multiple_of(2) {
        (ratios[middle - 1] + ratios[middle]) / 2.0
    } else {
        ratios[middle]
    };
    Some(RoundRatios { median, low, high })
}

/// Builds request number `n` of a scenario.
pub(crate) type MakeRequest =
    Arc<dyn Fn(&reqwest::Client, u64) -> reqwest::RequestBuilder + Send + Sync>;

/// `concurrency` workers send requests back to back until `duration` has
/// passed; each keeps its own keep-alive connection busy.
pub(crate) async fn drive(
    client: &reqwest::Client,
    make: &MakeRequest,
    concurrency: usize,
    duration: Duration,
) -> Measurement {
    let started = Instant::now();
    let deadline = started + duration;
    let sent = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let make = make.clone();
        let sent = sent.clone();
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            loop {
                let n = sent.fetch_add(1, Ordering::Relaxed);
                if n >= MAX_REQUESTS || Instant::now() >= deadline {
                    break;
                }
                let begun = Instant::now();
                let ok = match make(&client, n).send().await {
                    Ok(response) => {
                        let success = response.status().is_success();
                        response.bytes().await.is_ok() && success
                    }
                    Err(_) => false,
                };
                if ok {
                    let micros = begun.elapsed().as_micros();
                    latencies.push(u32::try_from(micros).unwrap_or(u32::MAX));
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        });
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    while let Some(worker) = workers.join_next().await {
        let (mut worker_latencies, worker_errors) = worker.expect("a load worker panicked");
        latencies.append(&mut worker_latencies);
        errors += worker_errors;
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Measurement {
        ok: latencies.len() as u64,
        errors,
        elapsed,
        latencies,
        cpu: Vec::new(),
        rounds: Vec::new(),
    }
}

/// `GET {base}/products/{id}` over `ids` in turn: (a), (c) and (h).
pub(crate) fn get_by_id(base: String, ids: Arc<Vec<i64>>) -> MakeRequest {
    Arc::new(move |client: &reqwest::Client, n: u64| {
        let id = ids[(n % ids.len() as u64) as usize];
        client.get(format!("{base}/products/{id}"))
    })
}

/// `POST {base}/products`, a new product each time: (b), (c) and (i).
pub(crate) fn create(base: String) -> MakeRequest {
    Arc::new(move |client: &reqwest::Client, n: u64| {
        client
            .post(format!("{base}/products"))
            .json(&json!({"name": format!("bench {n}"), "price": 9.99}))
    })
}

/// The rounds `duration` is cut into by default: one per second, so that
/// a scenario and the one it is compared with run about a second apart,
/// and at least four; even (see [`measure_in_rounds`]).
pub(crate) fn rounds_for(duration: Duration) -> u32 {
    let seconds = u32::try_from(duration.as_secs()).unwrap_or(u32::MAX / 2);
    seconds.next_multiple_of(2).max(4)
}

/// Measures the scenarios of `compared` (the requests, and the processes
/// whose CPU time to report) for `options.duration` each: a warm-up each,
/// then `options.rounds` slices, one scenario after the other in each
/// round, so that whatever drifts on the shared machine weighs on all
/// alike. Every other round runs them in reverse, so that over the (even)
/// number of rounds no scenario always comes first, last, or after the
/// same one.
pub(crate) async fn measure_in_rounds(
    client: &reqwest::Client,
    options: &Options,
    compared: &[(MakeRequest, &[Watched])],
) -> Vec<Measurement> {
    for (make, _) in compared {
        warm_up(client, options, make).await;
    }
    let slice = options.duration / options.rounds;
    let mut totals: Vec<Measurement> = compared.iter().map(|_| Measurement::empty()).collect();
    let mut order: Vec<usize> = (0..compared.len()).collect();
    for _ in 0..options.rounds {
        for &i in &order {
            let (make, watched) = &compared[i];
            totals[i].absorb(measure_for(client, options.concurrency, slice, make, watched).await);
        }
        order.reverse();
    }
    totals
}

/// Warms the path up (connections, caches, JIT-free but not page-cache
/// free), then measures it, and the CPU time the `watched` processes
/// spend on the measured requests.
pub(crate) async fn measure(
    client: &reqwest::Client,
    options: &Options,
    make: MakeRequest,
    watched: &[Watched],
) -> Measurement {
    warm_up(client, options, &make).await;
    measure_for(
        client,
        options.concurrency,
        options.duration,
        &make,
        watched,
    )
    .await
}

/// Drives `make` for a fifth of the measured time, between 0.5 and 2 s.
pub(crate) async fn warm_up(client: &reqwest::Client, options: &Options, make: &MakeRequest) {
    let warm_up = (options.duration / 5).clamp(Duration::from_millis(500), Duration::from_secs(2));
    drive(client, make, options.concurrency, warm_up).await;
}

/// Drives `make` for `duration` and measures it, with the CPU time the
/// `watched` processes spend.
pub(crate) async fn measure_for(
    client: &reqwest::Client,
    concurrency: usize,
    duration: Duration,
    make: &MakeRequest,
    watched: &[Watched],
) -> Measurement {
    let before = CpuReading::now(watched);
    let mut measurement = drive(client, make, concurrency, duration).await;
    measurement.cpu = before.per_request_since(measurement.ok);
    measurement
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_ratios_pair_the_rounds_both_sides_have() {
        let ratios = round_ratios(&[2.0, 3.0, 1.0], &[4.0, 3.0, 2.0, 9.0]).unwrap();
        assert_eq!((ratios.low, ratios.median, ratios.high), (0.5, 0.5, 1.0));
        assert!(round_ratios(&[], &[1.0]).is_none());
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        let ratios = round_ratios(&[1.0, 4.0, 2.0, 3.0], &[1.0; 4]).unwrap();
        assert_eq!((ratios.low, ratios.median, ratios.high), (1.0, 2.5, 4.0));
    }

    #[test]
    fn rounds_are_one_a_second_even_and_at_least_four() {
        let rounds = |secs| rounds_for(Duration::from_secs(secs));
        assert_eq!(
            [rounds(1), rounds(10), rounds(11), rounds(30)],
            [4, 10, 12, 30]
        );
    }
}
