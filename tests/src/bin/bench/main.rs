//! What the gateway hop costs, and what the event bus delivers.
//!
//! ```text
//! cargo run --release -p microcore-e2e --bin bench -- --duration-secs 10 --concurrency 64
//! ```
//!
//! Starts a private NATS and database through the harness and the release
//! binaries of the gateway and the products service, seeds the catalogue,
//! then drives keep-alive HTTP load over loopback, each scenario in turn
//! in rounds (see [`load::measure_in_rounds`]), against:
//!
//! - (a) the gateway, `GET /products/{id}`;
//! - (b) the gateway, `POST /products`: the row and `product.created`,
//!   staged in the same transaction (outbox) and relayed to JetStream
//!   after the commit;
//! - (c) axum handlers inside this process doing the service's work by
//!   hand on the same database and NATS, without the gateway or the
//!   framework: for GET the same SELECT; for POST the same transaction
//!   (the row and an outbox row), then a durable JetStream publish of the
//!   `product.created` envelope, answered once the server has acknowledged
//!   it, and the outbox row deleted;
//! - (c') the POST without the outbox: the INSERT on its own, then the
//!   publish, so nothing ties the event to the row;
//! - (d) a bare hop in the topology of (e): an axum handler making one
//!   NATS request to a responder, each in a process of its own
//!   (`bench-hop`, no framework), and (d') the same inside this process;
//! - (e) the gateway in front of `GET /bench/ping` of the `bench-echo`
//!   service, which does no database work (skipped when the workspace has
//!   no `bench-echo` binary).
//!
//! (a)/(c) and (b)/(c) show what a request pays for going through the
//! gateway and the framework; (b)/(c') adds what the outbox's guarantee
//! costs over publishing after an unrelated commit; (e)/(d) shows the
//! framework's own overhead over a bare NATS request-reply. Every process
//! shares the same cores as the load generator, so absolute numbers say
//! little about a production deployment; the ratios are the point.
//!
//! Then, with the `bench-sink` service beside `bench-echo` (both skipped
//! when the workspace lacks either), the event bus across processes: (f)
//! durable events/s one service publishes flat out, and (g) the
//! publish→subscriber latency at a moderate steady rate; see [`events`].
//!
//! Last, with the distributed processes stopped, the embedded topology:
//! the all-in-one `microcore` binary without NATS or Postgres. Its startup
//! time (spawn to the first healthy answer, on a fresh data directory and
//! again once migrated) and idle memory, then the load of (a) and (b)
//! against it: (h) `GET /products/{id}` and (i) `POST /products`, with
//! (h)/(a) and (i)/(b) saying how it compares with the distributed
//! topology; see [`embedded`].
//!
//! After that, with `--tracing` (off by default: it starts five more
//! systems and measures (a) and (b) on each), what tracing costs: (j) (a)
//! and (b) again, each time on a fresh gateway and products service, with
//! tracing off, on and sampling every trace, on at 10%, and off again;
//! the spans exported to a receiver in the benchmark, and each
//! configuration's throughput against the mean of the two "off" runs,
//! whose difference is the noise; see [`tracing`]. Then (k), the same
//! configurations counted in instructions per request under callgrind,
//! which no drift of the machine moves; see [`instructions`].

mod baselines;
mod cpu;
mod embedded;
mod events;
mod instructions;
mod load;
mod tracing;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::routing::get;
use microcore_e2e::{ServiceProcess, System, binaries, wait};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::baselines::{
    BareHop, Direct, POOL_SIZE, direct_create, direct_create_unstaged, direct_get, serve,
    start_hop_in_process,
};
use crate::cpu::Watched;
use crate::events::{EventOptions, MAX_EVENTS, MAX_PUBLISH_CONCURRENCY};
use crate::load::{
    MakeRequest, Measurement, create, get_by_id, measure, measure_in_rounds, round_ratios,
};

const USAGE: &str = "\
usage: bench [--duration-secs N] [--concurrency N] [--seed N]
             [--events N] [--publish-concurrency N] [--event-rate N] [--tracing]
             [--rounds N] [--only LETTERS] [--callgrind-dir DIR]
  --duration-secs        measured seconds per HTTP scenario and of (g) (default 10)
  --rounds               slices each scenario's measured seconds are cut into, taken in turn
                         across the scenarios compared; even (default: one per second, at least 4)
  --concurrency          requests in flight, one keep-alive connection each (default 64)
  --seed                 products in the catalogue before the run (default 1000)
  --events               events published in (f), at most 10000000 (default 100000)
  --publish-concurrency  publishes in flight in (f), at most 4096 (default 256)
  --event-rate           events per second offered in (g) (default 2000)
  --tracing              also measure the cost of tracing: (j) throughput, off, 0%, 100%, 10%,
                         off again; (k) instructions per request, under callgrind
  --only                 the scenarios to measure, by letter: `--only de` for (d) and (e),
                         `--only jk` for tracing alone (default: a to i, and j and k with
                         --tracing)
  --callgrind-dir        keep (k)'s callgrind dumps in DIR, for callgrind_annotate: per process,
                         .1 idle, .2 the GETs, .3 the POSTs (default: a temporary directory)";

struct Options {
    duration: Duration,
    /// Rounds the compared scenarios are measured in (see
    /// [`load::measure_in_rounds`]).
    rounds: u32,
    concurrency: usize,
    seed: usize,
    events: u64,
    publish_concurrency: usize,
    event_rate: u64,
    /// Whether to measure (j) and (k), the tracing overhead.
    tracing: bool,
    /// The scenarios `--only` names, by letter.
    only: Option<String>,
    /// Where (k) leaves its callgrind dumps; a temporary directory if unset.
    callgrind_dir: Option<std::path::PathBuf>,
}

impl Options {
    /// Whether scenario `letter` (`a` to `j`) is to be measured.
    fn runs(&self, letter: char) -> bool {
        match &self.only {
            Some(only) => only.contains(letter),
            None => !matches!(letter, 'j' | 'k') || self.tracing,
        }
    }
}

fn parse_args() -> anyhow::Result<Options> {
    let mut options = Options {
        duration: Duration::from_secs(10),
        rounds: 0,
        concurrency: 64,
        seed: 1000,
        events: 100_000,
        publish_concurrency: 256,
        event_rate: 2000,
        tracing: false,
        only: None,
        callgrind_dir: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        if flag == "--tracing" {
            options.tracing = true;
            continue;
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        if flag == "--only" {
            if value.is_empty() || !value.chars().all(|c| ('a'..='k').contains(&c)) {
                bail!("--only {value}: scenario letters a to k\n{USAGE}");
            }
            options.only = Some(value);
            continue;
        }
        if flag == "--callgrind-dir" {
            options.callgrind_dir = Some(value.into());
            continue;
        }
        let number: u64 = value
            .parse()
            .with_context(|| format!("{flag} {value}: not a number\n{USAGE}"))?;
        match flag.as_str() {
            "--duration-secs" => options.duration = Duration::from_secs(number),
            "--rounds" => {
                options.rounds = u32::try_from(number)
                    .ok()
                    .filter(|rounds| *rounds > 0 && rounds.is_multiple_of(2))
                    .with_context(|| {
                        format!(
                            "--rounds {value}: must be positive and even, so that each order of the \
                             scenarios is taken as often as its reverse\n{USAGE}"
                        )
                    })?;
            }
            "--concurrency" => options.concurrency = usize::try_from(number)?,
            "--seed" => options.seed = usize::try_from(number)?,
            "--events" => options.events = number,
            "--publish-concurrency" => options.publish_concurrency = usize::try_from(number)?,
            "--event-rate" => options.event_rate = number,
            _ => bail!("unknown option {flag}\n{USAGE}"),
        }
    }
    if options.duration.is_zero() || options.concurrency == 0 || options.seed == 0 {
        bail!("duration, concurrency and seed must be positive\n{USAGE}");
    }
    if options.rounds == 0 {
        options.rounds = load::rounds_for(options.duration);
    }
    if !(1..=MAX_EVENTS).contains(&options.events)
        || !(1..=MAX_PUBLISH_CONCURRENCY).contains(&options.publish_concurrency)
        || !(1..=MAX_EVENTS).contains(&options.event_rate)
    {
        bail!(
            "events, publish concurrency and event rate must be positive, and at most \
             {MAX_EVENTS}, {MAX_PUBLISH_CONCURRENCY} and {MAX_EVENTS}\n{USAGE}"
        );
    }
    Ok(options)
}

// The framework's binaries allocate with mimalloc; so do the in-process
// baselines (and the load generator), so that every ratio compares code,
// not allocators.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = parse_args()?;
    binaries::use_release_profile();
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: the benchmark itself is a debug build; run it with `cargo run --release` \
             or the in-process baselines are not comparable"
        );
    }
    // Interrupted, the run is dropped, and with it every process it
    // started: none is left to load the machine the next run measures.
    tokio::select! {
        result = run(options) => result,
        () = microcore::service::shutdown_signal() => {
            anyhow::bail!("interrupted: the processes it started are stopped")
        }
    }
}

/// Starts the bench service `bin` (`bench-echo`, `bench-sink`) when the
/// workspace has it, and waits until the gateway routes `ready_path`.
async fn start_bench_service(
    system: &System,
    bin: &str,
    ready_path: &str,
) -> Option<ServiceProcess> {
    binaries::try_binary(bin)?;
    let process = system.spawn_service(bin, &[("RUST_LOG", "warn")]);
    system
        .wait_for_status(ready_path, reqwest::StatusCode::OK, wait::BOOT)
        .await;
    Some(process)
}

async fn seed(pool: &PgPool, count: usize) -> anyhow::Result<Vec<i64>> {
    let ids = sqlx::query_scalar(
        "INSERT INTO products.products (name, price) \
         SELECT 'seeded ' || n, n * 1.5 FROM generate_series(1, $1) AS n RETURNING id",
    )
    .bind(i32::try_from(count)?)
    .fetch_all(pool)
    .await?;
    Ok(ids)
}

async fn run(options: Options) -> anyhow::Result<()> {
    eprintln!("building release binaries and starting NATS, Postgres database, gateway, products…");
    // Built now, with the distributed binaries, so both topologies run the
    // same sources.
    let embedded_bin = binaries::try_binary("microcore");
    let mut system = System::builder()
        .gateway_env("RUST_LOG", "warn")
        .service_env("RUST_LOG", "warn")
        .start()
        .await;
    system.start_gateway().await;
    let mut products = system.start_products().await;
    system.wait_until_routable().await;
    let echo = start_bench_service(&system, "bench-echo", "/bench/ping").await;
    // The sink has no tables, but every service connects at boot.
    let sink = start_bench_service(&system, "bench-sink", "/bench/latency").await;

    let pool = PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .connect(system.db().url())
        .await
        .context("connecting the direct handler to the database")?;
    let ids = Arc::new(seed(&pool, options.seed).await?);

    let direct = serve(
        Router::new()
            .route("/products/{id}", get(direct_get))
            .route("/products", axum::routing::post(direct_create))
            .route(
                "/unstaged/products",
                axum::routing::post(direct_create_unstaged),
            )
            .with_state(Direct::connect(&system, pool).await?),
    )
    .await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let bare_hop = BareHop::start(&system, &client).await?;
    let hop_address = start_hop_in_process(&system).await?;

    let gateway = system.http().base().to_owned();
    let fixed = |url: String| -> MakeRequest {
        Arc::new(move |client: &reqwest::Client, _| client.get(url.clone()))
    };

    // What each scenario costs the processes beside the load generator
    // (the in-process baselines run inside it, so only NATS is watched
    // for them).
    let nats = Watched::new("nats", system.nats().process().pid());
    let gateway_pid = Watched::new("gateway", system.gateway().process().pid());
    let through_products = [
        gateway_pid,
        Watched::new("products", products.process().pid()),
        nats,
    ];
    let through_echo: Vec<Watched> = echo
        .iter()
        .map(|echo| Watched::new("bench-echo", echo.pid()))
        .chain([gateway_pid, nats])
        .collect();
    let only_nats = [nats];
    let through_bare_hop: Vec<Watched> = bare_hop
        .iter()
        .flat_map(|hop| {
            [
                Watched::new("hop-server", hop.server.pid()),
                Watched::new("hop-responder", hop.responder.pid()),
            ]
        })
        .chain([nats])
        .collect();

    let scenarios: Vec<(&str, Option<MakeRequest>, &[Watched])> = vec![
        (
            "(a) gateway GET /products/{id}",
            Some(get_by_id(gateway.clone(), ids.clone())),
            &through_products,
        ),
        (
            "(b) gateway POST /products",
            Some(create(gateway.clone())),
            &through_products,
        ),
        (
            "(c) direct GET /products/{id}",
            Some(get_by_id(format!("http://{direct}"), ids.clone())),
            &[],
        ),
        (
            "(c) direct POST /products (the same transaction, publish, delete)",
            Some(create(format!("http://{direct}"))),
            &only_nats,
        ),
        (
            "(c') direct POST, no outbox (INSERT, then publish)",
            Some(create(format!("http://{direct}/unstaged"))),
            &only_nats,
        ),
        (
            "(d) bare NATS hop GET /hop, two processes",
            bare_hop
                .as_ref()
                .map(|hop| fixed(format!("http://{}/hop", hop.address))),
            &through_bare_hop,
        ),
        (
            "(d') bare NATS hop GET /hop, in this process",
            Some(fixed(format!("http://{hop_address}/hop"))),
            &only_nats,
        ),
        (
            "(e) gateway GET /bench/ping",
            echo.as_ref()
                .map(|_| fixed(format!("{gateway}/bench/ping"))),
            &through_echo,
        ),
    ];
    // Every scenario measured in turn, round after round: the ratios
    // compare figures taken under the same conditions.
    let selected: Vec<_> = scenarios
        .into_iter()
        .filter(|(name, _, _)| {
            name.chars()
                .nth(1)
                .is_some_and(|letter| options.runs(letter))
        })
        .collect();
    let compared: Vec<(MakeRequest, &[Watched])> = selected
        .iter()
        .filter_map(|(_, make, watched)| Some((make.clone()?, *watched)))
        .collect();
    if !compared.is_empty() {
        eprintln!(
            "measuring {} HTTP scenarios in {} rounds…",
            compared.len(),
            options.rounds
        );
    }
    let mut measured = measure_in_rounds(&client, &options, &compared)
        .await
        .into_iter();
    let rows: Vec<(&str, Option<Measurement>)> = selected
        .iter()
        .map(|(name, make, _)| (*name, make.as_ref().and_then(|_| measured.next())))
        .collect();

    let event_rows = match (&echo, &sink) {
        _ if !options.runs('f') && !options.runs('g') => None,
        (Some(_), Some(_)) => {
            let event_options = EventOptions {
                events: options.events,
                publish_concurrency: options.publish_concurrency,
                rate_per_sec: options.event_rate,
                duration: options.duration,
            };
            Some(events::measure(&client, &gateway, &event_options).await?)
        }
        _ => None,
    };

    // The embedded process gets the machine the distributed one had: the
    // distributed processes stop (dropping one kills it); NATS and
    // Postgres stay, idle.
    drop((echo, sink, products, bare_hop));
    system.gateway().process().kill();
    let embedded_report = if options.runs('h') || options.runs('i') {
        embedded::measure(embedded_bin.as_deref(), &client, &options).await?
    } else {
        None
    };
    // Last, on their own systems, with every other process stopped.
    let tracing_report = if options.runs('j') {
        Some(tracing::measure(&client, &options).await?)
    } else {
        None
    };
    let instructions_report = if options.runs('k') {
        Some(instructions::measure(&client, options.seed, options.callgrind_dir.as_deref()).await?)
    } else {
        None
    };

    if !rows.is_empty() {
        print_report(&options, &rows);
    }
    if options.runs('f') || options.runs('g') {
        events::print_report(event_rows.as_deref());
    }
    if options.runs('h') || options.runs('i') {
        embedded::print_report(
            embedded_report.as_ref(),
            find(&rows, "(a)"),
            find(&rows, "(b)"),
        );
    }
    if let Some(report) = &tracing_report {
        tracing::print_report(report);
    }
    if let Some(report) = &instructions_report {
        instructions::print_report(report);
    }
    Ok(())
}

/// The measurement of the scenario whose name starts with `prefix`, if it
/// ran.
fn find<'a>(rows: &'a [(&str, Option<Measurement>)], prefix: &str) -> Option<&'a Measurement> {
    rows.iter()
        .find(|(name, _)| name.starts_with(prefix))
        .and_then(|(_, m)| m.as_ref())
}

/// The header of a table of [`print_row`] rows.
fn print_header(width: usize) {
    println!(
        "{:<width$} {:>10} {:>8} {:>11} {:>9} {:>9}  CPU µs per request",
        "scenario", "requests", "errors", "req/s", "p50 ms", "p99 ms"
    );
}

/// One scenario's line in an HTTP table.
fn print_row(name: &str, width: usize, m: &Measurement) {
    println!(
        "{name:<width$} {:>10} {:>8} {:>11.0} {:>9.2} {:>9.2}  {}",
        m.ok,
        m.errors,
        m.per_second(),
        m.quantile_ms(0.50),
        m.quantile_ms(0.99),
        cpu::describe(&m.cpu)
    );
}

fn print_report(options: &Options, rows: &[(&str, Option<Measurement>)]) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "microcore benchmark: {cores} cores shared by every process and the load generator, \
         concurrency {}, {} s per scenario after a warm-up, keep-alive HTTP/1.1 over loopback, \
         release binaries, {} seeded products",
        options.concurrency,
        options.duration.as_secs(),
        options.seed
    );
    println!();
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    print_header(width);
    for (name, measurement) in rows {
        match measurement {
            Some(m) => print_row(name, width, m),
            None => println!("{name:<width$} skipped: the workspace has no binary for it"),
        }
    }

    println!();
    println!(
        "{:<34} {:>18} {:>18}   throughput by round: median (lowest to highest)",
        "ratio", "throughput", "p50 latency"
    );
    for (label, through, baseline) in [
        ("(a)/(c) GET by id", "(a)", "(c) direct GET"),
        ("(b)/(c) POST", "(b)", "(c) direct POST"),
        ("(b)/(c') POST, outbox included", "(b)", "(c')"),
        ("(e)/(d) framework vs bare hop", "(e)", "(d)"),
        ("(e)/(d') vs bare hop in-process", "(e)", "(d')"),
    ] {
        match (find(rows, through), find(rows, baseline)) {
            (Some(hop), Some(base)) => println!(
                "{label:<34} {:>17.2}x {:>17.2}x   {}",
                hop.per_second() / base.per_second(),
                hop.quantile_ms(0.50) / base.quantile_ms(0.50),
                round_ratios(&hop.rounds, &base.rounds).map_or_else(String::new, |r| format!(
                    "{:.2}x ({:.2}x to {:.2}x)",
                    r.median, r.low, r.high
                ))
            ),
            _ => println!("{label:<34} {:>18} {:>18}", "n/a", "n/a"),
        }
    }
}
