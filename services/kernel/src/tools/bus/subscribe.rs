//! Declaring an event handler: who receives the event (each subscribing
//! plugin once, a named worker pool, or every instance), and how hard to
//! try before the event goes to the dead-letter queue.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use shared_schemas::events::EventEnvelope;

use super::Bus;
use crate::plugin::PluginId;

/// What an event handler returns. Any error can be propagated with `?`;
/// a failed handler is retried, then dead-lettered.
pub type EventResult = Result<(), BoxError>;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Erased handler: refuses a payload that does not fit its type (a
/// failure no retry can fix), or yields the handling.
pub(crate) type EventHandler = Arc<
    dyn Fn(EventEnvelope) -> Result<BoxFuture<'static, EventResult>, serde_json::Error>
        + Send
        + Sync,
>;

/// Who receives an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Audience {
    /// One delivery per subscribing plugin, shared by its replicas.
    Plugin,
    /// One delivery per named pool, whichever plugins and services join it.
    Group(String),
    /// A copy for every running instance.
    Broadcast,
}

/// A declared event handler, run by the service after boot.
#[derive(Clone)]
pub(crate) struct Subscription {
    pub plugin: PluginId,
    pub event: String,
    /// `service.plugin.name`: in logs, dead letters and consumer names.
    pub subscriber: String,
    pub audience: Audience,
    pub retries: u32,
    pub backoff: Duration,
    pub concurrency: usize,
    pub handler: EventHandler,
}

/// A subscription cannot be declared as asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubscribeError {
    #[error("`{subscriber}` is declared twice; give one of them another `.name(..)`")]
    Duplicate { subscriber: String },
    #[error("invalid {what} `{value}`: use letters, digits, `-`, `_` and `.`")]
    InvalidName { what: &'static str, value: String },
    #[error("only a plugin's bus can subscribe")]
    NoPlugin,
}

const DEFAULT_RETRIES: u32 = 3;
const DEFAULT_BACKOFF: Duration = Duration::from_millis(500);
const DEFAULT_CONCURRENCY: usize = 16;

/// Declares one event handler; finished by [`SubscribeBuilder::handler`].
#[must_use = "a subscription is declared only by `.handler(..)`"]
pub struct SubscribeBuilder<'a> {
    bus: &'a Bus,
    event: String,
    name: Option<String>,
    audience: Audience,
    retries: u32,
    backoff: Duration,
    concurrency: usize,
}

impl Bus {
    /// Declares a handler for `event`, in `on_boot`.
    pub fn subscribe(&self, event: &str) -> SubscribeBuilder<'_> {
        SubscribeBuilder {
            bus: self,
            event: event.to_owned(),
            name: None,
            audience: Audience::Plugin,
            retries: DEFAULT_RETRIES,
            backoff: DEFAULT_BACKOFF,
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

impl SubscribeBuilder<'_> {
    /// Names the handler (default: the event name); needed when one plugin
    /// subscribes twice to the same event.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Joins the worker pool `group`: each event goes to one member of the
    /// pool, whichever plugin or service it belongs to.
    pub fn group(mut self, group: &str) -> Self {
        self.audience = Audience::Group(group.to_owned());
        self
    }

    /// Every running instance gets its own copy of each event published
    /// while it runs.
    pub fn broadcast(mut self) -> Self {
        self.audience = Audience::Broadcast;
        self
    }

    /// Attempts after the first failure before the event is dead-lettered
    /// (default 3).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Wait before the first retry, doubled for each next one (default
    /// 500 ms).
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// Events handled at once by this instance (default 16). Events with
    /// the same key are always handled one after the other, in order.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Declares `handler` for the event. The payload is deserialized into
    /// `T`, which may name only the fields the handler reads.
    pub fn handler<P, T, F, Fut, E>(self, plugin: &Arc<P>, handler: F) -> Result<(), SubscribeError>
    where
        P: Send + Sync + 'static,
        T: DeserializeOwned + Send + 'static,
        F: Fn(Arc<P>, EventEnvelope<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let owner = self.bus.emitter.clone().ok_or(SubscribeError::NoPlugin)?;
        check_name("event", &self.event)?;
        let name = self.name.unwrap_or_else(|| self.event.clone());
        check_name("name", &name)?;
        if let Audience::Group(group) = &self.audience {
            check_name("group", group)?;
        }
        let plugin = plugin.clone();
        let handler: EventHandler = Arc::new(move |envelope: EventEnvelope| {
            let envelope = decode(envelope)?;
            Ok(handler(plugin.clone(), envelope)
                .map(|result| result.map_err(Into::into))
                .boxed())
        });
        let subscription = Subscription {
            subscriber: format!("{owner}.{name}"),
            plugin: owner,
            event: self.event,
            audience: self.audience,
            retries: self.retries,
            backoff: self.backoff,
            concurrency: self.concurrency,
            handler,
        };
        let mut result = Ok(());
        self.bus.declare(|declared| {
            if declared
                .subscriptions
                .iter()
                .any(|s| s.subscriber == subscription.subscriber)
            {
                result = Err(SubscribeError::Duplicate {
                    subscriber: subscription.subscriber.clone(),
                });
            } else {
                declared.subscriptions.push(subscription);
            }
        });
        result
    }
}

/// The envelope with its payload as the handler's type.
fn decode<T: DeserializeOwned>(
    envelope: EventEnvelope,
) -> Result<EventEnvelope<T>, serde_json::Error> {
    let EventEnvelope {
        id,
        event,
        payload,
        emitter,
        timestamp,
        parent_id,
        correlation_id,
        key,
        headers,
    } = envelope;
    Ok(EventEnvelope {
        payload: serde_json::from_value(payload)?,
        id,
        event,
        emitter,
        timestamp,
        parent_id,
        correlation_id,
        key,
        headers,
    })
}

pub(crate) fn check_name(what: &'static str, value: &str) -> Result<(), SubscribeError> {
    let valid = !value.is_empty()
        && !value.starts_with('.')
        && !value.ends_with('.')
        && !value.contains("..")
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(SubscribeError::InvalidName {
            what,
            value: value.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn names_must_be_subject_tokens() {
        assert!(check_name("event", "order.placed").is_ok());
        assert!(check_name("event", "order.*").is_err());
        assert!(check_name("event", "order..placed").is_err());
        assert!(check_name("event", "").is_err());
        assert!(check_name("event", "a b").is_err());
    }
}
