//! The plugin contract: one feature in one file. A plugin names the tools
//! it needs ([`Plugin::Tools`]), is constructed from them, registers its
//! endpoints and subscriptions in [`Plugin::on_boot`], and cleans up in
//! [`Plugin::shutdown`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use crate::http::RouteError;
use crate::tools::{Inject, MissingTool, SubscribeError, Toolbox};

/// One feature of a domain.
///
/// ```ignore
/// pub struct GetProductPlugin { db: Db, http: Http }
///
/// impl Plugin for GetProductPlugin {
///     type Tools = (Db, Http);
///
///     fn new((db, http): Self::Tools) -> Self {
///         Self { db, http }
///     }
///
///     async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
///         self.http.get("/products/{id}").tag("Products").handler(&self, Self::get)?;
///         Ok(())
///     }
/// }
/// ```
pub trait Plugin: Send + Sync + Sized + 'static {
    /// The tools this plugin needs, injected by the kernel: one tool, an
    /// `Option<Tool>` for an optional one, or a tuple of them.
    type Tools: Inject;

    fn new(tools: Self::Tools) -> Self;

    /// Registers endpoints and subscriptions. An error marks the plugin
    /// dead; the rest of the service boots.
    fn on_boot(self: Arc<Self>) -> impl Future<Output = Result<(), BootError>> + Send;

    /// Releases what the plugin holds, after its last request.
    fn shutdown(self: Arc<Self>) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// The identity of a plugin: `service.plugin`. It is the emitter of the
/// events the plugin publishes and appears on its log lines.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PluginId(Arc<str>);

impl PluginId {
    pub fn new(service: &str, plugin: &str) -> Self {
        Self(format!("{service}.{plugin}").into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The plugin part, without the service.
    pub fn plugin(&self) -> &str {
        self.0.split_once('.').map_or(&self.0, |(_, p)| p)
    }
}

impl fmt::Display for PluginId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a plugin could not boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    MissingTool(#[from] MissingTool),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    #[error("{0}")]
    Failed(String),
}

impl BootError {
    pub fn failed(reason: impl fmt::Display) -> Self {
        Self::Failed(reason.to_string())
    }
}

/// Where a plugin is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginState {
    Ready,
    Dead { reason: String },
}

/// Builds a plugin from the toolbox, or names the tool it lacks.
type Constructor = fn(&Toolbox, &PluginId) -> Result<Arc<dyn DynPlugin>, MissingTool>;

/// A plugin as the domain lists it: its name and how to build it. The
/// domain's build script generates one per file in `src/plugins/`.
pub struct PluginEntry {
    name: &'static str,
    construct: Constructor,
    required_tools: fn(&mut Vec<&'static str>),
}

impl PluginEntry {
    pub fn of<P: Plugin>(name: &'static str) -> Self {
        Self {
            name,
            construct: |tools, id| {
                let plugin: Arc<dyn DynPlugin> = Arc::new(P::new(P::Tools::inject(tools, id)?));
                Ok(plugin)
            },
            required_tools: P::Tools::required_tools,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The tools the plugin cannot boot without.
    pub fn required_tools(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        (self.required_tools)(&mut names);
        names
    }

    pub(crate) fn construct(
        &self,
        tools: &Toolbox,
        id: &PluginId,
    ) -> Result<Arc<dyn DynPlugin>, MissingTool> {
        (self.construct)(tools, id)
    }
}

impl fmt::Debug for PluginEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginEntry")
            .field("name", &self.name)
            .finish()
    }
}

/// [`Plugin`] behind a pointer, so a service holds plugins of any type.
pub(crate) trait DynPlugin: Send + Sync {
    fn on_boot(self: Arc<Self>) -> BoxFuture<'static, Result<(), BootError>>;
    fn shutdown(self: Arc<Self>) -> BoxFuture<'static, ()>;
}

impl<P: Plugin> DynPlugin for P {
    fn on_boot(self: Arc<Self>) -> BoxFuture<'static, Result<(), BootError>> {
        Plugin::on_boot(self).boxed()
    }

    fn shutdown(self: Arc<Self>) -> BoxFuture<'static, ()> {
        Plugin::shutdown(self).boxed()
    }
}
