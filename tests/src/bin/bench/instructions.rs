//! (k): what tracing costs in instructions, with `--tracing`.
//!
//! The losses (j) measures are a few percent, and on shared cores two
//! identical systems drift apart by as much. This part counts instead:
//! the gateway and the products service run under callgrind, the same
//! requests are sent one at a time in each configuration of (j) ("off"
//! once: a count does not drift), and each process's instructions per
//! request are read off the counters, zeroed before the requests and
//! dumped after them. The same binaries and requests give the same count
//! whatever else the machine is doing, so a change of a few hundred
//! instructions per request shows.
//!
//! What it leaves out: the kernel's work (system calls, the loopback TCP
//! stack), NATS and Postgres. So it is not a throughput figure: it says how
//! much of the two processes' own work tracing adds, and where ((j) shows
//! what that does to throughput). The export of a batch of spans, on the
//! SDK's own thread, counts once its batch leaves within the measured
//! requests or the wait after them ([`EXPORT_WAIT`], longer than the SDK's
//! 5 s schedule); the work a process does while idle in that time (timers,
//! NATS pings) is measured on its own first and taken off. The gateway's
//! discovery sweep is set to an hour, so that no sweep falls into one
//! configuration's window and not another's (announcements still act at
//! once).
//!
//! Skipped when `valgrind` is not installed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use microcore_e2e::otlp::Collector;
use microcore_e2e::{Launcher, System};

use crate::load::MakeRequest;
use crate::tracing::{CONFIGURATIONS, Configuration, start_seeded};
use crate::{create, get_by_id};

/// Requests counted per configuration and method.
const REQUESTS: u64 = 2000;

/// Requests sent before counting: connections, prepared statements and
/// caches warm, every lazily built thing built.
const WARM_UP: u64 = 300;

/// How long the counters keep running after the requests: the SDK
/// exports a batch at the latest 5 s after its first span.
const EXPORT_WAIT: Duration = Duration::from_secs(6);

/// Instructions per request of the gateway and of products.
type PerRequest = [f64; 2];

/// What one configuration counted.
struct Count {
    configuration: &'static Configuration,
    get: PerRequest,
    create: PerRequest,
}

/// Everything the instruction count measured; `None`: skipped.
pub struct InstructionsReport {
    counts: Option<Vec<Count>>,
}

/// A process running under callgrind, whose counters are driven with
/// `callgrind_control`.
struct Counted {
    pid: u32,
    /// Where callgrind writes the process's dumps, numbered from 1.
    out: PathBuf,
    dumps: u32,
}

impl Counted {
    fn new(directory: &Path, pid: u32) -> Self {
        Self {
            pid,
            out: directory.join(format!("callgrind.{pid}")),
            dumps: 0,
        }
    }

    fn control(&self, flag: &str) -> anyhow::Result<()> {
        let output = Command::new("callgrind_control")
            .arg(flag)
            .arg(self.pid.to_string())
            .output()
            .context("running callgrind_control")?;
        if !output.status.success() {
            bail!(
                "callgrind_control {flag} {} failed ({}): {}",
                self.pid,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    fn zero(&self) -> anyhow::Result<()> {
        self.control("-z")
    }

    /// Dumps the counters and reads the instructions counted since they
    /// were zeroed.
    fn dump(&mut self) -> anyhow::Result<u64> {
        self.control("-d")?;
        self.dumps += 1;
        let path = PathBuf::from(format!("{}.{}", self.out.display(), self.dumps));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the callgrind dump {}", path.display()))?;
        text.lines()
            .find_map(|line| {
                let total = line
                    .strip_prefix("summary:")
                    .or_else(|| line.strip_prefix("totals:"))?;
                total.split_whitespace().next()?.parse().ok()
            })
            .with_context(|| format!("no instruction total in {}", path.display()))
    }
}

/// Whether `valgrind` runs here.
fn valgrind_installed() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Counts (a) and (b) in every configuration of (j) but the second "off",
/// leaving callgrind's dumps in `keep_in` when it is given.
pub async fn measure(
    client: &reqwest::Client,
    seeded: usize,
    keep_in: Option<&Path>,
) -> anyhow::Result<InstructionsReport> {
    if !valgrind_installed() {
        return Ok(InstructionsReport { counts: None });
    }
    let temporary;
    let directory = match keep_in {
        Some(directory) => {
            std::fs::create_dir_all(directory)
                .with_context(|| format!("creating {}", directory.display()))?;
            eprintln!("callgrind's dumps go to {}", directory.display());
            directory
        }
        None => {
            temporary =
                tempfile::tempdir().context("creating a directory for callgrind's dumps")?;
            temporary.path()
        }
    };
    let mut counts = Vec::new();
    for configuration in CONFIGURATIONS.iter().take(4) {
        eprintln!(
            "instructions {}: starting the gateway and products under callgrind…",
            configuration.label
        );
        counts.push(count(client, configuration, directory, seeded).await?);
    }
    Ok(InstructionsReport {
        counts: Some(counts),
    })
}

/// Starts a system in `configuration` under callgrind and counts what
/// (a) and (b) cost each process.
async fn count(
    client: &reqwest::Client,
    configuration: &'static Configuration,
    directory: &Path,
    seeded: usize,
) -> anyhow::Result<Count> {
    let collector = Collector::counting().await;
    let out_file = directory.join("callgrind.%p");
    let launcher = Launcher {
        program: PathBuf::from("valgrind"),
        args: vec![
            OsString::from("--tool=callgrind"),
            OsString::from(format!("--callgrind-out-file={}", out_file.display())),
        ],
    };
    let builder = System::builder()
        .launcher(launcher)
        .gateway_env("MC_DISCOVERY_INTERVAL_MS", 3_600_000);
    let (mut system, mut products, ids) =
        start_seeded(builder, configuration, &collector, seeded).await?;

    let base = system.http().base().to_owned();
    let mut counted = [
        Counted::new(directory, system.gateway().process().pid()),
        Counted::new(directory, products.process().pid()),
    ];
    let idle = idle_rate(&mut counted).await?;
    let get = per_request(client, &get_by_id(base.clone(), ids), &mut counted, idle).await?;
    let create = per_request(client, &create(base), &mut counted, idle).await?;
    Ok(Count {
        configuration,
        get,
        create,
    })
}

/// Instructions per second each process spends while no request comes.
async fn idle_rate(counted: &mut [Counted; 2]) -> anyhow::Result<PerRequest> {
    for process in counted.iter() {
        process.zero()?;
    }
    let started = Instant::now();
    tokio::time::sleep(EXPORT_WAIT).await;
    let mut rates = [0.0; 2];
    for (rate, process) in rates.iter_mut().zip(counted.iter_mut()) {
        *rate = process.dump()? as f64 / started.elapsed().as_secs_f64();
    }
    Ok(rates)
}

/// Sends [`WARM_UP`] requests, zeroes the counters, sends [`REQUESTS`]
/// one at a time, waits [`EXPORT_WAIT`], and reads what each process
/// spent per request, less what it would have spent idle.
async fn per_request(
    client: &reqwest::Client,
    make: &MakeRequest,
    counted: &mut [Counted; 2],
    idle: PerRequest,
) -> anyhow::Result<PerRequest> {
    send(client, make, 0..WARM_UP).await?;
    for process in counted.iter() {
        process.zero()?;
    }
    let started = Instant::now();
    send(client, make, WARM_UP..WARM_UP + REQUESTS).await?;
    tokio::time::sleep(EXPORT_WAIT).await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut per_request = [0.0; 2];
    for ((cost, process), idle) in per_request.iter_mut().zip(counted.iter_mut()).zip(idle) {
        let spent = process.dump()? as f64 - idle * elapsed;
        *cost = spent.max(0.0) / REQUESTS as f64;
    }
    Ok(per_request)
}

/// Sends the requests numbered `numbers` one after the other; any that
/// fails ends the count.
async fn send(
    client: &reqwest::Client,
    make: &MakeRequest,
    numbers: std::ops::Range<u64>,
) -> anyhow::Result<()> {
    for n in numbers {
        let response = make(client, n).send().await?;
        let status = response.status();
        response.bytes().await?;
        if !status.is_success() {
            bail!("request {n} answered {status}");
        }
    }
    Ok(())
}

/// The instruction section: each process's instructions per request, and
/// each configuration's against "off".
pub fn print_report(report: &InstructionsReport) {
    println!();
    let Some(counts) = &report.counts else {
        println!("instructions (k): skipped, valgrind is not installed");
        return;
    };
    println!(
        "instructions (k): the gateway and products under callgrind, {REQUESTS} requests one at a \
         time per configuration after {WARM_UP} more, instructions per request in user space \
         (the kernel, NATS and Postgres not counted), the export of the spans included"
    );
    println!();
    let width = counts
        .iter()
        .map(|count| count.configuration.label.len())
        .chain(["configuration".len()])
        .max()
        .unwrap_or(0);
    println!(
        "{:<width$} {:>24} {:>10} {:>24} {:>10}",
        "configuration",
        "GET: gateway + products",
        "GET / off",
        "POST: gateway + products",
        "POST / off"
    );
    let off = counts.first();
    let total = |per_request: &PerRequest| per_request.iter().sum::<f64>();
    for count in counts {
        let against_off = |of: fn(&Count) -> &PerRequest| {
            off.map_or(f64::NAN, |off| total(of(count)) / total(of(off)))
        };
        let describe = |per_request: &PerRequest| {
            format!(
                "{:.1}k + {:.1}k",
                per_request[0] / 1e3,
                per_request[1] / 1e3
            )
        };
        println!(
            "{:<width$} {:>24} {:>9.3}x {:>24} {:>9.3}x",
            count.configuration.label,
            describe(&count.get),
            against_off(|count| &count.get),
            describe(&count.create),
            against_off(|count| &count.create),
        );
    }
}
