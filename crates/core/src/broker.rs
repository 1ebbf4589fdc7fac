//! The broker: the registry of queues and exchanges, publishing and routing,
//! declarations, bindings, dead-lettering and the expiry sweep.
//!
//! [`Broker`] is a cheap, cloneable handle; adapters hold one and open a
//! [`crate::Session`] per connection. Every method is synchronous: the core
//! never awaits a client. The only future is the journal's
//! [`switchyard_journal::Completion`] in [`Published`], which a publisher
//! awaits before confirming a persistent message.
//!
//! Lock order: registry (`queues`/`exchanges`) → an exchange's table → a
//! queue's state → an outbox's small locks. Effects (dead letters, deletions)
//! are applied with no lock held.

use crate::config::{CoreConfig, Overflow};
use crate::exchange::{
    BindingKey, Dest, Exchange, ExchangeInfo, ExchangeKind, ExchangeOptions, QueueRef,
};
use crate::outbox::SessionEvent;
use crate::queue::{
    DeadLetter, DeadLetterTarget, Effects, Enqueued, Queue, QueueInfo, QueueOptions, QueueStats,
};
use crate::recovery::{self, RecoveryReport};
use crate::store::{self, Decl, Store};
use crate::{CoreError, CoreResult};
use hashbrown::HashMap;
use parking_lot::{Mutex, RwLock};
use smallvec::SmallVec;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use switchyard_journal::{Completion, Journal};
use switchyard_model::{
    ConnId, ConsumerId, Headers, Message, MessageId, Namespace, Origin, QueueId, Str, Value,
    now_millis,
};
use tokio_util::sync::CancellationToken;

/// The built-in exchanges every broker has (RabbitMQ's set).
pub const BUILTIN_EXCHANGES: &[(&str, ExchangeKind)] = &[
    ("amq.topic", ExchangeKind::Topic),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

/// A publisher's memo of where its last multicast address routes to,
/// reused while the broker's subscription set is unchanged (see
/// [`crate::Session::publish_memo`]). One per connection; it holds
/// references to the queues it last reached until the next publish to
/// another address or after a change.
#[derive(Debug, Default)]
pub struct RouteMemo(Option<(Str, u64, Arc<[Dest]>)>);

/// What a publish did.
#[derive(Debug)]
pub struct Published {
    /// The broker-assigned id.
    pub id: MessageId,
    /// Queues that accepted the message.
    pub routed: u32,
    /// Queues that refused it (`reject-publish` overflow). A publisher with
    /// confirms is told "nack" when this is non-zero.
    pub rejected: u32,
    /// Present when the message went into a durable queue and is being
    /// journaled: resolves once it is on disk. Confirm only after it.
    pub completion: Option<Completion>,
    /// Present when a queue the message went into (`overflow = block`) is
    /// past its limits: the publisher should take no more messages from its
    /// client until [`Pressure::relieved`] resolves.
    pub pressure: Option<Pressure>,
}

/// Back-pressure from a queue with `overflow = block` (see
/// [`crate::Overflow::Block`]): a publisher holds its client back until
/// the queue has drained to half its limits or is deleted.
#[derive(Debug, Clone)]
pub struct Pressure {
    queue: Arc<Queue>,
}

impl Pressure {
    /// True once publishers may go on.
    pub fn is_relieved(&self) -> bool {
        !self.queue.is_pressured()
    }

    /// Resolves once publishers may go on: the queue drained to half its
    /// limits, or was deleted, or the episode reached
    /// [`crate::BLOCK_TIMEOUT`]. Cancel-safe.
    pub async fn relieved(&self) {
        loop {
            let notified = self.queue.relief.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_relieved() {
                return;
            }
            let left = self
                .queue
                .block_deadline()
                .saturating_sub(switchyard_model::now_millis());
            // Past the deadline `is_relieved` is true on the next turn.
            let _ = tokio::time::timeout(Duration::from_millis(left.max(1)), notified).await;
        }
    }

    /// Keeps `new` in `slot` (a connection's pressure) unless `slot` holds
    /// one that is not relieved yet: the connection waits for the first.
    pub fn keep(slot: &mut Option<Pressure>, new: Option<Pressure>) {
        if new.is_some() && slot.as_ref().is_none_or(Pressure::is_relieved) {
            *slot = new;
        }
    }

    /// [`Pressure::relieved`] of `pressure`; never resolves without one.
    /// For a connection's `select!` loop: the wait is boxed and made only
    /// while pressed, so it does not grow every connection's future.
    pub async fn relieved_or_never(pressure: Option<&Pressure>) {
        match pressure {
            Some(p) => Box::pin(p.relieved()).await,
            None => std::future::pending().await,
        }
    }
}

impl Published {
    /// No queue took the message (counted as unroutable).
    pub fn is_unroutable(&self) -> bool {
        self.routed == 0 && self.rejected == 0
    }
}

/// A queue declaration.
#[derive(Debug, Clone, Default)]
pub struct DeclareQueue {
    /// `None` asks the broker for a name (`amq.gen-…`).
    pub name: Option<Str>,
    pub options: QueueOptions,
    /// Only check that the queue exists (AMQP `passive`).
    pub passive: bool,
}

/// The answer to a queue declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredQueue {
    pub name: Str,
    pub messages: u64,
    pub consumers: u64,
    /// False when the queue already existed.
    pub created: bool,
}

/// Broker-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerStats {
    pub published: u64,
    pub unroutable: u64,
    pub queues: u64,
    pub exchanges: u64,
    pub consumers: u64,
    pub messages_ready: u64,
    pub messages_unacked: u64,
    /// Totals over live and deleted queues.
    pub queue_totals: QueueStats,
    pub route_cache_hits: u64,
    pub route_cache_misses: u64,
}

#[derive(Debug, Default)]
struct Counters {
    next_message: AtomicU64,
    next_conn: AtomicU64,
    next_consumer: AtomicU64,
    next_queue: AtomicU64,
    next_exchange: AtomicU64,
    unroutable: AtomicU64,
}

pub(crate) struct Shared {
    pub(crate) config: CoreConfig,
    queues: RwLock<HashMap<Str, Arc<Queue>>>,
    exchanges: RwLock<HashMap<Str, Arc<Exchange>>>,
    multicast: Arc<Exchange>,
    counters: Counters,
    retired: Mutex<QueueStats>,
    shutdown: CancellationToken,
    /// Messages and bytes in and out per protocol.
    pub(crate) traffic: crate::traffic::TrafficRegistry,
    /// This broker, for queues to reach back to (dead letters, deletions).
    me: std::sync::Weak<Shared>,
    /// Durable state goes here when the broker has a journal.
    pub(crate) store: Option<Store>,
    /// Journal ids of persisted queues (never reused).
    next_store_queue: AtomicU64,
    /// Message ids below this are reserved in the journal; reaching it
    /// reserves the next block (`u64::MAX` without a journal).
    id_limit: AtomicU64,
    id_lock: Mutex<()>,
    pub(crate) retained: crate::retained::RetainedStore,
    pub(crate) state: crate::state::StateStore,
    pub(crate) flow: tokio::sync::watch::Sender<crate::flow::BlockReason>,
    pub(crate) flow_sources: Mutex<std::collections::BTreeMap<&'static str, String>>,
    pub(crate) clients: Arc<crate::clients::Registry>,
    pub(crate) auth: crate::auth::Auth,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

impl Drop for Shared {
    /// The broker owns its exchanges, queues and the bindings between them;
    /// bindings point both ways (exchange → queue or exchange to route, queue
    /// or destination exchange → exchange to unbind), so they are undone
    /// here, or every bound exchange and queue would outlive the broker.
    fn drop(&mut self) {
        for ex in self.exchanges.get_mut().values() {
            ex.clear();
        }
    }
}

/// A handle to the broker. Clone freely.
#[derive(Debug, Clone)]
pub struct Broker {
    pub(crate) shared: Arc<Shared>,
}

fn add_stats(a: &mut QueueStats, b: &QueueStats) {
    a.enqueued += b.enqueued;
    a.delivered += b.delivered;
    a.redelivered += b.redelivered;
    a.acked += b.acked;
    a.expired += b.expired;
    a.dead_lettered += b.dead_lettered;
    a.dropped += b.dropped;
    a.rejected_publishes += b.rejected_publishes;
    a.blocked += b.blocked;
}

fn describe(v: Option<&Value>) -> String {
    v.map_or_else(|| "none".to_owned(), Value::to_text)
}

impl Broker {
    /// A broker that keeps nothing on disk.
    pub fn new(config: CoreConfig) -> Broker {
        Broker::build(config, None)
    }

    /// A broker whose durable state goes to `journal`. Call
    /// [`Broker::recover`] before any traffic: it replays the journal and
    /// starts its writer.
    pub fn with_journal(config: CoreConfig, journal: Journal) -> Broker {
        Broker::build(config, Some(Store::new(journal)))
    }

    fn build(config: CoreConfig, store: Option<Store>) -> Broker {
        let cache = config.route_cache_capacity;
        let multicast = Arc::new(Exchange::new(
            0,
            Str::from("amq.topic"),
            ExchangeKind::Topic,
            ExchangeOptions {
                durable: true,
                ..Default::default()
            },
            true,
            cache,
        ));
        let mut exchanges = HashMap::new();
        exchanges.insert(multicast.name.clone(), multicast.clone());
        for (i, (name, kind)) in BUILTIN_EXCHANGES.iter().enumerate().skip(1) {
            let ex = Arc::new(Exchange::new(
                i as u64,
                Str::from(*name),
                *kind,
                ExchangeOptions {
                    durable: true,
                    ..Default::default()
                },
                true,
                cache,
            ));
            exchanges.insert(ex.name.clone(), ex);
        }
        let counters = Counters::default();
        counters
            .next_exchange
            .store(BUILTIN_EXCHANGES.len() as u64, Ordering::Relaxed);
        Broker {
            shared: Arc::new_cyclic(|me| Shared {
                queues: RwLock::new(HashMap::new()),
                exchanges: RwLock::new(exchanges),
                multicast,
                counters,
                retired: Mutex::new(QueueStats::default()),
                shutdown: CancellationToken::new(),
                traffic: crate::traffic::TrafficRegistry::default(),
                me: me.clone(),
                id_limit: AtomicU64::new(if store.is_some() { 0 } else { u64::MAX }),
                store,
                next_store_queue: AtomicU64::new(0),
                id_lock: Mutex::new(()),
                retained: Default::default(),
                state: Default::default(),
                flow: tokio::sync::watch::Sender::new(None),
                flow_sources: Mutex::new(std::collections::BTreeMap::new()),
                clients: Default::default(),
                auth: crate::auth::Auth::new(&config.auth),
                config,
            }),
        }
    }

    /// Replays the journal (if any) into the broker — durable exchanges,
    /// queues, bindings and their messages, in order — and starts the
    /// journal's writer. Call once, before any traffic.
    pub fn recover(&self) -> CoreResult<RecoveryReport> {
        let Some(store) = self.shared.store.clone() else {
            return Ok(RecoveryReport::default());
        };
        let started = std::time::Instant::now();
        let mut rec = recovery::Recovering::new(self.shared.config.limits.queue_memory.bytes());
        let journal = store
            .journal
            .replay(|j, r| {
                rec.apply(j, &r);
                Ok(())
            })
            .map_err(|e| CoreError::Storage(e.to_string()))?;
        let mut report = rec.build(&self.shared, &store);
        report.journal = journal;
        store
            .journal
            .start()
            .map_err(|e| CoreError::Storage(e.to_string()))?;
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Runs one journal compaction pass now (it also runs in the
    /// background every few seconds).
    pub fn compact_now(&self) {
        self.shared.compact();
    }

    /// Journal counters, when the broker has a journal.
    pub fn journal_stats(&self) -> Option<switchyard_journal::JournalStats> {
        self.shared.store.as_ref().map(|s| s.journal.stats())
    }

    /// Writes and syncs everything journaled, and stops the journal's
    /// writer (shutdown).
    pub async fn close_journal(&self) -> CoreResult<()> {
        if let Some(store) = &self.shared.store {
            store
                .journal
                .close()
                .await
                .map_err(|e| CoreError::Storage(e.to_string()))?;
        }
        Ok(())
    }

    /// The configuration the broker runs with.
    pub fn config(&self) -> &CoreConfig {
        &self.shared.config
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> ConnId {
        ConnId(
            self.shared
                .counters
                .next_conn
                .fetch_add(1, Ordering::Relaxed)
                + 1,
        )
    }

    pub(crate) fn next_consumer_id(&self) -> ConsumerId {
        ConsumerId(
            self.shared
                .counters
                .next_consumer
                .fetch_add(1, Ordering::Relaxed)
                + 1,
        )
    }

    /// Starts the background sweep (expiry, unused queues). Stops at
    /// [`Broker::shutdown`].
    pub fn start_maintenance(&self) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.shared);
        let period = self
            .shared
            .config
            .sweep_interval
            .get()
            .max(Duration::from_millis(10));
        let token = self.shared.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            let mut ticks: u64 = 0;
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    () = token.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(shared) = weak.upgrade() else { return };
                shared.sweep();
                ticks += 1;
                if ticks.is_multiple_of(40) {
                    // Compaction reads and writes files: keep it off the runtime's workers.
                    let s = shared.clone();
                    let _ = tokio::task::spawn_blocking(move || s.compact()).await;
                }
            }
        })
    }

    /// Stops background work. Connections are closed by the server.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    /// True once [`Broker::shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutdown.is_cancelled()
    }

    /// Publishes a message: assigns its id, routes it and enqueues it in
    /// every queue it reaches. Returns once it is routed; a persistent
    /// message's [`Published::completion`] resolves when it is on disk.
    ///
    /// Publishing to an address nobody listens to is not an error; it is
    /// counted as unroutable (AMQP `mandatory` turns it into a return).
    pub fn publish(&self, mut msg: Message) -> CoreResult<Published> {
        let max = self.shared.config.limits.max_message_size.as_usize();
        if msg.body.len() > max {
            return Err(CoreError::MessageTooLarge {
                size: msg.body.len(),
                max,
            });
        }
        self.shared.assign_id(&mut msg);
        self.publish_assigned(Arc::new(msg))
    }

    /// [`Broker::publish`] for a message already in its shared allocation
    /// (what deliveries hold): an adapter that builds it with `Arc::new`
    /// saves moving the whole `Message` through the calls. A message shared
    /// with other holders is copied first (its id is assigned here).
    pub fn publish_shared(&self, mut msg: Arc<Message>) -> CoreResult<Published> {
        let max = self.shared.config.limits.max_message_size.as_usize();
        if msg.body.len() > max {
            return Err(CoreError::MessageTooLarge {
                size: msg.body.len(),
                max,
            });
        }
        self.shared.assign_id(Arc::make_mut(&mut msg));
        self.publish_assigned(msg)
    }

    /// [`Broker::publish_shared`] for a session: stamps `origin` and the id
    /// under one `make_mut`, and routes a multicast address through the
    /// caller's [`RouteMemo`].
    pub(crate) fn publish_memo(
        &self,
        mut msg: Arc<Message>,
        origin: Origin,
        memo: &mut RouteMemo,
    ) -> CoreResult<Published> {
        let max = self.shared.config.limits.max_message_size.as_usize();
        if msg.body.len() > max {
            return Err(CoreError::MessageTooLarge {
                size: msg.body.len(),
                max,
            });
        }
        let m = Arc::make_mut(&mut msg);
        m.origin = origin;
        self.shared.assign_id(m);
        self.publish_routed(msg, Some(memo))
    }

    /// Routes and enqueues a message whose id is assigned.
    #[inline]
    fn publish_assigned(&self, msg: Arc<Message>) -> CoreResult<Published> {
        self.publish_routed(msg, None)
    }

    #[inline]
    fn publish_routed(
        &self,
        msg: Arc<Message>,
        memo: Option<&mut RouteMemo>,
    ) -> CoreResult<Published> {
        let s = &*self.shared;
        let mut fx = Effects::default();
        let mut out = Published {
            id: msg.id,
            routed: 0,
            rejected: 0,
            completion: None,
            pressure: None,
        };
        match memo {
            Some(memo) if msg.namespace == Namespace::Multicast => {
                s.route_multicast_memo(&msg, memo, &mut out, &mut fx);
            }
            _ => s.route_and_enqueue(&msg, &mut out, &mut fx)?,
        }
        if fx.journaled
            && let Some(store) = &s.store
        {
            out.completion = Some(store.sync());
        }
        if out.is_unroutable() {
            s.counters.unroutable.fetch_add(1, Ordering::Relaxed);
        }
        if !fx.is_empty() {
            s.apply(fx);
        }
        Ok(out)
    }

    /// Declares a queue owned by `owner` (exclusive queues) — see
    /// [`DeclareQueue`]. Errors: `NotFound` (passive), `ResourceLocked`
    /// (another connection's exclusive queue), `PreconditionFailed`
    /// (inequivalent redeclare), `AccessRefused` (`amq.` names),
    /// `ResourceLimit`.
    pub fn declare_queue(
        &self,
        req: DeclareQueue,
        owner: Option<ConnId>,
    ) -> CoreResult<DeclaredQueue> {
        self.shared.declare_queue(req, owner).map(|(d, _)| d)
    }

    pub(crate) fn declare_queue_arc(
        &self,
        req: DeclareQueue,
        owner: Option<ConnId>,
    ) -> CoreResult<(DeclaredQueue, Arc<Queue>)> {
        self.shared.declare_queue(req, owner)
    }

    /// Deletes a queue. `if_unused`/`if_empty` refuse (PreconditionFailed)
    /// when it has consumers / messages. Returns the number of messages it
    /// held. Its consumers are cancelled (their sessions get
    /// [`SessionEvent::ConsumerCancelled`]).
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        by: Option<ConnId>,
    ) -> CoreResult<u64> {
        let q = self
            .shared
            .queue(name)
            .ok_or_else(|| CoreError::not_found("queue", name))?;
        self.shared.check_owner(&q, by)?;
        {
            let st = q.lock();
            if if_unused && Queue::consumer_count(&st) > 0 {
                return Err(CoreError::PreconditionFailed(format!(
                    "queue '{name}' in use"
                )));
            }
            if if_empty && Queue::message_count(&st) > 0 {
                return Err(CoreError::PreconditionFailed(format!(
                    "queue '{name}' is not empty"
                )));
            }
        }
        Ok(self.shared.delete_queue(&q))
    }

    /// Removes every ready message of a queue; returns how many.
    pub fn purge_queue(&self, name: &str, by: Option<ConnId>) -> CoreResult<u64> {
        let q = self
            .shared
            .queue(name)
            .ok_or_else(|| CoreError::not_found("queue", name))?;
        self.shared.check_owner(&q, by)?;
        let mut fx = Effects::default();
        let n = q.purge(&mut q.lock(), &mut fx);
        self.shared.apply(fx);
        Ok(n)
    }

    /// A snapshot of one queue.
    pub fn queue_info(&self, name: &str) -> Option<QueueInfo> {
        let q = self.shared.queue(name)?;
        let st = q.lock();
        Some(q.info(&st))
    }

    /// Snapshots of every queue.
    pub fn queues(&self) -> Vec<QueueInfo> {
        let list: Vec<Arc<Queue>> = self.shared.queues.read().values().cloned().collect();
        list.iter().map(|q| q.info(&q.lock())).collect()
    }

    /// Declares an exchange. `amq.`-prefixed names are reserved
    /// (AccessRefused) unless the declaration is passive or matches the
    /// built-in; a redeclare with another type or options is
    /// PreconditionFailed.
    pub fn declare_exchange(
        &self,
        name: &str,
        kind: ExchangeKind,
        options: ExchangeOptions,
        passive: bool,
    ) -> CoreResult<()> {
        self.shared.declare_exchange(name, kind, options, passive)
    }

    /// Deletes an exchange (`if_unused`: only when it has no bindings).
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> CoreResult<()> {
        self.shared.delete_exchange(name, if_unused)
    }

    /// A snapshot of one exchange (`""` is the anycast namespace and has none).
    pub fn exchange_info(&self, name: &str) -> Option<ExchangeInfo> {
        self.shared.exchange(name).map(|e| e.info())
    }

    /// Snapshots of every exchange.
    pub fn exchanges(&self) -> Vec<ExchangeInfo> {
        self.shared
            .exchanges
            .read()
            .values()
            .map(|e| e.info())
            .collect()
    }

    /// Binds queue `queue` to `exchange` with `key` (and, for headers
    /// exchanges, `arguments`).
    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        arguments: &Headers,
        by: Option<ConnId>,
    ) -> CoreResult<()> {
        let q = self
            .shared
            .queue(queue)
            .ok_or_else(|| CoreError::not_found("queue", queue))?;
        self.shared.check_owner(&q, by)?;
        let ex = self.shared.bindable_exchange(exchange)?;
        self.shared.bind_queue(&q, &ex, key, arguments)
    }

    /// Removes a queue binding. Unbinding something that is not bound is not
    /// an error (RabbitMQ behaviour).
    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        arguments: &Headers,
        by: Option<ConnId>,
    ) -> CoreResult<()> {
        let q = self
            .shared
            .queue(queue)
            .ok_or_else(|| CoreError::not_found("queue", queue))?;
        self.shared.check_owner(&q, by)?;
        let ex = self.shared.bindable_exchange(exchange)?;
        self.shared.unbind_queue(&q, &ex, key, arguments);
        Ok(())
    }

    /// Binds exchange `destination` to exchange `source`: messages routed by
    /// `source` with a matching key are routed on by `destination`.
    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: &str,
        arguments: &Headers,
    ) -> CoreResult<()> {
        let src = self.shared.bindable_exchange(source)?;
        let dst = self.shared.bindable_exchange(destination)?;
        if src.bind(Dest::Exchange(dst.clone()), key, arguments)? {
            if let Some(store) = &self.shared.store
                && (src.builtin || src.options.durable)
                && (dst.builtin || dst.options.durable)
            {
                let payload = store::binding_payload(src.id, None, Some(dst.id), key, arguments);
                store
                    .bind(payload)
                    .map_err(|e| CoreError::Storage(e.to_string()))?;
            }
            dst.add_inbound(src, Str::from(key), arguments.clone());
        }
        Ok(())
    }

    /// Removes an exchange-to-exchange binding.
    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: &str,
        arguments: &Headers,
    ) -> CoreResult<()> {
        let src = self.shared.bindable_exchange(source)?;
        let dst = self.shared.bindable_exchange(destination)?;
        if src.unbind(&Dest::Exchange(dst.clone()), key, arguments) {
            if let Some(store) = &self.shared.store {
                let payload = store::binding_payload(src.id, None, Some(dst.id), key, arguments);
                if let Err(e) = store.unbind(&payload) {
                    tracing::error!(error = %e, "cannot journal an unbind");
                }
            }
            dst.remove_inbound(&src, key, arguments);
            self.shared.maybe_auto_delete_exchange(&src);
        }
        Ok(())
    }

    /// Bindings of a queue as (exchange, key).
    pub fn queue_bindings(&self, queue: &str) -> Vec<(Str, Str)> {
        self.shared.queue(queue).map_or_else(Vec::new, |q| {
            q.bindings
                .lock()
                .iter()
                .map(|b| (b.exchange.name.clone(), b.key.clone()))
                .collect()
        })
    }

    /// True when an exchange (or the anycast namespace `""`) exists.
    pub fn exchange_exists(&self, name: &str) -> bool {
        name.is_empty() || self.shared.exchange(name).is_some()
    }

    /// The message and byte totals of `protocol`, for adapters that count
    /// without a [`crate::Session`] (sessions count on their own; see
    /// [`crate::traffic`]).
    pub fn traffic(&self, protocol: &'static str) -> Arc<crate::Traffic> {
        self.shared.traffic.get(protocol)
    }

    /// Messages and body bytes in and out of every protocol that opened a
    /// session or asked for [`Broker::traffic`], by protocol name.
    pub fn traffic_stats(&self) -> Vec<(&'static str, crate::TrafficStats)> {
        self.shared.traffic.stats()
    }

    /// True when a queue called `name` exists.
    pub fn queue_exists(&self, name: &str) -> bool {
        self.shared.queues.read().contains_key(name)
    }

    /// Broker-wide counters and gauges.
    pub fn stats(&self) -> BrokerStats {
        let s = &*self.shared;
        let mut stats = BrokerStats {
            // Every published message (client or dead letter) took one id.
            published: s.counters.next_message.load(Ordering::Relaxed),
            unroutable: s.counters.unroutable.load(Ordering::Relaxed),
            queue_totals: *s.retired.lock(),
            ..Default::default()
        };
        for q in self.queues() {
            stats.queues += 1;
            stats.consumers += q.consumers;
            stats.messages_ready += q.messages;
            stats.messages_unacked += q.unacked;
            add_stats(&mut stats.queue_totals, &q.stats);
        }
        let exchanges: Vec<Arc<Exchange>> = s.exchanges.read().values().cloned().collect();
        stats.exchanges = exchanges.len() as u64;
        for e in exchanges {
            let c = e.cache_stats();
            stats.route_cache_hits += c.hits;
            stats.route_cache_misses += c.misses;
        }
        stats
    }
}

impl Effects {
    pub(crate) fn is_empty(&self) -> bool {
        self.dead.is_empty() && self.delete.is_empty()
    }
}

impl Shared {
    pub(crate) fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.read().get(name).cloned()
    }

    pub(crate) fn exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        if name == "amq.topic" {
            return Some(self.multicast.clone());
        }
        self.exchanges.read().get(name).cloned()
    }

    fn bindable_exchange(&self, name: &str) -> CoreResult<Arc<Exchange>> {
        if name.is_empty() {
            return Err(CoreError::AccessRefused(
                "operation not permitted on the default exchange".to_owned(),
            ));
        }
        self.exchange(name)
            .ok_or_else(|| CoreError::not_found("exchange", name))
    }

    pub(crate) fn check_owner(&self, q: &Queue, by: Option<ConnId>) -> CoreResult<()> {
        if q.options.exclusive
            && let Some(owner) = q.owner()
            && by.is_some_and(|b| b != owner)
        {
            return Err(CoreError::ResourceLocked(format!(
                "cannot obtain exclusive access to locked queue '{}'",
                q.name
            )));
        }
        Ok(())
    }

    /// The multicast arm of [`Shared::route_and_enqueue`] with the router's
    /// result for the address taken from `memo` while the subscription set
    /// is unchanged (no router lookup, no shared reference count touched).
    fn route_multicast_memo(
        &self,
        msg: &Arc<Message>,
        memo: &mut RouteMemo,
        out: &mut Published,
        fx: &mut Effects,
    ) {
        let generation = self.multicast.topic_generation();
        let dests = match &memo.0 {
            Some((address, g, dests))
                if *g == generation
                    && (Arc::ptr_eq(address, &msg.address) || **address == *msg.address) =>
            {
                dests
            }
            _ => {
                let (dests, g) = self.multicast.route_topic_versioned(&msg.address);
                &memo.0.insert((msg.address.clone(), g, dests)).2
            }
        };
        self.enqueue_multicast(dests, msg, out, fx);
    }

    /// Enqueues `msg` in the queues the multicast router's `dests` name:
    /// directly when they are all queues, else through the exchanges bound
    /// among them.
    fn enqueue_multicast(
        &self,
        dests: &[Dest],
        msg: &Arc<Message>,
        out: &mut Published,
        fx: &mut Effects,
    ) {
        if dests.iter().all(|d| matches!(d, Dest::Queue(_))) {
            for d in dests {
                if let Dest::Queue(q) = d {
                    self.enqueue_one(&q.0, msg, out, fx);
                }
            }
        } else {
            let queues = self.resolve_dests(dests.to_vec(), msg);
            for q in &queues {
                self.enqueue_one(q, msg, out, fx);
            }
        }
    }

    /// Routes `msg` and enqueues it in every queue it reaches.
    fn route_and_enqueue(
        &self,
        msg: &Arc<Message>,
        out: &mut Published,
        fx: &mut Effects,
    ) -> CoreResult<()> {
        match &msg.namespace {
            Namespace::Multicast => {
                let dests = self.multicast.route_topic(&msg.address);
                self.enqueue_multicast(&dests, msg, out, fx);
            }
            Namespace::Anycast => {
                if let Some(q) = self.queue(&msg.address) {
                    self.enqueue_one(&q, msg, out, fx);
                }
            }
            Namespace::Exchange(name) => {
                let ex = self
                    .exchange(name)
                    .ok_or_else(|| CoreError::not_found("exchange", name))?;
                if ex.options.internal && msg.origin != Origin::INTERNAL {
                    return Err(CoreError::AccessRefused(format!(
                        "cannot publish to internal exchange '{name}'"
                    )));
                }
                let mut dests = Vec::new();
                ex.route(msg, &mut dests);
                let queues = self.resolve_dests(dests, msg);
                for q in &queues {
                    self.enqueue_one(q, msg, out, fx);
                }
            }
        }
        Ok(())
    }

    /// The queues a message reaches (for transactions, which lock them all
    /// before enqueueing).
    pub(crate) fn resolve(&self, msg: &Message) -> CoreResult<Vec<Arc<Queue>>> {
        Ok(match &msg.namespace {
            Namespace::Multicast => {
                self.resolve_dests(self.multicast.route_topic(&msg.address).to_vec(), msg)
            }
            Namespace::Anycast => self.queue(&msg.address).into_iter().collect(),
            Namespace::Exchange(name) => {
                let ex = self
                    .exchange(name)
                    .ok_or_else(|| CoreError::not_found("exchange", name))?;
                let mut dests = Vec::new();
                ex.route(msg, &mut dests);
                self.resolve_dests(dests, msg)
            }
        })
    }

    /// Follows exchange-to-exchange bindings to the set of queues, each once.
    fn resolve_dests(&self, mut pending: Vec<Dest>, msg: &Message) -> Vec<Arc<Queue>> {
        let mut queues: Vec<Arc<Queue>> = Vec::new();
        let mut seen: SmallVec<[u64; 8]> = SmallVec::new();
        while let Some(d) = pending.pop() {
            match d {
                Dest::Queue(QueueRef(q)) => {
                    if !queues.iter().any(|x| x.id == q.id) {
                        queues.push(q);
                    }
                }
                Dest::Exchange(e) => {
                    if !seen.contains(&e.id) {
                        seen.push(e.id);
                        e.route(msg, &mut pending);
                    }
                }
            }
        }
        queues
    }

    #[inline]
    fn enqueue_one(
        &self,
        q: &Arc<Queue>,
        msg: &Arc<Message>,
        out: &mut Published,
        fx: &mut Effects,
    ) {
        let r = {
            let mut st = q.lock();
            q.enqueue(&mut st, msg, fx)
        };
        if out.pressure.is_none() && q.is_pressured() {
            out.pressure = Some(Pressure { queue: q.clone() });
        }
        match r {
            Enqueued::Accepted => out.routed += 1,
            Enqueued::Rejected => out.rejected += 1,
            Enqueued::Skipped => {}
        }
    }

    /// Enqueues into a queue whose lock the caller holds (transactions).
    pub(crate) fn enqueue_locked(
        &self,
        q: &Arc<Queue>,
        st: &mut crate::queue::State,
        msg: &Arc<Message>,
        out: &mut Published,
        fx: &mut Effects,
    ) {
        let r = q.enqueue(st, msg, fx);
        if out.pressure.is_none() && q.is_pressured() {
            out.pressure = Some(Pressure { queue: q.clone() });
        }
        match r {
            Enqueued::Accepted => out.routed += 1,
            Enqueued::Rejected => out.rejected += 1,
            Enqueued::Skipped => {}
        }
    }

    pub(crate) fn count_published(&self, p: &Published) {
        if p.is_unroutable() {
            self.counters.unroutable.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[inline]
    pub(crate) fn assign_id(&self, msg: &mut Message) {
        let id = self.counters.next_message.fetch_add(1, Ordering::Relaxed) + 1;
        if id >= self.id_limit.load(Ordering::Relaxed) {
            self.reserve_ids(id);
        }
        msg.id = MessageId(id);
    }

    /// Journals the next block of message ids (rare: once per million).
    #[cold]
    fn reserve_ids(&self, id: u64) {
        const BLOCK: u64 = 1 << 20;
        let _g = self.id_lock.lock();
        if id < self.id_limit.load(Ordering::Acquire) {
            return;
        }
        let Some(store) = &self.store else { return };
        let limit = id + BLOCK;
        if let Err(e) = store.declare(Decl::Ids, store::ID_BLOCK, limit.to_le_bytes().to_vec()) {
            tracing::error!(error = %e, "cannot reserve message ids in the journal");
        }
        self.id_limit.store(limit, Ordering::Release);
    }

    /// Applies effects gathered under queue locks. Dead letters can cause
    /// more effects (their target overflows); those are applied in turn,
    /// with a bound so a misconfigured cycle cannot spin.
    pub(crate) fn apply(&self, fx: Effects) {
        let mut work = fx;
        for _round in 0..64 {
            if work.is_empty() {
                return;
            }
            let mut next = Effects::default();
            for q in std::mem::take(&mut work.delete) {
                self.delete_queue(&q);
            }
            for d in std::mem::take(&mut work.dead) {
                self.dead_letter(d, &mut next);
            }
            work = next;
        }
        if !work.dead.is_empty() {
            tracing::warn!(
                dropped = work.dead.len(),
                "dead-letter chain too deep; dropping the rest"
            );
        }
    }

    fn dead_letter(&self, d: DeadLetter, fx: &mut Effects) {
        let Some(target) = d.target else { return };
        let old = &d.message;
        let reason = d.reason.as_str();
        let mut headers = old.headers.clone();
        // x-death, as RabbitMQ writes it: newest (queue, reason) first, with a count.
        let mut deaths: Vec<Value> = match headers.get("x-death") {
            Some(Value::List(l)) => l.to_vec(),
            _ => Vec::new(),
        };
        let same = |v: &Value, field: &str, want: &str| match v {
            Value::Map(m) => m.get(field).and_then(Value::as_str) == Some(want),
            _ => false,
        };
        // Cycle: already dead-lettered from this queue with no rejection on
        // the way; RabbitMQ drops the message rather than loop forever.
        if d.reason != crate::queue::DeathReason::Rejected
            && deaths.iter().any(|v| same(v, "queue", &d.queue))
            && !deaths.iter().any(|v| same(v, "reason", "rejected"))
        {
            tracing::debug!(queue = %d.queue, "dead-letter cycle; message dropped");
            return;
        }
        let mut count = 1i64;
        if let Some(pos) = deaths
            .iter()
            .position(|v| same(v, "queue", &d.queue) && same(v, "reason", reason))
            && let Value::Map(m) = deaths.remove(pos)
        {
            count = m.get("count").and_then(Value::as_i64).unwrap_or(0) + 1;
        }
        let mut entry = Headers::new();
        entry.push("count", Value::I64(count));
        entry.push("reason", reason);
        entry.push("queue", &*d.queue);
        entry.push("time", Value::Timestamp(now_millis() / 1000));
        entry.push("exchange", old.namespace.exchange_name());
        entry.push(
            "routing-keys",
            Value::List(Arc::from(vec![Value::String(old.address.clone())])),
        );
        deaths.insert(0, Value::Map(Arc::new(entry)));
        headers.set("x-death", Value::List(Arc::from(deaths)));
        if headers.get("x-first-death-queue").is_none() {
            headers.set("x-first-death-queue", &*d.queue);
            headers.set("x-first-death-reason", reason);
            headers.set("x-first-death-exchange", old.namespace.exchange_name());
        }
        headers.set("x-last-death-queue", &*d.queue);
        headers.set("x-last-death-reason", reason);
        headers.set("x-last-death-exchange", old.namespace.exchange_name());

        let mut properties = old.properties.clone();
        properties.expires_at = None;
        let mut msg = Message {
            id: MessageId::default(),
            namespace: target.namespace.clone(),
            address: target
                .routing_key
                .clone()
                .unwrap_or_else(|| old.address.clone()),
            body: old.body.clone(),
            properties,
            headers,
            origin: Origin::INTERNAL,
        };
        self.assign_id(&mut msg);
        let msg = Arc::new(msg);
        let mut out = Published {
            id: msg.id,
            routed: 0,
            rejected: 0,
            completion: None,
            pressure: None,
        };
        if let Err(e) = self.route_and_enqueue(&msg, &mut out, fx) {
            tracing::debug!(error = %e, queue = %d.queue, "dead letter could not be routed");
        }
        self.count_published(&out);
    }

    fn declare_queue(
        &self,
        req: DeclareQueue,
        owner: Option<ConnId>,
    ) -> CoreResult<(DeclaredQueue, Arc<Queue>)> {
        let counts = |q: &Arc<Queue>, created: bool| {
            let st = q.lock();
            DeclaredQueue {
                name: q.name.clone(),
                messages: Queue::message_count(&st),
                consumers: Queue::consumer_count(&st),
                created,
            }
        };
        if req.passive {
            let name = req.name.as_deref().unwrap_or("");
            let q = self
                .queue(name)
                .ok_or_else(|| CoreError::not_found("queue", name))?;
            self.check_owner(&q, owner)?;
            return Ok((counts(&q, false), q));
        }
        let name: Str = match req.name {
            Some(n) if !n.is_empty() => {
                if n.starts_with("amq.") && self.queue(&n).is_none() {
                    return Err(CoreError::AccessRefused(format!(
                        "queue name '{n}' contains reserved prefix 'amq.*'"
                    )));
                }
                n
            }
            _ => Str::from(generated_name("amq.gen-").as_str()),
        };
        if let Some(q) = self.queue(&name) {
            self.check_owner(&q, owner)?;
            check_equivalent(&q, &req.options)?;
            return Ok((counts(&q, false), q));
        }
        let mut options = req.options;
        let mut dlq_to_create = None;
        if let Some(policy) = self.config.policy_for(&name) {
            apply_policy(&mut options, policy);
            if let Some(dlq) = &policy.dlq
                && options.dead_letter.is_none()
                && **dlq != *name
            {
                options.dead_letter = Some(DeadLetterTarget {
                    namespace: Namespace::Anycast,
                    routing_key: Some(Str::from(dlq.as_str())),
                });
                dlq_to_create = Some(dlq.clone());
            }
        }
        let q = {
            let mut map = self.queues.write();
            if let Some(q) = map.get(&name) {
                let q = q.clone();
                drop(map);
                self.check_owner(&q, owner)?;
                check_equivalent(&q, &options)?;
                return Ok((counts(&q, false), q));
            }
            if map.len() as u64 >= self.config.limits.max_queues {
                return Err(CoreError::ResourceLimit(format!(
                    "queue limit of {} reached",
                    self.config.limits.max_queues
                )));
            }
            let id = QueueId(self.counters.next_queue.fetch_add(1, Ordering::Relaxed) + 1);
            let owner = if options.exclusive || options.no_local {
                owner
            } else {
                None
            };
            let persistence = match &self.store {
                Some(store) if options.durable && !options.exclusive => {
                    let sid = self.next_store_queue.fetch_add(1, Ordering::Relaxed) + 1;
                    Some((sid, store.clone()))
                }
                _ => None,
            };
            let page_after = self.config.limits.queue_memory.bytes();
            let q = Arc::new(Queue::new(
                id,
                name.clone(),
                options,
                owner,
                self.me.clone(),
                persistence,
                page_after,
            ));
            if let Some(store) = &q.store {
                let payload = recovery::queue_payload(q.store_id, &q.name, &q.options);
                if let Err(e) = store.declare(Decl::Queue(q.store_id), store::QUEUE, payload) {
                    return Err(CoreError::Storage(e.to_string()));
                }
            }
            map.insert(name.clone(), q.clone());
            q
        };
        if let Some(dlq) = dlq_to_create
            && self.queue(&dlq).is_none()
        {
            let _ = self.declare_queue(
                DeclareQueue {
                    name: Some(Str::from(dlq.as_str())),
                    options: QueueOptions {
                        durable: true,
                        ..Default::default()
                    },
                    passive: false,
                },
                None,
            );
        }
        Ok((counts(&q, true), q))
    }

    pub(crate) fn delete_queue(&self, q: &Arc<Queue>) -> u64 {
        {
            let mut map = self.queues.write();
            if map.get(&q.name).is_some_and(|x| Arc::ptr_eq(x, q)) {
                map.remove(&q.name);
            }
        }
        let mut fx = Effects::default();
        let (count, consumers, stats) = {
            let mut st = q.lock();
            if Queue::is_deleted(&st) {
                return 0;
            }
            let count = Queue::message_count(&st);
            let consumers = q.mark_deleted(&mut st, &mut fx);
            (count, consumers, q.info(&st).stats)
        };
        add_stats(&mut self.retired.lock(), &stats);
        for (id, outbox, _) in consumers {
            if !outbox.is_closed() {
                outbox.push_event(SessionEvent::ConsumerCancelled(id));
            }
        }
        let bindings = std::mem::take(&mut *q.bindings.lock());
        let dest = Dest::Queue(QueueRef(q.clone()));
        for b in bindings {
            b.exchange.unbind(&dest, &b.key, &b.arguments);
            self.maybe_auto_delete_exchange(&b.exchange);
        }
        if let Some(store) = &q.store {
            let id = q.store_id;
            if let Err(e) = store.undeclare(Decl::Queue(id), store::QUEUE_DEL, &id.to_le_bytes()) {
                tracing::error!(queue = %q.name, error = %e, "cannot journal a queue deletion");
            }
            // Its bindings' records refer to an id never used again.
            store.forget_bindings(|p| recovery::binding_refers_to_queue(p, id));
        }
        self.apply(fx);
        count
    }

    fn bind_queue(
        &self,
        q: &Arc<Queue>,
        ex: &Arc<Exchange>,
        key: &str,
        args: &Headers,
    ) -> CoreResult<()> {
        if ex.bind(Dest::Queue(QueueRef(q.clone())), key, args)? {
            q.bindings.lock().push(BindingKey {
                exchange: ex.clone(),
                key: Str::from(key),
                arguments: args.clone(),
            });
            if let Some(store) = &q.store
                && (ex.builtin || ex.options.durable)
            {
                let payload = store::binding_payload(ex.id, Some(q.store_id), None, key, args);
                store
                    .bind(payload)
                    .map_err(|e| CoreError::Storage(e.to_string()))?;
            }
        }
        Ok(())
    }

    fn unbind_queue(&self, q: &Arc<Queue>, ex: &Arc<Exchange>, key: &str, args: &Headers) {
        if ex.unbind(&Dest::Queue(QueueRef(q.clone())), key, args) {
            q.bindings.lock().retain(|b| {
                !(Arc::ptr_eq(&b.exchange, ex) && &*b.key == key && b.arguments == *args)
            });
            if let Some(store) = &q.store {
                let payload = store::binding_payload(ex.id, Some(q.store_id), None, key, args);
                if let Err(e) = store.unbind(&payload) {
                    tracing::error!(queue = %q.name, error = %e, "cannot journal an unbind");
                }
            }
            self.maybe_auto_delete_exchange(ex);
        }
    }

    /// Binds a queue to the multicast namespace (subscriptions).
    pub(crate) fn bind_multicast(&self, q: &Arc<Queue>, filter: &str) -> CoreResult<()> {
        let ex = self.multicast.clone();
        self.bind_queue(q, &ex, filter, &Headers::new())
    }

    fn maybe_auto_delete_exchange(&self, ex: &Arc<Exchange>) {
        if ex.options.auto_delete && !ex.builtin && ex.binding_count() == 0 {
            let _ = self.delete_exchange(&ex.name, false);
        }
    }

    fn declare_exchange(
        &self,
        name: &str,
        kind: ExchangeKind,
        options: ExchangeOptions,
        passive: bool,
    ) -> CoreResult<()> {
        if name.is_empty() {
            if passive {
                return Ok(());
            }
            return Err(CoreError::AccessRefused(
                "operation not permitted on the default exchange".to_owned(),
            ));
        }
        let existing = self.exchange(name);
        if passive {
            return existing
                .map(|_| ())
                .ok_or_else(|| CoreError::not_found("exchange", name));
        }
        if let Some(ex) = existing {
            if ex.kind != kind {
                return Err(CoreError::PreconditionFailed(format!(
                    "inequivalent arg 'type' for exchange '{name}': received '{}' but current is '{}'",
                    kind.as_str(),
                    ex.kind.as_str()
                )));
            }
            if ex.options.durable != options.durable
                || ex.options.auto_delete != options.auto_delete
                || ex.options.internal != options.internal
            {
                return Err(CoreError::PreconditionFailed(format!(
                    "inequivalent arg 'durable', 'auto_delete' or 'internal' for exchange '{name}'"
                )));
            }
            return Ok(());
        }
        if name.starts_with("amq.") {
            return Err(CoreError::AccessRefused(format!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let mut map = self.exchanges.write();
        if map.contains_key(name) {
            return Ok(());
        }
        let id = self.counters.next_exchange.fetch_add(1, Ordering::Relaxed) + 1;
        let ex = Arc::new(Exchange::new(
            id,
            Str::from(name),
            kind,
            options,
            false,
            self.config.route_cache_capacity,
        ));
        if let Some(store) = &self.store
            && ex.options.durable
        {
            let payload = recovery::exchange_payload(&ex);
            store
                .declare(Decl::Exchange(id), store::EXCHANGE, payload)
                .map_err(|e| CoreError::Storage(e.to_string()))?;
        }
        map.insert(Str::from(name), ex);
        Ok(())
    }

    fn delete_exchange(&self, name: &str, if_unused: bool) -> CoreResult<()> {
        let ex = self
            .exchange(name)
            .ok_or_else(|| CoreError::not_found("exchange", name))?;
        if ex.builtin {
            return Err(CoreError::AccessRefused(format!(
                "cannot delete built-in exchange '{name}'"
            )));
        }
        if if_unused && ex.binding_count() > 0 {
            return Err(CoreError::PreconditionFailed(format!(
                "exchange '{name}' in use"
            )));
        }
        {
            let mut map = self.exchanges.write();
            if map.get(name).is_some_and(|x| Arc::ptr_eq(x, &ex)) {
                map.remove(name);
            } else {
                return Ok(());
            }
        }
        for (dest, key, args) in ex.bindings() {
            ex.unbind(&dest, &key, &args);
            match dest {
                Dest::Queue(QueueRef(q)) => q.bindings.lock().retain(|b| {
                    !(Arc::ptr_eq(&b.exchange, &ex) && b.key == key && b.arguments == args)
                }),
                Dest::Exchange(d) => d.remove_inbound(&ex, &key, &args),
            }
        }
        for (src, key, args) in ex.take_inbound() {
            src.unbind(&Dest::Exchange(ex.clone()), &key, &args);
        }
        if let Some(store) = &self.store
            && ex.options.durable
        {
            let id = ex.id;
            if let Err(e) =
                store.undeclare(Decl::Exchange(id), store::EXCHANGE_DEL, &id.to_le_bytes())
            {
                tracing::error!(exchange = %ex.name, error = %e, "cannot journal an exchange deletion");
            }
            store.forget_bindings(|p| recovery::binding_refers_to_exchange(p, id));
        }
        Ok(())
    }

    /// One sweep: expire messages, delete queues unused past `expires`.
    fn sweep(&self) {
        let now = now_millis();
        let candidates: Vec<Arc<Queue>> = self
            .queues
            .read()
            .values()
            .filter(|q| q.has_expiry() || q.may_hold_expiring())
            .cloned()
            .collect();
        for q in candidates {
            let mut fx = Effects::default();
            let delete = {
                let mut st = q.lock();
                q.expire(&mut st, now, &mut fx);
                q.unused_expired(&st, now)
            };
            if delete {
                fx.delete.push(q.clone());
            }
            self.apply(fx);
        }
    }
}

/// A unique, unguessable name: `prefix` + 32 hex digits from the process's
/// random hash keys and a counter.
pub(crate) fn generated_name(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
    h.write_u64(now_millis());
    let a = h.finish();
    h.write_u64(a);
    let b = h.finish();
    format!("{prefix}{a:016x}{b:016x}")
}

pub(crate) fn apply_policy(o: &mut QueueOptions, p: &crate::config::AddressPolicy) {
    if o.message_ttl.is_none() {
        o.message_ttl = p.ttl.map(|d| d.get());
    }
    if o.max_length.is_none() {
        o.max_length = p.max_length;
    }
    if o.max_bytes.is_none() {
        o.max_bytes = p.max_bytes.map(|s| s.bytes());
    }
    if o.max_deliveries.is_none() {
        o.max_deliveries = p.max_deliveries;
    }
    if let Some(ov) = p.overflow
        && o.overflow == Overflow::default()
    {
        o.overflow = ov;
    }
}

fn check_equivalent(q: &Queue, wanted: &QueueOptions) -> CoreResult<()> {
    let have = &q.options;
    let field = |f: &str, a: String, b: String| {
        CoreError::PreconditionFailed(format!(
            "inequivalent arg '{f}' for queue '{}': received '{a}' but current is '{b}'",
            q.name
        ))
    };
    if have.durable != wanted.durable {
        return Err(field(
            "durable",
            wanted.durable.to_string(),
            have.durable.to_string(),
        ));
    }
    if have.exclusive != wanted.exclusive {
        return Err(field(
            "exclusive",
            wanted.exclusive.to_string(),
            have.exclusive.to_string(),
        ));
    }
    if have.auto_delete != wanted.auto_delete {
        return Err(field(
            "auto_delete",
            wanted.auto_delete.to_string(),
            have.auto_delete.to_string(),
        ));
    }
    for (k, v) in wanted.arguments.iter() {
        if have.arguments.get(k) != Some(v) {
            return Err(field(k, v.to_text(), describe(have.arguments.get(k))));
        }
    }
    for (k, v) in have.arguments.iter() {
        if wanted.arguments.get(k).is_none() {
            return Err(field(k, "none".to_owned(), v.to_text()));
        }
    }
    Ok(())
}

/// Recovery and compaction support.
impl Shared {
    pub(crate) fn exchange_list(&self) -> Vec<Arc<Exchange>> {
        self.exchanges.read().values().cloned().collect()
    }

    pub(crate) fn insert_exchange(&self, ex: Arc<Exchange>) {
        self.exchanges.write().insert(ex.name.clone(), ex);
    }

    pub(crate) fn set_next_exchange(&self, max: u64) {
        self.counters
            .next_exchange
            .fetch_max(max, Ordering::Relaxed);
    }

    pub(crate) fn set_next_store_queue(&self, max: u64) {
        self.next_store_queue.fetch_max(max, Ordering::Relaxed);
    }

    pub(crate) fn set_next_message(&self, max: u64) {
        self.counters.next_message.fetch_max(max, Ordering::Relaxed);
    }

    /// Creates a recovered durable queue holding `entries`.
    pub(crate) fn restore_queue(
        &self,
        name: Str,
        options: QueueOptions,
        store_id: u64,
        store: &Store,
        entries: impl Iterator<Item = crate::queue::Restored>,
    ) -> Option<Arc<Queue>> {
        let mut map = self.queues.write();
        if map.contains_key(&name) {
            tracing::warn!(queue = %name, "recovered queue clashes with an existing one; skipped");
            return None;
        }
        let id = QueueId(self.counters.next_queue.fetch_add(1, Ordering::Relaxed) + 1);
        let q = Arc::new(Queue::new(
            id,
            name.clone(),
            options,
            None,
            self.me.clone(),
            Some((store_id, store.clone())),
            self.config.limits.queue_memory.bytes(),
        ));
        q.restore(&mut q.lock(), entries);
        map.insert(name, q.clone());
        Some(q)
    }

    /// Re-creates a recovered binding without journaling it again.
    pub(crate) fn restore_queue_binding(
        &self,
        q: &Arc<Queue>,
        ex: &Arc<Exchange>,
        key: &str,
        args: &Headers,
    ) -> bool {
        match ex.bind(Dest::Queue(QueueRef(q.clone())), key, args) {
            Ok(_) => {
                q.bindings.lock().push(BindingKey {
                    exchange: ex.clone(),
                    key: Str::from(key),
                    arguments: args.clone(),
                });
                true
            }
            Err(_) => false,
        }
    }

    pub(crate) fn restore_exchange_binding(
        &self,
        src: &Arc<Exchange>,
        dst: &Arc<Exchange>,
        key: &str,
        args: &Headers,
    ) -> bool {
        match src.bind(Dest::Exchange(dst.clone()), key, args) {
            Ok(_) => {
                dst.add_inbound(src.clone(), Str::from(key), args.clone());
                true
            }
            Err(_) => false,
        }
    }

    /// One compaction pass: segments whose live data fell under half are
    /// emptied — live records copied to the tail under the locks that
    /// order them, tombstones moved by the journal — so they can be deleted.
    pub(crate) fn compact(&self) {
        let Some(store) = &self.store else { return };
        let segments = store.journal.sparse_segments(0.5);
        if segments.is_empty() {
            return;
        }
        let mut moved = match store.relocate_metadata(&segments) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "compaction stopped");
                return;
            }
        };
        let queues: Vec<Arc<Queue>> = self
            .queues
            .read()
            .values()
            .filter(|q| q.store.is_some())
            .cloned()
            .collect();
        for q in queues {
            moved += q.relocate(&mut q.lock(), &segments);
        }
        let mut tombstones = 0;
        for seg in &segments {
            match store.journal.compact_tombstones(*seg) {
                Ok(n) => tombstones += n,
                Err(e) => {
                    tracing::warn!(segment = seg, error = %e, "compaction could not move tombstones")
                }
            }
        }
        tracing::debug!(
            segments = segments.len(),
            moved,
            tombstones,
            "journal compaction"
        );
    }
}
