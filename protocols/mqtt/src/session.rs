//! The MQTT session's bookkeeping, without I/O: packet identifiers and the
//! outgoing in-flight window, incoming QoS 2 identifiers, topic aliases both
//! ways, and the state a persistent session leaves behind between
//! connections.
//!
//! Outgoing QoS 1 and 2 (section 4.3):
//!
//! ```text
//! QoS 1:  PUBLISH ──► AwaitPubAck ──PUBACK──► done
//! QoS 2:  PUBLISH ──► AwaitPubRec ──PUBREC──► (PUBREL) AwaitPubComp ──PUBCOMP──► done
//!                                 └─PUBREC ≥ 0x80──► done
//! ```
//!
//! The message leaves its queue (is acknowledged in the core) at PUBACK, or
//! at PUBREC for QoS 2: from then on only the packet identifier is kept, so
//! a message is never delivered twice. Incoming QoS 2 is "method B": the
//! message is routed when PUBLISH arrives and its identifier kept until
//! PUBREL; a PUBLISH repeating a kept identifier is not routed again.

use crate::codec::SubOptions;
use crate::persist::{SessionRecord, StoredSub, StoredWill};
use hashbrown::{HashMap, HashSet};
use parking_lot::Mutex;
use std::sync::Arc;
use switchyard_model::{AddressFilter, ConsumerId, DeliveryTag, Message, MessageId, Str};

type Hasher = foldhash::fast::RandomState;

/// Where an outgoing QoS 1/2 PUBLISH stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutState {
    AwaitPubAck,
    AwaitPubRec,
    AwaitPubComp,
}

/// One outgoing message in flight.
#[derive(Debug, Clone, Copy)]
pub struct InFlight {
    pub state: OutState,
    /// The core delivery to acknowledge when the client has it (`None` for
    /// auto-acknowledged consumers and retained messages).
    pub source: Option<(ConsumerId, DeliveryTag)>,
    pub message: MessageId,
}

/// Outgoing packet identifiers and the in-flight window.
#[derive(Debug, Default)]
pub struct Outbound {
    next: u16,
    pub inflight: HashMap<u16, InFlight, Hasher>,
    /// Identifiers a persistent session used for messages it had in flight
    /// when its last connection ended: reused when they are sent again
    /// (`[MQTT-4.4.0-1]`).
    pub reuse: HashMap<MessageId, u16, Hasher>,
}

impl Outbound {
    /// A free packet identifier (1..=65535), preferring the one `message`
    /// had before a reconnect.
    pub fn allocate(&mut self, message: MessageId) -> Option<u16> {
        if !self.reuse.is_empty()
            && let Some(id) = self.reuse.remove(&message)
            && !self.inflight.contains_key(&id)
        {
            return Some(id);
        }
        if self.inflight.len() >= usize::from(u16::MAX) {
            return None;
        }
        loop {
            self.next = self.next.wrapping_add(1);
            if self.next == 0 {
                continue;
            }
            if !self.inflight.contains_key(&self.next) {
                return Some(self.next);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.inflight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inflight.is_empty()
    }
}

/// Topic aliases a client set towards the server.
#[derive(Debug, Default)]
pub struct InboundAliases {
    slots: Vec<Option<Str>>,
}

impl InboundAliases {
    /// Sets `alias` (1..=max, checked by the caller) to `address`.
    pub fn set(&mut self, alias: u16, address: Str) {
        let i = usize::from(alias);
        if self.slots.len() <= i {
            self.slots.resize(i + 1, None);
        }
        if let Some(s) = self.slots.get_mut(i) {
            *s = Some(address);
        }
    }

    pub fn get(&self, alias: u16) -> Option<&Str> {
        self.slots.get(usize::from(alias)).and_then(Option::as_ref)
    }
}

/// Topic aliases the server set towards a client: the first topics sent
/// get the aliases, until they run out (no replacement).
#[derive(Debug, Default)]
pub struct OutboundAliases {
    pub max: u16,
    map: HashMap<Str, u16, Hasher>,
}

impl OutboundAliases {
    pub fn new(max: u16) -> Self {
        OutboundAliases {
            max,
            map: HashMap::default(),
        }
    }

    /// The alias for `address`: `(alias, already known by the client)`.
    pub fn lookup(&mut self, address: &Str) -> Option<(u16, bool)> {
        if self.max == 0 {
            return None;
        }
        if let Some(a) = self.map.get(address) {
            return Some((*a, true));
        }
        let n = self.map.len();
        if n >= usize::from(self.max) {
            return None;
        }
        let a = u16::try_from(n + 1).ok()?;
        self.map.insert(address.clone(), a);
        Some((a, false))
    }
}

/// One subscription of a session.
#[derive(Debug, Clone)]
pub struct SubEntry {
    pub filter: AddressFilter,
    pub options: SubOptions,
    pub id: Option<u32>,
    /// A `$share/group/…` subscription.
    pub shared: bool,
    /// The consumer delivering it (temporary and shared subscriptions);
    /// `None` for a binding of the persistent session queue.
    pub consumer: Option<ConsumerId>,
}

/// Incoming QoS 2 identifiers between PUBLISH and PUBREL.
pub type Qos2Ids = HashSet<u16, Hasher>;

/// What a persistent session keeps between connections (in memory, and,
/// with a journal, in the state store as a [`SessionRecord`] plus QoS 2
/// entries, see [`crate::persist`]; the queue itself is the core's).
#[derive(Debug, Default)]
pub struct Parked {
    /// A later connection took this session over.
    pub resumed: bool,
    /// The session expired: its queue is gone.
    pub expired: bool,
    pub queue: Str,
    /// Non-shared subscriptions, by MQTT filter.
    pub subs: Vec<(Box<str>, SubEntry)>,
    pub qos2: Vec<u16>,
    pub reuse: Vec<(MessageId, u16)>,
    /// PUBRELs to send again.
    pub pubrel: Vec<u16>,
    /// A will waiting for its delay (or the session's end).
    pub will: Option<Message>,
    /// That will as the CONNECT carried it (what the state store keeps).
    pub stored_will: Option<StoredWill>,
    /// The session expiry interval granted, seconds (`u32::MAX`: never).
    pub expiry: u32,
    /// When the last connection ended (ms since the Unix epoch).
    pub left_at: u64,
}

impl Parked {
    /// What the state store keeps of this parked session.
    pub fn record(&self) -> SessionRecord {
        SessionRecord {
            expiry: self.expiry,
            left_at: self.left_at,
            subs: stored_subs(self.subs.iter().map(|(f, e)| (&**f, e))),
            reuse: self.reuse.clone(),
            will: if self.will.is_some() {
                self.stored_will.clone()
            } else {
                None
            },
        }
    }
}

/// The non-shared subscriptions, as the state store keeps them.
pub fn stored_subs<'a>(subs: impl Iterator<Item = (&'a str, &'a SubEntry)>) -> Vec<StoredSub> {
    subs.filter(|(_, e)| !e.shared)
        .map(|(f, e)| StoredSub {
            filter: f.to_owned(),
            options: e.options,
            id: e.id,
        })
        .collect()
}

/// The parked state, shared with the expiry and will timers.
#[derive(Debug, Default)]
pub struct SessionState {
    pub inner: Mutex<Parked>,
}

impl SessionState {
    pub fn new(p: Parked) -> Arc<Self> {
        Arc::new(SessionState {
            inner: Mutex::new(p),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn packet_ids_skip_zero_and_ids_in_use_and_reuse_old_ones() {
        let mut o = Outbound::default();
        let a = o.allocate(MessageId(1)).unwrap();
        assert_eq!(a, 1);
        o.inflight.insert(
            a,
            InFlight {
                state: OutState::AwaitPubAck,
                source: None,
                message: MessageId(1),
            },
        );
        o.next = u16::MAX;
        let b = o.allocate(MessageId(2)).unwrap();
        assert_eq!(b, 2, "wraps past 0 and the id in use");
        o.reuse.insert(MessageId(9), 500);
        assert_eq!(o.allocate(MessageId(9)), Some(500));
        o.reuse.insert(MessageId(10), 1);
        assert_ne!(o.allocate(MessageId(10)), Some(1), "1 is in use");
    }

    #[test]
    fn aliases() {
        let mut i = InboundAliases::default();
        assert!(i.get(3).is_none());
        i.set(3, Str::from("a.b"));
        assert_eq!(i.get(3).map(|s| &**s), Some("a.b"));
        let mut o = OutboundAliases::new(2);
        let a = Str::from("a");
        assert_eq!(o.lookup(&a), Some((1, false)));
        assert_eq!(o.lookup(&a), Some((1, true)));
        assert_eq!(o.lookup(&Str::from("b")), Some((2, false)));
        assert_eq!(o.lookup(&Str::from("c")), None);
        assert_eq!(OutboundAliases::new(0).lookup(&a), None);
    }
}
