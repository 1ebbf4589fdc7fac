//! `[listeners.amqp]` options. The doc comments are the user documentation
//! repeated in `config/switchyard.toml`.

use serde::Deserialize;
use switchyard_core::{Dur, Size};

/// Options of an AMQP 0-9-1 listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// Largest frame the server accepts and proposes in `connection.tune`
    /// (header and end octet included; at least 4096). Clients may ask for
    /// less; a frame larger than the negotiated size closes the connection
    /// with 501 FRAME_ERROR.
    pub frame_max: Size,
    /// Most channels a connection may open (proposed in `connection.tune`;
    /// 1–65535).
    pub channel_max: u16,
    /// Heartbeat interval proposed to clients; the smaller non-zero value of
    /// the two sides is used, and "0s" on both sides turns heartbeats off. A
    /// client silent for two intervals is disconnected.
    pub heartbeat: Dur,
    /// A connection whose pending output makes no progress for this long
    /// (the client stopped reading) is closed.
    pub write_timeout: Dur,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            frame_max: Size(131_072),
            channel_max: 2047,
            heartbeat: Dur::secs(60),
            write_timeout: Dur::secs(30),
        }
    }
}

impl AmqpConfig {
    /// Checks values serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.frame_max.bytes() < 4096 || self.frame_max.bytes() > u64::from(u32::MAX) {
            return Err(format!(
                "frame_max must be between 4096 and {} bytes, not {}",
                u32::MAX,
                self.frame_max.bytes()
            ));
        }
        if self.channel_max == 0 {
            return Err("channel_max must be at least 1".to_owned());
        }
        if self.heartbeat.get().as_secs() > u64::from(u16::MAX) {
            return Err("heartbeat must be at most 65535s".to_owned());
        }
        Ok(())
    }

    /// The frame max as the wire's `u32`.
    pub fn frame_max_u32(&self) -> u32 {
        u32::try_from(self.frame_max.bytes()).unwrap_or(u32::MAX)
    }

    /// The heartbeat in whole seconds, as the wire's `u16`.
    pub fn heartbeat_secs(&self) -> u16 {
        u16::try_from(self.heartbeat.get().as_secs()).unwrap_or(u16::MAX)
    }
}
