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
    /// Most bytes of message bodies one connection may hold in open
    /// transactions.
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

    /// The time a client that heart-beats every `interval` may stay silent.
    pub fn silence_allowed(&self, interval: Duration) -> Duration {
        interval + self.heart_beat_grace.get().max(interval / 2)
    }
}
