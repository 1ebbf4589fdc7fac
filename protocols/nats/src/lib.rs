//! Switchyard's NATS adapter: the NATS client protocol
//! (<https://docs.nats.io/reference/reference-protocols/nats-protocol>) on
//! the shared core, so a client written for nats-server (async-nats, nats-py,
//! nats.go, the `nats` CLI) works unchanged and reaches every other
//! protocol's clients.
//!
//! Supported: `CONNECT` (verbose, pedantic, echo, headers, no_responders,
//! name/lang/version, protocol 0/1; credentials are accepted until the
//! security work lands), `PUB`, `HPUB` (NATS/1.0 headers), `SUB` with queue
//! groups, `UNSUB` with max messages, `PING`/`PONG` both ways with stale
//! connection detection, `INFO`, `MSG`/`HMSG`, `+OK`, `-ERR`. No JetStream,
//! no cluster/leafnode protocols.
//!
//! Mapping (see [`mapping`]): subjects are addresses (`>` → `#`); queue
//! groups are shared subscriptions; a reply subject is the canonical
//! `reply_to`, so any protocol can answer a NATS request.
//!
//! Layout: [`codec`] (bytes ↔ ops, pure), [`mapping`] (ops ↔ canonical
//! message), `driver` (the connection's one `select!` loop).

pub mod codec;
mod config;
mod driver;
pub mod mapping;

pub use config::NatsConfig;
pub use driver::NatsAdapter;
