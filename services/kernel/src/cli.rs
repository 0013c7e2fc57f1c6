//! The command line every microcore binary shares, so that a container, a
//! pipeline and a person at a terminal all drive a service the same way:
//!
//! ```text
//! products            serve (also: products serve)
//! products migrate    apply the domain's migrations, then exit
//! products health     exit 0 if the running instance is ready (--live: alive)
//! products env        print the variables it reads, as a .env template
//! ```
//!
//! `health` exists because the runtime images have no shell or curl: a
//! compose health check runs the binary itself, which asks the instance's
//! health listener on loopback (Kubernetes asks the same listener over
//! HTTP). `env` prints what a deployment must set uncommented and the
//! rest commented with its default, which is also what the deployment
//! checks read.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{self, ServiceConfig, Variable};
use crate::domain::Domain;
use crate::service::{Service, ServiceError};
use crate::tools::Db;

/// What the binary was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Serve,
    Migrate,
    Health(Probe),
    Env,
    Help,
}

/// Which of an instance's health signals `health` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `/health/ready`: the instance can do its work.
    Ready,
    /// `/health/live`: the process is running and answering.
    Live,
}

impl Probe {
    pub fn path(self) -> &'static str {
        match self {
            Self::Ready => "/health/ready",
            Self::Live => "/health/live",
        }
    }
}

/// The command line asks for something the binary does not do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct UsageError(String);

/// Reads the arguments after the program name. `migrate` is offered only
/// by binaries that own a database.
pub fn parse(args: impl IntoIterator<Item = String>, migrate: bool) -> Result<Command, UsageError> {
    let args: Vec<String> = args.into_iter().collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] | ["serve"] => Ok(Command::Serve),
        ["migrate"] if migrate => Ok(Command::Migrate),
        ["health"] | ["health", "--ready"] => Ok(Command::Health(Probe::Ready)),
        ["health", "--live"] => Ok(Command::Health(Probe::Live)),
        ["env"] => Ok(Command::Env),
        ["help" | "--help" | "-h"] => Ok(Command::Help),
        other => Err(UsageError(format!(
            "unexpected arguments `{}`",
            other.join(" ")
        ))),
    }
}

/// The usage text of `binary`.
pub fn usage(binary: &str, migrate: bool) -> String {
    let mut text = format!("usage: {binary} [COMMAND]\n\ncommands:\n");
    text.push_str("  serve            run (the default)\n");
    if migrate {
        text.push_str("  migrate          apply the migrations to DATABASE_URL, then exit\n");
    }
    text.push_str(
        "  health [--live]  exit 0 if the running instance is ready (--live: alive)\n\
         \x20 env              print the environment variables it reads, as a .env template\n",
    );
    text
}

/// `variables` as a `.env` template: the ones a deployment must set
/// uncommented and empty, the others commented out with their default.
pub fn env_template<'a>(variables: impl IntoIterator<Item = &'a Variable>) -> String {
    let mut text = String::new();
    for variable in variables {
        let _ = writeln!(text, "# {}", variable.meaning);
        if variable.required {
            let _ = writeln!(text, "{}=", variable.name);
        } else {
            let _ = writeln!(text, "# {}={}", variable.name, variable.default);
        }
    }
    text
}

/// A health probe did not get a healthy answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{variable} is not set: this process has no health listener to ask")]
    NoListener { variable: &'static str },
    #[error("{variable}={value:?} is not a socket address")]
    BadAddress {
        variable: &'static str,
        value: String,
    },
    #[error("{url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("{url} answered {status}: {body}")]
    Unhealthy {
        url: String,
        status: reqwest::StatusCode,
        body: String,
    },
}

/// Asks the listener at the address in `variable` (a listen address such
/// as `0.0.0.0:8081`, asked on loopback) for `probe`.
pub async fn probe_from_env(variable: &'static str, probe: Probe) -> Result<(), ProbeError> {
    let value = std::env::var(variable)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or(ProbeError::NoListener { variable })?;
    let addr: SocketAddr = value
        .trim()
        .parse()
        .map_err(|_| ProbeError::BadAddress { variable, value })?;
    probe_addr(addr, probe).await
}

/// Asks the health listener bound to `addr` for `probe`.
pub async fn probe_addr(addr: SocketAddr, probe: Probe) -> Result<(), ProbeError> {
    let host = if addr.ip().is_unspecified() {
        SocketAddr::new(
            if addr.is_ipv4() {
                [127, 0, 0, 1].into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            },
            addr.port(),
        )
    } else {
        addr
    };
    let url = format!("http://{host}{}", probe.path());
    let unreachable = |source| ProbeError::Unreachable {
        url: url.clone(),
        source,
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .map_err(unreachable)?;
    let response = client.get(&url).send().await.map_err(unreachable)?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    Err(ProbeError::Unhealthy { url, status, body })
}

/// The whole `main` of a domain's service binary: reads the command line,
/// then serves, migrates, probes or prints. Errors are printed, not
/// panicked, and set the exit code (2 for a bad command line).
pub async fn run(domain: Domain) -> ExitCode {
    let binary = domain.name;
    let command = match parse(std::env::args().skip(1), true) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("error: {e}\n\n{}", usage(binary, true));
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Help => {
            print!("{}", usage(binary, true));
            Ok(())
        }
        Command::Env => {
            print!("{}", env_template(&domain_variables(&domain)));
            Ok(())
        }
        Command::Health(probe) => probe_from_env(config::HEALTH_ADDR, probe)
            .await
            .map_err(|e| e.to_string()),
        Command::Migrate => {
            let _telemetry = crate::telemetry::init(binary);
            migrate(&domain).await.map_err(|e| e.to_string())
        }
        Command::Serve => {
            let _telemetry = crate::telemetry::init(binary);
            let served = match Service::from_env(domain) {
                Ok(service) => service.run().await,
                Err(e) => Err(e),
            };
            served.map_err(|e| e.to_string())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The variables a service of `domain` reads; `MC_AUTH_SECRET` is
/// required when one of its plugins needs the `auth` tool.
pub fn domain_variables(domain: &Domain) -> Vec<Variable> {
    let needs_auth = domain.required_tools().any(|tool| tool == "auth");
    config::SERVICE_VARIABLES
        .iter()
        .chain(crate::telemetry::VARIABLES)
        .map(|variable| Variable {
            required: variable.required || (variable.name == config::AUTH_SECRET && needs_auth),
            ..*variable
        })
        .collect()
}

/// `<service> migrate`: the domain's migrations and the outbox table.
async fn migrate(domain: &Domain) -> Result<(), ServiceError> {
    let _ = dotenvy::dotenv();
    let config = ServiceConfig::from_env()?;
    let db = Db::for_service(&config, domain.name).await?;
    let applied = crate::service::migrate(domain, &db).await;
    db.close().await;
    applied?;
    tracing::info!(service = domain.name, "migrations applied");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn commands_are_read_and_anything_else_is_refused() {
        assert_eq!(parse(args(""), true), Ok(Command::Serve));
        assert_eq!(parse(args("serve"), true), Ok(Command::Serve));
        assert_eq!(parse(args("migrate"), true), Ok(Command::Migrate));
        assert_eq!(
            parse(args("health --live"), true),
            Ok(Command::Health(Probe::Live))
        );
        assert_eq!(
            parse(args("health"), false),
            Ok(Command::Health(Probe::Ready))
        );
        assert!(parse(args("migrate"), false).is_err());
        assert!(parse(args("serve now"), true).is_err());
        assert!(parse(args("--live"), true).is_err());
    }

    #[test]
    fn the_template_leaves_what_is_required_to_fill_in() {
        let variables = [
            Variable {
                name: "NATS_URL",
                default: "nats://127.0.0.1:4222",
                meaning: "NATS server(s)",
                required: true,
            },
            Variable {
                name: "MC_DB_MAX_CONNECTIONS",
                default: "10",
                meaning: "database pool size",
                required: false,
            },
        ];
        assert_eq!(
            env_template(&variables),
            "# NATS server(s)\nNATS_URL=\n# database pool size\n# MC_DB_MAX_CONNECTIONS=10\n"
        );
    }
}
