//! The transactional outbox: an event staged in a database transaction is
//! a row of `mc_outbox` written by that same transaction, so it exists if
//! and only if the business rows do. A relay publishes committed rows to
//! the durable stream and deletes them once the server has them.
//!
//! If the process dies between commit and relay, the rows wait for the
//! next start. If it dies between publish and delete, the row is published
//! again with the same event id and the server's de-duplication keeps one.
//! Replicas relay side by side: on Postgres each claims rows with
//! `SKIP LOCKED`; a SQLite file has one writer at a time anyway.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use http::{HeaderMap, HeaderValue};
use sqlx::{AssertSqlSafe, Executor};
use tokio_util::sync::CancellationToken;

use crate::tools::{Db, DbError, Engine, Transaction};
use crate::transport::{Message, Transport, TransportError};

/// The W3C trace context header, kept with a staged event.
const TRACEPARENT: &str = "traceparent";

/// A staged event: position, id, subject, body, trace context.
type Staged = (i64, String, String, String, Option<String>);

/// Rows relayed per round trip.
const BATCH: i64 = 256;

/// How often the relay looks for rows nobody woke it for (staged by a
/// replica, or left by a crash).
const POLL: Duration = Duration::from_secs(1);

/// Wait after a failed relay before the next try.
const RETRY: Duration = Duration::from_secs(1);

/// The kernel's own table, in the service's schema beside its tables.
/// `staged_at_ms` is written by the kernel, so the relay's query is the
/// same on every engine.
pub(crate) async fn ensure_outbox_table(db: &Db) -> Result<(), DbError> {
    let position = match db.engine() {
        Engine::Postgres => "position BIGSERIAL PRIMARY KEY",
        Engine::Sqlite => "position INTEGER PRIMARY KEY AUTOINCREMENT",
    };
    db.pool()
        .execute(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS mc_outbox (
                {position},
                id TEXT NOT NULL,
                subject TEXT NOT NULL,
                body TEXT NOT NULL,
                traceparent TEXT,
                staged_at_ms BIGINT NOT NULL
            )"
        )))
        .await?;
    Ok(())
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// Writes one event into the outbox of `tx`.
pub(super) async fn stage(
    tx: &mut Transaction,
    id: &str,
    subject: &str,
    body: &[u8],
    trace: &HeaderMap,
) -> Result<(), DbError> {
    // Envelopes are JSON, so always UTF-8.
    let body = String::from_utf8_lossy(body);
    let traceparent = trace.get(TRACEPARENT).and_then(|v| v.to_str().ok());
    sqlx::query(
        "INSERT INTO mc_outbox (id, subject, body, traceparent, staged_at_ms)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(subject)
    .bind(body.as_ref())
    .bind(traceparent)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Publishes what committed transactions staged.
pub(crate) struct OutboxRelay {
    pub db: Db,
    pub transport: Arc<dyn Transport>,
    /// How long a committed event waits before it is relayed: zero, but
    /// for crash tests that need a window between commit and relay.
    pub delay: Duration,
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl OutboxRelay {
    /// Relays what an earlier run left, then whatever commits, until
    /// `stop` is cancelled; then once more, so that events committed during
    /// the drain leave with the service.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            if let Err(e) = self.relay_all().await {
                tracing::warn!(error = %e, "outbox relay failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => {},
                    _ = tokio::time::sleep(RETRY) => {},
                }
            }
            if stop.is_cancelled() {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => {},
                _ = self.db.events_committed() => {},
                _ = tokio::time::sleep(POLL) => {},
            }
        }
        if let Err(e) = self.relay_all().await {
            tracing::warn!(error = %e, "outbox relay failed at shutdown; the events go out at the next start");
        }
    }

    async fn relay_all(&self) -> Result<(), RelayError> {
        while self.relay_batch().await? == BATCH {}
        Ok(())
    }

    /// Claims, publishes and deletes one batch; returns how many rows.
    async fn relay_batch(&self) -> Result<i64, RelayError> {
        let mut tx = self.db.begin().await?;
        let claim = match self.db.engine() {
            Engine::Postgres => " FOR UPDATE SKIP LOCKED",
            Engine::Sqlite => "",
        };
        let delay = i64::try_from(self.delay.as_millis()).unwrap_or(i64::MAX);
        // Claimed and deleted in one statement; the deletion only counts if
        // every event is published, or the rollback puts the rows back.
        let mut rows: Vec<Staged> = sqlx::query_as(AssertSqlSafe(format!(
            "DELETE FROM mc_outbox WHERE position IN (
                    SELECT position FROM mc_outbox
                    WHERE staged_at_ms <= $2 ORDER BY position LIMIT $1{claim}
                 ) RETURNING position, id, subject, body, traceparent"
        )))
        .bind(BATCH)
        .bind(now_ms().saturating_sub(delay))
        .fetch_all(&mut *tx)
        .await
        .map_err(DbError::from)?;
        if rows.is_empty() {
            return Ok(0);
        }
        // Publish order is staging order, so events with a key stay in
        // order.
        rows.sort_unstable_by_key(|(position, ..)| *position);
        let published = join_all(rows.iter().map(|(_, id, subject, body, traceparent)| {
            let mut headers = HeaderMap::new();
            if let Some(value) = traceparent
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok())
            {
                headers.insert(TRACEPARENT, value);
            }
            let message = Message::new(headers, body.clone().into_bytes());
            self.transport.publish_durable(subject, id, message)
        }))
        .await;
        // Rows already published are published again with the same id on
        // the next try; the server keeps one.
        published.into_iter().collect::<Result<Vec<()>, _>>()?;
        tx.commit().await?;
        Ok(rows.len() as i64)
    }
}
