//! What a protocol driver provides to the scenarios, and the helpers every
//! driver shares (the clock, timestamped payloads, latency recording).
//!
//! Drivers are lean on purpose: they encode frames straight into one large
//! buffer and write it in one system call, and parse deliveries without
//! building message objects, so the broker — not the generator — is what is
//! measured. The public client libraries are used for correctness in the
//! tests, not here.

use anyhow::Result;
use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds on a clock shared by every publisher and subscriber of this
/// process (latency = receive time − the send time written in the payload).
pub fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Writes `ts` into the first 8 bytes of `payload` (when it has them).
#[inline]
pub fn stamp(payload: &mut [u8], ts: u64) {
    if let Some(head) = payload.get_mut(..8) {
        head.copy_from_slice(&ts.to_le_bytes());
    }
}

/// Reads the send time back out of a payload: the first 8 bytes, or, for
/// payloads that must be JSON text (HTTP NDJSON batches), 16 hex digits
/// after a leading `"T`.
#[inline]
pub fn stamped(payload: &[u8]) -> Option<u64> {
    if let Some(hex) = payload.strip_prefix(b"\"T").and_then(|p| p.get(..16))
        && let Some(ts) = std::str::from_utf8(hex)
            .ok()
            .and_then(|h| u64::from_str_radix(h, 16).ok())
    {
        return Some(ts);
    }
    let head: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(head))
}

/// A latency histogram in nanoseconds (1 µs – 60 s, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    // Constant bounds and precision that `new_with_bounds` accepts.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Records `now - sent` (clamped into the histogram's range).
#[inline]
pub fn record(h: &mut Histogram<u64>, sent: u64) {
    let d = now_ns().saturating_sub(sent).clamp(1_000, 60_000_000_000);
    let _ = h.record(d);
}

/// What one publisher sends.
#[derive(Debug, Clone, Copy)]
pub struct PubPlan {
    pub count: u64,
    pub size: usize,
    /// Messages per second for this publisher; `None` = as fast as possible.
    pub rate: Option<f64>,
}

/// What one subscriber saw.
#[derive(Debug)]
pub struct SubResult {
    pub received: u64,
    /// `now_ns()` when the last message arrived.
    pub last_ns: u64,
    pub latency: Histogram<u64>,
}

/// How many messages a subscriber waits for.
#[derive(Debug, Clone)]
pub enum Quota {
    /// This many for this subscriber.
    Own(u64),
    /// Competing consumers: stop when all of them together have this many.
    Shared(Arc<AtomicU64>, u64),
}

impl Quota {
    /// Counts `n` more received; true when the quota is met.
    pub fn add(&self, mine: u64, n: u64) -> bool {
        match self {
            Quota::Own(want) => mine >= *want,
            Quota::Shared(total, want) => total.fetch_add(n, Ordering::Relaxed) + n >= *want,
        }
    }

    /// True when the quota is met (without counting anything).
    pub fn met(&self, mine: u64) -> bool {
        match self {
            Quota::Own(want) => mine >= *want,
            Quota::Shared(total, want) => total.load(Ordering::Relaxed) >= *want,
        }
    }

    /// How long one read may block before the quota is checked again.
    pub fn poll(&self) -> Duration {
        match self {
            Quota::Own(_) => Duration::from_secs(3600),
            Quota::Shared(..) => Duration::from_millis(20),
        }
    }
}

/// A subscription that is ready: the broker has it.
#[async_trait::async_trait]
pub trait Subscriber: Send {
    /// Receives until the quota is met or `deadline` passed.
    async fn run(self: Box<Self>, quota: Quota, deadline: Instant) -> Result<SubResult>;
}

/// A connected publisher.
#[async_trait::async_trait]
pub trait Publisher: Send {
    /// Publishes `plan.count` messages to `topic`, then makes a round trip
    /// so the broker has all of them. Returns the number sent.
    async fn run(self: Box<Self>, topic: &str, plan: PubPlan) -> Result<u64>;
}

/// A protocol's lean client.
#[async_trait::async_trait]
pub trait Driver: Send + Sync {
    fn protocol(&self) -> &'static str;
    /// Subscribes to the canonical `topic` (a dot-separated address); with
    /// `group`, as a member of a competing-consumer group.
    async fn subscriber(
        &self,
        addr: SocketAddr,
        topic: &str,
        group: Option<&str>,
    ) -> Result<Box<dyn Subscriber>>;
    async fn publisher(&self, addr: SocketAddr) -> Result<Box<dyn Publisher>>;
    /// Request/reply: a responder that echoes every request to its reply
    /// address, running until the returned task is aborted.
    async fn responder(
        &self,
        _addr: SocketAddr,
        _topic: &str,
    ) -> Result<tokio::task::JoinHandle<()>> {
        anyhow::bail!("{} has no request/reply driver", self.protocol())
    }
    /// Request/reply: `plan.count` requests with `window` in flight.
    async fn requester(
        &self,
        _addr: SocketAddr,
        _topic: &str,
        _plan: PubPlan,
        _window: usize,
    ) -> Result<SubResult> {
        anyhow::bail!("{} has no request/reply driver", self.protocol())
    }
}
