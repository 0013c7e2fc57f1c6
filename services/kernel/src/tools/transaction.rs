//! A database transaction that knows whether it staged events, so that
//! committing it wakes the outbox relay at once instead of at its next
//! poll.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use sqlx::{Any, AnyConnection};
use tokio::sync::{Notify, OwnedMutexGuard};

use crate::tools::DbError;

/// A transaction on the service's database. Queries run on it with
/// `.execute(&mut *tx)`; nothing is visible to others, and no staged event
/// is published, until [`Transaction::commit`]. Dropping it rolls back.
pub struct Transaction {
    // Field order is drop order: the transaction ends before the write
    // turn passes on.
    inner: sqlx::Transaction<'static, Any>,
    /// On SQLite: this transaction's turn to write.
    _write_turn: Option<OwnedMutexGuard<()>>,
    staged_events: bool,
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
            staged_events: false,
            outbox,
        }
    }

    pub(crate) fn staged_event(&mut self) {
        self.staged_events = true;
    }

    pub async fn commit(self) -> Result<(), DbError> {
        self.inner.commit().await?;
        if self.staged_events {
            self.outbox.notify_one();
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
