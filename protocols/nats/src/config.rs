//! `[listeners.nats]` options.

use serde::Deserialize;
use switchyard_core::{Dur, Size};

/// NATS listener options (`[listeners.nats]`). Defaults are nats-server's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Largest message payload (headers included) a client may publish;
    /// announced as `max_payload` in `INFO`. Capped by
    /// `limits.max_message_size`.
    pub max_payload: Size,
    /// Longest control line (`PUB …`, `SUB …`, `CONNECT {…}`).
    pub max_control_line: Size,
    /// How often the server PINGs a client.
    pub ping_interval: Dur,
    /// Unanswered PINGs after which the connection is stale and closed.
    pub max_pings_out: u32,
    /// Bytes one subscription may have waiting for a client that does not
    /// keep up; past it the client is a slow consumer and is disconnected.
    pub max_pending: Size,
    /// A write to the client that takes longer than this marks it a slow
    /// consumer and closes the connection.
    pub write_deadline: Dur,
    /// Name announced as `server_name` in `INFO`.
    pub server_name: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            max_payload: Size::mib(1),
            max_control_line: Size(4096),
            ping_interval: Dur::secs(120),
            max_pings_out: 2,
            max_pending: Size::mib(64),
            write_deadline: Dur::secs(10),
            server_name: "switchyard".to_owned(),
        }
    }
}
