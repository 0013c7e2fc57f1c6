//! Keeping the route table fresh. Instances announce themselves when they
//! come up and go down, so the table changes within milliseconds; a
//! periodic `$SRV.INFO` sweep catches instances that died without a word
//! and announcements that were missed.
//!
//! A route no live instance serves any more keeps answering for a
//! retention period: requests get 503 (nobody answers) instead of 404
//! while its service restarts, and only a route retired for good
//! disappears, when the retention ends. That holds for every route of a
//! service whose last instance left and for a route only some instances
//! served (a canary's). The OpenAPI document lists live routes only.
//!
//! Instances of one service may run different versions side by side (a
//! canary, a rolling upgrade): the service serves the union of their
//! routes, each on the subject its own instances subscribe to, and a
//! route they describe differently is described by the newest version
//! and reported (`/system/routes`, and the log, once).

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
use crate::routes::{Claim, Conflict, RouteInfo, RouteTable, VersionConflict};

/// How long a sweep waits for `$SRV.INFO` answers.
const SWEEP_WINDOW: Duration = Duration::from_millis(250);

/// What the request path reads: replaced whole on every change.
pub struct Snapshot {
    pub table: RouteTable,
    pub openapi: Bytes,
    /// Claims that lost (a path another service holds, an invalid route,
    /// a schema name defined twice).
    pub conflicts: Vec<Conflict>,
    /// Routes the live versions of a service describe differently.
    pub version_conflicts: Vec<VersionConflict>,
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
    pub conflicts: Vec<ConflictView<'a>>,
}

impl<'a> RoutesView<'a> {
    pub fn of(snapshot: &'a Snapshot) -> Self {
        Self {
            routes: &snapshot.table.routes,
            conflicts: snapshot
                .conflicts
                .iter()
                .map(ConflictView::Claim)
                .chain(
                    snapshot
                        .version_conflicts
                        .iter()
                        .map(ConflictView::Versions),
                )
                .collect(),
        }
    }
}

/// One entry of the `conflicts` of `/system/routes`, by `kind`.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ConflictView<'a> {
    /// A claim the gateway ignores, in whole or in part.
    Claim(&'a Conflict),
    /// A route whose live versions differ.
    Versions(&'a VersionConflict),
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

/// How long the id of an instance that announced its departure is
/// remembered: a sweep answer it sent while draining must not bring it
/// back.
const DEPARTED_MEMORY: Duration = Duration::from_secs(60);

/// The known services and their instances.
#[derive(Default)]
struct Registry {
    services: BTreeMap<String, Service>,
    next_seen: u64,
    /// Instances that announced their departure, and when.
    departed: HashMap<String, Instant>,
}

struct Service {
    /// Order of first appearance: earlier services win route conflicts.
    first_seen: u64,
    instances: HashMap<String, Instance>,
    /// Since when no instance is live.
    gone_since: Option<Instant>,
    /// Routes no live instance serves any more, and since when: they
    /// answer 503 until the retention ends, then 404. A route only a
    /// canary served is retained like the routes of a service that left.
    retained: Vec<(Claim, Instant)>,
}

struct Instance {
    claims: Vec<Claim>,
    info: Arc<ServiceInfo>,
    last_seen: Instant,
}

/// One route of a live service: the claim of the instance that describes
/// it (see [`Service::live_routes`]) and every live version serving it.
struct LiveRoute {
    claim: Claim,
    versions: Vec<String>,
}

impl Service {
    /// Retains the routes of a departed instance that no remaining
    /// instance serves, from `now`.
    fn retain_unserved(&mut self, claims: Vec<Claim>, now: Instant) {
        for claim in claims {
            let served = self
                .instances
                .values()
                .flat_map(|i| &i.claims)
                .any(|c| same_route(c, &claim));
            let kept = self.retained.iter().any(|(c, _)| same_route(c, &claim));
            if !served && !kept {
                self.retained.push((claim, now));
            }
        }
        if self.instances.is_empty() {
            self.gone_since.get_or_insert(now);
        }
    }

    /// Every route the live instances serve, once: the union over
    /// versions. Where versions describe a route differently, the newest
    /// version's description is routed and documented (see [`rank`]),
    /// except that a token is required if any version requires one and
    /// the gateway waits for the longest timeout; the difference is
    /// reported.
    fn live_routes(&self, service: &str) -> (Vec<LiveRoute>, Vec<VersionConflict>) {
        let mut instances: Vec<&Instance> = self.instances.values().collect();
        instances.sort_by(|a, b| rank(&a.info, &b.info));
        // Per route, its claims, best-ranked first.
        let mut grouped: Vec<Vec<(&Claim, &str)>> = Vec::new();
        for instance in &instances {
            for claim in &instance.claims {
                let version = instance.info.version.as_str();
                match grouped.iter_mut().find(|g| same_route(g[0].0, claim)) {
                    Some(group) => group.push((claim, version)),
                    None => grouped.push(vec![(claim, version)]),
                }
            }
        }
        let mut routes = Vec::with_capacity(grouped.len());
        let mut conflicts = Vec::new();
        for group in grouped {
            let (chosen, documented) = group[0];
            let mut versions: Vec<String> = Vec::new();
            let mut differences: Vec<&'static str> = Vec::new();
            for (claim, version) in &group {
                if !versions.iter().any(|v| v == version) {
                    versions.push((*version).to_owned());
                }
                for difference in differences_between(chosen, claim) {
                    if !differences.contains(&difference) {
                        differences.push(difference);
                    }
                }
            }
            let mut claim = chosen.clone();
            claim.endpoint.auth = group.iter().any(|(c, _)| c.endpoint.auth);
            claim.endpoint.timeout_ms = group
                .iter()
                .map(|(c, _)| c.endpoint.timeout_ms)
                .max()
                .unwrap_or(claim.endpoint.timeout_ms);
            if !differences.is_empty() {
                let route = format!("{} {}", claim.endpoint.method, claim.endpoint.path);
                conflicts.push(VersionConflict {
                    method: claim.endpoint.method.clone(),
                    path: claim.endpoint.path.clone(),
                    service: service.to_owned(),
                    reason: format!(
                        "live versions {} of `{service}` describe {route} differently ({}); \
                         /openapi.json shows {documented}'s description, a token is required \
                         if any version requires one, and the longest timeout applies",
                        versions.join(", "),
                        differences.join(", "),
                    ),
                    versions: versions.clone(),
                    documented_version: documented.to_owned(),
                    differences: differences.iter().map(|d| (*d).to_owned()).collect(),
                });
            }
            routes.push(LiveRoute { claim, versions });
        }
        (routes, conflicts)
    }
}

/// The same method and path.
fn same_route(a: &Claim, b: &Claim) -> bool {
    a.endpoint.method == b.endpoint.method && a.endpoint.path == b.endpoint.path
}

/// What differs between two descriptions of one route.
fn differences_between(a: &Claim, b: &Claim) -> impl Iterator<Item = &'static str> {
    [
        (a.endpoint.operation != b.endpoint.operation, "operation"),
        (a.endpoint.schemas != b.endpoint.schemas, "schemas"),
        (a.endpoint.auth != b.endpoint.auth, "authentication"),
        (a.endpoint.timeout_ms != b.endpoint.timeout_ms, "timeout"),
        (a.subject != b.subject, "subject"),
    ]
    .into_iter()
    .filter_map(|(differs, what)| differs.then_some(what))
}

/// Which of two instances of a service describes a route they both
/// serve: the newer version by semantic-version precedence, so every
/// gateway shows the same document whatever order the instances started
/// in; then the one that started first; then the smaller id.
fn rank(a: &ServiceInfo, b: &ServiceInfo) -> std::cmp::Ordering {
    let started = |info: &ServiceInfo| {
        info.metadata.get(meta::STARTED).and_then(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        })
    };
    precedence::compare(&b.version, &a.version)
        .then_with(|| match (started(a), started(b)) {
            (Some(a), Some(b)) => a.cmp(&b),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        })
        .then_with(|| a.id.cmp(&b.id))
}

impl Registry {
    fn up(&mut self, info: ServiceInfo, subjects: &Subjects, now: Instant) {
        if self.departed.contains_key(&info.id) {
            return;
        }
        let claims = claims(&info, subjects);
        let next = &mut self.next_seen;
        let service = self.services.entry(info.name.clone()).or_insert_with(|| {
            *next += 1;
            Service {
                first_seen: *next,
                instances: HashMap::new(),
                gone_since: None,
                retained: Vec::new(),
            }
        });
        service.gone_since = None;
        service
            .retained
            .retain(|(old, _)| !claims.iter().any(|c| same_route(c, old)));
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
        self.departed.insert(id.to_owned(), now);
        if let Some(service) = self.services.get_mut(name)
            && let Some(gone) = service.instances.remove(id)
        {
            service.retain_unserved(gone.claims, now);
        }
    }

    /// Instances not seen since `started` did not answer the sweep.
    fn forget_silent(&mut self, started: Instant) {
        for service in self.services.values_mut() {
            let silent: Vec<String> = service
                .instances
                .iter()
                .filter(|(_, i)| i.last_seen < started)
                .map(|(id, _)| id.clone())
                .collect();
            for id in silent {
                if let Some(gone) = service.instances.remove(&id) {
                    service.retain_unserved(gone.claims, started);
                }
            }
        }
    }

    fn expire(&mut self, retention: Duration, now: Instant) {
        let within = |since: &Instant| now.duration_since(*since) < retention;
        for service in self.services.values_mut() {
            service.retained.retain(|(_, since)| within(since));
        }
        self.services
            .retain(|_, s| !s.instances.is_empty() || s.gone_since.as_ref().is_some_and(within));
        self.departed
            .retain(|_, at| now.duration_since(*at) < DEPARTED_MEMORY);
    }

    /// When the next retained route or gone service is due to expire.
    fn next_expiry(&self, retention: Duration) -> Option<Instant> {
        self.services
            .values()
            .flat_map(|s| {
                s.retained
                    .iter()
                    .map(|(_, since)| since)
                    .chain(&s.gone_since)
            })
            .min()
            .map(|since| *since + retention)
    }

    fn snapshot(&self) -> Snapshot {
        let mut services: Vec<(&String, &Service)> = self.services.iter().collect();
        services.sort_by_key(|(_, s)| s.first_seen);
        let mut offers: Vec<(Claim, Vec<String>)> = Vec::new();
        let mut version_conflicts = Vec::new();
        for (name, service) in &services {
            let (live, conflicts) = service.live_routes(name);
            offers.extend(live.into_iter().map(|r| (r.claim, r.versions)));
            version_conflicts.extend(conflicts);
            // Still routable (503 at once) until the retention elapses.
            offers.extend(
                service
                    .retained
                    .iter()
                    .map(|(claim, _)| (claim.clone(), Vec::new())),
            );
        }
        let table = RouteTable::build(offers.iter().cloned());
        // The document lists the live routes that won their path.
        let documented = offers
            .iter()
            .filter(|(c, versions)| {
                !versions.is_empty()
                    && table
                        .routes
                        .iter()
                        .any(|r| r.subject == c.subject && r.path == c.endpoint.path)
            })
            .map(|(c, _)| c);
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
            version_conflicts,
            table,
        }
    }
}

/// Semantic-version precedence (semver.org, rule 11): build metadata is
/// ignored, a pre-release ranks below its release, and a version that is
/// not semver ranks below every one that is.
mod precedence {
    use std::cmp::Ordering;

    struct Parsed<'a> {
        core: [u64; 3],
        pre: Vec<&'a str>,
    }

    fn parse(version: &str) -> Option<Parsed<'_>> {
        let version = version.split_once('+').map_or(version, |(v, _)| v);
        let (core, pre) = match version.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (version, None),
        };
        let mut numbers = core.split('.').map(|n| n.parse::<u64>().ok());
        let core = [numbers.next()??, numbers.next()??, numbers.next()??];
        if numbers.next().is_some() {
            return None;
        }
        let pre: Vec<&str> = pre.map(|p| p.split('.').collect()).unwrap_or_default();
        if pre.iter().any(|identifier| identifier.is_empty()) {
            return None;
        }
        Some(Parsed { core, pre })
    }

    pub fn compare(a: &str, b: &str) -> Ordering {
        match (parse(a), parse(b)) {
            (Some(a), Some(b)) => a
                .core
                .cmp(&b.core)
                .then_with(|| compare_pre(&a.pre, &b.pre)),
            (Some(_), None) => Ordering::Greater,
            (None, Some(_)) => Ordering::Less,
            (None, None) => Ordering::Equal,
        }
    }

    fn compare_pre(a: &[&str], b: &[&str]) -> Ordering {
        match (a.is_empty(), b.is_empty()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Greater,
            (false, true) => return Ordering::Less,
            (false, false) => {}
        }
        for (x, y) in a.iter().zip(b) {
            let order = match (x.parse::<u64>(), y.parse::<u64>()) {
                (Ok(x), Ok(y)) => x.cmp(&y),
                (Ok(_), Err(_)) => Ordering::Less,
                (Err(_), Ok(_)) => Ordering::Greater,
                (Err(_), Err(_)) => x.cmp(y),
            };
            if order != Ordering::Equal {
                return order;
            }
        }
        a.len().cmp(&b.len())
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
    report_new_version_conflicts(&[], &snapshot.version_conflicts);
    let shared = Shared(Arc::new(RwLock::new(Arc::new(snapshot))));
    let task = tokio::spawn({
        let shared = shared.clone();
        async move {
            let mut sweep = tokio::time::interval(interval);
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            sweep.tick().await;
            loop {
                // Retained routes turn 404 when their retention ends, not
                // at the next sweep.
                let expiry = registry.next_expiry(retention);
                let expired = async {
                    match expiry {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    announcement = announcements.next() => match announcement {
                        Some(Announcement::Up(info)) => {
                            tracing::info!(service = %info.name, instance = %info.id, version = %info.version, "instance up");
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
                    }
                    () = expired => {}
                }
                registry.expire(retention, Instant::now());
                let snapshot = registry.snapshot();
                let before = shared.load();
                report_new_conflicts(&before.conflicts, &snapshot.conflicts);
                report_new_version_conflicts(
                    &before.version_conflicts,
                    &snapshot.version_conflicts,
                );
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

/// Logs each difference between live versions once, when it appears.
fn report_new_version_conflicts(before: &[VersionConflict], now: &[VersionConflict]) {
    for conflict in now.iter().filter(|c| !before.contains(c)) {
        tracing::warn!(
            method = %conflict.method,
            path = %conflict.path,
            service = %conflict.service,
            versions = %conflict.versions.join(", "),
            documented = %conflict.documented_version,
            differences = %conflict.differences.join(", "),
            "live versions describe a route differently: the newest one's description is used"
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

    /// An instance of `products` at `version` serving `routes`, each a
    /// path and the operation id that describes it.
    fn release(id: &str, version: &str, routes: &[(&str, &str)]) -> ServiceInfo {
        let endpoints = routes
            .iter()
            .map(|(path, operation)| {
                let endpoint = HttpEndpoint {
                    method: "GET".into(),
                    path: (*path).into(),
                    timeout_ms: 1000,
                    auth: false,
                    operation: serde_json::json!({"operationId": operation}),
                    schemas: Default::default(),
                };
                let name = path.replace(['/', '{', '}'], "_");
                EndpointInfo {
                    subject: format!("mc.http.products.{name}"),
                    name,
                    queue_group: "q".into(),
                    metadata: endpoint.to_metadata(),
                }
            })
            .collect();
        ServiceInfo {
            name: "products".into(),
            id: id.into(),
            version: version.into(),
            description: String::new(),
            metadata: Default::default(),
            endpoints,
        }
    }

    fn versions_of<'a>(snapshot: &'a Snapshot, path: &str) -> Option<&'a [String]> {
        snapshot
            .table
            .routes
            .iter()
            .find(|r| r.path == path)
            .map(|r| r.versions.as_slice())
    }

    const AVAILABILITY: &str = "/products/{id}/availability";

    #[test]
    fn versions_serve_the_union_and_the_newest_describes_a_shared_route() {
        let subjects = Subjects::default();
        let t0 = Instant::now();
        let stable = || release("s", "0.1.0", &[("/products", "list")]);
        let canary = || {
            release(
                "c",
                "0.2.0-canary",
                &[("/products", "list_v2"), (AVAILABILITY, "availability")],
            )
        };
        // Whichever starts first, the same table and document.
        for canary_first in [false, true] {
            let mut registry = Registry::default();
            if canary_first {
                registry.up(canary(), &subjects, t0);
                registry.up(stable(), &subjects, t0);
            } else {
                registry.up(stable(), &subjects, t0);
                registry.up(canary(), &subjects, t0);
            }
            let snapshot = registry.snapshot();
            assert_eq!(snapshot.table.routes.len(), 2);
            assert_eq!(
                versions_of(&snapshot, "/products"),
                Some(&["0.2.0-canary".to_owned(), "0.1.0".to_owned()][..])
            );
            assert_eq!(
                versions_of(&snapshot, AVAILABILITY),
                Some(&["0.2.0-canary".to_owned()][..])
            );
            let paths = documented(&snapshot);
            assert_eq!(paths["/products"]["get"]["operationId"], "list_v2");
            assert_eq!(paths[AVAILABILITY]["get"]["operationId"], "availability");
            assert!(snapshot.conflicts.is_empty());
            let [conflict] = &snapshot.version_conflicts[..] else {
                panic!("one version conflict: {:?}", snapshot.version_conflicts);
            };
            assert_eq!(conflict.path, "/products");
            assert_eq!(conflict.documented_version, "0.2.0-canary");
            assert_eq!(conflict.versions, ["0.2.0-canary", "0.1.0"]);
            assert_eq!(conflict.differences, ["operation"]);
        }
    }

    #[test]
    fn a_route_only_a_departed_canary_served_is_retained_undocumented_then_expires() {
        let subjects = Subjects::default();
        let retention = Duration::from_secs(2);
        let mut registry = Registry::default();
        let t0 = Instant::now();
        registry.up(
            release("s", "0.1.0", &[("/products", "list")]),
            &subjects,
            t0,
        );
        let canary = release(
            "c",
            "0.2.0-canary",
            &[("/products", "list_v2"), (AVAILABILITY, "availability")],
        );
        registry.up(canary, &subjects, t0);
        assert_eq!(registry.next_expiry(retention), None);

        let t1 = t0 + Duration::from_secs(1);
        registry.down("products", "c", t1);
        let snapshot = registry.snapshot();
        assert_eq!(versions_of(&snapshot, AVAILABILITY), Some(&[][..]));
        assert_eq!(
            versions_of(&snapshot, "/products"),
            Some(&["0.1.0".to_owned()][..])
        );
        let paths = documented(&snapshot);
        assert!(paths[AVAILABILITY].is_null(), "{paths}");
        assert_eq!(paths["/products"]["get"]["operationId"], "list");
        assert!(snapshot.version_conflicts.is_empty());
        assert_eq!(snapshot.live_services(), 1);

        assert_eq!(registry.next_expiry(retention), Some(t1 + retention));
        registry.expire(retention, t1 + retention - Duration::from_millis(1));
        assert_eq!(registry.snapshot().table.routes.len(), 2);
        registry.expire(retention, t1 + retention);
        let snapshot = registry.snapshot();
        assert_eq!(versions_of(&snapshot, AVAILABILITY), None);
        assert_eq!(snapshot.table.routes.len(), 1);
        assert_eq!(registry.next_expiry(retention), None);
    }

    #[test]
    fn a_canary_back_within_the_retention_serves_its_route_again() {
        let subjects = Subjects::default();
        let mut registry = Registry::default();
        let t0 = Instant::now();
        let canary = |id: &str| release(id, "0.2.0-canary", &[(AVAILABILITY, "availability")]);
        registry.up(
            release("s", "0.1.0", &[("/products", "list")]),
            &subjects,
            t0,
        );
        registry.up(canary("c1"), &subjects, t0);
        registry.down("products", "c1", t0);
        registry.up(canary("c2"), &subjects, t0);
        let snapshot = registry.snapshot();
        assert_eq!(
            versions_of(&snapshot, AVAILABILITY),
            Some(&["0.2.0-canary".to_owned()][..])
        );
        assert_eq!(registry.next_expiry(Duration::from_secs(2)), None);
    }

    #[test]
    fn a_departed_instance_answering_a_late_sweep_stays_gone() {
        let subjects = Subjects::default();
        let mut registry = Registry::default();
        let t0 = Instant::now();
        registry.up(info("products", "a", "/products"), &subjects, t0);
        registry.down("products", "a", t0);
        // Still draining, it answered the sweep that followed.
        registry.up(info("products", "a", "/products"), &subjects, t0);
        let snapshot = registry.snapshot();
        assert_eq!(snapshot.live_services(), 0);
        assert!(documented(&snapshot)["/products"].is_null());
    }

    #[test]
    fn versions_follow_semantic_version_precedence() {
        use std::cmp::Ordering::{Equal, Greater, Less};
        let ascending = [
            "not-a-version",
            "0.1.0-alpha",
            "0.1.0-alpha.1",
            "0.1.0-alpha.beta",
            "0.1.0-beta.2",
            "0.1.0-beta.11",
            "0.1.0-rc.1",
            "0.1.0",
            "0.2.0-canary",
            "0.2.0",
            "0.10.0",
            "1.0.0",
        ];
        for pair in ascending.windows(2) {
            assert_eq!(precedence::compare(pair[0], pair[1]), Less, "{pair:?}");
            assert_eq!(precedence::compare(pair[1], pair[0]), Greater, "{pair:?}");
        }
        assert_eq!(precedence::compare("1.0.0+build.5", "1.0.0"), Equal);
        assert_eq!(precedence::compare("1.0", "1.0.0"), Less);
    }
}
