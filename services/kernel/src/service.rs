//! The life of a service process: connect, migrate, inject tools,
//! construct and boot plugins, register endpoints, serve, and on SIGTERM or
//! SIGINT drain gracefully: stop taking requests, finish the ones in
//! flight, deregister, exit 0.
//!
//! Each request runs in its own task, so one slow handler never delays
//! another; a task tracker lets shutdown wait for exactly the requests in
//! flight.

use std::sync::Arc;

use futures_util::StreamExt;
use shared_schemas::Subjects;
use shared_schemas::discovery::{EndpointInfo, HttpEndpoint, ServiceInfo};
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;

use crate::config::{ConfigError, ServiceConfig};
use crate::domain::Domain;
use crate::http::{self, Http, Route};
use crate::plugin::{BootError, DynPlugin, PluginId, PluginState};
use crate::tools::{Bus, Db, DbError, Logger, ToolCollision, Toolbox};
use crate::transport::{Deregister, NatsTransport, ServiceSpec, Transport, TransportError};

/// A service could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error(transparent)]
    Tools(#[from] ToolCollision),
}

/// A domain about to become a running service.
pub struct Service {
    domain: Domain,
    config: ServiceConfig,
}

impl Service {
    pub fn new(domain: Domain, config: ServiceConfig) -> Self {
        Self { domain, config }
    }

    /// Reads `.env` (if present) and the environment.
    pub fn from_env(domain: Domain) -> Result<Self, ServiceError> {
        let _ = dotenvy::dotenv();
        Ok(Self::new(domain, ServiceConfig::from_env()?))
    }

    /// Connects to NATS and the database, serves until SIGTERM or SIGINT,
    /// then shuts down gracefully.
    pub async fn run(self) -> Result<(), ServiceError> {
        let subjects = Subjects::new(&self.config.subject_prefix);
        let schema = self
            .config
            .database_schema
            .as_deref()
            .unwrap_or(self.domain.name);
        let (transport, db) = tokio::try_join!(
            async {
                NatsTransport::connect(&self.config.nats_url, self.domain.name, subjects)
                    .await
                    .map_err(ServiceError::from)
            },
            async {
                Db::connect(
                    &self.config.database_url,
                    Some(schema),
                    self.config.database_max_connections,
                )
                .await
                .map_err(ServiceError::from)
            },
        )?;
        let running = self.start(Arc::new(transport), db).await?;
        shutdown_signal().await;
        running.shutdown().await
    }

    /// Migrates, boots the plugins and starts serving over `transport`.
    pub async fn start(
        self,
        transport: Arc<dyn Transport>,
        db: Db,
    ) -> Result<RunningService, ServiceError> {
        let Self { domain, config } = self;
        if let Some(migrations) = &domain.migrations {
            db.migrate(migrations).await?;
        }
        let subjects = Subjects::new(&config.subject_prefix);
        let http = Http::new(config.request_timeout);
        let mut tools = Toolbox::new();
        tools
            .insert(db.clone())?
            .insert(Bus::new(transport.clone(), subjects.clone()))?
            .insert(http.clone())?
            .insert(Logger::new())?;

        let mut plugins = Vec::new();
        let mut states = Vec::new();
        for entry in &domain.plugins {
            let id = PluginId::new(domain.name, entry.name());
            let state = match boot(entry, &tools, &id).await {
                Ok(plugin) => {
                    plugins.push(plugin);
                    PluginState::Ready
                }
                Err(e) => {
                    http.remove_plugin(&id);
                    tracing::error!(plugin = %id, reason = %e, "plugin is dead");
                    PluginState::Dead {
                        reason: e.to_string(),
                    }
                }
            };
            states.push((id, state));
        }

        let routes: Vec<Arc<Route>> = http.routes().into_iter().map(Arc::new).collect();
        let spec = ServiceSpec {
            name: domain.name.to_owned(),
            version: domain.version.to_owned(),
            description: domain.description.to_owned(),
            endpoints: routes
                .iter()
                .map(|r| endpoint_info(&subjects, domain.name, r))
                .collect(),
        };
        let registration = transport.register(spec).await?;
        let requests = TaskTracker::new();
        let mut listeners = JoinSet::new();
        for (route, mut stream) in routes.into_iter().zip(registration.endpoints) {
            let requests = requests.clone();
            listeners.spawn(async move {
                while let Some(incoming) = stream.next().await {
                    let route = route.clone();
                    requests.spawn(async move { http::serve(&route, incoming).await });
                }
            });
        }
        tracing::info!(
            service = domain.name,
            instance = %registration.info.id,
            endpoints = registration.info.endpoints.len(),
            "service is ready"
        );
        Ok(RunningService {
            transport,
            info: registration.info,
            registration: registration.handle,
            listeners,
            requests,
            plugins,
            states,
            db,
            config,
        })
    }
}

async fn boot(
    entry: &crate::plugin::PluginEntry,
    tools: &Toolbox,
    id: &PluginId,
) -> Result<Arc<dyn DynPlugin>, BootError> {
    let plugin = entry.construct(tools, id)?;
    plugin.clone().on_boot().await?;
    Ok(plugin)
}

fn endpoint_info(subjects: &Subjects, service: &str, route: &Route) -> EndpointInfo {
    let endpoint = HttpEndpoint {
        method: route.method.to_string(),
        path: route.path.clone(),
        timeout_ms: route.timeout.as_millis().try_into().unwrap_or(u64::MAX),
        operation: route.operation.clone(),
        schemas: route.schemas.clone(),
    };
    EndpointInfo {
        name: route.name.clone(),
        subject: subjects.http(service, &route.name),
        queue_group: String::new(),
        metadata: endpoint.to_metadata(),
    }
}

/// A service that is serving requests.
pub struct RunningService {
    transport: Arc<dyn Transport>,
    info: ServiceInfo,
    registration: Box<dyn Deregister>,
    listeners: JoinSet<()>,
    requests: TaskTracker,
    plugins: Vec<Arc<dyn DynPlugin>>,
    states: Vec<(PluginId, PluginState)>,
    db: Db,
    config: ServiceConfig,
}

impl RunningService {
    /// This instance as discovery describes it.
    pub fn info(&self) -> &ServiceInfo {
        &self.info
    }

    /// Every plugin of the domain and whether it booted.
    pub fn plugin_states(&self) -> &[(PluginId, PluginState)] {
        &self.states
    }

    /// Stops taking requests, waits (up to the grace period) for those in
    /// flight, deregisters and releases the plugins and the database.
    pub async fn shutdown(mut self) -> Result<(), ServiceError> {
        tracing::info!(instance = %self.info.id, "shutting down");
        let deregistered = self.registration.deregister().await;
        let grace = self.config.shutdown_grace;
        let drained = tokio::time::timeout(grace, async {
            while self.listeners.join_next().await.is_some() {}
            self.requests.close();
            self.requests.wait().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                ?grace,
                in_flight = self.requests.len(),
                "grace period over, abandoning requests"
            );
        }
        for plugin in self.plugins {
            plugin.shutdown().await;
        }
        self.db.close().await;
        // Replies sent during the drain must leave before the process does.
        let flushed = self.transport.flush().await;
        deregistered?;
        flushed?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(signal) => signal,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the service");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {},
            _ = terminate.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
