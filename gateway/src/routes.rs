//! The route table: which service answers which method and path.
//!
//! A table is built whole from the claims of the known services, in the
//! order the services were first seen, and never changed afterwards:
//! discovery builds a new one when something changes (see `snapshot`), so
//! matching a request takes no lock and rebuilds nothing.
//!
//! Matching is matchit's: static segments win over parameters whatever the
//! registration order, so `/products/search` is never captured by
//! `/products/{id}`. A method and path claimed twice keep their first
//! owner, and the refused claim is reported (`/system/routes`), never
//! silently dropped; so is a claim on a path the gateway serves itself.
//! Replicas of one service are merged before they get here (see
//! `registry`), so a second claim is always a rival.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method};
use serde::Serialize;
use shared_schemas::discovery::HttpEndpoint;

/// The name the gateway's own paths are reported under.
pub const GATEWAY: &str = "gateway";

/// Paths the gateway serves itself: a service can claim neither them nor
/// anything below them.
pub const RESERVED: &[&str] = &["/openapi.json", "/docs", "/health", "/system"];

/// One HTTP endpoint a service offers, checked for use.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub service: String,
    /// The NATS subject the endpoint listens on.
    pub subject: String,
    pub method: Method,
    /// The announced endpoint; its method is upper case.
    pub endpoint: HttpEndpoint,
    /// The path template as the `Mc-Route` header value.
    route: HeaderValue,
}

impl Claim {
    /// Checks an announced endpoint; the error says what is broken.
    pub fn new(service: &str, subject: &str, mut endpoint: HttpEndpoint) -> Result<Self, String> {
        endpoint.method.make_ascii_uppercase();
        let method = Method::from_bytes(endpoint.method.as_bytes())
            .map_err(|_| format!("`{}` is not an HTTP method", endpoint.method))?;
        let path = &endpoint.path;
        if !path.starts_with('/') {
            return Err(format!("path `{path}` does not start with `/`"));
        }
        // A request path is visible ASCII (anything else is
        // percent-encoded), so a template with other characters could
        // never match, and it must fit in a header.
        let route = HeaderValue::from_str(path)
            .ok()
            .filter(|_| path.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| format!("path `{path}` has characters a URL cannot carry"))?;
        if endpoint.timeout_ms == 0 {
            return Err("the timeout is 0 ms".to_owned());
        }
        if !endpoint.operation.is_object() {
            return Err("the OpenAPI operation is not an object".to_owned());
        }
        Ok(Self {
            service: service.to_owned(),
            subject: subject.to_owned(),
            method,
            endpoint,
            route,
        })
    }

    /// The path template, e.g. `/products/{id}`.
    pub fn path(&self) -> &str {
        &self.endpoint.path
    }
}

/// Where a matched request goes.
#[derive(Debug)]
pub struct Target {
    pub service: String,
    pub subject: String,
    /// The template that matched, ready to send as `Mc-Route`.
    pub route: HeaderValue,
    /// How long the service may take to reply.
    pub timeout: Duration,
}

/// A route as `/system/routes` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteInfo {
    pub method: String,
    pub path: String,
    pub service: String,
    pub subject: String,
}

/// Why a claim was refused, or its schema left out of the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictKind {
    /// The method and path are served already, or the path cannot be told
    /// apart from one that is (`/items/{id}` and `/items/{name}`).
    Route,
    /// The gateway serves the path itself.
    Reserved,
    /// The path template is malformed.
    InvalidPath,
    /// A component schema of the same name is already documented with
    /// another definition.
    Schema,
}

/// A claim that lost, and to whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub kind: ConflictKind,
    pub method: String,
    pub path: String,
    /// The service whose claim was refused.
    pub service: String,
    pub subject: String,
    /// The schema name, for a [`ConflictKind::Schema`] conflict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Who keeps what was claimed; `None` when the claim is invalid on its
    /// own.
    pub kept_by: Option<Owner>,
    pub reason: String,
}

impl Conflict {
    pub fn new(
        kind: ConflictKind,
        claim: &Claim,
        kept_by: Option<Owner>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            method: claim.method.to_string(),
            path: claim.path().to_owned(),
            service: claim.service.clone(),
            subject: claim.subject.clone(),
            schema: None,
            kept_by,
            reason: reason.into(),
        }
    }
}

/// The first claimant of something another claim wanted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub service: String,
    /// `None` for the gateway's own paths.
    pub subject: Option<String>,
    pub path: String,
}

impl Owner {
    pub fn of(claim: &Claim) -> Self {
        Self {
            service: claim.service.clone(),
            subject: Some(claim.subject.clone()),
            path: claim.path().to_owned(),
        }
    }
}

/// The outcome of matching a request.
pub enum Lookup<'t, 'p> {
    Found {
        target: &'t Arc<Target>,
        params: matchit::Params<'t, 'p>,
    },
    /// The path exists for other methods: the `Allow` header value.
    MethodNotAllowed {
        allow: &'t HeaderValue,
    },
    NotFound,
}

/// The routes of one path template.
struct PathRoutes {
    methods: Vec<(Method, Arc<Target>)>,
    /// The `Allow` header a wrong method gets, computed once.
    allow: HeaderValue,
}

/// Method and path to service, and the claims that were refused.
#[derive(Default)]
pub struct RouteTable {
    router: matchit::Router<usize>,
    /// Indexed by the router's values.
    paths: Vec<PathRoutes>,
    by_template: HashMap<String, usize>,
    routes: Vec<RouteInfo>,
    conflicts: Vec<Conflict>,
}

impl RouteTable {
    /// Builds the table; earlier claims win.
    pub fn build<'a>(claims: impl IntoIterator<Item = &'a Claim>) -> Self {
        let mut table = Self::default();
        for claim in claims {
            if let Err(conflict) = table.add(claim) {
                table.conflicts.push(*conflict);
            }
        }
        for path in &mut table.paths {
            path.allow = allow_header(&path.methods);
        }
        table
    }

    fn add(&mut self, claim: &Claim) -> Result<(), Box<Conflict>> {
        let path = claim.path();
        if let Some(reserved) = RESERVED.iter().find(|r| is_under(path, r)) {
            let owner = Owner {
                service: GATEWAY.to_owned(),
                subject: None,
                path: (*reserved).to_owned(),
            };
            let reason = format!("the gateway serves {reserved} itself");
            return Err(Box::new(Conflict::new(
                ConflictKind::Reserved,
                claim,
                Some(owner),
                reason,
            )));
        }

        let index = match self.by_template.get(path) {
            Some(&index) => index,
            None => {
                let index = self.paths.len();
                self.router
                    .insert(path, index)
                    .map_err(|e| Box::new(self.insert_conflict(claim, e)))?;
                self.paths.push(PathRoutes {
                    methods: Vec::new(),
                    allow: HeaderValue::from_static(""),
                });
                self.by_template.insert(path.to_owned(), index);
                index
            }
        };

        let methods = &mut self.paths[index].methods;
        if let Some((_, owner)) = methods.iter().find(|(m, _)| *m == claim.method) {
            let reason = format!(
                "{} {path} is already served by `{}`",
                claim.method, owner.service
            );
            let owner = Owner {
                service: owner.service.clone(),
                subject: Some(owner.subject.clone()),
                path: path.to_owned(),
            };
            return Err(Box::new(Conflict::new(
                ConflictKind::Route,
                claim,
                Some(owner),
                reason,
            )));
        }
        methods.push((
            claim.method.clone(),
            Arc::new(Target {
                service: claim.service.clone(),
                subject: claim.subject.clone(),
                route: claim.route.clone(),
                timeout: Duration::from_millis(claim.endpoint.timeout_ms),
            }),
        ));
        self.routes.push(RouteInfo {
            method: claim.method.to_string(),
            path: path.to_owned(),
            service: claim.service.clone(),
            subject: claim.subject.clone(),
        });
        Ok(())
    }

    /// Explains why matchit refused a new template.
    fn insert_conflict(&self, claim: &Claim, error: matchit::InsertError) -> Conflict {
        match error {
            matchit::InsertError::Conflict { with } => {
                let owner = self
                    .by_template
                    .get(&with)
                    .and_then(|&i| self.paths[i].methods.first())
                    .map(|(_, target)| Owner {
                        service: target.service.clone(),
                        subject: Some(target.subject.clone()),
                        path: with.clone(),
                    });
                let reason = format!(
                    "`{}` cannot be told apart from the route `{with}`",
                    claim.path()
                );
                Conflict::new(ConflictKind::Route, claim, owner, reason)
            }
            other => Conflict::new(ConflictKind::InvalidPath, claim, None, other.to_string()),
        }
    }

    /// Matches a request. `HEAD` falls back to the `GET` route of the path.
    pub fn lookup<'t, 'p>(&'t self, method: &Method, path: &'p str) -> Lookup<'t, 'p> {
        let Ok(matched) = self.router.at(path) else {
            return Lookup::NotFound;
        };
        let routes = &self.paths[*matched.value];
        let find = |wanted: &Method| routes.methods.iter().find(|(m, _)| m == wanted);
        let found = find(method).or_else(|| {
            if *method == Method::HEAD {
                find(&Method::GET)
            } else {
                None
            }
        });
        match found {
            Some((_, target)) => Lookup::Found {
                target,
                params: matched.params,
            },
            None => Lookup::MethodNotAllowed {
                allow: &routes.allow,
            },
        }
    }

    /// True when `claim` is the route that serves its method and path.
    pub fn serves(&self, claim: &Claim) -> bool {
        self.by_template
            .get(claim.path())
            .and_then(|&i| {
                self.paths[i]
                    .methods
                    .iter()
                    .find(|(m, _)| *m == claim.method)
            })
            .is_some_and(|(_, t)| t.service == claim.service && t.subject == claim.subject)
    }

    /// Every route, in claim order.
    pub fn routes(&self) -> &[RouteInfo] {
        &self.routes
    }

    /// The claims that were refused, in claim order.
    pub fn conflicts(&self) -> &[Conflict] {
        &self.conflicts
    }
}

/// True when `path` is `prefix` or below it.
fn is_under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The methods of a path, sorted, with `HEAD` wherever `GET` is.
fn allow_header(methods: &[(Method, Arc<Target>)]) -> HeaderValue {
    let mut names: Vec<&str> = methods.iter().map(|(m, _)| m.as_str()).collect();
    if names.contains(&"GET") && !names.contains(&"HEAD") {
        names.push("HEAD");
    }
    names.sort_unstable();
    // Method names are tokens, always valid in a header.
    HeaderValue::from_str(&names.join(", ")).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::json;

    use super::*;

    pub(crate) fn endpoint(method: &str, path: &str) -> HttpEndpoint {
        HttpEndpoint {
            method: method.into(),
            path: path.into(),
            timeout_ms: 1000,
            operation: json!({"operationId": format!("{method} {path}")}),
            schemas: Default::default(),
        }
    }

    pub(crate) fn claim(service: &str, method: &str, path: &str) -> Claim {
        let subject = format!("mc.http.{service}.{}", path.replace(['/', '{', '}'], "_"));
        Claim::new(service, &subject, endpoint(method, path)).unwrap()
    }

    fn routed(table: &RouteTable, method: Method, path: &str) -> Option<String> {
        match table.lookup(&method, path) {
            Lookup::Found { target, .. } => Some(target.route.to_str().unwrap().to_owned()),
            _ => None,
        }
    }

    #[test]
    fn static_paths_win_over_parameters_whatever_the_order() {
        for claims in [
            [
                claim("products", "GET", "/products/{id}"),
                claim("products", "GET", "/products/search"),
            ],
            [
                claim("products", "GET", "/products/search"),
                claim("products", "GET", "/products/{id}"),
            ],
        ] {
            let table = RouteTable::build(&claims);
            assert!(table.conflicts().is_empty());
            assert_eq!(
                routed(&table, Method::GET, "/products/search").as_deref(),
                Some("/products/search")
            );
            assert_eq!(
                routed(&table, Method::GET, "/products/42").as_deref(),
                Some("/products/{id}")
            );
        }
    }

    #[test]
    fn parameters_are_captured_raw() {
        let claims = [claim("shop", "GET", "/shops/{shop}/items/{item}")];
        let table = RouteTable::build(&claims);
        let Lookup::Found { params, .. } = table.lookup(&Method::GET, "/shops/a%20b/items/7")
        else {
            panic!("expected a match");
        };
        let params: Vec<_> = params.iter().collect();
        assert_eq!(params, [("shop", "a%20b"), ("item", "7")]);
    }

    #[test]
    fn a_wrong_method_gets_the_allowed_ones_and_head_follows_get() {
        let claims = [
            claim("products", "POST", "/products"),
            claim("products", "GET", "/products"),
            claim("products", "DELETE", "/products/{id}"),
        ];
        let table = RouteTable::build(&claims);
        match table.lookup(&Method::PUT, "/products") {
            Lookup::MethodNotAllowed { allow } => assert_eq!(allow, "GET, HEAD, POST"),
            _ => panic!("expected 405"),
        }
        match table.lookup(&Method::GET, "/products/1") {
            Lookup::MethodNotAllowed { allow } => assert_eq!(allow, "DELETE"),
            _ => panic!("expected 405"),
        }
        assert_eq!(
            routed(&table, Method::HEAD, "/products").as_deref(),
            Some("/products")
        );
        assert!(matches!(
            table.lookup(&Method::HEAD, "/products/1"),
            Lookup::MethodNotAllowed { .. }
        ));
        assert!(matches!(
            table.lookup(&Method::GET, "/nope"),
            Lookup::NotFound
        ));
        assert!(matches!(
            table.lookup(&Method::GET, "/products/"),
            Lookup::NotFound
        ));
    }

    #[test]
    fn the_first_claim_wins_and_the_loser_is_reported() {
        let claims = [
            claim("products", "GET", "/items/{id}"),
            claim("catalog", "GET", "/items/{id}"),
            claim("catalog", "POST", "/items/{id}"),
        ];
        let table = RouteTable::build(&claims);
        assert_eq!(table.routes().len(), 2);
        assert_eq!(
            routed(&table, Method::GET, "/items/1").as_deref(),
            Some("/items/{id}")
        );
        assert!(table.serves(&claims[0]));
        assert!(!table.serves(&claims[1]));
        assert!(table.serves(&claims[2]));

        let [conflict] = table.conflicts() else {
            panic!("one conflict: {:?}", table.conflicts());
        };
        assert_eq!(conflict.kind, ConflictKind::Route);
        assert_eq!(conflict.service, "catalog");
        assert_eq!(conflict.method, "GET");
        let owner = conflict.kept_by.as_ref().unwrap();
        assert_eq!(owner.service, "products");
        assert_eq!(owner.subject.as_deref(), Some(claims[0].subject.as_str()));
    }

    #[test]
    fn paths_matchit_cannot_tell_apart_are_conflicts_with_their_owner() {
        let claims = [
            claim("products", "GET", "/items/{id}"),
            claim("catalog", "DELETE", "/items/{name}"),
            claim("catalog", "GET", "/bad/{"),
        ];
        let table = RouteTable::build(&claims);
        assert_eq!(table.routes().len(), 1);
        let [ambiguous, invalid] = table.conflicts() else {
            panic!("two conflicts: {:?}", table.conflicts());
        };
        assert_eq!(ambiguous.kind, ConflictKind::Route);
        let owner = ambiguous.kept_by.as_ref().unwrap();
        assert_eq!(
            (owner.service.as_str(), owner.path.as_str()),
            ("products", "/items/{id}")
        );
        assert_eq!(invalid.kind, ConflictKind::InvalidPath);
        assert!(invalid.kept_by.is_none());
    }

    #[test]
    fn the_gateways_own_paths_cannot_be_claimed() {
        let claims = [
            claim("x", "GET", "/docs"),
            claim("x", "GET", "/docs/index.html"),
            claim("x", "GET", "/openapi.json"),
            claim("x", "GET", "/health"),
            claim("x", "POST", "/system/routes"),
            claim("x", "GET", "/healthz"),
            claim("x", "GET", "/documents"),
            claim("x", "GET", "/systems/{id}"),
        ];
        let table = RouteTable::build(&claims);
        let refused: Vec<&str> = table.conflicts().iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            refused,
            [
                "/docs",
                "/docs/index.html",
                "/openapi.json",
                "/health",
                "/system/routes"
            ]
        );
        for conflict in table.conflicts() {
            assert_eq!(conflict.kind, ConflictKind::Reserved);
            assert_eq!(conflict.kept_by.as_ref().unwrap().service, GATEWAY);
        }
        assert_eq!(table.routes().len(), 3);
    }

    #[test]
    fn broken_endpoints_are_refused_with_a_reason() {
        let mut lower = endpoint("get", "/a");
        assert_eq!(
            Claim::new("s", "mc.http.s.a", lower.clone())
                .unwrap()
                .method,
            Method::GET
        );
        lower.method = "GE T".into();
        assert!(Claim::new("s", "mc.http.s.a", lower).is_err());
        assert!(Claim::new("s", "mc.http.s.a", endpoint("GET", "a")).is_err());
        assert!(Claim::new("s", "mc.http.s.a", endpoint("GET", "/a b")).is_err());
        assert!(Claim::new("s", "mc.http.s.a", endpoint("GET", "/é")).is_err());
        let mut zero = endpoint("GET", "/a");
        zero.timeout_ms = 0;
        assert!(Claim::new("s", "mc.http.s.a", zero).is_err());
        let mut operation = endpoint("GET", "/a");
        operation.operation = json!("get a");
        assert!(Claim::new("s", "mc.http.s.a", operation).is_err());
    }
}
