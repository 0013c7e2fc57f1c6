//! Sampling, decided before a span is built.
//!
//! The OpenTelemetry layer builds every span it is shown (a builder, each
//! attribute formatted, a lock) and learns only when the span starts
//! whether its trace is sampled. At 10% sampling that is nine spans in ten
//! built for nothing, in every process a request crosses. So where a
//! message enters a process ([`continue_trace`](super::continue_trace)),
//! the sampler that `OTEL_TRACES_SAMPLER` configures decides first, from
//! the trace context the message carries or, for a new trace, from the
//! trace id drawn for it ([`decide`]):
//!
//! - **recorded**: the span and the spans under it go to the OpenTelemetry
//!   layer as before. A new trace keeps the trace id it was decided with
//!   ([`DecidedIds`]), so the SDK, asking the same sampler about the same
//!   trace, agrees.
//! - **not recorded**: the context the trace carries on (the same trace
//!   id, flagged unsampled) lives in a task-local around the handling of
//!   the message ([`carry`]): [`inject`](super::inject) writes it into
//!   every request and event sent from there, and the next process
//!   decides the same from that header alone. The entry span is built
//!   only when the logs may show it (`RUST_LOG`), with the trace id for
//!   its log lines, so that the log lines of one request name one trace id
//!   in every service; [`Recorded`] then keeps it and the spans under it
//!   from the OpenTelemetry layer, marked with the context they carry on
//!   ([`Unrecorded`]).
//!
//! The decision reaches the layer through a thread-local that holds it
//! only while the entry span is created, on the creating thread ([`entry`]);
//! spans created anywhere else inherit from their parent (under an
//! instance's span, from [`log_context`](super::log_context): no trace).

use std::any::TypeId;
use std::cell::Cell;
use std::future::Future;
use std::sync::OnceLock;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SamplingDecision, ShouldSample};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::{LookupSpan, SpanRef};

/// The process's sampler, set once spans are exported.
static SAMPLER: OnceLock<Box<dyn ShouldSample>> = OnceLock::new();

tokio::task_local! {
    /// The context an unsampled trace carries on, around the handling of
    /// the message that brought it ([`carry`]); `None` inside a recorded
    /// one.
    static CARRIED: Option<SpanContext>;
}

thread_local! {
    /// What [`entry`] decided for the span it is creating on this thread.
    static ENTRY: Cell<Option<Entry>> = const { Cell::new(None) };
    /// The trace id a new, recorded trace was decided with, until the SDK
    /// starts its root span.
    static DECIDED_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// Makes `sampler` decide for every message entering the process; the
/// SDK's provider must use the same sampler and [`DecidedIds`].
pub(super) fn install(sampler: Box<dyn ShouldSample>) {
    let _ = SAMPLER.set(sampler);
}

/// The sampling of the trace an incoming message belongs to.
pub(super) enum Decision {
    /// Spans are not exported at all.
    Off,
    /// The trace is recorded: continue `parent` or, without one, start
    /// the trace `new_trace`.
    Record {
        parent: Option<opentelemetry::Context>,
        new_trace: Option<TraceId>,
    },
    /// The trace is not recorded; its context goes on unchanged.
    Skip(SpanContext),
}

/// Decides for a message whose headers carry `parent` (an empty context
/// when they carry none). `parent` is only read when spans are exported.
pub(super) fn decide(parent: impl FnOnce() -> opentelemetry::Context) -> Decision {
    match SAMPLER.get() {
        Some(sampler) => decide_with(sampler.as_ref(), parent()),
        None => Decision::Off,
    }
}

fn decide_with(sampler: &dyn ShouldSample, parent: opentelemetry::Context) -> Decision {
    let remote = parent.span().span_context().clone();
    let ids = RandomIdGenerator::default();
    let (trace_id, parent) = if remote.is_valid() {
        (remote.trace_id(), Some(parent))
    } else {
        (ids.new_trace_id(), None)
    };
    let sampled = sampler.should_sample(parent.as_ref(), trace_id, "", &SpanKind::Server, &[], &[]);
    match (sampled.decision, parent) {
        (SamplingDecision::Drop, Some(_)) => Decision::Skip(remote),
        // A new trace not recorded still needs a parent span id for its
        // `traceparent`: one no span will ever have.
        (SamplingDecision::Drop, None) => Decision::Skip(SpanContext::new(
            trace_id,
            ids.new_span_id(),
            TraceFlags::default(),
            false,
            TraceState::default(),
        )),
        (_, parent) => Decision::Record {
            new_trace: parent.is_none().then_some(trace_id),
            parent,
        },
    }
}

/// What the entry span being created is to be.
enum Entry {
    Recorded,
    Unrecorded(SpanContext),
}

/// Creates an entry span with `make_span`, recorded or not as
/// `unrecorded` says.
pub(super) fn entry(
    unrecorded: Option<SpanContext>,
    make_span: impl FnOnce() -> tracing::Span,
) -> tracing::Span {
    let decided = match unrecorded {
        Some(carried) => Entry::Unrecorded(carried),
        None => Entry::Recorded,
    };
    ENTRY.set(Some(decided));
    let span = make_span();
    // Taken by the layer; cleared in case no layer saw the span.
    ENTRY.set(None);
    span
}

/// Runs `future` with `unrecorded`, the context of an unsampled trace, as
/// what the messages it sends carry on; `None` for a recorded trace.
pub(super) fn carry<F: Future>(
    unrecorded: Option<SpanContext>,
    future: F,
) -> impl Future<Output = F::Output> {
    CARRIED.scope(unrecorded, future)
}

/// The context of the unsampled trace the current task handles, if any.
pub(super) fn carried() -> Option<SpanContext> {
    CARRIED.try_with(Clone::clone).ok().flatten()
}

/// Runs `start` (which starts a root span) so that, when `trace_id` is
/// given, the SDK gives the span that trace id.
pub(super) fn with_trace_id<T>(trace_id: Option<TraceId>, start: impl FnOnce() -> T) -> T {
    DECIDED_TRACE_ID.set(trace_id);
    let started = start();
    DECIDED_TRACE_ID.set(None);
    started
}

/// The SDK's random ids, except for the root span of a trace the kernel
/// decided to record: that one gets the trace id of the decision.
#[derive(Debug, Default)]
pub(super) struct DecidedIds(RandomIdGenerator);

impl IdGenerator for DecidedIds {
    fn new_trace_id(&self) -> TraceId {
        DECIDED_TRACE_ID
            .take()
            .unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.0.new_span_id()
    }
}

/// Marks a span of a trace that is not recorded, with the context its
/// outgoing messages carry.
#[derive(Clone)]
struct Unrecorded(SpanContext);

/// Whether `span` belongs to a trace that is not recorded.
pub(super) fn is_unrecorded<S>(span: &SpanRef<'_, S>) -> bool
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    span.extensions().get::<Unrecorded>().is_some()
}

/// The context `span` carries on when its trace is not recorded.
pub(super) fn carried_context(span: &tracing::Span) -> Option<SpanContext> {
    super::in_registry(span, |span| {
        Some(span.extensions().get::<Unrecorded>()?.0.clone())
    })
}

/// Shows `L`, the OpenTelemetry layer, the spans of recorded traces at
/// `INFO` or above and the events inside them, and nothing else: not the
/// `trace_id` and `span_id` fields a span records for its log lines (its
/// OpenTelemetry span has both already), nor the entering and leaving of a
/// span on every poll of its future (the layer would only stamp the last
/// exit as the end of the span; without it, the span ends when it closes,
/// as soon after).
pub(super) struct Recorded<L> {
    inner: L,
}

impl<L> Recorded<L> {
    pub fn new(inner: L) -> Self {
        Self { inner }
    }
}

fn traced(metadata: &tracing::Metadata<'_>) -> bool {
    *metadata.level() <= tracing::Level::INFO
}

/// Whether `values` hold nothing but the log lines' `trace_id` and
/// `span_id`.
fn only_log_ids(values: &Record<'_>) -> bool {
    struct Others(bool);
    impl Visit for Others {
        fn record_debug(&mut self, field: &Field, _: &dyn std::fmt::Debug) {
            self.0 |= !matches!(field.name(), "trace_id" | "span_id");
        }
    }
    let mut others = Others(false);
    values.record(&mut others);
    !others.0
}

/// The context `span` carries on, when it is a span of a trace that is
/// not recorded: what a span created under it inherits.
fn unrecorded<S>(span: Option<SpanRef<'_, S>>) -> Option<SpanContext>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    Some(span?.extensions().get::<Unrecorded>()?.0.clone())
}

impl<S, L> Layer<S> for Recorded<L>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    L: Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.inner.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.inner.on_layer(subscriber);
    }

    fn register_callsite(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        self.inner.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.enabled(metadata, ctx)
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if !traced(attrs.metadata()) {
            return;
        }
        let carried = match ENTRY.take() {
            Some(Entry::Recorded) => None,
            Some(Entry::Unrecorded(carried)) => Some(carried),
            None if attrs.is_contextual() => unrecorded(ctx.lookup_current()),
            None => unrecorded(attrs.parent().and_then(|parent| ctx.span(parent))),
        };
        match carried {
            None => self.inner.on_new_span(attrs, id, ctx),
            Some(carried) => {
                if let Some(span) = ctx.span(id) {
                    span.extensions_mut().insert(Unrecorded(carried));
                }
            }
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if !only_log_ids(values) && !ctx.span(id).is_some_and(|span| is_unrecorded(&span)) {
            self.inner.on_record(id, values, ctx);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if !traced(event.metadata()) {
            return;
        }
        if !ctx
            .event_span(event)
            .is_some_and(|span| is_unrecorded(&span))
        {
            self.inner.on_event(event, ctx);
        }
    }

    // The layer passes over spans it never saw: no need to look first.
    fn on_follows_from(&self, id: &Id, follows: &Id, ctx: Context<'_, S>) {
        self.inner.on_follows_from(id, follows, ctx);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        self.inner.on_close(id, ctx);
    }

    unsafe fn downcast_raw(&self, id: TypeId) -> Option<*const ()> {
        if id == TypeId::of::<Self>() {
            Some(self as *const Self as *const ())
        } else {
            // SAFETY: forwarded as is; the inner layer answers for its types.
            unsafe { self.inner.downcast_raw(id) }
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

    use super::*;

    #[test]
    fn a_new_trace_keeps_the_id_and_the_decision_it_was_sampled_with() {
        let sampler = Sampler::TraceIdRatioBased(0.5);
        let provider = SdkTracerProvider::builder()
            .with_sampler(sampler.clone())
            .with_id_generator(DecidedIds::default())
            .build();
        let tracer = provider.tracer("test");
        let (mut recorded, mut skipped) = (0, 0);
        let mut last_decided = TraceId::INVALID;
        for _ in 0..64 {
            match decide_with(&sampler, opentelemetry::Context::new()) {
                Decision::Record {
                    parent: None,
                    new_trace: Some(trace_id),
                } => {
                    let span = with_trace_id(Some(trace_id), || tracer.start("root"));
                    assert_eq!(span.span_context().trace_id(), trace_id);
                    assert!(span.span_context().is_sampled(), "the SDK agrees");
                    last_decided = trace_id;
                    recorded += 1;
                }
                Decision::Skip(carried) => {
                    assert!(carried.is_valid() && !carried.is_sampled());
                    skipped += 1;
                }
                _ => panic!("a new trace has no parent"),
            }
        }
        assert!(
            recorded > 0 && skipped > 0,
            "{recorded} recorded, {skipped} skipped"
        );
        // Without a decision, ids are random again.
        let other = tracer.start("other").span_context().trace_id();
        assert_ne!(other, last_decided);
    }

    #[test]
    fn an_unsampled_parent_is_carried_on_unchanged() {
        let remote = SpanContext::new(
            TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
            SpanId::from(0x00f0_67aa_0ba9_02b7),
            TraceFlags::default(),
            true,
            TraceState::default(),
        );
        let parent = opentelemetry::Context::new().with_remote_span_context(remote.clone());
        let sampler = Sampler::ParentBased(Box::new(Sampler::AlwaysOn));
        match decide_with(&sampler, parent) {
            Decision::Skip(carried) => assert_eq!(carried, remote),
            _ => panic!("an unsampled parent is not recorded"),
        }

        let sampled = SpanContext::new(
            remote.trace_id(),
            remote.span_id(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let parent = opentelemetry::Context::new().with_remote_span_context(sampled);
        assert!(matches!(
            decide_with(&sampler, parent),
            Decision::Record {
                parent: Some(_),
                new_trace: None
            }
        ));
    }
}
