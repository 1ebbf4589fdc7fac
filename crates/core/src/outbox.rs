//! The path from queues to one connection: a bounded channel of
//! [`Delivery`]s, bounded in count and in bytes, with a wake-up list.
//!
//! Queues push with `offer` (never blocking: the core never awaits a
//! client). When the channel is full in count or bytes, the queue registers
//! itself as a waiter and keeps the message. The connection's
//! [`Deliveries::recv`] wakes the waiters once the channel has drained below
//! half, and each waiter dispatches again.
//!
//! No lost wake-up: a queue registers (setting `has_waiters`) *before* it
//! tries a second time, and the receiver checks `has_waiters` *after* it has
//! taken a delivery. Either the second try sees the room the receiver made,
//! or the receiver sees the flag. Both sides use `SeqCst`.

use crate::queue::Queue;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use switchyard_model::{ConsumerId, DeliveryTag, Message};

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
    /// The channel is full (count or bytes); the queue is registered to be
    /// woken.
    Full,
    /// The receiving side is gone.
    Closed,
}

enum Push {
    Sent,
    Full(Delivery),
    Closed,
}

#[derive(Debug)]
pub(crate) struct Outbox {
    tx: flume::Sender<Delivery>,
    capacity: usize,
    max_bytes: usize,
    bytes: AtomicUsize,
    waiters: Mutex<Vec<Weak<Queue>>>,
    has_waiters: AtomicBool,
    events: Mutex<Vec<SessionEvent>>,
    notify: tokio::sync::Notify,
}

impl Outbox {
    pub(crate) fn new(capacity: usize, max_bytes: usize) -> (Arc<Outbox>, Deliveries) {
        let capacity = capacity.max(1);
        let (tx, rx) = flume::bounded(capacity);
        let outbox = Arc::new(Outbox {
            tx,
            capacity,
            max_bytes: max_bytes.max(1),
            bytes: AtomicUsize::new(0),
            waiters: Mutex::new(Vec::new()),
            has_waiters: AtomicBool::new(false),
            events: Mutex::new(Vec::new()),
            notify: tokio::sync::Notify::new(),
        });
        let deliveries = Deliveries {
            rx,
            outbox: outbox.clone(),
        };
        (outbox, deliveries)
    }

    fn try_push(&self, d: Delivery) -> Push {
        let w = d.weight();
        let before = self.bytes.fetch_add(w, Ordering::SeqCst);
        // A single delivery larger than the byte budget still goes through
        // when nothing else is buffered, or it could never be delivered.
        if before > 0 && before + w > self.max_bytes {
            self.bytes.fetch_sub(w, Ordering::SeqCst);
            return Push::Full(d);
        }
        match self.tx.try_send(d) {
            Ok(()) => Push::Sent,
            Err(flume::TrySendError::Full(d)) => {
                self.bytes.fetch_sub(w, Ordering::SeqCst);
                Push::Full(d)
            }
            Err(flume::TrySendError::Disconnected(_)) => {
                self.bytes.fetch_sub(w, Ordering::SeqCst);
                Push::Closed
            }
        }
    }

    /// Hands `d` to the connection, or registers `queue` to be woken when
    /// there is room again.
    pub(crate) fn offer(&self, d: Delivery, queue: &Arc<Queue>) -> Offer {
        let d = match self.try_push(d) {
            Push::Sent => return Offer::Sent,
            Push::Closed => return Offer::Closed,
            Push::Full(d) => d,
        };
        self.register(queue);
        match self.try_push(d) {
            Push::Sent => Offer::Sent,
            Push::Closed => Offer::Closed,
            Push::Full(_) => Offer::Full,
        }
    }

    fn register(&self, queue: &Arc<Queue>) {
        let mut waiters = self.waiters.lock();
        if !waiters
            .iter()
            .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(queue)))
        {
            waiters.push(Arc::downgrade(queue));
        }
        self.has_waiters.store(true, Ordering::SeqCst);
    }

    fn wake(&self) {
        let waiters = {
            let mut w = self.waiters.lock();
            self.has_waiters.store(false, Ordering::SeqCst);
            std::mem::take(&mut *w)
        };
        for q in waiters {
            if let Some(q) = q.upgrade() {
                q.redispatch();
            }
        }
    }

    pub(crate) fn push_event(&self, event: SessionEvent) {
        {
            let mut events = self.events.lock();
            if !events.contains(&event) {
                events.push(event);
            }
        }
        self.notify.notify_one();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_disconnected()
    }
}

/// The receiving end of a connection's deliveries. Cloning is cheap; every
/// clone reads the same stream.
#[derive(Debug, Clone)]
pub struct Deliveries {
    rx: flume::Receiver<Delivery>,
    outbox: Arc<Outbox>,
}

impl Deliveries {
    /// The next delivery. Cancel-safe: if the future is dropped before it
    /// resolves, no delivery is lost. `None` once the session is gone.
    pub async fn recv(&self) -> Option<Delivery> {
        let d = self.rx.recv_async().await.ok()?;
        self.taken(&d);
        Some(d)
    }

    /// A delivery if one is ready now, without waiting. Drivers call this in
    /// a loop after `recv` to coalesce every ready delivery into one write.
    pub fn try_recv(&self) -> Option<Delivery> {
        let d = self.rx.try_recv().ok()?;
        self.taken(&d);
        Some(d)
    }

    /// Deliveries waiting in the channel.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    #[inline]
    fn taken(&self, d: &Delivery) {
        let o = &*self.outbox;
        let left = o
            .bytes
            .fetch_sub(d.weight(), Ordering::SeqCst)
            .saturating_sub(d.weight());
        if o.has_waiters.load(Ordering::SeqCst)
            && left <= o.max_bytes / 2
            && self.rx.len() <= o.capacity / 2
        {
            o.wake();
        }
    }

    /// Events the broker raised for this session since the last call.
    pub fn take_events(&self) -> Vec<SessionEvent> {
        std::mem::take(&mut *self.outbox.events.lock())
    }

    /// Resolves when an event is waiting (see [`Deliveries::take_events`]).
    /// Cancel-safe.
    pub async fn event_ready(&self) {
        loop {
            if !self.outbox.events.lock().is_empty() {
                return;
            }
            self.outbox.notify.notified().await;
        }
    }
}
