//! The workspace binaries under test, built on demand.
//!
//! The suites run the real `gateway` and domain service executables. Cargo does
//! not build another package's binaries for a test, so the harness asks
//! Cargo itself, once per test process:
//!
//! ```text
//! cargo build --bins -p gateway -p products -p users … [--release] --message-format=json-render-diagnostics
//! ```
//!
//! and reads the executables' paths from Cargo's own artifact messages, so
//! target directory, profile and platform suffixes are Cargo's business.
//! The package selection and the feature set are always the same, so after
//! the first build every later one is a no-op that takes a fraction of a
//! second; concurrent test processes are serialized by Cargo's lock on the
//! build directory.
//!
//! `MC_E2E_RELEASE=1` selects the release profile (the benchmark sets it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Deserialize;

use crate::logs;

/// The gateway and every domain service; built together.
const SYSTEM_PACKAGES: &[&str] = &["gateway", "products", "users", "orders", "notifications"];

/// The package that builds binary `name`: the system's own, the all-in-one
/// `microcore` of the root package, or this crate's helpers (such as the
/// benchmark's `bench-echo`).
fn packages_of(name: &str) -> &'static [&'static str] {
    match name {
        "gateway" | "products" | "users" | "orders" | "notifications" => SYSTEM_PACKAGES,
        "microcore" => &["microcore-app"],
        _ => &["microcore-e2e"],
    }
}

static RELEASE: AtomicBool = AtomicBool::new(false);

/// True when binaries are built with the release profile:
/// `MC_E2E_RELEASE=1`, or [`use_release_profile`] was called.
pub fn release() -> bool {
    RELEASE.load(Ordering::Relaxed)
        || std::env::var("MC_E2E_RELEASE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Builds and runs release binaries from now on, whatever the environment
/// says (the benchmark measures optimized code only).
pub fn use_release_profile() {
    RELEASE.store(true, Ordering::Relaxed);
}

/// The path of the workspace binary `name`, built if needed.
///
/// # Panics
/// When the build fails or the package has no binary of that name.
pub fn binary(name: &str) -> PathBuf {
    try_binary(name).unwrap_or_else(|| {
        panic!(
            "the workspace has no binary `{name}` (looked in package {:?})",
            packages_of(name)
        )
    })
}

/// Like [`binary`], but `None` when the package has no binary of that name.
///
/// Each package set is built once per process; threads asking at the same
/// time wait for that one build.
pub fn try_binary(name: &str) -> Option<PathBuf> {
    static BUILT: Mutex<BTreeMap<&'static [&'static str], Binaries>> = Mutex::new(BTreeMap::new());
    let packages = packages_of(name);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    built
        .entry(packages)
        .or_insert_with(|| build(packages))
        .get(name)
        .cloned()
}

/// Binary name → executable.
type Binaries = BTreeMap<String, PathBuf>;

/// One artifact message of `cargo build --message-format=json`.
#[derive(Deserialize)]
struct Message {
    reason: String,
    #[serde(default)]
    target: Option<Target>,
    #[serde(default)]
    executable: Option<PathBuf>,
}

#[derive(Deserialize)]
struct Target {
    name: String,
    kind: Vec<String>,
}

fn build(packages: &[&str]) -> Binaries {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = workspace_manifest();
    let mut command = Command::new(&cargo);
    for (name, _) in std::env::vars_os() {
        if is_set_for_the_test(&name.to_string_lossy()) {
            command.env_remove(name);
        }
    }
    command
        .arg("build")
        .arg("--bins")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--message-format=json-render-diagnostics");
    for package in packages {
        command.arg("-p").arg(package);
    }
    if release() {
        command.arg("--release");
    }
    // Progress and compiler errors go to the test's stderr as they happen.
    command.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let output = command.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {} to build {packages:?}: {e}",
            Path::new(&cargo).display()
        )
    });
    if !output.status.success() {
        panic!(
            "`cargo build --bins -p {}` failed ({}); the compiler output is above",
            packages.join(" -p "),
            output.status
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Message>(line).ok())
        .filter(|m| m.reason == "compiler-artifact")
        .filter_map(|m| {
            let target = m.target?;
            let executable = m.executable?;
            target
                .kind
                .iter()
                .any(|k| k == "bin")
                .then_some((target.name, executable))
        })
        .collect()
}

/// Variables Cargo and nextest set for the running test rather than the
/// user's own. They must not reach the inner build: build scripts watch some
/// of them (`rerun-if-env-changed=CARGO_MANIFEST_DIR`), so the inner build
/// and the next outer one would each find the other's dependencies stale and
/// rebuild them, every run.
fn is_set_for_the_test(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    const PREFIXES: &[&str] = &["CARGO_PKG_", "CARGO_BIN_EXE_", "NEXTEST_", "__NEXTEST_"];
    EXACT.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

fn workspace_manifest() -> PathBuf {
    logs::workspace_root().join("Cargo.toml")
}
