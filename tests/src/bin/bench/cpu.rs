//! What each request costs the processes that serve it, in CPU time.
//!
//! Throughput says how fast the whole machine went; the CPU time each
//! process spends per request says where the work went, so a change shows
//! in the process it lands in. It moves with contention too (a busier
//! neighbour on the shared cores slows every process down), so compare
//! figures of one run. Read from `/proc/<pid>/stat`: user and system time
//! of every thread, those that have exited included.

use std::time::Duration;

use anyhow::Context as _;

/// A process whose CPU time a scenario reports.
#[derive(Clone, Copy)]
pub(crate) struct Watched {
    pub name: &'static str,
    pub pid: u32,
}

impl Watched {
    pub fn new(name: &'static str, pid: u32) -> Self {
        Self { name, pid }
    }
}

/// What one process spent on a scenario's requests.
pub(crate) struct CpuPerRequest {
    pub name: &'static str,
    pub per_request: Duration,
}

/// The CPU time of the watched processes at one moment.
pub(crate) struct CpuReading(Vec<(Watched, Duration)>);

impl CpuReading {
    /// Reads every process of `watched`; one that has gone is left out.
    pub fn now(watched: &[Watched]) -> Self {
        Self(
            watched
                .iter()
                .filter_map(|w| cpu_time(w.pid).ok().map(|t| (*w, t)))
                .collect(),
        )
    }

    /// What each process spent since `self`, per request of `requests`.
    pub fn per_request_since(&self, requests: u64) -> Vec<CpuPerRequest> {
        let later = Self::now(&self.0.iter().map(|(w, _)| *w).collect::<Vec<_>>());
        self.0
            .iter()
            .filter_map(|(watched, before)| {
                let (_, after) = later.0.iter().find(|(w, _)| w.pid == watched.pid)?;
                let spent = after.saturating_sub(*before);
                Some(CpuPerRequest {
                    name: watched.name,
                    per_request: spent / u32::try_from(requests.max(1)).unwrap_or(u32::MAX),
                })
            })
            .collect()
    }
}

/// User plus system time of process `pid`, all its threads.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name, in parentheses, may hold spaces: fields are
    // counted after its closing parenthesis, from field 3 (the state).
    let after_name = stat
        .rsplit_once(')')
        .with_context(|| format!("{path}: no command name"))?
        .1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |field: usize| -> anyhow::Result<u64> {
        let text = fields
            .get(field - 3)
            .with_context(|| format!("{path}: no field {field}"))?;
        text.parse()
            .with_context(|| format!("{path}: field {field} {text:?} is not a number"))
    };
    // Fields 14 and 15: utime and stime, in clock ticks.
    let total = ticks(14)? + ticks(15)?;
    let per_second = rustix::param::clock_ticks_per_second().max(1);
    Ok(Duration::from_micros(total * 1_000_000 / per_second))
}

/// `gateway 41 + products 77 µs`, or `` when nothing was watched.
pub(crate) fn describe(cpu: &[CpuPerRequest]) -> String {
    cpu.iter()
        .map(|p| format!("{} {}", p.name, p.per_request.as_micros()))
        .collect::<Vec<_>>()
        .join(" + ")
}
