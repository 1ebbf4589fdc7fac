//! `[listeners.http]` options.

use serde::Deserialize;
use switchyard_core::{Dur, Size};

/// HTTP listener options (`[listeners.http]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest request body of a single-message publish (larger: 413).
    /// Capped by `limits.max_message_size`.
    pub max_body: Size,
    /// Largest request body of an NDJSON batch publish (`?batch=true`);
    /// each line is also held to `max_body`.
    pub max_batch_body: Size,
    /// Most messages (lines) in one batch publish.
    pub max_batch_messages: usize,
    /// Largest body of an ack or nack request (a JSON list of receipts).
    pub max_ack_body: Size,
    /// How often an idle Server-Sent Events stream gets a keep-alive
    /// comment (which is also how a vanished client is noticed).
    pub sse_keepalive: Dur,
    /// Bytes of message bodies one Server-Sent Events stream may have
    /// waiting for a client that does not keep up; past it the stream is
    /// ended with a `close` event (`slow_consumer`).
    pub sse_max_pending: Size,
    /// Messages one Server-Sent Events stream may have waiting (the same
    /// rule, counted in messages).
    pub sse_max_pending_messages: u64,
    /// Longest long-poll wait (`wait=`) of `GET /v1/queues/{queue}/messages`.
    pub max_wait: Dur,
    /// Visibility timeout when a poll gives none: how long a received
    /// message stays invisible, waiting for its ack, before it is
    /// redelivered.
    pub default_visibility: Dur,
    /// Longest visibility timeout a poll may ask for (`visibility=`).
    pub max_visibility: Dur,
    /// Most messages one poll returns (`max=`).
    pub max_messages: u32,
    /// Most received-but-unacknowledged messages this listener holds for
    /// its long-poll consumers, all queues together; a poll finding none
    /// left is answered 503.
    pub max_unacked: usize,
    /// A response (or WebSocket) write that makes no progress for this long
    /// closes the connection: a client that stops reading its Server-Sent
    /// Events stream is cut off instead of being buffered for.
    pub write_timeout: Dur,
    /// A request's header block must arrive whole within this time of its
    /// first byte, on every request of a connection (keep-alive included):
    /// a client dribbling its headers (slowloris) is closed.
    pub header_timeout: Dur,
    /// A keep-alive connection idle for this long after its last response
    /// (no byte of a next request) is closed. Longer than the usual proxy
    /// and load-balancer upstream idle timeouts (60 s), so that they close
    /// first. The first request of a connection gets
    /// `limits.handshake_timeout` instead.
    pub keep_alive_timeout: Dur,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body: Size::mib(16),
            max_batch_body: Size::mib(16),
            max_batch_messages: 10_000,
            max_ack_body: Size::kib(256),
            sse_keepalive: Dur::secs(15),
            sse_max_pending: Size::mib(8),
            sse_max_pending_messages: 65_536,
            max_wait: Dur::secs(20),
            default_visibility: Dur::secs(30),
            max_visibility: Dur::secs(12 * 3600),
            max_messages: 100,
            max_unacked: 100_000,
            write_timeout: Dur::secs(30),
            header_timeout: Dur::secs(5),
            keep_alive_timeout: Dur::secs(75),
        }
    }
}

impl HttpConfig {
    /// Checks values a file can get wrong; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_messages == 0 {
            return Err("max_messages: must be at least 1".into());
        }
        if self.max_batch_messages == 0 {
            return Err("max_batch_messages: must be at least 1".into());
        }
        if self.sse_keepalive.get().is_zero() {
            return Err("sse_keepalive: must be more than 0s".into());
        }
        if self.write_timeout.get().is_zero() {
            return Err("write_timeout: must be more than 0s".into());
        }
        if self.header_timeout.get().is_zero() {
            return Err("header_timeout: must be more than 0s".into());
        }
        if self.keep_alive_timeout.get().is_zero() {
            return Err("keep_alive_timeout: must be more than 0s".into());
        }
        if self.default_visibility > self.max_visibility {
            return Err("default_visibility: must not exceed max_visibility".into());
        }
        Ok(())
    }
}
