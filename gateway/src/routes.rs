//! The route table: which service answers which method and path. Static
//! paths win over parameterized ones whatever order they were registered in
//! (matchit's precedence), and a path claimed twice keeps its first owner;
//! the loser is reported, never silently dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method};
use serde::Serialize;
use shared_schemas::discovery::HttpEndpoint;

/// Paths the gateway serves itself.
const RESERVED: &[&str] = &["/openapi.json", "/docs", "/health", "/metrics", "/system"];

/// Where one route goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub service: String,
    pub subject: String,
    /// The route template, e.g. `/products/{id}`.
    pub route: Arc<str>,
    /// What the request's [`ROUTE`](shared_schemas::http::ROUTE) header says: `GET /products/{id}`.
    pub wire_route: HeaderValue,
    pub timeout: Duration,
    /// Requests need a verified access token.
    pub auth: bool,
}

/// One endpoint a service announced, in the order services were first seen.
#[derive(Debug, Clone)]
pub struct Claim {
    pub service: String,
    pub subject: String,
    pub endpoint: HttpEndpoint,
}

/// A claim that lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub method: String,
    pub path: String,
    pub service: String,
    /// Who keeps the route, when it is another service.
    pub kept_by: Option<String>,
    pub reason: String,
}

/// A route whose live versions (a canary beside the stable release, say)
/// describe it differently: the gateway routes and documents it as the
/// newest of them does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionConflict {
    pub method: String,
    pub path: String,
    pub service: String,
    /// Every live version serving the route, newest first.
    pub versions: Vec<String>,
    /// The version whose description `/openapi.json` shows.
    pub documented_version: String,
    /// What differs: `operation`, `schemas`, `authentication`, `timeout`,
    /// `subject`.
    pub differences: Vec<String>,
    pub reason: String,
}

/// A route as `/system/routes` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteInfo {
    pub method: String,
    pub path: String,
    pub service: String,
    pub subject: String,
    /// The live versions serving it, newest first; none while the route
    /// is retained after its last instance left (it answers 503).
    pub versions: Vec<String>,
}

/// The outcome of matching a request.
pub enum Lookup<'a> {
    Found {
        target: &'a Arc<Target>,
        params: Vec<(&'a str, &'a str)>,
    },
    /// The path exists with other methods (the `Allow` value).
    MethodNotAllowed(String),
    NotFound,
}

#[derive(Default)]
pub struct RouteTable {
    router: matchit::Router<usize>,
    /// Per path template: its methods and targets.
    paths: Vec<Vec<(Method, Arc<Target>)>>,
    pub routes: Vec<RouteInfo>,
    pub conflicts: Vec<Conflict>,
}

impl RouteTable {
    /// The table of `claims`, each with the live versions that serve it.
    pub fn build(claims: impl IntoIterator<Item = (Claim, Vec<String>)>) -> Self {
        let mut table = Self::default();
        let mut by_template: HashMap<String, usize> = HashMap::new();
        for (claim, versions) in claims {
            table.add(claim, versions, &mut by_template);
        }
        table
    }

    fn add(
        &mut self,
        claim: Claim,
        versions: Vec<String>,
        by_template: &mut HashMap<String, usize>,
    ) {
        let path = claim.endpoint.path.clone();
        let lost = |kept_by: Option<String>, reason: String| Conflict {
            method: claim.endpoint.method.clone(),
            path: path.clone(),
            service: claim.service.clone(),
            kept_by,
            reason,
        };
        let Ok(method) = Method::from_bytes(claim.endpoint.method.as_bytes()) else {
            self.conflicts
                .push(lost(None, "invalid HTTP method".into()));
            return;
        };
        if RESERVED.iter().any(|r| {
            path == *r
                || path
                    .strip_prefix(r)
                    .is_some_and(|rest| rest.starts_with('/'))
        }) {
            self.conflicts
                .push(lost(None, "the path is reserved by the gateway".into()));
            return;
        }
        let Ok(wire_route) = HeaderValue::try_from(format!("{method} {path}")) else {
            self.conflicts
                .push(lost(None, "the path cannot travel in a header".into()));
            return;
        };
        let index = match by_template.get(&path) {
            Some(&index) => index,
            None => {
                let index = self.paths.len();
                if let Err(e) = self.router.insert(path.clone(), index) {
                    self.conflicts.push(lost(None, e.to_string()));
                    return;
                }
                self.paths.push(Vec::new());
                by_template.insert(path.clone(), index);
                index
            }
        };
        let methods = &mut self.paths[index];
        if let Some((_, owner)) = methods.iter().find(|(m, _)| *m == method) {
            if owner.service == claim.service {
                // Another instance (or version) of the owner: the same route.
                return;
            }
            self.conflicts.push(lost(
                Some(owner.service.clone()),
                format!("{method} {path} is already served by `{}`", owner.service),
            ));
            return;
        }
        self.routes.push(RouteInfo {
            method: method.to_string(),
            path: path.clone(),
            service: claim.service.clone(),
            subject: claim.subject.clone(),
            versions,
        });
        methods.push((
            method,
            Arc::new(Target {
                service: claim.service,
                subject: claim.subject,
                route: path.into(),
                wire_route,
                timeout: Duration::from_millis(claim.endpoint.timeout_ms),
                auth: claim.endpoint.auth,
            }),
        ));
    }

    pub fn lookup<'a>(&'a self, method: &Method, path: &'a str) -> Lookup<'a> {
        let Ok(found) = self.router.at(path) else {
            return Lookup::NotFound;
        };
        let methods = &self.paths[*found.value];
        match methods.iter().find(|(m, _)| m == method) {
            Some((_, target)) => Lookup::Found {
                target,
                params: found.params.iter().collect(),
            },
            None => Lookup::MethodNotAllowed(
                methods
                    .iter()
                    .map(|(m, _)| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(service: &str, method: &str, path: &str) -> (Claim, Vec<String>) {
        let claim = Claim {
            service: service.into(),
            subject: format!("mc.http.{service}.{}", path.replace('/', "_")),
            endpoint: HttpEndpoint {
                method: method.into(),
                path: path.into(),
                timeout_ms: 1000,
                auth: false,
                operation: serde_json::json!({}),
                schemas: Default::default(),
            },
        };
        (claim, vec!["0.1.0".to_owned()])
    }

    fn found<'a>(table: &'a RouteTable, method: Method, path: &'a str) -> Option<&'a str> {
        match table.lookup(&method, path) {
            Lookup::Found { target, .. } => Some(&target.route),
            _ => None,
        }
    }

    #[test]
    fn static_paths_win_whatever_the_order() {
        let table = RouteTable::build([
            claim("products", "GET", "/products/{id}"),
            claim("products", "GET", "/products/search"),
        ]);
        assert_eq!(
            found(&table, Method::GET, "/products/search"),
            Some("/products/search")
        );
        assert_eq!(
            found(&table, Method::GET, "/products/42"),
            Some("/products/{id}")
        );
        match table.lookup(&Method::GET, "/products/42") {
            Lookup::Found { params, .. } => assert_eq!(params, [("id", "42")]),
            _ => panic!("expected a match"),
        }
    }

    #[test]
    fn wrong_method_lists_the_allowed_ones() {
        let table = RouteTable::build([
            claim("products", "GET", "/products"),
            claim("products", "POST", "/products"),
        ]);
        match table.lookup(&Method::DELETE, "/products") {
            Lookup::MethodNotAllowed(allow) => assert_eq!(allow, "GET, POST"),
            _ => panic!("expected 405"),
        }
        assert!(matches!(
            table.lookup(&Method::GET, "/nope"),
            Lookup::NotFound
        ));
    }

    #[test]
    fn the_first_claim_wins_and_conflicts_are_reported() {
        let table = RouteTable::build([
            claim("products", "GET", "/items/{id}"),
            claim("catalog", "GET", "/items/{id}"),
            claim("catalog", "GET", "/items/{item}"),
            claim("catalog", "GET", "/docs/x"),
        ]);
        assert_eq!(table.routes.len(), 1);
        assert_eq!(table.routes[0].service, "products");
        assert_eq!(table.conflicts.len(), 3);
        assert_eq!(table.conflicts[0].kept_by.as_deref(), Some("products"));
    }

    #[test]
    fn replicas_of_the_owner_are_not_conflicts() {
        let table = RouteTable::build([
            claim("products", "GET", "/products"),
            claim("products", "GET", "/products"),
        ]);
        assert_eq!(table.routes.len(), 1);
        assert!(table.conflicts.is_empty());
    }
}
