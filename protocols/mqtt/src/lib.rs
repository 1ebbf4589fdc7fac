//! Switchyard's MQTT adapter: MQTT 3.1.1 (and 3.1, served as 3.1.1) and
//! MQTT 5.0, over TCP, TLS and WebSocket (`/mqtt` on the HTTP listener,
//! subprotocols `mqtt` and `mqttv3.1`, binary frames).
//!
//! Specifications: the OASIS standards "MQTT Version 3.1.1" and "MQTT
//! Version 5.0"; normative statements are cited as `[MQTT-x.y.z-n]`.
//! What is supported, the mapping to the canonical model and every
//! deviation are in `docs/protocols/mqtt.md`.
//!
//! Layout:
//!
//! * [`codec`]: bytes ⇄ packets, pure functions, both versions, every packet;
//! * [`topic`]: topic names and filters ⇄ canonical addresses and filters;
//! * [`mapping`]: PUBLISH ⇄ [`switchyard_model::Message`];
//! * [`session`]: packet ids, the in-flight window, aliases, parked session
//!   state (no I/O);
//! * `driver`: the one `select!` loop per connection;
//! * [`persist`]: what a persistent session keeps in the state store (the
//!   journal), its byte format; `restore`: bringing it back at startup;
//! * [`auth`]: the one function CONNECT credentials go through.
//!
//! # Why our own codec
//!
//! The crates that exist did not fit server-side use cleanly: `mqttbytes`
//! is unmaintained; the maintained codec of `rumqttc` is a client's (its
//! packet types and state are built for the client side and it does not
//! check every server-side rule), and `rumqttd`'s is internal to that
//! broker; `ntex-mqtt` is tied to the ntex runtime and its I/O types;
//! `mqtt-protocol` covers 3.1.1 only. The codec here is small, checks the
//! declared size against the maximum packet size before buffering, keeps
//! payloads as slices of the read buffer, validates UTF-8 as 1.5.4 requires
//! and every property's placement and range, and is property-tested
//! (round trip, split at every byte, arbitrary bytes never panic).

pub mod auth;
pub mod codec;
pub mod config;
mod driver;
mod keepalive;
pub mod mapping;
pub mod persist;
mod restore;
pub mod session;
pub mod topic;

pub use config::MqttConfig;
pub use driver::{SCOPE, SESSION_QUEUE_PREFIX};

use std::sync::Arc;
use switchyard_core::Broker;
use switchyard_core::spi::{AdapterError, Connection, ProtocolAdapter};

/// The MQTT adapter of one listener.
#[derive(Debug, Clone, Default)]
pub struct MqttAdapter {
    shared: Arc<driver::Shared>,
}

impl MqttAdapter {
    pub fn new(config: MqttConfig) -> Self {
        MqttAdapter {
            shared: Arc::new(driver::Shared {
                config,
                keep_alive: Default::default(),
            }),
        }
    }
}

#[async_trait::async_trait]
impl ProtocolAdapter for MqttAdapter {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    // Written out rather than `async fn`: the future `async_trait` would box
    // keeps its arguments (a whole `Connection`) besides the driver's future
    // for the connection's life; this boxes the driver's future alone.
    fn serve<'life0, 'async_trait>(
        &'life0 self,
        conn: Connection,
        broker: Broker,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), AdapterError>> + Send + 'async_trait>,
    >
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(driver::serve(Box::new((conn, broker, self.shared.clone()))))
    }

    fn recovered(&self, broker: &Broker) {
        restore::restore(broker, &self.shared.config);
    }
}
