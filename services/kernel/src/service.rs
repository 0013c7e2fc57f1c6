//! The life of a service process: connect, migrate (or check that a
//! pipeline did), inject tools, construct and boot plugins, register
//! endpoints, serve, and on SIGTERM or SIGINT drain gracefully: stop taking
//! requests, finish the ones in flight, deregister, exit 0. Health probes
//! see it all (see [`probes`](crate::probes)).
//!
//! A request that has to wait (for its database, another service, a
//! timer) runs in its own task, so one slow handler never delays another;
//! one that can be answered at once is answered by the endpoint's
//! listener, which is cheaper than a task (see [`serve_or_spawn`]). A task
//! tracker lets shutdown wait for exactly the requests in flight.
//!
//! The kernel names the instance before anything else happens, so its
//! logs carry the instance from the first line, its metrics (its own meter
//! provider, see [`telemetry::metrics`](crate::telemetry::metrics)) name
//! it, and it can register an endpoint of its own: the system endpoint
//! the gateway asks for its live figures (see `system`).

use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;

use futures_util::{FutureExt as _, StreamExt};
use shared_schemas::Subjects;
use shared_schemas::discovery::{EndpointInfo, HttpEndpoint, ServiceInfo, meta};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{ConfigError, DEFAULT_NATS_URL, ServiceConfig};
use crate::domain::Domain;
use crate::http::{self, Http, Route, RouteMetrics};
use crate::plugin::{BootError, DynPlugin, PluginId, PluginState};
use crate::probes::{HealthListener, HealthListenerError, Readiness};
use crate::system::SystemEndpoint;
use crate::telemetry::{self, InstanceIdentity, Metrics, MetricsError};
use crate::tools::bus::{self, Bus, ResponderMetrics};
use crate::tools::{Auth, AuthError, Db, DbError, Logger, Tool, ToolCollision, Toolbox};
use crate::transport::{
    Deregister, Incoming, NatsTransport, ServiceSpec, Transport, TransportError,
};

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
    #[error("auth: {0}")]
    Auth(#[from] AuthError),
    #[error("metrics: {0}")]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    HealthListener(#[from] HealthListenerError),
    #[error(
        "{service}: migrations {versions:?} are not applied and MC_MIGRATE_ON_BOOT is false: \
         run `{service} migrate` first"
    )]
    PendingMigrations {
        service: &'static str,
        versions: Vec<i64>,
    },
}

/// A domain about to become a running service.
pub struct Service {
    domain: Domain,
    config: ServiceConfig,
    /// Tools of the application's own, beside the kernel's.
    tools: Vec<AddTool>,
}

type AddTool = Box<dyn FnOnce(&mut Toolbox) -> Result<(), ToolCollision> + Send>;

impl Service {
    pub fn new(domain: Domain, config: ServiceConfig) -> Self {
        Self {
            domain,
            config,
            tools: Vec::new(),
        }
    }

    /// Offers `tool` to the plugins beside the kernel's own (a mailer, a
    /// payment client …). A tool whose name is taken fails the boot. If it
    /// implements [`Tool::check_health`], the instance's health view
    /// lists it beside the database and the bus.
    pub fn tool<T: Tool>(mut self, tool: T) -> Self {
        self.tools.push(Box::new(move |toolbox: &mut Toolbox| {
            toolbox.insert(tool).map(|_| ())
        }));
        self
    }

    /// Reads `.env` (if present) and the environment.
    pub fn from_env(domain: Domain) -> Result<Self, ServiceError> {
        let _ = dotenvy::dotenv();
        Ok(Self::new(domain, ServiceConfig::from_env()?))
    }

    /// Connects to NATS and the database, forwards the process's logs to
    /// the bus, serves until SIGTERM or SIGINT, then shuts down gracefully.
    /// With `MC_HEALTH_ADDR` set, answers health probes all along.
    pub async fn run(self) -> Result<(), ServiceError> {
        let readiness = Readiness::default();
        let probes = match self.config.health_addr {
            Some(addr) => Some(HealthListener::bind(addr, readiness.clone()).await?),
            None => None,
        };
        let subjects = Subjects::new(&self.config.subject_prefix);
        let (transport, db) = tokio::try_join!(
            async {
                let url = self.config.nats_url.as_deref().unwrap_or(DEFAULT_NATS_URL);
                NatsTransport::connect(url, self.domain.name, subjects.clone())
                    .await
                    .map_err(ServiceError::from)
            },
            async {
                Db::for_service(&self.config, self.domain.name)
                    .await
                    .map_err(ServiceError::from)
            },
        )?;
        let transport: Arc<dyn Transport> = Arc::new(transport);
        crate::telemetry::forward_logs(transport.clone(), subjects);
        let running = self.start(transport, db).await?;
        readiness.ready(running.tools.clone());
        shutdown_signal().await;
        readiness.stopping();
        let stopped = running.shutdown().await;
        if let Some(probes) = probes {
            probes.close().await;
        }
        stopped
    }

    /// Migrates, boots the plugins and starts serving over `transport`.
    pub async fn start(
        self,
        transport: Arc<dyn Transport>,
        db: Db,
    ) -> Result<RunningService, ServiceError> {
        let Self {
            domain,
            config,
            tools: extra_tools,
        } = self;
        let instance_id = ServiceSpec::new_instance_id();
        // Everything the instance does logs under its name and id, and its
        // SQL statements count in its metrics.
        let span = telemetry::log_context(
            || tracing::info_span!(target: telemetry::INSTANCE_TARGET, "service", service = domain.name, instance = %instance_id),
        );
        let metrics = Metrics::new(InstanceIdentity {
            service: domain.name,
            instance: &instance_id,
            version: domain.version,
        })?;
        telemetry::record_statements(
            &span,
            telemetry::DbMetrics::new(metrics.meter(), db.engine().system_name()),
        );
        async {
            if config.migrate_on_boot {
                return migrate(&domain, &db).await;
            }
            if let Some(migrations) = &domain.migrations {
                let versions = db.pending_migrations(migrations).await?;
                if !versions.is_empty() {
                    return Err(ServiceError::PendingMigrations {
                        service: domain.name,
                        versions,
                    });
                }
            }
            // The kernel's own table, created if missing like any outbox.
            bus::ensure_outbox_table(&db)
                .await
                .map_err(ServiceError::from)
        }
        .instrument(span.clone())
        .await?;
        let subjects = Subjects::new(&config.subject_prefix);
        let http = Http::new(config.request_timeout);
        let bus = Bus::new(transport.clone(), subjects.clone());
        let mut tools = Toolbox::new();
        tools
            .insert(db.clone())?
            .insert(bus.clone())?
            .insert(http.clone())?
            .insert(Logger::new())?;
        if let Some(secret) = &config.auth_secret {
            tools.insert(Auth::new(secret.as_bytes(), config.auth_token_ttl)?)?;
        }
        for add in extra_tools {
            add(&mut tools)?;
        }

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
                    bus.remove_plugin(&id);
                    tracing::error!(plugin = %id, reason = %e, "plugin is dead");
                    PluginState::Dead {
                        reason: e.to_string(),
                    }
                }
            };
            states.push((id, state));
        }

        let meter = metrics.meter();
        bus::observe_counters(meter, bus.counters());
        telemetry::metrics::observe_connection(meter, transport.clone());
        let system = SystemEndpoint {
            service: domain.name.to_owned(),
            instance: instance_id.clone(),
            bus: bus.counters().clone(),
            metrics: metrics.clone(),
            tools: tools.clone(),
        };
        let endpoints: Vec<Endpoint> = http
            .routes()
            .into_iter()
            .map(|route| Endpoint::Http {
                metrics: RouteMetrics::new(meter, &route),
                route: Arc::new(route),
            })
            .chain(
                bus.take_responders()
                    .into_iter()
                    .map(|responder| Endpoint::Rpc {
                        metrics: ResponderMetrics::new(meter, &responder),
                        responder: Arc::new(responder),
                    }),
            )
            .chain([Endpoint::System(Arc::new(system))])
            .collect();
        let subscriptions = bus.take_subscriptions();
        let spec = ServiceSpec {
            name: domain.name.to_owned(),
            id: instance_id,
            version: domain.version.to_owned(),
            description: domain.description.to_owned(),
            endpoints: endpoints
                .iter()
                .map(|e| e.info(&subjects, domain.name))
                .collect(),
            metadata: crate::status::metadata(&states, &subscriptions),
        };
        // Consumers exist before the instance announces itself, so
        // whoever sees it up can count on its subscriptions.
        let tasks = TaskTracker::new();
        let consumers_stop = CancellationToken::new();
        let mut consumers = Vec::new();
        for subscription in subscriptions {
            let plugin_bus = bus.for_plugin(&subscription.plugin);
            consumers.push(
                bus::start_subscription(
                    subscription,
                    plugin_bus,
                    consumers_stop.clone(),
                    tasks.clone(),
                )
                .await?,
            );
        }
        let registration = transport.register(spec).await?;
        let mut listeners = JoinSet::new();
        for consume in consumers {
            listeners.spawn(consume.instrument(span.clone()));
        }
        for (endpoint, mut stream) in endpoints.into_iter().zip(registration.endpoints) {
            let tasks = tasks.clone();
            let span = span.clone();
            listeners.spawn(async move {
                while let Some(incoming) = stream.next().await {
                    let endpoint = endpoint.clone();
                    let serve = async move { endpoint.serve(incoming).await };
                    serve_or_spawn(Box::pin(serve.instrument(span.clone())), &tasks);
                }
            });
        }

        let relay_stop = CancellationToken::new();
        let relay = tokio::spawn(
            bus::OutboxRelay {
                db: db.clone(),
                transport: transport.clone(),
                delay: config.outbox_relay_delay,
            }
            .run(relay_stop.clone())
            .instrument(span.clone()),
        );
        span.in_scope(|| {
            tracing::info!(
                endpoints = registration.info.endpoints.len(),
                "service is ready"
            );
        });
        Ok(RunningService {
            transport,
            info: registration.info,
            registration: registration.handle,
            listeners,
            tasks,
            consumers_stop,
            relay,
            relay_stop,
            plugins,
            states,
            db,
            metrics,
            config,
            tools,
        })
    }
}

/// Applies the domain's migrations and creates the outbox table: at boot,
/// or as a step of its own (`<service> migrate`).
pub(crate) async fn migrate(domain: &Domain, db: &Db) -> Result<(), ServiceError> {
    if let Some(migrations) = &domain.migrations {
        db.migrate(migrations).await?;
    }
    bus::ensure_outbox_table(db).await?;
    Ok(())
}

/// What a registered endpoint serves: an HTTP route or a request-reply
/// handler, each with its measurements, or the instance's system endpoint.
#[derive(Clone)]
enum Endpoint {
    Http {
        route: Arc<Route>,
        metrics: RouteMetrics,
    },
    Rpc {
        responder: Arc<bus::Responder>,
        metrics: ResponderMetrics,
    },
    System(Arc<SystemEndpoint>),
}

impl Endpoint {
    fn info(&self, subjects: &Subjects, service: &str) -> EndpointInfo {
        match self {
            Self::Http { route, .. } => endpoint_info(subjects, service, route),
            Self::Rpc { responder, .. } => EndpointInfo {
                name: format!("rpc-{}", responder.name.replace('.', "-")),
                subject: subjects.rpc(&responder.name),
                queue_group: String::new(),
                metadata: [(meta::RPC_NAME.to_owned(), responder.name.clone())].into(),
            },
            Self::System(system) => system.info(subjects),
        }
    }

    async fn serve(&self, incoming: Incoming) {
        match self {
            Self::Http { route, metrics } => http::serve(route, metrics, incoming).await,
            Self::Rpc { responder, metrics } => {
                bus::serve_rpc(responder, metrics, incoming).await;
            }
            Self::System(system) => system.serve(incoming).await,
        }
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
        auth: route.auth,
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
    /// Endpoint listeners and event consumers: they end when the
    /// instance stops taking work.
    listeners: JoinSet<()>,
    /// Requests and events being handled.
    tasks: TaskTracker,
    consumers_stop: CancellationToken,
    relay: JoinHandle<()>,
    relay_stop: CancellationToken,
    plugins: Vec<Arc<dyn DynPlugin>>,
    states: Vec<(PluginId, PluginState)>,
    db: Db,
    metrics: Metrics,
    config: ServiceConfig,
    /// What readiness checks: the tools that depend on the outside.
    tools: Toolbox,
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

    /// Stops taking requests and events, waits (up to the grace period)
    /// for those in flight, relays what they staged in the outbox,
    /// deregisters and releases the plugins and the database.
    pub async fn shutdown(mut self) -> Result<(), ServiceError> {
        tracing::info!(instance = %self.info.id, "shutting down");
        let deregistered = self.registration.deregister().await;
        self.consumers_stop.cancel();
        let grace = self.config.shutdown_grace;
        let drained = tokio::time::timeout(grace, async {
            while self.listeners.join_next().await.is_some() {}
            self.tasks.close();
            self.tasks.wait().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                ?grace,
                in_flight = self.tasks.len(),
                "grace period over, abandoning requests and events in flight"
            );
        }
        self.relay_stop.cancel();
        if let Err(e) = self.relay.await {
            tracing::warn!(error = %e, "the outbox relay ended abnormally");
        }
        for plugin in self.plugins {
            plugin.shutdown().await;
        }
        self.db.close().await;
        self.metrics.shutdown().await;
        // Replies sent during the drain must leave before the process does.
        let flushed = self.transport.flush().await;
        deregistered?;
        flushed?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Polls `serve` once on the listener's task: an answer that needs no
/// wait (no I/O, or I/O already done) costs no task, and no wake-up of
/// another worker to run it, which for such requests is most of their
/// cost. One that must wait moves to a task of its own, which polls it
/// again at once and so registers the wakers that count, so waiting
/// requests overlap. A panic is contained here as it would be in a task,
/// so it never ends the listener.
fn serve_or_spawn(
    mut serve: Pin<Box<impl Future<Output = ()> + Send + 'static>>,
    tasks: &TaskTracker,
) {
    match panic::catch_unwind(AssertUnwindSafe(|| serve.as_mut().now_or_never())) {
        Ok(Some(())) => {}
        Ok(None) => {
            tasks.spawn(serve);
        }
        Err(_) => tracing::error!("serving a request panicked"),
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// Serves a request that needs no wait; the flag says it was answered.
    fn answer_at_once(tasks: &TaskTracker) -> Arc<AtomicBool> {
        let answered = Arc::new(AtomicBool::new(false));
        let flag = answered.clone();
        serve_or_spawn(
            Box::pin(async move { flag.store(true, Ordering::SeqCst) }),
            tasks,
        );
        answered
    }

    #[tokio::test]
    async fn a_request_that_needs_no_wait_is_answered_without_a_task() {
        let tasks = TaskTracker::new();
        let answered = answer_at_once(&tasks);
        assert!(answered.load(Ordering::SeqCst));
        assert!(tasks.is_empty());
    }

    #[tokio::test]
    async fn a_request_that_waits_moves_to_a_task_and_finishes_there() {
        let tasks = TaskTracker::new();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let answered = Arc::new(AtomicBool::new(false));
        let flag = answered.clone();
        let serve = async move {
            let _ = released.await;
            flag.store(true, Ordering::SeqCst);
        };
        serve_or_spawn(Box::pin(serve), &tasks);
        assert_eq!(tasks.len(), 1);
        assert!(!answered.load(Ordering::SeqCst));
        release.send(()).expect("the request is waiting");
        tasks.close();
        tasks.wait().await;
        assert!(answered.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_panic_while_serving_leaves_the_listener_running() {
        let tasks = TaskTracker::new();
        serve_or_spawn(Box::pin(async { panic!("broken request") }), &tasks);
        let answered = answer_at_once(&tasks);
        assert!(answered.load(Ordering::SeqCst));
    }
}
