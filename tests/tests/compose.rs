//! `docker compose up`, checked without a container engine.
//!
//! The static checks read docker-compose.yml, deploy/Dockerfile and
//! deploy/postgres/init.sql and hold them against the workspace: every
//! container of the microcore image runs a binary the workspace has and the
//! image holds, with every variable that binary marks required (`<bin>
//! env`), waits only for dependencies that report healthy, and reaches
//! Postgres as a role that init.sql creates with that password and gives
//! the service's schema. A broken copy of the file is shown to be refused.
//!
//! The end-to-end test then runs the same binaries with exactly the
//! environment compose gives them, the compose network's hosts mapped to
//! loopback: the harness's nats-server for `nats`, a test database prepared
//! by init.sql for `postgres`, an OTLP receiver for `jaeger`. It runs each
//! container's health check, the shop's register → order → notification
//! flow through the gateway, and reads the trace and the tables back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use microcore_e2e::env_template::Variables;
use microcore_e2e::otlp::{Collector, Span};
use microcore_e2e::{
    HttpClient, NatsServer, SHOP, ServiceProcess, TestDb, binary, free_port, logs, wait,
};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;
use sqlx::AssertSqlSafe;

/// The image every application container runs, relative to the compose
/// file's directory.
const DOCKERFILE: &str = "deploy/Dockerfile";

/// The role and schema script the postgres container runs at its first
/// start.
const INIT_SQL: &str = "deploy/postgres/init.sql";

/// What each service may publish on the host, in compose's short syntax:
/// the gateway's HTTP port and the Jaeger UI, nothing else.
const PUBLISHED: &[(&str, &[&str])] = &[("gateway", &["8080:8080"]), ("jaeger", &["16686:16686"])];

/// The shortest `MC_AUTH_SECRET` the gateway accepts (HS256 key).
const MIN_SECRET_BYTES: usize = 32;

// ---- the compose file, as far as the checks read it ----

/// docker-compose.yml: environment in the map form, ports in the short
/// form, as the file writes them; fields the checks do not read are
/// ignored.
#[derive(Debug, Clone, Deserialize)]
struct Compose {
    services: BTreeMap<String, Service>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct Service {
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    build: Option<Build>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    depends_on: Option<DependsOn>,
    #[serde(default)]
    healthcheck: Option<Healthcheck>,
    #[serde(default)]
    ports: Vec<String>,
    #[serde(default)]
    restart: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Build {
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    dockerfile: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum DependsOn {
    /// The short form: start order only, no condition.
    List(Vec<String>),
    Map(BTreeMap<String, Dependency>),
}

#[derive(Debug, Clone, Deserialize)]
struct Dependency {
    #[serde(default)]
    condition: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Healthcheck {
    #[serde(default)]
    test: Vec<String>,
    #[serde(default)]
    disable: bool,
}

impl Compose {
    fn parse(text: &str) -> Result<Self, String> {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }

    /// The workspace's docker-compose.yml.
    fn load() -> Self {
        let path = logs::workspace_root().join("docker-compose.yml");
        Self::parse(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The services built from [`DOCKERFILE`], by name.
    fn applications(&self) -> impl Iterator<Item = (&String, &Service)> {
        self.services.iter().filter(|(_, s)| s.is_built_here())
    }
}

impl Service {
    fn is_built_here(&self) -> bool {
        self.build.as_ref().is_some_and(|build| {
            let context = Path::new(build.context.as_deref().unwrap_or("."));
            let dockerfile = context.join(build.dockerfile.as_deref().unwrap_or("Dockerfile"));
            normalized(&dockerfile) == Path::new(DOCKERFILE)
        })
    }

    /// The binary its command runs.
    fn binary(&self) -> Option<&str> {
        self.command.first().map(String::as_str)
    }

    fn dependencies(&self) -> Vec<(String, Option<String>)> {
        match &self.depends_on {
            None => Vec::new(),
            Some(DependsOn::List(names)) => names.iter().map(|n| (n.clone(), None)).collect(),
            Some(DependsOn::Map(map)) => map
                .iter()
                .map(|(n, d)| (n.clone(), d.condition.clone()))
                .collect(),
        }
    }

    /// Its environment as compose passes it, every `${…}` resolved to its
    /// default.
    fn resolved_environment(&self) -> Result<BTreeMap<String, String>, String> {
        self.environment
            .iter()
            .map(|(k, v)| Ok((k.clone(), interpolate(v).map_err(|e| format!("{k}: {e}"))?)))
            .collect()
    }
}

/// `path` without `.` components.
fn normalized(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// Compose's interpolation of `value` with no variable set, as on a
/// machine without a `.env`: `${NAME:-default}` and `${NAME-default}` give
/// their default, `$$` is a dollar sign. A variable without a default is
/// an error, so that `docker compose up` works with no setup.
fn interpolate(value: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed `${{` in {value:?}"))?;
            let expression = &body[..end];
            let default = expression
                .split_once(":-")
                .or_else(|| expression.split_once('-'))
                .map(|(_, default)| default)
                .ok_or_else(|| format!("`${{{expression}}}` has no default"))?;
            out.push_str(default);
            rest = &body[end + 1..];
        } else {
            return Err(format!(
                "`${after}` has no default (write `${{NAME:-default}}`)"
            ));
        }
    }
    out.push_str(rest);
    Ok(out)
}

// ---- what the compose file is checked against ----

/// The workspace, the image and the database script, as the compose file
/// must fit them.
#[derive(Debug, Clone)]
struct Deployment {
    /// Bin targets of the workspace, with the package of each.
    workspace_binaries: BTreeMap<String, String>,
    /// What deploy/Dockerfile builds into /usr/local/bin, each the binary
    /// of the package of the same name (it selects them with `-p`).
    image_binaries: BTreeSet<String>,
    /// By binary, what `<binary> env` lists.
    variables: BTreeMap<String, Variables>,
    /// Login roles init.sql creates, with their passwords.
    roles: BTreeMap<String, String>,
    /// Schemas init.sql creates, with their owners.
    schemas: BTreeMap<String, String>,
}

impl Deployment {
    /// Reads the workspace: its manifests (through `cargo metadata`), the
    /// Dockerfile, init.sql, and the `env` template of every binary of the
    /// image (built if needed).
    fn gather() -> Self {
        let root = logs::workspace_root();
        let image_binaries = image_binaries(&read(&root.join(DOCKERFILE)))
            .unwrap_or_else(|e| panic!("{DOCKERFILE}: {e}"));
        let variables = image_binaries
            .iter()
            .map(|name| (name.clone(), Variables::of(name)))
            .collect();
        let init = read(&root.join(INIT_SQL));
        Self {
            workspace_binaries: workspace_binaries(root),
            image_binaries,
            variables,
            roles: init_roles(&init),
            schemas: init_schemas(&init),
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The bin targets of every workspace member, with its package.
fn workspace_binaries(root: &Path) -> BTreeMap<String, String> {
    #[derive(Deserialize)]
    struct Metadata {
        packages: Vec<Package>,
    }
    #[derive(Deserialize)]
    struct Package {
        name: String,
        targets: Vec<Target>,
    }
    #[derive(Deserialize)]
    struct Target {
        name: String,
        kind: Vec<String>,
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(root.join("Cargo.toml"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo metadata: {e}"));
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Metadata = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("cargo metadata printed something else: {e}"));
    metadata
        .packages
        .into_iter()
        .flat_map(|p| {
            p.targets
                .into_iter()
                .filter(|t| t.kind.iter().any(|k| k == "bin"))
                .map(move |t| (t.name, p.name.clone()))
        })
        .collect()
}

/// The binaries the Dockerfile builds (its `ARG BINARIES="…"`), provided
/// it also installs what it built into /usr/local/bin, where a command
/// such as `["products"]` finds it.
fn image_binaries(dockerfile: &str) -> Result<BTreeSet<String>, String> {
    let list = dockerfile
        .lines()
        .find_map(|line| line.trim().strip_prefix("ARG BINARIES="))
        .ok_or("no `ARG BINARIES=\"…\"` names the binaries it builds")?;
    let installs = dockerfile.lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words.first() == Some(&"COPY") && words.last() == Some(&"/usr/local/bin/")
    });
    if !installs {
        return Err("no COPY puts the binaries into /usr/local/bin/".to_owned());
    }
    Ok(list
        .trim_matches('"')
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

/// `('role', 'password')` rows of init.sql.
fn init_roles(sql: &str) -> BTreeMap<String, String> {
    sql.lines()
        .filter_map(|line| {
            let row = line.trim().trim_end_matches(',');
            let (role, password) = row
                .strip_prefix("('")?
                .strip_suffix("')")?
                .split_once("', '")?;
            Some((role.to_owned(), password.to_owned()))
        })
        .collect()
}

/// `CREATE SCHEMA IF NOT EXISTS <schema> AUTHORIZATION <owner>;` lines of
/// init.sql.
fn init_schemas(sql: &str) -> BTreeMap<String, String> {
    sql.lines()
        .filter_map(
            |line| match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                [
                    "CREATE",
                    "SCHEMA",
                    "IF",
                    "NOT",
                    "EXISTS",
                    schema,
                    "AUTHORIZATION",
                    owner,
                ] => Some(((*schema).to_owned(), owner.trim_end_matches(';').to_owned())),
                _ => None,
            },
        )
        .collect()
}

/// `(role, password)` of a `postgres://role:password@host/db` URL.
fn database_credentials(url: &str) -> Option<(&str, &str)> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))?;
    let (credentials, _) = rest.split_once('@')?;
    credentials.split_once(':')
}

/// The port of a listen address such as `0.0.0.0:8080`.
fn port_of(address: &str) -> Option<&str> {
    address.rsplit_once(':').map(|(_, port)| port)
}

// ---- the check ----

/// Everything wrong with `compose` for `deployment`, one sentence each;
/// empty when it is fine.
fn problems(compose: &Compose, deployment: &Deployment) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, service) in &compose.services {
        check_service(compose, name, service, &mut problems);
    }
    for bin in &deployment.image_binaries {
        if deployment.workspace_binaries.get(bin) != Some(bin) {
            problems.push(format!(
                "{DOCKERFILE} builds package {bin} for binary {bin}, which it does not have"
            ));
        }
    }
    let mut images = BTreeSet::new();
    let mut secrets = BTreeMap::new();
    for (name, service) in compose.applications() {
        images.insert(service.image.clone());
        if let Ok(env) = service.resolved_environment()
            && let Some(secret) = env.get("MC_AUTH_SECRET")
        {
            secrets.insert(name.clone(), secret.clone());
        }
        check_application(name, service, deployment, &mut problems);
    }
    if images.len() > 1 {
        problems.push(format!(
            "the services built from {DOCKERFILE} name different images {images:?}: it is one image"
        ));
    }
    if secrets.values().collect::<BTreeSet<_>>().len() > 1 {
        problems.push(format!(
            "MC_AUTH_SECRET differs between {:?}: tokens one signs the others refuse",
            secrets.keys().collect::<Vec<_>>()
        ));
    }
    for (name, secret) in &secrets {
        if secret.len() < MIN_SECRET_BYTES {
            problems.push(format!(
                "service {name}: MC_AUTH_SECRET defaults to {} bytes, fewer than {MIN_SECRET_BYTES}",
                secret.len()
            ));
        }
    }
    problems
}

/// What holds for every container.
fn check_service(compose: &Compose, name: &str, service: &Service, problems: &mut Vec<String>) {
    if !has_healthcheck(service) {
        problems.push(format!("service {name} has no health check"));
    }
    if service.restart.as_deref().is_none_or(|r| r == "no") {
        problems.push(format!("service {name} has no restart policy"));
    }
    if let Err(e) = service.resolved_environment() {
        problems.push(format!("service {name}: {e}"));
    }
    for (dependency, condition) in service.dependencies() {
        match compose.services.get(&dependency) {
            None => problems.push(format!(
                "service {name} depends on {dependency}, which is not declared"
            )),
            Some(other) if !has_healthcheck(other) => problems.push(format!(
                "service {name} depends on {dependency}, which has no health check"
            )),
            Some(_) => {}
        }
        if condition.as_deref() != Some("service_healthy") {
            problems.push(format!(
                "service {name} depends on {dependency} with condition {condition:?}, \
                 not service_healthy"
            ));
        }
    }
    let allowed = PUBLISHED
        .iter()
        .find(|(service, _)| *service == name)
        .map_or(&[][..], |(_, ports)| *ports);
    if service.ports != allowed {
        problems.push(format!(
            "service {name} publishes {:?}; it may publish {allowed:?}",
            service.ports
        ));
    }
}

fn has_healthcheck(service: &Service) -> bool {
    service.healthcheck.as_ref().is_some_and(|h| {
        !h.disable && h.test.len() > 1 && matches!(h.test[0].as_str(), "CMD" | "CMD-SHELL")
    })
}

/// What holds for a container of the microcore image.
fn check_application(
    name: &str,
    service: &Service,
    deployment: &Deployment,
    problems: &mut Vec<String>,
) {
    let Some(bin) = service.binary() else {
        problems.push(format!("service {name} has no command to pick its binary"));
        return;
    };
    if !deployment.workspace_binaries.contains_key(bin) {
        problems.push(format!(
            "service {name} runs `{bin}`, which is no bin target of the workspace"
        ));
    }
    if !deployment.image_binaries.contains(bin) {
        problems.push(format!(
            "service {name} runs `{bin}`, which {DOCKERFILE} does not build (ARG BINARIES)"
        ));
    }
    let probe = ["CMD", bin, "health"];
    if service.healthcheck.as_ref().is_none_or(|h| h.test != probe) {
        problems.push(format!("service {name}: its health check is not {probe:?}"));
    }
    let Ok(env) = service.resolved_environment() else {
        return; // reported with the other services' problems
    };
    if let Some(variables) = deployment.variables.get(bin) {
        for variable in &variables.required {
            if env.get(variable).is_none_or(String::is_empty) {
                problems.push(format!(
                    "service {name} does not set {variable}, which `{bin} env` marks required"
                ));
            }
        }
        for variable in env.keys() {
            if !variables.known.contains(variable) {
                problems.push(format!(
                    "service {name} sets {variable}, which `{bin} env` does not list"
                ));
            }
        }
    }
    if let Some(listen) = env.get("MC_HTTP_ADDR").and_then(|a| port_of(a)) {
        for published in &service.ports {
            if port_of(published) != Some(listen) {
                problems.push(format!(
                    "service {name} publishes {published} but listens on port {listen}"
                ));
            }
        }
    }
    if let Some(url) = env.get("DATABASE_URL") {
        check_database_role(name, bin, url, deployment, problems);
    }
}

/// The service connects as a role init.sql creates, with that password,
/// and that role owns the service's schema (named after the service, the
/// kernel's default).
fn check_database_role(
    name: &str,
    bin: &str,
    url: &str,
    deployment: &Deployment,
    problems: &mut Vec<String>,
) {
    let Some((role, password)) = database_credentials(url) else {
        problems.push(format!(
            "service {name}: DATABASE_URL names no role and password: {url}"
        ));
        return;
    };
    match deployment.roles.get(role) {
        None => problems.push(format!(
            "service {name} connects as role {role}, which {INIT_SQL} does not create"
        )),
        Some(created) if created != password => problems.push(format!(
            "service {name} connects as {role} with another password than {INIT_SQL} gives it"
        )),
        Some(_) => {}
    }
    if deployment.schemas.get(bin).map(String::as_str) != Some(role) {
        problems.push(format!(
            "service {name}: {INIT_SQL} does not create schema {bin} owned by role {role}"
        ));
    }
}

// ---- the static tests ----

#[test]
fn the_compose_file_fits_the_workspace_the_image_and_the_database() {
    let compose = Compose::load();
    let applications: Vec<&str> = compose.applications().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        applications,
        ["gateway", "notifications", "orders", "products", "users"],
        "the containers of the microcore image"
    );
    let found = problems(&compose, &Deployment::gather());
    assert!(
        found.is_empty(),
        "docker-compose.yml:\n  {}",
        found.join("\n  ")
    );
}

/// The real compose file, changed by `change`, and what the check finds
/// wrong with it.
fn problems_after(change: impl FnOnce(&mut Compose), deployment: &Deployment) -> Vec<String> {
    let mut compose = Compose::load();
    change(&mut compose);
    problems(&compose, deployment)
}

#[track_caller]
fn expect_problem(found: &[String], words: &[&str]) {
    assert!(
        found.iter().any(|p| words.iter().all(|w| p.contains(w))),
        "no problem mentions {words:?}; found {found:#?}"
    );
}

fn service<'a>(compose: &'a mut Compose, name: &str) -> &'a mut Service {
    compose
        .services
        .get_mut(name)
        .unwrap_or_else(|| panic!("docker-compose.yml has no service {name}"))
}

#[test]
fn a_broken_compose_file_is_refused_with_the_service_and_the_reason() {
    let deployment = Deployment::gather();

    // The all-in-one binary's package is `microcore-app`: `-p microcore`
    // would build nothing.
    let mut image = deployment.clone();
    image.image_binaries.insert("microcore".to_owned());
    let found = problems(&Compose::load(), &image);
    expect_problem(&found, &["builds package microcore for binary microcore"]);

    let found = problems_after(
        |c| drop(service(c, "products").environment.remove("DATABASE_URL")),
        &deployment,
    );
    expect_problem(&found, &["service products", "DATABASE_URL", "required"]);

    let found = problems_after(
        |c| {
            service(c, "users")
                .environment
                .insert("MC_HEALT_ADDR".to_owned(), "0.0.0.0:8081".to_owned());
        },
        &deployment,
    );
    expect_problem(&found, &["service users", "MC_HEALT_ADDR", "does not list"]);

    // A workspace binary, but not one of the image.
    let found = problems_after(
        |c| service(c, "orders").command = vec!["microcore".to_owned()],
        &deployment,
    );
    expect_problem(&found, &["service orders", "`microcore`", "does not build"]);

    let found = problems_after(
        |c| service(c, "orders").command = vec!["ordres".to_owned()],
        &deployment,
    );
    expect_problem(&found, &["service orders", "`ordres`", "no bin target"]);

    let found = problems_after(
        |c| {
            service(c, "notifications").depends_on =
                Some(DependsOn::List(vec!["nats".to_owned(), "redis".to_owned()]))
        },
        &deployment,
    );
    expect_problem(
        &found,
        &["service notifications", "nats", "not service_healthy"],
    );
    expect_problem(&found, &["service notifications", "redis", "not declared"]);

    let found = problems_after(|c| service(c, "nats").healthcheck = None, &deployment);
    expect_problem(&found, &["service nats has no health check"]);
    expect_problem(&found, &["depends on nats, which has no health check"]);

    let found = problems_after(
        |c| service(c, "postgres").ports = vec!["5432:5432".to_owned()],
        &deployment,
    );
    expect_problem(&found, &["service postgres publishes", "5432"]);

    let found = problems_after(
        |c| {
            service(c, "users").environment.insert(
                "DATABASE_URL".to_owned(),
                "postgres://users:guessed@postgres:5432/microcore".to_owned(),
            );
        },
        &deployment,
    );
    expect_problem(&found, &["service users", "another password"]);

    let found = problems_after(
        |c| {
            service(c, "gateway")
                .environment
                .insert("MC_AUTH_SECRET".to_owned(), "${MC_AUTH_SECRET}".to_owned());
        },
        &deployment,
    );
    expect_problem(&found, &["service gateway", "MC_AUTH_SECRET", "no default"]);

    let found = problems_after(
        |c| {
            service(c, "users")
                .environment
                .insert("MC_AUTH_SECRET".to_owned(), "short".to_owned());
        },
        &deployment,
    );
    expect_problem(&found, &["MC_AUTH_SECRET differs"]);
    expect_problem(&found, &["service users", "fewer than 32"]);
}

#[test]
fn interpolation_takes_defaults_and_refuses_variables_without_one() {
    assert_eq!(interpolate("${A:-x}-${B-y}$$z").as_deref(), Ok("x-y$z"));
    assert_eq!(interpolate("plain").as_deref(), Ok("plain"));
    assert!(interpolate("${A}").is_err());
    assert!(interpolate("$A").is_err());
    assert!(interpolate("${A:-x").is_err());
}

// ---- the end-to-end run ----

/// One container of the microcore image, run here as a process.
struct Container {
    service: String,
    bin: PathBuf,
    env: Vec<(String, String)>,
    process: Option<ServiceProcess>,
}

/// The compose system on loopback: the harness's NATS and a database in
/// place of the `nats` and `postgres` containers, a collector in place of
/// `jaeger`, and the microcore containers as processes.
struct Stack {
    // Field order is drop order: processes before what they use.
    containers: Vec<Container>,
    collector: Collector,
    db: TestDb,
    nats: NatsServer,
}

impl Stack {
    async fn start(compose: &Compose) -> Self {
        let (nats, db, collector) =
            tokio::join!(NatsServer::start(), TestDb::create(), Collector::start());
        // What the postgres image does with /docker-entrypoint-initdb.d.
        let init = read(&logs::workspace_root().join(INIT_SQL));
        sqlx::raw_sql(AssertSqlSafe(init))
            .execute(db.pool())
            .await
            .unwrap_or_else(|e| panic!("{INIT_SQL} failed: {e}"));

        let options = db.pool().connect_options();
        let hosts = [
            ("nats://nats:4222".to_owned(), nats.url().to_owned()),
            (
                "@postgres:5432/microcore".to_owned(),
                format!(
                    "@{}:{}/{}",
                    options.get_host(),
                    options.get_port(),
                    db.name()
                ),
            ),
            ("http://jaeger:4318".to_owned(), collector.endpoint()),
        ];
        let containers = compose
            .applications()
            .map(|(name, service)| Container {
                service: name.clone(),
                bin: binary(service.binary().expect("checked: a command")),
                env: on_loopback(compose, name, service, &hosts),
                process: None,
            })
            .collect();
        Self {
            containers,
            collector,
            db,
            nats,
        }
    }

    fn container(&self, service: &str) -> &Container {
        self.containers
            .iter()
            .find(|c| c.service == service)
            .unwrap_or_else(|| panic!("no container {service}"))
    }

    fn gateway(&self) -> HttpClient {
        let address = self.container("gateway").var("MC_HTTP_ADDR");
        HttpClient::new(format!("http://{address}"))
    }

    /// Panics with `message` and the tail of every log.
    #[track_caller]
    fn fail(&self, message: impl std::fmt::Display) -> ! {
        let mut logs = String::new();
        for process in self.containers.iter().filter_map(|c| c.process.as_ref()) {
            logs.push_str(&process.diagnostics());
            logs.push('\n');
        }
        logs.push_str(&self.nats.process().diagnostics());
        panic!("{message}\n{logs}")
    }

    async fn wait_for<T, F, Fut>(&self, what: &str, timeout: Duration, probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        match wait::poll(timeout, probe).await {
            Some(value) => value,
            None => self.fail(format!("{what}: not within {timeout:?}")),
        }
    }
}

impl Container {
    fn var(&self, name: &str) -> &str {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{} has no {name}", self.service))
    }

    /// Runs its health check, `<bin> health` with its environment and
    /// nothing else, as Docker runs it in the container.
    async fn health(&self) -> Result<(), String> {
        let mut command = Command::new(&self.bin);
        command.arg("health").env_clear().envs(self.env.clone());
        let run = tokio::task::spawn_blocking(move || command.output());
        match tokio::time::timeout(wait::PROMPT, run).await {
            Ok(Ok(Ok(output))) if output.status.success() => Ok(()),
            Ok(Ok(Ok(output))) => Err(format!(
                "{}: {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )),
            Ok(Ok(Err(e))) => Err(format!("cannot run it: {e}")),
            Ok(Err(e)) => Err(format!("the probe thread failed: {e}")),
            Err(_) => Err(format!("no answer within {:?}", wait::PROMPT)),
        }
    }
}

/// The environment compose gives `service`, with the compose network's
/// `hosts` replaced by their stand-ins and each listen address by a free
/// loopback port (on one machine, the containers cannot all take 8081).
fn on_loopback(
    compose: &Compose,
    name: &str,
    service: &Service,
    hosts: &[(String, String)],
) -> Vec<(String, String)> {
    let env = service
        .resolved_environment()
        .unwrap_or_else(|e| panic!("service {name}: {e}"));
    env.into_iter()
        .map(|(key, mut value)| {
            if key == "MC_HTTP_ADDR" || key == "MC_HEALTH_ADDR" {
                value = format!("127.0.0.1:{}", free_port());
            }
            for (host, stand_in) in hosts {
                value = value.replace(host, stand_in);
            }
            if let Some(host) = url_host(&value) {
                assert!(
                    !compose.services.contains_key(host),
                    "service {name}: {key}={value} still names the compose host {host}"
                );
            }
            (key, value)
        })
        .collect()
}

/// The host of a URL such as `postgres://role:password@host:5432/db`.
fn url_host(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let address = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    address.split(':').next()
}

/// The one span of `trace` from `service` called `name`.
#[track_caller]
fn span<'a>(trace: &'a [Span], service: &str, name: &str) -> &'a Span {
    let found: Vec<&Span> = trace
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect();
    match found.as_slice() {
        [one] => one,
        _ => panic!(
            "expected one `{name}` span from {service}, found {}: {:#?}",
            found.len(),
            trace
                .iter()
                .map(|s| (&s.service, &s.name, &s.span_id, &s.parent_span_id))
                .collect::<Vec<_>>()
        ),
    }
}

#[tokio::test]
async fn the_compose_environment_runs_the_shop_end_to_end() {
    let compose = Compose::load();
    let mut stack = Stack::start(&compose).await;

    // Nothing runs yet: every health check must say so.
    for container in &stack.containers {
        if container.health().await.is_ok() {
            stack.fail(format!(
                "`{} health` succeeded with no instance running",
                container.service
            ));
        }
    }
    for container in &mut stack.containers {
        let process = ServiceProcess::spawn(&container.bin, container.env.clone());
        container.process = Some(process);
    }
    for index in 0..stack.containers.len() {
        let last = std::cell::RefCell::new(String::new());
        let healthy = wait::poll(Duration::from_secs(60), || {
            let stack = &stack;
            let last = &last;
            async move {
                let container = &stack.containers[index];
                match container.health().await {
                    Ok(()) => Some(()),
                    Err(e) => {
                        *last.borrow_mut() = e;
                        None
                    }
                }
            }
        })
        .await;
        let container = &mut stack.containers[index];
        let exited = container.process.as_mut().and_then(|p| p.exit_status());
        let service = container.service.clone();
        match (healthy, exited) {
            (_, Some(status)) => stack.fail(format!("{service} exited: {status}")),
            (None, None) => stack.fail(format!(
                "`{service} health` did not succeed within 60 s; last: {}",
                last.borrow()
            )),
            (Some(()), None) => {}
        }
    }

    let http = stack.gateway();
    // Healthy services have announced themselves: the gateway routes to
    // each (a protected route answers 401, not 404 or 503).
    stack
        .wait_for(
            "every service's routes at the gateway",
            wait::BOOT,
            || async {
                let status = |path: &str| {
                    let request = http.request(Method::GET, path);
                    async { http.try_send(request).await.ok().map(|r| r.status) }
                };
                (status("/products?limit=1").await == Some(StatusCode::OK)
                    && status("/users/me").await == Some(StatusCode::UNAUTHORIZED)
                    && status("/orders/1").await == Some(StatusCode::UNAUTHORIZED)
                    && status("/notifications").await == Some(StatusCode::UNAUTHORIZED))
                .then_some(())
            },
        )
        .await;

    // The shop: a product, a customer, an order, its notification.
    let product = http
        .post_json(
            "/products",
            &json!({"name": "Teapot", "price": 12.5, "stock": 5}),
        )
        .await
        .expect_success(StatusCode::CREATED)["id"]
        .clone();
    let account = http
        .sign_up("ada@example.com", "correct horse battery")
        .await;
    let order_trace = "7d3c2b1a0f9e8d7c6b5a493827161504";
    let order = http
        .send(
            http.request(Method::POST, "/orders")
                .bearer_auth(&account.token)
                .header(
                    "traceparent",
                    format!("00-{order_trace}-00f067aa0ba902b7-01"),
                )
                .json(&json!({"lines": [{"product_id": product, "quantity": 2}]})),
        )
        .await
        .expect_success(StatusCode::CREATED);
    let order_id = order["id"].as_i64().expect("an order id");
    let notifications = stack
        .wait_for(
            "the order's notification",
            Duration::from_secs(20),
            || async {
                let reply = http
                    .send(
                        http.request(Method::GET, "/notifications")
                            .bearer_auth(&account.token),
                    )
                    .await;
                let list = reply.json()["data"].as_array().cloned().unwrap_or_default();
                list.iter()
                    .any(|n| {
                        n["message"]
                            .as_str()
                            .is_some_and(|m| m.contains(&format!("#{order_id}")))
                    })
                    .then_some(list)
            },
        )
        .await;
    assert!(
        notifications.iter().any(|n| n["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Welcome"))),
        "{notifications:?}"
    );

    // One trace from the gateway through every service the order touched,
    // exported to the collector in Jaeger's place (default batch delay).
    let trace = stack
        .wait_for("the order's trace", Duration::from_secs(30), || async {
            let trace: Vec<Span> = stack
                .collector
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == order_trace)
                .collect();
            let has = |service: &str, name: &str| {
                trace.iter().any(|s| s.service == service && s.name == name)
            };
            // The last span of each process: each exports its spans in
            // the order they end, so the others are in by then.
            (has("gateway", "POST /orders")
                && has("products", "process order.placed")
                && has("notifications", "process order.placed")
                && has("orders", "process stock.reserved"))
            .then_some(trace)
        })
        .await;
    let front = span(&trace, "gateway", "POST /orders");
    let handler = span(&trace, "orders", "POST /orders");
    assert_eq!(handler.parent_span_id, front.span_id, "over NATS");
    let placed = span(&trace, "orders", "publish order.placed");
    let notified = span(&trace, "notifications", "process order.placed");
    assert_eq!(
        notified.parent_span_id, placed.span_id,
        "through the outbox"
    );
    span(&trace, "products", "respond products.quote");

    // The registration is a trace of its own: the gateway, the users
    // handler, and the consumer of `user.created` that welcomes the user.
    let registration = stack
        .wait_for(
            "the registration's spans",
            Duration::from_secs(30),
            || async {
                let spans = stack.collector.spans();
                let front = spans
                    .iter()
                    .find(|s| s.service == "gateway" && s.name == "POST /users")?;
                let in_trace = |service: &str, name: &str| {
                    spans.iter().any(|s| {
                        s.trace_id == front.trace_id && s.service == service && s.name == name
                    })
                };
                let handled = spans.iter().any(|s| {
                    s.service == "users"
                        && s.name == "POST /users"
                        && s.parent_span_id == front.span_id
                });
                (handled && in_trace("notifications", "process user.created"))
                    .then(|| front.trace_id.clone())
            },
        )
        .await;
    assert_ne!(registration, order_trace);

    // Each service created its tables in its own schema, as its own role,
    // and wrote its rows there.
    let pool = stack.db.pool();
    for service in SHOP {
        let owner: Option<String> = sqlx::query_scalar(
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $1",
        )
        .bind(service)
        .fetch_optional(pool)
        .await
        .unwrap_or_else(|e| panic!("cannot read schema {service}: {e}"));
        assert_eq!(
            owner.as_deref(),
            Some(service),
            "the owner of schema {service}"
        );
        let tables: Vec<(String, String)> = sqlx::query_as(
            "SELECT tablename::text, tableowner::text FROM pg_tables WHERE schemaname = $1",
        )
        .bind(service)
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("cannot list the tables of {service}: {e}"));
        assert!(
            tables.iter().any(|(table, _)| table == service),
            "schema {service} holds table {service}: {tables:?}"
        );
        for (table, owner) in &tables {
            assert_eq!(owner, service, "the owner of {service}.{table}");
        }
        assert!(
            stack.db.count(&format!("{service}.{service}")).await > 0,
            "{service}.{service} has rows"
        );
    }
    let elsewhere: Vec<(String, String)> = sqlx::query_as(
        "SELECT schemaname::text, tablename::text FROM pg_tables \
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema', 'products', 'users', \
         'orders', 'notifications')",
    )
    .fetch_all(pool)
    .await
    .expect("the table list");
    assert!(
        elsewhere.is_empty(),
        "tables outside the services' schemas: {elsewhere:?}"
    );

    // `docker compose stop`: SIGTERM, then a clean exit well within the
    // stop_grace_period.
    for container in &mut stack.containers {
        let Some(process) = container.process.as_mut() else {
            continue;
        };
        let status = process.terminate(wait::SHUTDOWN).await;
        assert!(
            status.success(),
            "{} exited with {status}",
            container.service
        );
    }
}
