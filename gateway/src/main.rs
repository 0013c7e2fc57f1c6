//! The gateway process: configuration from the environment, NATS (its
//! logs forwarded there too), HTTP, graceful shutdown on SIGTERM or SIGINT.
//! `gateway --help` lists its other commands (`health`, `env`).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use gateway::{Gateway, GatewayConfig};
use microcore::cli::{self, Command};
use microcore::transport::{NatsTransport, Transport};
use shared_schemas::Subjects;

// The hot paths allocate many small, short-lived buffers (headers,
// subjects, spans), which mimalloc serves at a fraction of glibc's cost.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let command = match cli::parse(std::env::args().skip(1), false) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("error: {e}\n\n{}", cli::usage("gateway", false));
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Help => {
            print!("{}", cli::usage("gateway", false));
            Ok(())
        }
        Command::Env => {
            let variables = gateway::config::VARIABLES
                .iter()
                .chain(microcore::telemetry::VARIABLES);
            print!("{}", cli::env_template(variables));
            Ok(())
        }
        Command::Health(probe) => health(probe).await,
        Command::Serve => serve().await,
        Command::Migrate => unreachable!("the gateway's command line has no `migrate`"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Asks the running gateway's own HTTP address.
async fn health(probe: cli::Probe) -> anyhow::Result<()> {
    let _ = dotenvy::dotenv();
    let config = GatewayConfig::from_env()?;
    cli::probe_addr(config.http_addr, probe).await?;
    Ok(())
}

async fn serve() -> anyhow::Result<()> {
    let _ = dotenvy::dotenv();
    let _telemetry = microcore::telemetry::init("gateway");
    let config = GatewayConfig::from_env()?;
    let subjects = Subjects::new(&config.subject_prefix);
    let transport: Arc<dyn Transport> = Arc::new(
        NatsTransport::connect(&config.nats_url, "gateway", subjects.clone())
            .await
            .context("connecting to NATS")?,
    );
    microcore::telemetry::forward_logs(transport.clone(), subjects);
    let gateway = Gateway::start(&config, transport).await?;
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding {}", config.http_addr))?;
    tracing::info!(addr = %config.http_addr, "gateway listening");
    gateway
        .serve(listener, microcore::service::shutdown_signal())
        .await?;
    tracing::info!("gateway stopped");
    Ok(())
}
