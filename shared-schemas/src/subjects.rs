//! NATS subject names. Every subject starts with one configurable prefix
//! (default `mc`), so several systems can share one NATS.

/// The default subject prefix.
pub const DEFAULT_PREFIX: &str = "mc";

/// Builds the subjects of one system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Subjects {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The subject an HTTP endpoint of `service` listens on (queue group:
    /// replicas share the load).
    pub fn http(&self, service: &str, endpoint: &str) -> String {
        format!("{}.http.{service}.{endpoint}", self.prefix)
    }

    /// True when `subject` is an HTTP endpoint subject of this system.
    pub fn is_http(&self, subject: &str) -> bool {
        subject
            .strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.starts_with(".http."))
    }

    /// The subject events named `event` are published on.
    pub fn event(&self, event: &str) -> String {
        format!("{}.events.{event}", self.prefix)
    }

    /// The dead-letter subject parallel to [`Subjects::event`].
    pub fn dlq(&self, event: &str) -> String {
        format!("{}.dlq.{event}", self.prefix)
    }

    /// Every event subject (the durable events stream captures these).
    pub fn events_wildcard(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    /// Every dead-letter subject.
    pub fn dlq_wildcard(&self) -> String {
        format!("{}.dlq.>", self.prefix)
    }

    /// The subject the log records of `service` are published on (not
    /// stored: a live view). A name that is not one subject token is
    /// made one.
    pub fn logs(&self, service: &str) -> String {
        if service.is_empty() {
            return format!("{}.logs._", self.prefix);
        }
        let token: String = service
            .chars()
            .map(|c| match c {
                '.' | '*' | '>' => '_',
                c if c.is_whitespace() => '_',
                c => c,
            })
            .collect();
        format!("{}.logs.{token}", self.prefix)
    }

    /// The log records of every service.
    pub fn logs_wildcard(&self) -> String {
        format!("{}.logs.*", self.prefix)
    }

    /// The JetStream stream holding this system's events, e.g. `MC_EVENTS`.
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.stream_prefix())
    }

    /// The JetStream stream holding this system's dead letters.
    pub fn dlq_stream(&self) -> String {
        format!("{}_DLQ", self.stream_prefix())
    }

    /// Stream names may not hold `.`, `*`, `>` or whitespace.
    fn stream_prefix(&self) -> String {
        self.prefix
            .chars()
            .map(|c| match c {
                c if c.is_ascii_alphanumeric() || c == '-' => c.to_ascii_uppercase(),
                _ => '_',
            })
            .collect()
    }

    /// The subject a request-reply handler named `name` answers on (queue
    /// group: one replica answers).
    pub fn rpc(&self, name: &str) -> String {
        format!("{}.rpc.{name}", self.prefix)
    }

    /// The system endpoint of one instance: its live figures (see
    /// [`system`](crate::system)). Unique to the instance, unlike every
    /// other endpoint subject, so the gateway can ask a replica of its
    /// choice.
    pub fn system(&self, service: &str, instance: &str) -> String {
        format!("{}.system.{service}.{instance}", self.prefix)
    }

    /// Where instances announce that they came up (payload: the
    /// [`ServiceInfo`](crate::discovery::ServiceInfo) `$SRV.INFO` answers).
    pub fn announce_up(&self) -> String {
        format!("{}.discovery.up", self.prefix)
    }

    /// Where instances announce that they are going away (payload:
    /// [`InstanceDown`](crate::discovery::InstanceDown)).
    pub fn announce_down(&self) -> String {
        format!("{}.discovery.down", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_share_the_prefix() {
        let s = Subjects::new("shop");
        assert_eq!(
            s.http("products", "get_product"),
            "shop.http.products.get_product"
        );
        assert_eq!(s.event("product.created"), "shop.events.product.created");
        assert_eq!(s.dlq("product.created"), "shop.dlq.product.created");
        assert_eq!(s.rpc("products.quote"), "shop.rpc.products.quote");
        assert_eq!(s.system("products", "4f2a"), "shop.system.products.4f2a");
        assert!(!s.is_http(&s.system("products", "4f2a")));
        assert_eq!(s.events_wildcard(), "shop.events.>");
        assert_eq!(s.logs("products"), "shop.logs.products");
        assert_eq!(s.logs("odd.name >"), "shop.logs.odd_name__");
        assert!(s.is_http("shop.http.products.get_product"));
        assert!(!s.is_http("mc.http.products.get_product"));
        assert!(!s.is_http("shopping.http.x.y"));
    }

    #[test]
    fn stream_names_are_valid_whatever_the_prefix() {
        assert_eq!(Subjects::default().events_stream(), "MC_EVENTS");
        assert_eq!(Subjects::new("acme.shop").dlq_stream(), "ACME_SHOP_DLQ");
    }
}
