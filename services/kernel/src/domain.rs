//! A domain: the plugins of one service and the migrations of the tables
//! it owns. Its crate builds one with [`Domain::new`]; the plugin list is
//! generated at build time from the files in `src/plugins/`.

use sqlx::migrate::Migrator;

use crate::plugin::PluginEntry;

/// Everything a service process needs to know about its domain.
#[derive(Debug)]
pub struct Domain {
    pub name: &'static str,
    pub version: &'static str,
    pub description: &'static str,
    pub plugins: Vec<PluginEntry>,
    pub migrations: Option<Migrations>,
}

/// A domain's migrations, one set per engine: their DDL differs (identity
/// columns, timestamps), the tables they create do not. Build it with
/// [`migrations!`](crate::migrations).
#[derive(Debug)]
pub struct Migrations {
    pub postgres: Migrator,
    pub sqlite: Migrator,
}

/// The [`Migrations`] of the calling crate, embedded at build time from
/// `migrations/postgres/` and `migrations/sqlite/`.
#[macro_export]
macro_rules! migrations {
    () => {
        $crate::domain::Migrations {
            postgres: ::sqlx::migrate!("migrations/postgres"),
            sqlite: ::sqlx::migrate!("migrations/sqlite"),
        }
    };
}

impl Domain {
    /// `name` must be a valid NATS micro service name (`A-Z a-z 0-9 _ -`);
    /// `version` a semver string (the crate's, usually).
    pub fn new(name: &'static str, version: &'static str) -> Self {
        Self {
            name,
            version,
            description: "",
            plugins: Vec::new(),
            migrations: None,
        }
    }

    pub fn description(mut self, description: &'static str) -> Self {
        self.description = description;
        self
    }

    pub fn plugins(mut self, plugins: Vec<PluginEntry>) -> Self {
        self.plugins = plugins;
        self
    }

    /// Every tool some plugin of the domain cannot boot without.
    pub fn required_tools(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.plugins.iter().flat_map(PluginEntry::required_tools)
    }

    /// The domain's migrations, usually `microcore::migrations!()`.
    pub fn migrations(mut self, migrations: Migrations) -> Self {
        self.migrations = Some(migrations);
        self
    }
}
