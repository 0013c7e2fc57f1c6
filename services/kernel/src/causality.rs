//! The causal chain: what a plugin is handling when it publishes. A task
//! local carries it through the handler, so `bus.publish` fills in parent
//! and correlation ids without the plugin passing them around.

use std::future::Future;

tokio::task_local! {
    static CAUSE: Cause;
}

/// The request or event being handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// Request id or event id: the parent of anything published now.
    pub id: String,
    /// The root of the chain.
    pub correlation_id: String,
}

impl Cause {
    /// An HTTP request is the root of its chain.
    pub fn request(request_id: &str) -> Self {
        Self {
            id: request_id.to_owned(),
            correlation_id: request_id.to_owned(),
        }
    }

    /// An event is the parent of what its handler publishes; the chain
    /// keeps the root it came from.
    pub fn event<P>(envelope: &shared_schemas::events::EventEnvelope<P>) -> Self {
        Self {
            id: envelope.id.clone(),
            correlation_id: envelope
                .correlation_id
                .clone()
                .unwrap_or_else(|| envelope.id.clone()),
        }
    }
}

/// The cause of the current task, if it is handling something.
pub fn current() -> Option<Cause> {
    CAUSE.try_with(Cause::clone).ok()
}

/// Runs `future` with `cause` as the current cause.
pub async fn scope<F: Future>(cause: Cause, future: F) -> F::Output {
    CAUSE.scope(cause, future).await
}
