//! The database tool: a sqlx pool over the `Any` driver, so plugins write
//! one query with `$1, $2` placeholders whatever engine runs below, and
//! errors that carry a kind from a closed vocabulary so plugins branch on
//! meaning, not on engine text.
//!
//! On Postgres each service owns a schema (default: its name): the pool's
//! connections use it as `search_path`, and the service's migrations and
//! their bookkeeping table live there, so two services never share tables.

use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, AssertSqlSafe, Executor};
use tokio::sync::Notify;

use crate::tools::{Tool, Transaction};

/// A connection pool to the service's own database.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    /// Woken when a transaction that staged events commits.
    outbox: Arc<Notify>,
}

impl Tool for Db {
    const NAME: &'static str = "db";
}

impl Db {
    /// Connects to `url`. On Postgres, `schema` is created if needed and
    /// becomes the `search_path` of every connection.
    pub async fn connect(
        url: &str,
        schema: Option<&str>,
        max_connections: u32,
    ) -> Result<Self, DbError> {
        install_default_drivers();
        let schema = schema
            .filter(|_| url.starts_with("postgres"))
            .map(quote_identifier);
        if let Some(schema) = &schema {
            let setup = AnyPoolOptions::new()
                .max_connections(1)
                .connect(url)
                .await?;
            setup
                // The schema name is quoted by `quote_identifier`.
                .execute(AssertSqlSafe(format!(
                    "CREATE SCHEMA IF NOT EXISTS {schema}"
                )))
                .await?;
            setup.close().await;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                let search_path = schema.as_ref().map(|s| format!("SET search_path TO {s}"));
                Box::pin(async move {
                    if let Some(sql) = search_path {
                        conn.execute(AssertSqlSafe(sql)).await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        Ok(Self {
            pool,
            outbox: Arc::default(),
        })
    }

    /// The pool, to run queries with sqlx: `query_as(..).fetch_one(db.pool())`.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Starts a transaction. Events staged in it with
    /// [`Bus::publish_in`](crate::tools::Bus::publish_in) are published
    /// once it commits.
    pub async fn begin(&self) -> Result<Transaction, DbError> {
        Ok(Transaction::new(
            self.pool.begin().await?,
            self.outbox.clone(),
        ))
    }

    /// Resolves when a transaction with staged events has committed.
    pub(crate) async fn events_committed(&self) {
        self.outbox.notified().await;
    }

    /// Applies the service's migrations that have not run yet.
    pub async fn migrate(&self, migrator: &Migrator) -> Result<(), DbError> {
        migrator.run(&self.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => DbError::from(e),
            other => DbError {
                kind: DbErrorKind::Other,
                table: None,
                constraint: None,
                source: sqlx::Error::Migrate(Box::new(other)),
            },
        })
    }

    /// Round-trips a trivial query.
    pub async fn health_check(&self) -> Result<(), DbError> {
        self.pool.execute("SELECT 1").await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// What kind of failure a database error is, the same on every engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbErrorKind {
    Unique,
    ForeignKey,
    NotNull,
    Check,
    /// The database could not be reached or the pool is exhausted.
    Connection,
    Other,
}

/// A database error with its [`DbErrorKind`] and, where the engine reports
/// them, the table and constraint involved.
#[derive(Debug, thiserror::Error)]
#[error("database error ({kind:?}): {source}")]
pub struct DbError {
    pub kind: DbErrorKind,
    pub table: Option<String>,
    pub constraint: Option<String>,
    #[source]
    pub source: sqlx::Error,
}

impl DbError {
    pub fn kind(&self) -> DbErrorKind {
        self.kind
    }
}

impl From<sqlx::Error> for DbError {
    fn from(source: sqlx::Error) -> Self {
        use sqlx::error::ErrorKind;
        let (kind, table, constraint) = match &source {
            sqlx::Error::Database(e) => {
                let kind = match e.kind() {
                    ErrorKind::UniqueViolation => DbErrorKind::Unique,
                    ErrorKind::ForeignKeyViolation => DbErrorKind::ForeignKey,
                    ErrorKind::NotNullViolation => DbErrorKind::NotNull,
                    ErrorKind::CheckViolation => DbErrorKind::Check,
                    _ => DbErrorKind::Other,
                };
                (
                    kind,
                    e.table().map(str::to_owned),
                    e.constraint().map(str::to_owned),
                )
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => (DbErrorKind::Connection, None, None),
            _ => (DbErrorKind::Other, None, None),
        };
        Self {
            kind,
            table,
            constraint,
            source,
        }
    }
}
