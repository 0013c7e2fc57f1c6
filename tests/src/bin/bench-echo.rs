//! A service with one endpoint that touches no database, `GET /bench/ping`:
//! what the gateway hop and the kernel cost on their own, for the benchmark.

use microcore::prelude::*;
use microcore::{Domain, PluginEntry, Service};

#[derive(Deserialize, ToSchema)]
struct PingRequest {}

#[derive(Serialize, ToSchema)]
struct Pong {
    pong: bool,
}

struct PingPlugin {
    http: Http,
}

impl Plugin for PingPlugin {
    type Tools = Http;

    fn new(http: Http) -> Self {
        Self { http }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        self.http
            .get("/bench/ping")
            .tag("Bench")
            .handler(&self, Self::ping)?;
        Ok(())
    }
}

impl PingPlugin {
    async fn ping(self: Arc<Self>, _: PingRequest, _: Context) -> HandlerResult<Pong> {
        Ok(Pong { pong: true })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    microcore::telemetry::init_logging();
    let domain = Domain::new("bench", env!("CARGO_PKG_VERSION"))
        .plugins(vec![PluginEntry::of::<PingPlugin>("ping")]);
    Service::from_env(domain)?.run().await?;
    Ok(())
}
