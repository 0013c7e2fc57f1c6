//! What requests read: the route table, the serialized OpenAPI document
//! and the conflict report, derived together from the known services.
//!
//! A snapshot is immutable. Discovery builds a new one when a service
//! comes, goes or is forgotten, and swaps it in; a request takes the
//! current one with a pointer copy under a lock held for no longer than
//! that, so the hot path never waits on discovery nor rebuilds anything.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::openapi;
use crate::routes::{Claim, Conflict, RouteTable};

/// Everything derived from the known services at one moment.
pub struct Snapshot {
    pub table: RouteTable,
    /// `/openapi.json`, serialized once per change.
    pub openapi: Bytes,
    /// Refused route claims, then schema clashes.
    pub conflicts: Vec<Conflict>,
    /// Services with at least one live instance.
    pub live: BTreeSet<String>,
}

impl Snapshot {
    /// `claims`: the routes of every known service, the first-seen service
    /// first; `live`: the services with a live instance. Only those are
    /// documented; the others keep their routes until they are forgotten.
    pub fn build(claims: &[Claim], live: BTreeSet<String>) -> Self {
        let table = RouteTable::build(claims);
        let documented = claims
            .iter()
            .filter(|c| live.contains(&c.service) && table.serves(c));
        let (document, schema_conflicts) = openapi::merge(documented);
        let openapi = match serde_json::to_vec(&document) {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) => {
                tracing::error!(error = %e, "could not serialize the OpenAPI document");
                Bytes::from_static(b"{}")
            }
        };
        let mut conflicts = table.conflicts().to_vec();
        conflicts.extend(schema_conflicts);
        Self {
            table,
            openapi,
            conflicts,
            live,
        }
    }
}

/// The current snapshot, shared by discovery (the only writer) and
/// requests.
pub struct SnapshotCell(RwLock<Arc<Snapshot>>);

impl SnapshotCell {
    pub fn new(snapshot: Snapshot) -> Self {
        Self(RwLock::new(Arc::new(snapshot)))
    }

    /// The current snapshot; it stays valid however long it is held.
    pub fn load(&self) -> Arc<Snapshot> {
        // A poisoned lock still holds a complete snapshot: the writer
        // only ever swaps the pointer.
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn store(&self, snapshot: Snapshot) {
        let snapshot = Arc::new(snapshot);
        // The old snapshot is dropped after the lock is released.
        let _previous = std::mem::replace(
            &mut *self.0.write().unwrap_or_else(|p| p.into_inner()),
            snapshot,
        );
    }
}
