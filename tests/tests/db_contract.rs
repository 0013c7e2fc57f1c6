//! The database contract, written once and run on both engines: SQLite,
//! the embedded default, and Postgres. Plugins write one query with `$1,
//! $2` placeholders and branch on error kinds; whichever engine runs below,
//! they must get the same results.

use std::time::Duration;

use futures_util::StreamExt;
use microcore::tools::{Bus, Db, DbError, DbErrorKind, Engine};
use microcore::transport::{ConsumerMode, ConsumerSpec, InProcessTransport, Transport};
use microcore::{Domain, Service, ServiceConfig};
use microcore_e2e::TestDb;
use serde_json::{Value, json};
use shared_schemas::Subjects;
use sqlx::{Connection, Executor};

/// A SQLite database in a file of its own, and what keeps it.
async fn sqlite() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("contract.db").display());
    let db = Db::connect(&url, None, 4).await.expect("SQLite opens");
    assert_eq!(db.engine(), Engine::Sqlite);
    (dir, setup(db).await)
}

/// A Postgres database of its own, and what keeps it.
async fn postgres() -> (TestDb, Db) {
    let test_db = TestDb::create().await;
    let db = Db::connect(test_db.url(), Some("contract"), 4)
        .await
        .expect("Postgres connects");
    assert_eq!(db.engine(), Engine::Postgres);
    (test_db, setup(db).await)
}

/// The same DDL on both engines: no identity columns, plain types.
async fn setup(db: Db) -> Db {
    for ddl in [
        "CREATE TABLE parents (
            id BIGINT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            qty BIGINT NOT NULL DEFAULT 0 CHECK (qty >= 0)
        )",
        "CREATE TABLE children (
            id BIGINT PRIMARY KEY,
            parent_id BIGINT NOT NULL REFERENCES parents (id)
        )",
    ] {
        db.pool().execute(ddl).await.expect("the contract tables");
    }
    db
}

async fn insert(db: &Db, id: i64, name: &str, qty: i64) -> Result<i64, DbError> {
    Ok(
        sqlx::query_scalar("INSERT INTO parents (id, name, qty) VALUES ($1, $2, $3) RETURNING id")
            .bind(id)
            .bind(name)
            .bind(qty)
            .fetch_one(db.pool())
            .await?,
    )
}

async fn names(db: &Db) -> Vec<String> {
    sqlx::query_scalar("SELECT name FROM parents ORDER BY id")
        .fetch_all(db.pool())
        .await
        .expect("a select")
}

// ---- the cases ----

async fn rows_are_created_read_updated_and_deleted(db: Db) {
    assert_eq!(insert(&db, 1, "one", 1).await.unwrap(), 1, "RETURNING");
    insert(&db, 2, "two", 2).await.unwrap();
    let row: (i64, String, i64) = sqlx::query_as("SELECT id, name, qty FROM parents WHERE id = $1")
        .bind(2_i64)
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(row, (2, "two".to_owned(), 2));
    let updated = sqlx::query("UPDATE parents SET qty = qty + $1 WHERE qty >= $2")
        .bind(10_i64)
        .bind(1_i64)
        .execute(db.pool())
        .await
        .unwrap();
    assert_eq!(updated.rows_affected(), 2);
    let deleted = sqlx::query("DELETE FROM parents WHERE id = $1")
        .bind(1_i64)
        .execute(db.pool())
        .await
        .unwrap();
    assert_eq!(deleted.rows_affected(), 1);
    let missing: Option<String> = sqlx::query_scalar("SELECT name FROM parents WHERE id = $1")
        .bind(1_i64)
        .fetch_optional(db.pool())
        .await
        .unwrap();
    assert_eq!(missing, None);
    assert_eq!(names(&db).await, ["two"]);
}

async fn placeholders_bind_by_number_in_any_order_and_repeated(db: Db) {
    sqlx::query("INSERT INTO parents (qty, name, id) VALUES ($3, $2, $1)")
        .bind(7_i64)
        .bind("seven")
        .bind(70_i64)
        .execute(db.pool())
        .await
        .unwrap();
    let row: (i64, String, i64) = sqlx::query_as(
        "SELECT id, name, qty FROM parents WHERE id = $1 AND qty = $1 * 10 AND name = $2",
    )
    .bind(7_i64)
    .bind("seven")
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(row, (7, "seven".to_owned(), 70));
}

async fn transactions_commit_roll_back_and_nest(db: Db) {
    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO parents (id, name) VALUES ($1, $2)")
        .bind(1_i64)
        .bind("kept")
        .execute(&mut *tx)
        .await
        .unwrap();
    // A savepoint: its rollback keeps what the outer transaction did.
    let mut inner = (*tx).begin().await.unwrap();
    sqlx::query("INSERT INTO parents (id, name) VALUES ($1, $2)")
        .bind(2_i64)
        .bind("undone")
        .execute(&mut *inner)
        .await
        .unwrap();
    inner.rollback().await.unwrap();
    tx.commit().await.unwrap();

    let mut rolled_back = db.begin().await.unwrap();
    sqlx::query("INSERT INTO parents (id, name) VALUES ($1, $2)")
        .bind(3_i64)
        .bind("rolled back")
        .execute(&mut *rolled_back)
        .await
        .unwrap();
    rolled_back.rollback().await.unwrap();

    let dropped = db.begin().await.unwrap();
    drop(dropped);
    {
        let mut abandoned = db.begin().await.unwrap();
        sqlx::query("INSERT INTO parents (id, name) VALUES ($1, $2)")
            .bind(4_i64)
            .bind("abandoned")
            .execute(&mut *abandoned)
            .await
            .unwrap();
    }
    assert_eq!(names(&db).await, ["kept"]);
}

async fn errors_carry_the_same_kind_on_every_engine(db: Db) {
    insert(&db, 1, "one", 1).await.unwrap();
    let kind = |result: Result<i64, DbError>| result.expect_err("a refusal").kind();
    assert_eq!(
        kind(insert(&db, 1, "other", 1).await),
        DbErrorKind::Unique,
        "primary key"
    );
    assert_eq!(
        kind(insert(&db, 2, "one", 1).await),
        DbErrorKind::Unique,
        "unique"
    );
    assert_eq!(kind(insert(&db, 3, "three", -1).await), DbErrorKind::Check);
    let null_name =
        sqlx::query_scalar::<_, i64>("INSERT INTO parents (id, name) VALUES ($1, $2) RETURNING id")
            .bind(4_i64)
            .bind(None::<String>)
            .fetch_one(db.pool())
            .await
            .map_err(DbError::from);
    assert_eq!(kind(null_name), DbErrorKind::NotNull);
    let orphan = sqlx::query_scalar::<_, i64>(
        "INSERT INTO children (id, parent_id) VALUES ($1, $2) RETURNING id",
    )
    .bind(1_i64)
    .bind(99_i64)
    .fetch_one(db.pool())
    .await
    .map_err(DbError::from);
    assert_eq!(kind(orphan), DbErrorKind::ForeignKey);
    let nonsense = sqlx::query_scalar::<_, i64>("SELECT no_such_column FROM parents")
        .fetch_one(db.pool())
        .await
        .map_err(DbError::from);
    assert_eq!(kind(nonsense), DbErrorKind::Other);
    assert_eq!(names(&db).await, ["one"], "refusals change nothing");
}

async fn the_outbox_publishes_after_commit_and_never_after_rollback(db: Db) {
    let transport = InProcessTransport::new();
    let service = Service::new(Domain::new("contract", "0.1.0"), ServiceConfig::default())
        .start(std::sync::Arc::new(transport.clone()), db.clone())
        .await
        .expect("the service starts its relay");
    let mut events = transport
        .consume(ConsumerSpec {
            subject: Subjects::default().event("contract.staged"),
            mode: ConsumerMode::Shared {
                name: "contract-reader".to_owned(),
            },
            ack_wait: Duration::from_secs(30),
            max_in_flight: 16,
        })
        .await
        .unwrap();
    let bus = Bus::new(std::sync::Arc::new(transport.clone()), Subjects::default());

    let mut rolled_back = db.begin().await.unwrap();
    bus.publish_in(&mut rolled_back, "contract.staged", &json!({"n": 1}))
        .await
        .unwrap();
    rolled_back.rollback().await.unwrap();

    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO parents (id, name) VALUES ($1, $2)")
        .bind(1_i64)
        .bind("with its event")
        .execute(&mut *tx)
        .await
        .unwrap();
    let id = bus
        .publish_in(&mut tx, "contract.staged", &json!({"n": 2}))
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_millis(200), events.next()).await;
    assert!(early.is_err(), "nothing leaves before the commit");
    tx.commit().await.unwrap();

    let delivery = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("the event after the commit")
        .expect("a delivery");
    let envelope: Value = serde_json::from_slice(&delivery.message.body).unwrap();
    delivery.ack().await.unwrap();
    assert_eq!(envelope["id"], id.as_str());
    assert_eq!(envelope["payload"]["n"], 2);
    let more = tokio::time::timeout(Duration::from_millis(300), events.next()).await;
    assert!(more.is_err(), "the rolled-back event never leaves");
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mc_outbox")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(left, 0, "relayed rows are deleted");
    service.shutdown().await.unwrap();
}

/// Each case, once per engine.
macro_rules! on_both_engines {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let (_keep, db) = super::sqlite().await;
                    super::$case(db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let (_keep, db) = super::postgres().await;
                    super::$case(db).await;
                }
            )*
        }
    };
}

on_both_engines! {
    rows_are_created_read_updated_and_deleted,
    placeholders_bind_by_number_in_any_order_and_repeated,
    transactions_commit_roll_back_and_nest,
    errors_carry_the_same_kind_on_every_engine,
    the_outbox_publishes_after_commit_and_never_after_rollback,
}

/// Connections the server ended while they sat in the pool (a restart, an
/// idle-session timeout) are found dead on acquire and replaced: the next
/// queries succeed, none sees the broken connection.
#[tokio::test]
async fn postgres_connections_ended_while_idle_are_replaced_unseen() {
    let (test_db, db) = postgres().await;
    let held = futures_util::future::join_all((0..4).map(|_| db.pool().acquire())).await;
    assert!(
        held.iter().all(Result::is_ok),
        "the pool opens 4 connections"
    );
    drop(held);
    // Back in the pool (they return in the background), so the ones
    // ended are the ones the next queries are handed.
    let returned = tokio::time::timeout(Duration::from_secs(5), async {
        while db.pool().num_idle() < 4 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    assert!(returned.await.is_ok(), "the connections return to the pool");
    test_db.end_connections().await;
    // Past the window in which a just-released connection is trusted.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for attempt in 0..8 {
        let name = format!("after the restart {attempt}");
        let result = insert(&db, 100 + attempt, &name, 1).await;
        assert!(result.is_ok(), "query {attempt}: {result:?}");
    }
}
