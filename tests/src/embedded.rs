//! The system as the embedded default runs it: the all-in-one binary with
//! neither `NATS_URL` nor `DATABASE_URL`, so its services talk in-process
//! and keep their tables in SQLite files, here in a temporary data
//! directory of the test's own.

use std::time::Instant;

use crate::binaries::binary;
use crate::http::HttpClient;
use crate::process::ServiceProcess;
use crate::{free_port, wait};

/// One embedded process, stopped when dropped.
#[derive(Debug)]
pub struct Embedded {
    // Field order is drop order: the process before its data.
    process: ServiceProcess,
    http: HttpClient,
    data: tempfile::TempDir,
    ready_after: std::time::Duration,
}

impl Embedded {
    /// Starts it on a free port and waits until `/health` answers.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Like [`Embedded::start`], with extra variables.
    pub async fn start_with(env: &[(&str, &str)]) -> Self {
        let bin = binary("microcore");
        let data = tempfile::tempdir().expect("a temporary data directory");
        for _ in 0..3 {
            let address = format!("127.0.0.1:{}", free_port());
            let data_dir = data.path().display().to_string();
            let mut vars = vec![
                ("MC_HTTP_ADDR", address.as_str()),
                ("MC_DATA_DIR", &data_dir),
            ];
            vars.extend_from_slice(env);
            let started = Instant::now();
            let mut process = ServiceProcess::spawn(&bin, vars);
            let http = HttpClient::new(format!("http://{address}"));
            let healthy = wait::healthy(&mut process, &http).await;
            match healthy {
                Some(Ok(())) => {
                    return Self {
                        process,
                        http,
                        data,
                        ready_after: started.elapsed(),
                    };
                }
                Some(Err(_)) if process.log_tail(20).contains("in use") => continue,
                Some(Err(status)) => panic!(
                    "the embedded process exited at start: {status}\n{}",
                    process.diagnostics()
                ),
                None => panic!(
                    "the embedded process did not answer /health within {:?}\n{}",
                    wait::BOOT,
                    process.diagnostics()
                ),
            }
        }
        panic!("no free port for the embedded process in 3 attempts")
    }

    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    pub fn process(&mut self) -> &mut ServiceProcess {
        &mut self.process
    }

    /// Where its SQLite files are.
    pub fn data_dir(&self) -> &std::path::Path {
        self.data.path()
    }

    /// From spawning the process to its first healthy answer.
    pub fn ready_after(&self) -> std::time::Duration {
        self.ready_after
    }

    /// Panics with `message` and the tail of the process log.
    #[track_caller]
    pub fn fail(&self, message: impl std::fmt::Display) -> ! {
        panic!("{message}\n{}", self.process.diagnostics())
    }
}
