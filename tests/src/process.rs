//! Child processes of the system under test.
//!
//! A [`ServiceProcess`] owns one child: its output goes to a log file (see
//! [`crate::logs`]), it is killed when the handle is dropped (a failing test
//! never leaves processes behind), and it can be stopped the way an
//! orchestrator stops it — SIGTERM, then wait for the exit status — which is
//! what the graceful-shutdown contract is about.
//!
//! The child's environment is the test's minus every variable that
//! configures microcore (`NATS_URL`, `DATABASE_URL`, `MC_*`, `OTEL_*`):
//! a developer's shell settings must not leak into the system under test;
//! the harness passes what each process needs explicitly. The working
//! directory is the system temp directory, so no `.env` of the workspace is
//! picked up either.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};

use crate::logs;

/// How long [`ServiceProcess::suspend`] waits for every thread to stop.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Variables the harness always sets itself, never inherits.
fn is_microcore_variable(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    name == "NATS_URL"
        || name == "DATABASE_URL"
        || name.starts_with("MC_")
        || name.starts_with("OTEL_")
}

/// A program the binaries of a system run under, given the binary and its
/// arguments after its own: `valgrind --tool=callgrind`, say.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

/// One running child process with its log file.
#[derive(Debug)]
pub struct ServiceProcess {
    name: String,
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl ServiceProcess {
    /// Starts `bin` with `envs` added to the cleaned environment.
    ///
    /// # Panics
    /// When the program cannot be started.
    pub fn spawn<K, V>(bin: &Path, envs: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        Self::spawn_with_args(bin, std::iter::empty::<&str>(), envs)
    }

    /// Starts `bin` with arguments and `envs` added to the cleaned
    /// environment.
    ///
    /// # Panics
    /// When the program cannot be started.
    pub fn spawn_with_args<A, K, V>(
        bin: &Path,
        args: impl IntoIterator<Item = A>,
        envs: impl IntoIterator<Item = (K, V)>,
    ) -> Self
    where
        A: AsRef<OsStr>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        Self::spawn_under(None, bin, args, envs)
    }

    /// Starts `bin` as [`spawn_with_args`](Self::spawn_with_args) does,
    /// under `launcher` when there is one; the process keeps the name of
    /// `bin`.
    ///
    /// # Panics
    /// When the program cannot be started.
    pub fn spawn_under<A, K, V>(
        launcher: Option<&Launcher>,
        bin: &Path,
        args: impl IntoIterator<Item = A>,
        envs: impl IntoIterator<Item = (K, V)>,
    ) -> Self
    where
        A: AsRef<OsStr>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let name = bin
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "process".to_owned());
        let log = logs::log_file(&name);
        let out = File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create the log file {}: {e}", log.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot share the log file {}: {e}", log.display()));

        let mut command = match launcher {
            Some(launcher) => {
                let mut command = Command::new(&launcher.program);
                command.args(&launcher.args).arg(bin);
                command
            }
            None => Command::new(bin),
        };
        for (key, _) in std::env::vars_os().filter(|(k, _)| is_microcore_variable(k)) {
            command.env_remove(key);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        command
            .args(args)
            .envs(envs)
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = command.spawn().unwrap_or_else(|e| {
            let program = launcher.map_or(bin, |launcher| &launcher.program);
            panic!("cannot start {}: {e}", program.display())
        });
        Self {
            name,
            child,
            log,
            status: None,
        }
    }

    /// The program's file name, e.g. `products`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        logs::tail(&self.log, lines)
    }

    /// A titled tail of the log, for panic messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "--- {} (pid {}), log {} ---\n{}",
            self.name,
            self.pid(),
            self.log.display(),
            self.log_tail(40)
        )
    }

    /// The exit status if the process has exited, without waiting.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("cannot poll {}: {e}", self.name));
        }
        self.status
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit.
    ///
    /// # Panics
    /// When it does not exit in time (it is then killed), with its log.
    pub async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.send_sigterm();
        self.wait_for_exit(timeout).await
    }

    /// Sends SIGTERM without waiting: the process starts its graceful
    /// shutdown.
    pub fn send_sigterm(&mut self) {
        if self.exit_status().is_none() {
            self.signal(Signal::TERM);
        }
    }

    /// Waits up to `timeout` for the process to exit on its own.
    ///
    /// # Panics
    /// When it does not exit in time (it is then killed), with its log.
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> ExitStatus {
        let exited = crate::wait::poll(timeout, || {
            let status = self.exit_status();
            async move { status }
        })
        .await;
        match exited {
            Some(status) => status,
            None => {
                self.kill();
                panic!(
                    "{} did not exit within {timeout:?}\n{}",
                    self.name,
                    self.diagnostics()
                );
            }
        }
    }

    /// Stops the process where it is (SIGSTOP), as when its host stalls:
    /// it holds its connections and answers nothing until
    /// [`resume`](Self::resume). Returns once every thread has stopped:
    /// the kernel stops them one by one as each gets a core, and on a busy
    /// machine a thread still running could answer one more request.
    ///
    /// # Panics
    /// When the process has not stopped within [`STOP_TIMEOUT`].
    pub fn suspend(&mut self) {
        if self.exit_status().is_some() {
            return;
        }
        self.signal(Signal::STOP);
        let started = std::time::Instant::now();
        while !self.stopped() {
            if self.exit_status().is_some() {
                return;
            }
            assert!(
                started.elapsed() < STOP_TIMEOUT,
                "{} did not stop within {STOP_TIMEOUT:?} of SIGSTOP",
                self.name
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether every thread of the process is stopped, by the state in
    /// `/proc/<pid>/task/<tid>/stat` (`T`).
    fn stopped(&self) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.child.id())) else {
            return false;
        };
        tasks.flatten().all(|task| {
            std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                // The state follows the parenthesised name, which may
                // itself hold spaces or parentheses.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .is_some_and(|state| state == "T")
            })
        })
    }

    /// Lets a [`suspend`](Self::suspend)ed process go on (SIGCONT).
    pub fn resume(&mut self) {
        if self.exit_status().is_none() {
            self.signal(Signal::CONT);
        }
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.exit_status() {
            return status;
        }
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("cannot reap {}: {e}", self.name));
        self.status = Some(status);
        status
    }

    fn signal(&self, signal: Signal) {
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(Pid::from_raw)
            .expect("a child process id is a positive i32");
        // The process may have exited on its own in the meantime; waiting for
        // its status reports that either way.
        let _ = kill_process(pid, signal);
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("{} log: {}", self.name, self.log.display());
        }
    }
}
