//! Switchyard benchmarks.
//!
//! * `benches/core.rs` (criterion): publish → fan-out to 1, 10 and 1000
//!   subscriptions; enqueue → deliver → ack on a queue. The router's own
//!   benchmarks are in `crates/router/benches`.
//!
//! * `switchyard-bench` (the binary): lean load-generator drivers per
//!   protocol, scenarios (pub/sub, fan-out, fan-in, competing consumers,
//!   request/reply, fixed-rate latency), and `compare`, which runs them
//!   against Switchyard and the peer brokers side by side.
//!
//! Run the micro-benchmarks with `bench/micro.sh` (`cargo bench`, then
//! `switchyard-bench micro`); their figures are the last section of
//! `docs/benchmarks.md`.

pub mod amqp;
pub mod brokers;
pub mod compare;
pub mod driver;
pub mod http;
pub mod micro;
pub mod mqtt;
pub mod nats;
pub mod procstat;
pub mod report;
pub mod scale;
pub mod scenario;
pub mod smoke;
pub mod stomp;
pub mod suite;

use bytes::Bytes;
use switchyard_core::{Broker, CoreConfig, Session, Subscribe};
use switchyard_model::{Address, AddressFilter, Message};

/// A broker with `n` sessions, each subscribed to `bench.fanout`.
pub fn fanout_setup(n: usize) -> (Broker, Vec<Session>, Session) {
    let broker = Broker::new(CoreConfig::new());
    let subs = (0..n)
        .map(|_| {
            let mut s = broker.session("bench", broker.next_conn_id());
            if let Ok(filter) = AddressFilter::new("bench.fanout") {
                let _ = s.subscribe(Subscribe::temporary(filter));
            }
            s
        })
        .collect();
    let publisher = broker.session("bench", broker.next_conn_id());
    (broker, subs, publisher)
}

/// A multicast message to `address` with a body of `size` bytes.
pub fn message(address: &str, size: usize) -> Option<Message> {
    Some(Message::multicast(
        &Address::new(address).ok()?,
        Bytes::from(vec![0x5a; size]),
    ))
}
