//! The canonical message.

use crate::{Address, ConnId, Headers, MessageId};
use bytes::Bytes;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A cheaply cloned, immutable string.
pub type Str = Arc<str>;

/// Milliseconds since the Unix epoch, the unit of every timestamp in the model.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Which protocol and connection produced a message (no-local, tracing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// Adapter name (`"mqtt"`, `"amqp"`, ...), or `"internal"`.
    pub protocol: &'static str,
    /// The publishing connection; `ConnId(0)` for the broker itself.
    pub conn: ConnId,
}

impl Origin {
    /// A message the broker made itself (dead letters, wills, ...).
    pub const INTERNAL: Origin = Origin {
        protocol: "internal",
        conn: ConnId(0),
    };
}

impl Default for Origin {
    fn default() -> Self {
        Origin::INTERNAL
    }
}

/// The properties every protocol has a slot for. Absent means "not set".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    /// MIME type of the body (`application/json`).
    pub content_type: Option<Str>,
    /// Encoding of the body (`gzip`).
    pub content_encoding: Option<Str>,
    /// Opaque bytes that tie a reply to its request (MQTT 5 correlation data
    /// is binary; AMQP and STOMP carry text, stored here as its UTF-8 bytes).
    pub correlation_id: Option<Bytes>,
    /// The address a reply should be published to.
    pub reply_to: Option<Str>,
    /// The publisher's own id for the message (not the broker's [`MessageId`]).
    pub message_id: Option<Str>,
    /// 0 (lowest) – 9 (highest); `None` is the default priority 4.
    pub priority: Option<u8>,
    /// Absolute expiry, milliseconds since the epoch.
    pub expires_at: Option<u64>,
    /// When the publisher made it, milliseconds since the epoch.
    pub timestamp: Option<u64>,
    /// Persistent: journaled before it is confirmed, when it lands in a
    /// durable queue.
    pub durable: bool,
    /// Properties one protocol carries that have no canonical slot (AMQP
    /// 0-9-1 `type`, `user-id`, `app-id`, `cluster-id`), named
    /// `<protocol>.<name>` (`amqp.app-id`). They travel with the message so
    /// a client of that protocol gets them back; they are not user headers,
    /// and adapters of other protocols ignore them. Empty (no allocation)
    /// for most messages.
    pub extensions: Headers,
}

/// Where a message was sent: the namespace its address is routed in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Namespace {
    /// Publish/subscribe (`amq.topic` in AMQP terms): every subscription
    /// whose filter matches the address gets a copy.
    Multicast,
    /// Point-to-point (AMQP's default exchange `""`): the address names a queue.
    Anycast,
    /// A declared exchange; the address is its routing key.
    Exchange(Str),
}

impl Namespace {
    /// The AMQP exchange name of the multicast namespace.
    pub const MULTICAST_EXCHANGE: &'static str = "amq.topic";
    /// The AMQP exchange name of the anycast namespace.
    pub const ANYCAST_EXCHANGE: &'static str = "";

    /// The namespace an AMQP exchange name stands for.
    pub fn from_exchange(name: &str) -> Namespace {
        match name {
            Self::MULTICAST_EXCHANGE => Namespace::Multicast,
            Self::ANYCAST_EXCHANGE => Namespace::Anycast,
            other => Namespace::Exchange(Arc::from(other)),
        }
    }

    /// The AMQP exchange name of this namespace.
    pub fn exchange_name(&self) -> &str {
        match self {
            Namespace::Multicast => Self::MULTICAST_EXCHANGE,
            Namespace::Anycast => Self::ANYCAST_EXCHANGE,
            Namespace::Exchange(n) => n,
        }
    }
}

/// One immutable message. The broker wraps it in an `Arc` when it is
/// published; every queue it lands in shares that one allocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Broker-assigned on publish; [`MessageId::default`] until then.
    pub id: MessageId,
    /// The namespace `address` is routed in.
    pub namespace: Namespace,
    /// The address (multicast), queue name (anycast) or routing key
    /// (exchange) the message was published to.
    pub address: Str,
    pub body: Bytes,
    pub properties: Properties,
    pub headers: Headers,
    pub origin: Origin,
}

/// Default message priority (AMQP and JMS use 4 as "normal").
pub const DEFAULT_PRIORITY: u8 = 4;

impl Message {
    /// A message for the multicast namespace.
    pub fn multicast(address: &Address, body: Bytes) -> Message {
        Message::new(Namespace::Multicast, address.as_arc().clone(), body)
    }

    /// A message for the queue named `queue`.
    pub fn anycast(queue: &str, body: Bytes) -> Message {
        Message::new(Namespace::Anycast, Arc::from(queue), body)
    }

    /// A message in any namespace.
    pub fn new(namespace: Namespace, address: Str, body: Bytes) -> Message {
        Message {
            id: MessageId::default(),
            namespace,
            address,
            body,
            properties: Properties::default(),
            headers: Headers::new(),
            origin: Origin::INTERNAL,
        }
    }

    /// The priority, with the default filled in, clamped to 0–9.
    #[inline]
    pub fn priority(&self) -> u8 {
        self.properties.priority.unwrap_or(DEFAULT_PRIORITY).min(9)
    }

    /// True when `now` (ms since epoch) is at or past the message's expiry.
    #[inline]
    pub fn is_expired(&self, now: u64) -> bool {
        self.properties.expires_at.is_some_and(|at| now >= at)
    }

    /// Approximate memory held by the message, for byte budgets.
    pub fn approx_size(&self) -> usize {
        const FIXED: usize = std::mem::size_of::<Message>() + 16;
        FIXED
            + self.body.len()
            + self.address.len()
            + self.headers.approx_size()
            + self.properties.content_type.as_ref().map_or(0, |s| s.len())
            + self.properties.reply_to.as_ref().map_or(0, |s| s.len())
            + self
                .properties
                .correlation_id
                .as_ref()
                .map_or(0, |s| s.len())
            + self.properties.message_id.as_ref().map_or(0, |s| s.len())
            + self.properties.extensions.approx_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_map_to_amqp_exchange_names() {
        assert_eq!(Namespace::from_exchange("amq.topic"), Namespace::Multicast);
        assert_eq!(Namespace::from_exchange(""), Namespace::Anycast);
        let x = Namespace::from_exchange("logs");
        assert_eq!(x.exchange_name(), "logs");
        assert_eq!(Namespace::Multicast.exchange_name(), "amq.topic");
    }

    #[test]
    fn priority_defaults_and_clamps() {
        let addr = Address::new("a.b").unwrap();
        let mut m = Message::multicast(&addr, Bytes::from_static(b"x"));
        assert_eq!(m.priority(), 4);
        m.properties.priority = Some(200);
        assert_eq!(m.priority(), 9);
    }

    #[test]
    fn expiry() {
        let mut m = Message::anycast("q", Bytes::new());
        assert!(!m.is_expired(u64::MAX));
        m.properties.expires_at = Some(100);
        assert!(!m.is_expired(99));
        assert!(m.is_expired(100));
    }
}
