//! The lean NATS driver.

use crate::driver::{
    Deliveries, Dest, Driver, FILL, Idle, Pace, PubPlan, PubResult, Publisher, Quota, SubResult,
    Subscriber, connect, histogram, now_ns, observe, receive, record, stamp, stamped,
};
use anyhow::{Result, bail};
use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const BATCH: usize = 64 * 1024;

/// The NATS driver.
#[derive(Debug, Default)]
pub struct Nats;

struct Conn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    buf: BytesMut,
}

impl Conn {
    async fn connect(addr: SocketAddr, from: Option<IpAddr>) -> Result<Conn> {
        let (rd, wr) = connect(addr, from).await?.into_split();
        let mut c = Conn {
            rd,
            wr,
            buf: BytesMut::with_capacity(if from.is_some() { 4096 } else { 64 * 1024 }),
        };
        c.line().await?; // INFO
        c.wr.write_all(
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":false,\"protocol\":1}\r\n",
        )
        .await?;
        Ok(c)
    }

    /// Reads one control line.
    async fn line(&mut self) -> Result<String> {
        loop {
            if let Some(nl) = memchr::memchr(b'\n', &self.buf) {
                let line = String::from_utf8_lossy(self.buf.get(..nl).unwrap_or_default())
                    .trim_end()
                    .to_owned();
                self.buf.advance(nl + 1);
                return Ok(line);
            }
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                bail!("connection closed");
            }
        }
    }

    /// PING and wait for the PONG: the server has processed everything sent before.
    async fn sync(&mut self) -> Result<()> {
        self.wr.write_all(b"PING\r\n").await?;
        loop {
            let l = self.line().await?;
            if l == "PONG" {
                return Ok(());
            }
            if l.starts_with("-ERR") {
                bail!("server error: {l}");
            }
        }
    }
}

fn pub_line(out: &mut Vec<u8>, topic: &str, reply: Option<&str>, payload: &[u8]) {
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(topic.as_bytes());
    out.push(b' ');
    if let Some(r) = reply {
        out.extend_from_slice(r.as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(n.format(payload.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// A parsed delivery: (reply subject, payload range in the buffer).
enum Frame {
    Msg {
        reply: Option<String>,
        start: usize,
        len: usize,
        consumed: usize,
    },
    Ping {
        consumed: usize,
    },
    Other {
        consumed: usize,
    },
    Err(String),
}

/// Parses one server frame from the front of `buf`; `None` = need more.
fn frame(buf: &[u8], want_reply: bool) -> Option<Frame> {
    let nl = memchr::memchr(b'\n', buf)?;
    let line = buf.get(..nl)?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.starts_with(b"MSG ") {
        // MSG <subject> <sid> [reply] <size>: the size is the last word.
        let sp = memchr::memrchr(b' ', line)?;
        let size: usize = std::str::from_utf8(line.get(sp + 1..)?)
            .ok()?
            .parse()
            .ok()?;
        let start = nl + 1;
        if buf.len() < start + size + 2 {
            return None;
        }
        let reply = if want_reply {
            let args: Vec<&[u8]> = line
                .split(|&b| b == b' ')
                .filter(|p| !p.is_empty())
                .collect();
            (args.len() == 5)
                .then(|| args.get(3).map(|r| String::from_utf8_lossy(r).into_owned()))
                .flatten()
        } else {
            None
        };
        Some(Frame::Msg {
            reply,
            start,
            len: size,
            consumed: start + size + 2,
        })
    } else if line == b"PING" {
        Some(Frame::Ping { consumed: nl + 1 })
    } else if line.starts_with(b"-ERR") {
        Some(Frame::Err(String::from_utf8_lossy(line).into_owned()))
    } else {
        Some(Frame::Other { consumed: nl + 1 })
    }
}

struct NatsSub {
    conn: Conn,
}

/// Counts `MSG` frames, answers `PING`.
struct NatsParser;

impl Deliveries for NatsParser {
    fn parse(
        &mut self,
        buf: &mut BytesMut,
        out: &mut Vec<u8>,
        latency: &mut Histogram<u64>,
    ) -> Result<u64> {
        let mut n = 0;
        while let Some(f) = frame(buf, false) {
            match f {
                Frame::Msg {
                    start,
                    len,
                    consumed,
                    ..
                } => {
                    observe(
                        latency,
                        buf.get(start..start + len).unwrap_or_default(),
                        true,
                    );
                    n += 1;
                    buf.advance(consumed);
                }
                Frame::Ping { consumed } => {
                    buf.advance(consumed);
                    out.extend_from_slice(b"PONG\r\n");
                }
                Frame::Other { consumed } => buf.advance(consumed),
                Frame::Err(e) => bail!("server error: {e}"),
            }
        }
        Ok(n)
    }
}

#[async_trait::async_trait]
impl Subscriber for NatsSub {
    async fn run(mut self: Box<Self>, quota: Quota, deadline: Instant) -> Result<SubResult> {
        let c = &mut self.conn;
        receive(
            &mut c.rd,
            &mut c.wr,
            &mut c.buf,
            &mut NatsParser,
            quota,
            deadline,
        )
        .await
    }
}

struct NatsPub {
    conn: Conn,
}

#[async_trait::async_trait]
impl Publisher for NatsPub {
    async fn run(mut self: Box<Self>, dest: Dest<'_>, plan: PubPlan) -> Result<PubResult> {
        let topic = dest.name();
        let mut payload = vec![FILL; plan.size];
        let mut out = Vec::with_capacity(BATCH + plan.size + 64);
        let mut sent = 0u64;
        let mut pace = Pace::new(plan.rate);
        let batch = (BATCH / (plan.size + 32)).max(1) as u64;
        while sent < plan.count {
            let due = pace.due(sent, batch, plan.count).await;
            out.clear();
            if !pace.limited() {
                stamp(&mut payload, now_ns());
            }
            while sent < due {
                if pace.limited() {
                    stamp(&mut payload, now_ns());
                }
                pub_line(&mut out, topic, None, &payload);
                sent += 1;
            }
            if !out.is_empty() {
                self.conn.wr.write_all(&out).await?;
            }
        }
        self.conn.sync().await?;
        Ok(PubResult::unconfirmed(sent))
    }
}

#[async_trait::async_trait]
impl Driver for Nats {
    fn spec(&self) -> String {
        "nats".into()
    }

    fn protocol(&self) -> &'static str {
        "nats"
    }

    async fn subscriber(&self, addr: SocketAddr, dest: Dest<'_>) -> Result<Box<dyn Subscriber>> {
        let mut conn = Conn::connect(addr, None).await?;
        let line = match dest {
            Dest::Queue(t) => format!("SUB {t} benchgroup 1\r\n"),
            Dest::Topic(t) => format!("SUB {t} 1\r\n"),
        };
        conn.wr.write_all(line.as_bytes()).await?;
        conn.sync().await?;
        Ok(Box::new(NatsSub { conn }))
    }

    async fn publisher(&self, addr: SocketAddr) -> Result<Box<dyn Publisher>> {
        let mut conn = Conn::connect(addr, None).await?;
        conn.sync().await?;
        Ok(Box::new(NatsPub { conn }))
    }

    async fn idle(&self, addr: SocketAddr, from: Option<IpAddr>) -> Result<Idle> {
        let mut conn = Conn::connect(addr, from).await?;
        conn.sync().await?;
        conn.buf = BytesMut::new();
        Ok(Box::new(conn))
    }

    async fn responder(
        &self,
        addr: SocketAddr,
        topic: &str,
    ) -> Result<tokio::task::JoinHandle<()>> {
        let mut c = Conn::connect(addr, None).await?;
        c.wr.write_all(format!("SUB {topic} 1\r\n").as_bytes())
            .await?;
        c.sync().await?;
        Ok(tokio::spawn(async move {
            let mut out = Vec::with_capacity(BATCH);
            loop {
                out.clear();
                while let Some(f) = frame(&c.buf, true) {
                    match f {
                        Frame::Msg {
                            reply,
                            start,
                            len,
                            consumed,
                        } => {
                            if let (Some(r), Some(p)) = (reply, c.buf.get(start..start + len)) {
                                pub_line(&mut out, &r, None, p);
                            }
                            c.buf.advance(consumed);
                        }
                        Frame::Ping { consumed } => {
                            out.extend_from_slice(b"PONG\r\n");
                            c.buf.advance(consumed);
                        }
                        Frame::Other { consumed } => c.buf.advance(consumed),
                        Frame::Err(_) => return,
                    }
                }
                if !out.is_empty() && c.wr.write_all(&out).await.is_err() {
                    return;
                }
                c.buf.reserve(64 * 1024);
                match c.rd.read_buf(&mut c.buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        }))
    }

    async fn requester(
        &self,
        addr: SocketAddr,
        topic: &str,
        plan: PubPlan,
        window: usize,
    ) -> Result<SubResult> {
        let mut c = Conn::connect(addr, None).await?;
        let inbox = format!("_INBOX.bench.{}", now_ns());
        c.wr.write_all(format!("SUB {inbox} 1\r\n").as_bytes())
            .await?;
        c.sync().await?;
        let mut payload = vec![FILL; plan.size.max(8)];
        let mut latency = histogram();
        let mut out = Vec::with_capacity(BATCH);
        let mut sent = 0u64;
        let mut received = 0u64;
        let window = window.max(1) as u64;
        let deadline = Instant::now() + Duration::from_secs(120);
        while received < plan.count {
            out.clear();
            while sent < plan.count && sent - received < window {
                stamp(&mut payload, now_ns());
                pub_line(&mut out, topic, Some(&inbox), &payload);
                sent += 1;
            }
            if !out.is_empty() {
                c.wr.write_all(&out).await?;
            }
            loop {
                match frame(&c.buf, false) {
                    None => break,
                    Some(Frame::Msg {
                        start,
                        len,
                        consumed,
                        ..
                    }) => {
                        if let Some(ts) = c.buf.get(start..start + len).and_then(stamped) {
                            record(&mut latency, ts);
                        }
                        received += 1;
                        c.buf.advance(consumed);
                    }
                    Some(Frame::Ping { consumed }) => {
                        c.buf.advance(consumed);
                        c.wr.write_all(b"PONG\r\n").await?;
                    }
                    Some(Frame::Other { consumed }) => c.buf.advance(consumed),
                    Some(Frame::Err(e)) => bail!("server error: {e}"),
                }
            }
            if received >= plan.count || sent - received >= window || sent >= plan.count {
                if received >= plan.count {
                    break;
                }
                c.buf.reserve(64 * 1024);
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, c.rd.read_buf(&mut c.buf)).await {
                    Ok(Ok(0)) => bail!("requester connection closed"),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => break,
                }
            }
        }
        Ok(SubResult {
            received,
            last_ns: now_ns(),
            latency,
        })
    }
}
