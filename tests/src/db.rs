//! A private Postgres database per test.
//!
//! Services create their own schema and tables at boot (each service owns
//! its migrations), so a test only needs an empty database. Creating one per
//! test keeps tests independent and parallel; dropping it with `FORCE` on
//! drop removes it even while a killed service still holds connections.
//!
//! The server comes from `MC_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); the role must be allowed
//! to create databases.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgConnection, PgPool};

/// Default server for test databases.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database that exists for as long as this value.
#[derive(Debug)]
pub struct TestDb {
    name: String,
    url: String,
    admin: PgConnectOptions,
    pool: PgPool,
}

impl TestDb {
    /// Creates a database with a unique name.
    ///
    /// # Panics
    /// When Postgres is unreachable or refuses; the message names the URL.
    pub async fn create() -> Self {
        let admin_url =
            std::env::var("MC_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
        let admin: PgConnectOptions = admin_url
            .parse()
            .unwrap_or_else(|e| panic!("MC_TEST_DATABASE_URL={admin_url:?} is not a URL: {e}"));
        let admin = admin.disable_statement_logging();
        let name = format!("mc_e2e_{}", uuid::Uuid::new_v4().simple());

        let mut conn = PgConnection::connect_with(&admin).await.unwrap_or_else(|e| {
            panic!(
                "cannot reach Postgres at {admin_url} ({e}); start it or set MC_TEST_DATABASE_URL"
            )
        });
        // The name is generated above from a UUID: nothing to inject.
        sqlx::query(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name} on {admin_url}: {e}"));
        let _ = conn.close().await;

        let options = admin.clone().database(&name);
        let url = options.to_url_lossy().to_string();
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the new database {name}: {e}"));
        Self {
            name,
            url,
            admin,
            pool,
        }
    }

    /// The connection URL of this database, for the services.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A pool for the test's own queries.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Makes the database refuse new connections and ends the open ones
    /// (the test's own pool's too), as when its server is gone for the
    /// services using it; the server keeps serving the other databases.
    /// Until [`accept_connections`](Self::accept_connections).
    ///
    /// # Panics
    /// When Postgres refuses.
    pub async fn refuse_connections(&self) {
        let mut admin = self.admin_connection().await;
        self.allow_connections(&mut admin, false).await;
        self.end_connections_with(&mut admin).await;
        let _ = admin.close().await;
    }

    /// Ends every open connection to the database (the test's own pool's
    /// too), as a server restart or an idle-session timeout does; new
    /// connections are still accepted.
    ///
    /// # Panics
    /// When Postgres refuses.
    pub async fn end_connections(&self) {
        let mut admin = self.admin_connection().await;
        self.end_connections_with(&mut admin).await;
        let _ = admin.close().await;
    }

    async fn end_connections_with(&self, admin: &mut PgConnection) {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .execute(admin)
        .await
        .unwrap_or_else(|e| panic!("cannot end the connections to {}: {e}", self.name));
    }

    /// Undoes [`refuse_connections`](Self::refuse_connections).
    ///
    /// # Panics
    /// When Postgres refuses.
    pub async fn accept_connections(&self) {
        let mut admin = self.admin_connection().await;
        self.allow_connections(&mut admin, true).await;
        let _ = admin.close().await;
    }

    async fn allow_connections(&self, admin: &mut PgConnection, allow: bool) {
        let name = &self.name;
        // The name is generated from a UUID: nothing to inject.
        sqlx::query(AssertSqlSafe(format!(
            r#"ALTER DATABASE "{name}" ALLOW_CONNECTIONS {allow}"#
        )))
        .execute(admin)
        .await
        .unwrap_or_else(|e| panic!("cannot set ALLOW_CONNECTIONS {allow} on {name}: {e}"));
    }

    /// A connection to the server's administrative database.
    async fn admin_connection(&self) -> PgConnection {
        PgConnection::connect_with(&self.admin)
            .await
            .unwrap_or_else(|e| panic!("cannot reach the Postgres server of {}: {e}", self.name))
    }

    /// Rows in `table` (schema-qualified, e.g. `products.products`).
    ///
    /// # Panics
    /// When the table does not exist.
    pub async fn count(&self, table: &str) -> i64 {
        // Table names come from the test code, never from input.
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("cannot count the rows of {table}: {e}"))
    }
}

impl Drop for TestDb {
    /// Drop cannot await, and the test's runtime may be shutting down: the
    /// database is dropped from a helper thread with its own small runtime.
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect_with(&admin)
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::query(AssertSqlSafe(format!(
                    r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
                )))
                .execute(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
                let _ = conn.close().await;
                Ok::<_, String>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("test database {} was not dropped: {e}", self.name),
            Err(_) => eprintln!(
                "test database {} was not dropped: helper panicked",
                self.name
            ),
        }
    }
}
