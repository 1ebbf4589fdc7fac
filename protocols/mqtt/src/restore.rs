//! Persistent sessions after a broker restart.
//!
//! Runs once, after the journal has been recovered and before any MQTT
//! listener accepts a connection ([`crate::MqttAdapter`]'s
//! `ProtocolAdapter::recovered`). For every session record (see
//! [`crate::persist`]):
//!
//! * a session whose expiry passed while the broker was down is deleted
//!   now — its queue, its state — and its delayed will, if it had one, is
//!   published (the session ended);
//! * every other one is parked in the client registry exactly as a session
//!   whose connection has just ended: subscriptions with their options and
//!   identifiers, QoS 2 packet identifiers, identifiers to reuse, a delayed
//!   will; its expiry timer and will timer are re-armed for the time left,
//!   counted from when its last connection ended (wall clock). A session a
//!   connection held when the broker stopped without saying so (a crash)
//!   counts as left at the restart.
//!
//! The record and the queue's bindings are reconciled: a subscription in
//! the record whose binding is missing is bound again; a binding the record
//! does not name (a SUBSCRIBE whose record had not reached the disk) is
//! kept with default options (granted QoS 2). A session queue without a
//! readable record (unknown format version, corrupt, or left by a version
//! that kept none) gets the same default subscriptions and the longest
//! expiry allowed, `max_session_expiry`, counted from the restart.

use crate::config::MqttConfig;
use crate::driver::{
    SCOPE, SESSION_QUEUE_PREFIX, Timers, arm, forget, publish_will, save_qos2, subs_from_bindings,
};
use crate::mapping;
use crate::persist::{self, Dir, NEVER, QOS2_SCOPE, Qos2Entry, SESSION_SCOPE, SessionRecord};
use crate::session::{Parked, SessionState, SubEntry};
use crate::topic;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::Broker;
use switchyard_model::{Headers, MessageId, Str, now_millis};

/// What [`restore`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Sessions parked with their saved state.
    pub sessions: usize,
    /// Sessions that expired while the broker was down (deleted).
    pub expired: usize,
    /// Session queues parked with default subscriptions (no usable record).
    pub fallback: usize,
    /// Delayed wills published because their time passed meanwhile.
    pub wills: usize,
}

type Qos2List = Vec<(Dir, u16, Qos2Entry)>;

/// Brings back every persistent session the state store holds (see the
/// module docs). Call once, inside the runtime, before MQTT clients connect.
pub fn restore(broker: &Broker, cfg: &MqttConfig) -> Restored {
    let mut report = Restored::default();
    if broker.journal_stats().is_none() {
        // Nothing outlives the process without a journal.
        return report;
    }
    let now = now_millis();
    let max_expiry = u32::try_from(cfg.max_session_expiry.get().as_secs()).unwrap_or(NEVER);
    let mut qos2: HashMap<String, Qos2List> = HashMap::new();
    for key in broker.state_keys(QOS2_SCOPE) {
        let parsed = persist::parse_qos2_key(&key);
        let entry = broker
            .load_state(QOS2_SCOPE, &key)
            .map(|b| persist::decode_qos2(&b));
        match (parsed, entry) {
            (Some((client, dir, id)), Some(Ok(e))) => {
                qos2.entry(client.to_owned())
                    .or_default()
                    .push((dir, id, e));
            }
            (_, e) => {
                tracing::warn!(
                    key = %key.escape_debug(),
                    error = ?e,
                    "unreadable MQTT QoS 2 state removed"
                );
                broker.delete_state(QOS2_SCOPE, &key);
            }
        }
    }
    let mut seen = HashSet::new();
    for client in broker.state_keys(SESSION_SCOPE) {
        let queue = format!("{SESSION_QUEUE_PREFIX}{client}");
        let q2 = qos2.remove(&client).unwrap_or_default();
        if !broker.queue_exists(&queue) {
            // The queue was deleted and the broker stopped before the
            // record was: the session is over.
            forget(broker, &client);
            continue;
        }
        seen.insert(client.clone());
        let decoded = broker
            .load_state(SESSION_SCOPE, &client)
            .map(|b| persist::decode_session(&b));
        match decoded {
            Some(Ok(rec)) => {
                let ctx = Ctx {
                    broker,
                    now,
                    max_expiry,
                };
                ctx.restore_one(&client, queue, rec, &q2, &mut report);
            }
            Some(Err(e)) => {
                tracing::warn!(
                    client_id = %client,
                    error = %e,
                    "MQTT session state unreadable: its subscriptions are rebuilt from the queue's bindings"
                );
                park_fallback(broker, &client, queue, &q2, now, max_expiry);
                report.fallback += 1;
            }
            None => {}
        }
    }
    for q in broker.queues() {
        let Some(client) = q.name.strip_prefix(SESSION_QUEUE_PREFIX) else {
            continue;
        };
        if seen.contains(client) {
            continue;
        }
        let q2 = qos2.remove(client).unwrap_or_default();
        park_fallback(broker, client, q.name.to_string(), &q2, now, max_expiry);
        report.fallback += 1;
    }
    // Identifiers of sessions that are gone.
    for (client, q2) in qos2 {
        for (dir, id, _) in q2 {
            save_qos2(broker, &client, dir, id, None);
        }
    }
    if report != Restored::default() {
        tracing::info!(
            sessions = report.sessions,
            expired = report.expired,
            fallback = report.fallback,
            wills = report.wills,
            "MQTT persistent sessions restored"
        );
    }
    report
}

/// Splits QoS 2 entries into incoming identifiers and PUBRELs to resend;
/// outgoing identifiers waiting for PUBREC are merged into `reuse`.
fn split_qos2(q2: &Qos2List, reuse: &mut Vec<(MessageId, u16)>) -> (Vec<u16>, Vec<u16>) {
    let mut incoming = Vec::new();
    let mut pubrel = Vec::new();
    for (dir, id, e) in q2 {
        match (dir, e) {
            (Dir::In, _) => incoming.push(*id),
            (Dir::Out, Qos2Entry::AwaitPubComp) => pubrel.push(*id),
            (Dir::Out, Qos2Entry::AwaitPubRec(m)) => {
                if !reuse.iter().any(|(_, p)| p == id) {
                    reuse.push((*m, *id));
                }
            }
            (Dir::Out, Qos2Entry::Incoming) => {}
        }
    }
    (incoming, pubrel)
}

struct Ctx<'a> {
    broker: &'a Broker,
    now: u64,
    max_expiry: u32,
}

impl Ctx<'_> {
    fn restore_one(
        &self,
        client: &str,
        queue: String,
        rec: SessionRecord,
        q2: &Qos2List,
        report: &mut Restored,
    ) {
        let Ctx {
            broker,
            now,
            max_expiry,
        } = *self;
        let expiry = rec.expiry.min(max_expiry);
        // Held by a connection when the broker stopped: left now.
        let left_at = if rec.left_at == 0 { now } else { rec.left_at };
        let elapsed = now.saturating_sub(left_at);
        let mut will = rec.will.as_ref().and_then(|w| {
            let addr = topic::topic_to_address(&w.will.topic).ok()?;
            mapping::will_message(Str::from(addr), &w.will, w.v5, now).ok()
        });
        if expiry != NEVER && elapsed >= u64::from(expiry) * 1000 {
            // Expired while the broker was down: the session ends now.
            let _ = broker.delete_queue(&queue, false, false, None);
            forget(broker, client);
            if let Some(m) = will {
                publish_will(broker, m);
                report.wills += 1;
            }
            report.expired += 1;
            return;
        }

        // The record's subscriptions, reconciled with the queue's bindings.
        let bound: HashSet<String> = broker
            .queue_bindings(&queue)
            .into_iter()
            .filter(|(e, _)| &**e == "amq.topic")
            .map(|(_, k)| k.to_string())
            .collect();
        let mut subs: Vec<(Box<str>, SubEntry)> = Vec::with_capacity(rec.subs.len());
        let mut named = HashSet::new();
        for s in &rec.subs {
            let Ok(filter) = topic::topic_filter(&s.filter) else {
                tracing::warn!(client_id = client, filter = %s.filter, "a saved MQTT subscription has no canonical filter; dropped");
                continue;
            };
            if !bound.contains(filter.as_str())
                && let Err(e) =
                    broker.bind_queue(&queue, "amq.topic", filter.as_str(), &Headers::new(), None)
            {
                tracing::warn!(client_id = client, error = %e, "cannot bind a restored MQTT subscription");
                continue;
            }
            named.insert(filter.as_str().to_owned());
            subs.push((
                s.filter.clone().into_boxed_str(),
                SubEntry {
                    filter,
                    options: s.options,
                    id: s.id,
                    shared: false,
                    consumer: None,
                },
            ));
        }
        for (f, e) in subs_from_bindings(broker, &queue) {
            if !named.contains(e.filter.as_str()) {
                subs.push((f, e));
            }
        }

        let mut reuse = rec.reuse.clone();
        let (incoming, pubrel) = split_qos2(q2, &mut reuse);

        // The delayed will: out now if its delay passed meanwhile.
        let will_delay = rec
            .will
            .as_ref()
            .map(|w| w.will.properties.will_delay_interval.unwrap_or(0));
        let mut will_in = None;
        let mut changed = rec.left_at == 0 || expiry != rec.expiry;
        if let Some(d) = will_delay
            && will.is_some()
            && d < expiry
        {
            let due = u64::from(d) * 1000;
            if elapsed >= due {
                if let Some(m) = will.take() {
                    publish_will(broker, m);
                    report.wills += 1;
                }
                changed = true;
            } else {
                will_in = Some(Duration::from_millis(due - elapsed));
            }
        }
        let stored_will = if will.is_some() { rec.will } else { None };
        let parked = Parked {
            resumed: false,
            expired: false,
            queue: Str::from(queue),
            subs,
            qos2: incoming,
            reuse,
            pubrel,
            will,
            stored_will,
            expiry,
            left_at,
        };
        if changed {
            broker.save_state(
                SESSION_SCOPE,
                client,
                &persist::encode_session(&parked.record()),
            );
        }
        let expiry_in = (expiry != NEVER)
            .then(|| Duration::from_millis((u64::from(expiry) * 1000).saturating_sub(elapsed)));
        park(
            broker,
            client,
            SessionState::new(parked),
            expiry_in,
            will_in,
        );
        report.sessions += 1;
    }
}

/// Parks a session queue without a usable record: default subscriptions
/// from its bindings, the longest expiry allowed from now.
fn park_fallback(
    broker: &Broker,
    client: &str,
    queue: String,
    q2: &Qos2List,
    now: u64,
    max_expiry: u32,
) {
    let subs = subs_from_bindings(broker, &queue);
    let mut reuse = Vec::new();
    let (incoming, pubrel) = split_qos2(q2, &mut reuse);
    let state = SessionState::new(Parked {
        resumed: false,
        expired: false,
        queue: Str::from(queue),
        subs,
        qos2: incoming,
        reuse,
        pubrel,
        will: None,
        stored_will: None,
        expiry: max_expiry,
        left_at: now,
    });
    let expiry_in = (max_expiry != NEVER).then(|| Duration::from_secs(u64::from(max_expiry)));
    park(broker, client, state, expiry_in, None);
}

fn park(
    broker: &Broker,
    client: &str,
    state: Arc<SessionState>,
    expiry: Option<Duration>,
    will: Option<Duration>,
) {
    let claim = broker.clients().claim(SCOPE, client);
    let ticket = claim.release(Some(state.clone()));
    arm(Timers {
        broker: broker.clone(),
        client_id: Str::from(client),
        state,
        ticket,
        expiry,
        will,
        persist: true,
    });
}
