//! Retained messages: the last message kept per address, handed to a new
//! subscriber whose filter matches it.
//!
//! The store is protocol-neutral: it keeps at most one message per address
//! and answers "every kept message a filter matches". When a message is
//! retained, and what clears it (MQTT's empty retained publish), is the
//! adapter's rule; the store only sets, replaces and removes.
//!
//! Expired messages (past [`switchyard_model::Properties::expires_at`]) are
//! never returned and are removed when a lookup meets them. Leading-wildcard
//! filters skip `$` addresses, as [`AddressFilter::matches`] does everywhere.
//!
//! The store lives in memory; it is shared by every listener of the broker.

use crate::Broker;
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use switchyard_model::{Address, AddressFilter, FilterWord, Message, Str, now_millis};

/// The retained-message store of one broker.
#[derive(Debug, Default)]
pub(crate) struct RetainedStore {
    map: RwLock<BTreeMap<Str, Arc<Message>>>,
    bytes: AtomicUsize,
}

impl RetainedStore {
    fn set(&self, address: &Address, msg: Option<Arc<Message>>) -> Option<Arc<Message>> {
        let mut map = self.map.write();
        let old = match msg {
            Some(m) => {
                self.bytes.fetch_add(m.approx_size(), Ordering::Relaxed);
                map.insert(address.as_arc().clone(), m)
            }
            None => map.remove(address.as_str()),
        };
        if let Some(o) = &old {
            self.bytes.fetch_sub(o.approx_size(), Ordering::Relaxed);
        }
        old
    }

    fn matching(&self, filter: &AddressFilter) -> Vec<Arc<Message>> {
        let now = now_millis();
        let mut out = Vec::new();
        let mut expired = Vec::new();
        {
            let map = self.map.read();
            let mut take = |k: &Str, m: &Arc<Message>| {
                if m.is_expired(now) {
                    expired.push(k.clone());
                } else {
                    out.push(m.clone());
                }
            };
            if filter.is_literal() {
                if let Some((k, m)) = map.get_key_value(filter.as_str()) {
                    take(k, m);
                }
            } else if let Some(FilterWord::Literal(first)) = filter.words().first() {
                // Every match starts with the first word: scan only that range.
                let lo = Bound::Included(&**first);
                for (k, m) in map.range::<str, _>((lo, Bound::Unbounded)) {
                    let Some(rest) = k.strip_prefix(&**first) else {
                        break;
                    };
                    if (rest.is_empty() || rest.starts_with('.')) && filter.matches(k) {
                        take(k, m);
                    }
                }
            } else {
                for (k, m) in map.iter() {
                    if filter.matches(k) {
                        take(k, m);
                    }
                }
            }
        }
        if !expired.is_empty() {
            let mut map = self.map.write();
            for k in expired {
                if map.get(&k).is_some_and(|m| m.is_expired(now))
                    && let Some(o) = map.remove(&k)
                {
                    self.bytes.fetch_sub(o.approx_size(), Ordering::Relaxed);
                }
            }
        }
        out
    }
}

impl RetainedStore {
    /// Recovery: puts a journaled retained message back.
    pub(crate) fn restore(&self, address: Str, msg: Arc<Message>) {
        self.bytes.fetch_add(msg.approx_size(), Ordering::Relaxed);
        self.map.write().insert(address, msg);
    }
}

impl Broker {
    /// Sets (`Some`) or clears (`None`) the retained message of `address`;
    /// returns the one it replaces. With a journal the change is journaled,
    /// so retained messages survive a restart (as Mosquitto keeps them).
    pub fn retain(&self, address: &Address, msg: Option<Arc<Message>>) -> Option<Arc<Message>> {
        if let Some(store) = &self.shared.store {
            let key = crate::store::Keyed::Retained(address.as_str().to_owned());
            let result = match &msg {
                Some(m) => store.put(
                    key,
                    crate::store::with_encoded(
                        |e| {
                            e.str(address.as_str());
                            crate::store::codec::message(e, m);
                        },
                        <[u8]>::to_vec,
                    ),
                ),
                None => store.remove(&key),
            };
            if let Err(e) = result {
                tracing::error!(address = %address, error = %e, "cannot journal a retained message");
            }
        }
        self.shared.retained.set(address, msg)
    }

    /// Every retained message whose address `filter` matches (expired ones
    /// left out), in address order.
    pub fn retained(&self, filter: &AddressFilter) -> Vec<Arc<Message>> {
        self.shared.retained.matching(filter)
    }

    /// How many messages are retained, and their approximate bytes.
    pub fn retained_stats(&self) -> (usize, usize) {
        let r = &self.shared.retained;
        (r.map.read().len(), r.bytes.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::CoreConfig;
    use bytes::Bytes;

    fn msg(addr: &str, body: &'static str) -> Arc<Message> {
        Arc::new(Message::multicast(
            &Address::new(addr).unwrap(),
            Bytes::from_static(body.as_bytes()),
        ))
    }

    fn bodies(b: &Broker, f: &str) -> Vec<Bytes> {
        b.retained(&AddressFilter::new(f).unwrap())
            .into_iter()
            .map(|m| m.body.clone())
            .collect()
    }

    #[test]
    fn keeps_the_last_message_per_address() {
        let b = Broker::new(CoreConfig::new());
        let a = Address::new("a.b").unwrap();
        assert!(b.retain(&a, Some(msg("a.b", "1"))).is_none());
        let old = b.retain(&a, Some(msg("a.b", "2"))).unwrap();
        assert_eq!(old.body, "1");
        assert_eq!(bodies(&b, "a.b"), ["2"]);
        assert_eq!(b.retained_stats().0, 1);
        b.retain(&a, None);
        assert!(bodies(&b, "a.b").is_empty());
        assert_eq!(b.retained_stats(), (0, 0));
    }

    #[test]
    fn wildcards_select_and_dollar_addresses_are_skipped() {
        let b = Broker::new(CoreConfig::new());
        for a in ["a", "a.b", "a.b.c", "ab.c", "x.y", "$SYS.load"] {
            b.retain(&Address::new(a).unwrap(), Some(msg(a, "m")));
        }
        let addrs = |f: &str| {
            b.retained(&AddressFilter::new(f).unwrap())
                .into_iter()
                .map(|m| m.address.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(addrs("a.#"), ["a", "a.b", "a.b.c"]);
        assert_eq!(addrs("a.*"), ["a.b"]);
        assert_eq!(addrs("#").len(), 5, "'#' skips $SYS");
        assert_eq!(addrs("*.c"), ["ab.c"]);
        assert_eq!(addrs("$SYS.#"), ["$SYS.load"]);
        assert_eq!(addrs("x.y"), ["x.y"]);
    }

    #[test]
    fn expired_messages_are_dropped() {
        let b = Broker::new(CoreConfig::new());
        let mut m = Message::multicast(&Address::new("t").unwrap(), Bytes::from_static(b"x"));
        m.properties.expires_at = Some(1);
        b.retain(&Address::new("t").unwrap(), Some(Arc::new(m)));
        assert!(bodies(&b, "t").is_empty());
        assert!(bodies(&b, "#").is_empty());
        assert_eq!(b.retained_stats().0, 0);
    }
}
