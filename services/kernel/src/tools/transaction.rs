//! A database transaction that knows which events it staged, so that
//! committing it wakes the outbox relay at once instead of at its next
//! poll, and counts those events as published (never before: a rollback
//! publishes nothing).

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use sqlx::{Any, AnyConnection};
use tokio::sync::{Notify, OwnedMutexGuard};

use crate::tools::DbError;
use crate::tools::bus::PublishedCell;

/// A transaction on the service's database. Queries run on it with
/// `.execute(&mut *tx)`; nothing is visible to others, and no staged event
/// is published, until [`Transaction::commit`]. Dropping it rolls back.
pub struct Transaction {
    // Field order is drop order: the transaction ends before the write
    // turn passes on.
    inner: sqlx::Transaction<'static, Any>,
    /// On SQLite: this transaction's turn to write.
    _write_turn: Option<OwnedMutexGuard<()>>,
    /// The publish counter of each event staged so far.
    staged_events: Vec<PublishedCell>,
    outbox: Arc<Notify>,
}

impl Transaction {
    pub(crate) fn new(
        inner: sqlx::Transaction<'static, Any>,
        write_turn: Option<OwnedMutexGuard<()>>,
        outbox: Arc<Notify>,
    ) -> Self {
        Self {
            inner,
            _write_turn: write_turn,
            staged_events: Vec::new(),
            outbox,
        }
    }

    pub(crate) fn staged_event(&mut self, published: PublishedCell) {
        self.staged_events.push(published);
    }

    pub async fn commit(self) -> Result<(), DbError> {
        self.inner.commit().await?;
        if !self.staged_events.is_empty() {
            self.outbox.notify_one();
        }
        for published in &self.staged_events {
            published.count();
        }
        Ok(())
    }

    pub async fn rollback(self) -> Result<(), DbError> {
        Ok(self.inner.rollback().await?)
    }
}

impl Deref for Transaction {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        &self.inner
    }
}

impl DerefMut for Transaction {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.inner
    }
}
