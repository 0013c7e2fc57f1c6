//! The `probe` service: subscribers, a request-reply handler and an outbox
//! user whose behaviour each event's payload decides, and which write down
//! what they saw in their own tables. The event-bus suites drive it with
//! events and read the tables.
//!
//! Environment: `PROBE_INSTANCE` (name written with each row),
//! `PROBE_RETRIES` (default 2), `PROBE_BACKOFF_MS` (default 100),
//! `PROBE_CONCURRENCY` (default 4), `PROBE_RESPONDER=off` (no `probe.echo`
//! handler in this instance).

use std::time::Duration;

use microcore::prelude::*;
use microcore::{Domain, Migrations, PluginEntry, Service};

/// What every probe event may ask of its handler.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Work {
    seq: i64,
    /// Fail this many attempts before succeeding; negative: always fail.
    fail_times: i64,
    sleep_ms: u64,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn instance() -> String {
    std::env::var("PROBE_INSTANCE").unwrap_or_else(|_| "probe".to_owned())
}

/// Subscribes the default way, to a worker pool and to broadcasts.
struct WorkerPlugin {
    bus: Bus,
    db: Db,
}

impl Plugin for WorkerPlugin {
    type Tools = (Bus, Db);

    fn new((bus, db): Self::Tools) -> Self {
        Self { bus, db }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        let retries = env_or("PROBE_RETRIES", 2);
        let backoff = Duration::from_millis(env_or("PROBE_BACKOFF_MS", 100));
        let concurrency = env_or("PROBE_CONCURRENCY", 4);
        self.bus
            .subscribe("probe.work")
            .retries(retries)
            .backoff(backoff)
            .concurrency(concurrency)
            .handler(&self, Self::work)?;
        self.bus
            .subscribe("probe.pool")
            .group("pool")
            .handler(&self, Self::work)?;
        self.bus
            .subscribe("probe.broadcast")
            .broadcast()
            .handler(&self, Self::work)?;
        self.bus
            .subscribe("probe.chain")
            .handler(&self, Self::chain)?;
        Ok(())
    }
}

impl WorkerPlugin {
    async fn work(self: Arc<Self>, event: EventEnvelope<Work>) -> EventResult {
        let subscriber = format!("worker.{}", event.event);
        record_attempt(&self.db, &event, &subscriber).await?;
        let attempts: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM attempts WHERE event_id = $1 AND subscriber = $2",
        )
        .bind(&event.id)
        .bind(&subscriber)
        .fetch_one(self.db.pool())
        .await?;
        tokio::time::sleep(Duration::from_millis(event.payload.sleep_ms)).await;
        let fail_times = event.payload.fail_times;
        if fail_times < 0 || attempts <= fail_times {
            return Err(format!("planned failure {attempts}").into());
        }
        record_handled(&self.db, &event, &subscriber).await
    }

    /// Publishes `probe.chained` from inside a handler.
    async fn chain(self: Arc<Self>, event: EventEnvelope<Work>) -> EventResult {
        self.bus
            .publish(
                "probe.chained",
                &serde_json::json!({ "seq": event.payload.seq }),
            )
            .await?;
        Ok(())
    }
}

/// A second plugin on the same events: its own copy of `probe.work`, and a
/// member of the same `pool` as the worker.
struct OtherWorkerPlugin {
    bus: Bus,
    db: Db,
}

impl Plugin for OtherWorkerPlugin {
    type Tools = (Bus, Db);

    fn new((bus, db): Self::Tools) -> Self {
        Self { bus, db }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        self.bus
            .subscribe("probe.work")
            .handler(&self, Self::work)?;
        self.bus
            .subscribe("probe.pool")
            .group("pool")
            .handler(&self, Self::work)?;
        Ok(())
    }
}

impl OtherWorkerPlugin {
    async fn work(self: Arc<Self>, event: EventEnvelope<Work>) -> EventResult {
        record_handled(&self.db, &event, &format!("other.{}", event.event)).await
    }
}

/// Writes a row and stages events in one transaction (`probe.stage`), and
/// asks `probe.echo` (`probe.ask`), recording the outcome.
struct CallerPlugin {
    bus: Bus,
    db: Db,
}

#[derive(Deserialize)]
struct Stage {
    count: usize,
    rollback: bool,
}

#[derive(Deserialize)]
struct Ask {
    timeout_ms: u64,
    #[serde(flatten)]
    echo: Echo,
}

#[derive(Serialize, Deserialize)]
struct Echo {
    sleep_ms: u64,
    reject: bool,
}

impl Plugin for CallerPlugin {
    type Tools = (Bus, Db);

    fn new((bus, db): Self::Tools) -> Self {
        Self { bus, db }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        self.bus
            .subscribe("probe.stage")
            .handler(&self, Self::stage)?;
        self.bus.subscribe("probe.ask").handler(&self, Self::ask)?;
        Ok(())
    }
}

impl CallerPlugin {
    async fn stage(self: Arc<Self>, event: EventEnvelope<Stage>) -> EventResult {
        let mut tx = self.db.begin().await?;
        let written =
            sqlx::query("INSERT INTO writes (trigger_id) VALUES ($1) ON CONFLICT DO NOTHING")
                .bind(&event.id)
                .execute(&mut *tx)
                .await?;
        if written.rows_affected() == 0 {
            return Ok(()); // a redelivery of a trigger already handled
        }
        for seq in 0..event.payload.count {
            self.bus
                .publish_in(&mut tx, "probe.work", &serde_json::json!({ "seq": seq }))
                .await?;
        }
        if event.payload.rollback {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(())
    }

    async fn ask(self: Arc<Self>, event: EventEnvelope<Ask>) -> EventResult {
        let timeout = Duration::from_millis(event.payload.timeout_ms);
        let outcome = match self
            .bus
            .request::<_, Echo>("probe.echo", &event.payload.echo, timeout)
            .await
        {
            Ok(echo) => format!("ok {}", echo.sleep_ms),
            Err(RpcError::NoResponder(_)) => "no responder".to_owned(),
            Err(RpcError::TimedOut { .. }) => "timed out".to_owned(),
            Err(RpcError::Rejected { message, .. }) => format!("rejected: {message}"),
            Err(e) => format!("failed: {e}"),
        };
        sqlx::query(
            "INSERT INTO asked (trigger_id, outcome) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(&event.id)
        .bind(outcome)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }
}

/// Answers `probe.echo` unless `PROBE_RESPONDER=off`.
struct EchoPlugin {
    bus: Bus,
}

impl Plugin for EchoPlugin {
    type Tools = Bus;

    fn new(bus: Bus) -> Self {
        Self { bus }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        if std::env::var("PROBE_RESPONDER").is_ok_and(|v| v == "off") {
            return Ok(());
        }
        self.bus.respond("probe.echo").handler(&self, Self::echo)?;
        Ok(())
    }
}

impl EchoPlugin {
    async fn echo(self: Arc<Self>, echo: Echo) -> HandlerResult<Echo> {
        tokio::time::sleep(Duration::from_millis(echo.sleep_ms)).await;
        if echo.reject {
            return Err(HandlerError::reject("asked to refuse"));
        }
        Ok(echo)
    }
}

async fn record_attempt(db: &Db, event: &EventEnvelope<Work>, subscriber: &str) -> EventResult {
    sqlx::query("INSERT INTO attempts (event_id, subscriber, instance) VALUES ($1, $2, $3)")
        .bind(&event.id)
        .bind(subscriber)
        .bind(instance())
        .execute(db.pool())
        .await?;
    Ok(())
}

async fn record_handled(db: &Db, event: &EventEnvelope<Work>, subscriber: &str) -> EventResult {
    sqlx::query(
        "INSERT INTO handled (event_id, subscriber, instance, seq, event_key) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&event.id)
    .bind(subscriber)
    .bind(instance())
    .bind(event.payload.seq)
    .bind(event.key.clone())
    .execute(db.pool())
    .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = microcore::telemetry::init("probe");
    let domain = Domain::new("probe", env!("CARGO_PKG_VERSION"))
        .plugins(vec![
            PluginEntry::of::<WorkerPlugin>("worker"),
            PluginEntry::of::<OtherWorkerPlugin>("other"),
            PluginEntry::of::<CallerPlugin>("caller"),
            PluginEntry::of::<EchoPlugin>("echo"),
        ])
        .migrations(Migrations {
            postgres: sqlx::migrate!("./probe-migrations/postgres"),
            sqlite: sqlx::migrate!("./probe-migrations/sqlite"),
        });
    Service::from_env(domain)?.run().await?;
    Ok(())
}
