//! Plain subscriptions inside one process: every message published, plain
//! or durable, is offered to each tap whose pattern matches its subject,
//! with the wildcards of NATS (`*` is one token, a final `>` one or more).
//!
//! A publisher never waits for a tap. Each tap is a bounded ring
//! ([`TAP_BACKLOG`] messages): when its reader falls that far behind, the
//! oldest messages it has not read are overwritten, and the reader learns
//! how many it missed (it logs a warning) before it gets the newest. An
//! observer cares about what happens now, so the newest win — the NATS
//! client, the other way round, drops what arrives once its buffer is full;
//! either way the publisher goes on at full speed.

use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use std::sync::Mutex;
use tokio::sync::broadcast;

use super::lock;
use crate::transport::Message;

/// Messages a tap holds for its reader before the oldest are overwritten.
const TAP_BACKLOG: usize = 1024;

#[derive(Default)]
pub(super) struct Taps {
    taps: Mutex<Vec<Tap>>,
}

struct Tap {
    pattern: Pattern,
    messages: broadcast::Sender<Message>,
}

impl Taps {
    /// A stream of what is published from now on to subjects `pattern`
    /// matches; dropping it removes the tap.
    pub fn subscribe(&self, pattern: &str) -> Result<BoxStream<'static, Message>, InvalidPattern> {
        let parsed = Pattern::parse(pattern)?;
        let (messages, receiver) = broadcast::channel(TAP_BACKLOG);
        lock(&self.taps).push(Tap {
            pattern: parsed,
            messages,
        });
        let pattern = pattern.to_owned();
        Ok(stream::unfold(receiver, move |mut receiver| {
            let pattern = pattern.clone();
            async move {
                loop {
                    match receiver.recv().await {
                        Ok(message) => return Some((message, receiver)),
                        Err(broadcast::error::RecvError::Lagged(missed)) => tracing::warn!(
                            %pattern,
                            missed,
                            "a bus subscriber fell behind and missed messages"
                        ),
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        })
        .boxed())
    }

    /// Offers `message` to every tap on `subject`, forgetting the taps
    /// whose reader is gone.
    pub fn publish(&self, subject: &str, message: &Message) {
        let mut taps = lock(&self.taps);
        taps.retain(|tap| tap.messages.receiver_count() > 0);
        for tap in taps.iter().filter(|tap| tap.pattern.matches(subject)) {
            // Only fails without a receiver, and those were just removed.
            let _ = tap.messages.send(message.clone());
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.taps).len()
    }
}

/// A subscription pattern is not a valid NATS subject pattern.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a subject pattern: tokens must be non-empty, `>` only last")]
pub(super) struct InvalidPattern(String);

/// A subject pattern, split into its tokens.
struct Pattern(Vec<Token>);

enum Token {
    Literal(String),
    /// `*`: exactly one token.
    One,
    /// `>`: one or more tokens, only last.
    Rest,
}

impl Pattern {
    fn parse(pattern: &str) -> Result<Self, InvalidPattern> {
        let invalid = || InvalidPattern(pattern.to_owned());
        let parts: Vec<&str> = pattern.split('.').collect();
        let last = parts.len() - 1;
        parts
            .iter()
            .enumerate()
            .map(|(i, part)| match *part {
                "" => Err(invalid()),
                _ if part.contains(char::is_whitespace) => Err(invalid()),
                "*" => Ok(Token::One),
                ">" if i == last => Ok(Token::Rest),
                ">" => Err(invalid()),
                literal => Ok(Token::Literal(literal.to_owned())),
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    fn matches(&self, subject: &str) -> bool {
        let mut tokens = subject.split('.');
        for expected in &self.0 {
            match (expected, tokens.next()) {
                (Token::Rest, next) => return next.is_some(),
                (_, None) => return false,
                (Token::One, Some(_)) => {}
                (Token::Literal(literal), Some(token)) if literal == token => {}
                (Token::Literal(_), Some(_)) => return false,
            }
        }
        tokens.next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn matches(pattern: &str, subject: &str) -> bool {
        Pattern::parse(pattern)
            .expect("a valid pattern")
            .matches(subject)
    }

    #[test]
    fn wildcards_match_as_in_nats() {
        assert!(matches("mc.events.order.placed", "mc.events.order.placed"));
        assert!(!matches("mc.events.order.placed", "mc.events.order"));
        assert!(matches("mc.events.*.placed", "mc.events.order.placed"));
        assert!(!matches("mc.events.*", "mc.events.order.placed"));
        assert!(matches("mc.events.>", "mc.events.order.placed"));
        assert!(matches("mc.events.>", "mc.events.x"));
        assert!(!matches("mc.events.>", "mc.events"));
        assert!(!matches("mc.events.>", "mc.dlq.x"));
        assert!(matches("*.logs.>", "mc.logs.products"));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for pattern in ["", "mc..x", "mc.>.x", "mc.", "mc.a b"] {
            assert!(Pattern::parse(pattern).is_err(), "{pattern:?}");
        }
    }

    fn message(n: u16) -> Message {
        Message::new(Default::default(), n.to_be_bytes().to_vec())
    }

    async fn next(stream: &mut BoxStream<'static, Message>) -> Message {
        tokio::time::timeout(Duration::from_secs(2), stream.next())
            .await
            .expect("a message in time")
            .expect("an open tap")
    }

    #[tokio::test]
    async fn a_reader_that_falls_behind_gets_the_newest_messages() {
        let taps = Taps::default();
        let mut tap = taps.subscribe("mc.>").expect("a tap");
        let published = u16::try_from(TAP_BACKLOG).expect("a small backlog") + 10;
        for n in 0..published {
            taps.publish("mc.x", &message(n));
        }
        assert_eq!(
            next(&mut tap).await.body,
            message(10).body,
            "the oldest went"
        );
        taps.publish("mc.x", &message(published));
        let mut last = next(&mut tap).await;
        for _ in 0..TAP_BACKLOG - 1 {
            last = next(&mut tap).await;
        }
        assert_eq!(last.body, message(published).body);
    }

    #[tokio::test]
    async fn a_dropped_tap_is_forgotten() {
        let taps = Taps::default();
        let kept = taps.subscribe("mc.>").expect("a tap");
        drop(taps.subscribe("mc.>").expect("a tap"));
        taps.publish("mc.x", &message(1));
        assert_eq!(taps.len(), 1);
        drop(kept);
    }
}
