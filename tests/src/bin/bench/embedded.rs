//! (h) and (i), startup and idle memory: the embedded topology.
//!
//! The embedded default is the all-in-one `microcore` binary started with
//! neither `NATS_URL` nor `DATABASE_URL`: the gateway and every domain in
//! one process, the services talking over the in-process transport and
//! keeping their tables in SQLite files under `MC_DATA_DIR`. It exists to
//! be cheap to start and to run, so the benchmark holds it to three
//! targets, on its own temporary data directory and a free port:
//!
//! - Ready to serve within 1 s of the spawn, migrations included: from
//!   spawning the process to the first 200 of `GET /health`, asked every
//!   few milliseconds (the binary binds its listener only once every
//!   service has migrated and started), on a fresh data directory and
//!   again on the same one once migrated. Also shown: the first 200 of
//!   `GET /products` (a domain's route, not the gateway's own) and the
//!   `ready_in_ms` the binary logs, which counts from `main` to the bind,
//!   so neither the exec nor the first request.
//! - Under 30 MB resident when idle: `VmRSS` a second after it is ready,
//!   before any request but the probes; again after the load, with the
//!   peak (`VmHWM`).
//! - At least the distributed throughput: (h) and (i) are the load of (a)
//!   and (b) — the same requests, concurrency, warm-up and duration —
//!   against its HTTP port, once the distributed processes are stopped.
//!   The catalogue is seeded through `POST /products`: the benchmark has
//!   no business in the process's SQLite files.
//!
//! (i) and (b) differ in durability, which the report says: (i) commits
//! to SQLite in WAL mode with `synchronous = NORMAL` (no fsync per commit)
//! and its `product.created` goes to the in-memory bus; (b) commits to
//! Postgres and its event is stored by JetStream.

use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::{StreamExt, TryStreamExt, stream};
use microcore_e2e::{ServiceProcess, free_port, wait};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::cpu::Watched;
use crate::{Measurement, Options, create, get_by_id, print_header, print_row};

/// Warnings, like every process of the benchmark, and the binary's own
/// readiness line: its target is `microcore`, the kernel's are
/// `microcore::…` and stay at warn.
const LOG_FILTER: &str = "warn,microcore=info,microcore::=warn";

/// The pause between two startup probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(5);

/// A probe the listener accepted but did not answer in time fails.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Ports tried when another process takes the free one first.
const PORT_ATTEMPTS: usize = 3;

/// How long the ready process is left alone before its idle memory is
/// read.
const SETTLE: Duration = Duration::from_secs(1);

/// Products seeded at most: enough ids that (h) does not read one row
/// over and over, few enough that seeding over HTTP takes a moment.
const MAX_SEED: usize = 1000;

/// Seeding requests in flight.
const SEED_CONCURRENCY: usize = 32;

/// The scenarios' names.
const GET_SCENARIO: &str = "(h) embedded GET /products/{id}";
const CREATE_SCENARIO: &str = "(i) embedded POST /products";

/// The targets the embedded process is held to.
const TARGET_READY: Duration = Duration::from_secs(1);
const TARGET_IDLE_RSS_MB: f64 = 30.0;
const TARGET_THROUGHPUT_RATIO: f64 = 1.0;

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Clone, Copy)]
struct Memory {
    /// `VmRSS`, in KiB.
    rss_kib: u64,
    /// `VmHWM`, the peak resident set, in KiB.
    peak_kib: u64,
}

impl Memory {
    /// Reads the memory of process `pid`.
    fn of(pid: u32) -> anyhow::Result<Self> {
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .with_context(|| format!("{path} has no {name}"))?;
            let kib = line.trim().trim_end_matches("kB").trim();
            kib.parse()
                .with_context(|| format!("{path}: {name} {line}: not a number of kB"))
        };
        Ok(Self {
            rss_kib: field("VmRSS:")?,
            peak_kib: field("VmHWM:")?,
        })
    }
}

/// KiB in megabytes (10^6 bytes), the unit of the target.
fn megabytes(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

/// One start of the process.
struct Startup {
    label: &'static str,
    /// From the spawn to the first 200 of `GET /health`.
    healthy_after: Duration,
    /// From the spawn to the first 200 of `GET /products`.
    routable_after: Duration,
    /// What the binary logged: from `main` to its listener being bound.
    ready_in_ms: Option<u64>,
    /// [`SETTLE`] after it was healthy.
    idle: Memory,
}

/// Everything the embedded part measured.
pub struct EmbeddedReport {
    startups: Vec<Startup>,
    seeded: usize,
    get: Measurement,
    create: Measurement,
    after_load: Memory,
}

/// A started embedded process and where it serves.
struct Running {
    process: ServiceProcess,
    base: String,
}

/// Why a startup probe stopped asking.
enum Probe {
    Answered,
    Exited(ExitStatus),
    TimedOut,
}

/// Asks `url` every [`PROBE_INTERVAL`] until it answers 200, the process
/// exits or `deadline` passes.
async fn first_ok(
    client: &reqwest::Client,
    process: &mut ServiceProcess,
    url: &str,
    deadline: Instant,
) -> Probe {
    loop {
        if let Some(status) = process.exit_status() {
            return Probe::Exited(status);
        }
        if let Ok(response) = client.get(url).send().await
            && response.status() == StatusCode::OK
            && response.bytes().await.is_ok()
        {
            return Probe::Answered;
        }
        if Instant::now() >= deadline {
            return Probe::TimedOut;
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// The `ready_in_ms` of the binary's readiness line (JSON logs), if it
/// logged one.
fn logged_ready_in_ms(log: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find_map(|line| line["ready_in_ms"].as_u64())
}

/// Starts `bin` on `data_dir` and a free port, times it until it serves,
/// then reads its idle memory.
async fn start(
    bin: &Path,
    data_dir: &Path,
    label: &'static str,
) -> anyhow::Result<(Running, Startup)> {
    let prober = reqwest::Client::builder().timeout(PROBE_TIMEOUT).build()?;
    let data_dir = data_dir.display().to_string();
    for _ in 0..PORT_ATTEMPTS {
        let address = format!("127.0.0.1:{}", free_port());
        let base = format!("http://{address}");
        let started = Instant::now();
        let deadline = started + wait::BOOT;
        let mut process = ServiceProcess::spawn(
            bin,
            [
                ("MC_HTTP_ADDR", address.as_str()),
                ("MC_DATA_DIR", data_dir.as_str()),
                ("RUST_LOG", LOG_FILTER),
                ("MC_LOG_FORMAT", "json"),
            ],
        );
        match first_ok(&prober, &mut process, &format!("{base}/health"), deadline).await {
            Probe::Answered => {}
            Probe::Exited(_) if process.log_tail(20).contains("in use") => continue,
            Probe::Exited(status) => bail!(
                "the embedded process exited at start: {status}\n{}",
                process.diagnostics()
            ),
            Probe::TimedOut => bail!(
                "the embedded process did not answer /health within {:?}\n{}",
                wait::BOOT,
                process.diagnostics()
            ),
        }
        let healthy_after = started.elapsed();
        match first_ok(&prober, &mut process, &format!("{base}/products"), deadline).await {
            Probe::Answered => {}
            _ => bail!(
                "the embedded process is healthy but does not serve GET /products\n{}",
                process.diagnostics()
            ),
        }
        let routable_after = started.elapsed();
        tokio::time::sleep(SETTLE).await;
        let idle = Memory::of(process.pid())?;
        let startup = Startup {
            label,
            healthy_after,
            routable_after,
            ready_in_ms: logged_ready_in_ms(process.log_path()),
            idle,
        };
        return Ok((Running { process, base }, startup));
    }
    bail!("no free port for the embedded process in {PORT_ATTEMPTS} attempts")
}

/// Creates `count` products through `POST {base}/products`, named and
/// priced like the distributed catalogue's, and returns their ids.
async fn seed(client: &reqwest::Client, base: &str, count: usize) -> anyhow::Result<Vec<i64>> {
    let url = format!("{base}/products");
    let mut ids: Vec<i64> = stream::iter(1..=count)
        .map(|n| {
            let request = client
                .post(&url)
                .json(&json!({"name": format!("seeded {n}"), "price": n as f64 * 1.5}));
            async move {
                let response = request.send().await.context("seeding a product")?;
                let status = response.status();
                let body: Value = response
                    .json()
                    .await
                    .with_context(|| format!("seeding: a {status} answer that is not JSON"))?;
                if status != StatusCode::CREATED {
                    bail!("seeding: POST /products answered {status}: {body}");
                }
                body["data"]["id"]
                    .as_i64()
                    .with_context(|| format!("seeding: no product id in {body}"))
            }
        })
        .buffer_unordered(SEED_CONCURRENCY)
        .try_collect()
        .await?;
    ids.sort_unstable();
    Ok(ids)
}

/// Times two starts (fresh data directory, then the same one migrated),
/// seeds the second process and runs (h) and (i) against it. `None` when
/// the workspace has no `microcore` binary (`bin`).
pub async fn measure(
    bin: Option<&Path>,
    client: &reqwest::Client,
    options: &Options,
) -> anyhow::Result<Option<EmbeddedReport>> {
    let Some(bin) = bin else {
        return Ok(None);
    };
    eprintln!("starting the embedded process…");
    let data = tempfile::tempdir().context("creating a temporary data directory")?;

    let (mut first, fresh) = start(bin, data.path(), "fresh data directory (migrations)").await?;
    // A clean stop, as before any restart: SQLite checkpoints its WAL.
    first.process.terminate(wait::SHUTDOWN).await;
    drop(first);
    let (running, migrated) = start(bin, data.path(), "same data directory, migrated").await?;

    let seeded = options.seed.min(MAX_SEED);
    eprintln!("seeding the embedded catalogue with {seeded} products through POST /products…");
    let ids = Arc::new(seed(client, &running.base, seeded).await?);

    let watched = [Watched::new("microcore", running.process.pid())];
    eprintln!("measuring {GET_SCENARIO}…");
    let get_load = crate::measure(
        client,
        options,
        get_by_id(running.base.clone(), ids),
        &watched,
    )
    .await;
    eprintln!("measuring {CREATE_SCENARIO}…");
    let create_load = crate::measure(client, options, create(running.base.clone()), &watched).await;
    let after_load = Memory::of(running.process.pid())?;
    // Dropping the process kills it, before its data directory goes.
    drop(running);
    drop(data);

    Ok(Some(EmbeddedReport {
        startups: vec![fresh, migrated],
        seeded,
        get: get_load,
        create: create_load,
        after_load,
    }))
}

/// The embedded section: startups and memory, (h) and (i), their ratios
/// to the distributed (a) and (b), and the targets.
pub fn print_report(
    report: Option<&EmbeddedReport>,
    distributed_get: Option<&Measurement>,
    distributed_create: Option<&Measurement>,
) {
    println!();
    let Some(report) = report else {
        println!("embedded topology: skipped: the workspace has no `microcore` binary");
        return;
    };
    println!(
        "embedded topology: the all-in-one `microcore` binary, in-process transport, SQLite \
         files in a temporary MC_DATA_DIR, warnings logged (and its readiness line); the \
         distributed processes stopped; {} products seeded through POST /products",
        report.seeded
    );

    println!();
    let width = report
        .startups
        .iter()
        .map(|s| s.label.len())
        .chain(["after (h) and (i)".len()])
        .max()
        .unwrap_or(0);
    println!(
        "{:<width$} {:>16} {:>18} {:>12} {:>13}",
        "start", "GET /health 200", "GET /products 200", "ready_in_ms", "idle VmRSS"
    );
    for startup in &report.startups {
        let logged = startup
            .ready_in_ms
            .map_or_else(|| "not logged".to_owned(), |ms| format!("{ms} ms"));
        println!(
            "{:<width$} {:>13.1} ms {:>15.1} ms {:>12} {:>10.1} MB",
            startup.label,
            startup.healthy_after.as_secs_f64() * 1000.0,
            startup.routable_after.as_secs_f64() * 1000.0,
            logged,
            megabytes(startup.idle.rss_kib)
        );
    }
    println!(
        "{:<width$} {:>16} {:>18} {:>12} {:>10.1} MB (peak {:.1} MB)",
        "after (h) and (i)",
        "",
        "",
        "",
        megabytes(report.after_load.rss_kib),
        megabytes(report.after_load.peak_kib)
    );
    println!(
        "times from the spawn; ready_in_ms is the binary's own, from main to its listener; \
         MB are 10^6 bytes"
    );

    println!();
    let width = GET_SCENARIO.len().max(CREATE_SCENARIO.len());
    print_header(width);
    print_row(GET_SCENARIO, width, &report.get);
    print_row(CREATE_SCENARIO, width, &report.create);

    println!();
    println!("{:<38} {:>18} {:>18}", "ratio", "throughput", "p50 latency");
    let ratios = [
        (
            "(h)/(a) embedded vs distributed GET",
            &report.get,
            distributed_get,
        ),
        (
            "(i)/(b) embedded vs distributed POST",
            &report.create,
            distributed_create,
        ),
    ];
    for (label, embedded, distributed) in ratios {
        match distributed {
            Some(base) => println!(
                "{label:<38} {:>17.2}x {:>17.2}x",
                embedded.per_second() / base.per_second(),
                embedded.quantile_ms(0.50) / base.quantile_ms(0.50)
            ),
            None => println!("{label:<38} {:>18} {:>18}", "n/a", "n/a"),
        }
    }
    println!(
        "(i) commits to SQLite (WAL, synchronous = NORMAL: no fsync per commit) and its events \
         live in memory; (b) commits to Postgres and JetStream stores its events"
    );

    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    println!();
    let slowest = report
        .startups
        .iter()
        .map(|s| s.healthy_after)
        .max()
        .unwrap_or_default();
    println!(
        "target: ready to serve < 1 s after the binary starts, migrations included: {:.0} ms \
         (slowest start, first 200 of GET /health), {}",
        slowest.as_secs_f64() * 1000.0,
        verdict(slowest < TARGET_READY)
    );
    let idle = report
        .startups
        .iter()
        .map(|s| megabytes(s.idle.rss_kib))
        .fold(0.0, f64::max);
    println!(
        "target: < 30 MB resident when idle: {idle:.1} MB (largest idle VmRSS), {}",
        verdict(idle < TARGET_IDLE_RSS_MB)
    );
    for (label, embedded, distributed) in ratios {
        let Some(base) = distributed else {
            println!("target {label}: >= 1.0x throughput: n/a");
            continue;
        };
        let ratio = embedded.per_second() / base.per_second();
        println!(
            "target {label}: >= 1.0x throughput: {ratio:.2}x, {}",
            verdict(ratio >= TARGET_THROUGHPUT_RATIO)
        );
    }
}
