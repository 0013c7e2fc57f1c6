//! HTTP registration: plugins declare endpoints on the [`Http`] tool in
//! `on_boot`; the service serves them over the transport and announces
//! them, with their OpenAPI operation, for the gateway to route and
//! document.

mod context;
#[cfg(test)]
mod contract_tests;
mod handler;
mod openapi;
mod request_data;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use http::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use shared_schemas::ApiResponse;
use utoipa::ToSchema;

pub use context::{Context, Cookie, InvalidHeader, SameSite};
pub(crate) use handler::{RouteMetrics, serve};
pub use request_data::{InvalidInput, RequestData};

use crate::plugin::PluginId;
use crate::tools::Tool;

/// What a handler returns: the data of a successful answer, or why not.
pub type HandlerResult<T> = Result<T, HandlerError>;

/// Why a handler did not produce data.
#[derive(Debug)]
pub enum HandlerError {
    /// A business failure the client may read: `{"success": false,
    /// "error": message}`, status 400 unless one is given (here or through
    /// the context).
    Rejected {
        status: Option<StatusCode>,
        message: String,
    },
    /// Something broke. The cause goes to the log; the client gets a
    /// generic 500.
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

impl HandlerError {
    pub fn reject(message: impl Into<String>) -> Self {
        Self::Rejected {
            status: None,
            message: message.into(),
        }
    }

    pub fn with_status(status: StatusCode, message: impl Into<String>) -> Self {
        Self::Rejected {
            status: Some(status),
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::with_status(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::with_status(StatusCode::CONFLICT, message)
    }

    pub fn internal(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Internal(cause.into())
    }
}

/// Any error propagated with `?` is internal: logged, never shown.
impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(cause: E) -> Self {
        Self::Internal(Box::new(cause))
    }
}

/// An endpoint cannot be registered as declared.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    #[error("invalid path `{path}`: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("{method} {path} is already registered by {owner}")]
    Duplicate {
        method: Method,
        path: String,
        owner: String,
    },
}

/// Erased handler: deserializes the request data (or refuses it), then
/// yields the serialized success envelope.
type Handler = Arc<
    dyn Fn(
            &RequestData<'_>,
            Context,
        )
            -> Result<futures_util::future::BoxFuture<'static, HandlerResult<Vec<u8>>>, InvalidInput>
        + Send
        + Sync,
>;

/// One registered endpoint.
#[derive(Clone)]
pub(crate) struct Route {
    pub plugin: PluginId,
    pub name: String,
    pub method: Method,
    pub path: String,
    /// `GET /products/{id}`: what its spans and log lines call it.
    pub endpoint: String,
    pub timeout: Duration,
    pub success: StatusCode,
    /// Only requests with a verified access token reach the handler.
    pub auth: bool,
    pub operation: serde_json::Value,
    pub schemas: serde_json::Map<String, serde_json::Value>,
    handler: Handler,
}

/// The HTTP registration tool.
#[derive(Clone)]
pub struct Http {
    routes: Arc<Mutex<Vec<Route>>>,
    default_timeout: Duration,
    plugin: Option<PluginId>,
}

impl Tool for Http {
    const NAME: &'static str = "http";

    fn for_plugin(&self, plugin: &PluginId) -> Self {
        Self {
            plugin: Some(plugin.clone()),
            ..self.clone()
        }
    }
}

impl Http {
    pub(crate) fn new(default_timeout: Duration) -> Self {
        Self {
            routes: Arc::default(),
            default_timeout,
            plugin: None,
        }
    }

    pub fn get(&self, path: &str) -> RouteBuilder<'_> {
        self.route(Method::GET, path)
    }

    pub fn post(&self, path: &str) -> RouteBuilder<'_> {
        self.route(Method::POST, path)
    }

    pub fn put(&self, path: &str) -> RouteBuilder<'_> {
        self.route(Method::PUT, path)
    }

    pub fn patch(&self, path: &str) -> RouteBuilder<'_> {
        self.route(Method::PATCH, path)
    }

    pub fn delete(&self, path: &str) -> RouteBuilder<'_> {
        self.route(Method::DELETE, path)
    }

    pub fn route(&self, method: Method, path: &str) -> RouteBuilder<'_> {
        RouteBuilder {
            http: self,
            method,
            path: path.to_owned(),
            name: None,
            tags: Vec::new(),
            summary: None,
            description: None,
            timeout: self.default_timeout,
            success: StatusCode::OK,
            auth: false,
        }
    }

    /// Every route registered so far, in registration order.
    pub(crate) fn routes(&self) -> Vec<Route> {
        self.lock().clone()
    }

    /// Drops the routes of a plugin that failed to boot.
    pub(crate) fn remove_plugin(&self, plugin: &PluginId) {
        self.lock().retain(|r| &r.plugin != plugin);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Route>> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, route: Route) -> Result<(), RouteError> {
        let mut routes = self.lock();
        if let Some(owner) = routes
            .iter()
            .find(|r| r.method == route.method && r.path == route.path)
        {
            return Err(RouteError::Duplicate {
                method: route.method,
                path: route.path,
                owner: owner.plugin.to_string(),
            });
        }
        routes.push(route);
        Ok(())
    }
}

/// Declares one endpoint; finished by [`RouteBuilder::handler`] or
/// [`RouteBuilder::blocking_handler`].
#[must_use = "a route is registered only by `.handler(..)`"]
pub struct RouteBuilder<'a> {
    http: &'a Http,
    method: Method,
    path: String,
    name: Option<String>,
    tags: Vec<String>,
    summary: Option<String>,
    description: Option<String>,
    timeout: Duration,
    success: StatusCode,
    auth: bool,
}

impl RouteBuilder<'_> {
    /// The OpenAPI operation id and endpoint name; default: the plugin name.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    pub fn tag(mut self, tag: &str) -> Self {
        self.tags.push(tag.to_owned());
        self
    }

    pub fn summary(mut self, summary: &str) -> Self {
        self.summary = Some(summary.to_owned());
        self
    }

    pub fn description(mut self, description: &str) -> Self {
        self.description = Some(description.to_owned());
        self
    }

    /// How long the handler may take before the caller gets 504.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The status of a successful answer (default 200), documented and
    /// applied; the handler's context can still override it.
    pub fn status(mut self, status: StatusCode) -> Self {
        self.success = status;
        self
    }

    /// Admits only callers with a valid access token: the gateway answers
    /// 401 to the others, and the handler reads the verified claims with
    /// [`Context::user`]. The docs page shows the endpoint as protected.
    pub fn authenticated(mut self) -> Self {
        self.auth = true;
        self
    }

    /// Registers an async handler, for I/O-bound work.
    pub fn handler<P, Req, Res, F, Fut>(self, plugin: &Arc<P>, handler: F) -> Result<(), RouteError>
    where
        P: Send + Sync + 'static,
        Req: DeserializeOwned + ToSchema + Send + 'static,
        Res: Serialize + ToSchema + Send + 'static,
        F: Fn(Arc<P>, Req, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult<Res>> + Send + 'static,
    {
        let plugin = plugin.clone();
        let erased: Handler = Arc::new(move |data, ctx| {
            let request: Req = data.deserialize()?;
            let future = handler(plugin.clone(), request, ctx);
            Ok(async move { future.await.and_then(success_body) }.boxed())
        });
        self.register::<Req, Res>(erased)
    }

    /// Registers a CPU-bound handler: a plain function the kernel runs on
    /// the blocking pool, so it never stalls the event loop.
    pub fn blocking_handler<P, Req, Res, F>(
        self,
        plugin: &Arc<P>,
        handler: F,
    ) -> Result<(), RouteError>
    where
        P: Send + Sync + 'static,
        Req: DeserializeOwned + ToSchema + Send + 'static,
        Res: Serialize + ToSchema + Send + 'static,
        F: Fn(&P, Req, Context) -> HandlerResult<Res> + Send + Sync + 'static,
    {
        let plugin = plugin.clone();
        let handler = Arc::new(handler);
        let erased: Handler = Arc::new(move |data, ctx| {
            let request: Req = data.deserialize()?;
            let (plugin, handler) = (plugin.clone(), handler.clone());
            let task = tokio::task::spawn_blocking(move || {
                handler(&plugin, request, ctx).and_then(success_body)
            });
            Ok(async move {
                match task.await {
                    Ok(result) => result,
                    Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                    Err(join) => Err(HandlerError::internal(join)),
                }
            }
            .boxed())
        });
        self.register::<Req, Res>(erased)
    }

    fn register<Req: ToSchema, Res: ToSchema>(self, handler: Handler) -> Result<(), RouteError> {
        validate_path(&self.path)?;
        let plugin = self
            .http
            .plugin
            .clone()
            .unwrap_or_else(|| PluginId::new("kernel", "http"));
        let name = self.name.unwrap_or_else(|| {
            let taken = self
                .http
                .lock()
                .iter()
                .filter(|r| r.plugin == plugin)
                .count();
            match taken {
                0 => plugin.plugin().to_owned(),
                n => format!("{}_{}", plugin.plugin(), n + 1),
            }
        });
        let doc = openapi::Operation {
            name: &name,
            method: &self.method,
            path: &self.path,
            tags: &self.tags,
            summary: self.summary.as_deref(),
            description: self.description.as_deref(),
            success: self.success,
            auth: self.auth,
        };
        let (operation, schemas) = doc.build::<Req, Res>();
        self.http.add(Route {
            plugin,
            name,
            endpoint: format!("{} {}", self.method, self.path),
            method: self.method,
            path: self.path,
            timeout: self.timeout,
            success: self.success,
            auth: self.auth,
            operation,
            schemas,
            handler,
        })
    }
}

fn success_body<T: Serialize>(data: T) -> HandlerResult<Vec<u8>> {
    serde_json::to_vec(&ApiResponse::ok(data)).map_err(HandlerError::from)
}

/// Paths start with `/`, and parameters are whole segments: `{name}`.
fn validate_path(path: &str) -> Result<(), RouteError> {
    let invalid = |reason| RouteError::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    if !path.starts_with('/') {
        return Err(invalid("must start with `/`"));
    }
    for segment in path.split('/').skip(1) {
        let braces = segment.matches(['{', '}']).count();
        let is_param = segment.len() > 2 && segment.starts_with('{') && segment.ends_with('}');
        if braces != 0 && !(braces == 2 && is_param) {
            return Err(invalid("parameters must be whole segments like `{id}`"));
        }
    }
    Ok(())
}

/// The parameter names of a route template, in order.
pub(crate) fn path_params(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_validated() {
        assert!(validate_path("/products/{id}").is_ok());
        assert!(validate_path("/").is_ok());
        assert!(validate_path("products").is_err());
        assert!(validate_path("/products/{id").is_err());
        assert!(validate_path("/products/x{id}").is_err());
        assert_eq!(path_params("/a/{x}/b/{y}").collect::<Vec<_>>(), ["x", "y"]);
    }
}
