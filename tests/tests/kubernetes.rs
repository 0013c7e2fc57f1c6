//! The Kubernetes manifests of deploy/k8s, checked without a cluster.
//!
//! kustomize renders the directory as `kubectl apply -k deploy/k8s` would
//! (`kubectl kustomize`, or a `kustomize` binary), and kubernetes-validate
//! holds every object, of the render and of each file, against the
//! Kubernetes API's JSON schemas in strict mode: an unknown or misspelled
//! field fails, and so does a kind it has no schema for.
//!
//! Then the rules no schema knows are held against the workspace: every
//! domain service with a binary has a Deployment whose container runs that
//! binary, migrating first in an init container; every container gets each
//! variable its binary marks required (`<binary> env`), resolved through
//! the ConfigMaps and Secrets it references; the probes ask the health
//! listener's port and paths; replicas roll without losing capacity, a
//! PodDisruptionBudget covers each Deployment, and every pod is sized and
//! locked down. Broken copies show each kind of check failing.
//!
//! The tools are found through `K8S_VALIDATE_BIN` (which `scripts/test`
//! sets after installing kubernetes-validate from PyPI into
//! target/ci-tools/kubernetes-validate), `KUSTOMIZE_BIN` or `KUBECTL_BIN`,
//! then the install directory and `PATH`. A missing tool fails the suite,
//! in CI and elsewhere: the manifests are never reported good unchecked.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use microcore_e2e::env_template::Variables;
use microcore_e2e::logs;
use serde_json::Value;

/// The manifests, relative to the workspace root.
const MANIFESTS: &str = "deploy/k8s";

/// Where `scripts/test` installs kubernetes-validate, relative to the
/// workspace root.
const VALIDATE_VENV: &str = "target/ci-tools/kubernetes-validate";

/// The namespace kustomization.yaml puts everything in.
const NAMESPACE: &str = "microcore";

/// The image every container names in the files; kustomization.yaml's
/// `images:` replaces it by this name.
const IMAGE_PLACEHOLDER: &str = "microcore:latest";
const IMAGE_NAME: &str = "microcore";

/// The oldest Kubernetes the manifests are for: the gateway's preStop
/// `sleep` action is on by default from 1.30.
const OLDEST_KUBERNETES: &str = "1.30.0";

/// The label kustomization.yaml adds to every object.
const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "microcore");

/// The HTTP front; every other binary is a domain service.
const GATEWAY: &str = "gateway";

/// The gateway's listen address when `MC_HTTP_ADDR` is unset.
const GATEWAY_DEFAULT_ADDR: &str = "0.0.0.0:8080";

/// `MC_SHUTDOWN_GRACE_SECS` when unset.
const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 30;

/// Kubernetes' `terminationGracePeriodSeconds` when unset.
const DEFAULT_TERMINATION_GRACE_SECS: u64 = 30;

// ---- the tools ----

fn manifests_dir() -> PathBuf {
    logs::workspace_root().join(MANIFESTS)
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The file a tool variable names; panics when it names nothing.
fn from_variable(variable: &str) -> Option<PathBuf> {
    let path = std::env::var_os(variable).filter(|v| !v.is_empty())?;
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "{variable}={} is not a file",
        path.display()
    );
    Some(path)
}

fn validator() -> PathBuf {
    from_variable("K8S_VALIDATE_BIN")
        .or_else(|| {
            let installed = logs::workspace_root()
                .join(VALIDATE_VENV)
                .join("bin/kubernetes-validate");
            installed.is_file().then_some(installed)
        })
        .or_else(|| on_path("kubernetes-validate"))
        .unwrap_or_else(|| {
            panic!(
                "kubernetes-validate is missing, so the Kubernetes manifests cannot be checked. \
                 scripts/test installs it; by hand:\n  \
                 python3 -m venv {VALIDATE_VENV} && {VALIDATE_VENV}/bin/python -m pip install kubernetes-validate\n\
                 or point K8S_VALIDATE_BIN at one"
            )
        })
}

/// The command that renders a kustomization directory to stdout.
fn kustomize(dir: &Path) -> Command {
    let (program, subcommand) = from_variable("KUSTOMIZE_BIN")
        .map(|p| (p, "build"))
        .or_else(|| from_variable("KUBECTL_BIN").map(|p| (p, "kustomize")))
        .or_else(|| on_path("kustomize").map(|p| (p, "build")))
        .or_else(|| on_path("kubectl").map(|p| (p, "kustomize")))
        .unwrap_or_else(|| {
            panic!(
                "neither kustomize nor kubectl (which embeds kustomize) is on PATH, so \
                 {MANIFESTS} cannot be rendered; install kubectl 1.21 or newer, or point \
                 KUSTOMIZE_BIN or KUBECTL_BIN at one"
            )
        });
    let mut command = Command::new(program);
    command.arg(subcommand).arg(dir);
    command
}

/// The objects `kubectl apply -k dir` would send.
fn render(dir: &Path) -> Result<Vec<Value>, String> {
    let mut command = kustomize(dir);
    let output = command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{command:?} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    documents(&String::from_utf8_lossy(&output.stdout))
}

fn documents(text: &str) -> Result<Vec<Value>, String> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| e.to_string())?;
    Ok(documents.into_iter().filter(|d| !d.is_null()).collect())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The manifest files of the directory, kustomization.yaml aside.
fn manifest_files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("a readable directory entry").file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .filter(|name| name != "kustomization.yaml" && name != "kustomization.yml")
        .collect()
}

/// Runs kubernetes-validate in strict mode over `files`, against the
/// oldest Kubernetes the manifests support and the newest it knows: the
/// number of objects that passed, or its report. It only warns about a
/// kind it has no schema for; here that is a failure too.
fn validate_strict(files: &[PathBuf]) -> Result<usize, String> {
    let validator = validator();
    let mut passed = BTreeSet::new();
    for version in [Some(OLDEST_KUBERNETES), None] {
        let mut command = Command::new(&validator);
        command.arg("--strict");
        if let Some(version) = version {
            command.arg("--kubernetes-version").arg(version);
        }
        let output = command
            .args(files)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", validator.display()));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let faults: Vec<&str> = stdout
            .lines()
            .filter(|line| !line.starts_with("INFO "))
            .collect();
        if !output.status.success() || !faults.is_empty() {
            return Err(format!(
                "kubernetes-validate --strict against Kubernetes {} ({}):\n{}\n{}",
                version.unwrap_or("(newest)"),
                output.status,
                faults.join("\n"),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        passed.insert(
            stdout
                .lines()
                .filter(|line| line.contains(" passed for resource "))
                .count(),
        );
    }
    match passed.into_iter().collect::<Vec<_>>().as_slice() {
        [count] => Ok(*count),
        counts => Err(format!(
            "the versions passed different numbers of objects: {counts:?}"
        )),
    }
}

// ---- what the workspace expects ----

/// A binary of the workspace, as a deployment must run it.
struct Binary {
    /// The variables `<binary> env` prints uncommented.
    required: BTreeSet<String>,
    /// A domain service: owns a database, migrates, listens on
    /// `MC_HEALTH_ADDR`. The gateway listens on its HTTP address.
    domain: bool,
}

/// Binary name → what it needs: the gateway and every domain service.
type Expected = BTreeMap<String, Binary>;

/// The packages under services/ that build a binary.
fn domain_services() -> BTreeSet<String> {
    let services = logs::workspace_root().join("services");
    let domains: BTreeSet<String> = std::fs::read_dir(&services)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", services.display()))
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|dir| dir.join("src/main.rs").is_file() || dir.join("src/bin").is_dir())
        .filter_map(|dir| Some(dir.file_name()?.to_string_lossy().into_owned()))
        .collect();
    assert!(
        !domains.is_empty(),
        "no service with a binary under {}",
        services.display()
    );
    domains
}

/// The variables `<binary> env` marks required.
fn required_variables(name: &str) -> BTreeSet<String> {
    let required = Variables::of(name).required;
    assert!(
        required.contains("NATS_URL"),
        "`{name} env` marks no NATS_URL required: {required:?}"
    );
    required
}

fn expected() -> Expected {
    let mut expected: Expected = domain_services()
        .into_iter()
        .map(|name| {
            let required = required_variables(&name);
            (
                name,
                Binary {
                    required,
                    domain: true,
                },
            )
        })
        .collect();
    expected.insert(
        GATEWAY.to_owned(),
        Binary {
            required: required_variables(GATEWAY),
            domain: false,
        },
    );
    expected
}

// ---- reading objects ----

fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn namespace(object: &Value) -> &str {
    object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn string_map(value: &Value) -> BTreeMap<&str, &str> {
    value
        .as_object()
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// True when `selector`'s matchLabels are all among `labels` (and it has
/// no matchExpressions, which these manifests do not use).
fn selects(selector: &Value, labels: &BTreeMap<&str, &str>) -> bool {
    let wanted = string_map(&selector["matchLabels"]);
    !wanted.is_empty()
        && selector.get("matchExpressions").is_none()
        && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn pod_labels(deployment: &Value) -> BTreeMap<&str, &str> {
    string_map(&deployment["spec"]["template"]["metadata"]["labels"])
}

/// The objects of one kind in one namespace.
fn objects<'a>(
    all: &'a [Value],
    wanted_kind: &'a str,
    in_namespace: &'a str,
) -> impl Iterator<Item = &'a Value> {
    all.iter()
        .filter(move |o| kind(o) == wanted_kind && namespace(o) == in_namespace)
}

fn find<'a>(
    all: &'a [Value],
    wanted_kind: &str,
    in_namespace: &str,
    wanted: &str,
) -> Option<&'a Value> {
    all.iter()
        .find(|o| kind(o) == wanted_kind && namespace(o) == in_namespace && name(o) == wanted)
}

/// The keys of a ConfigMap or Secret with their values; a Secret's `data`
/// stays base64, which is enough to tell set from empty.
fn keys(object: &Value) -> BTreeMap<String, String> {
    let sections: &[&str] = match kind(object) {
        "Secret" => &["data", "stringData"],
        _ => &["data"],
    };
    sections
        .iter()
        .flat_map(|section| string_map(&object[*section]))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The environment a container starts with, as far as the manifests
/// decide it, and every reference that resolves to nothing. As in
/// Kubernetes, `envFrom` comes first and `env` overrides it.
fn container_env(
    all: &[Value],
    in_namespace: &str,
    container: &Value,
) -> (BTreeMap<String, String>, Vec<String>) {
    let mut env = BTreeMap::new();
    let mut faults = Vec::new();
    for source in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = source["prefix"].as_str().unwrap_or_default();
        for (reference, source_kind) in [("configMapRef", "ConfigMap"), ("secretRef", "Secret")] {
            let Some(reference) = source.get(reference) else {
                continue;
            };
            let wanted = reference["name"].as_str().unwrap_or_default();
            match find(all, source_kind, in_namespace, wanted) {
                Some(object) => {
                    for (key, value) in keys(object) {
                        env.insert(format!("{prefix}{key}"), value);
                    }
                }
                None if reference["optional"] == Value::Bool(true) => {}
                None => faults.push(format!(
                    "envFrom names {source_kind} `{wanted}`, which does not exist"
                )),
            }
        }
    }
    for variable in container["env"].as_array().into_iter().flatten() {
        let variable_name = variable["name"].as_str().unwrap_or_default().to_owned();
        if let Some(value) = variable.get("value") {
            env.insert(variable_name, value.as_str().unwrap_or_default().to_owned());
            continue;
        }
        let from = &variable["valueFrom"];
        let mut resolved = None;
        for (reference, source_kind) in
            [("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")]
        {
            let Some(reference) = from.get(reference) else {
                continue;
            };
            let wanted = reference["name"].as_str().unwrap_or_default();
            let key = reference["key"].as_str().unwrap_or_default();
            let value =
                find(all, source_kind, in_namespace, wanted).and_then(|o| keys(o).remove(key));
            match value {
                Some(value) => resolved = Some(value),
                None if reference["optional"] == Value::Bool(true) => {}
                None => faults.push(format!(
                    "{variable_name} refers to key `{key}` of {source_kind} `{wanted}`, which does not exist"
                )),
            }
        }
        if from.get("fieldRef").is_some() || from.get("resourceFieldRef").is_some() {
            resolved = Some("(set by the kubelet)".to_owned());
        }
        if let Some(value) = resolved {
            env.insert(variable_name, value);
        }
    }
    (env, faults)
}

/// The port a probe or a Service's targetPort means: a number, or the
/// name of one of the container's ports.
fn resolve_port(port: &Value, container: &Value) -> Option<u64> {
    if let Some(number) = port.as_u64() {
        return Some(number);
    }
    let wanted = port.as_str()?;
    container["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"].as_str() == Some(wanted))?["containerPort"]
        .as_u64()
}

/// The port of a listen address the kubelet can reach: not loopback,
/// which only the container itself can.
fn listen_port(variable: &str, address: &str) -> Result<u64, String> {
    let address: SocketAddr = address
        .trim()
        .parse()
        .map_err(|_| format!("{variable}={address:?} is not a socket address"))?;
    if address.ip().is_loopback() {
        return Err(format!(
            "{variable}={address} listens on loopback, where the kubelet's probes cannot reach it"
        ));
    }
    Ok(u64::from(address.port()))
}

fn is_zero(value: &Value) -> bool {
    value.as_u64() == Some(0) || value.as_str() == Some("0%")
}

fn is_positive(value: &Value) -> bool {
    value.as_u64().is_some_and(|n| n > 0)
        || value
            .as_str()
            .and_then(|s| s.strip_suffix('%'))
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

// ---- the rules ----

/// Everything in `all` that breaks the deployment rules, one line each.
fn violations(all: &[Value], expected: &Expected) -> Vec<String> {
    let mut faults = Vec::new();
    let mut deployed: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for deployment in all.iter().filter(|o| kind(o) == "Deployment") {
        let mut fault =
            |message: String| faults.push(format!("Deployment {}: {message}", name(deployment)));
        let ran = check_deployment(all, deployment, expected, &mut fault);
        if let Some(ran) = ran {
            deployed.entry(ran).or_default().push(name(deployment));
        }
    }
    for binary_name in expected.keys() {
        match deployed
            .get(binary_name.as_str())
            .map(Vec::len)
            .unwrap_or(0)
        {
            0 => faults.push(format!("no Deployment runs `{binary_name}`")),
            1 => {}
            _ => faults.push(format!(
                "several Deployments run `{binary_name}`: {:?}",
                deployed[binary_name.as_str()]
            )),
        }
    }
    check_services(all, expected, &mut faults);
    faults
}

/// Checks one Deployment; returns the workspace binary it runs.
fn check_deployment<'a>(
    all: &[Value],
    deployment: &'a Value,
    expected: &Expected,
    fault: &mut impl FnMut(String),
) -> Option<&'a str> {
    let in_namespace = namespace(deployment);
    let spec = &deployment["spec"];
    let pod = &spec["template"]["spec"];
    let labels = pod_labels(deployment);
    if !selects(&spec["selector"], &labels) {
        fault("its selector does not match its pod template's labels".into());
    }
    let replicas = spec["replicas"].as_u64().unwrap_or(1);
    if replicas < 2 {
        fault(format!(
            "{replicas} replica(s): one pod down would stop the service"
        ));
    }
    let strategy = &spec["strategy"];
    let rolling = &strategy["rollingUpdate"];
    if strategy["type"].as_str() != Some("RollingUpdate")
        || !is_zero(&rolling["maxUnavailable"])
        || !is_positive(&rolling["maxSurge"])
    {
        fault("a rollout must be RollingUpdate with maxUnavailable 0 and a maxSurge above 0, so that capacity never drops".into());
    }
    check_disruption_budget(all, in_namespace, &labels, replicas, fault);

    let run_as_non_root = pod["securityContext"]["runAsNonRoot"] == Value::Bool(true);
    let init_containers = pod["initContainers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let containers = pod["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for container in init_containers.iter().chain(containers) {
        check_container(
            all,
            in_namespace,
            container,
            run_as_non_root,
            expected,
            fault,
        );
    }

    let mut ran = None;
    for container in containers {
        let Some(binary_name) = command(container).first().copied() else {
            continue;
        };
        let Some(binary) = expected.get(binary_name) else {
            continue;
        };
        if ran.replace(binary_name).is_some() {
            fault("more than one container runs a workspace binary".into());
        }
        let (env, _) = container_env(all, in_namespace, container);
        check_probes(container, binary_name, binary, &env, fault);
        check_termination(pod, container, binary, &env, fault);
        if binary.domain {
            let migrate = [binary_name, "migrate"];
            if !init_containers.iter().any(|c| command(c) == migrate) {
                fault(format!(
                    "no init container runs `{binary_name} migrate` before the service starts"
                ));
            }
            if env.get("MC_MIGRATE_ON_BOOT").map(String::as_str) != Some("false") {
                fault(format!(
                    "container {} must have MC_MIGRATE_ON_BOOT=false: migrations are the init container's step",
                    container["name"].as_str().unwrap_or_default()
                ));
            }
        }
    }
    if ran.is_none() {
        fault(format!(
            "no container runs a binary of the workspace ({:?})",
            expected.keys().collect::<Vec<_>>()
        ));
    }
    ran
}

fn command(container: &Value) -> Vec<&str> {
    strings(&container["command"])
}

fn check_disruption_budget(
    all: &[Value],
    in_namespace: &str,
    labels: &BTreeMap<&str, &str>,
    replicas: u64,
    fault: &mut impl FnMut(String),
) {
    let budgets: Vec<&Value> = objects(all, "PodDisruptionBudget", in_namespace)
        .filter(|pdb| selects(&pdb["spec"]["selector"], labels))
        .collect();
    let [budget] = budgets.as_slice() else {
        fault(format!(
            "{} PodDisruptionBudgets select its pods; it needs exactly one",
            budgets.len()
        ));
        return;
    };
    let budget_spec = &budget["spec"];
    let allows_eviction = match (
        budget_spec["minAvailable"].as_u64(),
        &budget_spec["maxUnavailable"],
    ) {
        (Some(min_available), _) => min_available >= 1 && min_available < replicas,
        (None, max_unavailable) => {
            is_positive(max_unavailable) || budget_spec["minAvailable"].is_string()
        }
    };
    if !allows_eviction {
        fault(format!(
            "PodDisruptionBudget {} must keep a pod up and still let a drain evict one of {replicas}",
            name(budget)
        ));
    }
}

fn check_container(
    all: &[Value],
    in_namespace: &str,
    container: &Value,
    pod_runs_as_non_root: bool,
    expected: &Expected,
    fault: &mut impl FnMut(String),
) {
    let container_name = container["name"].as_str().unwrap_or_default();
    let mut fault = |message: String| fault(format!("container {container_name}: {message}"));
    let resources = &container["resources"];
    for (section, resource) in [
        ("requests", "cpu"),
        ("requests", "memory"),
        ("limits", "memory"),
    ] {
        if resources[section][resource].is_null() {
            fault(format!("no resources.{section}.{resource}"));
        }
    }
    let security = &container["securityContext"];
    if !pod_runs_as_non_root && security["runAsNonRoot"] != Value::Bool(true) {
        fault("not runAsNonRoot".into());
    }
    if security["readOnlyRootFilesystem"] != Value::Bool(true) {
        fault("root filesystem not read-only".into());
    }
    if security["allowPrivilegeEscalation"] != Value::Bool(false) {
        fault("allowPrivilegeEscalation is not false".into());
    }
    if !strings(&security["capabilities"]["drop"]).contains(&"ALL") {
        fault("does not drop ALL capabilities".into());
    }
    let command = command(container);
    let Some(binary_name) = command.first() else {
        fault("no command: the image's default binary would run".into());
        return;
    };
    let Some(binary) = expected.get(*binary_name) else {
        fault(format!(
            "runs `{binary_name}`, which the workspace does not build"
        ));
        return;
    };
    let (env, env_faults) = container_env(all, in_namespace, container);
    for message in env_faults {
        fault(message);
    }
    for variable in &binary.required {
        if env.get(variable).is_none_or(String::is_empty) {
            fault(format!(
                "{variable} (required by `{binary_name} env`) is not set"
            ));
        }
    }
}

/// The port the binary's health endpoints listen on, from its environment.
fn health_port(binary: &Binary, env: &BTreeMap<String, String>) -> Result<u64, String> {
    if binary.domain {
        let variable = "MC_HEALTH_ADDR";
        let address = env
            .get(variable)
            .ok_or_else(|| format!("{variable} is not set: the service has no health listener"))?;
        listen_port(variable, address)
    } else {
        let variable = "MC_HTTP_ADDR";
        let address = env
            .get(variable)
            .map(String::as_str)
            .unwrap_or(GATEWAY_DEFAULT_ADDR);
        listen_port(variable, address)
    }
}

fn check_probes(
    container: &Value,
    binary_name: &str,
    binary: &Binary,
    env: &BTreeMap<String, String>,
    fault: &mut impl FnMut(String),
) {
    let container_name = container["name"].as_str().unwrap_or_default();
    let port = match health_port(binary, env) {
        Ok(port) => Some(port),
        Err(message) => {
            fault(format!("container {container_name}: {message}"));
            None
        }
    };
    let probes: [(&str, &[&str], bool); 3] = [
        ("readinessProbe", &["/health/ready"], true),
        ("livenessProbe", &["/health/live"], true),
        ("startupProbe", &["/health/live", "/health/ready"], false),
    ];
    for (probe_name, paths, required) in probes {
        let probe = &container[probe_name];
        if probe.is_null() {
            if required {
                fault(format!("container {container_name} has no {probe_name}"));
            }
            continue;
        }
        let get = &probe["httpGet"];
        let path = get["path"].as_str().unwrap_or_default();
        if !paths.contains(&path) {
            fault(format!(
                "container {container_name}: {probe_name} asks {path:?}, not {}",
                paths.join(" or ")
            ));
        }
        let probed = resolve_port(&get["port"], container);
        if let Some(port) = port
            && probed != Some(port)
        {
            fault(format!(
                "container {container_name}: {probe_name} asks port {}, but `{binary_name}` listens on {port}",
                get["port"]
            ));
        }
    }
}

/// The pod's grace period must outlast the preStop pause and the time the
/// service gives in-flight work after SIGTERM.
fn check_termination(
    pod: &Value,
    container: &Value,
    binary: &Binary,
    env: &BTreeMap<String, String>,
    fault: &mut impl FnMut(String),
) {
    let termination = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(DEFAULT_TERMINATION_GRACE_SECS);
    let pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    let drain = if binary.domain {
        match env
            .get("MC_SHUTDOWN_GRACE_SECS")
            .map(|v| v.trim().parse::<u64>())
        {
            None => DEFAULT_SHUTDOWN_GRACE_SECS,
            Some(Ok(secs)) => secs,
            Some(Err(_)) => {
                fault("MC_SHUTDOWN_GRACE_SECS is not a number of seconds".into());
                return;
            }
        }
    } else {
        0
    };
    if termination <= pause + drain {
        fault(format!(
            "terminationGracePeriodSeconds {termination} is not above the preStop pause ({pause} s) \
             plus MC_SHUTDOWN_GRACE_SECS ({drain} s): the kubelet would kill in-flight work"
        ));
    }
}

/// The gateway is reached through a Service and the Ingress; no domain is.
fn check_services(all: &[Value], expected: &Expected, faults: &mut Vec<String>) {
    let deployments: Vec<&Value> = all.iter().filter(|o| kind(o) == "Deployment").collect();
    let main_binary = |deployment: &Value| -> Option<String> {
        let containers = deployment["spec"]["template"]["spec"]["containers"].as_array()?;
        containers
            .iter()
            .filter_map(|c| command(c).first().map(|b| (*b).to_owned()))
            .find(|b| expected.contains_key(b))
    };
    let mut gateway_exposed = false;
    for service in all.iter().filter(|o| kind(o) == "Service") {
        let selector = &service["spec"]["selector"];
        let wanted = string_map(selector);
        let targets: Vec<&&Value> = deployments
            .iter()
            .filter(|d| namespace(d) == namespace(service))
            .filter(|d| {
                !wanted.is_empty() && wanted.iter().all(|(k, v)| pod_labels(d).get(k) == Some(v))
            })
            .collect();
        for deployment in targets {
            let Some(binary_name) = main_binary(deployment) else {
                continue;
            };
            if expected[&binary_name].domain {
                faults.push(format!(
                    "Service {} selects the pods of domain `{binary_name}`, which serves nothing but NATS",
                    name(service)
                ));
                continue;
            }
            let containers = deployment["spec"]["template"]["spec"]["containers"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            let Some(container) = containers
                .iter()
                .find(|c| command(c).first() == Some(&GATEWAY))
            else {
                continue;
            };
            let (env, _) = container_env(all, namespace(deployment), container);
            let http = env
                .get("MC_HTTP_ADDR")
                .map(String::as_str)
                .unwrap_or(GATEWAY_DEFAULT_ADDR);
            let http_port = listen_port("MC_HTTP_ADDR", http).ok();
            for port in service["spec"]["ports"].as_array().into_iter().flatten() {
                let target = port.get("targetPort").unwrap_or(&port["port"]);
                if resolve_port(target, container) == http_port {
                    gateway_exposed = true;
                } else {
                    faults.push(format!(
                        "Service {} port {} targets {target}, not the gateway's HTTP port {http_port:?}",
                        name(service),
                        port["port"]
                    ));
                }
            }
        }
    }
    if !gateway_exposed {
        faults.push("no Service reaches the gateway's HTTP port".into());
    }
    for ingress in all.iter().filter(|o| kind(o) == "Ingress") {
        for rule in ingress["spec"]["rules"].as_array().into_iter().flatten() {
            for path in rule["http"]["paths"].as_array().into_iter().flatten() {
                let backend = &path["backend"]["service"];
                let wanted = backend["name"].as_str().unwrap_or_default();
                let Some(service) = find(all, "Service", namespace(ingress), wanted) else {
                    faults.push(format!(
                        "Ingress {} routes to Service `{wanted}`, which does not exist",
                        name(ingress)
                    ));
                    continue;
                };
                let port = &backend["port"];
                let exists = service["spec"]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| {
                        (port.get("number").is_some() && p["port"] == port["number"])
                            || (port.get("name").is_some() && p["name"] == port["name"])
                    });
                if !exists {
                    faults.push(format!(
                        "Ingress {} routes to port {port} of Service `{wanted}`, which it has not",
                        name(ingress)
                    ));
                }
            }
        }
    }
}

// ---- helpers of the tests ----

/// The number of objects in `files`, all of which must pass.
fn expect_valid(files: &[PathBuf]) -> usize {
    validate_strict(files).unwrap_or_else(|report| panic!("{report}"))
}

fn rendered() -> Vec<Value> {
    render(&manifests_dir()).unwrap_or_else(|e| panic!("{e}"))
}

fn assert_no_violations(all: &[Value], expected: &Expected) {
    let faults = violations(all, expected);
    assert!(
        faults.is_empty(),
        "{MANIFESTS} breaks the deployment rules:\n  {}",
        faults.join("\n  ")
    );
}

/// Asserts the rules find a fault containing every one of `words`.
fn assert_caught(all: &[Value], expected: &Expected, words: &[&str]) {
    let faults = violations(all, expected);
    assert!(
        faults.iter().any(|f| words.iter().all(|w| f.contains(w))),
        "no fault mentions {words:?}; the rules found:\n  {}",
        faults.join("\n  ")
    );
}

fn deployment_mut<'a>(all: &'a mut [Value], wanted: &str) -> &'a mut Value {
    all.iter_mut()
        .find(|o| kind(o) == "Deployment" && name(o) == wanted)
        .unwrap_or_else(|| panic!("no Deployment {wanted}"))
}

fn main_container_mut<'a>(
    all: &'a mut [Value],
    wanted: &str,
) -> &'a mut serde_json::Map<String, Value> {
    deployment_mut(all, wanted)["spec"]["template"]["spec"]["containers"][0]
        .as_object_mut()
        .unwrap_or_else(|| panic!("Deployment {wanted} has no container"))
}

// ---- the tests ----

#[test]
fn kustomization_lists_every_manifest_and_sets_namespace_labels_and_image() {
    let dir = manifests_dir();
    let kustomization: Value = serde_saphyr::from_str(&read(&dir.join("kustomization.yaml")))
        .unwrap_or_else(|e| panic!("kustomization.yaml: {e}"));
    let listed: BTreeSet<String> = strings(&kustomization["resources"])
        .into_iter()
        .map(str::to_owned)
        .collect();
    for file in &listed {
        assert!(
            dir.join(file).is_file(),
            "kustomization.yaml lists {file}, which does not exist"
        );
    }
    let files = manifest_files(&dir);
    let unlisted: Vec<&String> = files.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "kustomization.yaml does not list {unlisted:?}: `kubectl apply -k` would leave them out"
    );
    assert_eq!(kustomization["namespace"].as_str(), Some(NAMESPACE));
    let image = kustomization["images"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["name"].as_str() == Some(IMAGE_NAME))
        .unwrap_or_else(|| panic!("kustomization.yaml has no `images:` entry for `{IMAGE_NAME}`"));
    let image = format!(
        "{}:{}",
        image["newName"].as_str().unwrap_or(IMAGE_NAME),
        image["newTag"].as_str().unwrap_or("latest")
    );

    // The files name the placeholder, which only kustomize replaces.
    for file in &files {
        for object in documents(&read(&dir.join(file))).unwrap_or_else(|e| panic!("{file}: {e}")) {
            let pod = &object["spec"]["template"]["spec"];
            for container in pod["initContainers"]
                .as_array()
                .into_iter()
                .chain(pod["containers"].as_array())
                .flatten()
            {
                assert_eq!(
                    container["image"].as_str(),
                    Some(IMAGE_PLACEHOLDER),
                    "{file}: container {} must name {IMAGE_PLACEHOLDER} for kustomize to replace",
                    container["name"]
                );
            }
        }
    }

    // The image holds every binary a container runs.
    let dockerfile = read(&logs::workspace_root().join("deploy/Dockerfile"));
    let in_image: BTreeSet<&str> = dockerfile
        .lines()
        .find_map(|line| line.trim().strip_prefix("ARG BINARIES="))
        .expect("deploy/Dockerfile declares ARG BINARIES=\"…\"")
        .trim_matches('"')
        .split_whitespace()
        .collect();

    let all = rendered();
    assert_eq!(
        objects(&all, "Namespace", "default")
            .filter(|n| name(n) == NAMESPACE)
            .count(),
        1,
        "the render holds no Namespace {NAMESPACE}"
    );
    for object in &all {
        let what = format!("{} {}", kind(object), name(object));
        if kind(object) != "Namespace" {
            assert_eq!(
                namespace(object),
                NAMESPACE,
                "{what} is not in namespace {NAMESPACE}"
            );
        }
        assert_eq!(
            string_map(&object["metadata"]["labels"]).get(PART_OF.0),
            Some(&PART_OF.1),
            "{what} lacks the label {}={}",
            PART_OF.0,
            PART_OF.1
        );
        let pod = &object["spec"]["template"]["spec"];
        for container in pod["initContainers"]
            .as_array()
            .into_iter()
            .chain(pod["containers"].as_array())
            .flatten()
        {
            assert_eq!(
                container["image"].as_str(),
                Some(image.as_str()),
                "{what}: kustomize did not set the image"
            );
            let runs = command(container).first().copied().unwrap_or_default();
            assert!(
                in_image.contains(runs),
                "{what} runs `{runs}`, which the image does not hold ({in_image:?})"
            );
        }
        if kind(object) == "Deployment" {
            assert_eq!(
                pod_labels(object).get(PART_OF.0),
                Some(&PART_OF.1),
                "{what}: the pods lack the label {}",
                PART_OF.0
            );
        }
    }
}

#[test]
fn every_manifest_and_the_render_pass_strict_schema_validation() {
    let dir = manifests_dir();
    let files: Vec<PathBuf> = manifest_files(&dir).iter().map(|f| dir.join(f)).collect();
    let in_files: usize = files
        .iter()
        .map(|f| {
            documents(&read(f))
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
                .len()
        })
        .sum();
    assert_eq!(
        expect_valid(&files),
        in_files,
        "objects validated in the files"
    );

    let mut command = kustomize(&dir);
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let render = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("a temporary file");
    std::fs::write(render.path(), &output.stdout).expect("the render written");
    let in_render = documents(&String::from_utf8_lossy(&output.stdout))
        .expect("the render parses")
        .len();
    assert_eq!(
        in_render, in_files,
        "the render holds other objects than the files"
    );
    assert_eq!(
        expect_valid(&[render.path().to_owned()]),
        in_render,
        "objects validated in the render"
    );
}

#[test]
fn the_manifests_keep_every_deployment_rule() {
    let expected = expected();
    assert!(
        expected["users"].required.contains("DATABASE_URL"),
        "`users env` marks no DATABASE_URL required"
    );
    assert_no_violations(&rendered(), &expected);
}

#[test]
fn a_misspelled_or_mistyped_field_fails_schema_validation() {
    let original = read(&manifests_dir().join("products.yaml"));
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let copy = scratch.path().join("products.yaml");
    std::fs::write(&copy, &original).expect("a copy written");
    expect_valid(std::slice::from_ref(&copy));

    for (from, to, reported) in [
        ("readinessProbe:", "readinesProbe:", "readinesProbe"),
        ("replicas: 2", "replicas: two", "replicas"),
        (
            "containerPort: 8081",
            "containerPort: \"8081\"",
            "containerPort",
        ),
    ] {
        assert!(
            original.contains(from),
            "products.yaml no longer has `{from}`"
        );
        std::fs::write(&copy, original.replacen(from, to, 1)).expect("a broken copy written");
        let report = validate_strict(std::slice::from_ref(&copy))
            .expect_err(&format!("`{to}` passed strict validation"));
        assert!(
            report.contains(reported),
            "the report of `{to}` does not name {reported}: {report}"
        );
    }
}

#[test]
fn a_deployment_without_readiness_probe_or_with_probes_on_another_port_is_caught() {
    let expected = expected();
    let mut all = rendered();
    main_container_mut(&mut all, "products").remove("readinessProbe");
    assert_caught(&all, &expected, &["Deployment products", "readinessProbe"]);

    let mut all = rendered();
    for object in all.iter_mut().filter(|o| kind(o) == "ConfigMap") {
        if object["data"].get("MC_HEALTH_ADDR").is_some() {
            object["data"]["MC_HEALTH_ADDR"] = Value::from("0.0.0.0:9090");
        }
    }
    for domain in domain_services() {
        assert_caught(
            &all,
            &expected,
            &[&format!("Deployment {domain}"), "listens on 9090"],
        );
    }

    let mut all = rendered();
    main_container_mut(&mut all, "gateway")["env"][0]["value"] = Value::from("127.0.0.1:8080");
    assert_caught(&all, &expected, &["Deployment gateway", "loopback"]);
}

#[test]
fn a_missing_or_dangling_variable_is_caught() {
    let expected = expected();
    let mut all = rendered();
    let products = main_container_mut(&mut all, "products");
    let env_from = products["envFrom"]
        .as_array_mut()
        .expect("products has envFrom");
    env_from.retain(|source| source.get("secretRef").is_none());
    assert_caught(&all, &expected, &["container products", "DATABASE_URL"]);

    let mut all = rendered();
    let gateway = main_container_mut(&mut all, "gateway");
    let env = gateway["env"].as_array_mut().expect("gateway has env");
    let auth = env
        .iter_mut()
        .find(|v| v["name"] == "MC_AUTH_SECRET")
        .expect("the gateway gets MC_AUTH_SECRET");
    auth["valueFrom"]["secretKeyRef"]["name"] = Value::from("no-such-secret");
    assert_caught(&all, &expected, &["container gateway", "no-such-secret"]);
}

#[test]
fn a_deployment_without_budget_migration_or_safe_rollout_is_caught() {
    let expected = expected();
    let mut all = rendered();
    all.retain(|o| !(kind(o) == "PodDisruptionBudget" && name(o) == "orders"));
    assert_caught(
        &all,
        &expected,
        &["Deployment orders", "PodDisruptionBudget"],
    );

    let mut all = rendered();
    deployment_mut(&mut all, "users")["spec"]["template"]["spec"]
        .as_object_mut()
        .expect("a pod spec")
        .remove("initContainers");
    assert_caught(&all, &expected, &["Deployment users", "users migrate"]);

    let mut all = rendered();
    deployment_mut(&mut all, "notifications")["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] =
        Value::from(1);
    assert_caught(
        &all,
        &expected,
        &["Deployment notifications", "maxUnavailable 0"],
    );

    let mut all = rendered();
    let gateway = main_container_mut(&mut all, "gateway");
    gateway["resources"]
        .as_object_mut()
        .expect("resources")
        .remove("requests");
    gateway["securityContext"]["readOnlyRootFilesystem"] = Value::Bool(false);
    assert_caught(
        &all,
        &expected,
        &["container gateway", "resources.requests.cpu"],
    );
    assert_caught(&all, &expected, &["container gateway", "read-only"]);

    let mut all = rendered();
    deployment_mut(&mut all, "products")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] =
        Value::from(30);
    assert_caught(
        &all,
        &expected,
        &["Deployment products", "terminationGracePeriodSeconds 30"],
    );

    let mut all = rendered();
    all.retain(|o| !(kind(o) == "Deployment" && name(o) == "notifications"));
    assert_caught(&all, &expected, &["no Deployment runs `notifications`"]);
}

#[test]
fn a_service_in_front_of_a_domain_is_caught() {
    let expected = expected();
    let mut all = rendered();
    let mut service = find(&all, "Service", NAMESPACE, "gateway")
        .expect("a gateway Service")
        .clone();
    service["metadata"]["name"] = Value::from("products");
    service["spec"]["selector"] = serde_json::json!({ "app.kubernetes.io/name": "products" });
    all.push(service);
    assert_caught(&all, &expected, &["Service products", "domain `products`"]);
}
