//! Keeping the route table fresh.
//!
//! Instances announce themselves when they come up and when they leave, so
//! the table follows within milliseconds. A periodic `$SRV.INFO` sweep
//! (the NATS micro protocol) catches what announcements cannot: instances
//! that died without a word, and announcements lost while the connection
//! was down. The subscription to announcements is opened before the first
//! sweep, so an instance starting in between is not missed.
//!
//! One task owns the [`Registry`]; it handles one event at a time (an
//! announcement, or a whole sweep), and publishes a new snapshot only when
//! something changed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use microcore::transport::{Announcement, Transport, TransportError};
use shared_schemas::Subjects;
use tokio::task::JoinHandle;

use crate::registry::Registry;
use crate::routes::Conflict;
use crate::snapshot::{Snapshot, SnapshotCell};

/// How long a sweep waits for `$SRV.INFO` answers.
const SWEEP_WINDOW: Duration = Duration::from_millis(250);

/// The running discovery task; it stops when this is dropped.
pub struct Discovery {
    task: JoinHandle<()>,
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Subscribes to announcements, sweeps once, and keeps the returned cell
/// current from then on.
pub async fn start(
    transport: Arc<dyn Transport>,
    subjects: Subjects,
    interval: Duration,
    retention: Duration,
) -> Result<(Arc<SnapshotCell>, Discovery), TransportError> {
    let announcements = transport.announcements().await?;
    let mut registry = Registry::new(subjects);
    sweep(transport.as_ref(), &mut registry).await;
    let snapshot = registry.snapshot();
    report_new_conflicts(&[], &snapshot.conflicts);
    let cell = Arc::new(SnapshotCell::new(snapshot));
    let task = tokio::spawn(run(
        transport,
        registry,
        announcements,
        cell.clone(),
        interval,
        retention,
    ));
    Ok((cell, Discovery { task }))
}

async fn run(
    transport: Arc<dyn Transport>,
    mut registry: Registry,
    mut announcements: BoxStream<'static, Announcement>,
    cell: Arc<SnapshotCell>,
    interval: Duration,
    retention: Duration,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let changed = tokio::select! {
            announcement = announcements.next() => match announcement {
                Some(Announcement::Up(info)) => registry.up(info, Instant::now()),
                Some(Announcement::Down(down)) => registry.down(&down.name, &down.id, Instant::now()),
                None => {
                    tracing::warn!("the announcement stream ended; discovery continues by sweeps only");
                    announcements = stream::pending().boxed();
                    false
                }
            },
            _ = ticks.tick() => {
                let swept = sweep(transport.as_ref(), &mut registry).await;
                let expired = registry.expire(retention, Instant::now());
                swept || expired
            }
        };
        if changed {
            publish(&cell, registry.snapshot());
        }
    }
}

/// Asks every instance to describe itself and applies the answers. A failed
/// sweep changes nothing: the next one, or an announcement, will.
async fn sweep(transport: &dyn Transport, registry: &mut Registry) -> bool {
    let started = Instant::now();
    match transport.discover(SWEEP_WINDOW).await {
        Ok(found) => registry.sweep(found, started, Instant::now()),
        Err(e) => {
            tracing::warn!(error = %e, "discovery sweep failed; the routes stay as they are");
            false
        }
    }
}

fn publish(cell: &SnapshotCell, snapshot: Snapshot) {
    report_new_conflicts(&cell.load().conflicts, &snapshot.conflicts);
    tracing::debug!(
        routes = snapshot.table.routes().len(),
        live_services = snapshot.live.len(),
        "route table updated"
    );
    cell.store(snapshot);
}

/// Logs each conflict once, when it appears (all of them: `/system/routes`).
fn report_new_conflicts(before: &[Conflict], now: &[Conflict]) {
    for conflict in now.iter().filter(|c| !before.contains(c)) {
        tracing::warn!(
            kind = ?conflict.kind,
            method = %conflict.method,
            path = %conflict.path,
            service = %conflict.service,
            kept_by = conflict.kept_by.as_ref().map(|o| o.service.as_str()),
            reason = %conflict.reason,
            "route conflict"
        );
    }
}
