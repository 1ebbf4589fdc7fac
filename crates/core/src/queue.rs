//! Queues: ready messages in priority order, consumers with credit, unacked
//! deliveries, expiry, overflow and dead-lettering.
//!
//! A queue is a mutex around its [`State`]. Every operation (enqueue, ack,
//! nack, cancel, expire) takes the lock, changes the state, runs
//! [`Queue::dispatch`] to push what it can to consumers, and collects what must
//! happen elsewhere — dead letters to route, journal removals, a queue to
//! delete — into [`Effects`], which the broker applies after the lock is
//! released (so a dead-letter cycle A → B → A cannot deadlock).
//!
//! Invariants:
//! * each priority level of `ready` is sorted by `seq` (enqueue order); a
//!   requeued message goes back to its place;
//! * an entry is in exactly one place: `ready`, one consumer's `unacked`, or
//!   gone;
//! * `ready_bytes` is the sum of the body sizes in `ready`.

use crate::config::Overflow;
use crate::outbox::{Delivery, Offer, Outbox, SessionEvent};
use crate::store::{self, Store};
use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use switchyard_journal::RecordLoc;
use switchyard_model::{
    ConnId, ConsumerId, DeliveryTag, Headers, Message, MessageId, Namespace, QueueId, Str,
    now_millis,
};

/// Where a queue's dead letters go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterTarget {
    /// The namespace (exchange) to publish to.
    pub namespace: Namespace,
    /// The routing key; `None` keeps the message's own address.
    pub routing_key: Option<Str>,
}

/// How a queue is declared. `None` means "no limit" / "not set".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueOptions {
    /// Survives a broker restart (with its persistent messages).
    pub durable: bool,
    /// Owned by the declaring connection: only it may consume, and the queue
    /// is deleted when it closes.
    pub exclusive: bool,
    /// Deleted when its last consumer goes (after it had one).
    pub auto_delete: bool,
    /// Priority levels 0..=max; `None` is plain FIFO.
    pub max_priority: Option<u8>,
    /// Time-to-live of every message in this queue.
    pub message_ttl: Option<Duration>,
    /// The queue is deleted after being unused (no consumers, no get) this long.
    pub expires: Option<Duration>,
    /// Most ready messages.
    pub max_length: Option<u64>,
    /// Most bytes of ready message bodies.
    pub max_bytes: Option<u64>,
    pub overflow: Overflow,
    pub dead_letter: Option<DeadLetterTarget>,
    /// Dead-letter a message instead of requeueing it once it has been
    /// delivered this many times.
    pub max_deliveries: Option<u32>,
    /// Only one consumer at a time receives messages; the others wait.
    pub single_active_consumer: bool,
    /// Skip messages published by the connection that owns the queue (NATS
    /// `echo: false`, MQTT no-local).
    pub no_local: bool,
    /// Raise [`SessionEvent::Overflowed`] to consumers when overflow drops a
    /// message.
    pub notify_overflow: bool,
    /// The client's declare arguments as given (AMQP `x-` table), compared
    /// when the queue is declared again.
    pub arguments: Headers,
}

/// Why a message was dead-lettered (RabbitMQ's reason names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    Expired,
    Rejected,
    MaxLen,
    DeliveryLimit,
}

impl DeathReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Expired => "expired",
            DeathReason::Rejected => "rejected",
            DeathReason::MaxLen => "maxlen",
            DeathReason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// A message recovered from the journal, for [`Queue::restore`].
#[derive(Debug)]
pub(crate) struct Restored {
    pub(crate) id: MessageId,
    pub(crate) loc: RecordLoc,
    pub(crate) priority: u8,
    pub(crate) expires_at: Option<u64>,
    pub(crate) size: u32,
    /// `None`: paged out (left on disk).
    pub(crate) body: Option<Arc<Message>>,
}

/// A snapshot of a queue for management and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueInfo {
    pub id: QueueId,
    pub name: Str,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    /// Ready (not yet delivered) messages.
    pub messages: u64,
    /// Bytes of ready message bodies.
    pub bytes: u64,
    /// Delivered, not yet acknowledged.
    pub unacked: u64,
    pub consumers: u64,
    pub stats: QueueStats,
}

/// Lifetime counters of one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub enqueued: u64,
    pub delivered: u64,
    pub redelivered: u64,
    pub acked: u64,
    pub expired: u64,
    pub dead_lettered: u64,
    pub dropped: u64,
    pub rejected_publishes: u64,
    /// Times an `overflow = block` queue went past its limits and asked
    /// publishers to wait.
    pub blocked: u64,
}

/// Work collected under a queue lock, applied by the broker after unlocking.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    pub(crate) dead: Vec<DeadLetter>,
    pub(crate) delete: Vec<Arc<Queue>>,
    /// Something was written to the journal: a publisher that wants a
    /// confirm waits for the next sync.
    pub(crate) journaled: bool,
}

#[derive(Debug)]
pub(crate) struct DeadLetter {
    pub(crate) message: Arc<Message>,
    pub(crate) reason: DeathReason,
    pub(crate) queue: Str,
    pub(crate) target: Option<DeadLetterTarget>,
}

/// A message in a queue: in memory, or paged out to the journal.
#[derive(Debug)]
enum Body {
    Loaded(Arc<Message>),
    /// Only on disk (the queue is over its memory budget); read back from
    /// `Entry::loc` when it is delivered.
    Paged {
        id: MessageId,
        priority: u8,
    },
}

#[derive(Debug)]
struct Entry {
    body: Body,
    /// Body length in bytes.
    size: u32,
    seq: u64,
    deliveries: u32,
    expires_at: Option<u64>,
    /// The journal record holding it (durable messages in durable queues).
    loc: Option<RecordLoc>,
}

impl Entry {
    #[inline]
    fn size(&self) -> u64 {
        u64::from(self.size)
    }

    #[inline]
    fn priority(&self) -> u8 {
        match &self.body {
            Body::Loaded(m) => m.priority(),
            Body::Paged { priority, .. } => *priority,
        }
    }

    #[inline]
    fn loaded_size(&self) -> u64 {
        match self.body {
            Body::Loaded(_) => self.size(),
            Body::Paged { .. } => 0,
        }
    }

    fn id(&self) -> MessageId {
        match &self.body {
            Body::Loaded(m) => m.id,
            Body::Paged { id, .. } => *id,
        }
    }
}

/// Ready messages: one FIFO per priority level.
#[derive(Debug)]
struct Ready {
    levels: Vec<VecDeque<Entry>>,
    len: usize,
    bytes: u64,
    /// Bytes of the bodies held in memory (the rest is paged out).
    loaded: u64,
}

impl Ready {
    fn new(max_priority: Option<u8>) -> Self {
        let n = max_priority.map_or(1, |p| usize::from(p.min(9)) + 1);
        Ready {
            levels: (0..n).map(|_| VecDeque::new()).collect(),
            len: 0,
            bytes: 0,
            loaded: 0,
        }
    }

    /// Room for `n` more entries, when they all go to one level (a queue
    /// without priorities); with priorities the split is not known.
    fn reserve(&mut self, n: usize) {
        if let [only] = self.levels.as_mut_slice() {
            only.reserve(n);
        }
    }

    #[inline]
    fn level_of(&self, priority: u8) -> usize {
        if self.levels.len() == 1 {
            0
        } else {
            usize::from(priority).min(self.levels.len() - 1)
        }
    }

    #[inline]
    fn count_in(&mut self, e: &Entry) {
        self.len += 1;
        self.bytes += e.size();
        self.loaded += e.loaded_size();
    }

    fn push_back(&mut self, e: Entry) {
        let l = self.level_of(e.priority());
        self.count_in(&e);
        if let Some(level) = self.levels.get_mut(l) {
            level.push_back(e);
        }
    }

    fn push_front(&mut self, e: Entry) {
        let l = self.level_of(e.priority());
        self.count_in(&e);
        if let Some(level) = self.levels.get_mut(l) {
            level.push_front(e);
        }
    }

    /// Puts a message back in its enqueue-order place.
    fn requeue(&mut self, e: Entry) {
        let l = self.level_of(e.priority());
        self.count_in(&e);
        if let Some(level) = self.levels.get_mut(l) {
            let at = level.partition_point(|x| x.seq < e.seq);
            level.insert(at, e);
        }
    }

    fn took(&mut self, e: Option<Entry>) -> Option<Entry> {
        if let Some(e) = &e {
            self.len -= 1;
            self.bytes -= e.size();
            self.loaded -= e.loaded_size();
        }
        e
    }

    /// The head of the highest non-empty priority level.
    fn pop_front(&mut self) -> Option<Entry> {
        let e = self
            .levels
            .iter_mut()
            .rev()
            .find(|l| !l.is_empty())
            .and_then(VecDeque::pop_front);
        self.took(e)
    }

    /// The oldest message of the lowest non-empty level (what overflow drops).
    fn pop_oldest_lowest(&mut self) -> Option<Entry> {
        let e = self
            .levels
            .iter_mut()
            .find(|l| !l.is_empty())
            .and_then(VecDeque::pop_front);
        self.took(e)
    }

    /// Removes the entry with `seq` if it is the newest of its level.
    fn pop_back_if(&mut self, level: usize, seq: u64) -> Option<Entry> {
        let l = self.levels.get_mut(level)?;
        if l.back().is_some_and(|e| e.seq == seq) {
            let e = l.pop_back();
            self.took(e)
        } else {
            None
        }
    }

    /// Removes expired heads of every level.
    fn pop_expired(&mut self, now: u64, out: &mut Vec<Entry>) {
        for level in &mut self.levels {
            while level
                .front()
                .is_some_and(|e| e.expires_at.is_some_and(|at| now >= at))
            {
                if let Some(e) = level.pop_front() {
                    self.len -= 1;
                    self.bytes -= e.size();
                    self.loaded -= e.loaded_size();
                    out.push(e);
                }
            }
        }
    }

    fn drain(&mut self) -> impl Iterator<Item = Entry> + '_ {
        self.len = 0;
        self.bytes = 0;
        self.loaded = 0;
        self.levels.iter_mut().flat_map(|l| l.drain(..))
    }
}

#[derive(Debug)]
struct Slot {
    id: ConsumerId,
    session: ConnId,
    outbox: Arc<Outbox>,
    manual_ack: bool,
    /// Most unacked deliveries (0 = unlimited).
    prefetch: u32,
    /// Never pushed to: holds messages taken with `get`.
    passive: bool,
    /// Temporarily not pushed to; its unacked deliveries stay ackable.
    paused: bool,
    exclusive: bool,
    unacked: BTreeMap<u64, Entry>,
}

impl Slot {
    #[inline]
    fn has_credit(&self) -> bool {
        !self.passive
            && !self.paused
            && (!self.manual_ack
                || self.prefetch == 0
                || self.unacked.len() < self.prefetch as usize)
    }
}

#[derive(Debug)]
pub(crate) struct State {
    ready: Ready,
    consumers: Vec<Slot>,
    cursor: usize,
    next_tag: u64,
    next_seq: u64,
    deleted: bool,
    had_consumer: bool,
    last_used: u64,
    /// Every consumer that could take more has a full outbox, and this
    /// queue is registered to be woken by them: enqueue need not try again.
    stalled: bool,
    stats: QueueStats,
}

/// How a consumer attaches to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotSpec {
    pub(crate) id: ConsumerId,
    pub(crate) session: ConnId,
    pub(crate) manual_ack: bool,
    pub(crate) prefetch: u32,
    pub(crate) exclusive: bool,
    pub(crate) passive: bool,
}

/// What happened to a message offered to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enqueued {
    Accepted,
    /// Refused by `reject-publish` overflow.
    Rejected,
    /// Not for this queue (no-local, or the queue is being deleted).
    Skipped,
}

pub(crate) struct Queue {
    pub(crate) id: QueueId,
    pub(crate) name: Str,
    pub(crate) options: QueueOptions,
    /// The owning connection of an exclusive or no-local queue (0 = none).
    owner: AtomicU64,
    /// Set once a message with its own expiry was enqueued, so the sweep
    /// looks at this queue.
    expiring: AtomicBool,
    /// Ready-message watchers ([`crate::QueueWatch`]); see `ready_gained`.
    pub(crate) watch: crate::watch::WatchPoint,
    state: Mutex<State>,
    /// (exchange, binding key, arguments) of every binding to this queue,
    /// removed with the queue.
    pub(crate) bindings: Mutex<Vec<crate::exchange::BindingKey>>,
    pub(crate) broker: Weak<crate::broker::Shared>,
    /// Journal id of a persisted queue (0: not persisted).
    pub(crate) store_id: u64,
    /// Set for a durable queue when the broker has a journal.
    pub(crate) store: Option<Store>,
    /// Bytes of ready bodies kept in memory; durable messages past it are
    /// paged out to the journal.
    page_after: u64,
    /// `overflow = block`: the queue went past its limits and has not yet
    /// drained to half of them; publishers wait on `relief`.
    pressured: AtomicBool,
    /// When the current `overflow = block` episode began (ms since the
    /// epoch); past [`BLOCK_TIMEOUT`] publishers are no longer held.
    pressured_since: std::sync::atomic::AtomicU64,
    pub(crate) relief: tokio::sync::Notify,
}

/// The longest an `overflow = block` queue holds its publishers back in
/// one episode. A queue that has not drained to half its limits by then has
/// consumers that are not keeping up at all (a client that stopped reading):
/// publishers go on and the queue drops its oldest messages instead.
pub const BLOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Queue {
    pub(crate) fn new(
        id: QueueId,
        name: Str,
        options: QueueOptions,
        owner: Option<ConnId>,
        broker: Weak<crate::broker::Shared>,
        persistence: Option<(u64, Store)>,
        page_after: u64,
    ) -> Queue {
        let ready = Ready::new(options.max_priority);
        let (store_id, store) = match persistence {
            Some((id, s)) => (id, Some(s)),
            None => (0, None),
        };
        Queue {
            id,
            name,
            options,
            owner: AtomicU64::new(owner.map_or(0, ConnId::get)),
            expiring: AtomicBool::new(false),
            watch: crate::watch::WatchPoint::default(),
            state: Mutex::new(State {
                ready,
                consumers: Vec::new(),
                cursor: 0,
                next_tag: 1,
                next_seq: 1,
                deleted: false,
                had_consumer: false,
                stalled: false,
                last_used: now_millis(),
                stats: QueueStats::default(),
            }),
            bindings: Mutex::new(Vec::new()),
            broker,
            store_id,
            store,
            page_after,
            pressured: AtomicBool::new(false),
            pressured_since: std::sync::atomic::AtomicU64::new(0),
            relief: tokio::sync::Notify::new(),
        }
    }

    /// True while an `overflow = block` queue asks publishers to wait
    /// (pressured, and the episode is younger than [`BLOCK_TIMEOUT`]).
    #[inline]
    pub(crate) fn is_pressured(&self) -> bool {
        self.pressured.load(Ordering::Acquire) && self.block_deadline() > now_millis()
    }

    /// When the current block episode stops holding publishers (ms since
    /// the epoch).
    pub(crate) fn block_deadline(&self) -> u64 {
        self.pressured_since
            .load(Ordering::Acquire)
            .saturating_add(BLOCK_TIMEOUT.as_millis() as u64)
    }

    /// Past twice its limits: even a blocking queue drops from the head.
    fn over_hard_limit(&self, st: &State) -> bool {
        self.options
            .max_length
            .is_some_and(|m| st.ready.len as u64 > m.saturating_mul(2))
            || self
                .options
                .max_bytes
                .is_some_and(|m| st.ready.bytes > m.saturating_mul(2))
    }

    /// Ends the pressure once the ready messages are down to half the
    /// limits (or the queue is gone). Called with the lock held.
    fn relieve_if_drained(&self, st: &State) {
        if !self.pressured.load(Ordering::Relaxed) {
            return;
        }
        let low = st.deleted
            || (self
                .options
                .max_length
                .is_none_or(|m| st.ready.len as u64 <= m / 2)
                && self
                    .options
                    .max_bytes
                    .is_none_or(|m| st.ready.bytes <= m / 2));
        if low {
            self.pressured.store(false, Ordering::Release);
            self.relief.notify_waiters();
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    pub(crate) fn owner(&self) -> Option<ConnId> {
        match self.owner.load(Ordering::Relaxed) {
            0 => None,
            n => Some(ConnId(n)),
        }
    }

    pub(crate) fn set_owner(&self, owner: Option<ConnId>) {
        self.owner
            .store(owner.map_or(0, ConnId::get), Ordering::Relaxed);
    }

    /// The message of an entry, read back from the journal when it was
    /// paged out. `None` when it cannot be read (logged as data loss).
    fn materialize(&self, e: &mut Entry) -> Option<Arc<Message>> {
        let id = match &e.body {
            Body::Loaded(m) => return Some(m.clone()),
            Body::Paged { id, .. } => *id,
        };
        let (Some(store), Some(loc)) = (&self.store, e.loc) else {
            return None;
        };
        let read = store
            .journal
            .read(loc)
            .map_err(|e| e.to_string())
            .and_then(|(_, payload)| {
                let mut d = store::codec::Dec(&payload);
                d.u64().map_err(|e| e.to_string())?;
                store::codec::read_message(&mut d).map_err(|e| e.to_string())
            });
        match read {
            Ok(m) => {
                let m = Arc::new(m);
                e.body = Body::Loaded(m.clone());
                Some(m)
            }
            Err(err) => {
                tracing::error!(queue = %self.name, message = id.0, error = %err, "cannot read a paged-out message back; it is lost");
                None
            }
        }
    }

    /// The entry leaves the queue for good (acked, dead-lettered, dropped):
    /// its journal record gets a tombstone.
    fn forget(&self, e: &Entry, fx: &mut Effects) {
        if let (Some(store), Some(loc)) = (&self.store, e.loc) {
            let mut payload = [0u8; 16];
            let (q, m) = payload.split_at_mut(8);
            q.copy_from_slice(&self.store_id.to_le_bytes());
            m.copy_from_slice(&e.id().0.to_le_bytes());
            match store.journal.append_tombstone(store::ACK, &payload, loc) {
                Ok(_) => {
                    store.journal.release(loc);
                    fx.journaled = true;
                }
                Err(err) => {
                    tracing::error!(queue = %self.name, error = %err, "cannot journal a removal")
                }
            }
        }
    }

    fn over_limit(&self, st: &State) -> bool {
        self.options
            .max_length
            .is_some_and(|m| st.ready.len as u64 > m)
            || self.options.max_bytes.is_some_and(|m| st.ready.bytes > m)
    }

    fn dead_letter(&self, st: &mut State, mut entry: Entry, reason: DeathReason, fx: &mut Effects) {
        self.forget(&entry, fx);
        match reason {
            DeathReason::Expired => st.stats.expired += 1,
            DeathReason::MaxLen => st.stats.dropped += 1,
            DeathReason::Rejected | DeathReason::DeliveryLimit => {}
        }
        if self.options.dead_letter.is_some()
            && let Some(message) = self.materialize(&mut entry)
        {
            st.stats.dead_lettered += 1;
            fx.dead.push(DeadLetter {
                message,
                reason,
                queue: self.name.clone(),
                target: self.options.dead_letter.clone(),
            });
        }
    }

    /// Offers a routed message to this queue (lock held by the caller).
    pub(crate) fn enqueue(
        self: &Arc<Self>,
        st: &mut State,
        msg: &Arc<Message>,
        fx: &mut Effects,
    ) -> Enqueued {
        if st.deleted {
            return Enqueued::Skipped;
        }
        if self.options.no_local && self.owner() == Some(msg.origin.conn) {
            return Enqueued::Skipped;
        }
        let ttl_expiry = self.options.message_ttl.map(|ttl| {
            now_millis().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
        });
        if msg.properties.expires_at.is_some() && !self.expiring.load(Ordering::Relaxed) {
            self.expiring.store(true, Ordering::Relaxed);
        }
        let expires_at = match (msg.properties.expires_at, ttl_expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // A durable message in a persisted queue is journaled before the
        // queue takes it (under the queue's lock: the log's order is the
        // queue's order).
        let loc = match &self.store {
            Some(store) if msg.properties.durable => {
                let appended = store::with_encoded(
                    |e| {
                        e.u64(self.store_id);
                        store::codec::message(e, msg);
                    },
                    |payload| store.journal.append(store::MSG, payload),
                );
                match appended {
                    Ok(loc) => {
                        fx.journaled = true;
                        Some(loc)
                    }
                    Err(err) => {
                        tracing::error!(queue = %self.name, error = %err, "cannot journal a persistent message; refused");
                        return Enqueued::Rejected;
                    }
                }
            }
            _ => None,
        };
        let seq = st.next_seq;
        st.next_seq += 1;
        let entry = Entry {
            body: Body::Loaded(msg.clone()),
            size: u32::try_from(msg.body.len()).unwrap_or(u32::MAX),
            seq,
            deliveries: 0,
            expires_at,
            loc,
        };
        st.stats.enqueued += 1;
        // Fast path: nothing is waiting and a consumer can take it now.
        let entry = if st.ready.len == 0 {
            match self.deliver_now(st, entry, fx) {
                None => return Enqueued::Accepted,
                Some(e) => e,
            }
        } else {
            entry
        };
        let level = st.ready.level_of(msg.priority());
        let mut entry = entry;
        // Over its memory budget a queue keeps durable bodies on disk only.
        if entry.loc.is_some() && st.ready.loaded + entry.size() > self.page_after {
            entry.body = Body::Paged {
                id: msg.id,
                priority: msg.priority(),
            };
        }
        st.ready.push_back(entry);
        self.watch.ready_gained();
        if !st.stalled {
            self.dispatch(st, fx);
        }
        if self.over_limit(st) {
            match self.options.overflow {
                Overflow::RejectPublish | Overflow::RejectPublishDlx => {
                    if let Some(e) = st.ready.pop_back_if(level, seq) {
                        st.stats.rejected_publishes += 1;
                        if self.options.overflow == Overflow::RejectPublishDlx {
                            self.dead_letter(st, e, DeathReason::MaxLen, fx);
                        } else {
                            self.forget(&e, fx);
                        }
                        return Enqueued::Rejected;
                    }
                }
                Overflow::Block => {
                    if !self.pressured.load(Ordering::Acquire) {
                        self.pressured_since.store(now_millis(), Ordering::Release);
                        self.pressured.store(true, Ordering::Release);
                        st.stats.blocked += 1;
                    } else if self.block_deadline() <= now_millis() || self.over_hard_limit(st) {
                        // Held long enough, or publishers ignore the
                        // pressure: bound the memory as drop-head does.
                        self.drop_oldest_to_limit(st, fx);
                    }
                }
                Overflow::DropHead => self.drop_oldest_to_limit(st, fx),
            }
        }
        Enqueued::Accepted
    }

    /// Drops (dead-letters) the oldest ready messages of the lowest
    /// priority until the queue is within its limits, and tells the
    /// consumers when asked to (`notify_overflow`).
    fn drop_oldest_to_limit(&self, st: &mut State, fx: &mut Effects) {
        let mut dropped = false;
        while self.over_limit(st) {
            let Some(e) = st.ready.pop_oldest_lowest() else {
                break;
            };
            self.dead_letter(st, e, DeathReason::MaxLen, fx);
            dropped = true;
        }
        if dropped && self.options.notify_overflow {
            for c in &st.consumers {
                c.outbox.push_event(SessionEvent::Overflowed(c.id));
            }
        }
    }

    /// Offers one entry to the next consumer with credit (the same choice
    /// `dispatch` would make). Returns it when nobody could take it.
    fn deliver_now(
        self: &Arc<Self>,
        st: &mut State,
        mut entry: Entry,
        fx: &mut Effects,
    ) -> Option<Entry> {
        match self.deliver_now_lean(st, &mut entry) {
            Some(true) => return None,
            Some(false) => return Some(entry),
            None => {}
        }
        let n = st.consumers.len();
        let idx = if self.options.single_active_consumer {
            st.consumers
                .iter()
                .position(|c| !c.passive)
                .filter(|&i| st.consumers.get(i).is_some_and(Slot::has_credit))
        } else {
            (0..n)
                .map(|i| (st.cursor + i) % n)
                .find(|&i| st.consumers.get(i).is_some_and(Slot::has_credit))
        };
        let Some(idx) = idx else { return Some(entry) };
        let Some(slot) = st.consumers.get_mut(idx) else {
            return Some(entry);
        };
        let Body::Loaded(message) = &entry.body else {
            return Some(entry);
        };
        let tag = st.next_tag;
        entry.deliveries += 1;
        let delivery = Delivery {
            consumer: slot.id,
            tag: DeliveryTag(tag),
            message: message.clone(),
            redelivered: entry.deliveries > 1,
            delivery_count: entry.deliveries,
        };
        match slot.outbox.offer(delivery, self) {
            Offer::Sent => {
                st.next_tag += 1;
                st.stats.delivered += 1;
                if slot.manual_ack {
                    slot.unacked.insert(tag, entry);
                } else {
                    self.forget(&entry, fx);
                }
                st.cursor = (idx + 1) % n;
                None
            }
            Offer::Full | Offer::Closed => {
                entry.deliveries -= 1;
                Some(entry)
            }
        }
    }

    /// Pushes ready messages to consumers with credit, round-robin, until
    /// the queue is empty or no consumer can take more.
    pub(crate) fn dispatch(self: &Arc<Self>, st: &mut State, fx: &mut Effects) {
        let n = st.consumers.len();
        if n == 0 || st.ready.len == 0 {
            self.relieve_if_drained(st);
            return;
        }
        if self.dispatch_lean(st) {
            self.relieve_if_drained(st);
            return;
        }
        // With a single active consumer only the first (non-passive) one
        // receives; the others wait until it leaves.
        let active = if self.options.single_active_consumer {
            st.consumers.iter().position(|c| !c.passive)
        } else {
            None
        };
        let mut blocked: SmallVec<[bool; 16]> = SmallVec::from_elem(false, n);
        let mut now: Option<u64> = None;
        loop {
            let ready = |idx: usize, blocked: &[bool]| {
                blocked.get(idx) == Some(&false)
                    && st.consumers.get(idx).is_some_and(Slot::has_credit)
            };
            let pick = match active {
                Some(idx) => Some(idx).filter(|&i| ready(i, &blocked)),
                None if self.options.single_active_consumer => None,
                None => (0..n)
                    .map(|i| (st.cursor + i) % n)
                    .find(|&i| ready(i, &blocked)),
            };
            let Some(idx) = pick else {
                // Nobody can take more: if that is because of full outboxes
                // (not exhausted credit), they will wake this queue.
                st.stalled = blocked.iter().any(|&b| b);
                break;
            };
            let Some(mut entry) = st.ready.pop_front() else {
                break;
            };
            if let Some(at) = entry.expires_at {
                let t = *now.get_or_insert_with(now_millis);
                if t >= at {
                    self.dead_letter(st, entry, DeathReason::Expired, fx);
                    continue;
                }
            }
            let Some(message) = self.materialize(&mut entry) else {
                st.stats.dropped += 1;
                self.forget(&entry, fx);
                continue;
            };
            let Some(slot) = st.consumers.get_mut(idx) else {
                st.ready.push_front(entry);
                break;
            };
            entry.deliveries += 1;
            let tag = st.next_tag;
            let delivery = Delivery {
                consumer: slot.id,
                tag: DeliveryTag(tag),
                message,
                redelivered: entry.deliveries > 1,
                delivery_count: entry.deliveries,
            };
            match slot.outbox.offer(delivery, self) {
                Offer::Sent => {
                    st.next_tag += 1;
                    st.stats.delivered += 1;
                    if entry.deliveries > 1 {
                        st.stats.redelivered += 1;
                    }
                    if slot.manual_ack {
                        slot.unacked.insert(tag, entry);
                    } else {
                        self.forget(&entry, fx);
                    }
                    st.cursor = (idx + 1) % n;
                }
                Offer::Full | Offer::Closed => {
                    entry.deliveries -= 1;
                    st.ready.push_front(entry);
                    if let Some(b) = blocked.get_mut(idx) {
                        *b = true;
                    }
                }
            }
        }
        self.relieve_if_drained(st);
    }

    /// A queue whose messages are all in memory and never expire: no
    /// journal, no TTL, no message with its own expiry so far.
    #[inline]
    fn lean(&self) -> bool {
        self.store.is_none()
            && self.options.message_ttl.is_none()
            && !self.expiring.load(Ordering::Relaxed)
    }

    /// `deliver_now` for the queues and consumers `dispatch_lean` serves:
    /// the message moves from the entry into the delivery. `None` when the
    /// queue or its consumer is not of that kind; `Some(false)` when the
    /// outbox is full (the queue is then registered) or closed.
    fn deliver_now_lean(self: &Arc<Self>, st: &mut State, entry: &mut Entry) -> Option<bool> {
        if !self.lean() {
            return None;
        }
        let State {
            consumers,
            cursor,
            next_tag,
            stats,
            ..
        } = st;
        let [slot] = consumers.as_slice() else {
            return None;
        };
        if slot.manual_ack || !slot.has_credit() {
            return None;
        }
        let Body::Loaded(m) = &entry.body else {
            return None;
        };
        let Some(mut batch) = slot.outbox.batch() else {
            return Some(false);
        };
        if !batch.has_room(m.body.len()) {
            batch.full(self);
            return Some(false);
        }
        let placeholder = Body::Paged {
            id: m.id,
            priority: 0,
        };
        let Body::Loaded(message) = std::mem::replace(&mut entry.body, placeholder) else {
            return Some(false);
        };
        batch.push(lean_delivery(
            slot.id,
            next_tag,
            stats,
            message,
            entry.deliveries,
        ));
        *cursor = 0;
        Some(true)
    }

    /// The common case of `dispatch` in one pass under one outbox lock: a
    /// queue with a single consumer without acks (a plain subscription:
    /// NATS, MQTT QoS 0, STOMP `auto`) whose messages are all in memory,
    /// never expire and sit in one FIFO (no journal, no TTL, no priorities).
    /// Each message is handed over as it is (no per-message offer, no
    /// reference-count round trip). Returns false, having done nothing,
    /// when the queue or its consumer is not of that kind.
    ///
    /// The outcome is the one the general loop gives: the same order, the
    /// same outbox bounds (count and bytes, a waiter registered when full),
    /// the same tags, counters and `stalled` flag.
    fn dispatch_lean(self: &Arc<Self>, st: &mut State) -> bool {
        if !self.lean() {
            return false;
        }
        let State {
            ready,
            consumers,
            cursor,
            next_tag,
            stalled,
            stats,
            ..
        } = st;
        let ([slot], [fifo]) = (consumers.as_slice(), ready.levels.as_mut_slice()) else {
            return false;
        };
        if slot.manual_ack || !slot.has_credit() {
            return false;
        }
        let Some(mut batch) = slot.outbox.batch() else {
            // The session is gone: what `offer` answers with `Closed`.
            *stalled = true;
            return true;
        };
        let (mut taken, mut bytes) = (0usize, 0u64);
        while let Some(front) = fifo.front() {
            let Body::Loaded(m) = &front.body else { break };
            if !batch.has_room(m.body.len()) {
                batch.full(self);
                *stalled = true;
                break;
            }
            let Some(entry) = fifo.pop_front() else { break };
            let Body::Loaded(message) = entry.body else {
                break;
            };
            taken += 1;
            bytes += u64::from(entry.size);
            batch.push(lean_delivery(
                slot.id,
                next_tag,
                stats,
                message,
                entry.deliveries,
            ));
            *cursor = 0;
        }
        drop(batch);
        ready.len -= taken;
        ready.bytes -= bytes;
        ready.loaded -= bytes;
        true
    }

    /// Runs a dispatch pass (an outbox has room again) and applies its effects.
    pub(crate) fn redispatch(self: &Arc<Self>) {
        let mut fx = Effects::default();
        {
            let mut st = self.lock();
            st.stalled = false;
            self.dispatch(&mut st, &mut fx);
        }
        self.apply(fx);
    }

    pub(crate) fn apply(&self, fx: Effects) {
        if let Some(broker) = self.broker.upgrade() {
            broker.apply(fx);
        }
    }

    pub(crate) fn add_consumer(
        &self,
        st: &mut State,
        spec: SlotSpec,
        outbox: Arc<Outbox>,
    ) -> Result<(), crate::CoreError> {
        if st.deleted {
            return Err(crate::CoreError::not_found("queue", &self.name));
        }
        let active = st.consumers.iter().filter(|c| !c.passive);
        if !spec.passive {
            if spec.exclusive && active.clone().next().is_some() {
                return Err(crate::CoreError::AccessRefused(format!(
                    "queue '{}' has consumers; cannot consume exclusively",
                    self.name
                )));
            }
            if active.clone().any(|c| c.exclusive) {
                return Err(crate::CoreError::AccessRefused(format!(
                    "queue '{}' in exclusive use",
                    self.name
                )));
            }
            st.had_consumer = true;
        }
        st.last_used = now_millis();
        st.stalled = false;
        st.consumers.push(Slot {
            id: spec.id,
            session: spec.session,
            outbox,
            manual_ack: spec.manual_ack,
            prefetch: spec.prefetch,
            passive: spec.passive,
            paused: false,
            exclusive: spec.exclusive,
            unacked: BTreeMap::new(),
        });
        Ok(())
    }

    /// Detaches a consumer; its unacked messages go back to the queue in
    /// their places. Returns true when the queue should now be auto-deleted.
    pub(crate) fn remove_consumer(
        self: &Arc<Self>,
        st: &mut State,
        id: ConsumerId,
        fx: &mut Effects,
    ) -> bool {
        let Some(pos) = st.consumers.iter().position(|c| c.id == id) else {
            return false;
        };
        let slot = st.consumers.remove(pos);
        st.stalled = false;
        if st.cursor > pos {
            st.cursor -= 1;
        }
        if st.cursor >= st.consumers.len() {
            st.cursor = 0;
        }
        for (_, e) in slot.unacked {
            self.requeue_or_dead_letter(st, e, fx);
        }
        st.last_used = now_millis();
        self.dispatch(st, fx);
        self.options.auto_delete
            && st.had_consumer
            && !st.deleted
            && st.consumers.iter().all(|c| c.passive)
    }

    fn requeue_or_dead_letter(&self, st: &mut State, e: Entry, fx: &mut Effects) {
        if self
            .options
            .max_deliveries
            .is_some_and(|m| e.deliveries >= m)
        {
            self.dead_letter(st, e, DeathReason::DeliveryLimit, fx);
        } else {
            st.ready.requeue(e);
            self.watch.ready_gained();
        }
    }

    fn slot_mut(st: &mut State, id: ConsumerId) -> Result<&mut Slot, crate::CoreError> {
        st.consumers
            .iter_mut()
            .find(|c| c.id == id)
            .ok_or(crate::CoreError::UnknownConsumer)
    }

    /// Acknowledges one delivery (`multiple = false`) or every delivery of
    /// this consumer up to and including `tag` (`multiple = true`). Returns
    /// how many were acknowledged.
    pub(crate) fn ack(
        self: &Arc<Self>,
        st: &mut State,
        consumer: ConsumerId,
        tag: DeliveryTag,
        multiple: bool,
        fx: &mut Effects,
    ) -> Result<usize, crate::CoreError> {
        let entries = Self::take_unacked(st, consumer, tag, multiple)?;
        let n = entries.len();
        st.stats.acked += n as u64;
        for e in &entries {
            self.forget(e, fx);
        }
        self.dispatch(st, fx);
        Ok(n)
    }

    /// Negative acknowledgement: requeue (unless the delivery limit is
    /// reached) or dead-letter.
    pub(crate) fn nack(
        self: &Arc<Self>,
        st: &mut State,
        consumer: ConsumerId,
        tag: DeliveryTag,
        multiple: bool,
        requeue: bool,
        fx: &mut Effects,
    ) -> Result<usize, crate::CoreError> {
        let entries = Self::take_unacked(st, consumer, tag, multiple)?;
        let n = entries.len();
        for e in entries {
            if requeue {
                self.requeue_or_dead_letter(st, e, fx);
            } else {
                self.dead_letter(st, e, DeathReason::Rejected, fx);
            }
        }
        self.dispatch(st, fx);
        Ok(n)
    }

    /// Checks that `tag` (or, with `multiple`, something up to `tag`) is
    /// held by `consumer` without changing anything; used to validate a
    /// transaction before it is applied.
    pub(crate) fn holds(
        st: &State,
        consumer: ConsumerId,
        tag: DeliveryTag,
        multiple: bool,
    ) -> bool {
        st.consumers.iter().any(|c| {
            c.id == consumer
                && if multiple {
                    c.unacked.range(..=tag.0).next().is_some() || tag.0 == 0
                } else {
                    c.unacked.contains_key(&tag.0)
                }
        })
    }

    fn take_unacked(
        st: &mut State,
        consumer: ConsumerId,
        tag: DeliveryTag,
        multiple: bool,
    ) -> Result<Vec<Entry>, crate::CoreError> {
        let slot = Self::slot_mut(st, consumer)?;
        if multiple {
            // AMQP: multiple with tag 0 means "everything outstanding".
            let keep = if tag.0 == 0 {
                BTreeMap::new()
            } else {
                slot.unacked.split_off(&(tag.0 + 1))
            };
            let taken = std::mem::replace(&mut slot.unacked, keep);
            if taken.is_empty() && tag.0 != 0 {
                return Err(crate::CoreError::UnknownDeliveryTag(tag));
            }
            Ok(taken.into_values().collect())
        } else {
            slot.unacked
                .remove(&tag.0)
                .map(|e| vec![e])
                .ok_or(crate::CoreError::UnknownDeliveryTag(tag))
        }
    }

    /// Requeues every unacked delivery of `consumer` (AMQP `basic.recover`).
    pub(crate) fn recover(
        self: &Arc<Self>,
        st: &mut State,
        consumer: ConsumerId,
        fx: &mut Effects,
    ) -> Result<usize, crate::CoreError> {
        let slot = Self::slot_mut(st, consumer)?;
        let taken = std::mem::take(&mut slot.unacked);
        let n = taken.len();
        for (_, e) in taken {
            self.requeue_or_dead_letter(st, e, fx);
        }
        self.dispatch(st, fx);
        Ok(n)
    }

    /// Changes a consumer's prefetch and dispatches if it grew.
    pub(crate) fn set_prefetch(
        self: &Arc<Self>,
        st: &mut State,
        consumer: ConsumerId,
        prefetch: u32,
        fx: &mut Effects,
    ) -> Result<(), crate::CoreError> {
        Self::slot_mut(st, consumer)?.prefetch = prefetch;
        self.dispatch(st, fx);
        Ok(())
    }

    /// Stops (`paused`) or resumes pushing to a consumer; its unacked
    /// deliveries stay ackable either way. Dispatches when resumed.
    pub(crate) fn set_paused(
        self: &Arc<Self>,
        st: &mut State,
        consumer: ConsumerId,
        paused: bool,
        fx: &mut Effects,
    ) -> Result<(), crate::CoreError> {
        Self::slot_mut(st, consumer)?.paused = paused;
        if !paused {
            self.dispatch(st, fx);
        }
        Ok(())
    }

    /// Unacked deliveries a consumer holds.
    pub(crate) fn unacked_count(st: &State, consumer: ConsumerId) -> usize {
        st.consumers
            .iter()
            .find(|c| c.id == consumer)
            .map_or(0, |c| c.unacked.len())
    }

    /// Takes one ready message for a passive (get) slot of `consumer`.
    /// Returns the delivery and the number of messages left ready.
    pub(crate) fn get(
        self: &Arc<Self>,
        st: &mut State,
        consumer: ConsumerId,
        manual_ack: bool,
        fx: &mut Effects,
    ) -> Result<Option<(Delivery, u64)>, crate::CoreError> {
        st.last_used = now_millis();
        let now = now_millis();
        loop {
            let Some(mut entry) = st.ready.pop_front() else {
                return Ok(None);
            };
            if entry.expires_at.is_some_and(|at| now >= at) {
                self.dead_letter(st, entry, DeathReason::Expired, fx);
                continue;
            }
            let Some(message) = self.materialize(&mut entry) else {
                st.stats.dropped += 1;
                self.forget(&entry, fx);
                continue;
            };
            entry.deliveries += 1;
            let tag = st.next_tag;
            st.next_tag += 1;
            st.stats.delivered += 1;
            if entry.deliveries > 1 {
                st.stats.redelivered += 1;
            }
            let delivery = Delivery {
                consumer,
                tag: DeliveryTag(tag),
                message,
                redelivered: entry.deliveries > 1,
                delivery_count: entry.deliveries,
            };
            if manual_ack {
                Self::slot_mut(st, consumer)?.unacked.insert(tag, entry);
            } else {
                self.forget(&entry, fx);
            }
            return Ok(Some((delivery, st.ready.len as u64)));
        }
    }

    /// Dead-letters expired messages at the head of each priority level.
    pub(crate) fn expire(self: &Arc<Self>, st: &mut State, now: u64, fx: &mut Effects) {
        let mut expired = Vec::new();
        st.ready.pop_expired(now, &mut expired);
        for e in expired {
            self.dead_letter(st, e, DeathReason::Expired, fx);
        }
    }

    /// True when the queue has been unused longer than its `expires`.
    pub(crate) fn unused_expired(&self, st: &State, now: u64) -> bool {
        self.options.expires.is_some_and(|ttl| {
            !st.deleted
                && st.consumers.iter().all(|c| c.passive)
                && now.saturating_sub(st.last_used)
                    >= u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
        })
    }

    pub(crate) fn may_hold_expiring(&self) -> bool {
        self.expiring.load(Ordering::Relaxed)
    }

    pub(crate) fn has_expiry(&self) -> bool {
        self.options.message_ttl.is_some() || self.options.expires.is_some()
    }

    /// Removes every ready message; returns how many.
    pub(crate) fn purge(&self, st: &mut State, fx: &mut Effects) -> u64 {
        let n = st.ready.len as u64;
        let gone: Vec<Entry> = st.ready.drain().collect();
        for e in &gone {
            self.forget(e, fx);
        }
        self.relieve_if_drained(st);
        n
    }

    /// Marks the queue deleted, drops its messages and returns the consumers
    /// to notify.
    pub(crate) fn mark_deleted(
        &self,
        st: &mut State,
        fx: &mut Effects,
    ) -> Vec<(ConsumerId, Arc<Outbox>, ConnId)> {
        st.deleted = true;
        let _ = fx;
        // The queue's own tombstone (written by the broker) covers its
        // messages: their records are released without one each.
        let release = |e: &Entry| {
            if let (Some(store), Some(loc)) = (&self.store, e.loc) {
                store.journal.release(loc);
            }
        };
        for e in st.ready.drain() {
            release(&e);
        }
        self.relieve_if_drained(st);
        self.watch.ready_gained();
        let consumers = std::mem::take(&mut st.consumers);
        consumers
            .into_iter()
            .map(|c| {
                for e in c.unacked.values() {
                    release(e);
                }
                (c.id, c.outbox, c.session)
            })
            .collect()
    }

    /// Puts recovered messages in, in order, without journaling them again.
    pub(crate) fn restore(&self, st: &mut State, entries: impl Iterator<Item = Restored>) {
        // Exact room up front: growing by doubling would hold the old and the
        // new buffer at once (0.8 GB at 5 million entries) and leave up to
        // half of the final one unused.
        st.ready.reserve(entries.size_hint().0);
        for r in entries {
            let seq = st.next_seq;
            st.next_seq += 1;
            if r.expires_at.is_some() {
                self.expiring.store(true, Ordering::Relaxed);
            }
            let body = match r.body {
                Some(m) => Body::Loaded(m),
                None => Body::Paged {
                    id: r.id,
                    priority: r.priority,
                },
            };
            st.ready.push_back(Entry {
                body,
                size: r.size,
                seq,
                deliveries: 0,
                expires_at: r.expires_at,
                loc: Some(r.loc),
            });
        }
    }

    /// Compaction: copies the records of this queue's messages that sit in
    /// `segments` to the journal's tail (under the queue's lock, so no ack
    /// can slip between) and releases the originals. Returns how many moved.
    pub(crate) fn relocate(&self, st: &mut State, segments: &[u32]) -> usize {
        let Some(store) = &self.store else { return 0 };
        let mut moved = 0;
        let store_id = self.store_id;
        let mut one = |e: &mut Entry| {
            let Some(old) = e.loc.filter(|l| segments.contains(&l.segment)) else {
                return;
            };
            let appended = match &e.body {
                Body::Loaded(m) => store::with_encoded(
                    |enc| {
                        enc.u64(store_id);
                        store::codec::message(enc, m);
                    },
                    |p| store.journal.append(store::MSG, p),
                ),
                Body::Paged { .. } => store
                    .journal
                    .read(old)
                    .and_then(|(kind, p)| store.journal.append(kind, &p)),
            };
            match appended {
                Ok(new) => {
                    e.loc = Some(new);
                    store.journal.release(old);
                    moved += 1;
                }
                Err(err) => {
                    tracing::warn!(queue = %self.name, error = %err, "compaction could not move a record")
                }
            }
        };
        for level in &mut st.ready.levels {
            for e in level.iter_mut() {
                one(e);
            }
        }
        for c in &mut st.consumers {
            for e in c.unacked.values_mut() {
                one(e);
            }
        }
        moved
    }

    pub(crate) fn is_deleted(st: &State) -> bool {
        st.deleted
    }

    pub(crate) fn message_count(st: &State) -> u64 {
        st.ready.len as u64
    }

    pub(crate) fn consumer_count(st: &State) -> u64 {
        st.consumers.iter().filter(|c| !c.passive).count() as u64
    }

    pub(crate) fn info(&self, st: &State) -> QueueInfo {
        QueueInfo {
            id: self.id,
            name: self.name.clone(),
            durable: self.options.durable,
            exclusive: self.options.exclusive,
            auto_delete: self.options.auto_delete,
            messages: st.ready.len as u64,
            bytes: st.ready.bytes,
            unacked: st.consumers.iter().map(|c| c.unacked.len() as u64).sum(),
            consumers: Self::consumer_count(st),
            stats: st.stats,
        }
    }
}

/// A delivery of the lean paths (`deliver_now_lean`, `dispatch_lean`):
/// `message`, delivered `before` times already, to `consumer` under the
/// queue's next tag, counted in its statistics.
#[inline]
fn lean_delivery(
    consumer: ConsumerId,
    next_tag: &mut u64,
    stats: &mut QueueStats,
    message: Arc<Message>,
    before: u32,
) -> Delivery {
    let count = before + 1;
    let d = Delivery {
        consumer,
        tag: DeliveryTag(*next_tag),
        message,
        redelivered: count > 1,
        delivery_count: count,
    };
    *next_tag += 1;
    stats.delivered += 1;
    if count > 1 {
        stats.redelivered += 1;
    }
    d
}
