//! On `user.created`: welcome the new user.

use microcore::prelude::*;
use shared_schemas::events::UserCreated;

/// The part of `user.created` this plugin reads.
#[derive(Debug, Deserialize)]
pub struct NewUser {
    pub id: i64,
    pub name: String,
}

pub struct WelcomeUserPlugin {
    db: Db,
    bus: Bus,
}

impl Plugin for WelcomeUserPlugin {
    type Tools = (Db, Bus);

    fn new((db, bus): Self::Tools) -> Self {
        Self { db, bus }
    }

    async fn on_boot(self: Arc<Self>) -> Result<(), BootError> {
        self.bus.subscribe(UserCreated::EVENT).handler(&self, Self::welcome)?;
        Ok(())
    }
}

impl WelcomeUserPlugin {
    async fn welcome(self: Arc<Self>, event: EventEnvelope<NewUser>) -> EventResult {
        let message = format!("Welcome, {}!", event.payload.name);
        crate::notify::store(&self.db, &event, &event.payload.id.to_string(), &message).await
    }
}
