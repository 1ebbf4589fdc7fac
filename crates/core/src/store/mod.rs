//! Persistence of the core's durable state through the journal.
//!
//! # Records
//!
//! | kind | payload | live while |
//! | --- | --- | --- |
//! | `EXCHANGE` | exchange id, name, type, options | the exchange exists |
//! | `EXCHANGE_DEL` | exchange id | tombstone of `EXCHANGE` |
//! | `QUEUE` | queue store id, name, options | the queue exists |
//! | `QUEUE_DEL` | queue store id | tombstone of `QUEUE` |
//! | `BIND` | exchange id, destination (queue store id or exchange id), key, arguments | the binding exists |
//! | `UNBIND` | the `BIND` payload | tombstone of `BIND` |
//! | `MSG` | queue store id, message | the message is in the queue |
//! | `ACK` | queue store id, message id | tombstone of `MSG` |
//! | `ID_BLOCK` | highest message id reserved | until the next reservation |
//! | `RETAIN` | address, message | until replaced or cleared |
//! | `RETAIN_DEL` | address | tombstone of `RETAIN` |
//! | `STATE` | scope, key, opaque bytes | until replaced or deleted |
//! | `STATE_DEL` | scope, key | tombstone of `STATE` |
//!
//! Message ids are reserved in blocks (`ID_BLOCK`), so ids stay unique and
//! increasing across restarts even for messages that were never written.
//!
//! Queues and exchanges are referred to by ids that are never reused, so a
//! record left over from a deleted queue (its segment not yet deleted) never
//! attaches to a new queue of the same name. A message sent to several
//! durable queues is written once per queue.
//!
//! Only durable messages in durable queues are written; everything else
//! never touches the disk. Records are appended under the lock of what they
//! describe (the queue's lock for messages, the index lock for declarations
//! and bindings), so the log's order is the order of the state changes, and
//! relocation during compaction (also under those locks) can never copy a
//! record after its removal.

pub(crate) mod codec;

use codec::Enc;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use switchyard_journal::{Completion, Journal, JournalError, RecordLoc};

pub(crate) const EXCHANGE: u8 = 1;
pub(crate) const EXCHANGE_DEL: u8 = 2;
pub(crate) const QUEUE: u8 = 3;
pub(crate) const QUEUE_DEL: u8 = 4;
pub(crate) const BIND: u8 = 5;
pub(crate) const UNBIND: u8 = 6;
pub(crate) const MSG: u8 = 7;
pub(crate) const ACK: u8 = 8;
pub(crate) const ID_BLOCK: u8 = 9;
pub(crate) const RETAIN: u8 = 10;
pub(crate) const RETAIN_DEL: u8 = 11;
pub(crate) const STATE: u8 = 12;
pub(crate) const STATE_DEL: u8 = 13;

/// Which declaration a metadata record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Decl {
    Exchange(u64),
    Queue(u64),
    /// The highest message id reserved so far.
    Ids,
}

/// Records kept per key whose latest version is the live one (retained
/// messages by address, session state by scope and key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Keyed {
    Retained(String),
    State(String, String),
}

impl Keyed {
    fn kinds(&self) -> (u8, u8) {
        match self {
            Keyed::Retained(_) => (RETAIN, RETAIN_DEL),
            Keyed::State(..) => (STATE, STATE_DEL),
        }
    }

    /// The tombstone payload (the key alone).
    pub(crate) fn key_payload(&self) -> Vec<u8> {
        let mut e = Enc::default();
        match self {
            Keyed::Retained(a) => e.str(a),
            Keyed::State(s, k) => e.str(s).str(k),
        };
        e.0
    }
}

#[derive(Debug, Default)]
struct Index {
    /// Live declaration records: location and payload (for relocation).
    decls: HashMap<Decl, (RecordLoc, Vec<u8>)>,
    /// Live bindings, keyed by their payload.
    bindings: HashMap<Vec<u8>, RecordLoc>,
    /// Live keyed records: location and payload (for relocation).
    keyed: HashMap<Keyed, (RecordLoc, Vec<u8>)>,
}

/// The core's handle on the journal.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    pub(crate) journal: Journal,
    index: Arc<Mutex<Index>>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Enc> = std::cell::RefCell::new(Enc(Vec::with_capacity(4096)));
}

/// Encodes with a reused per-thread buffer and hands the bytes to `f`.
pub(crate) fn with_encoded<T>(fill: impl FnOnce(&mut Enc), f: impl FnOnce(&[u8]) -> T) -> T {
    SCRATCH.with(|s| {
        let mut e = s.borrow_mut();
        e.0.clear();
        fill(&mut e);
        let out = f(&e.0);
        if e.0.capacity() > 1 << 20 {
            e.0 = Vec::with_capacity(4096);
        }
        out
    })
}

impl Store {
    pub(crate) fn new(journal: Journal) -> Store {
        Store {
            journal,
            index: Arc::new(Mutex::new(Index::default())),
        }
    }

    pub(crate) fn sync(&self) -> Completion {
        self.journal.sync()
    }

    /// Writes a declaration (replacing, and releasing, an older record of it).
    pub(crate) fn declare(
        &self,
        decl: Decl,
        kind: u8,
        payload: Vec<u8>,
    ) -> Result<(), JournalError> {
        let mut ix = self.index.lock();
        let loc = self.journal.append(kind, &payload)?;
        if let Some((old, _)) = ix.decls.insert(decl, (loc, payload)) {
            self.journal.release(old);
        }
        Ok(())
    }

    /// Writes the tombstone of a declaration.
    pub(crate) fn undeclare(
        &self,
        decl: Decl,
        kind: u8,
        payload: &[u8],
    ) -> Result<(), JournalError> {
        let mut ix = self.index.lock();
        if let Some((loc, _)) = ix.decls.remove(&decl) {
            self.journal.append_tombstone(kind, payload, loc)?;
            self.journal.release(loc);
        }
        Ok(())
    }

    pub(crate) fn bind(&self, payload: Vec<u8>) -> Result<(), JournalError> {
        let mut ix = self.index.lock();
        if ix.bindings.contains_key(&payload) {
            return Ok(());
        }
        let loc = self.journal.append(BIND, &payload)?;
        ix.bindings.insert(payload, loc);
        Ok(())
    }

    pub(crate) fn unbind(&self, payload: &[u8]) -> Result<(), JournalError> {
        let mut ix = self.index.lock();
        if let Some(loc) = ix.bindings.remove(payload) {
            self.journal.append_tombstone(UNBIND, payload, loc)?;
            self.journal.release(loc);
        }
        Ok(())
    }

    /// Drops bindings whose payload `dead` says refer to something deleted
    /// (no tombstone needed: the ids are never reused).
    pub(crate) fn forget_bindings(&self, dead: impl Fn(&[u8]) -> bool) {
        let mut ix = self.index.lock();
        let gone: Vec<Vec<u8>> = ix.bindings.keys().filter(|k| dead(k)).cloned().collect();
        for k in gone {
            if let Some(loc) = ix.bindings.remove(&k) {
                self.journal.release(loc);
            }
        }
    }

    /// Writes the current version of a keyed record (replacing the last).
    pub(crate) fn put(&self, key: Keyed, payload: Vec<u8>) -> Result<(), JournalError> {
        let mut ix = self.index.lock();
        let (kind, _) = key.kinds();
        let loc = self.journal.append(kind, &payload)?;
        if let Some((old, _)) = ix.keyed.insert(key, (loc, payload)) {
            self.journal.release(old);
        }
        Ok(())
    }

    /// Removes a keyed record (a tombstone).
    pub(crate) fn remove(&self, key: &Keyed) -> Result<(), JournalError> {
        let mut ix = self.index.lock();
        if let Some((loc, _)) = ix.keyed.remove(key) {
            let (_, del) = key.kinds();
            self.journal
                .append_tombstone(del, &key.key_payload(), loc)?;
            self.journal.release(loc);
        }
        Ok(())
    }

    pub(crate) fn restore_keyed(&self, key: Keyed, loc: RecordLoc, payload: Vec<u8>) {
        self.index.lock().keyed.insert(key, (loc, payload));
    }

    /// Recovery: registers what replay found live.
    pub(crate) fn restore_decl(&self, decl: Decl, loc: RecordLoc, payload: Vec<u8>) {
        self.index.lock().decls.insert(decl, (loc, payload));
    }

    pub(crate) fn restore_binding(&self, payload: Vec<u8>, loc: RecordLoc) {
        self.index.lock().bindings.insert(payload, loc);
    }

    /// Compaction: copies the live declarations and bindings found in
    /// `segments` to the tail and releases the originals.
    pub(crate) fn relocate_metadata(&self, segments: &[u32]) -> Result<usize, JournalError> {
        let mut ix = self.index.lock();
        let mut moved = 0;
        for (decl, (loc, payload)) in ix.decls.iter_mut() {
            if segments.contains(&loc.segment) {
                let kind = match decl {
                    Decl::Exchange(_) => EXCHANGE,
                    Decl::Queue(_) => QUEUE,
                    Decl::Ids => ID_BLOCK,
                };
                let new = self.journal.append(kind, payload)?;
                self.journal.release(*loc);
                *loc = new;
                moved += 1;
            }
        }
        for (payload, loc) in ix.bindings.iter_mut() {
            if segments.contains(&loc.segment) {
                let new = self.journal.append(BIND, payload)?;
                self.journal.release(*loc);
                *loc = new;
                moved += 1;
            }
        }
        for (key, (loc, payload)) in ix.keyed.iter_mut() {
            if segments.contains(&loc.segment) {
                let new = self.journal.append(key.kinds().0, payload)?;
                self.journal.release(*loc);
                *loc = new;
                moved += 1;
            }
        }
        Ok(moved)
    }
}

/// The payload of a `BIND`/`UNBIND` record.
pub(crate) fn binding_payload(
    exchange: u64,
    dest_queue: Option<u64>,
    dest_exchange: Option<u64>,
    key: &str,
    args: &switchyard_model::Headers,
) -> Vec<u8> {
    let mut e = Enc::default();
    e.u64(exchange);
    match (dest_queue, dest_exchange) {
        (Some(q), _) => e.u8(0).u64(q),
        (None, Some(x)) => e.u8(1).u64(x),
        (None, None) => e.u8(2),
    };
    e.str(key);
    codec::headers(&mut e, args);
    e.0
}
