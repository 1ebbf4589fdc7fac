//! Messages and body bytes in and out, per protocol.
//!
//! Adding every message to shared per-protocol atomics would make every
//! connection of a protocol write the same cache line on every publish. So
//! each session keeps a tally of its own, written by the connection's
//! task only, and adds it to its protocol's [`Traffic`] totals in batches:
//!
//! * after [`FLUSH_MESSAGES`] messages or [`FLUSH_BYTES`] bytes;
//! * whenever the connection goes idle (its `Deliveries::recv` is about to
//!   wait), so a quiet connection's counts are never held back;
//! * when the session ends.
//!
//! A message counts as "in" once the broker accepted its publish, and as
//! "out" once the connection took it from its delivery buffer, or from a
//! queue with `Session::get` (counted at once: a get is a round trip).
//!
//! A scrape therefore lags a busy connection by at most one batch, and an
//! idle one not at all. Adapters that publish without a session (HTTP)
//! count into [`Traffic`] directly, once per request.
//!
//! A tally packs a message count and a byte count into one `AtomicU64`
//! (count in the high bits, bytes in the low [`BYTE_BITS`]), so counting a
//! publish is one uncontended atomic add, and a flush from another thread
//! (`swap`) can never lose or double an update.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Message and byte totals of one protocol. Counters only grow.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Traffic {
    messages_in: AtomicU64,
    bytes_in: AtomicU64,
    messages_out: AtomicU64,
    bytes_out: AtomicU64,
}

/// A snapshot of [`Traffic`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficStats {
    /// Messages clients of the protocol published.
    pub messages_in: u64,
    /// Body bytes of those messages.
    pub bytes_in: u64,
    /// Deliveries handed to clients of the protocol.
    pub messages_out: u64,
    /// Body bytes of those deliveries.
    pub bytes_out: u64,
}

impl Traffic {
    /// Counts messages received from clients.
    #[inline]
    pub fn add_in(&self, messages: u64, bytes: u64) {
        self.messages_in.fetch_add(messages, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts messages sent to clients.
    #[inline]
    pub fn add_out(&self, messages: u64, bytes: u64) {
        self.messages_out.fetch_add(messages, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn stats(&self) -> TrafficStats {
        TrafficStats {
            messages_in: self.messages_in.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            messages_out: self.messages_out.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        }
    }
}

/// Low bits of a packed tally that hold bytes; the rest hold the count.
pub const BYTE_BITS: u32 = 40;
const BYTE_MASK: u64 = (1 << BYTE_BITS) - 1;
/// A tally is added to the totals after this many messages...
pub const FLUSH_MESSAGES: u64 = 256;
/// ... or this many bytes (well below what the byte bits hold).
pub const FLUSH_BYTES: u64 = 1 << 32;

/// One session's not-yet-flushed counts. See the module docs.
#[derive(Debug)]
pub(crate) struct Tally {
    shared: Arc<Traffic>,
    /// `messages << BYTE_BITS | bytes` received.
    inbound: AtomicU64,
    /// `messages << BYTE_BITS | bytes` sent.
    outbound: AtomicU64,
}

/// Adds `(n, bytes)` to a packed counter; true when it should be flushed.
#[inline]
fn add_packed(cell: &AtomicU64, n: u64, bytes: u64) -> bool {
    let add = (n << BYTE_BITS) | bytes;
    let v = cell.fetch_add(add, Ordering::Relaxed).wrapping_add(add);
    (v >> BYTE_BITS) >= FLUSH_MESSAGES || (v & BYTE_MASK) >= FLUSH_BYTES
}

#[inline]
fn unpack(v: u64) -> (u64, u64) {
    (v >> BYTE_BITS, v & BYTE_MASK)
}

impl Tally {
    pub(crate) fn new(shared: Arc<Traffic>) -> Tally {
        Tally {
            shared,
            inbound: AtomicU64::new(0),
            outbound: AtomicU64::new(0),
        }
    }

    /// Counts one published message of `bytes` body bytes.
    #[inline]
    pub(crate) fn inbound(&self, bytes: usize) {
        let bytes = bytes as u64;
        if bytes >= FLUSH_BYTES {
            self.shared.add_in(1, bytes);
        } else if add_packed(&self.inbound, 1, bytes) {
            self.flush_in();
        }
    }

    /// Counts `n` deliveries of `bytes` body bytes in total.
    #[inline]
    pub(crate) fn outbound(&self, n: usize, bytes: usize) {
        let (n, bytes) = (n as u64, bytes as u64);
        if bytes >= FLUSH_BYTES || n >= FLUSH_MESSAGES {
            self.shared.add_out(n, bytes);
        } else if add_packed(&self.outbound, n, bytes) {
            self.flush_out();
        }
    }

    /// Counts deliveries straight into the totals (for rare, per-request
    /// paths such as `Session::get`).
    #[inline]
    pub(crate) fn outbound_now(&self, n: usize, bytes: usize) {
        self.shared.add_out(n as u64, bytes as u64);
    }

    fn flush_in(&self) {
        let (n, b) = unpack(self.inbound.swap(0, Ordering::Relaxed));
        if n != 0 || b != 0 {
            self.shared.add_in(n, b);
        }
    }

    fn flush_out(&self) {
        let (n, b) = unpack(self.outbound.swap(0, Ordering::Relaxed));
        if n != 0 || b != 0 {
            self.shared.add_out(n, b);
        }
    }

    /// Adds whatever is pending to the totals (a load when nothing is).
    #[inline]
    pub(crate) fn flush(&self) {
        if self.inbound.load(Ordering::Relaxed) != 0 {
            self.flush_in();
        }
        if self.outbound.load(Ordering::Relaxed) != 0 {
            self.flush_out();
        }
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Every protocol's totals (a short list: one entry per protocol name).
#[derive(Debug, Default)]
pub(crate) struct TrafficRegistry {
    list: parking_lot::RwLock<Vec<(&'static str, Arc<Traffic>)>>,
}

impl TrafficRegistry {
    pub(crate) fn get(&self, protocol: &'static str) -> Arc<Traffic> {
        if let Some((_, t)) = self.list.read().iter().find(|(p, _)| *p == protocol) {
            return t.clone();
        }
        let mut list = self.list.write();
        if let Some((_, t)) = list.iter().find(|(p, _)| *p == protocol) {
            return t.clone();
        }
        let t = Arc::new(Traffic::default());
        list.push((protocol, t.clone()));
        t
    }

    pub(crate) fn stats(&self) -> Vec<(&'static str, TrafficStats)> {
        let mut v: Vec<_> = self
            .list
            .read()
            .iter()
            .map(|(p, t)| (*p, t.stats()))
            .collect();
        v.sort_by_key(|(p, _)| *p);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_flushes_in_batches_and_on_drop() {
        let shared = Arc::new(Traffic::default());
        let t = Tally::new(shared.clone());
        for _ in 0..FLUSH_MESSAGES - 1 {
            t.inbound(10);
        }
        assert_eq!(
            shared.stats().messages_in,
            0,
            "held back until a batch is full"
        );
        t.inbound(10);
        assert_eq!(shared.stats().messages_in, FLUSH_MESSAGES);
        assert_eq!(shared.stats().bytes_in, FLUSH_MESSAGES * 10);
        t.inbound(3);
        t.outbound(2, 7);
        t.flush();
        let s = shared.stats();
        assert_eq!(
            (s.messages_in, s.bytes_in),
            (FLUSH_MESSAGES + 1, FLUSH_MESSAGES * 10 + 3)
        );
        assert_eq!((s.messages_out, s.bytes_out), (2, 7));
        t.outbound(1, 1);
        drop(t);
        assert_eq!(shared.stats().messages_out, 3);
    }

    #[test]
    fn huge_messages_bypass_the_packed_tally() {
        let shared = Arc::new(Traffic::default());
        let t = Tally::new(shared.clone());
        t.inbound(usize::try_from(FLUSH_BYTES).unwrap_or(usize::MAX));
        assert_eq!(shared.stats().messages_in, 1);
        t.inbound(usize::try_from(FLUSH_BYTES / 2).unwrap_or(usize::MAX));
        t.inbound(usize::try_from(FLUSH_BYTES / 2).unwrap_or(usize::MAX));
        assert_eq!(shared.stats().messages_in, 3, "byte threshold flushes");
    }

    #[test]
    fn concurrent_flushes_neither_lose_nor_double() {
        let shared = Arc::new(Traffic::default());
        let t = Arc::new(Tally::new(shared.clone()));
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        t.inbound(1);
                        t.flush();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap_or(());
        }
        t.flush();
        assert_eq!(shared.stats().messages_in, 40_000);
        assert_eq!(shared.stats().bytes_in, 40_000);
    }
}
