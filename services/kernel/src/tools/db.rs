//! The database tool: a sqlx pool over the `Any` driver, so plugins write
//! one query with `$1, $2` placeholders whatever engine runs below, and
//! errors that carry a kind from a closed vocabulary so plugins branch on
//! meaning, not on engine text.
//!
//! - **Postgres** (production): each service owns a schema (default: its
//!   name); the pool's connections use it as `search_path`, and the
//!   service's migrations and their bookkeeping table live there, so two
//!   services never share tables.
//! - **SQLite** (the embedded default): each service owns a file. WAL lets
//!   readers run beside the one writer; transactions take the write lock
//!   when they begin (`BEGIN IMMEDIATE`), so two of them never deadlock
//!   upgrading a read lock, and they queue for it in the process (a fair
//!   async lock) rather than in SQLite's busy handler, which sleeps;
//!   foreign keys are enforced as on Postgres.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrate as _;
use sqlx::{AnyPool, AssertSqlSafe, Connection as _, Executor};
use tokio::sync::Notify;

use crate::config::ServiceConfig;
use crate::domain::Migrations;
use crate::tools::{Health, Tool, Transaction};

/// How long a SQLite transaction waits for its turn to write (SQLite's own
/// `busy_timeout` is the same).
const WRITE_WAIT: Duration = Duration::from_secs(5);

/// How long a pooled connection may sit idle and still be handed out
/// without a ping. sqlx pings every connection as it goes back to the
/// pool, so one reused within this window was checked moments ago; its
/// default, a second ping on acquire, costs a database round trip per
/// query under load. A connection idle for longer (the server may have
/// ended it) is pinged first and replaced when dead. HikariCP skips its
/// check the same way.
const TRUSTED_IDLE: Duration = Duration::from_secs(1);

/// The engine behind a [`Db`]. Plugins seldom need to know; migrations and
/// the kernel's own tables do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    Sqlite,
}

impl Engine {
    /// The engine's name in the OpenTelemetry conventions (`db.system.name`).
    pub fn system_name(self) -> &'static str {
        match self {
            Self::Postgres => "postgresql",
            Self::Sqlite => "sqlite",
        }
    }

    /// The engine a `DATABASE_URL` names.
    pub fn of(url: &str) -> Result<Self, DbError> {
        if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Self::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else {
            Err(DbError::other(sqlx::Error::Configuration(
                format!("unsupported database URL `{url}`: use postgres://… or sqlite://…").into(),
            )))
        }
    }
}

/// A connection pool to the service's own database.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    engine: Engine,
    /// SQLite's one writer at a time, taken by transactions.
    writer: Option<Arc<tokio::sync::Mutex<()>>>,
    /// Woken when a transaction that staged events commits.
    outbox: Arc<Notify>,
}

impl Tool for Db {
    const NAME: &'static str = "db";

    /// [`Db::health_check`], timed: a connection from the pool (a new one
    /// when the database dropped the idle ones) and a query's round trip.
    async fn check_health(&self) -> Option<Health> {
        let started = Instant::now();
        let health = match self.health_check().await {
            Ok(()) => Health::healthy(),
            Err(e) => Health::unhealthy(e.summary()),
        };
        Some(health.with_latency(started.elapsed()))
    }
}

impl Db {
    /// Connects to `url`. On Postgres, `schema` is created if needed and
    /// becomes the `search_path` of every connection; on SQLite the file
    /// and its directory are created if needed.
    pub async fn connect(
        url: &str,
        schema: Option<&str>,
        max_connections: u32,
    ) -> Result<Self, DbError> {
        install_default_drivers();
        let engine = Engine::of(url)?;
        let pool = match engine {
            Engine::Postgres => connect_postgres(url, schema, max_connections).await?,
            Engine::Sqlite => connect_sqlite(url, max_connections).await?,
        };
        Ok(Self {
            pool,
            engine,
            writer: (engine == Engine::Sqlite).then(Arc::default),
            outbox: Arc::default(),
        })
    }

    /// The database of `service` as `config` says: `DATABASE_URL` (its
    /// own schema on Postgres, `MC_DB_SCHEMA` or the service name) or its
    /// own SQLite file in the data directory.
    pub async fn for_service(config: &ServiceConfig, service: &str) -> Result<Self, DbError> {
        let schema = config.database_schema.as_deref().unwrap_or(service);
        Self::connect(
            &config.database_url_for(service),
            Some(schema),
            config.database_max_connections,
        )
        .await
    }

    /// The pool, to run queries with sqlx: `query_as(..).fetch_one(db.pool())`.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Starts a transaction. Events staged in it with
    /// [`Bus::publish_in`](crate::tools::Bus::publish_in) are published
    /// once it commits.
    pub async fn begin(&self) -> Result<Transaction, DbError> {
        let write_turn = match &self.writer {
            // As long as SQLite itself would wait: a task that begins a
            // second transaction while holding one fails instead of hanging.
            Some(writer) => Some(
                tokio::time::timeout(WRITE_WAIT, writer.clone().lock_owned())
                    .await
                    .map_err(|_| sqlx::Error::PoolTimedOut)?,
            ),
            None => None,
        };
        let tx = match self.engine {
            Engine::Postgres => self.pool.begin().await?,
            Engine::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
        };
        Ok(Transaction::new(tx, write_turn, self.outbox.clone()))
    }

    /// Resolves when a transaction with staged events has committed.
    pub(crate) async fn events_committed(&self) {
        self.outbox.notified().await;
    }

    /// Applies the service's migrations for this engine that have not run
    /// yet.
    pub async fn migrate(&self, migrations: &Migrations) -> Result<(), DbError> {
        let migrator = match self.engine {
            Engine::Postgres => &migrations.postgres,
            Engine::Sqlite => &migrations.sqlite,
        };
        migrator.run(&self.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => DbError::from(e),
            other => DbError::other(sqlx::Error::Migrate(Box::new(other))),
        })
    }

    /// The versions of `migrations` this database has not applied yet, for
    /// a service that must not migrate at boot.
    pub async fn pending_migrations(&self, migrations: &Migrations) -> Result<Vec<i64>, DbError> {
        let migrator = match self.engine {
            Engine::Postgres => &migrations.postgres,
            Engine::Sqlite => &migrations.sqlite,
        };
        let migrate_error = |e| DbError::other(sqlx::Error::Migrate(Box::new(e)));
        let mut conn = self.pool.acquire().await?;
        // Creates only sqlx's bookkeeping table, so that a fresh database
        // reads as "everything pending" rather than as an error.
        conn.ensure_migrations_table(&migrator.table_name)
            .await
            .map_err(migrate_error)?;
        let applied = conn
            .list_applied_migrations(&migrator.table_name)
            .await
            .map_err(migrate_error)?;
        Ok(migrator
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
            .map(|m| m.version)
            .filter(|version| !applied.iter().any(|a| a.version == *version))
            .collect())
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

async fn connect_postgres(
    url: &str,
    schema: Option<&str>,
    max_connections: u32,
) -> Result<AnyPool, DbError> {
    let quoted = schema.map(quote_identifier);
    if let (Some(unquoted), Some(schema)) = (schema, &quoted) {
        let setup = AnyPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await?;
        // Asked first: a role given its schema by an administrator may not
        // create schemas, and Postgres checks that right before it checks
        // IF NOT EXISTS.
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(unquoted)
                .fetch_one(&setup)
                .await?;
        if !exists {
            setup
                // The schema name is quoted by `quote_identifier`.
                .execute(AssertSqlSafe(format!(
                    "CREATE SCHEMA IF NOT EXISTS {schema}"
                )))
                .await?;
        }
        setup.close().await;
    }
    let pool = pool_options()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(move |conn, _| {
            let search_path = quoted.as_ref().map(|s| format!("SET search_path TO {s}"));
            Box::pin(async move {
                if let Some(sql) = search_path {
                    conn.execute(AssertSqlSafe(sql)).await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await?;
    Ok(pool)
}

/// The options of every service pool: connections are checked on acquire
/// only after [`TRUSTED_IDLE`].
fn pool_options() -> AnyPoolOptions {
    AnyPoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > TRUSTED_IDLE {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

async fn connect_sqlite(url: &str, max_connections: u32) -> Result<AnyPool, DbError> {
    let location = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    let in_memory = location.is_empty() || location.contains(":memory:");
    let directory = Path::new(location)
        .parent()
        .filter(|d| !in_memory && !d.as_os_str().is_empty());
    if let Some(directory) = directory {
        tokio::fs::create_dir_all(directory)
            .await
            .map_err(sqlx::Error::Io)?;
    }
    let url = if in_memory || url.contains("mode=") {
        url.to_owned()
    } else {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}mode=rwc")
    };
    // Every connection to `:memory:` is a database of its own: keep one,
    // for good.
    let options = if in_memory {
        pool_options()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
    } else {
        pool_options().max_connections(max_connections)
    };
    let pool = options
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(|conn, _| {
            Box::pin(async move {
                for pragma in [
                    "PRAGMA journal_mode = WAL",
                    "PRAGMA synchronous = NORMAL",
                    "PRAGMA foreign_keys = ON",
                    "PRAGMA busy_timeout = 5000", // WRITE_WAIT
                ] {
                    conn.execute(pragma).await?;
                }
                Ok(())
            })
        })
        .connect(&url)
        .await?;
    Ok(pool)
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

    /// What the engine said, after the kind unless it is
    /// [`Other`](DbErrorKind::Other), fit to show an operator: unlike the
    /// error's full text, never a configuration value (a URL, with its
    /// password) or a TLS detail.
    pub fn summary(&self) -> String {
        let what = match &self.source {
            sqlx::Error::Database(e) => e.message().to_owned(),
            sqlx::Error::Io(e) => e.to_string(),
            sqlx::Error::PoolTimedOut => "no connection became available in time".to_owned(),
            sqlx::Error::PoolClosed => "the pool is closed".to_owned(),
            sqlx::Error::WorkerCrashed => "the connection's worker crashed".to_owned(),
            sqlx::Error::Tls(_) => "the TLS handshake failed".to_owned(),
            sqlx::Error::Protocol(_) => "the database broke the protocol".to_owned(),
            _ => "the query failed".to_owned(),
        };
        match self.kind {
            DbErrorKind::Other => what,
            kind => format!("{kind:?}: {what}"),
        }
    }

    fn other(source: sqlx::Error) -> Self {
        Self {
            kind: DbErrorKind::Other,
            table: None,
            constraint: None,
            source,
        }
    }
}

/// Postgres SQLSTATEs that mean the server ended or refused the
/// connection rather than the statement: connection exceptions (class
/// 08), shutdowns and startups (57P01–57P03), too many connections.
fn refuses_connection(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
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
                    _ if e.code().as_deref().is_some_and(refuses_connection) => {
                        DbErrorKind::Connection
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_that_ends_or_refuses_the_connection_is_a_connection_error() {
        for code in ["08006", "08P01", "57P01", "57P03", "53300"] {
            assert!(refuses_connection(code), "{code}");
        }
        for code in ["23505", "42P01", "40001"] {
            assert!(!refuses_connection(code), "{code}");
        }
    }

    #[tokio::test]
    async fn a_reachable_database_is_healthy_with_its_round_trip() {
        let db = Db::connect("sqlite::memory:", None, 1).await.unwrap();
        let health = db.check_health().await.unwrap();
        assert!(health.is_healthy(), "{health:?}");
        assert!(health.latency.is_some());
    }

    #[test]
    fn the_summary_of_an_error_leaves_configuration_out() {
        let url = "postgres://shop:s3cret@db.internal/shop";
        let error = DbError::from(sqlx::Error::Configuration(
            format!("cannot parse `{url}`").into(),
        ));
        assert!(error.to_string().contains("s3cret"));
        assert_eq!(error.summary(), "the query failed");
        let exhausted = DbError::from(sqlx::Error::PoolTimedOut);
        assert_eq!(
            exhausted.summary(),
            "Connection: no connection became available in time"
        );
    }
}
