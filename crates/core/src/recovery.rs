//! Rebuilding the broker from the journal, and compaction.
//!
//! Replay sees every record in log order. A record describing something
//! that exists again later (a relocated copy) replaces the earlier one,
//! whose location is released; a tombstone releases what it removes and is
//! declared dependent on it; records about queues or exchanges that no
//! longer exist (their ids are never reused) are released. What is left is
//! exactly the live state, which `build` turns into exchanges, queues (with
//! their messages in publish order, bodies past the queue's memory budget
//! left on disk) and bindings.

use crate::broker::Shared;
use crate::exchange::{Exchange, ExchangeKind, ExchangeOptions};
use crate::queue::{Queue, QueueOptions, Restored};
use crate::store::codec::{self, Dec, Enc};
use crate::store::{self, Decl, Keyed, Store};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use switchyard_journal::{Journal, RecordLoc, RecoveryReport as JournalReport, Replayed};
use switchyard_model::{Headers, Message, MessageId, Str};

/// What recovery found and rebuilt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecoveryReport {
    pub exchanges: u64,
    pub queues: u64,
    pub bindings: u64,
    pub messages: u64,
    /// Recovered messages whose bodies stayed on disk (paged out).
    pub paged: u64,
    /// Retained messages recovered.
    pub retained: u64,
    /// Session-state values recovered.
    pub states: u64,
    /// Records that could not be decoded (logged, skipped).
    pub bad_records: u64,
    pub journal: JournalReport,
    pub elapsed: Duration,
}

pub(crate) fn queue_payload(id: u64, name: &str, options: &QueueOptions) -> Vec<u8> {
    let mut e = Enc::default();
    e.u64(id).str(name);
    codec::queue_options(&mut e, options);
    e.0
}

pub(crate) fn exchange_payload(ex: &Exchange) -> Vec<u8> {
    let mut e = Enc::default();
    e.u64(ex.id)
        .str(&ex.name)
        .u8(codec::exchange_kind_code(ex.kind));
    codec::exchange_options(&mut e, &ex.options);
    e.0
}

/// A binding record's parts.
struct BindingRecord {
    exchange: u64,
    dest_queue: Option<u64>,
    dest_exchange: Option<u64>,
    key: String,
    args: Headers,
}

fn parse_binding(p: &[u8]) -> Option<BindingRecord> {
    let mut d = Dec(p);
    let exchange = d.u64().ok()?;
    let (dest_queue, dest_exchange) = match d.u8().ok()? {
        0 => (Some(d.u64().ok()?), None),
        1 => (None, Some(d.u64().ok()?)),
        _ => (None, None),
    };
    let key = d.str().ok()?.to_owned();
    let args = codec::read_headers(&mut d, 0).ok()?;
    Some(BindingRecord {
        exchange,
        dest_queue,
        dest_exchange,
        key,
        args,
    })
}

pub(crate) fn binding_refers_to_queue(p: &[u8], queue: u64) -> bool {
    parse_binding(p).is_some_and(|b| b.dest_queue == Some(queue))
}

pub(crate) fn binding_refers_to_exchange(p: &[u8], exchange: u64) -> bool {
    parse_binding(p).is_some_and(|b| b.exchange == exchange || b.dest_exchange == Some(exchange))
}

struct RExchange {
    loc: RecordLoc,
    payload: Vec<u8>,
    name: String,
    kind: ExchangeKind,
    options: ExchangeOptions,
}

pub(crate) struct RMsg {
    pub(crate) loc: RecordLoc,
    pub(crate) priority: u8,
    pub(crate) expires_at: Option<u64>,
    pub(crate) size: u32,
    /// Boxed behind an `Arc` (8 bytes), not inline: replay holds one
    /// `RMsg` per live message, millions of them, mostly paged out.
    pub(crate) body: Option<Arc<Message>>,
}

struct RQueue {
    loc: RecordLoc,
    payload: Vec<u8>,
    name: String,
    options: QueueOptions,
}

/// The messages replay found for one queue id.
#[derive(Default)]
struct RMessages {
    msgs: BTreeMap<u64, RMsg>,
    loaded: u64,
}

/// State accumulated during replay.
///
/// Messages are collected by queue id whether or not the queue's
/// declaration has been seen yet: compaction re-appends a declaration after
/// messages already in the tail segment, so in log order a message can come
/// before any declaration of its queue. Whether a queue exists is decided
/// once the whole log is read.
pub(crate) struct Recovering {
    budget: u64,
    exchanges: HashMap<u64, RExchange>,
    queues: HashMap<u64, RQueue>,
    messages: HashMap<u64, RMessages>,
    deleted: std::collections::HashSet<u64>,
    bindings: HashMap<Vec<u8>, RecordLoc>,
    /// The last message-id reservation: (its record, the reserved limit).
    ids: Option<(RecordLoc, u64)>,
    /// Retained messages and session state: the latest record per key.
    keyed: HashMap<Keyed, (RecordLoc, Vec<u8>)>,
    bad: u64,
}

impl Recovering {
    pub(crate) fn new(budget: u64) -> Self {
        Recovering {
            budget,
            exchanges: HashMap::new(),
            queues: HashMap::new(),
            messages: HashMap::new(),
            deleted: std::collections::HashSet::new(),
            bindings: HashMap::new(),
            ids: None,
            keyed: HashMap::new(),
            bad: 0,
        }
    }

    pub(crate) fn apply(&mut self, j: &Journal, r: &Replayed<'_>) {
        if self.try_apply(j, r).is_none() {
            self.bad += 1;
            tracing::error!(kind = r.kind, at = ?r.loc, "undecodable journal record skipped");
            j.release(r.loc);
        }
    }

    fn try_apply(&mut self, j: &Journal, r: &Replayed<'_>) -> Option<()> {
        let mut d = Dec(r.payload);
        match r.kind {
            store::EXCHANGE => {
                let id = d.u64().ok()?;
                let name = d.str().ok()?.to_owned();
                let kind = codec::read_exchange_kind(&mut d).ok()?;
                let options = codec::read_exchange_options(&mut d).ok()?;
                let x = RExchange {
                    loc: r.loc,
                    payload: r.payload.to_vec(),
                    name,
                    kind,
                    options,
                };
                if let Some(old) = self.exchanges.insert(id, x) {
                    j.release(old.loc);
                }
            }
            store::EXCHANGE_DEL => {
                let id = d.u64().ok()?;
                match self.exchanges.remove(&id) {
                    Some(x) => {
                        j.depend(r.loc, x.loc);
                        j.release(x.loc);
                    }
                    None => j.release(r.loc),
                }
            }
            store::QUEUE => {
                let id = d.u64().ok()?;
                let name = d.str().ok()?.to_owned();
                let options = codec::read_queue_options(&mut d).ok()?;
                let q = RQueue {
                    loc: r.loc,
                    payload: r.payload.to_vec(),
                    name,
                    options,
                };
                if let Some(old) = self.queues.insert(id, q) {
                    j.release(old.loc);
                }
            }
            store::QUEUE_DEL => {
                let id = d.u64().ok()?;
                self.deleted.insert(id);
                if let Some(ms) = self.messages.remove(&id) {
                    for m in ms.msgs.values() {
                        j.release(m.loc);
                    }
                }
                match self.queues.remove(&id) {
                    Some(q) => {
                        j.depend(r.loc, q.loc);
                        j.release(q.loc);
                    }
                    None => j.release(r.loc),
                }
            }
            store::BIND => {
                if let Some(old) = self.bindings.insert(r.payload.to_vec(), r.loc) {
                    j.release(old);
                }
            }
            store::UNBIND => match self.bindings.remove(r.payload) {
                Some(loc) => {
                    j.depend(r.loc, loc);
                    j.release(loc);
                }
                None => j.release(r.loc),
            },
            store::MSG => {
                let qid = d.u64().ok()?;
                if self.deleted.contains(&qid) {
                    j.release(r.loc);
                    return Some(());
                }
                let q = self.messages.entry(qid).or_default();
                let mut peek = Dec(d.0);
                let meta = codec::read_meta(&mut peek).ok()?;
                if let Some(old) = q.msgs.remove(&meta.id.0) {
                    j.release(old.loc);
                    if old.body.is_some() {
                        q.loaded -= u64::from(old.size);
                    }
                }
                let body = if q.loaded + u64::from(meta.body_len) <= self.budget {
                    let m = codec::read_message(&mut d).ok()?;
                    q.loaded += u64::from(meta.body_len);
                    Some(Arc::new(m))
                } else {
                    None
                };
                q.msgs.insert(
                    meta.id.0,
                    RMsg {
                        loc: r.loc,
                        priority: meta.priority,
                        expires_at: meta.expires_at,
                        size: meta.body_len,
                        body,
                    },
                );
            }
            store::ACK => {
                let qid = d.u64().ok()?;
                let mid = d.u64().ok()?;
                let found = self.messages.get_mut(&qid).and_then(|q| {
                    let m = q.msgs.remove(&mid)?;
                    if m.body.is_some() {
                        q.loaded -= u64::from(m.size);
                    }
                    Some(m)
                });
                match found {
                    Some(m) => {
                        j.depend(r.loc, m.loc);
                        j.release(m.loc);
                    }
                    None => j.release(r.loc),
                }
            }
            store::RETAIN | store::STATE => {
                let key = if r.kind == store::RETAIN {
                    Keyed::Retained(d.str().ok()?.to_owned())
                } else {
                    Keyed::State(d.str().ok()?.to_owned(), d.str().ok()?.to_owned())
                };
                if let Some((old, _)) = self.keyed.insert(key, (r.loc, r.payload.to_vec())) {
                    j.release(old);
                }
            }
            store::RETAIN_DEL | store::STATE_DEL => {
                let key = if r.kind == store::RETAIN_DEL {
                    Keyed::Retained(d.str().ok()?.to_owned())
                } else {
                    Keyed::State(d.str().ok()?.to_owned(), d.str().ok()?.to_owned())
                };
                match self.keyed.remove(&key) {
                    Some((loc, _)) => {
                        j.depend(r.loc, loc);
                        j.release(loc);
                    }
                    None => j.release(r.loc),
                }
            }
            store::ID_BLOCK => {
                let limit = d.u64().ok()?;
                if let Some((old, _)) = self.ids.replace((r.loc, limit)) {
                    j.release(old);
                }
            }
            _ => return None,
        }
        Some(())
    }

    /// Turns what replay found into live exchanges, queues and bindings.
    pub(crate) fn build(self, shared: &Shared, store: &Store) -> RecoveryReport {
        let mut report = RecoveryReport {
            bad_records: self.bad,
            ..Default::default()
        };
        let j = &store.journal;
        let mut by_id: HashMap<u64, Arc<Exchange>> = shared
            .exchange_list()
            .into_iter()
            .map(|e| (e.id, e))
            .collect();
        let mut max_exchange = by_id.keys().copied().max().unwrap_or(0);
        for (id, x) in self.exchanges {
            if shared.exchange(&x.name).is_some() {
                tracing::warn!(exchange = %x.name, "recovered exchange clashes with an existing one; skipped");
                j.release(x.loc);
                continue;
            }
            let ex = Arc::new(Exchange::new(
                id,
                Str::from(x.name.as_str()),
                x.kind,
                x.options,
                false,
                shared.config.route_cache_capacity,
            ));
            shared.insert_exchange(ex.clone());
            store.restore_decl(Decl::Exchange(id), x.loc, x.payload);
            by_id.insert(id, ex);
            max_exchange = max_exchange.max(id);
            report.exchanges += 1;
        }
        shared.set_next_exchange(max_exchange);
        let mut queues: HashMap<u64, Arc<Queue>> = HashMap::new();
        let mut max_msg = 0u64;
        let mut max_queue = 0u64;
        let mut ids: Vec<u64> = self.queues.keys().copied().collect();
        ids.sort_unstable();
        let mut recovered = self.queues;
        let mut messages = self.messages;
        for id in ids {
            let Some(rq) = recovered.remove(&id) else {
                continue;
            };
            max_queue = max_queue.max(id);
            let msgs = messages.remove(&id).map(|m| m.msgs).unwrap_or_default();
            if let Some(m) = msgs.keys().next_back() {
                max_msg = max_msg.max(*m);
            }
            let count = msgs.len() as u64;
            let paged = msgs.values().filter(|m| m.body.is_none()).count() as u64;
            let entries = msgs.into_iter().map(|(mid, m)| Restored {
                id: MessageId(mid),
                loc: m.loc,
                priority: m.priority,
                expires_at: m.expires_at,
                size: m.size,
                body: m.body,
            });
            match shared.restore_queue(Str::from(rq.name.as_str()), rq.options, id, store, entries)
            {
                Some(q) => {
                    store.restore_decl(Decl::Queue(id), rq.loc, rq.payload);
                    queues.insert(id, q);
                    report.queues += 1;
                    report.messages += count;
                    report.paged += paged;
                }
                None => j.release(rq.loc),
            }
        }
        // Messages of queues with no declaration left (deleted before
        // their tombstone could be replayed) are gone.
        for (id, ms) in messages {
            max_queue = max_queue.max(id);
            for m in ms.msgs.values() {
                j.release(m.loc);
            }
        }
        shared.set_next_store_queue(max_queue);
        // Ids continue above everything this node may have handed out.
        let reserved = match self.ids {
            Some((loc, limit)) => {
                store.restore_decl(Decl::Ids, loc, limit.to_le_bytes().to_vec());
                limit
            }
            None => 0,
        };
        shared.set_next_message(max_msg.max(reserved));
        for (key, (loc, payload)) in self.keyed {
            let restored = {
                let mut d = Dec(&payload);
                match &key {
                    Keyed::Retained(addr) => d
                        .str()
                        .ok()
                        .and_then(|_| codec::read_message(&mut d).ok())
                        .map(|m| {
                            shared
                                .retained
                                .restore(Str::from(addr.as_str()), Arc::new(m));
                            report.retained += 1;
                        }),
                    Keyed::State(scope, k) => d
                        .str()
                        .and_then(|_| d.str())
                        .and_then(|_| d.bytes())
                        .ok()
                        .map(|v| {
                            shared.state.restore(
                                scope.clone(),
                                k.clone(),
                                bytes::Bytes::copy_from_slice(v),
                            );
                            report.states += 1;
                        }),
                }
            };
            if restored.is_some() {
                store.restore_keyed(key, loc, payload);
            } else {
                report.bad_records += 1;
                j.release(loc);
            }
        }
        for (payload, loc) in self.bindings {
            let Some(b) = parse_binding(&payload) else {
                j.release(loc);
                continue;
            };
            let Some(ex) = by_id.get(&b.exchange) else {
                j.release(loc);
                continue;
            };
            let bound = match (
                b.dest_queue.and_then(|q| queues.get(&q)),
                b.dest_exchange.and_then(|x| by_id.get(&x)),
            ) {
                (Some(q), _) => shared.restore_queue_binding(q, ex, &b.key, &b.args),
                (None, Some(dst)) => shared.restore_exchange_binding(ex, dst, &b.key, &b.args),
                (None, None) => false,
            };
            if bound {
                store.restore_binding(payload, loc);
                report.bindings += 1;
            } else {
                j.release(loc);
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use crate::journal::{Journal, JournalConfig};
    use crate::{Broker, CoreConfig, DeclareQueue, ExchangeKind, ExchangeOptions, QueueOptions};
    use bytes::Bytes;
    use std::sync::{Arc, Weak};
    use switchyard_model::{Headers, Message, Str};

    fn open(dir: &std::path::Path) -> Broker {
        let b = Broker::with_journal(
            CoreConfig::new(),
            Journal::open(JournalConfig::new(dir)).unwrap(),
        );
        b.recover().unwrap();
        b
    }

    /// Weak handles on everything a broker holds that bindings link: its
    /// shared state, the exchanges and the queue.
    fn watch(b: &Broker) -> Vec<(&'static str, Weak<dyn std::any::Any + Send + Sync>)> {
        let x: Arc<dyn std::any::Any + Send + Sync> = b.shared.exchange("x").unwrap();
        let y: Arc<dyn std::any::Any + Send + Sync> = b.shared.exchange("y").unwrap();
        let topic: Arc<dyn std::any::Any + Send + Sync> = b.shared.exchange("amq.topic").unwrap();
        let q: Arc<dyn std::any::Any + Send + Sync> = b.shared.queue("q").unwrap();
        let shared: Arc<dyn std::any::Any + Send + Sync> = b.shared.clone();
        vec![
            ("exchange x", Arc::downgrade(&x)),
            ("exchange y", Arc::downgrade(&y)),
            ("amq.topic", Arc::downgrade(&topic)),
            ("queue q", Arc::downgrade(&q)),
            ("broker", Arc::downgrade(&shared)),
        ]
    }

    fn assert_freed(
        what: &str,
        watched: Vec<(&'static str, Weak<dyn std::any::Any + Send + Sync>)>,
    ) {
        for (name, w) in watched {
            assert!(
                w.upgrade().is_none(),
                "{what}: {name} is still alive after the broker was dropped"
            );
        }
    }

    /// Bindings link exchanges and queues both ways (an exchange routes to
    /// its queues and to exchanges bound to it; a queue and a destination
    /// exchange remember their bindings to undo them): a dropped broker
    /// must still free them all, whether the bindings were made live or
    /// rebuilt by recovery.
    #[tokio::test]
    async fn a_dropped_broker_frees_its_exchanges_and_queues() {
        let dir = tempfile::tempdir().unwrap();
        let b = open(dir.path());
        let durable = ExchangeOptions {
            durable: true,
            ..Default::default()
        };
        b.declare_exchange("x", ExchangeKind::Topic, durable.clone(), false)
            .unwrap();
        b.declare_exchange("y", ExchangeKind::Fanout, durable, false)
            .unwrap();
        b.declare_queue(
            DeclareQueue {
                name: Some(Str::from("q")),
                options: QueueOptions {
                    durable: true,
                    ..Default::default()
                },
                passive: false,
            },
            None,
        )
        .unwrap();
        let none = Headers::default();
        b.bind_queue("q", "x", "a.#", &none, None).unwrap();
        b.bind_queue("q", "amq.topic", "t.#", &none, None).unwrap();
        b.bind_exchange("x", "y", "", &none).unwrap();
        b.bind_exchange("y", "x", "b.#", &none).unwrap();
        let s = b.session("test", b.next_conn_id());
        let mut m = Message::anycast("q", Bytes::from_static(b"kept"));
        m.properties.durable = true;
        if let Some(c) = s.publish(m).unwrap().completion {
            c.await.unwrap();
        }
        drop(s);
        let watched = watch(&b);
        b.close_journal().await.unwrap();
        drop(b);
        assert_freed("live bindings", watched);

        let b = open(dir.path());
        assert_eq!(b.exchange_info("x").unwrap().bindings, 2, "recovered");
        let watched = watch(&b);
        b.close_journal().await.unwrap();
        drop(b);
        assert_freed("recovered bindings", watched);
    }
}
