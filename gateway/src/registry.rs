//! The services and instances the gateway knows, and which of their routes
//! are in force. Pure bookkeeping: discovery feeds it announcements and
//! sweep results, and builds a snapshot when it reports a change.
//!
//! - An instance counts when it offers at least one usable HTTP endpoint
//!   in this system's subject namespace; anything else on the same NATS
//!   (other systems, other kinds of services) is ignored. Broken endpoint
//!   metadata is logged once per instance and skipped.
//! - Replicas of a service share its routes: the union of their claims,
//!   the first-seen instance first, is one claim per method and path.
//! - A service whose last instance left keeps that instance's routes for
//!   the retention period, so its clients get 503 (nobody answers) rather
//!   than 404 while it restarts; it is not documented meanwhile. An
//!   instance coming back makes it live again.
//! - Earlier services win route conflicts: the order is the order services
//!   were first seen, kept until a service is forgotten.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use shared_schemas::Subjects;
use shared_schemas::discovery::{HttpEndpoint, ServiceInfo};

use crate::routes::Claim;
use crate::snapshot::Snapshot;

/// Known services by name.
pub struct Registry {
    subjects: Subjects,
    services: HashMap<String, Service>,
    /// Instances with nothing to route, so that sweeps do not examine (and
    /// warn about) them again.
    ignored: HashSet<String>,
    /// Orders services and instances by first appearance.
    next_seq: u64,
}

struct Service {
    seq: u64,
    instances: HashMap<String, Instance>,
    /// Set while no instance is live; then `instances` is empty.
    gone: Option<Gone>,
}

struct Instance {
    seq: u64,
    claims: Vec<Claim>,
    last_seen: Instant,
}

/// The routes a service keeps after its last instance left.
struct Gone {
    since: Instant,
    claims: Vec<Claim>,
}

impl Registry {
    pub fn new(subjects: Subjects) -> Self {
        Self {
            subjects,
            services: HashMap::new(),
            ignored: HashSet::new(),
            next_seq: 0,
        }
    }

    /// An instance described itself (announcement or sweep answer).
    /// Returns true when the routes or the live services changed.
    pub fn up(&mut self, info: ServiceInfo, now: Instant) -> bool {
        if let Some(instance) = self
            .services
            .get_mut(&info.name)
            .and_then(|s| s.instances.get_mut(&info.id))
        {
            instance.last_seen = now;
            return false;
        }
        if self.ignored.contains(&info.id) {
            return false;
        }
        let claims = claims(&info, &self.subjects);
        if claims.is_empty() {
            tracing::debug!(service = %info.name, instance = %info.id, "ignoring an instance with no HTTP endpoint of this system");
            self.ignored.insert(info.id);
            return false;
        }
        tracing::info!(service = %info.name, instance = %info.id, routes = claims.len(), "instance joined");

        self.next_seq += 1;
        let seq = self.next_seq;
        let service = self.services.entry(info.name).or_insert_with(|| Service {
            seq,
            instances: HashMap::new(),
            gone: None,
        });
        service.gone = None;
        service.instances.insert(
            info.id,
            Instance {
                seq,
                claims,
                last_seen: now,
            },
        );
        true
    }

    /// An instance announced that it is leaving.
    pub fn down(&mut self, service: &str, id: &str, now: Instant) -> bool {
        self.ignored.remove(id);
        self.remove(service, id, now, "left")
    }

    /// Applies a sweep that started at `started`: every instance that
    /// answered is known, every one that did not is gone.
    pub fn sweep(&mut self, found: Vec<ServiceInfo>, started: Instant, now: Instant) -> bool {
        let answered: HashSet<String> = found.iter().map(|i| i.id.clone()).collect();
        let mut changed = false;
        for info in found {
            changed |= self.up(info, now);
        }
        let silent: Vec<(String, String)> = self
            .services
            .iter()
            .flat_map(|(name, service)| {
                service
                    .instances
                    .iter()
                    .filter(|(_, i)| i.last_seen < started)
                    .map(|(id, _)| (name.clone(), id.clone()))
            })
            .collect();
        for (service, id) in silent {
            changed |= self.remove(&service, &id, now, "stopped answering");
        }
        self.ignored.retain(|id| answered.contains(id));
        changed
    }

    /// Forgets services that have had no live instance for `retention`.
    pub fn expire(&mut self, retention: Duration, now: Instant) -> bool {
        let before = self.services.len();
        self.services.retain(|name, service| {
            let expired = service
                .gone
                .as_ref()
                .is_some_and(|gone| now.duration_since(gone.since) >= retention);
            if expired {
                tracing::info!(service = %name, "no instance came back: its routes are forgotten");
            }
            !expired
        });
        self.services.len() != before
    }

    /// The routes in force, the first-seen service first, and the services
    /// with a live instance.
    pub fn routes(&self) -> (Vec<Claim>, BTreeSet<String>) {
        let mut services: Vec<(&String, &Service)> = self.services.iter().collect();
        services.sort_by_key(|(_, s)| s.seq);
        let mut claims = Vec::new();
        let mut live = BTreeSet::new();
        for (name, service) in services {
            if let Some(gone) = &service.gone {
                claims.extend(gone.claims.iter().cloned());
                continue;
            }
            live.insert(name.clone());
            let mut instances: Vec<&Instance> = service.instances.values().collect();
            instances.sort_by_key(|i| i.seq);
            let mut seen = HashSet::new();
            for claim in instances.into_iter().flat_map(|i| &i.claims) {
                if seen.insert((&claim.method, claim.path())) {
                    claims.push(claim.clone());
                }
            }
        }
        (claims, live)
    }

    pub fn snapshot(&self) -> Snapshot {
        let (claims, live) = self.routes();
        Snapshot::build(&claims, live)
    }

    fn remove(&mut self, service: &str, id: &str, now: Instant, why: &str) -> bool {
        let Some(entry) = self.services.get_mut(service) else {
            return false;
        };
        let Some(instance) = entry.instances.remove(id) else {
            return false;
        };
        tracing::info!(service, instance = id, "instance {why}");
        if entry.instances.is_empty() {
            tracing::info!(
                service,
                "no live instance: its routes answer 503 until one returns or they are forgotten"
            );
            entry.gone = Some(Gone {
                since: now,
                claims: instance.claims,
            });
        }
        true
    }
}

/// The usable HTTP endpoints of an instance, in this system's namespace.
fn claims(info: &ServiceInfo, subjects: &Subjects) -> Vec<Claim> {
    info.endpoints
        .iter()
        .filter(|e| subjects.is_http(&e.subject))
        .filter_map(|e| {
            let checked = match HttpEndpoint::from_metadata(&e.metadata) {
                Ok(Some(endpoint)) => Claim::new(&info.name, &e.subject, endpoint),
                Ok(None) => Err("its metadata has no HTTP method and path".to_owned()),
                Err(error) => Err(error.to_string()),
            };
            checked
                .inspect_err(|reason| {
                    tracing::warn!(
                        service = %info.name,
                        instance = %info.id,
                        endpoint = %e.name,
                        %reason,
                        "endpoint skipped"
                    );
                })
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use http::Method;
    use shared_schemas::discovery::EndpointInfo;

    use super::*;
    use crate::routes::tests::endpoint;
    use crate::routes::{ConflictKind, Lookup};

    fn endpoint_info(service: &str, name: &str, method: &str, path: &str) -> EndpointInfo {
        EndpointInfo {
            name: name.into(),
            subject: format!("mc.http.{service}.{name}"),
            queue_group: "q".into(),
            metadata: endpoint(method, path).to_metadata(),
        }
    }

    fn info(service: &str, id: &str, routes: &[(&str, &str)]) -> ServiceInfo {
        ServiceInfo {
            name: service.into(),
            id: id.into(),
            version: "0.1.0".into(),
            description: String::new(),
            metadata: Default::default(),
            endpoints: routes
                .iter()
                .enumerate()
                .map(|(i, (method, path))| endpoint_info(service, &format!("e{i}"), method, path))
                .collect(),
        }
    }

    fn products(id: &str) -> ServiceInfo {
        info(
            "products",
            id,
            &[("GET", "/products"), ("GET", "/products/{id}")],
        )
    }

    fn registry() -> Registry {
        Registry::new(Subjects::default())
    }

    fn routed(snapshot: &Snapshot, path: &str) -> Option<String> {
        match snapshot.table.lookup(&Method::GET, path) {
            Lookup::Found { target, .. } => Some(target.service.clone()),
            _ => None,
        }
    }

    fn documented(snapshot: &Snapshot) -> Vec<String> {
        let document: serde_json::Value = serde_json::from_slice(&snapshot.openapi).unwrap();
        document["paths"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    #[test]
    fn an_announced_instance_is_routed_and_documented() {
        let mut registry = registry();
        let now = Instant::now();
        assert!(registry.up(products("a"), now));
        assert!(
            !registry.up(products("a"), now),
            "no change the second time"
        );
        let snapshot = registry.snapshot();
        assert_eq!(
            routed(&snapshot, "/products/1").as_deref(),
            Some("products")
        );
        assert_eq!(documented(&snapshot), ["/products", "/products/{id}"]);
        assert_eq!(snapshot.live.len(), 1);
    }

    #[test]
    fn replicas_share_routes_without_conflicts() {
        let mut registry = registry();
        let now = Instant::now();
        registry.up(products("a"), now);
        registry.up(products("b"), now);
        let snapshot = registry.snapshot();
        assert_eq!(snapshot.table.routes().len(), 2);
        assert!(snapshot.conflicts.is_empty(), "{:?}", snapshot.conflicts);
        assert_eq!(snapshot.live.len(), 1);
    }

    #[test]
    fn the_first_seen_service_keeps_a_contested_route() {
        let mut registry = registry();
        let now = Instant::now();
        registry.up(info("zeta", "z", &[("GET", "/items")]), now);
        registry.up(info("alpha", "a", &[("GET", "/items")]), now);
        // A new replica of the later service changes nothing.
        registry.up(info("alpha", "a2", &[("GET", "/items")]), now);
        let snapshot = registry.snapshot();
        assert_eq!(routed(&snapshot, "/items").as_deref(), Some("zeta"));
        let [conflict] = snapshot.conflicts.as_slice() else {
            panic!("one conflict: {:?}", snapshot.conflicts);
        };
        assert_eq!(conflict.kind, ConflictKind::Route);
        assert_eq!(conflict.service, "alpha");
    }

    #[test]
    fn a_service_without_instances_keeps_its_routes_undocumented_until_forgotten() {
        let mut registry = registry();
        let t0 = Instant::now();
        registry.up(products("a"), t0);
        registry.up(products("b"), t0);
        assert!(registry.down("products", "a", t0));
        assert_eq!(registry.snapshot().live.len(), 1);

        assert!(registry.down("products", "b", t0));
        assert!(!registry.down("products", "b", t0), "already gone");
        let snapshot = registry.snapshot();
        assert_eq!(routed(&snapshot, "/products").as_deref(), Some("products"));
        assert!(documented(&snapshot).is_empty());
        assert!(snapshot.live.is_empty());

        let retention = Duration::from_secs(60);
        assert!(!registry.expire(retention, t0 + Duration::from_secs(59)));
        assert!(registry.expire(retention, t0 + Duration::from_secs(60)));
        assert_eq!(routed(&registry.snapshot(), "/products"), None);
    }

    #[test]
    fn a_returning_instance_makes_its_service_live_again() {
        let mut registry = registry();
        let t0 = Instant::now();
        registry.up(products("a"), t0);
        registry.down("products", "a", t0);
        assert!(registry.up(products("c"), t0 + Duration::from_secs(1)));
        assert!(!registry.expire(Duration::ZERO, t0 + Duration::from_secs(2)));
        let snapshot = registry.snapshot();
        assert_eq!(snapshot.live.len(), 1);
        assert_eq!(documented(&snapshot).len(), 2);
    }

    #[test]
    fn instances_silent_in_a_sweep_are_gone() {
        let mut registry = registry();
        let t0 = Instant::now();
        registry.up(products("a"), t0);
        registry.up(products("b"), t0);
        let started = t0 + Duration::from_secs(5);
        let now = started + Duration::from_millis(250);
        assert!(registry.sweep(vec![products("b")], started, now));
        assert_eq!(registry.snapshot().live.len(), 1);
        assert!(
            !registry.sweep(vec![products("b")], now, now),
            "nothing new"
        );
        assert!(registry.sweep(Vec::new(), now + Duration::from_secs(5), now));
        assert!(registry.snapshot().live.is_empty());
    }

    #[test]
    fn instances_with_nothing_to_route_are_ignored() {
        let mut registry = registry();
        let now = Instant::now();
        // Another system on the same NATS.
        let mut other = products("x");
        for e in &mut other.endpoints {
            e.subject = e.subject.replacen("mc.", "shop.", 1);
        }
        assert!(!registry.up(other, now));
        // Broken metadata only.
        let mut broken = products("y");
        for e in &mut broken.endpoints {
            e.metadata.remove("http.timeout_ms");
        }
        assert!(!registry.up(broken, now));
        assert!(registry.snapshot().live.is_empty());
        assert_eq!(registry.ignored.len(), 2);
        registry.sweep(Vec::new(), now, now);
        assert!(registry.ignored.is_empty(), "forgotten once they are gone");
    }

    #[test]
    fn a_broken_endpoint_is_skipped_and_the_rest_routed() {
        let mut registry = registry();
        let mut instance = products("a");
        instance.endpoints[0]
            .metadata
            .insert("openapi.operation".into(), "{not json".into());
        assert!(registry.up(instance, Instant::now()));
        let snapshot = registry.snapshot();
        assert_eq!(routed(&snapshot, "/products"), None);
        assert_eq!(
            routed(&snapshot, "/products/1").as_deref(),
            Some("products")
        );
    }
}
