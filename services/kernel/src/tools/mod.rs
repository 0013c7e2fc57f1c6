//! Tools are what plugins are given instead of looking things up: the
//! database, the bus, HTTP registration, the logger, access tokens. A plugin names the
//! tools it needs as a tuple type; the kernel injects them, or marks the
//! plugin dead with the name of the tool that is missing.
//!
//! Tools that depend on something outside the process also say whether
//! they can do their work (see [`health`]), for the instance's health view.

mod auth;
pub(crate) mod bus;
mod db;
pub mod health;
mod logger;
mod transaction;

use std::any::{Any, TypeId, type_name};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use auth::{AccessToken, Auth, AuthError, MIN_SECRET_LEN};
pub use bus::{
    Bus, BusError, EventResult, Publication, RespondBuilder, RpcError, SubscribeBuilder,
    SubscribeError,
};
pub use db::{Db, DbError, DbErrorKind, Engine};
pub use health::Health;
pub use logger::Logger;
pub use transaction::Transaction;

use crate::plugin::PluginId;

/// Something the kernel can inject into plugins.
pub trait Tool: Clone + Send + Sync + 'static {
    /// The name used in errors and system views (`db`, `bus` …).
    const NAME: &'static str;

    /// The copy handed to one plugin: tools that attribute what they do
    /// (the logger, the bus) bind the plugin's identity here.
    fn for_plugin(&self, _plugin: &PluginId) -> Self {
        self.clone()
    }

    /// Whether the tool can do its work right now, for the instance's
    /// health view: a round trip to what it depends on, where it has one.
    /// `None`, the default, for a tool with nothing outside the process to
    /// check; it is then not listed. The toolbox bounds every check by
    /// [`health::CHECK_TIMEOUT`], so a check need not bound itself.
    fn check_health(&self) -> impl Future<Output = Option<Health>> + Send {
        std::future::ready(None)
    }
}

/// The tools of one service, one per type and per name.
#[derive(Default, Clone)]
pub struct Toolbox {
    tools: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    names: HashMap<&'static str, &'static str>,
    health_checks: Vec<health::HealthCheck>,
}

/// Two tools claim the same name: a boot error, never "last one wins".
#[derive(Debug, thiserror::Error)]
#[error("tool name `{name}` is claimed by both {first} and {second}")]
pub struct ToolCollision {
    pub name: &'static str,
    pub first: &'static str,
    pub second: &'static str,
}

impl Toolbox {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tool; a second tool of the same type or name is refused.
    pub fn insert<T: Tool>(&mut self, tool: T) -> Result<&mut Self, ToolCollision> {
        if let Some(first) = self.names.get(T::NAME) {
            return Err(ToolCollision {
                name: T::NAME,
                first,
                second: type_name::<T>(),
            });
        }
        self.names.insert(T::NAME, type_name::<T>());
        self.health_checks.push(health::HealthCheck::of(&tool));
        self.tools.insert(TypeId::of::<T>(), Arc::new(tool));
        Ok(self)
    }

    pub fn get<T: Tool>(&self) -> Option<&T> {
        self.tools.get(&TypeId::of::<T>())?.downcast_ref()
    }

    /// Names of the tools present, for system views.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.names.keys().copied()
    }

    /// Runs the health checks of every tool at once: what they found, by
    /// tool name, for the tools that check.
    pub async fn check_health(&self) -> BTreeMap<&'static str, Health> {
        self.check_health_within(health::CHECK_TIMEOUT).await
    }

    async fn check_health_within(&self, timeout: Duration) -> BTreeMap<&'static str, Health> {
        health::run(&self.health_checks, timeout).await
    }
}

/// A tool a plugin asked for is not there.
#[derive(Debug, Clone, thiserror::Error)]
#[error("missing tool `{0}`")]
pub struct MissingTool(pub &'static str);

/// What a plugin can ask for: one tool, an optional tool (`Option<T>`
/// falls back to `None`), or a tuple of those.
pub trait Inject: Sized {
    fn inject(tools: &Toolbox, plugin: &PluginId) -> Result<Self, MissingTool>;

    /// Adds the names of the tools injection cannot do without, so a
    /// binary can say what its deployment must provide before it boots.
    fn required_tools(_names: &mut Vec<&'static str>) {}
}

impl<T: Tool> Inject for T {
    fn inject(tools: &Toolbox, plugin: &PluginId) -> Result<Self, MissingTool> {
        tools
            .get::<T>()
            .map(|tool| tool.for_plugin(plugin))
            .ok_or(MissingTool(T::NAME))
    }

    fn required_tools(names: &mut Vec<&'static str>) {
        names.push(T::NAME);
    }
}

impl<T: Tool> Inject for Option<T> {
    fn inject(tools: &Toolbox, plugin: &PluginId) -> Result<Self, MissingTool> {
        Ok(tools.get::<T>().map(|tool| tool.for_plugin(plugin)))
    }
}

impl Inject for () {
    fn inject(_: &Toolbox, _: &PluginId) -> Result<Self, MissingTool> {
        Ok(())
    }
}

macro_rules! inject_tuple {
    ($($name:ident),+) => {
        impl<$($name: Inject),+> Inject for ($($name,)+) {
            fn inject(tools: &Toolbox, plugin: &PluginId) -> Result<Self, MissingTool> {
                Ok(($($name::inject(tools, plugin)?,)+))
            }

            fn required_tools(names: &mut Vec<&'static str>) {
                $($name::required_tools(names);)+
            }
        }
    };
}

inject_tuple!(A);
inject_tuple!(A, B);
inject_tuple!(A, B, C);
inject_tuple!(A, B, C, D);
inject_tuple!(A, B, C, D, E);
inject_tuple!(A, B, C, D, E, F);
inject_tuple!(A, B, C, D, E, F, G);
inject_tuple!(A, B, C, D, E, F, G, H);

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Clock;
    impl Tool for Clock {
        const NAME: &'static str = "clock";
    }

    #[derive(Clone)]
    struct OtherClock;
    impl Tool for OtherClock {
        const NAME: &'static str = "clock";
    }

    #[derive(Clone)]
    struct Mailer;
    impl Tool for Mailer {
        const NAME: &'static str = "mailer";
    }

    #[test]
    fn injection_names_the_missing_tool_and_optional_tools_fall_back() {
        let mut tools = Toolbox::new();
        tools.insert(Clock).unwrap();
        let plugin = PluginId::new("svc", "p");
        assert!(<(Clock, Option<Mailer>)>::inject(&tools, &plugin).is_ok());
        let err = <(Clock, Mailer)>::inject(&tools, &plugin).err().unwrap();
        assert_eq!(err.to_string(), "missing tool `mailer`");

        let mut required = Vec::new();
        <(Clock, Option<Mailer>)>::required_tools(&mut required);
        assert_eq!(required, ["clock"]);
    }

    /// A tool whose check finds it down, or never finishes.
    #[derive(Clone)]
    struct Payments {
        hangs: bool,
    }
    impl Tool for Payments {
        const NAME: &'static str = "payments";

        async fn check_health(&self) -> Option<Health> {
            if self.hangs {
                std::future::pending::<()>().await;
            }
            Some(Health::unhealthy("the provider refuses the key"))
        }
    }

    #[tokio::test]
    async fn only_tools_that_check_are_listed_with_what_they_found() {
        let mut tools = Toolbox::new();
        tools.insert(Clock).unwrap();
        tools.insert(Payments { hangs: false }).unwrap();
        let found = tools.check_health().await;
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            [(
                "payments",
                Health::unhealthy("the provider refuses the key")
            )]
        );
    }

    #[tokio::test]
    async fn a_check_that_hangs_reports_its_tool_unhealthy() {
        let mut tools = Toolbox::new();
        tools.insert(Payments { hangs: true }).unwrap();
        let found = tools.check_health_within(Duration::from_millis(10)).await;
        let payments = &found["payments"];
        assert_eq!(payments.status, Err("no answer within 10ms".to_owned()));
    }

    #[test]
    fn tool_name_collisions_are_refused() {
        let mut tools = Toolbox::new();
        tools.insert(Clock).unwrap();
        let err = tools.insert(OtherClock).err().unwrap();
        assert_eq!(err.name, "clock");
    }
}
