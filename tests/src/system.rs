//! A whole microcore system for one test: NATS, a database, the gateway and
//! any number of service instances, each a real process.
//!
//! The [`System`] owns the infrastructure and the gateway; service instances
//! are returned to the test, which decides when each one stops. Every
//! process the system starts is remembered, so when a wait gives up the
//! panic message carries the tail of every log — usually enough to see why
//! without rerunning anything.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::time::Instant;

use crate::binaries::binary;
use crate::db::TestDb;
use crate::http::HttpClient;
use crate::nats::NatsServer;
use crate::process::{Launcher, ServiceProcess};
use crate::{free_port, logs, wait};

/// The domain service the suites exercise.
pub const PRODUCTS: &str = "products";

/// The table the products service owns, schema-qualified.
pub const PRODUCTS_TABLE: &str = "products.products";

/// How a [`System`] is configured before it starts.
#[derive(Debug, Clone)]
pub struct SystemBuilder {
    prefix: String,
    gateway_env: Vec<(String, String)>,
    service_env: Vec<(String, String)>,
    launcher: Option<Launcher>,
}

impl Default for SystemBuilder {
    fn default() -> Self {
        Self {
            prefix: "mc".to_owned(),
            gateway_env: Vec::new(),
            service_env: Vec::new(),
            launcher: None,
        }
    }
}

impl SystemBuilder {
    /// `MC_SUBJECT_PREFIX` for every process (default `mc`).
    pub fn subject_prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.prefix);
        self
    }

    /// An extra variable for the gateway, e.g. `MC_BODY_LIMIT`.
    pub fn gateway_env(mut self, key: &str, value: impl ToString) -> Self {
        self.gateway_env.push((key.to_owned(), value.to_string()));
        self
    }

    /// An extra variable for every service instance.
    pub fn service_env(mut self, key: &str, value: impl ToString) -> Self {
        self.service_env.push((key.to_owned(), value.to_string()));
        self
    }

    /// Runs the gateway and every service instance under `launcher` (a
    /// profiler, say); NATS and Postgres run as they are.
    pub fn launcher(mut self, launcher: Launcher) -> Self {
        self.launcher = Some(launcher);
        self
    }

    /// Starts NATS and creates the database (concurrently).
    pub async fn start(self) -> System {
        let (nats, db) = tokio::join!(NatsServer::start(), TestDb::create());
        let client = nats.connect().await;
        System {
            gateway: None,
            db,
            client,
            nats,
            config: self,
            logs: Mutex::new(Vec::new()),
            seen_instances: Mutex::new(BTreeSet::new()),
        }
    }

    /// Starts everything a products test needs: NATS, the database, the
    /// gateway and one products instance, and waits until the products
    /// routes answer through the gateway.
    pub async fn with_products(self) -> (System, ServiceInstance) {
        let mut system = self.start().await;
        system.start_gateway().await;
        let products = system.start_products().await;
        system.wait_until_routable().await;
        (system, products)
    }

    /// Starts the whole shop: NATS, the database, one instance of each
    /// of [`SHOP`] (in that order, as returned) and the gateway, and waits
    /// until their routes answer through it.
    pub async fn with_shop(self) -> (System, Vec<ServiceInstance>) {
        let mut system = self.start().await;
        let mut services = Vec::new();
        for name in SHOP {
            services.push(system.start_service(name, name, &[]).await);
        }
        system.start_gateway().await;
        system.wait_until_routable().await;
        (system, services)
    }
}

/// The services of the shop application, by binary name.
pub const SHOP: [&str; 4] = ["products", "users", "orders", "notifications"];

/// The process serving HTTP: the gateway, or the all-in-one binary in its
/// place.
#[derive(Debug)]
pub struct Gateway {
    process: ServiceProcess,
    http: HttpClient,
}

impl Gateway {
    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    pub fn process(&mut self) -> &mut ServiceProcess {
        &mut self.process
    }
}

/// One running instance of a domain service.
#[derive(Debug)]
pub struct ServiceInstance {
    process: ServiceProcess,
    id: String,
    announced_at: Instant,
}

impl ServiceInstance {
    /// The instance id it registered under (micro protocol `id`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// When its up announcement arrived.
    pub fn announced_at(&self) -> Instant {
        self.announced_at
    }

    pub fn process(&mut self) -> &mut ServiceProcess {
        &mut self.process
    }

    /// SIGTERM, then the exit status once it has shut down gracefully.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.process.terminate(wait::SHUTDOWN).await
    }
}

/// NATS, a database, and the processes started on them. Everything stops
/// when it is dropped.
#[derive(Debug)]
pub struct System {
    // Field order is drop order: processes first, then the database, then
    // NATS.
    gateway: Option<Gateway>,
    db: TestDb,
    client: async_nats::Client,
    nats: NatsServer,
    config: SystemBuilder,
    /// Every process started, for diagnostics.
    logs: Mutex<Vec<(String, PathBuf)>>,
    /// Service instance ids already handed out.
    seen_instances: Mutex<BTreeSet<String>>,
}

impl System {
    pub fn builder() -> SystemBuilder {
        SystemBuilder::default()
    }

    /// NATS and a database, nothing else yet.
    pub async fn start() -> Self {
        SystemBuilder::default().start().await
    }

    /// See [`SystemBuilder::with_products`].
    pub async fn with_products() -> (Self, ServiceInstance) {
        SystemBuilder::default().with_products().await
    }

    pub fn nats(&self) -> &NatsServer {
        &self.nats
    }

    /// The harness's own NATS connection.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn db(&self) -> &TestDb {
        &self.db
    }

    /// The durable event streams, through the harness's connection.
    pub fn streams(&self) -> crate::Streams {
        crate::Streams::new(self.client.clone(), &self.config.prefix)
    }

    /// The subject prefix every process uses.
    pub fn prefix(&self) -> &str {
        &self.config.prefix
    }

    /// `<prefix>.<rest>`.
    pub fn subject(&self, rest: &str) -> String {
        format!("{}.{rest}", self.config.prefix)
    }

    /// Starts the gateway on a free port and waits until `/health` answers.
    pub async fn start_gateway(&mut self) -> &Gateway {
        self.start_front("gateway", Vec::new()).await
    }

    /// Starts the all-in-one binary (`microcore`: the gateway and every
    /// domain in one process) in the gateway's place, and waits until
    /// `/health` answers.
    pub async fn start_all_in_one(&mut self) -> &Gateway {
        let database = vec![("DATABASE_URL".to_owned(), self.db.url().to_owned())];
        self.start_front("microcore", database).await
    }

    /// Starts the process that serves HTTP, `bin`, on a free port.
    async fn start_front(&mut self, bin: &str, extra: Vec<(String, String)>) -> &Gateway {
        assert!(self.gateway.is_none(), "an HTTP front is already running");
        let bin = binary(bin);
        for _ in 0..3 {
            let address = format!("127.0.0.1:{}", free_port());
            let mut env = vec![
                ("NATS_URL".to_owned(), self.nats.url().to_owned()),
                ("MC_SUBJECT_PREFIX".to_owned(), self.config.prefix.clone()),
                ("MC_HTTP_ADDR".to_owned(), address.clone()),
            ];
            env.extend(extra.iter().cloned());
            env.extend(self.config.gateway_env.iter().cloned());
            let process = self.spawn(&bin, env);
            let mut gateway = Gateway {
                process,
                http: HttpClient::new(format!("http://{address}")),
            };
            let healthy = wait::healthy(&mut gateway.process, &gateway.http).await;
            let name = gateway.process.name().to_owned();
            match healthy {
                Some(Ok(())) => return self.gateway.insert(gateway),
                // Someone took the port between the probe and the bind.
                Some(Err(_)) if gateway.process.log_tail(20).contains("in use") => continue,
                Some(Err(status)) => self.fail(format!("{name} exited at start: {status}")),
                None => self.fail(format!(
                    "{name} did not answer GET /health with 200 within {:?}",
                    wait::BOOT
                )),
            }
        }
        self.fail("no free port for the HTTP front in 3 attempts")
    }

    /// The gateway.
    ///
    /// # Panics
    /// Before [`start_gateway`](Self::start_gateway).
    pub fn gateway(&mut self) -> &mut Gateway {
        self.gateway
            .as_mut()
            .expect("start_gateway() has not been called")
    }

    /// An HTTP client for the gateway.
    ///
    /// # Panics
    /// Before [`start_gateway`](Self::start_gateway).
    pub fn http(&self) -> &HttpClient {
        &self
            .gateway
            .as_ref()
            .expect("start_gateway() has not been called")
            .http
    }

    /// Starts a products process without waiting for anything.
    pub fn spawn_products(&self) -> ServiceProcess {
        self.spawn_service(PRODUCTS, &[])
    }

    /// Starts a products instance and waits until it announces itself on
    /// `<prefix>.discovery.up` — the moment its endpoints are live.
    pub async fn start_products(&self) -> ServiceInstance {
        self.start_service(PRODUCTS, PRODUCTS, &[]).await
    }

    /// Starts the service binary `bin` with the system's NATS, database and
    /// prefix plus `env`, without waiting for anything.
    pub fn spawn_service(&self, bin: &str, env: &[(&str, &str)]) -> ServiceProcess {
        let bin = binary(bin);
        let mut all = vec![
            ("NATS_URL".to_owned(), self.nats.url().to_owned()),
            ("DATABASE_URL".to_owned(), self.db.url().to_owned()),
            ("MC_SUBJECT_PREFIX".to_owned(), self.config.prefix.clone()),
        ];
        all.extend(self.config.service_env.iter().cloned());
        all.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        self.spawn(&bin, all)
    }

    /// Starts `bin` and waits until an instance of `service` announces
    /// itself: its endpoints are live and its subscriptions consume.
    pub async fn start_service(
        &self,
        bin: &str,
        service: &str,
        env: &[(&str, &str)],
    ) -> ServiceInstance {
        let mut announcements = self.subscribe(&self.subject("discovery.up")).await;
        let mut process = self.spawn_service(bin, env);
        let id = self
            .wait_for_announcement(service, &mut process, &mut announcements)
            .await;
        ServiceInstance {
            process,
            id,
            announced_at: Instant::now(),
        }
    }

    /// Waits for an up announcement of an instance of `service` that the
    /// harness has not seen before; fails fast if `process` exits meanwhile.
    pub async fn wait_for_announcement(
        &self,
        service: &str,
        process: &mut ServiceProcess,
        announcements: &mut async_nats::Subscriber,
    ) -> String {
        let deadline = Instant::now() + wait::BOOT;
        loop {
            if let Some(status) = process.exit_status() {
                self.fail(format!("{service} exited at start: {status}"));
            }
            // Wake up now and then to notice a process that died.
            let slice = deadline.min(Instant::now() + Duration::from_millis(100));
            match tokio::time::timeout_at(slice, announcements.next()).await {
                Ok(Some(message)) => {
                    let Ok(info) = serde_json::from_slice::<Value>(&message.payload) else {
                        self.fail(format!(
                            "an announcement on {} is not JSON: {}",
                            message.subject,
                            String::from_utf8_lossy(&message.payload)
                        ));
                    };
                    let Some(id) = info["id"].as_str().filter(|_| info["name"] == service) else {
                        continue;
                    };
                    if self
                        .seen_instances
                        .lock()
                        .expect("not poisoned")
                        .insert(id.to_owned())
                    {
                        return id.to_owned();
                    }
                }
                Ok(None) => self.fail("the announcement subscription ended"),
                Err(_) if Instant::now() >= deadline => self.fail(format!(
                    "no new {service} instance announced itself on {} within {:?}",
                    self.subject("discovery.up"),
                    wait::BOOT
                )),
                Err(_) => {}
            }
        }
    }

    /// A subscription of the harness's own connection, active on the server
    /// when this returns.
    pub async fn subscribe(&self, subject: &str) -> async_nats::Subscriber {
        let subscription = self
            .client
            .subscribe(subject.to_owned())
            .await
            .unwrap_or_else(|e| panic!("cannot subscribe to {subject}: {e}"));
        self.round_trip().await;
        subscription
    }

    /// Returns once the server has read everything this client sent so
    /// far. (`flush` only empties the socket buffer.) A message to ourselves
    /// comes back only after the server processed what preceded it.
    async fn round_trip(&self) {
        let probe = self.client.new_inbox();
        let mut echo = self
            .client
            .subscribe(probe.clone())
            .await
            .unwrap_or_else(|e| panic!("cannot subscribe to {probe}: {e}"));
        self.client
            .publish(probe, Default::default())
            .await
            .unwrap_or_else(|e| panic!("cannot publish a probe: {e}"));
        if tokio::time::timeout(wait::PROMPT, echo.next())
            .await
            .ok()
            .flatten()
            .is_none()
        {
            self.fail("the NATS server did not echo a probe");
        }
    }

    /// Waits until `GET /products` answers 200 through the gateway.
    pub async fn wait_until_routable(&self) {
        self.wait_for_status("/products?limit=1", StatusCode::OK, wait::BOOT)
            .await;
    }

    /// Waits until `GET path` answers `status` through the gateway.
    pub async fn wait_for_status(&self, path: &str, status: StatusCode, timeout: Duration) {
        let http = self.http();
        let last = RefCell::new(None);
        let reached = wait::poll(timeout, || {
            let request = http.request(reqwest::Method::GET, path);
            let last = &last;
            async move {
                let reply = http.try_send(request).await;
                let done = matches!(&reply, Ok(r) if r.status == status);
                *last.borrow_mut() = Some(match reply {
                    Ok(reply) => reply.to_string(),
                    Err(e) => e.to_string(),
                });
                done.then_some(())
            }
        })
        .await;
        if reached.is_none() {
            self.fail(format!(
                "GET {path} did not answer {status} within {timeout:?}; last answer: {}",
                last.into_inner().unwrap_or_else(|| "none".to_owned())
            ));
        }
    }

    /// Polls `probe` until it yields `Some`; panics with `what` and the logs
    /// of every process when `timeout` passes first.
    pub async fn wait_for<T, F, Fut>(&self, what: &str, timeout: Duration, probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        match wait::poll(timeout, probe).await {
            Some(value) => value,
            None => self.fail(format!("{what}: not within {timeout:?}")),
        }
    }

    /// Rows in the products table.
    pub async fn product_count(&self) -> i64 {
        self.db.count(PRODUCTS_TABLE).await
    }

    /// Panics with `message` and the tail of every process log.
    #[track_caller]
    pub fn fail(&self, message: impl std::fmt::Display) -> ! {
        panic!("{message}\n{}", self.diagnostics())
    }

    /// The tail of the log of every process this system started.
    pub fn diagnostics(&self) -> String {
        let logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (name, path) in logs.iter() {
            out.push_str(&format!(
                "--- {name}, log {} ---\n{}\n",
                path.display(),
                logs::tail(path, 30)
            ));
        }
        out.push_str(&self.nats.process().diagnostics());
        out
    }

    fn spawn(&self, bin: &std::path::Path, env: Vec<(String, String)>) -> ServiceProcess {
        let args = std::iter::empty::<&str>();
        let process = ServiceProcess::spawn_under(self.config.launcher.as_ref(), bin, args, env);
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).push((
            format!("{} (pid {})", process.name(), process.pid()),
            process.log_path().to_owned(),
        ));
        process
    }
}
