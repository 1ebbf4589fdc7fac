//! The client registry: exclusive claims on client identifiers, shared by
//! every listener of a broker, with hand-over of state from one holder to
//! the next.
//!
//! A protocol whose clients name themselves (a client id) and where a second
//! connection with the same name replaces the first uses it so:
//!
//! 1. [`ClientRegistry::claim`] takes `(scope, id)`. If another connection
//!    holds it, that holder is *evicted*: its [`Claim::evicted`] resolves.
//! 2. The evicted holder says goodbye, tidies up, and releases its claim
//!    ([`Claim::release`], or drop), optionally *parking* a state value for
//!    whoever comes next (a session to resume).
//! 3. The new holder waits for that release ([`Claim::previous_released`])
//!    and takes the parked state ([`Claim::take_parked`]).
//!
//! Parked state outlives connections: [`ClientRegistry::unpark`] removes it
//! (a session expiry timer), but only if nobody claimed the id since it was
//! parked ([`ParkTicket`]). The state is an opaque `Arc<dyn Any>`: the core
//! never looks inside. The scope keeps protocols (or tenants) apart.
//!
//! Everything is in memory; an entry exists while its id is claimed or has
//! parked state.

use crate::Broker;
use parking_lot::Mutex;
use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use switchyard_model::Str;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// State a holder leaves behind for the next one.
pub type Parked = Arc<dyn Any + Send + Sync>;

/// The current holder of an id: its claim number and the token cancelled
/// to evict it.
#[derive(Debug)]
struct Holder {
    claim: u64,
    evict: CancellationToken,
}

/// One id's entry, kept small: an entry exists per connected client.
struct Entry {
    holder: Option<Holder>,
    parked: Option<(u64, Parked)>,
    /// Claims evicted that have not released yet (their successors wait
    /// for them); empty, and so unallocated, but during a takeover.
    leaving: Vec<u64>,
}

impl Entry {
    fn is_unused(&self) -> bool {
        self.holder.is_none() && self.parked.is_none() && self.leaving.is_empty()
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("holder", &self.holder)
            .field("parked", &self.parked.as_ref().map(|(n, _)| n))
            .field("leaving", &self.leaving)
            .finish()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Registry {
    /// Entries by scope, then id (the scope's name is shared by its
    /// entries).
    entries: Mutex<HashMap<Str, HashMap<Str, Entry>>>,
    next: AtomicU64,
    /// Woken whenever an evicted claim is released (takeovers are rare:
    /// one notifier for all, waiters check their own claim).
    released: Notify,
}

impl Registry {
    /// True while claim `number` of `(scope, id)` was evicted and has not
    /// released the id yet.
    fn is_leaving(&self, scope: &str, id: &str, number: u64) -> bool {
        self.entries
            .lock()
            .get(scope)
            .and_then(|m| m.get(id))
            .is_some_and(|e| e.leaving.contains(&number))
    }
}

/// The broker's client registry (see the module docs).
#[derive(Debug, Clone)]
pub struct ClientRegistry {
    inner: Arc<Registry>,
}

/// Proof of a parked state, for [`ClientRegistry::unpark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParkTicket(u64);

/// An exclusive claim on a client id. Dropping it releases the id without
/// parking anything.
#[derive(Debug)]
pub struct Claim {
    registry: Arc<Registry>,
    scope: Str,
    id: Str,
    number: u64,
    evict: CancellationToken,
    /// The claim this one evicted, while it may not have released yet.
    previous: Option<u64>,
    done: bool,
}

impl ClientRegistry {
    pub(crate) fn new(inner: Arc<Registry>) -> Self {
        ClientRegistry { inner }
    }

    /// Claims `id` in `scope`, evicting the current holder if there is one.
    pub fn claim(&self, scope: &str, id: &str) -> Claim {
        self.claim_with(scope, Str::from(id), CancellationToken::new())
    }

    /// Claims `id` in `scope` like [`ClientRegistry::claim`]; a later claim
    /// of the same id evicts this one by cancelling `evict`. A connection
    /// passes its own shutdown token, so one wait covers both (and nothing
    /// more is allocated per claim); [`Claim::is_evicted`] tells them apart.
    pub fn claim_with(&self, scope: &str, id: Str, evict: CancellationToken) -> Claim {
        let number = self.inner.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (scope, previous) = {
            let mut map = self.inner.entries.lock();
            let scope = match map.get_key_value(scope) {
                Some((k, _)) => k.clone(),
                None => {
                    let k = Str::from(scope);
                    map.insert(k.clone(), HashMap::new());
                    k
                }
            };
            let ids = map.entry(scope.clone()).or_default();
            let entry = ids.entry(id.clone()).or_insert(Entry {
                holder: None,
                parked: None,
                leaving: Vec::new(),
            });
            let old = entry.holder.replace(Holder {
                claim: number,
                evict: evict.clone(),
            });
            let previous = old.map(|h| {
                h.evict.cancel();
                entry.leaving.push(h.claim);
                h.claim
            });
            (scope, previous)
        };
        Claim {
            registry: self.inner.clone(),
            scope,
            id,
            number,
            evict,
            previous,
            done: false,
        }
    }

    /// True while a connection holds `id`.
    pub fn is_claimed(&self, scope: &str, id: &str) -> bool {
        self.inner
            .entries
            .lock()
            .get(scope)
            .and_then(|m| m.get(id))
            .is_some_and(|e| e.holder.is_some())
    }

    /// Removes and returns the state parked under `id`, if it is still the
    /// one `ticket` names and nobody has claimed the id since.
    pub fn unpark(&self, scope: &str, id: &str, ticket: ParkTicket) -> Option<Parked> {
        let mut map = self.inner.entries.lock();
        let ids = map.get_mut(scope)?;
        let entry = ids.get_mut(id)?;
        if entry.holder.is_some() || entry.parked.as_ref().map(|(n, _)| *n) != Some(ticket.0) {
            return None;
        }
        let state = entry.parked.take().map(|(_, s)| s);
        if entry.is_unused() {
            ids.remove(id);
        }
        state
    }

    /// Ids currently claimed or with parked state.
    pub fn len(&self) -> usize {
        self.inner.entries.lock().values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Claim {
    /// The claimed id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Resolves when another connection claims the same id (or, for a
    /// claim made with [`ClientRegistry::claim_with`], when its token is
    /// cancelled for any reason). Cancel-safe.
    pub fn evicted(&self) -> WaitForCancellationFuture<'_> {
        self.evict.cancelled()
    }

    /// True once another claim of the same id has evicted this one.
    pub fn is_evicted(&self) -> bool {
        if !self.evict.is_cancelled() {
            return false;
        }
        let map = self.registry.entries.lock();
        map.get(&*self.scope)
            .and_then(|m| m.get(&*self.id))
            .and_then(|e| e.holder.as_ref())
            .is_none_or(|h| h.claim != self.number)
    }

    /// True when this claim evicted a previous holder.
    pub fn took_over(&self) -> bool {
        self.previous.is_some()
    }

    /// Resolves once the holder this claim evicted has released the id
    /// (at once if there was none).
    pub async fn previous_released(&self) {
        let Some(previous) = self.previous else {
            return;
        };
        loop {
            let released = self.registry.released.notified();
            let mut released = std::pin::pin!(released);
            released.as_mut().enable();
            if !self.registry.is_leaving(&self.scope, &self.id, previous) {
                return;
            }
            released.await;
        }
    }

    /// Takes the state parked under this id (by an earlier holder). Call it
    /// after [`Claim::previous_released`] to see what the evicted holder
    /// left.
    pub fn take_parked(&self) -> Option<Parked> {
        let mut map = self.registry.entries.lock();
        map.get_mut(&*self.scope)?
            .get_mut(&*self.id)?
            .parked
            .take()
            .map(|(_, s)| s)
    }

    /// Releases the id, parking `state` for the next holder (replacing any
    /// state parked before). Returns the ticket for
    /// [`ClientRegistry::unpark`] when something was parked.
    pub fn release(mut self, state: Option<Parked>) -> Option<ParkTicket> {
        self.finish(state)
    }

    fn finish(&mut self, state: Option<Parked>) -> Option<ParkTicket> {
        if self.done {
            return None;
        }
        self.done = true;
        let mut was_evicted = false;
        let ticket = {
            let mut map = self.registry.entries.lock();
            let mut ticket = None;
            if let Some(ids) = map.get_mut(&*self.scope)
                && let Some(entry) = ids.get_mut(&*self.id)
            {
                if entry
                    .holder
                    .as_ref()
                    .is_some_and(|h| h.claim == self.number)
                {
                    entry.holder = None;
                }
                if let Some(i) = entry.leaving.iter().position(|n| *n == self.number) {
                    entry.leaving.swap_remove(i);
                    if entry.leaving.is_empty() {
                        entry.leaving = Vec::new();
                    }
                    was_evicted = true;
                }
                if let Some(s) = state {
                    entry.parked = Some((self.number, s));
                    ticket = Some(ParkTicket(self.number));
                }
                if entry.is_unused() {
                    ids.remove(&*self.id);
                }
            }
            ticket
        };
        if was_evicted {
            self.registry.released.notify_waiters();
        }
        ticket
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.finish(None);
    }
}

impl Broker {
    /// The registry of client ids shared by every listener.
    pub fn clients(&self) -> ClientRegistry {
        ClientRegistry::new(self.shared.clients.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::CoreConfig;
    use std::time::Duration;

    #[tokio::test]
    async fn a_second_claim_evicts_the_first_and_receives_its_state() {
        let b = Broker::new(CoreConfig::new());
        let reg = b.clients();
        let first = reg.claim("p", "dev1");
        assert!(!first.is_evicted());
        assert!(!first.took_over());
        let second = reg.claim("p", "dev1");
        assert!(second.took_over());
        tokio::time::timeout(Duration::from_secs(1), first.evicted())
            .await
            .unwrap();
        // The new holder waits for the old one to leave.
        let waiting = tokio::time::timeout(Duration::from_millis(50), second.previous_released());
        assert!(
            waiting.await.is_err(),
            "the first holder has not released yet"
        );
        let ticket = first.release(Some(Arc::new(42u32)));
        assert!(ticket.is_some());
        second.previous_released().await;
        let state = second.take_parked().unwrap();
        assert_eq!(state.downcast_ref::<u32>(), Some(&42));
        assert!(reg.is_claimed("p", "dev1"));
        assert!(
            reg.unpark("p", "dev1", ticket.unwrap()).is_none(),
            "claimed again"
        );
        drop(second);
        assert!(!reg.is_claimed("p", "dev1"));
        assert!(reg.is_empty(), "no holder and no state: entry gone");
    }

    #[test]
    fn scopes_are_separate() {
        let b = Broker::new(CoreConfig::new());
        let reg = b.clients();
        let a = reg.claim("p", "x");
        let c = reg.claim("q", "x");
        assert!(!a.is_evicted() && !c.is_evicted());
        assert_eq!(reg.len(), 2);
    }

    #[test]
    fn unpark_only_with_the_current_ticket() {
        let b = Broker::new(CoreConfig::new());
        let reg = b.clients();
        let t1 = reg.claim("p", "x").release(Some(Arc::new(1u8))).unwrap();
        let t2 = reg.claim("p", "x").release(Some(Arc::new(2u8))).unwrap();
        assert!(reg.unpark("p", "x", t1).is_none(), "an older ticket");
        let s = reg.unpark("p", "x", t2).unwrap();
        assert_eq!(s.downcast_ref::<u8>(), Some(&2));
        assert!(reg.is_empty());
    }

    #[test]
    fn parked_state_survives_a_clean_release_only_if_not_taken() {
        let b = Broker::new(CoreConfig::new());
        let reg = b.clients();
        reg.claim("p", "x").release(Some(Arc::new(7i32)));
        let c = reg.claim("p", "x");
        assert!(!c.took_over(), "the parked holder was gone");
        assert_eq!(c.take_parked().unwrap().downcast_ref::<i32>(), Some(&7));
        assert!(c.take_parked().is_none());
        drop(c);
        assert!(reg.is_empty());
    }
}
