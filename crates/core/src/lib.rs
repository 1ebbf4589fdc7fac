//! Switchyard's queue core: addresses, exchanges, queues, subscriptions,
//! consumers, credit, acknowledgements, redelivery, dead-lettering, TTL,
//! transactions and limits — everything that is the same whichever protocol
//! a client speaks — and the adapter SPI ([`spi`]) protocol crates implement.
//!
//! # Model
//!
//! * The **multicast namespace** is the topic exchange `amq.topic`: a
//!   subscription is a queue bound to it with an address filter.
//! * The **anycast namespace** is AMQP's default exchange `""`: the address
//!   names a queue; its consumers compete.
//! * Declared `direct`, `fanout`, `topic` and `headers` exchanges route only to
//!   what is bound to them, as in RabbitMQ.
//!
//! A message is published once ([`Broker::publish`]), wrapped in an `Arc`,
//! and every queue it reaches holds a pointer to it. Queues push deliveries
//! to consumers through each session's bounded channel ([`Deliveries`]); a
//! full channel makes the queue hold back, it never blocks the publisher.
//!
//! # What the core guarantees
//!
//! * Competing consumers receive disjoint sets that together cover every
//!   message; dispatch is round-robin among consumers with credit.
//! * A requeued message returns to its original place, marked redelivered,
//!   with its delivery count.
//! * TTL, max length/bytes with `drop-head` / `reject-publish`, delivery
//!   limits and rejection send messages to the queue's dead-letter target,
//!   with RabbitMQ-style `x-death` headers.
//! * A [`Transaction`] is applied all or nothing.
//!
//! Two small facilities shared by every listener of a broker: a
//! retained-message store ([`Broker::retain`], [`Broker::retained`]: the last
//! message per address) and a client registry ([`Broker::clients`]:
//! exclusive claims on client ids, evicting the previous holder and handing
//! its parked state to the next).
//!
//! The core never names a protocol.

pub mod auth;
mod broker;
mod clients;
pub mod config;
mod error;
mod exchange;
mod flow;
mod outbox;
mod queue;
mod recovery;
mod retained;
mod session;
pub mod spi;
mod state;
mod store;
pub mod traffic;
mod watch;

pub use auth::{AuthError, Authorizer, Credentials, Principal, Verb};
pub use broker::{
    BUILTIN_EXCHANGES, Broker, BrokerStats, DeclareQueue, DeclaredQueue, Pressure, Published,
    RouteMemo,
};
pub use clients::{Claim, ClientRegistry, ParkTicket, Parked};
pub use config::{AddressPolicy, CoreConfig, Dur, Limits, Overflow, Size};
pub use error::{CoreError, CoreResult};
pub use exchange::{ExchangeInfo, ExchangeKind, ExchangeOptions};
pub use flow::{BlockReason, Flow};
pub use outbox::{Deliveries, Delivery, Events, SessionEvent, WakeBatch};
pub use queue::{
    BLOCK_TIMEOUT, DeadLetterTarget, DeathReason, QueueInfo, QueueOptions, QueueStats,
};
pub use recovery::RecoveryReport;
pub use session::{ConsumeOptions, Session, Subscribe, SubscriptionKind, Transaction};
pub use switchyard_journal as journal;
pub use switchyard_journal::Completion;
pub use traffic::{Traffic, TrafficStats};
pub use watch::QueueWatch;
