//! Long-poll point-to-point consumption with receipts and visibility
//! timeouts (SQS semantics, at-least-once).
//!
//! # Mapping onto the core
//!
//! The listener owns one [`Session`] for all its long-poll consumers. A
//! poll takes messages with [`Session::get`] and `manual_ack`: each stays
//! in the queue's unacked set (held by the session's passive "get" slot for
//! that queue), invisible to every other consumer, until
//!
//! * `POST …/ack` names its receipt: [`Session::ack`], gone for good;
//! * `POST …/nack` names it: [`Session::nack`] (requeue, or dead-letter
//!   with `requeue=false`);
//! * its visibility timeout passes: the reaper task nacks it with requeue,
//!   so it returns to its place in the queue, marked redelivered with its
//!   delivery count (and is dead-lettered instead once the queue's
//!   `max_deliveries` is reached);
//! * the listener stops: dropping the session requeues everything held.
//!
//! A poll that finds nothing waits on a [`QueueWatch`] (woken when a
//! message becomes ready) until its `wait` runs out — no polling loop. The
//! reaper sleeps until the earliest visibility deadline.
//!
//! # Receipts
//!
//! A receipt is 32 hex digits: a sequence number (16) that keys the
//! in-flight table, and a 64-bit SipHash MAC (16) of the sequence number
//! and the queue name under a per-listener random key. A receipt cannot be
//! forged (guess the MAC), cannot be used on another queue (the MAC covers
//! the queue name), and names one delivery: a message redelivered after
//! its timeout gets a new receipt, and the old one is refused.
//!
//! The in-flight table is bounded by `max_unacked`; the session's mutex is
//! never held across an `.await`.

use crate::error::ApiError;
use crate::mapping::PollParams;
use hashbrown::HashMap;
use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::hash::BuildHasher;
use std::sync::Arc;
use switchyard_core::{Broker, CoreError, Delivery, QueueWatch, Session, SessionEvent};
use switchyard_model::{ConsumerId, DeliveryTag, Str};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Length of a receipt.
pub const RECEIPT_LEN: usize = 32;

/// Parses a receipt into (sequence, mac).
pub fn parse_receipt(s: &str) -> Option<(u64, u64)> {
    if s.len() != RECEIPT_LEN || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let seq = u64::from_str_radix(s.get(..16)?, 16).ok()?;
    let mac = u64::from_str_radix(s.get(16..)?, 16).ok()?;
    Some((seq, mac))
}

/// Formats a receipt.
pub fn format_receipt(seq: u64, mac: u64) -> String {
    format!("{seq:016x}{mac:016x}")
}

#[derive(Debug)]
struct Inflight {
    queue: Str,
    consumer: ConsumerId,
    tag: DeliveryTag,
    deadline: Instant,
    mac: u64,
}

#[derive(Debug)]
struct State {
    session: Session,
    inflight: HashMap<u64, Inflight>,
    /// (deadline, sequence) of every in-flight delivery.
    deadlines: BTreeSet<(Instant, u64)>,
    next: u64,
}

/// What happened to one receipt of an ack or nack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Done,
    /// Not 32 hex digits.
    Malformed,
    /// Unknown: never issued, already settled, or its visibility timeout
    /// passed (the message was redelivered).
    Unknown,
    /// Issued for another queue.
    WrongQueue,
}

impl Settled {
    pub fn code(self) -> &'static str {
        match self {
            Settled::Done => "ok",
            Settled::Malformed => "malformed_receipt",
            Settled::Unknown => "unknown_receipt",
            Settled::WrongQueue => "wrong_queue",
        }
    }
}

/// How an ack or nack settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Ack,
    Nack { requeue: bool },
}

/// The long-poll consumers of one HTTP listener.
#[derive(Debug)]
pub struct Consumers {
    broker: Broker,
    state: Mutex<State>,
    /// Wakes the reaper when an earlier deadline was added.
    reaper: Notify,
    key: std::collections::hash_map::RandomState,
    max_unacked: usize,
}

impl Consumers {
    /// Starts the reaper, which runs until `stop` is cancelled.
    pub fn start(broker: Broker, max_unacked: usize, stop: CancellationToken) -> Arc<Consumers> {
        let session = broker.session("http", broker.next_conn_id());
        let c = Arc::new(Consumers {
            broker,
            state: Mutex::new(State {
                session,
                inflight: HashMap::new(),
                deadlines: BTreeSet::new(),
                next: 1,
            }),
            reaper: Notify::new(),
            key: std::collections::hash_map::RandomState::new(),
            max_unacked,
        });
        tokio::spawn(reap(c.clone(), stop));
        c
    }

    fn mac(&self, seq: u64, queue: &str) -> u64 {
        self.key.hash_one((seq, queue))
    }

    /// Messages held unacknowledged.
    pub fn unacked(&self) -> usize {
        self.state.lock().inflight.len()
    }

    /// Takes up to `p.max` messages from `queue`, waiting up to `p.wait`
    /// for the first; returns (receipt, delivery) pairs (possibly none).
    pub async fn poll(
        &self,
        queue: &str,
        p: PollParams,
        stop: &CancellationToken,
    ) -> Result<Vec<(String, Delivery)>, ApiError> {
        let mut watch = self.broker.watch_queue(queue)?;
        let deadline = Instant::now() + p.wait;
        loop {
            let got = self.take(queue, p)?;
            if !got.is_empty() || Instant::now() >= deadline || stop.is_cancelled() {
                return Ok(got);
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => {}
                () = watch.changed() => {
                    if watch.is_deleted() {
                        watch = rewatch(&self.broker, queue)?;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    fn take(&self, queue: &str, p: PollParams) -> Result<Vec<(String, Delivery)>, ApiError> {
        let mut st = self.state.lock();
        let room = self.max_unacked.saturating_sub(st.inflight.len());
        if room == 0 {
            return Err(ApiError::unavailable(
                "too_many_unacked",
                format!(
                    "{} received messages await their ack on this listener; ack some first",
                    self.max_unacked
                ),
            ));
        }
        let n = room.min(p.max as usize);
        let deadline = Instant::now() + p.visibility;
        let earliest = st.deadlines.first().map(|(t, _)| *t);
        let mut out = Vec::new();
        let mut name: Option<Str> = None;
        while out.len() < n {
            let d = match st.session.get(queue, true) {
                Ok(Some((d, _))) => d,
                Ok(None) => break,
                Err(e) if out.is_empty() => return Err(e.into()),
                Err(_) => break,
            };
            let seq = st.next;
            st.next += 1;
            let mac = self.mac(seq, queue);
            let q = name
                .get_or_insert_with(|| d.message.address.clone().filter_anycast(queue))
                .clone();
            st.inflight.insert(
                seq,
                Inflight {
                    queue: q,
                    consumer: d.consumer,
                    tag: d.tag,
                    deadline,
                    mac,
                },
            );
            st.deadlines.insert((deadline, seq));
            out.push((format_receipt(seq, mac), d));
        }
        if !out.is_empty() && earliest.is_none_or(|e| deadline < e) {
            self.reaper.notify_one();
        }
        Ok(out)
    }

    /// Acks or nacks deliveries by receipt; one result per receipt.
    pub fn settle(&self, queue: &str, receipts: &[&str], how: Settle) -> Vec<Settled> {
        let mut st = self.state.lock();
        receipts
            .iter()
            .map(|r| {
                let Some((seq, mac)) = parse_receipt(r) else {
                    return Settled::Malformed;
                };
                match st.inflight.get(&seq) {
                    Some(f) if f.mac == mac && *f.queue == *queue => {}
                    Some(f) if f.mac == mac => return Settled::WrongQueue,
                    _ => return Settled::Unknown,
                }
                let Some(f) = st.inflight.remove(&seq) else {
                    return Settled::Unknown;
                };
                st.deadlines.remove(&(f.deadline, seq));
                let r = match how {
                    Settle::Ack => st.session.ack(f.consumer, f.tag, false),
                    Settle::Nack { requeue } => st.session.nack(f.consumer, f.tag, false, requeue),
                };
                match r {
                    Ok(_) => Settled::Done,
                    Err(_) => Settled::Unknown,
                }
            })
            .collect()
    }

    /// Requeues every delivery whose visibility timeout has passed; returns
    /// the next deadline.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut st = self.state.lock();
        while let Some(&(at, seq)) = st.deadlines.first() {
            if at > now {
                return Some(at);
            }
            st.deadlines.pop_first();
            if let Some(f) = st.inflight.remove(&seq) {
                let _ = st.session.nack(f.consumer, f.tag, false, true);
            }
        }
        None
    }

    /// Forgets consumers whose queue was deleted.
    fn on_events(&self, events: Vec<SessionEvent>) {
        let mut st = self.state.lock();
        for e in events {
            if let SessionEvent::ConsumerCancelled(id) = e {
                let _ = st.session.cancel(id);
                let gone: Vec<(Instant, u64)> = st
                    .inflight
                    .iter()
                    .filter(|(_, f)| f.consumer == id)
                    .map(|(seq, f)| (f.deadline, *seq))
                    .collect();
                for (at, seq) in gone {
                    st.inflight.remove(&seq);
                    st.deadlines.remove(&(at, seq));
                }
            }
        }
    }
}

fn rewatch(broker: &Broker, queue: &str) -> Result<QueueWatch, ApiError> {
    broker.watch_queue(queue).map_err(|e| match e {
        CoreError::NotFound { .. } => ApiError::no_queue(queue),
        other => other.into(),
    })
}

/// The queue-name `Str` to store: the message's own when it is this
/// queue's name (no allocation), else a fresh one.
trait FilterAnycast {
    fn filter_anycast(self, queue: &str) -> Str;
}

impl FilterAnycast for Str {
    fn filter_anycast(self, queue: &str) -> Str {
        if &*self == queue {
            self
        } else {
            Str::from(queue)
        }
    }
}

/// The visibility timer: sleeps until the earliest deadline, requeues what
/// expired, and drops state for deleted queues.
async fn reap(c: Arc<Consumers>, stop: CancellationToken) {
    let events = c.state.lock().session.deliveries().events();
    let far = || Instant::now() + std::time::Duration::from_secs(3600);
    let mut next = far();
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = events.ready() => c.on_events(events.take()),
            () = c.reaper.notified() => {}
            () = tokio::time::sleep_until(next) => {}
        }
        next = c.expire(Instant::now()).unwrap_or_else(far);
    }
}
