//! `[listeners.stomp]` options. The doc comments here are the user
//! documentation repeated in `config/switchyard.toml`.

use crate::codec::Limits;
use serde::Deserialize;
use std::time::Duration;
use switchyard_core::{Dur, Size};

/// What a destination without a known prefix (`/topic/`, `/queue/`,
/// `/amq/queue/`, `/exchange/`) names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultDestination {
    /// A point-to-point queue of that name (`orders` is `/queue/orders`).
    #[default]
    Queue,
    /// A multicast address (`a.b` is `/topic/a.b`).
    Topic,
}

/// Options of a STOMP listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StompConfig {
    /// What a bare destination (no `/topic/`, `/queue/`, `/amq/queue/` or
    /// `/exchange/` prefix) means: "queue" or "topic". The default is
    /// "queue", as ActiveMQ does: a message sent to a queue waits for a
    /// consumer, so a client that meant a queue never loses messages to the
    /// default.
    pub default_destination: DefaultDestination,
    /// Longest command or header line of a frame, in bytes.
    pub max_header_line: Size,
    /// Most headers in one frame.
    pub max_headers: usize,
    /// Most bytes of all the header lines of one frame together.
    pub max_header_size: Size,
    /// Largest frame body. Unset: `[limits] max_message_size`; it can only
    /// be lowered below that.
    pub max_body_size: Option<Size>,
    /// The shortest interval at which the server offers to send heart-beats
    /// (the first number of the `heart-beat` header of CONNECTED). A client
    /// that asks for heart-beats gets them every max(this, what it asked
    /// for). "0" never sends any.
    pub heart_beat_send: Dur,
    /// The shortest interval between client heart-beats the server asks for
    /// (the second number of CONNECTED's `heart-beat`). A client that
    /// offers heart-beats sends them every max(this, its offer), and is
    /// disconnected when it sends nothing for that interval plus the grace
    /// below. "0" asks for none and never disconnects a quiet client.
    pub heart_beat_receive: Dur,
    /// Extra time a client has beyond the negotiated heart-beat interval
    /// before it is disconnected; at least half the interval is always
    /// granted.
    pub heart_beat_grace: Dur,
    /// A write to a client that takes longer than this closes the
    /// connection (a consumer that stopped reading).
    pub write_timeout: Dur,
    /// Most transactions (BEGIN without COMMIT/ABORT) one connection may
    /// have open.
    pub max_transactions: usize,
    /// Most bytes one connection may hold in open transactions (messages,
    /// and 64 bytes per ACK/NACK).
    pub max_transaction_size: Size,
}

impl Default for StompConfig {
    fn default() -> Self {
        StompConfig {
            default_destination: DefaultDestination::Queue,
            max_header_line: Size::kib(16),
            max_headers: 128,
            max_header_size: Size::kib(64),
            max_body_size: None,
            heart_beat_send: Dur::secs(1),
            heart_beat_receive: Dur::secs(1),
            heart_beat_grace: Dur::secs(1),
            write_timeout: Dur::secs(30),
            max_transactions: 64,
            max_transaction_size: Size::mib(64),
        }
    }
}

impl StompConfig {
    /// The codec limits, with the body capped by the broker's
    /// `max_message_size`.
    pub fn limits(&self, max_message_size: Size) -> Limits {
        let body = self
            .max_body_size
            .map_or(max_message_size, |s| s.min(max_message_size));
        Limits {
            max_line: self.max_header_line.as_usize(),
            max_headers: self.max_headers,
            max_header_bytes: self.max_header_size.as_usize(),
            max_body: body.as_usize(),
        }
    }

    /// The time a client that heart-beats every `interval` may stay silent:
    /// the interval plus `heart_beat_grace`, and at least 1.5 × the interval.
    pub fn silence_allowed(&self, interval: Duration) -> Duration {
        interval + self.heart_beat_grace.get().max(interval / 2)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// `config/switchyard.toml` shows every option with its default.
    #[test]
    fn the_reference_file_documents_the_defaults() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/switchyard.toml"
        ))
        .unwrap();
        let file: toml::Table = text.parse().unwrap();
        let mut section = file["listeners"]["stomp"].as_table().unwrap().clone();
        assert_eq!(
            section.remove("bind").unwrap().as_str(),
            Some("0.0.0.0:61613")
        );
        assert_eq!(section.remove("enabled").unwrap().as_bool(), Some(true));
        let documented: StompConfig = toml::Value::Table(section).try_into().unwrap();
        assert_eq!(documented, StompConfig::default());
    }

    #[test]
    fn unknown_options_are_refused() {
        let e = toml::from_str::<StompConfig>("max_header = 3").unwrap_err();
        assert!(e.to_string().contains("max_header"), "{e}");
        let c: StompConfig = toml::from_str("default_destination = \"topic\"").unwrap();
        assert_eq!(c.default_destination, DefaultDestination::Topic);
    }

    #[test]
    fn the_body_limit_never_exceeds_the_broker_limit() {
        let mut c = StompConfig::default();
        assert_eq!(c.limits(Size::mib(1)).max_body, 1 << 20);
        c.max_body_size = Some(Size::kib(4));
        assert_eq!(c.limits(Size::mib(1)).max_body, 4096);
        c.max_body_size = Some(Size::mib(64));
        assert_eq!(c.limits(Size::mib(1)).max_body, 1 << 20);
    }

    #[test]
    fn silence_allowed_has_a_grace() {
        let c = StompConfig::default();
        assert_eq!(
            c.silence_allowed(Duration::from_secs(1)),
            Duration::from_secs(2)
        );
        assert_eq!(
            c.silence_allowed(Duration::from_secs(10)),
            Duration::from_secs(15)
        );
    }
}
