//! `[listeners.mqtt]` options. The doc comments are the user documentation
//! (repeated in `config/switchyard.toml`).

use serde::Deserialize;
use switchyard_core::{Dur, Size};

/// Options of an MQTT listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Largest MQTT packet accepted from a client (header included); a
    /// larger one closes the connection (5.0: DISCONNECT 0x95). Sent to 5.0
    /// clients as Maximum Packet Size. Bodies are also bounded by
    /// `[limits] max_message_size`.
    pub max_packet_size: Size,
    /// QoS 1 and 2 publications a client may have unacknowledged towards
    /// the server (5.0 Receive Maximum sent in CONNACK; more is a protocol
    /// error, DISCONNECT 0x93).
    pub receive_maximum: u16,
    /// QoS 1 and 2 messages the server has in flight to one client at most
    /// (a 5.0 client's own Receive Maximum lowers it).
    pub max_inflight: u16,
    /// Topic aliases a 5.0 client may set towards the server (Topic Alias
    /// Maximum sent in CONNACK; 0 disables them).
    pub topic_alias_maximum: u16,
    /// Topic aliases the server uses towards a 5.0 client, at most (the
    /// client's Topic Alias Maximum lowers it; 0 disables them).
    pub max_outbound_topic_aliases: u16,
    /// Longest keep alive granted. A 5.0 client asking for more (or for
    /// none) is told this value as Server Keep Alive; a 3.1.1 client keeps
    /// what it asked for.
    pub max_keep_alive: Dur,
    /// Longest session expiry granted to a persistent session (5.0 Session
    /// Expiry Interval, 3.1.1 clean session 0, which would otherwise never
    /// expire). A 5.0 client is told the granted value.
    pub max_session_expiry: Dur,
    /// Longest client identifier accepted (3.1.1 requires at least 23).
    pub max_client_id_len: usize,
    /// Most retained messages the broker keeps for MQTT (a retained publish
    /// past it is forwarded but not retained; 5.0 QoS 1/2 publishers get
    /// reason 0x97 Quota exceeded).
    pub max_retained_messages: usize,
    /// A write to the client that does not complete in this time closes the
    /// connection (a client that does not read).
    pub write_timeout: Dur,
    /// Messages a clean-session (non-persistent) subscription holds for a
    /// client that reads slower than they arrive, beyond the connection's
    /// own buffer (`[limits] connection_buffer`). Past it, clients
    /// publishing to the subscription's topics (MQTT, AMQP, STOMP, NATS;
    /// not HTTP) are back-pressured: their sockets are not read until it
    /// has drained to half, for at most 5 s per episode (then, or at twice
    /// the bound, the oldest messages are dropped, counted). 0 = no limit
    /// (then only `max_queued_bytes` applies).
    pub max_queued_messages: u64,
    /// Bytes of payload a clean-session subscription holds for a slow
    /// client, beyond the connection's buffer (`[limits]
    /// connection_buffer_bytes`); past it, publishers are back-pressured as
    /// for `max_queued_messages`. 0 = no limit.
    pub max_queued_bytes: Size,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            max_packet_size: Size(16 * 1024 * 1024 + 64 * 1024),
            receive_maximum: 1024,
            max_inflight: 1024,
            topic_alias_maximum: 64,
            max_outbound_topic_aliases: 64,
            max_keep_alive: Dur::secs(65_535),
            max_session_expiry: Dur::secs(7 * 24 * 3600),
            max_client_id_len: 256,
            max_retained_messages: 1_000_000,
            write_timeout: Dur::secs(30),
            max_queued_messages: 10_000,
            max_queued_bytes: Size::mib(16),
        }
    }
}

impl MqttConfig {
    /// Checks values serde cannot.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_packet_size.bytes() < 1024 {
            return Err(("max_packet_size", "must be at least 1KiB".to_owned()));
        }
        if self.max_packet_size.bytes() > 268_435_460 {
            return Err((
                "max_packet_size",
                "MQTT packets are at most 268435460 bytes (256 MiB)".to_owned(),
            ));
        }
        if self.receive_maximum == 0 {
            return Err(("receive_maximum", "must be at least 1".to_owned()));
        }
        if self.max_inflight == 0 {
            return Err(("max_inflight", "must be at least 1".to_owned()));
        }
        if self.max_client_id_len < 23 {
            return Err((
                "max_client_id_len",
                "MQTT requires at least 23 [MQTT-3.1.3-5]".to_owned(),
            ));
        }
        Ok(())
    }
}
