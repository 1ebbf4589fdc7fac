//! A session: one connection's (or one AMQP channel's) view of the broker.
//!
//! A session owns a bounded delivery channel ([`Deliveries`]) shared by all
//! its consumers, the consumers themselves, and the exclusive queues it
//! declared. It is owned by the connection's task (`&mut self`, no locks).
//! Dropping it cancels every consumer (unacked messages return to their
//! queues in their places) and deletes its exclusive and temporary queues.

use crate::auth::{Principal, Verb};
use crate::broker::{Broker, DeclareQueue, DeclaredQueue, Published};
use crate::outbox::{Deliveries, Delivery, Outbox};
use crate::queue::{Effects, Queue, QueueOptions, SlotSpec};
use crate::{CoreError, CoreResult};
use hashbrown::HashMap;
use std::sync::Arc;
use switchyard_model::{
    AddressFilter, ConnId, ConsumerId, DeliveryTag, Headers, Message, Origin, Str,
};

/// How a consumer takes messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConsumeOptions {
    /// Deliveries stay unacked until [`Session::ack`]; otherwise a message
    /// is gone once handed to the connection.
    pub manual_ack: bool,
    /// Most unacked deliveries (manual ack only); 0 = unlimited.
    pub prefetch: u32,
    /// No other consumer may use the queue meanwhile.
    pub exclusive: bool,
}

/// The queue a subscription reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionKind {
    /// A queue of its own, deleted when the consumer goes (a live NATS/MQTT
    /// clean-session/STOMP topic subscription).
    Temporary,
    /// A named durable queue that keeps collecting while nobody consumes
    /// (MQTT persistent session, STOMP durable subscription). The filter is
    /// added to the queue's bindings.
    Durable(Str),
    /// One queue per (group, filter) whose consumers compete (MQTT
    /// `$share/group/filter`, NATS queue groups), deleted with its last
    /// consumer.
    Shared(Str),
}

/// A subscription to a multicast filter.
#[derive(Debug, Clone)]
pub struct Subscribe {
    pub filter: AddressFilter,
    pub kind: SubscriptionKind,
    /// Limits and behaviour of the subscription's queue (address policies
    /// fill what is unset). `durable`, `exclusive` and `auto_delete` are set
    /// from `kind`.
    pub queue: QueueOptions,
    pub consume: ConsumeOptions,
}

impl Subscribe {
    /// A temporary, auto-ack subscription with default limits.
    pub fn temporary(filter: AddressFilter) -> Self {
        Subscribe {
            filter,
            kind: SubscriptionKind::Temporary,
            queue: QueueOptions::default(),
            consume: ConsumeOptions::default(),
        }
    }
}

#[derive(Debug)]
enum TxOp {
    Ack {
        consumer: ConsumerId,
        tag: DeliveryTag,
        multiple: bool,
    },
    Nack {
        consumer: ConsumerId,
        tag: DeliveryTag,
        multiple: bool,
        requeue: bool,
    },
}

impl TxOp {
    fn target(&self) -> (ConsumerId, DeliveryTag, bool) {
        match *self {
            TxOp::Ack {
                consumer,
                tag,
                multiple,
            }
            | TxOp::Nack {
                consumer,
                tag,
                multiple,
                ..
            } => (consumer, tag, multiple),
        }
    }
}

/// Publishes and acknowledgements buffered until [`Session::commit`]
/// applies them all at once, or dropped by simply discarding the value
/// (rollback). AMQP `tx.*` keeps one per channel; STOMP one per named
/// transaction.
#[derive(Debug, Default)]
pub struct Transaction {
    publishes: Vec<Message>,
    ops: Vec<TxOp>,
}

impl Transaction {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn publish(&mut self, msg: Message) {
        self.publishes.push(msg);
    }

    pub fn ack(&mut self, consumer: ConsumerId, tag: DeliveryTag, multiple: bool) {
        self.ops.push(TxOp::Ack {
            consumer,
            tag,
            multiple,
        });
    }

    pub fn nack(&mut self, consumer: ConsumerId, tag: DeliveryTag, multiple: bool, requeue: bool) {
        self.ops.push(TxOp::Nack {
            consumer,
            tag,
            multiple,
            requeue,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.publishes.is_empty() && self.ops.is_empty()
    }
}

#[derive(Debug)]
struct ConsumerEntry {
    queue: Arc<Queue>,
    /// Delete the queue when this consumer goes.
    temporary: bool,
}

/// One connection's handle on the broker. See the module docs.
#[derive(Debug)]
pub struct Session {
    broker: Broker,
    conn: ConnId,
    protocol: &'static str,
    outbox: Arc<Outbox>,
    consumers: HashMap<ConsumerId, ConsumerEntry>,
    /// Passive consumer slots used for `get`, one per queue.
    getters: HashMap<Str, ConsumerId>,
    owned: Vec<Arc<Queue>>,
    /// The principal's view of the ACL; `None` when no ACL is configured
    /// (every check is then one branch).
    acl: crate::auth::Authorizer,
}

impl Broker {
    /// Opens a session for a connection speaking `protocol`.
    pub fn session(&self, protocol: &'static str, conn: ConnId) -> Session {
        let limits = &self.config().limits;
        let outbox = Outbox::new(
            limits.connection_buffer,
            limits.connection_buffer_bytes.as_usize(),
            crate::traffic::Tally::new(self.shared.traffic.get(protocol)),
        );
        Session {
            broker: self.clone(),
            conn,
            protocol,
            outbox,
            consumers: HashMap::new(),
            getters: HashMap::new(),
            owned: Vec::new(),
            acl: self.authorizer(protocol, &Principal::anonymous()),
        }
    }
}

impl Session {
    /// Sets who this session acts for (after the connection authenticated;
    /// a session starts as the anonymous principal). Every later operation
    /// is checked against the ACL rules for this principal.
    pub fn set_principal(&mut self, principal: &Principal) {
        self.acl = self.broker.authorizer(self.protocol, principal);
    }

    /// Checks `verb` on the literal `address` against the ACL; a denial is
    /// counted and returned as [`CoreError::AccessRefused`].
    #[inline]
    pub fn authorize(&self, verb: Verb, address: &str) -> CoreResult<()> {
        self.acl.check(verb, address)
    }

    /// Checks `verb` on every address `filter` matches.
    pub fn authorize_filter(&self, verb: Verb, filter: &AddressFilter) -> CoreResult<()> {
        self.acl.check_filter(verb, filter)
    }

    /// Whether the queue is this connection's own exclusive queue (only fed
    /// by bindings, which are checked; its consumption is not).
    fn own_exclusive(&self, name: &str) -> bool {
        self.broker
            .shared
            .queue(name)
            .is_some_and(|q| q.options.exclusive && q.owner() == Some(self.conn))
    }

    pub fn conn_id(&self) -> ConnId {
        self.conn
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The origin to stamp on messages this session publishes.
    pub fn origin(&self) -> Origin {
        Origin {
            protocol: self.protocol,
            conn: self.conn,
        }
    }

    /// The stream of deliveries for every consumer of this session. A
    /// connection's driver takes one handle and keeps it.
    pub fn deliveries(&self) -> Deliveries {
        Outbox::receiver(&self.outbox)
    }

    /// A completion for everything journaled so far — this session's acks
    /// included — once it is on disk; `None` without a journal. For
    /// protocols that confirm an acknowledgement (a STOMP receipt on ACK):
    /// the confirmation waits for it, so an acknowledged message never
    /// comes back after a crash. (Publishers wait on
    /// [`Published::completion`].)
    pub fn synced(&self) -> Option<switchyard_journal::Completion> {
        self.broker.shared.store.as_ref().map(|s| s.sync())
    }

    /// Waits until everything journaled so far is on disk (tests and
    /// shutdown; publishers wait on [`Published::completion`]).
    pub async fn sync_for_tests(&self) {
        if let Some(store) = &self.broker.shared.store {
            let _ = store.sync().await;
        }
    }

    /// Publishes, stamping this session as the origin.
    pub fn publish(&self, mut msg: Message) -> CoreResult<Published> {
        if self.acl.is_active() {
            self.authorize(Verb::Publish, &msg.address)?;
        }
        msg.origin = self.origin();
        let bytes = msg.body.len();
        let published = self.broker.publish(msg)?;
        self.outbox.tally.inbound(bytes);
        Ok(published)
    }

    /// [`Session::publish`] for a message already in its shared allocation
    /// (see [`Broker::publish_shared`]): build it with `Arc::new(Message {
    /// .. })` and it is not moved again on its way to the queues.
    pub fn publish_shared(&self, mut msg: Arc<Message>) -> CoreResult<Published> {
        if self.acl.is_active() {
            self.authorize(Verb::Publish, &msg.address)?;
        }
        Arc::make_mut(&mut msg).origin = self.origin();
        let bytes = msg.body.len();
        let published = self.broker.publish_shared(msg)?;
        self.outbox.tally.inbound(bytes);
        Ok(published)
    }

    /// [`Session::publish_shared`] for a connection that publishes over
    /// and over: `memo` (one per connection, kept between publishes)
    /// remembers where the last multicast address routed to, so the next
    /// publish to it skips the router while no subscription was added or
    /// removed anywhere. Same result as `publish_shared`.
    pub fn publish_memo(
        &self,
        msg: Arc<Message>,
        memo: &mut crate::RouteMemo,
    ) -> CoreResult<Published> {
        if self.acl.is_active() {
            self.authorize(Verb::Publish, &msg.address)?;
        }
        let bytes = msg.body.len();
        let published = self.broker.publish_memo(msg, self.origin(), memo)?;
        self.outbox.tally.inbound(bytes);
        Ok(published)
    }

    /// Declares a queue owned by this connection (see [`Broker::declare_queue`]).
    /// Exclusive queues are deleted when the session ends.
    pub fn declare_queue(&mut self, req: DeclareQueue) -> CoreResult<DeclaredQueue> {
        let exclusive = req.options.exclusive && !req.passive;
        // A connection's own exclusive queue concerns nobody else; passive
        // declares only ask whether a queue exists.
        if self.acl.is_active()
            && !exclusive
            && !req.passive
            && let Some(name) = &req.name
        {
            self.authorize(Verb::Manage, name)?;
        }
        let (d, q) = self.broker.declare_queue_arc(req, Some(self.conn))?;
        if exclusive && d.created {
            self.owned.push(q);
        }
        Ok(d)
    }

    pub fn delete_queue(&mut self, name: &str, if_unused: bool, if_empty: bool) -> CoreResult<u64> {
        if self.acl.is_active() && !self.own_exclusive(name) {
            self.authorize(Verb::Manage, name)?;
        }
        let n = self
            .broker
            .delete_queue(name, if_unused, if_empty, Some(self.conn))?;
        self.owned.retain(|q| &*q.name != name);
        Ok(n)
    }

    pub fn purge_queue(&self, name: &str) -> CoreResult<u64> {
        if self.acl.is_active() && !self.own_exclusive(name) {
            self.authorize(Verb::Manage, name)?;
        }
        self.broker.purge_queue(name, Some(self.conn))
    }

    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        args: &Headers,
    ) -> CoreResult<()> {
        if self.acl.is_active() {
            // A binding lets the queue receive what the key matches: the
            // same right as a subscription to it.
            match AddressFilter::new(key) {
                Ok(f) => self.authorize_filter(Verb::Subscribe, &f)?,
                Err(_) => self.authorize(Verb::Subscribe, key)?,
            }
        }
        self.broker
            .bind_queue(queue, exchange, key, args, Some(self.conn))
    }

    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        args: &Headers,
    ) -> CoreResult<()> {
        self.broker
            .unbind_queue(queue, exchange, key, args, Some(self.conn))
    }

    fn check_consumer_limit(&self) -> CoreResult<()> {
        let max = self.broker.config().limits.max_consumers_per_connection;
        if self.consumers.len() as u64 >= max {
            return Err(CoreError::ResourceLimit(format!(
                "connection holds the maximum of {max} consumers"
            )));
        }
        Ok(())
    }

    fn attach(
        &mut self,
        q: Arc<Queue>,
        opts: ConsumeOptions,
        temporary: bool,
    ) -> CoreResult<ConsumerId> {
        let id = self.broker.next_consumer_id();
        let cap = self.broker.config().limits.max_unacked_per_consumer;
        let prefetch = match (opts.prefetch, cap) {
            (0, c) => c,
            (p, 0) => p,
            (p, c) => p.min(c),
        };
        let spec = SlotSpec {
            id,
            session: self.conn,
            manual_ack: opts.manual_ack,
            prefetch,
            exclusive: opts.exclusive,
            passive: false,
        };
        if q.options.no_local {
            q.set_owner(Some(self.conn));
        }
        let mut fx = Effects::default();
        {
            let mut st = q.lock();
            q.add_consumer(&mut st, spec, self.outbox.clone())?;
            q.dispatch(&mut st, &mut fx);
        }
        q.apply(fx);
        self.consumers.insert(
            id,
            ConsumerEntry {
                queue: q,
                temporary,
            },
        );
        Ok(id)
    }

    /// Starts consuming from a named queue.
    pub fn consume(&mut self, queue: &str, opts: ConsumeOptions) -> CoreResult<ConsumerId> {
        self.check_consumer_limit()?;
        if self.acl.is_active() && !self.own_exclusive(queue) {
            self.authorize(Verb::Consume, queue)?;
        }
        let q = self
            .broker
            .shared
            .queue(queue)
            .ok_or_else(|| CoreError::not_found("queue", queue))?;
        self.broker.shared.check_owner(&q, Some(self.conn))?;
        self.attach(q, opts, false)
    }

    /// Subscribes to a multicast filter (see [`SubscriptionKind`]).
    pub fn subscribe(&mut self, sub: Subscribe) -> CoreResult<ConsumerId> {
        self.check_consumer_limit()?;
        self.authorize_filter(Verb::Subscribe, &sub.filter)?;
        let mut options = sub.queue;
        // Address policies match a subscription by its filter (the queue's
        // generated name means nothing to an operator).
        if let Some(policy) = self.broker.config().policy_for(sub.filter.as_str()) {
            crate::broker::apply_policy(&mut options, policy);
        }
        let (name, temporary): (Str, bool) = match &sub.kind {
            SubscriptionKind::Temporary => {
                options.durable = false;
                options.exclusive = true;
                options.auto_delete = true;
                let n = crate::broker::generated_name("$sub.");
                (Str::from(n.as_str()), true)
            }
            SubscriptionKind::Durable(name) => {
                options.exclusive = false;
                options.auto_delete = false;
                (name.clone(), false)
            }
            SubscriptionKind::Shared(group) => {
                options.durable = false;
                options.exclusive = false;
                options.auto_delete = true;
                (
                    Str::from(format!("$share.{group}.{}", sub.filter).as_str()),
                    false,
                )
            }
        };
        let (_, q) = self.broker.declare_queue_arc(
            DeclareQueue {
                name: Some(name),
                options,
                passive: false,
            },
            Some(self.conn),
        )?;
        if let Err(e) = self.broker.shared.bind_multicast(&q, sub.filter.as_str()) {
            if temporary {
                self.broker.shared.delete_queue(&q);
            }
            return Err(e);
        }
        match self.attach(q.clone(), sub.consume, temporary) {
            Ok(id) => Ok(id),
            Err(e) => {
                if temporary {
                    self.broker.shared.delete_queue(&q);
                }
                Err(e)
            }
        }
    }

    /// Stops a consumer. Its unacked messages return to the queue; a
    /// temporary or auto-delete queue left without consumers is deleted.
    pub fn cancel(&mut self, consumer: ConsumerId) -> CoreResult<()> {
        let entry = self
            .consumers
            .remove(&consumer)
            .ok_or(CoreError::UnknownConsumer)?;
        self.detach(consumer, entry);
        Ok(())
    }

    fn detach(&self, consumer: ConsumerId, entry: ConsumerEntry) {
        let q = entry.queue;
        let mut fx = Effects::default();
        let auto_delete = {
            let mut st = q.lock();
            q.remove_consumer(&mut st, consumer, &mut fx)
        };
        if entry.temporary || auto_delete {
            fx.delete.push(q.clone());
        }
        q.apply(fx);
    }

    /// The queue a consumer reads from.
    pub fn consumer_queue(&self, consumer: ConsumerId) -> Option<Str> {
        self.consumers.get(&consumer).map(|e| e.queue.name.clone())
    }

    fn queue_of(&self, consumer: ConsumerId) -> CoreResult<Arc<Queue>> {
        self.consumers
            .get(&consumer)
            .map(|e| e.queue.clone())
            .ok_or(CoreError::UnknownConsumer)
    }

    /// Acknowledges a delivery, or with `multiple` every delivery of this
    /// consumer up to `tag` (`tag` 0 with `multiple`: all). Returns the count.
    pub fn ack(&self, consumer: ConsumerId, tag: DeliveryTag, multiple: bool) -> CoreResult<usize> {
        let q = self.queue_of(consumer)?;
        let mut fx = Effects::default();
        let r = q.ack(&mut q.lock(), consumer, tag, multiple, &mut fx);
        q.apply(fx);
        r
    }

    /// Rejects a delivery: `requeue` puts it back in its place (marked
    /// redelivered) unless the queue's delivery limit is reached; otherwise
    /// it is dead-lettered (or dropped without a dead-letter target).
    pub fn nack(
        &self,
        consumer: ConsumerId,
        tag: DeliveryTag,
        multiple: bool,
        requeue: bool,
    ) -> CoreResult<usize> {
        let q = self.queue_of(consumer)?;
        let mut fx = Effects::default();
        let r = q.nack(&mut q.lock(), consumer, tag, multiple, requeue, &mut fx);
        q.apply(fx);
        r
    }

    /// Requeues every unacked delivery of a consumer (AMQP `basic.recover`).
    pub fn recover(&self, consumer: ConsumerId) -> CoreResult<usize> {
        let q = self.queue_of(consumer)?;
        let mut fx = Effects::default();
        let r = q.recover(&mut q.lock(), consumer, &mut fx);
        q.apply(fx);
        r
    }

    /// Changes a consumer's prefetch.
    pub fn set_prefetch(&self, consumer: ConsumerId, prefetch: u32) -> CoreResult<()> {
        let q = self.queue_of(consumer)?;
        let mut fx = Effects::default();
        let r = q.set_prefetch(&mut q.lock(), consumer, prefetch, &mut fx);
        q.apply(fx);
        r
    }

    /// Pauses (`true`) or resumes (`false`) a consumer: while paused the
    /// queue pushes it nothing, and the deliveries it holds stay unacked
    /// and ackable. Flow control (AMQP `channel.flow`), per-channel credit
    /// kept by an adapter, and a cancel that lets the client still ack what
    /// it holds (pause, then [`Session::cancel`] once
    /// [`Session::unacked`] is 0) use it.
    pub fn set_paused(&self, consumer: ConsumerId, paused: bool) -> CoreResult<()> {
        let q = self.queue_of(consumer)?;
        let mut fx = Effects::default();
        let r = q.set_paused(&mut q.lock(), consumer, paused, &mut fx);
        q.apply(fx);
        r
    }

    /// Deliveries a consumer holds unacknowledged.
    pub fn unacked(&self, consumer: ConsumerId) -> CoreResult<usize> {
        let q = self.queue_of(consumer)?;
        let n = Queue::unacked_count(&q.lock(), consumer);
        Ok(n)
    }

    /// Takes one message from a queue without a standing consumer (AMQP
    /// `basic.get`, HTTP long-poll). With `manual_ack` the delivery must be
    /// acked through the returned delivery's `consumer`. Returns the
    /// delivery and the number of messages left.
    pub fn get(&mut self, queue: &str, manual_ack: bool) -> CoreResult<Option<(Delivery, u64)>> {
        if self.acl.is_active() && !self.own_exclusive(queue) {
            self.authorize(Verb::Consume, queue)?;
        }
        let q = self
            .broker
            .shared
            .queue(queue)
            .ok_or_else(|| CoreError::not_found("queue", queue))?;
        self.broker.shared.check_owner(&q, Some(self.conn))?;
        let getter = match self.getters.get(queue).copied() {
            Some(id)
                if self
                    .consumers
                    .get(&id)
                    .is_some_and(|e| Arc::ptr_eq(&e.queue, &q)) =>
            {
                id
            }
            _ => {
                let id = self.broker.next_consumer_id();
                q.add_consumer(
                    &mut q.lock(),
                    SlotSpec {
                        id,
                        session: self.conn,
                        manual_ack: true,
                        prefetch: 0,
                        exclusive: false,
                        passive: true,
                    },
                    self.outbox.clone(),
                )?;
                self.consumers.insert(
                    id,
                    ConsumerEntry {
                        queue: q.clone(),
                        temporary: false,
                    },
                );
                self.getters.insert(q.name.clone(), id);
                id
            }
        };
        let mut fx = Effects::default();
        let r = q.get(&mut q.lock(), getter, manual_ack, &mut fx);
        q.apply(fx);
        if let Ok(Some((d, _))) = &r {
            // A get is a round trip per message: count it at once (a
            // session that only gets never waits in `Deliveries::recv`).
            self.outbox.tally.outbound_now(1, d.message.body.len());
        }
        r
    }

    /// Applies a transaction atomically: every queue involved is locked (in
    /// id order, so concurrent commits cannot deadlock), every ack is
    /// checked, then all publishes and acks are applied before any lock is
    /// released. If a check fails nothing is applied. Returns one
    /// [`Published`] per publish, in order.
    pub fn commit(&mut self, tx: Transaction) -> CoreResult<Vec<Published>> {
        let shared = &*self.broker.shared;
        let max = shared.config.limits.max_message_size.as_usize();
        let mut ops = Vec::with_capacity(tx.ops.len());
        for op in tx.ops {
            let q = self.queue_of(op.target().0)?;
            ops.push((q, op));
        }
        if self.acl.is_active() {
            for m in &tx.publishes {
                self.authorize(Verb::Publish, &m.address)?;
            }
        }
        let mut pubs = Vec::with_capacity(tx.publishes.len());
        for mut m in tx.publishes {
            if m.body.len() > max {
                return Err(CoreError::MessageTooLarge {
                    size: m.body.len(),
                    max,
                });
            }
            m.origin = self.origin();
            shared.assign_id(&mut m);
            let m = Arc::new(m);
            let queues = shared.resolve(&m)?;
            pubs.push((m, queues));
        }
        let mut all: Vec<Arc<Queue>> = ops
            .iter()
            .map(|(q, _)| q.clone())
            .chain(pubs.iter().flat_map(|(_, qs)| qs.iter().cloned()))
            .collect();
        all.sort_by_key(|q| q.id);
        all.dedup_by_key(|q| q.id);
        let mut guards: Vec<_> = all.iter().map(|q| q.lock()).collect();
        let index = |q: &Arc<Queue>| all.binary_search_by_key(&q.id, |x| x.id).ok();

        for (q, op) in &ops {
            let (consumer, tag, multiple) = op.target();
            let held = index(q)
                .and_then(|i| guards.get(i))
                .is_some_and(|st| Queue::holds(st, consumer, tag, multiple));
            if !held {
                return Err(CoreError::UnknownDeliveryTag(tag));
            }
        }

        let mut fx = Effects::default();
        let mut results = Vec::with_capacity(pubs.len());
        for (m, queues) in &pubs {
            let mut out = Published {
                id: m.id,
                routed: 0,
                rejected: 0,
                completion: None,
                pressure: None,
            };
            for q in queues {
                if let Some(st) = index(q).and_then(|i| guards.get_mut(i)) {
                    shared.enqueue_locked(q, st, m, &mut out, &mut fx);
                }
            }
            shared.count_published(&out);
            self.outbox.tally.inbound(m.body.len());
            results.push(out);
        }
        for (q, op) in &ops {
            let Some(st) = index(q).and_then(|i| guards.get_mut(i)) else {
                continue;
            };
            // Validated above; an ack repeated within one transaction finds
            // its tag gone and is ignored.
            let _ = match *op {
                TxOp::Ack {
                    consumer,
                    tag,
                    multiple,
                } => q.ack(st, consumer, tag, multiple, &mut fx),
                TxOp::Nack {
                    consumer,
                    tag,
                    multiple,
                    requeue,
                } => q.nack(st, consumer, tag, multiple, requeue, &mut fx),
            };
        }
        drop(guards);
        // A transaction that wrote to the journal is confirmed once it is on disk.
        if fx.journaled
            && let Some(store) = &shared.store
        {
            for p in &mut results {
                p.completion = Some(store.sync());
            }
        }
        shared.apply(fx);
        Ok(results)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let consumers: Vec<_> = self.consumers.drain().collect();
        for (id, entry) in consumers {
            self.detach(id, entry);
        }
        for q in std::mem::take(&mut self.owned) {
            self.broker.shared.delete_queue(&q);
        }
        self.outbox.close();
        self.outbox.tally.flush();
    }
}
