//! The lean MQTT 3.1.1 driver: QoS 0 and QoS 1 (PUBACK accounting on both
//! sides), persistent sessions, shared subscriptions for competing consumers.
//!
//! Topics: the canonical `a.b.c` is the MQTT topic `a/b/c`
//! (ARCHITECTURE.md, "Protocol mapping"); a queue is the shared
//! subscription `$share/benchgroup/a/b/c`.

use crate::driver::{
    Deliveries, Dest, Driver, FILL, Idle, Inflight, Pace, PubPlan, PubResult, Publisher, Quota,
    SubResult, Subscriber, connect, now_ns, observe, receive, stamp,
};
use anyhow::{Result, bail};
use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const BATCH: usize = 64 * 1024;
/// QoS 1 publications a publisher keeps unacknowledged (Switchyard's
/// `receive_maximum` is 1024).
const WINDOW: usize = 1000;

static CLIENT: AtomicU64 = AtomicU64::new(0);

/// The MQTT driver.
#[derive(Debug, Clone, Copy)]
pub struct Mqtt {
    /// QoS of publications and of subscriptions (0 or 1).
    pub qos: u8,
    /// Subscribers use persistent sessions (clean session 0).
    pub persistent: bool,
}

impl Mqtt {
    pub fn qos0() -> Mqtt {
        Mqtt {
            qos: 0,
            persistent: false,
        }
    }

    pub fn qos1() -> Mqtt {
        Mqtt {
            qos: 1,
            persistent: false,
        }
    }
}

/// `a.b.c` → `a/b/c`.
fn topic(canonical: &str) -> String {
    canonical.replace('.', "/")
}

fn varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// Appends a PUBLISH.
fn publish(out: &mut Vec<u8>, topic: &[u8], qos: u8, id: u16, payload: &[u8]) {
    out.push(0x30 | (qos << 1));
    let id_len = if qos > 0 { 2 } else { 0 };
    varint(out, 2 + topic.len() + id_len + payload.len());
    string(out, topic);
    if qos > 0 {
        out.extend_from_slice(&id.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// One packet at the front of `buf`: (first byte, body range, total length).
fn packet(buf: &[u8]) -> Result<Option<(u8, usize, usize)>> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    let mut mult = 1usize;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len += (b & 0x7f) as usize * mult;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        mult *= 128;
        if i > 4 {
            bail!("malformed remaining length");
        }
    }
    if buf.len() < i + len {
        return Ok(None);
    }
    Ok(Some((first, i, i + len)))
}

struct Conn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    buf: BytesMut,
}

impl Conn {
    async fn connect(
        addr: SocketAddr,
        from: Option<IpAddr>,
        clean: bool,
        client_id: &str,
    ) -> Result<Conn> {
        let (rd, wr) = connect(addr, from).await?.into_split();
        let mut c = Conn {
            rd,
            wr,
            buf: BytesMut::with_capacity(if from.is_some() { 256 } else { 64 * 1024 }),
        };
        let mut p = Vec::with_capacity(64);
        p.push(0x10);
        varint(&mut p, 10 + 2 + client_id.len());
        string(&mut p, b"MQTT");
        p.push(4); // 3.1.1
        p.push(if clean { 0x02 } else { 0x00 });
        p.extend_from_slice(&0u16.to_be_bytes()); // no keep alive
        string(&mut p, client_id.as_bytes());
        c.wr.write_all(&p).await?;
        let (first, body, _) = c.next().await?;
        if first != 0x20 {
            bail!("expected CONNACK, got packet type {first:#x}");
        }
        if c.buf.get(body + 1).copied() != Some(0) {
            bail!("connection refused: {:?}", c.buf.get(body + 1));
        }
        c.buf.clear();
        Ok(c)
    }

    /// Reads until one whole packet is at the front of the buffer.
    async fn next(&mut self) -> Result<(u8, usize, usize)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(p) = packet(&self.buf)? {
                return Ok(p);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rd.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) => bail!("connection closed"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => bail!("no answer from the broker"),
            }
        }
    }

    /// Reads packets until one of type `want` (high nibble); others are dropped.
    async fn expect(&mut self, want: u8) -> Result<()> {
        loop {
            let (first, _, total) = self.next().await?;
            self.buf.advance(total);
            if first >> 4 == want {
                return Ok(());
            }
        }
    }

    /// PINGREQ → PINGRESP: the broker has processed what was sent before.
    async fn sync(&mut self) -> Result<()> {
        self.wr.write_all(&[0xc0, 0]).await?;
        self.expect(0xd).await
    }
}

/// Counts PUBLISH packets, acknowledges QoS 1 ones with a PUBACK.
struct MqttParser;

impl Deliveries for MqttParser {
    fn parse(
        &mut self,
        buf: &mut BytesMut,
        out: &mut Vec<u8>,
        latency: &mut Histogram<u64>,
    ) -> Result<u64> {
        let mut n = 0;
        while let Some((first, body, total)) = packet(buf)? {
            if first >> 4 == 3 {
                let qos = (first >> 1) & 3;
                let tlen = buf
                    .get(body..body + 2)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, |b: [u8; 2]| u16::from_be_bytes(b) as usize);
                let mut at = body + 2 + tlen;
                if qos > 0 {
                    if let Some(id) = buf.get(at..at + 2) {
                        out.extend_from_slice(&[0x40, 2]);
                        out.extend_from_slice(id);
                    }
                    at += 2;
                }
                observe(latency, buf.get(at..total).unwrap_or_default(), true);
                n += 1;
            }
            buf.advance(total);
        }
        Ok(n)
    }
}

struct MqttSub {
    conn: Conn,
}

#[async_trait::async_trait]
impl Subscriber for MqttSub {
    async fn run(mut self: Box<Self>, quota: Quota, deadline: Instant) -> Result<SubResult> {
        let c = &mut self.conn;
        receive(
            &mut c.rd,
            &mut c.wr,
            &mut c.buf,
            &mut MqttParser,
            quota,
            deadline,
        )
        .await
    }
}

struct MqttPub {
    conn: Conn,
    qos: u8,
}

#[async_trait::async_trait]
impl Publisher for MqttPub {
    async fn run(mut self: Box<Self>, dest: Dest<'_>, plan: PubPlan) -> Result<PubResult> {
        let topic = topic(dest.name());
        let mut payload = vec![FILL; plan.size];
        let mut out = Vec::with_capacity(BATCH + plan.size + 64);
        let mut sent = 0u64;
        let mut pace = Pace::new(plan.rate);
        let batch = (BATCH / (plan.size + topic.len() + 8)).max(1) as u64;
        let mut inflight = Inflight::default();
        let mut id: u16 = 0;
        let c = &mut self.conn;
        while sent < plan.count {
            let mut due = pace.due(sent, batch, plan.count).await;
            if self.qos > 0 {
                // Stay inside the broker's receive maximum.
                due = due.min(sent + (WINDOW - inflight.len()) as u64);
            }
            out.clear();
            let now = now_ns();
            if !pace.limited() {
                stamp(&mut payload, now);
            }
            while sent < due {
                let ts = if pace.limited() { now_ns() } else { now };
                if pace.limited() {
                    stamp(&mut payload, ts);
                }
                id = id.checked_add(1).unwrap_or(1);
                publish(&mut out, topic.as_bytes(), self.qos, id, &payload);
                if self.qos > 0 {
                    inflight.push(ts);
                }
                sent += 1;
            }
            if !out.is_empty() {
                c.wr.write_all(&out).await?;
            }
            if self.qos > 0 {
                // Take the PUBACKs that are there; block only when the window is full.
                let full = inflight.len() >= WINDOW;
                read_acks(c, &mut inflight, full).await?;
            }
        }
        if self.qos > 0 {
            while !inflight.is_empty() {
                read_acks(c, &mut inflight, true).await?;
            }
            Ok(PubResult {
                sent,
                confirms: Some(inflight.latency),
            })
        } else {
            c.sync().await?;
            Ok(PubResult::unconfirmed(sent))
        }
    }
}

/// Consumes the PUBACKs in the buffer (reading first when `block`, or when
/// the socket has something ready).
async fn read_acks(c: &mut Conn, inflight: &mut Inflight, block: bool) -> Result<()> {
    if block {
        let left = Duration::from_secs(60);
        match tokio::time::timeout(left, c.rd.read_buf(&mut c.buf)).await {
            Ok(Ok(0)) => bail!("publisher connection closed"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => bail!("no PUBACK for 60 s ({} outstanding)", inflight.len()),
        }
    } else {
        c.buf.reserve(4096);
        // Non-blocking: whatever has arrived.
        loop {
            match c.rd.try_read_buf(&mut c.buf) {
                Ok(0) => bail!("publisher connection closed"),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    let mut acked = 0;
    while let Some((first, _, total)) = packet(&c.buf)? {
        if first >> 4 == 4 {
            acked += 1;
        }
        c.buf.advance(total);
    }
    inflight.confirm(acked);
    Ok(())
}

fn client_id(kind: &str) -> String {
    format!(
        "bench-{kind}-{}-{}",
        std::process::id(),
        CLIENT.fetch_add(1, Ordering::Relaxed)
    )
}

#[async_trait::async_trait]
impl Driver for Mqtt {
    fn spec(&self) -> String {
        format!(
            "mqtt:qos{}{}",
            self.qos,
            if self.persistent { "p" } else { "" }
        )
    }

    fn protocol(&self) -> &'static str {
        "mqtt"
    }

    fn mode(&self) -> String {
        format!(
            "QoS {}{}",
            self.qos,
            if self.persistent {
                ", persistent session"
            } else {
                ""
            }
        )
    }

    async fn subscriber(&self, addr: SocketAddr, dest: Dest<'_>) -> Result<Box<dyn Subscriber>> {
        let mut conn = Conn::connect(addr, None, !self.persistent, &client_id("sub")).await?;
        let filter = match dest {
            Dest::Topic(t) => topic(t),
            Dest::Queue(t) => format!("$share/benchgroup/{}", topic(t)),
        };
        let mut p = Vec::with_capacity(64);
        p.push(0x82);
        varint(&mut p, 2 + 2 + filter.len() + 1);
        p.extend_from_slice(&1u16.to_be_bytes());
        string(&mut p, filter.as_bytes());
        p.push(self.qos);
        conn.wr.write_all(&p).await?;
        loop {
            let (first, body, total) = conn.next().await?;
            if first >> 4 == 9 {
                let rc = conn.buf.get(body + 2).copied().unwrap_or(0x80);
                if rc >= 0x80 {
                    bail!("subscription to {filter} refused");
                }
                conn.buf.advance(total);
                break;
            }
            conn.buf.advance(total);
        }
        Ok(Box::new(MqttSub { conn }))
    }

    async fn publisher(&self, addr: SocketAddr) -> Result<Box<dyn Publisher>> {
        let conn = Conn::connect(addr, None, true, &client_id("pub")).await?;
        Ok(Box::new(MqttPub {
            conn,
            qos: self.qos,
        }))
    }

    async fn idle(&self, addr: SocketAddr, from: Option<IpAddr>) -> Result<Idle> {
        let mut conn = Conn::connect(addr, from, true, &client_id("idle")).await?;
        conn.buf = BytesMut::new();
        Ok(Box::new(conn))
    }
}
