//! Switchyard's AMQP 0-9-1 adapter: what RabbitMQ clients (pika, lapin,
//! amqplib, the Java client, Celery/kombu) expect, on the shared core.
//!
//! * Protocol: AMQP 0-9-1 with RabbitMQ's extensions (publisher confirms,
//!   `basic.nack`, exchange-to-exchange bindings, consumer cancel notify,
//!   `connection.blocked`, per-consumer qos, authentication failure close).
//!   Spec: `rabbitmq/rabbitmq-codegen` `amqp-rabbitmq-0.9.1.json`; semantics
//!   follow RabbitMQ's documentation. What is supported, the mapping to the
//!   canonical message and every deviation: `docs/protocols/amqp.md`.
//! * Layout: [`codec`] (frames; methods and properties generated from the
//!   spec by `build.rs`), [`session`] (the sans-IO connection state
//!   machine), [`mapping`] (content ⇄ `Message`, queue arguments ⇄
//!   `QueueOptions`), [`driver`] (the socket loop), [`auth`] (the one
//!   authentication hook), [`config`] (`[listeners.amqp]`).
//!
//! Why our own codec rather than `amq-protocol` (lapin's): its frame parser
//! copies every body byte by byte into a `Vec<u8>`, keeps field tables in a
//! `BTreeMap` (reordering the headers a client sent), allocates a `String`
//! per short string, is built on parser combinators, and needs Rust 1.88
//! while the workspace promises 1.85. Ours is generated from the same
//! machine-readable spec, slices bodies and names out of the read buffer
//! without copying, and reads field tables straight into the canonical
//! `Headers`.

pub mod auth;
pub mod codec;
pub mod config;
pub mod driver;
pub mod mapping;
pub mod session;

pub use config::AmqpConfig;

use switchyard_core::Broker;
use switchyard_core::spi::{AdapterError, Connection, ProtocolAdapter};

/// The AMQP 0-9-1 protocol adapter.
#[derive(Debug, Clone, Default)]
pub struct AmqpAdapter {
    config: AmqpConfig,
}

impl AmqpAdapter {
    pub fn new(config: AmqpConfig) -> Result<Self, String> {
        config.validate()?;
        Ok(AmqpAdapter { config })
    }
}

#[async_trait::async_trait]
impl ProtocolAdapter for AmqpAdapter {
    fn name(&self) -> &'static str {
        "amqp"
    }

    async fn serve(&self, conn: Connection, broker: Broker) -> Result<(), AdapterError> {
        driver::run(conn, broker, &self.config).await
    }
}
