//! Keeping the route table fresh. Instances announce themselves when they
//! come up and go down, so the table changes within milliseconds; a
//! periodic `$SRV.INFO` sweep catches instances that died without a word
//! and announcements that were missed.
//!
//! A service whose last instance left keeps its routes for a retention
//! period: requests get 503 (nobody answers) instead of 404 while it
//! restarts, and only a service retired for good disappears. The OpenAPI
//! document lists live services only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use microcore::transport::{Announcement, Transport};
use serde::Serialize;
use shared_schemas::Subjects;
use shared_schemas::discovery::{HttpEndpoint, ServiceInfo, meta};

use crate::openapi;
use crate::routes::{Claim, Conflict, RouteInfo, RouteTable};

/// How long a sweep waits for `$SRV.INFO` answers.
const SWEEP_WINDOW: Duration = Duration::from_millis(250);

/// What the request path reads: replaced whole on every change.
pub struct Snapshot {
    pub table: RouteTable,
    pub openapi: Bytes,
    pub conflicts: Vec<Conflict>,
    /// Every known service, in order of appearance, with its live
    /// instances as they describe themselves.
    pub fleet: Vec<(String, Vec<Arc<ServiceInfo>>)>,
}

impl Snapshot {
    /// Services with at least one live instance.
    pub fn live_services(&self) -> usize {
        self.fleet.iter().filter(|(_, i)| !i.is_empty()).count()
    }

    /// The transports live instances run on (`nats`, `in-process`).
    pub fn transports(&self) -> BTreeSet<&str> {
        self.fleet
            .iter()
            .flat_map(|(_, instances)| instances)
            .filter_map(|i| i.metadata.get(meta::TRANSPORT).map(String::as_str))
            .collect()
    }
}

/// `/system/routes`.
#[derive(Serialize)]
pub struct RoutesView<'a> {
    pub routes: &'a [RouteInfo],
    pub conflicts: &'a [Conflict],
}

/// The current snapshot, shared between the discovery task and requests.
#[derive(Clone)]
pub struct Shared(Arc<RwLock<Arc<Snapshot>>>);

impl Shared {
    pub fn load(&self) -> Arc<Snapshot> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn store(&self, snapshot: Snapshot) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
    }
}

/// The known services and their instances.
#[derive(Default)]
struct Registry {
    services: BTreeMap<String, Service>,
    next_seen: u64,
}

struct Service {
    /// Order of first appearance: earlier services win route conflicts.
    first_seen: u64,
    instances: HashMap<String, Instance>,
    /// Since when no instance is live.
    gone_since: Option<Instant>,
    /// The routes of the latest instance, kept while the service is gone.
    last_claims: Vec<Claim>,
}

struct Instance {
    claims: Vec<Claim>,
    info: Arc<ServiceInfo>,
    last_seen: Instant,
}

impl Registry {
    fn up(&mut self, info: ServiceInfo, subjects: &Subjects, now: Instant) {
        let claims = claims(&info, subjects);
        let next = &mut self.next_seen;
        let service = self.services.entry(info.name.clone()).or_insert_with(|| {
            *next += 1;
            Service {
                first_seen: *next,
                instances: HashMap::new(),
                gone_since: None,
                last_claims: Vec::new(),
            }
        });
        service.gone_since = None;
        service.last_claims = claims.clone();
        service.instances.insert(
            info.id.clone(),
            Instance {
                claims,
                info: Arc::new(info),
                last_seen: now,
            },
        );
    }

    fn down(&mut self, name: &str, id: &str, now: Instant) {
        if let Some(service) = self.services.get_mut(name) {
            service.instances.remove(id);
            if service.instances.is_empty() {
                service.gone_since.get_or_insert(now);
            }
        }
    }

    /// Instances not seen since `started` did not answer the sweep.
    fn forget_silent(&mut self, started: Instant) {
        for service in self.services.values_mut() {
            service.instances.retain(|_, i| i.last_seen >= started);
            if service.instances.is_empty() {
                service.gone_since.get_or_insert(started);
            }
        }
    }

    fn expire(&mut self, retention: Duration, now: Instant) {
        self.services.retain(|_, s| {
            s.gone_since
                .is_none_or(|since| now.duration_since(since) < retention)
        });
    }

    fn snapshot(&self) -> Snapshot {
        let mut services: Vec<(&String, &Service)> = self.services.iter().collect();
        services.sort_by_key(|(_, s)| s.first_seen);
        let mut all: Vec<Claim> = Vec::new();
        for (_, service) in &services {
            if service.instances.is_empty() {
                // Still routable (503 at once) until the retention elapses.
                all.extend(service.last_claims.iter().cloned());
                continue;
            }
            // The union over instances: two versions may run side by side;
            // the route table keeps the first claim of a method and path.
            let mut instances: Vec<&Instance> = service.instances.values().collect();
            instances.sort_by_key(|i| i.last_seen);
            all.extend(instances.iter().flat_map(|i| i.claims.iter().cloned()));
        }
        let table = RouteTable::build(all.iter().cloned());
        let documented = all.iter().filter(|c| {
            let live = self
                .services
                .get(&c.service)
                .is_some_and(|s| !s.instances.is_empty());
            live && table.routes.iter().any(|r| r.subject == c.subject)
        });
        let (document, schema_conflicts) = openapi::merge(documented);
        let mut conflicts = table.conflicts.clone();
        conflicts.extend(schema_conflicts);
        Snapshot {
            openapi: Bytes::from(serde_json::to_vec(&document).unwrap_or_default()),
            fleet: services
                .iter()
                .map(|(name, s)| {
                    let mut instances: Vec<Arc<ServiceInfo>> =
                        s.instances.values().map(|i| i.info.clone()).collect();
                    instances.sort_by(|a, b| a.id.cmp(&b.id));
                    ((*name).clone(), instances)
                })
                .collect(),
            conflicts,
            table,
        }
    }
}

/// Starts discovery: subscribes to announcements, sweeps once, then keeps
/// the snapshot current until the transport closes.
pub async fn start(
    transport: Arc<dyn Transport>,
    subjects: Subjects,
    interval: Duration,
    retention: Duration,
) -> Result<(Shared, tokio::task::JoinHandle<()>), microcore::transport::TransportError> {
    // Subscribe before the first sweep so nothing falls in between.
    let mut announcements = transport.announcements().await?;
    let mut registry = Registry::default();
    let started = Instant::now();
    for info in transport.discover(SWEEP_WINDOW).await? {
        registry.up(info, &subjects, started);
    }
    let snapshot = registry.snapshot();
    report_new_conflicts(&[], &snapshot.conflicts);
    let shared = Shared(Arc::new(RwLock::new(Arc::new(snapshot))));
    let task = tokio::spawn({
        let shared = shared.clone();
        async move {
            let mut sweep = tokio::time::interval(interval);
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            sweep.tick().await;
            loop {
                tokio::select! {
                    announcement = announcements.next() => match announcement {
                        Some(Announcement::Up(info)) => {
                            tracing::info!(service = %info.name, instance = %info.id, "instance up");
                            registry.up(info, &subjects, Instant::now());
                        }
                        Some(Announcement::Down(down)) => {
                            tracing::info!(service = %down.name, instance = %down.id, "instance down");
                            registry.down(&down.name, &down.id, Instant::now());
                        }
                        None => break,
                    },
                    _ = sweep.tick() => {
                        let started = Instant::now();
                        match transport.discover(SWEEP_WINDOW).await {
                            Ok(found) => {
                                for info in found {
                                    registry.up(info, &subjects, Instant::now());
                                }
                                registry.forget_silent(started);
                            }
                            Err(e) => tracing::warn!(error = %e, "discovery sweep failed"),
                        }
                        registry.expire(retention, Instant::now());
                    }
                }
                let snapshot = registry.snapshot();
                report_new_conflicts(&shared.load().conflicts, &snapshot.conflicts);
                shared.store(snapshot);
            }
        }
    });
    Ok((shared, task))
}

/// Logs each conflict once, when it appears (details: `/system/routes`).
fn report_new_conflicts(before: &[Conflict], now: &[Conflict]) {
    for conflict in now.iter().filter(|c| !before.contains(c)) {
        tracing::warn!(
            method = %conflict.method,
            path = %conflict.path,
            service = %conflict.service,
            reason = %conflict.reason,
            "route conflict: the claim is ignored"
        );
    }
}

fn claims(info: &ServiceInfo, subjects: &Subjects) -> Vec<Claim> {
    info.endpoints
        .iter()
        .filter(|e| subjects.is_http(&e.subject))
        .filter_map(|e| match HttpEndpoint::from_metadata(&e.metadata) {
            Ok(endpoint) => endpoint.map(|endpoint| Claim {
                service: info.name.clone(),
                subject: e.subject.clone(),
                endpoint,
            }),
            Err(err) => {
                tracing::warn!(service = %info.name, endpoint = %e.name, error = %err, "skipping endpoint");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use shared_schemas::discovery::EndpointInfo;

    use super::*;

    fn info(name: &str, id: &str, path: &str) -> ServiceInfo {
        let endpoint = HttpEndpoint {
            method: "GET".into(),
            path: path.into(),
            timeout_ms: 1000,
            auth: false,
            operation: serde_json::json!({"operationId": name}),
            schemas: Default::default(),
        };
        ServiceInfo {
            name: name.into(),
            id: id.into(),
            version: "0.1.0".into(),
            description: String::new(),
            metadata: Default::default(),
            endpoints: vec![EndpointInfo {
                name: "e".into(),
                subject: format!("mc.http.{name}.e"),
                queue_group: "q".into(),
                metadata: endpoint.to_metadata(),
            }],
        }
    }

    fn documented(snapshot: &Snapshot) -> serde_json::Value {
        serde_json::from_slice::<serde_json::Value>(&snapshot.openapi).unwrap()["paths"].clone()
    }

    #[test]
    fn a_gone_service_stays_routable_undocumented_until_retention_ends() {
        let subjects = Subjects::default();
        let mut registry = Registry::default();
        let t0 = Instant::now();
        registry.up(info("products", "a", "/products"), &subjects, t0);
        assert!(documented(&registry.snapshot())["/products"].is_object());

        registry.down("products", "a", t0);
        let snapshot = registry.snapshot();
        assert_eq!(snapshot.table.routes.len(), 1);
        assert!(documented(&snapshot)["/products"].is_null());
        assert_eq!(snapshot.live_services(), 0);

        registry.expire(Duration::from_secs(60), t0 + Duration::from_secs(61));
        assert!(registry.snapshot().table.routes.is_empty());
    }

    #[test]
    fn instances_silent_in_a_sweep_are_forgotten() {
        let subjects = Subjects::default();
        let mut registry = Registry::default();
        let t0 = Instant::now();
        registry.up(info("products", "a", "/products"), &subjects, t0);
        registry.up(
            info("products", "b", "/products"),
            &subjects,
            t0 + Duration::from_secs(2),
        );
        registry.forget_silent(t0 + Duration::from_secs(1));
        assert_eq!(registry.services["products"].instances.len(), 1);
        assert_eq!(registry.snapshot().live_services(), 1);
    }
}
