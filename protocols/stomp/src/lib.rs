//! Switchyard's STOMP adapter: STOMP 1.0, 1.1 and 1.2 over TCP (port
//! 61613) and over WebSocket (`/stomp` on the HTTP listener, subprotocols
//! `v12.stomp`, `v11.stomp`, `v10.stomp`), the same code for both.
//!
//! Specifications: <https://stomp.github.io/stomp-specification-1.2.html>
//! (and the 1.1 and 1.0 texts); destinations and durable subscriptions
//! follow RabbitMQ's STOMP plugin and ActiveMQ where the specification leaves
//! them to the server. The user documentation, with every mapped header and
//! every deviation, is `docs/protocols/stomp.md`.
//!
//! # Supported
//!
//! * CONNECT/STOMP with version negotiation, heart-beats negotiated and
//!   enforced both ways, `login`/`passcode` through [`auth::authenticate`]
//!   (which accepts everyone until users and ACLs land, issue 10);
//! * SEND to `/topic/…` (multicast), `/queue/…` (anycast, the queue created
//!   on first use when the address policy allows), `/amq/queue/…`,
//!   `/exchange/…` and bare names (`default_destination`);
//! * SUBSCRIBE with `ack` `auto`, `client` (cumulative) and
//!   `client-individual`, wildcards, `prefetch-count`, durable topic
//!   subscriptions (ActiveMQ and RabbitMQ headers); UNSUBSCRIBE; ACK/NACK
//!   (NACK requeues; the address policy's `max_deliveries` dead-letters);
//! * BEGIN/COMMIT/ABORT applied atomically by the core;
//! * `receipt` on every frame, ERROR (then close) on every violation.
//!
//! # Layout
//!
//! * [`codec`]: frames ↔ bytes (pure functions; the fuzz and property tests
//!   drive them directly);
//! * [`session`]: the per-connection state machine (no I/O);
//! * [`mapping`]: destinations and headers ↔ the canonical model;
//! * `driver`: the socket loop;
//! * [`config`]: `[listeners.stomp]` options.
//!
//! The codec is our own because no Rust crate fits the server side:
//! `stomp-parser` (nom) models STOMP 1.2 only and parses a frame already
//! complete in a byte vector, and the client crates (`stomp-rs`,
//! `iridium-stomp`, ...) parse what a client receives. None decodes
//! incrementally across reads, speaks the 1.0 and 1.1 rules, or checks
//! limits and a declared `content-length` before buffering.

pub mod auth;
pub mod codec;
pub mod config;
mod driver;
pub mod mapping;
pub mod session;

pub use config::{DefaultDestination, StompConfig};

use std::sync::Arc;
use switchyard_core::Broker;
use switchyard_core::spi::{AdapterError, Connection, ProtocolAdapter};

/// The STOMP protocol adapter (one per listener).
#[derive(Debug, Clone, Default)]
pub struct StompAdapter {
    config: Arc<StompConfig>,
}

impl StompAdapter {
    pub fn new(config: StompConfig) -> Self {
        StompAdapter {
            config: Arc::new(config),
        }
    }

    pub fn config(&self) -> &StompConfig {
        &self.config
    }
}

#[async_trait::async_trait]
impl ProtocolAdapter for StompAdapter {
    fn name(&self) -> &'static str {
        session::PROTOCOL
    }

    async fn serve(&self, conn: Connection, broker: Broker) -> Result<(), AdapterError> {
        driver::serve(conn, broker, self.config.clone()).await
    }
}
