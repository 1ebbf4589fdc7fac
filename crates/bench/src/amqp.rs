//! The lean AMQP 0-9-1 driver: transient publishes to `amq.topic`,
//! persistent publishes with publisher confirms into a durable queue,
//! consumers with manual (batched, `multiple`) acks and a prefetch.
//!
//! Topics: the canonical `a.b.c` is routing key `a.b.c` on `amq.topic`, a
//! subscriber is a private queue bound to it; a queue is a named queue on
//! the default exchange (ARCHITECTURE.md, "Protocol mapping").

use crate::driver::{
    BAD_BODIES, Deliveries, Dest, Driver, FILL, Idle, Inflight, Pace, PubPlan, PubResult,
    Publisher, Quota, SubResult, Subscriber, VERIFY_SIZE, connect, now_ns, observe, receive, stamp,
};
use anyhow::{Result, bail};
use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const BATCH: usize = 64 * 1024;
/// Unconfirmed publishes a confirming publisher keeps in flight.
const WINDOW: usize = 1000;
const FRAME_END: u8 = 0xce;

/// The AMQP 0-9-1 driver.
#[derive(Debug, Clone, Copy)]
pub struct Amqp {
    /// Publish with delivery-mode 2 and publisher confirms; queues are durable.
    pub persistent: bool,
    /// Consumers acknowledge (manually, batched); otherwise no-ack.
    pub acks: bool,
    /// basic.qos prefetch count for acknowledging consumers.
    pub prefetch: u16,
}

impl Amqp {
    pub fn transient() -> Amqp {
        Amqp {
            persistent: false,
            acks: false,
            prefetch: 0,
        }
    }

    pub fn acking() -> Amqp {
        Amqp {
            persistent: false,
            acks: true,
            prefetch: 1000,
        }
    }

    pub fn persistent() -> Amqp {
        Amqp {
            persistent: true,
            acks: true,
            prefetch: 1000,
        }
    }
}

/// Frame encoding helpers over one output buffer.
struct Enc<'a>(&'a mut Vec<u8>);

impl Enc<'_> {
    /// Starts a frame; returns the offset of its size field.
    fn begin(&mut self, kind: u8, channel: u16) -> usize {
        self.0.push(kind);
        self.0.extend_from_slice(&channel.to_be_bytes());
        let at = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        at
    }

    fn end(&mut self, at: usize) {
        let size = (self.0.len() - at - 4) as u32;
        if let Some(field) = self.0.get_mut(at..at + 4) {
            field.copy_from_slice(&size.to_be_bytes());
        }
        self.0.push(FRAME_END);
    }

    fn method(&mut self, channel: u16, class: u16, method: u16, args: impl FnOnce(&mut Self)) {
        let at = self.begin(1, channel);
        self.u16(class);
        self.u16(method);
        args(self);
        self.end(at);
    }

    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn short(&mut self, s: &str) {
        self.0.push(s.len() as u8);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn long(&mut self, s: &[u8]) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s);
    }

    /// basic.publish + content header + body frames.
    fn publish(&mut self, exchange: &str, key: &str, persistent: bool, body: &[u8], max: usize) {
        self.method(1, 60, 40, |e| {
            e.u16(0);
            e.short(exchange);
            e.short(key);
            e.u8(0);
        });
        let at = self.begin(2, 1);
        self.u16(60);
        self.u16(0);
        self.u64(body.len() as u64);
        if persistent {
            self.u16(0x1000); // delivery-mode
            self.u8(2);
        } else {
            self.u16(0);
        }
        self.end(at);
        for chunk in body.chunks(max.max(1)) {
            let at = self.begin(3, 1);
            self.0.extend_from_slice(chunk);
            self.end(at);
        }
    }
}

/// One frame at the front of `buf`: (type, channel, payload range end, total).
fn frame(buf: &[u8]) -> Option<(u8, u16, usize)> {
    let head = buf.get(..7)?;
    let kind = *head.first()?;
    let channel = u16::from_be_bytes([*head.get(1)?, *head.get(2)?]);
    let size =
        u32::from_be_bytes([*head.get(3)?, *head.get(4)?, *head.get(5)?, *head.get(6)?]) as usize;
    if buf.len() < 7 + size + 1 {
        return None;
    }
    Some((kind, channel, 7 + size + 1))
}

fn be16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u16::from_be_bytes)
}

fn be64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// (class, method) of a method frame's payload.
fn method_id(payload: &[u8]) -> (u16, u16) {
    (be16(payload, 0), be16(payload, 2))
}

/// The reply text of connection.close / channel.close.
fn close_text(payload: &[u8]) -> String {
    let code = be16(payload, 4);
    let len = payload.get(6).copied().unwrap_or(0) as usize;
    let text = payload
        .get(7..7 + len)
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    format!("{code} {text}")
}

struct Conn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    buf: BytesMut,
    frame_max: usize,
}

impl Conn {
    async fn connect(addr: SocketAddr, from: Option<IpAddr>, channel: bool) -> Result<Conn> {
        let (rd, wr) = connect(addr, from).await?.into_split();
        let mut c = Conn {
            rd,
            wr,
            buf: BytesMut::with_capacity(if from.is_some() { 1024 } else { 64 * 1024 }),
            frame_max: 128 * 1024,
        };
        c.wr.write_all(b"AMQP\x00\x00\x09\x01").await?;
        c.until(10, 10).await?; // connection.start
        let mut out = Vec::with_capacity(512);
        let mut e = Enc(&mut out);
        e.method(0, 10, 11, |e| {
            e.u32(0); // client properties: empty table
            e.short("PLAIN");
            e.long(b"\0guest\0guest");
            e.short("en_US");
        });
        c.wr.write_all(&out).await?;
        let tune = c.until(10, 30).await?;
        let channel_max = be16(&tune, 4);
        let server_max = tune
            .get(6..10)
            .and_then(|s| s.try_into().ok())
            .map_or(0, u32::from_be_bytes) as usize;
        let frame_max = if server_max == 0 {
            128 * 1024
        } else {
            server_max.min(128 * 1024)
        };
        c.frame_max = frame_max;
        out.clear();
        let mut e = Enc(&mut out);
        e.method(0, 10, 31, |e| {
            e.u16(channel_max);
            e.u32(frame_max as u32);
            e.u16(0); // no heartbeats
        });
        e.method(0, 10, 40, |e| {
            e.short("/");
            e.short("");
            e.u8(0);
        });
        if channel {
            e.method(1, 20, 10, |e| e.short(""));
        }
        c.wr.write_all(&out).await?;
        c.until(10, 41).await?;
        if channel {
            c.until(20, 11).await?;
        }
        Ok(c)
    }

    /// Reads frames until the method `class.method`; returns its payload.
    async fn until(&mut self, class: u16, method: u16) -> Result<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            while let Some((kind, _, total)) = frame(&self.buf) {
                let payload = self.buf.get(7..total - 1).unwrap_or_default().to_vec();
                self.buf.advance(total);
                if kind == 1 {
                    match method_id(&payload) {
                        (c, m) if c == class && m == method => return Ok(payload),
                        (10, 50) | (20, 40) => {
                            bail!("closed by the broker: {}", close_text(&payload))
                        }
                        _ => {}
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rd.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) => bail!("connection closed waiting for {class}.{method}"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => bail!("no {class}.{method} from the broker"),
            }
        }
    }

    async fn send(&mut self, f: impl FnOnce(&mut Enc<'_>)) -> Result<()> {
        let mut out = Vec::with_capacity(256);
        f(&mut Enc(&mut out));
        self.wr.write_all(&out).await?;
        Ok(())
    }

    /// Declares queue `name` ("" = server-named); returns its name.
    async fn declare(&mut self, name: &str, durable: bool, exclusive: bool) -> Result<String> {
        let flags = u8::from(durable) << 1 | u8::from(exclusive) << 2 | u8::from(exclusive) << 3;
        self.send(|e| {
            e.method(1, 50, 10, |e| {
                e.u16(0);
                e.short(name);
                e.u8(flags);
                e.u32(0);
            })
        })
        .await?;
        let ok = self.until(50, 11).await?;
        let len = ok.get(4).copied().unwrap_or(0) as usize;
        Ok(ok
            .get(5..5 + len)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default())
    }
}

/// Counts basic.deliver; reads the send time from the first body frame;
/// acknowledges (with `multiple`) once per read buffer.
struct AmqpParser {
    acks: bool,
    /// Waiting for the content header of the current message.
    header: bool,
    /// Waiting for its first body frame.
    first_body: bool,
    last_tag: u64,
    acked_tag: u64,
}

impl Deliveries for AmqpParser {
    fn parse(
        &mut self,
        buf: &mut BytesMut,
        _out: &mut Vec<u8>,
        latency: &mut Histogram<u64>,
    ) -> Result<u64> {
        let mut n = 0;
        while let Some((kind, _, total)) = frame(buf) {
            let payload = buf.get(7..total - 1).unwrap_or_default();
            match kind {
                1 => match method_id(payload) {
                    (60, 60) => {
                        // consumer-tag, delivery-tag
                        let tag_len = payload.get(4).copied().unwrap_or(0) as usize;
                        self.last_tag = be64(payload, 5 + tag_len);
                        self.header = true;
                        n += 1;
                    }
                    (10, 50) | (20, 40) => bail!("closed by the broker: {}", close_text(payload)),
                    _ => {}
                },
                2 if self.header => {
                    self.header = false;
                    self.first_body = true;
                    let want = VERIFY_SIZE.load(Ordering::Relaxed);
                    if want > 0 && be64(payload, 4) != want as u64 {
                        BAD_BODIES.fetch_add(1, Ordering::Relaxed);
                    }
                }
                3 if self.first_body => {
                    // The first body frame carries the send time.
                    self.first_body = false;
                    observe(latency, payload, false);
                }
                _ => {}
            }
            buf.advance(total);
        }
        Ok(n)
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        if self.acks && self.last_tag > self.acked_tag {
            let tag = self.last_tag;
            Enc(out).method(1, 60, 80, |e| {
                e.u64(tag);
                e.u8(1); // multiple
            });
            self.acked_tag = tag;
        }
    }
}

struct AmqpSub {
    conn: Conn,
    acks: bool,
}

#[async_trait::async_trait]
impl Subscriber for AmqpSub {
    async fn run(mut self: Box<Self>, quota: Quota, deadline: Instant) -> Result<SubResult> {
        let mut parser = AmqpParser {
            acks: self.acks,
            header: false,
            first_body: false,
            last_tag: 0,
            acked_tag: 0,
        };
        let c = &mut self.conn;
        receive(
            &mut c.rd,
            &mut c.wr,
            &mut c.buf,
            &mut parser,
            quota,
            deadline,
        )
        .await
    }
}

struct AmqpPub {
    conn: Conn,
    persistent: bool,
}

/// Reads the publisher confirms that are there (blocking when `block`).
async fn read_confirms(
    c: &mut Conn,
    inflight: &mut Inflight,
    confirmed: &mut u64,
    block: bool,
) -> Result<()> {
    if block {
        match tokio::time::timeout(Duration::from_secs(60), c.rd.read_buf(&mut c.buf)).await {
            Ok(Ok(0)) => bail!("publisher connection closed"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => bail!("no confirm for 60 s ({} outstanding)", inflight.len()),
        }
    } else {
        c.buf.reserve(4096);
        loop {
            match c.rd.try_read_buf(&mut c.buf) {
                Ok(0) => bail!("publisher connection closed"),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    while let Some((kind, _, total)) = frame(&c.buf) {
        let payload = c.buf.get(7..total - 1).unwrap_or_default();
        if kind == 1 {
            match method_id(payload) {
                (60, 80) => {
                    // Confirms are in order here (one queue): a tag confirms
                    // everything up to it.
                    let tag = be64(payload, 4);
                    if tag > *confirmed {
                        inflight.confirm((tag - *confirmed) as usize);
                        *confirmed = tag;
                    }
                }
                (60, 120) => bail!("the broker nacked a publish"),
                (10, 50) | (20, 40) => bail!("closed by the broker: {}", close_text(payload)),
                _ => {}
            }
        }
        c.buf.advance(total);
    }
    Ok(())
}

#[async_trait::async_trait]
impl Publisher for AmqpPub {
    async fn run(mut self: Box<Self>, dest: Dest<'_>, plan: PubPlan) -> Result<PubResult> {
        let (exchange, key) = match dest {
            Dest::Topic(t) => ("amq.topic", t),
            Dest::Queue(q) => ("", q),
        };
        let mut payload = vec![FILL; plan.size];
        let mut out = Vec::with_capacity(BATCH + plan.size + 128);
        let mut sent = 0u64;
        let mut pace = Pace::new(plan.rate);
        let batch = (BATCH / (plan.size + key.len() + 64)).max(1) as u64;
        let mut inflight = Inflight::default();
        let mut confirmed = 0u64;
        let max_body = self.conn.frame_max - 8;
        let c = &mut self.conn;
        while sent < plan.count {
            let mut due = pace.due(sent, batch, plan.count).await;
            if self.persistent {
                due = due.min(sent + (WINDOW - inflight.len()) as u64);
            }
            out.clear();
            let now = now_ns();
            if !pace.limited() {
                stamp(&mut payload, now);
            }
            let mut e = Enc(&mut out);
            while sent < due {
                let ts = if pace.limited() { now_ns() } else { now };
                if pace.limited() {
                    stamp(&mut payload, ts);
                }
                e.publish(exchange, key, self.persistent, &payload, max_body);
                if self.persistent {
                    inflight.push(ts);
                }
                sent += 1;
            }
            if !out.is_empty() {
                c.wr.write_all(&out).await?;
            }
            if self.persistent {
                let full = inflight.len() >= WINDOW;
                read_confirms(c, &mut inflight, &mut confirmed, full).await?;
            }
        }
        if self.persistent {
            while !inflight.is_empty() {
                read_confirms(c, &mut inflight, &mut confirmed, true).await?;
            }
            Ok(PubResult {
                sent,
                confirms: Some(inflight.latency),
            })
        } else {
            // basic.qos → qos-ok: the channel has processed every publish.
            c.send(|e| {
                e.method(1, 60, 10, |e| {
                    e.u32(0);
                    e.u16(0);
                    e.u8(0);
                })
            })
            .await?;
            c.until(60, 11).await?;
            Ok(PubResult::unconfirmed(sent))
        }
    }
}

#[async_trait::async_trait]
impl Driver for Amqp {
    fn spec(&self) -> String {
        match (self.persistent, self.acks) {
            (true, _) => "amqp:persistent".into(),
            (false, true) => "amqp:acks".into(),
            (false, false) => "amqp:transient".into(),
        }
    }

    fn protocol(&self) -> &'static str {
        "amqp"
    }

    fn mode(&self) -> String {
        match (self.persistent, self.acks) {
            (true, _) => format!("persistent, confirms, acks, prefetch {}", self.prefetch),
            (false, true) => format!("acks, prefetch {}", self.prefetch),
            (false, false) => "transient, no-ack".into(),
        }
    }

    async fn subscriber(&self, addr: SocketAddr, dest: Dest<'_>) -> Result<Box<dyn Subscriber>> {
        let mut c = Conn::connect(addr, None, true).await?;
        let queue = match dest {
            Dest::Topic(t) => {
                let q = c.declare("", false, true).await?;
                c.send(|e| {
                    e.method(1, 50, 20, |e| {
                        e.u16(0);
                        e.short(&q);
                        e.short("amq.topic");
                        e.short(t);
                        e.u8(0);
                        e.u32(0);
                    })
                })
                .await?;
                c.until(50, 21).await?;
                q
            }
            Dest::Queue(q) => c.declare(q, self.persistent, false).await?,
        };
        if self.acks {
            let prefetch = self.prefetch;
            c.send(|e| {
                e.method(1, 60, 10, |e| {
                    e.u32(0);
                    e.u16(prefetch);
                    e.u8(0);
                })
            })
            .await?;
            c.until(60, 11).await?;
        }
        let no_ack = !self.acks;
        c.send(|e| {
            e.method(1, 60, 20, |e| {
                e.u16(0);
                e.short(&queue);
                e.short("");
                e.u8(u8::from(no_ack) << 1);
                e.u32(0);
            })
        })
        .await?;
        c.until(60, 21).await?;
        Ok(Box::new(AmqpSub {
            conn: c,
            acks: self.acks,
        }))
    }

    async fn publisher(&self, addr: SocketAddr) -> Result<Box<dyn Publisher>> {
        let mut conn = Conn::connect(addr, None, true).await?;
        if self.persistent {
            conn.send(|e| e.method(1, 85, 10, |e| e.u8(0))).await?;
            conn.until(85, 11).await?;
        }
        Ok(Box::new(AmqpPub {
            conn,
            persistent: self.persistent,
        }))
    }

    async fn idle(&self, addr: SocketAddr, from: Option<IpAddr>) -> Result<Idle> {
        let mut conn = Conn::connect(addr, from, false).await?;
        conn.buf = BytesMut::new();
        Ok(Box::new(conn))
    }
}
