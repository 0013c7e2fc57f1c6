//! The logger tool: `tracing` events attributed to the plugin that emits
//! them. Inside a handler, the request span adds the request id too.

use crate::plugin::PluginId;
use crate::tools::Tool;

/// Structured logging with the plugin identity attached to every line.
#[derive(Clone, Debug, Default)]
pub struct Logger {
    plugin: Option<PluginId>,
}

impl Logger {
    pub fn new() -> Self {
        Self::default()
    }

    fn identity(&self) -> &str {
        self.plugin.as_ref().map_or("kernel", PluginId::as_str)
    }

    pub fn debug(&self, message: impl std::fmt::Display) {
        tracing::debug!(plugin = self.identity(), "{message}");
    }

    pub fn info(&self, message: impl std::fmt::Display) {
        tracing::info!(plugin = self.identity(), "{message}");
    }

    pub fn warn(&self, message: impl std::fmt::Display) {
        tracing::warn!(plugin = self.identity(), "{message}");
    }

    pub fn error(&self, message: impl std::fmt::Display) {
        tracing::error!(plugin = self.identity(), "{message}");
    }
}

impl Tool for Logger {
    const NAME: &'static str = "logger";

    fn for_plugin(&self, plugin: &PluginId) -> Self {
        Self {
            plugin: Some(plugin.clone()),
        }
    }
}
