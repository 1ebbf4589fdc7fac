//! The path from queues to one connection: a bounded buffer of
//! [`Delivery`]s (bounded in count and in bytes) that the connection's
//! driver takes out a whole batch at a time.
//!
//! Queues push with `offer` under a short mutex; the core never awaits a
//! client. When the buffer is full (count or bytes) the queue is registered
//! as a waiter and keeps the message; the receiver, when it takes the batch
//! out, wakes the waiters and they dispatch again. Waiter registration and
//! the receiver's take happen under the same mutex, so no wake-up is lost.
//!
//! Waking the receiving task costs far more than a push (a cross-thread
//! task wake-up, often a futex), so it is done only when the buffer goes
//! from empty to non-empty, and a publisher processing a burst (one read
//! buffer of `PUB`s) defers those wake-ups to the end of the burst with a
//! [`WakeBatch`]: each receiving connection is woken once per burst and
//! finds many deliveries to encode into one write. This is how nats-server
//! signals its per-client flusher once per read loop.

use crate::queue::Queue;
use crate::traffic::Tally;
use parking_lot::{Mutex, MutexGuard};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use switchyard_model::{ConsumerId, DeliveryTag, Message};
use tokio::sync::Notify;

/// One message handed to one consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The consumer it is for (adapters map this to their subscription).
    pub consumer: ConsumerId,
    /// Names this delivery in acks and nacks.
    pub tag: DeliveryTag,
    pub message: Arc<Message>,
    /// True when the message was delivered before (and not acknowledged).
    pub redelivered: bool,
    /// How many times it has been delivered, this time included.
    pub delivery_count: u32,
}

impl Delivery {
    #[inline]
    fn weight(&self) -> usize {
        self.message.body.len()
    }
}

/// Something the broker tells a session outside the delivery stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The broker cancelled this consumer (its queue was deleted).
    ConsumerCancelled(ConsumerId),
    /// A queue this consumer reads from overflowed and dropped messages,
    /// which the adapter may treat as "slow consumer".
    Overflowed(ConsumerId),
}

pub(crate) enum Offer {
    Sent,
    /// The buffer is full (count or bytes); the queue is registered to be
    /// woken when there is room.
    Full,
    /// The session is gone.
    Closed,
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Delivery>,
    bytes: usize,
    waiters: Vec<Weak<Queue>>,
    closed: bool,
}

#[derive(Debug)]
pub(crate) struct Outbox {
    inner: Mutex<Inner>,
    capacity: usize,
    max_bytes: usize,
    /// Wakes the receiver when the buffer becomes non-empty.
    notify: Notify,
    /// Set while this outbox sits in a thread's deferred-wake list.
    wake_pending: AtomicBool,
    events: Mutex<Vec<SessionEvent>>,
    event_notify: Notify,
    /// The session's message and byte counts (see [`crate::traffic`]).
    pub(crate) tally: Tally,
}

thread_local! {
    /// Outboxes whose wake-up is deferred to the end of the current
    /// [`WakeBatch`] on this thread (`None`: no batch is open).
    static DEFERRED: RefCell<Option<Vec<Arc<Outbox>>>> = const { RefCell::new(None) };
}

/// Defers receiver wake-ups caused by publishes on this thread until the
/// guard is dropped; each receiving connection is then woken once.
///
/// Open one around a burst of synchronous publishes (a read buffer's worth)
/// and drop it before the next `.await` — a guard held across an await point
/// could move to another thread and delay wake-ups. Nested guards are
/// allowed; the outermost one wakes.
#[derive(Debug)]
pub struct WakeBatch {
    outermost: bool,
}

impl WakeBatch {
    pub fn new() -> WakeBatch {
        let outermost = DEFERRED.with(|d| {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = Some(Vec::new());
                true
            } else {
                false
            }
        });
        WakeBatch { outermost }
    }
}

impl Default for WakeBatch {
    fn default() -> Self {
        WakeBatch::new()
    }
}

impl Drop for WakeBatch {
    fn drop(&mut self) {
        if !self.outermost {
            return;
        }
        let pending = DEFERRED.with(|d| d.borrow_mut().take()).unwrap_or_default();
        for o in pending {
            o.wake_pending.store(false, Ordering::Release);
            o.notify.notify_one();
        }
    }
}

impl Outbox {
    pub(crate) fn new(capacity: usize, max_bytes: usize, tally: Tally) -> Arc<Outbox> {
        Arc::new(Outbox {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
            max_bytes: max_bytes.max(1),
            notify: Notify::new(),
            wake_pending: AtomicBool::new(false),
            events: Mutex::new(Vec::new()),
            event_notify: Notify::new(),
            tally,
        })
    }

    /// A new receiving handle.
    pub(crate) fn receiver(outbox: &Arc<Outbox>) -> Deliveries {
        Deliveries {
            outbox: outbox.clone(),
            local: VecDeque::new(),
        }
    }

    /// Hands `d` to the connection, or registers `queue` to be woken when
    /// there is room again.
    pub(crate) fn offer(self: &Arc<Self>, d: Delivery, queue: &Arc<Queue>) -> Offer {
        let w = d.weight();
        let was_empty = {
            let mut g = self.inner.lock();
            if g.closed {
                return Offer::Closed;
            }
            // A single delivery larger than the byte budget still goes out
            // when nothing else is buffered, or it could never be delivered.
            if g.queue.len() >= self.capacity || (g.bytes > 0 && g.bytes + w > self.max_bytes) {
                if !g
                    .waiters
                    .iter()
                    .any(|x| std::ptr::eq(x.as_ptr(), Arc::as_ptr(queue)))
                {
                    g.waiters.push(Arc::downgrade(queue));
                }
                return Offer::Full;
            }
            let was_empty = g.queue.is_empty();
            g.queue.push_back(d);
            g.bytes += w;
            was_empty
        };
        if was_empty {
            self.wake();
        }
        Offer::Sent
    }

    /// Opens a batch of offers under one lock (a queue handing many
    /// deliveries to its only consumer); `None` when the session is gone.
    /// The receiver is woken once, when the batch is dropped, if the buffer
    /// was empty before it.
    pub(crate) fn batch(self: &Arc<Self>) -> Option<OfferBatch<'_>> {
        let g = self.inner.lock();
        if g.closed {
            return None;
        }
        let was_empty = g.queue.is_empty();
        Some(OfferBatch {
            outbox: self,
            g,
            was_empty,
            sent: false,
        })
    }

    fn wake(self: &Arc<Self>) {
        let deferred = DEFERRED.with(|d| {
            let mut d = d.borrow_mut();
            match d.as_mut() {
                Some(list) => {
                    if !self.wake_pending.swap(true, Ordering::AcqRel) {
                        list.push(self.clone());
                    }
                    true
                }
                None => false,
            }
        });
        if !deferred {
            self.notify.notify_one();
        }
    }

    /// The session is gone: refuse further deliveries and end the stream.
    pub(crate) fn close(&self) {
        self.inner.lock().closed = true;
        self.notify.notify_one();
    }

    pub(crate) fn push_event(&self, event: SessionEvent) {
        {
            let mut events = self.events.lock();
            if !events.contains(&event) {
                events.push(event);
            }
        }
        self.event_notify.notify_one();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.inner.lock().closed
    }
}

/// Offers made under one hold of an outbox's lock: the same rules as
/// [`Outbox::offer`], checked per delivery with [`OfferBatch::has_room`].
pub(crate) struct OfferBatch<'a> {
    outbox: &'a Arc<Outbox>,
    g: MutexGuard<'a, Inner>,
    was_empty: bool,
    sent: bool,
}

impl OfferBatch<'_> {
    /// Whether a delivery of `weight` body bytes fits now (what `offer`
    /// checks before it takes one).
    #[inline]
    pub(crate) fn has_room(&self, weight: usize) -> bool {
        self.g.queue.len() < self.outbox.capacity
            && (self.g.bytes == 0 || self.g.bytes + weight <= self.outbox.max_bytes)
    }

    /// Takes `d`; the caller checked [`OfferBatch::has_room`] for it.
    #[inline]
    pub(crate) fn push(&mut self, d: Delivery) {
        self.g.bytes += d.weight();
        self.g.queue.push_back(d);
        self.sent = true;
    }

    /// The buffer is full: `queue` is woken when there is room again.
    pub(crate) fn full(&mut self, queue: &Arc<Queue>) {
        if !self
            .g
            .waiters
            .iter()
            .any(|x| std::ptr::eq(x.as_ptr(), Arc::as_ptr(queue)))
        {
            self.g.waiters.push(Arc::downgrade(queue));
        }
    }
}

impl Drop for OfferBatch<'_> {
    fn drop(&mut self) {
        if self.sent && self.was_empty {
            // Unlock before waking, as `offer` does.
            MutexGuard::unlocked(&mut self.g, || self.outbox.wake());
        }
    }
}

/// The receiving end of a session's deliveries. Use one per connection:
/// it takes the whole buffer at a time into a local batch.
#[derive(Debug)]
pub struct Deliveries {
    outbox: Arc<Outbox>,
    local: VecDeque<Delivery>,
}

/// A handle on a session's broker events, separate from [`Deliveries`] so a
/// driver can wait on both in one `select!`.
#[derive(Debug, Clone)]
pub struct Events {
    outbox: Arc<Outbox>,
}

/// Batch buffers with room for more deliveries than this are released when
/// the connection goes idle, not while deliveries keep coming (a busy
/// connection's batches reuse them instead of growing a fresh buffer,
/// copying, each time). An idle connection keeps at most 8 KiB for each of
/// its two buffers: many connections that once had a burst must not each
/// hold the burst's buffers.
const KEEP_LOCAL: usize = 256;

impl Deliveries {
    /// Moves everything buffered into the local batch; wakes queues that
    /// were waiting for room. Returns false when there was nothing.
    fn refill(&mut self) -> bool {
        let (waiters, bytes) = {
            let mut g = self.outbox.inner.lock();
            if g.queue.is_empty() {
                return false;
            }
            std::mem::swap(&mut g.queue, &mut self.local);
            let bytes = std::mem::take(&mut g.bytes);
            (std::mem::take(&mut g.waiters), bytes)
        };
        self.outbox.tally.outbound(self.local.len(), bytes);
        for q in waiters {
            if let Some(q) = q.upgrade() {
                q.redispatch();
            }
        }
        true
    }

    fn pop(&mut self) -> Option<Delivery> {
        self.local.pop_front()
    }

    /// The next delivery. Cancel-safe: if the future is dropped before it
    /// resolves, no delivery is lost. `None` once the session is closed.
    pub async fn recv(&mut self) -> Option<Delivery> {
        loop {
            if let Some(d) = self.local.pop_front() {
                return Some(d);
            }
            if self.refill() {
                continue;
            }
            {
                let mut g = self.outbox.inner.lock();
                if g.closed {
                    return None;
                }
                // Going idle: release batch buffers a burst left large. (Not
                // on every drained batch: the two buffers trade places at each
                // refill, and one freed there would regrow, copying, while
                // deliveries keep coming.)
                if g.queue.is_empty() && g.queue.capacity() > KEEP_LOCAL {
                    g.queue = VecDeque::new();
                }
            }
            if self.local.capacity() > KEEP_LOCAL {
                self.local = VecDeque::new();
            }
            // Going idle: hand this session's counts to its protocol's totals.
            self.outbox.tally.flush();
            // A wake-up that raced with the check above left a permit.
            self.outbox.notify.notified().await;
        }
    }

    /// A delivery if one is ready now, without waiting. Drivers call this in
    /// a loop after `recv` to coalesce every ready delivery into one write.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        if self.local.is_empty() {
            self.refill();
        }
        self.pop()
    }

    /// Deliveries waiting (buffered and in the local batch).
    pub fn len(&self) -> usize {
        self.local.len() + self.outbox.inner.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The session's event handle.
    pub fn events(&self) -> Events {
        Events {
            outbox: self.outbox.clone(),
        }
    }

    /// Events the broker raised for this session since the last call.
    pub fn take_events(&self) -> Vec<SessionEvent> {
        self.events().take()
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        // Hand an unconsumed batch back, in order, for the next handle.
        if !self.local.is_empty() {
            let mut g = self.outbox.inner.lock();
            while let Some(d) = self.local.pop_back() {
                g.bytes += d.weight();
                g.queue.push_front(d);
            }
        }
    }
}

impl Events {
    /// Events the broker raised since the last call.
    pub fn take(&self) -> Vec<SessionEvent> {
        std::mem::take(&mut *self.outbox.events.lock())
    }

    /// Resolves when an event is waiting. Cancel-safe.
    pub async fn ready(&self) {
        loop {
            if !self.outbox.events.lock().is_empty() {
                return;
            }
            self.outbox.event_notify.notified().await;
        }
    }
}
