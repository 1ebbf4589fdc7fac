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
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Nanoseconds on the system's monotonic clock, which every process of the
/// machine shares: latency = receive time − the send time written in the
/// payload, also when publisher and subscriber are separate processes.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
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

/// Body verification (the smoke test and the drivers' correctness
/// cross-check): when set to a size, every delivered body is checked to be
/// that long and to hold the generator's pattern after the timestamp;
/// mismatches are counted in [`BAD_BODIES`]. Off (0) for measurements.
pub static VERIFY_SIZE: AtomicUsize = AtomicUsize::new(0);
/// Delivered bodies that failed verification.
pub static BAD_BODIES: AtomicU64 = AtomicU64::new(0);
/// The pattern the publishers fill bodies with (after the timestamp).
pub const FILL: u8 = 0x5a;

/// One delivered body: records its latency and, when verification is on,
/// checks it. `whole` is false when `body` is only the first part of the
/// message (AMQP body frames).
#[inline]
pub fn observe(latency: &mut Histogram<u64>, body: &[u8], whole: bool) {
    if let Some(ts) = stamped(body) {
        record(latency, ts);
    }
    let want = VERIFY_SIZE.load(Ordering::Relaxed);
    if want > 0 {
        let len_ok = if whole {
            body.len() == want
        } else {
            body.len() <= want
        };
        // The fill after the timestamp: binary bodies carry it in the first
        // 8 bytes, JSON-text bodies (HTTP batches) as `"T<16 hex>…"`.
        let fill = if body.starts_with(b"\"T") {
            body.get(18..body.len().saturating_sub(usize::from(whole)))
        } else {
            body.get(8..)
        };
        if !len_ok || !fill.unwrap_or_default().iter().all(|&b| b == FILL) {
            BAD_BODIES.fetch_add(1, Ordering::Relaxed);
        }
    }
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

/// What one publisher did.
#[derive(Debug)]
pub struct PubResult {
    pub sent: u64,
    /// Publish → confirm (PUBACK, publisher confirm, RECEIPT) times, for
    /// publishers that wait for confirmations.
    pub confirms: Option<Histogram<u64>>,
}

impl PubResult {
    pub fn unconfirmed(sent: u64) -> PubResult {
        PubResult {
            sent,
            confirms: None,
        }
    }
}

/// Where messages go: a multicast topic (a dot-separated address), or a
/// point-to-point queue whose consumers compete. Each driver maps these to
/// its protocol (ARCHITECTURE.md, "Protocol mapping").
#[derive(Debug, Clone, Copy)]
pub enum Dest<'a> {
    Topic(&'a str),
    Queue(&'a str),
}

impl Dest<'_> {
    pub fn name(&self) -> &str {
        match self {
            Dest::Topic(t) | Dest::Queue(t) => t,
        }
    }
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

/// A connection held open by the `conns` scenario.
pub type Idle = Box<dyn std::any::Any + Send>;

/// Connects to `addr` (optionally from a given local address), with
/// `TCP_NODELAY` as every lean driver wants.
pub async fn connect(
    addr: SocketAddr,
    from: Option<std::net::IpAddr>,
) -> Result<tokio::net::TcpStream> {
    use anyhow::Context;
    let stream = match from {
        None => tokio::net::TcpStream::connect(addr).await,
        Some(ip) => {
            let sock = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            sock.bind(SocketAddr::new(ip, 0))?;
            sock.connect(addr).await
        }
    }
    .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A connected publisher.
#[async_trait::async_trait]
pub trait Publisher: Send {
    /// Publishes `plan.count` messages to `dest`, then makes a round trip
    /// (or waits for every confirmation) so the broker has all of them.
    async fn run(self: Box<Self>, dest: Dest<'_>, plan: PubPlan) -> Result<PubResult>;
}

/// A protocol's lean client.
#[async_trait::async_trait]
pub trait Driver: Send + Sync {
    fn protocol(&self) -> &'static str;
    /// The driver and its mode as `switchyard-bench run --driver` takes it
    /// (`suite::driver`).
    fn spec(&self) -> String;
    /// A short description of the mode (QoS, acks, persistence).
    fn mode(&self) -> String {
        String::new()
    }
    /// Subscribes to `dest`: every message of a topic, or a share of a
    /// queue's messages (competing consumers).
    async fn subscriber(&self, addr: SocketAddr, dest: Dest<'_>) -> Result<Box<dyn Subscriber>>;
    async fn publisher(&self, addr: SocketAddr) -> Result<Box<dyn Publisher>>;
    /// An idle connection that has completed the protocol's handshake (the
    /// `conns` scenario). `from` binds the client side to a loopback source
    /// address (many source addresses → more than one port range).
    async fn idle(&self, addr: SocketAddr, from: Option<std::net::IpAddr>) -> Result<Idle>;
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

/// Parses whatever complete frames a subscriber's read buffer holds.
pub trait Deliveries: Send {
    /// Consumes the complete frames at the front of `buf`, records the
    /// latency of each delivery in `latency`, appends what must go back
    /// (acknowledgements, PONGs) to `out`, and returns how many deliveries
    /// it consumed.
    fn parse(
        &mut self,
        buf: &mut bytes::BytesMut,
        out: &mut Vec<u8>,
        latency: &mut Histogram<u64>,
    ) -> Result<u64>;

    /// Called when there is nothing more to read for now: a last chance to
    /// add to `out` (a batched acknowledgement).
    fn flush(&mut self, _out: &mut Vec<u8>) {}
}

/// The receive loop every lean subscriber shares: read as much as the
/// socket has, parse every complete frame, write acknowledgements back in
/// one write, until the quota is met or the deadline passes.
pub async fn receive(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    buf: &mut bytes::BytesMut,
    parser: &mut dyn Deliveries,
    quota: Quota,
    deadline: Instant,
) -> Result<SubResult> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut latency = histogram();
    let mut received = 0u64;
    let mut last_ns = 0;
    let mut out = Vec::with_capacity(16 * 1024);
    loop {
        let n = parser.parse(buf, &mut out, &mut latency)?;
        if n > 0 {
            received += n;
            last_ns = now_ns();
        }
        parser.flush(&mut out);
        if !out.is_empty() {
            wr.write_all(&out).await?;
            out.clear();
        }
        if n > 0 {
            if quota.add(received, n) {
                break;
            }
        } else if quota.met(received) {
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        if buf.capacity() - buf.len() < 32 * 1024 {
            buf.reserve(128 * 1024);
        }
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(quota.poll());
        match tokio::time::timeout(wait, rd.read_buf(buf)).await {
            Ok(Ok(0)) => anyhow::bail!("subscriber connection closed after {received} messages"),
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
    Ok(SubResult {
        received,
        last_ns,
        latency,
    })
}

/// Paces a publisher: how many messages should have been sent by now.
#[derive(Debug)]
pub struct Pace {
    start: Instant,
    rate: Option<f64>,
    tick: Option<tokio::time::Interval>,
}

impl Pace {
    pub fn new(rate: Option<f64>) -> Pace {
        Pace {
            start: Instant::now(),
            rate,
            tick: rate.map(|_| tokio::time::interval(Duration::from_millis(1))),
        }
    }

    /// Waits for the next tick (rate-limited) and returns how many of
    /// `count` may have been sent by now; without a rate, `sent + batch`.
    pub async fn due(&mut self, sent: u64, batch: u64, count: u64) -> u64 {
        match (&mut self.tick, self.rate) {
            (Some(t), Some(rate)) => {
                t.tick().await;
                ((self.start.elapsed().as_secs_f64() * rate) as u64).min(count)
            }
            _ => (sent + batch).min(count),
        }
    }

    pub fn limited(&self) -> bool {
        self.rate.is_some()
    }
}

/// Send times of messages awaiting a confirmation, in sending order.
#[derive(Debug)]
pub struct Inflight {
    sent: std::collections::VecDeque<u64>,
    pub latency: Histogram<u64>,
}

impl Default for Inflight {
    fn default() -> Self {
        Inflight {
            sent: std::collections::VecDeque::new(),
            latency: histogram(),
        }
    }
}

impl Inflight {
    pub fn push(&mut self, ts: u64) {
        self.sent.push_back(ts);
    }

    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// The oldest `n` are confirmed.
    pub fn confirm(&mut self, n: usize) {
        for _ in 0..n {
            match self.sent.pop_front() {
                Some(ts) => record(&mut self.latency, ts),
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn verification_counts_wrong_bodies() {
        let mut h = histogram();
        let mut good = vec![FILL; 32];
        stamp(&mut good, now_ns());
        VERIFY_SIZE.store(32, Ordering::Relaxed);
        let before = BAD_BODIES.load(Ordering::Relaxed);
        observe(&mut h, &good, true);
        assert_eq!(BAD_BODIES.load(Ordering::Relaxed), before);
        observe(&mut h, good.get(..31).unwrap(), true); // short
        let mut changed = good.clone();
        if let Some(b) = changed.last_mut() {
            *b = 0;
        }
        observe(&mut h, &changed, true); // wrong content
        observe(&mut h, good.get(..20).unwrap(), false); // a first frame: fine
        VERIFY_SIZE.store(0, Ordering::Relaxed);
        assert_eq!(BAD_BODIES.load(Ordering::Relaxed), before + 2);
        assert_eq!(h.len(), 4);
    }
}
