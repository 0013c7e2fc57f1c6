//! (j): what tracing costs, with `--tracing`.
//!
//! The gateway and the services export OpenTelemetry spans over OTLP/HTTP
//! when an OTLP endpoint is set, sampled as `OTEL_TRACES_SAMPLER` says.
//! Turning that on must not cost much: at 10% sampling less than 5% of the
//! throughput, at 100% less than 15%. The benchmark runs one distributed
//! system (NATS, a database, the gateway and the products service, the
//! processes of (a) and (b)) per configuration:
//!
//! - off: no endpoint, so no span is built for export at all;
//! - on, 0%: `always_off`, what carrying the trace context of unsampled
//!   requests costs (nine in ten at 10%);
//! - on, 100%: `always_on`;
//! - on, 10%: `parentbased_traceidratio` at `0.1`, which the gateway
//!   decides at the root (the load sends no `traceparent`) and the
//!   products service follows;
//! - off again,
//!
//! all of them started and seeded first, then measures (a) `GET
//! /products/{id}` and (b) `POST /products` through each gateway, and
//! reports each configuration's throughput against "off". One system per
//! configuration, so that none inherits another's table or stream. The
//! targets are a few percent, less than what a shared machine drifts by
//! over a minute, so each configuration's measured time is cut into
//! rounds taken in turn across the systems, and drift weighs on all of
//! them alike; "off" runs twice, the baseline is the mean of both, and how
//! far they are apart is printed as the noise the other ratios are to be
//! read against. The targets are judged on the median round's loss, which
//! a round disturbed from outside (a checkpoint of the shared Postgres,
//! say) does not move.
//!
//! "On" sets `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, the traces signal
//! alone: the general `OTEL_EXPORTER_OTLP_ENDPOINT` would push metrics over
//! OTLP too, a cost of its own that is not tracing's.
//!
//! Spans go to an OTLP receiver inside the benchmark ([`Collector`]), in
//! the default protocol, `http/protobuf`, with the SDK's default batching
//! (a batch every 5 s or every 512 spans, a queue of 2048): what a
//! deployment gets unless it tunes them. The receiver only counts the
//! spans, so it takes next to nothing from the shared cores; the count,
//! taken once the processes have stopped gracefully (which flushes their
//! last batch), shows that export really happened — none when off. Spans
//! a full queue drops are neither exported nor counted: fewer spans per
//! request at 100% than the sampling alone explains would mean the
//! measured overhead leaves out work that was not done.

use std::sync::Arc;

use anyhow::Context as _;
use microcore_e2e::otlp::Collector;
use microcore_e2e::{ServiceInstance, System, SystemBuilder, wait};
use sqlx::postgres::PgPoolOptions;

use crate::cpu::{self, Watched};
use crate::load::{MakeRequest, RoundRatios, measure_in_rounds, round_ratios};
use crate::{Measurement, Options, create, get_by_id, seed};

/// The protocol spans are exported in: the exporter's default, named.
const PROTOCOL: &str = "http/protobuf";

/// The most throughput a configuration may lose against "off".
const TARGET_LOSS_AT_10_PERCENT: f64 = 0.05;
const TARGET_LOSS_AT_100_PERCENT: f64 = 0.15;

/// One way of running the gateway and the products service.
pub(crate) struct Configuration {
    pub label: &'static str,
    /// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`; `None`: no
    /// export at all.
    sampler: Option<(&'static str, Option<&'static str>)>,
    /// Whether the receiver is to get spans.
    exports: bool,
    /// The most throughput it may lose against "off", for its target.
    target_loss: Option<f64>,
}

pub(crate) const CONFIGURATIONS: [Configuration; 5] = [
    Configuration {
        label: "off (no OTLP endpoint)",
        sampler: None,
        exports: false,
        target_loss: None,
    },
    Configuration {
        label: "on, 0% (always_off)",
        sampler: Some(("always_off", None)),
        exports: false,
        target_loss: None,
    },
    Configuration {
        label: "on, 100% (always_on)",
        sampler: Some(("always_on", None)),
        exports: true,
        target_loss: Some(TARGET_LOSS_AT_100_PERCENT),
    },
    Configuration {
        label: "on, 10% (parentbased_traceidratio 0.1)",
        sampler: Some(("parentbased_traceidratio", Some("0.1"))),
        exports: true,
        target_loss: Some(TARGET_LOSS_AT_10_PERCENT),
    },
    Configuration {
        label: "off again (no OTLP endpoint)",
        sampler: None,
        exports: false,
        target_loss: None,
    },
];

/// What one configuration measured.
struct Run {
    configuration: &'static Configuration,
    get: Measurement,
    create: Measurement,
    /// Spans the receiver counted, the warm-ups' included.
    spans: usize,
    /// Export requests it accepted.
    export_requests: usize,
}

/// Everything the tracing part measured, in [`CONFIGURATIONS`]' order.
pub struct TracingReport {
    runs: Vec<Run>,
}

/// The variables of `configuration` for the gateway and the services.
pub(crate) fn environment(
    configuration: &Configuration,
    collector: &Collector,
) -> Vec<(&'static str, String)> {
    let mut env = vec![("RUST_LOG", "warn".to_owned())];
    if let Some((sampler, argument)) = configuration.sampler {
        // Traces only: the general endpoint would push metrics over OTLP
        // too, which is not what is measured here.
        let traces = format!("{}/v1/traces", collector.endpoint());
        env.push(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces));
        env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", PROTOCOL.to_owned()));
        env.push(("OTEL_TRACES_SAMPLER", sampler.to_owned()));
        if let Some(argument) = argument {
            env.push(("OTEL_TRACES_SAMPLER_ARG", argument.to_owned()));
        }
    }
    env
}

/// A system running in one configuration.
struct Running {
    configuration: &'static Configuration,
    collector: Collector,
    system: System,
    products: ServiceInstance,
    ids: Arc<Vec<i64>>,
    watched: [Watched; 3],
}

/// Starts the system `builder` describes with the gateway and products
/// in `configuration`, exporting to `collector`, waits until it routes,
/// and seeds `seeded` products; their ids.
pub(crate) async fn start_seeded(
    mut builder: SystemBuilder,
    configuration: &Configuration,
    collector: &Collector,
    seeded: usize,
) -> anyhow::Result<(System, ServiceInstance, Arc<Vec<i64>>)> {
    for (name, value) in environment(configuration, collector) {
        builder = builder.gateway_env(name, &value).service_env(name, &value);
    }
    let mut system = builder.start().await;
    system.start_gateway().await;
    let products = system.start_products().await;
    system.wait_until_routable().await;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(system.db().url())
        .await
        .context("connecting to the database to seed it")?;
    let ids = Arc::new(seed(&pool, seeded).await?);
    pool.close().await;
    Ok((system, products, ids))
}

/// Starts a fresh system in `configuration` and seeds it.
async fn start(
    configuration: &'static Configuration,
    options: &Options,
) -> anyhow::Result<Running> {
    eprintln!(
        "tracing {}: starting NATS, a database, gateway, products…",
        configuration.label
    );
    // Started for "off" too: that it receives nothing is part of the
    // check.
    let collector = Collector::counting().await;
    let (mut system, mut products, ids) =
        start_seeded(System::builder(), configuration, &collector, options.seed).await?;
    let watched = [
        Watched::new("gateway", system.gateway().process().pid()),
        Watched::new("products", products.process().pid()),
        Watched::new("nats", system.nats().process().pid()),
    ];
    Ok(Running {
        configuration,
        collector,
        system,
        products,
        ids,
        watched,
    })
}

/// Measures (a) and then (b) on every system (see [`measure_on_each`]).
pub async fn measure(client: &reqwest::Client, options: &Options) -> anyhow::Result<TracingReport> {
    let mut running = Vec::new();
    for configuration in &CONFIGURATIONS {
        running.push(start(configuration, options).await?);
    }
    let gets = measure_on_each(client, options, &running, "GET /products/{id}", |r| {
        get_by_id(r.system.http().base().to_owned(), r.ids.clone())
    })
    .await;
    let creates = measure_on_each(client, options, &running, "POST /products", |r| {
        create(r.system.http().base().to_owned())
    })
    .await;

    let mut runs = Vec::new();
    for ((mut r, get), create) in running.into_iter().zip(gets).zip(creates) {
        // A graceful stop flushes each exporter's last batch; once both
        // have exited, every span they kept has been answered.
        r.system.gateway().process().terminate(wait::SHUTDOWN).await;
        r.products.terminate().await;
        runs.push(Run {
            configuration: r.configuration,
            get,
            create,
            spans: r.collector.span_count(),
            export_requests: r.collector.export_requests(),
        });
    }
    Ok(TracingReport { runs })
}

/// Measures the requests `make` builds for each system: a warm-up each,
/// then `options.rounds` slices of the measured time, one system after
/// the other in each round, so that whatever drifts on the shared machine
/// weighs on all configurations alike.
async fn measure_on_each(
    client: &reqwest::Client,
    options: &Options,
    running: &[Running],
    name: &str,
    make: impl Fn(&Running) -> MakeRequest,
) -> Vec<Measurement> {
    eprintln!(
        "tracing: measuring {name} on every configuration, {} rounds…",
        options.rounds
    );
    let compared: Vec<(MakeRequest, &[Watched])> = running
        .iter()
        .map(|r| (make(r), r.watched.as_slice()))
        .collect();
    measure_in_rounds(client, options, &compared).await
}

/// The baseline the configurations are compared with: the mean
/// throughput of the "off" runs, GET and POST.
struct Baseline {
    get_per_second: f64,
    create_per_second: f64,
    /// The same means, round by round.
    get_rounds: Vec<f64>,
    create_rounds: Vec<f64>,
}

impl Baseline {
    /// `None` when no "off" run is in `runs`.
    fn of(runs: &[Run]) -> Option<Self> {
        let off: Vec<&Run> = runs
            .iter()
            .filter(|run| run.configuration.sampler.is_none())
            .collect();
        if off.is_empty() {
            return None;
        }
        let mean = |throughput: fn(&Run) -> f64| {
            off.iter().map(|run| throughput(run)).sum::<f64>() / off.len() as f64
        };
        let mean_by_round = |measurement: fn(&Run) -> &Measurement| {
            let rounds = off.iter().map(|run| measurement(run).rounds.len()).min();
            (0..rounds.unwrap_or(0))
                .map(|i| {
                    let taken: Vec<f64> = off
                        .iter()
                        .filter_map(|run| measurement(run).rounds.get(i).copied())
                        .collect();
                    taken.iter().sum::<f64>() / taken.len() as f64
                })
                .collect()
        };
        Some(Self {
            get_per_second: mean(|run| run.get.per_second()),
            create_per_second: mean(|run| run.create.per_second()),
            get_rounds: mean_by_round(|run| &run.get),
            create_rounds: mean_by_round(|run| &run.create),
        })
    }

    /// `run`'s GET and POST throughput as multiples of the baseline's.
    fn ratios(&self, run: &Run) -> (f64, f64) {
        (
            run.get.per_second() / self.get_per_second,
            run.create.per_second() / self.create_per_second,
        )
    }

    /// `run`'s GET and POST throughput as multiples of the baseline's,
    /// round by round.
    fn round_ratios(&self, run: &Run) -> [Option<RoundRatios>; 2] {
        [
            round_ratios(&run.get.rounds, &self.get_rounds),
            round_ratios(&run.create.rounds, &self.create_rounds),
        ]
    }
}

/// The loss a throughput ratio means, in percent.
fn loss(ratio: f64) -> f64 {
    (1.0 - ratio) * 100.0
}

/// The losses `ratios` mean, round by round.
fn describe_losses(ratios: &RoundRatios) -> String {
    format!(
        "{:.1}% (rounds {:.1}% to {:.1}%)",
        loss(ratios.median),
        loss(ratios.high),
        loss(ratios.low)
    )
}

/// The tracing section: the load per configuration, its ratio to "off",
/// the spans exported, and the targets.
pub fn print_report(report: &TracingReport) {
    println!();
    let Some(baseline) = Baseline::of(&report.runs) else {
        println!("tracing overhead: no configuration without tracing ran");
        return;
    };
    println!(
        "tracing overhead (j): a gateway + products per configuration, measured in turn in \
         {} rounds, (a) GET \
         /products/{{id}} and (b) POST /products through the gateway; spans exported over \
         OTLP/HTTP ({PROTOCOL}, the SDK's default batching) to a receiver in the benchmark that \
         only counts them",
        baseline.get_rounds.len()
    );
    println!();
    let width = report
        .runs
        .iter()
        .map(|run| run.configuration.label.len())
        .chain(["configuration".len()])
        .max()
        .unwrap_or(0);
    println!(
        "{:<width$} {:>10} {:>8} {:>8} {:>10} {:>8} {:>8} {:>10} {:>10}",
        "configuration",
        "GET req/s",
        "p50 ms",
        "p99 ms",
        "POST req/s",
        "p50 ms",
        "p99 ms",
        "GET / off",
        "POST / off"
    );
    for run in &report.runs {
        let (get_ratio, create_ratio) = baseline.ratios(run);
        println!(
            "{:<width$} {:>10.0} {:>8.2} {:>8.2} {:>10.0} {:>8.2} {:>8.2} {:>9.3}x {:>9.3}x",
            run.configuration.label,
            run.get.per_second(),
            run.get.quantile_ms(0.50),
            run.get.quantile_ms(0.99),
            run.create.per_second(),
            run.create.quantile_ms(0.50),
            run.create.quantile_ms(0.99),
            get_ratio,
            create_ratio,
        );
    }
    println!("/ off: throughput against the mean of the two systems without tracing");

    println!();
    println!(
        "{:<width$}  {:<40}  {:<40}",
        "configuration", "GET: CPU µs per request", "POST: CPU µs per request"
    );
    for run in &report.runs {
        println!(
            "{:<width$}  {:<40}  {:<40}",
            run.configuration.label,
            cpu::describe(&run.get.cpu),
            cpu::describe(&run.create.cpu),
        );
    }
    println!(
        "CPU: user and system time each process spent in the measured seconds, per answered \
         request: where the cost of tracing lands"
    );

    println!();
    println!(
        "{:<width$} {:>8} {:>8} {:>12} {:>16} {:>20}",
        "configuration", "requests", "errors", "spans", "export requests", "spans per request"
    );
    for run in &report.runs {
        let requests = run.get.ok + run.create.ok;
        let errors = run.get.errors + run.create.errors;
        println!(
            "{:<width$} {:>8} {:>8} {:>12} {:>16} {:>20.2}",
            run.configuration.label,
            requests,
            errors,
            run.spans,
            run.export_requests,
            run.spans as f64 / requests as f64
        );
    }
    println!(
        "requests: answered in the measured seconds of (a) and (b); spans: everything received, \
         the warm-ups' (a fifth of the measured time or more) and the readiness probes' \
         included, so spans per request overstates by about that share"
    );

    for run in &report.runs {
        let exported = run.spans > 0;
        if exported != run.configuration.exports {
            println!(
                "WARNING {}: {} spans received, which is not what it is configured for",
                run.configuration.label, run.spans
            );
        }
    }

    // Judged on the median round: the ratio of the totals is printed
    // above, and moves with a round that something outside disturbed.
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    println!();
    for run in &report.runs {
        let Some(target) = run.configuration.target_loss else {
            continue;
        };
        let [Some(get), Some(create)] = baseline.round_ratios(run) else {
            continue;
        };
        let met = loss(get.median) < target * 100.0 && loss(create.median) < target * 100.0;
        println!(
            "target {}: throughput loss < {:.0}% in the median round: GET {}, POST {}, {}",
            run.configuration.label,
            target * 100.0,
            describe_losses(&get),
            describe_losses(&create),
            verdict(met)
        );
    }
    let off: Vec<&Run> = report
        .runs
        .iter()
        .filter(|run| run.configuration.sampler.is_none())
        .collect();
    if let [first, last] = off.as_slice() {
        let drift = |now: &Measurement, before: &Measurement| {
            let median = round_ratios(&now.rounds, &before.rounds).map_or(f64::NAN, |r| r.median);
            format!(
                "{:+.1}% (median round {:+.1}%)",
                (now.per_second() / before.per_second() - 1.0) * 100.0,
                (median - 1.0) * 100.0
            )
        };
        println!(
            "noise: without tracing, the second system against the first: GET {}, POST {}; \
             losses within that say little",
            drift(&last.get, &first.get),
            drift(&last.create, &first.create)
        );
    }
}
