//! The W3C `traceparent` header on the hot path. While traces are
//! exported, every message a process sends or takes carries one, sampled
//! or not, and the SDK's propagator writes it with `format!` and reads it
//! by splitting it into a `Vec`: some 3k instructions each way, most of
//! what an unsampled request costs. The common header, version `00` in
//! its canonical 55 bytes and no `tracestate`, is written and read here
//! directly; anything else goes to the SDK's propagator, whose semantics
//! these are.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// `00-` trace id `-` span id `-` flags.
const CANONICAL_LEN: usize = 55;

/// The trace context `headers` carry; an empty context when they carry
/// none or an invalid one.
pub(super) fn extract(headers: &HeaderMap) -> opentelemetry::Context {
    let Some(traceparent) = headers.get(TRACEPARENT) else {
        return opentelemetry::Context::new();
    };
    match parse_canonical(traceparent.as_bytes()) {
        Some(context) if !headers.contains_key(TRACESTATE) => {
            opentelemetry::Context::new().with_remote_span_context(context)
        }
        _ => TraceContextPropagator::new().extract(&HeaderExtractor(headers)),
    }
}

/// Writes `context` into `headers` (`traceparent`, and `tracestate` when
/// it has one), replacing any there; nothing for an invalid context.
pub(super) fn inject(context: &SpanContext, headers: &mut HeaderMap) {
    // Untraced, nothing to write: the propagator would only find that out.
    if !context.is_valid() {
        return;
    }
    if let Some(traceparent) = traceparent(context) {
        headers.insert(TRACEPARENT, traceparent);
        return;
    }
    let context = opentelemetry::Context::new().with_remote_span_context(context.clone());
    TraceContextPropagator::new().inject_context(&context, &mut TraceHeaders(headers));
}

/// The headers the propagator writes into. Unlike `HeaderInjector`, it
/// leaves out an empty value: the W3C propagator writes `tracestate` even
/// when there is none, one more header to carry on every message.
struct TraceHeaders<'a>(&'a mut HeaderMap);

impl opentelemetry::propagation::Injector for TraceHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        let Ok(name) = HeaderName::from_bytes(key.as_bytes()) else {
            return;
        };
        if let Ok(value) = HeaderValue::try_from(value) {
            self.0.insert(name, value);
        }
    }
}

/// The `traceparent` of `context`, when it is valid and carries no trace
/// state (which needs the propagator's `tracestate`).
fn traceparent(context: &SpanContext) -> Option<HeaderValue> {
    if !context.is_valid() || *context.trace_state() != TraceState::default() {
        return None;
    }
    let mut text = [0u8; CANONICAL_LEN];
    text[..3].copy_from_slice(b"00-");
    encode_hex(&context.trace_id().to_bytes(), &mut text[3..35]);
    text[35] = b'-';
    encode_hex(&context.span_id().to_bytes(), &mut text[36..52]);
    text[52] = b'-';
    let flags = context.trace_flags() & TraceFlags::SAMPLED;
    encode_hex(&[flags.to_u8()], &mut text[53..]);
    HeaderValue::from_bytes(&text).ok()
}

/// A canonical version-00 `traceparent` (lower case, valid ids); `None`
/// for anything else.
fn parse_canonical(text: &[u8]) -> Option<SpanContext> {
    if text.len() != CANONICAL_LEN
        || !text.starts_with(b"00-")
        || text[35] != b'-'
        || text[52] != b'-'
    {
        return None;
    }
    let mut trace_id = [0u8; 16];
    decode_hex(&text[3..35], &mut trace_id)?;
    let mut span_id = [0u8; 8];
    decode_hex(&text[36..52], &mut span_id)?;
    let mut flags = [0u8; 1];
    decode_hex(&text[53..], &mut flags)?;
    let context = SpanContext::new(
        TraceId::from_bytes(trace_id),
        SpanId::from_bytes(span_id),
        TraceFlags::new(flags[0]) & TraceFlags::SAMPLED,
        true,
        Default::default(),
    );
    context.is_valid().then_some(context)
}

/// `bytes` in lower-case hex, as trace context writes ids, into `out`,
/// twice as long.
pub(super) fn encode_hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

/// Lower-case hex `text` into `out`, half as long; `None` for anything
/// else. Trace context allows only lower case, which general-purpose hex
/// decoders do not check.
fn decode_hex(text: &[u8], out: &mut [u8]) -> Option<()> {
    fn nibble(digit: u8) -> Option<u8> {
        match digit {
            b'0'..=b'9' => Some(digit - b'0'),
            b'a'..=b'f' => Some(digit - b'a' + 10),
            _ => None,
        }
    }
    if text.len() != 2 * out.len() {
        return None;
    }
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry_http::HeaderInjector;

    use super::*;

    fn headers(traceparent: &str, tracestate: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_str(traceparent).unwrap());
        if let Some(state) = tracestate {
            headers.insert(TRACESTATE, HeaderValue::from_str(state).unwrap());
        }
        headers
    }

    #[test]
    fn headers_read_as_the_propagator_reads_them() {
        let sdk = TraceContextPropagator::new();
        let cases = [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "02-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-XYZxsf09",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "",
        ];
        for traceparent in cases {
            for tracestate in [None, Some("foo=bar")] {
                let headers = headers(traceparent, tracestate);
                let ours = extract(&headers);
                let theirs = sdk.extract(&HeaderExtractor(&headers));
                assert_eq!(
                    ours.span().span_context(),
                    theirs.span().span_context(),
                    "{traceparent:?} with {tracestate:?}"
                );
            }
        }
        assert!(!extract(&HeaderMap::new()).span().span_context().is_valid());
    }

    #[test]
    fn a_traceparent_header_is_read_back_as_the_same_context() {
        let mut headers = headers(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            None,
        );
        let context = extract(&headers);
        let span = context.span();
        let remote = span.span_context();
        assert_eq!(
            remote.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let mut out = HeaderMap::new();
        inject(remote, &mut out);
        assert_eq!(out["traceparent"], headers["traceparent"]);
        assert!(!out.contains_key("tracestate"), "no empty tracestate");

        headers.insert(TRACESTATE, HeaderValue::from_static("vendor=opaque"));
        let context = extract(&headers);
        inject(context.span().span_context(), &mut out);
        assert_eq!(out["tracestate"], "vendor=opaque");
    }

    #[test]
    fn the_header_is_the_one_the_propagator_writes() {
        let sdk = TraceContextPropagator::new();
        for flags in [
            TraceFlags::default(),
            TraceFlags::SAMPLED,
            TraceFlags::new(0x09),
        ] {
            let context = SpanContext::new(
                TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
                SpanId::from(0x00f0_67aa_0ba9_02b7),
                flags,
                true,
                TraceState::default(),
            );
            let mut written = HeaderMap::new();
            let remote = opentelemetry::Context::new().with_remote_span_context(context.clone());
            sdk.inject_context(&remote, &mut HeaderInjector(&mut written));
            assert_eq!(traceparent(&context).as_ref(), written.get(TRACEPARENT));
        }
        assert_eq!(traceparent(&SpanContext::empty_context()), None);
        let with_state = SpanContext::new(
            TraceId::from(1),
            SpanId::from(1),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("foo", "bar")]).unwrap(),
        );
        assert_eq!(traceparent(&with_state), None, "left to the propagator");
    }
}
