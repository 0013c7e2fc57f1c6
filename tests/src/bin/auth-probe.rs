//! The `auth-probe` service: routes that report the identity their handler
//! receives, public and authenticated, each taking the fields a client
//! might try to pose as someone with. The auth suite tries to forge it.

use microcore::prelude::*;
use microcore::{Domain, PluginEntry, Service};

/// Everything here is client input: none of it may become the identity.
#[derive(Debug, Deserialize, ToSchema)]
struct WhoamiRequest {
    sub: String,
    #[serde(rename = "_auth")]
    auth: Option<String>,
    user: Option<String>,
}

/// What the handler saw.
#[derive(Debug, Serialize, ToSchema)]
struct Identity {
    /// The verified subject, if any.
    user: Option<String>,
    /// The claims beyond the subject, if any.
    email: Option<String>,
    /// The client's fields, as received.
    sub: String,
    auth: Option<String>,
    claimed_user: Option<String>,
}

struct WhoamiPlugin {
    http: Http,
}

impl Plugin for WhoamiPlugin {
    type Tools = Http;

    fn new(http: Http) -> Self {
        Self { http }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        for (path, authenticated) in [
            ("/probe/public/{sub}", false),
            ("/probe/private/{sub}", true),
        ] {
            for method in [Method::GET, Method::POST] {
                let route = self.http.route(method, path).tag("Probe");
                let route = if authenticated {
                    route.authenticated()
                } else {
                    route
                };
                route.handler(&self, Self::whoami)?;
            }
        }
        Ok(())
    }
}

impl WhoamiPlugin {
    async fn whoami(self: Arc<Self>, req: WhoamiRequest, ctx: Context) -> HandlerResult<Identity> {
        let user = ctx.user().ok();
        Ok(Identity {
            user: user.map(|c| c.sub.clone()),
            email: user.and_then(|c| c.extra.get("email")?.as_str().map(str::to_owned)),
            sub: req.sub,
            auth: req.auth,
            claimed_user: req.user,
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = microcore::telemetry::init("auth-probe");
    let domain = Domain::new("auth-probe", env!("CARGO_PKG_VERSION"))
        .plugins(vec![PluginEntry::of::<WhoamiPlugin>("whoami")]);
    Service::from_env(domain)?.run().await?;
    Ok(())
}
