//! The lean STOMP 1.2 driver: SEND (optionally `persistent:true` with a
//! receipt for every frame), SUBSCRIBE with `ack:auto` or
//! `ack:client-individual` (one ACK per message, all of a read buffer in one
//! write) and a prefetch.
//!
//! Topics: the canonical `a.b.c` is `/topic/a.b.c`; a queue is `/queue/q`
//! (ARCHITECTURE.md, "Protocol mapping"; RabbitMQ's STOMP plugin maps them
//! the same way).

use crate::driver::{
    Deliveries, Dest, Driver, FILL, Idle, Inflight, Pace, PubPlan, PubResult, Publisher, Quota,
    SubResult, Subscriber, connect, now_ns, observe, receive, stamp,
};
use anyhow::{Result, bail};
use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const BATCH: usize = 64 * 1024;
/// Receipts a persistent publisher waits for at most at once.
const WINDOW: usize = 1000;
const PREFETCH: u32 = 1000;

/// The STOMP driver.
#[derive(Debug, Clone, Copy)]
pub struct Stomp {
    /// Subscriptions use `ack:client-individual` (else `ack:auto`).
    pub acks: bool,
    /// SEND with `persistent:true` and a receipt for each frame.
    pub persistent: bool,
}

impl Stomp {
    pub fn auto() -> Stomp {
        Stomp {
            acks: false,
            persistent: false,
        }
    }

    pub fn client_individual() -> Stomp {
        Stomp {
            acks: true,
            persistent: false,
        }
    }

    pub fn persistent() -> Stomp {
        Stomp {
            acks: true,
            persistent: true,
        }
    }
}

fn destination(dest: Dest<'_>) -> String {
    match dest {
        Dest::Topic(t) => format!("/topic/{t}"),
        Dest::Queue(q) => format!("/queue/{q}"),
    }
}

/// A frame at the front of `buf`.
struct Frame<'a> {
    command: &'a [u8],
    headers: &'a [u8],
    body: &'a [u8],
    /// Bytes to consume (the frame, its NUL and the EOLs after it).
    total: usize,
}

impl Frame<'_> {
    fn header(&self, name: &[u8]) -> Option<&[u8]> {
        self.headers.split(|&b| b == b'\n').find_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = memchr::memchr(b':', line)?;
            (line.get(..colon)? == name).then(|| line.get(colon + 1..))?
        })
    }
}

/// Parses one frame; `None` = incomplete.
fn frame(buf: &[u8]) -> Result<Option<Frame<'_>>> {
    // Heart-beat EOLs between frames.
    let skip = buf
        .iter()
        .position(|&b| b != b'\n' && b != b'\r')
        .unwrap_or(buf.len());
    let rest = buf.get(skip..).unwrap_or_default();
    let Some(eol) = memchr::memchr(b'\n', rest) else {
        return Ok(None);
    };
    let command = rest.get(..eol).unwrap_or_default();
    let command = command.strip_suffix(b"\r").unwrap_or(command);
    let after = eol + 1;
    // Headers end at an empty line.
    let tail = rest.get(after..).unwrap_or_default();
    let (headers, body_at) = if tail.starts_with(b"\n") {
        (&b""[..], after + 1)
    } else if tail.starts_with(b"\r\n") {
        (&b""[..], after + 2)
    } else if let Some(end) = memchr::memmem::find(tail, b"\n\n") {
        (tail.get(..end).unwrap_or_default(), after + end + 2)
    } else if let Some(end) = memchr::memmem::find(tail, b"\r\n\r\n") {
        (tail.get(..end).unwrap_or_default(), after + end + 4)
    } else {
        return Ok(None);
    };
    let f = Frame {
        command,
        headers,
        body: &[],
        total: 0,
    };
    let len = match f.header(b"content-length") {
        Some(v) => Some(std::str::from_utf8(v)?.trim().parse::<usize>()?),
        None => None,
    };
    let body_end = match len {
        Some(n) => {
            if rest.len() < body_at + n + 1 {
                return Ok(None);
            }
            body_at + n
        }
        None => match memchr::memchr(0, rest.get(body_at..).unwrap_or_default()) {
            Some(z) => body_at + z,
            None => return Ok(None),
        },
    };
    Ok(Some(Frame {
        command,
        headers,
        body: rest.get(body_at..body_end).unwrap_or_default(),
        total: skip + body_end + 1,
    }))
}

fn error_text(f: &Frame<'_>) -> String {
    format!(
        "ERROR {}: {}",
        String::from_utf8_lossy(f.header(b"message").unwrap_or_default()),
        String::from_utf8_lossy(f.body)
    )
}

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
            buf: BytesMut::with_capacity(if from.is_some() { 1024 } else { 64 * 1024 }),
        };
        c.wr.write_all(
            b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\nheart-beat:0,0\n\n\0",
        )
        .await?;
        c.until(b"CONNECTED").await?;
        Ok(c)
    }

    /// Reads frames until one with `command` (an ERROR fails).
    async fn until(&mut self, command: &[u8]) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            while let Some(f) = frame(&self.buf)? {
                if f.command == b"ERROR" {
                    bail!("{}", error_text(&f));
                }
                let found = f.command == command;
                let total = f.total;
                self.buf.advance(total);
                if found {
                    return Ok(());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rd.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) => bail!("connection closed"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => bail!("no {} from the broker", String::from_utf8_lossy(command)),
            }
        }
    }
}

/// Counts MESSAGE frames; with acks, one ACK per message.
struct StompParser {
    acks: bool,
}

impl Deliveries for StompParser {
    fn parse(
        &mut self,
        buf: &mut BytesMut,
        out: &mut Vec<u8>,
        latency: &mut Histogram<u64>,
    ) -> Result<u64> {
        let mut n = 0;
        while let Some(f) = frame(buf)? {
            match f.command {
                b"MESSAGE" => {
                    observe(latency, f.body, true);
                    if self.acks {
                        let Some(id) = f.header(b"ack") else {
                            bail!(
                                "MESSAGE without an ack header on a client-individual subscription"
                            );
                        };
                        out.extend_from_slice(b"ACK\nid:");
                        out.extend_from_slice(id);
                        out.extend_from_slice(b"\n\n\0");
                    }
                    n += 1;
                }
                b"ERROR" => bail!("{}", error_text(&f)),
                _ => {}
            }
            let total = f.total;
            buf.advance(total);
        }
        Ok(n)
    }
}

struct StompSub {
    conn: Conn,
    acks: bool,
}

#[async_trait::async_trait]
impl Subscriber for StompSub {
    async fn run(mut self: Box<Self>, quota: Quota, deadline: Instant) -> Result<SubResult> {
        let mut parser = StompParser { acks: self.acks };
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

struct StompPub {
    conn: Conn,
    persistent: bool,
}

fn send_frame(out: &mut Vec<u8>, dest: &str, persistent: bool, receipt: Option<u64>, body: &[u8]) {
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(b"SEND\ndestination:");
    out.extend_from_slice(dest.as_bytes());
    if persistent {
        out.extend_from_slice(b"\npersistent:true");
    }
    if let Some(r) = receipt {
        out.extend_from_slice(b"\nreceipt:");
        out.extend_from_slice(n.format(r).as_bytes());
    }
    out.extend_from_slice(b"\ncontent-length:");
    out.extend_from_slice(n.format(body.len()).as_bytes());
    out.extend_from_slice(b"\n\n");
    out.extend_from_slice(body);
    out.push(0);
}

/// Consumes the RECEIPTs that are there (blocking when `block`).
async fn read_receipts(c: &mut Conn, inflight: &mut Inflight, block: bool) -> Result<()> {
    if block {
        match tokio::time::timeout(Duration::from_secs(60), c.rd.read_buf(&mut c.buf)).await {
            Ok(Ok(0)) => bail!("publisher connection closed"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => bail!("no RECEIPT for 60 s ({} outstanding)", inflight.len()),
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
    let mut receipts = 0;
    while let Some(f) = frame(&c.buf)? {
        match f.command {
            b"RECEIPT" => receipts += 1,
            b"ERROR" => bail!("{}", error_text(&f)),
            _ => {}
        }
        let total = f.total;
        c.buf.advance(total);
    }
    inflight.confirm(receipts);
    Ok(())
}

#[async_trait::async_trait]
impl Publisher for StompPub {
    async fn run(mut self: Box<Self>, dest: Dest<'_>, plan: PubPlan) -> Result<PubResult> {
        let dest = destination(dest);
        let mut payload = vec![FILL; plan.size];
        let mut out = Vec::with_capacity(BATCH + plan.size + 128);
        let mut sent = 0u64;
        let mut pace = Pace::new(plan.rate);
        let batch = (BATCH / (plan.size + dest.len() + 64)).max(1) as u64;
        let mut inflight = Inflight::default();
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
            while sent < due {
                let ts = if pace.limited() { now_ns() } else { now };
                if pace.limited() {
                    stamp(&mut payload, ts);
                }
                sent += 1;
                // Persistent: a receipt for every SEND (the confirmation);
                // otherwise one on the last, so the broker has them all.
                let receipt = (self.persistent || sent == plan.count).then_some(sent);
                send_frame(&mut out, &dest, self.persistent, receipt, &payload);
                if receipt.is_some() {
                    inflight.push(ts);
                }
            }
            if !out.is_empty() {
                c.wr.write_all(&out).await?;
            }
            if self.persistent {
                let full = inflight.len() >= WINDOW;
                read_receipts(c, &mut inflight, full).await?;
            }
        }
        while !inflight.is_empty() {
            read_receipts(c, &mut inflight, true).await?;
        }
        Ok(PubResult {
            sent,
            confirms: self.persistent.then_some(inflight.latency),
        })
    }
}

#[async_trait::async_trait]
impl Driver for Stomp {
    fn spec(&self) -> String {
        match (self.persistent, self.acks) {
            (true, _) => "stomp:persistent".into(),
            (false, true) => "stomp:acks".into(),
            (false, false) => "stomp:auto".into(),
        }
    }

    fn protocol(&self) -> &'static str {
        "stomp"
    }

    fn mode(&self) -> String {
        match (self.persistent, self.acks) {
            (true, _) => "persistent:true + receipts, client-individual acks".into(),
            (false, true) => "client-individual acks".into(),
            (false, false) => "ack:auto".into(),
        }
    }

    async fn subscriber(&self, addr: SocketAddr, dest: Dest<'_>) -> Result<Box<dyn Subscriber>> {
        let mut conn = Conn::connect(addr, None).await?;
        let ack = if self.acks {
            format!("ack:client-individual\nprefetch-count:{PREFETCH}")
        } else {
            "ack:auto".to_owned()
        };
        let sub = format!(
            "SUBSCRIBE\nid:1\ndestination:{}\n{ack}\nreceipt:sub\n\n\0",
            destination(dest)
        );
        conn.wr.write_all(sub.as_bytes()).await?;
        conn.until(b"RECEIPT").await?;
        Ok(Box::new(StompSub {
            conn,
            acks: self.acks,
        }))
    }

    async fn publisher(&self, addr: SocketAddr) -> Result<Box<dyn Publisher>> {
        let conn = Conn::connect(addr, None).await?;
        Ok(Box::new(StompPub {
            conn,
            persistent: self.persistent,
        }))
    }

    async fn idle(&self, addr: SocketAddr, from: Option<IpAddr>) -> Result<Idle> {
        let mut conn = Conn::connect(addr, from).await?;
        conn.buf = BytesMut::new();
        Ok(Box::new(conn))
    }
}
