//! The lean HTTP publisher: HTTP/1.1 over keep-alive connections, one
//! request at a time per connection (no pipelining, as real HTTP clients
//! do), single messages (`POST /v1/topics/{topic}`) or NDJSON batches
//! (`?batch=true`). Requests are written by hand into one buffer and
//! responses parsed in place; nothing is allocated per request.
//!
//! There is no HTTP subscriber driver: HTTP publish scenarios deliver to a
//! subscriber on another protocol. [`echo_server`] is the reference the
//! broker is compared with: a plain axum endpoint that answers every POST
//! with its body, on the same HTTP stack (axum/hyper/tokio).

use crate::driver::{
    Dest, Driver, FILL, Idle, PubPlan, PubResult, Publisher, Subscriber, now_ns, stamp,
};
use anyhow::{Context, Result, bail};
use bytes::{Buf, BytesMut};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The HTTP driver: `batch` messages per request (1 = single publish).
#[derive(Debug, Clone, Copy)]
pub struct Http {
    pub batch: usize,
}

/// One keep-alive connection.
#[derive(Debug)]
pub struct HttpConn {
    stream: TcpStream,
    buf: BytesMut,
}

impl HttpConn {
    pub async fn connect(addr: SocketAddr) -> Result<HttpConn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
        })
    }

    /// Sends one request (already encoded) and reads the response; returns
    /// its status code.
    pub async fn round_trip(&mut self, request: &[u8]) -> Result<u16> {
        self.stream.write_all(request).await?;
        loop {
            if let Some((status, len)) = response(&self.buf)? {
                self.buf.advance(len);
                return Ok(status);
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("server closed the connection");
            }
        }
    }
}

/// Parses one complete response at the front of `buf`: (status, length
/// including the body); `None` = need more.
fn response(buf: &[u8]) -> Result<Option<(u16, usize)>> {
    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = buf.get(..end).unwrap_or_default();
    let status = head
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u16>().ok())
        .context("malformed status line")?;
    let mut body = 0usize;
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            let (name, value) = line.split_at(colon);
            if name.eq_ignore_ascii_case(b"content-length") {
                body = std::str::from_utf8(value.get(1..).unwrap_or_default())
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .context("bad content-length")?;
            }
        }
    }
    let total = end + 4 + body;
    Ok((buf.len() >= total).then_some((status, total)))
}

/// Writes a POST request with `body` into `out`.
pub fn request(out: &mut Vec<u8>, path: &str, content_type: Option<&str>, body: &[u8]) {
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: bench\r\n");
    if let Some(ct) = content_type {
        out.extend_from_slice(b"content-type: ");
        out.extend_from_slice(ct.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

/// A JSON line of `size` bytes (at least 20) carrying a send time that
/// [`crate::driver::stamped`] reads back: `"T<16 hex digits>ZZZ…"` (the
/// fill is the generator's pattern, [`FILL`] = `Z`, which the smoke test's
/// body check knows).
fn json_line(out: &mut Vec<u8>, size: usize, ts: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let start = out.len();
    out.extend_from_slice(b"\"T");
    for shift in (0..16).rev() {
        let digit = HEX.get(((ts >> (shift * 4)) & 0xf) as usize);
        out.push(digit.copied().unwrap_or(b'0'));
    }
    while out.len() - start < size.max(20) - 1 {
        out.push(FILL);
    }
    out.push(b'"');
}

struct HttpPub {
    conn: HttpConn,
    batch: usize,
}

#[async_trait::async_trait]
impl Publisher for HttpPub {
    async fn run(mut self: Box<Self>, dest: Dest<'_>, plan: PubPlan) -> Result<PubResult> {
        let Dest::Topic(topic) = dest else {
            bail!("the HTTP driver publishes to topics only");
        };
        let batch = self.batch.max(1);
        let path = if batch > 1 {
            format!("/v1/topics/{topic}?batch=true")
        } else {
            format!("/v1/topics/{topic}")
        };
        let content_type = (batch > 1).then_some("application/x-ndjson");
        let mut payload = vec![FILL; plan.size];
        let mut body = Vec::with_capacity(batch * (plan.size.max(20) + 1));
        let mut req = Vec::with_capacity(body.capacity() + 256);
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < plan.count {
            let n = (plan.count - sent).min(batch as u64);
            if let Some(rate) = plan.rate {
                let due = start + Duration::from_secs_f64(sent as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            let ts = now_ns();
            let body: &[u8] = if batch > 1 {
                body.clear();
                for _ in 0..n {
                    json_line(&mut body, plan.size, ts);
                    body.push(b'\n');
                }
                &body
            } else {
                stamp(&mut payload, ts);
                &payload
            };
            req.clear();
            request(&mut req, &path, content_type, body);
            let status = self.conn.round_trip(&req).await?;
            if status != 202 {
                bail!("publish answered {status}");
            }
            sent += n;
        }
        // Every request was answered 202: the broker has every message.
        Ok(PubResult::unconfirmed(sent))
    }
}

#[async_trait::async_trait]
impl Driver for Http {
    fn protocol(&self) -> &'static str {
        "http"
    }

    fn spec(&self) -> String {
        if self.batch > 1 {
            format!("http:batch{}", self.batch)
        } else {
            "http".into()
        }
    }

    fn mode(&self) -> String {
        if self.batch > 1 {
            format!("keep-alive, NDJSON batches of {}", self.batch)
        } else {
            "keep-alive, one message per request".into()
        }
    }

    async fn subscriber(&self, _addr: SocketAddr, _dest: Dest<'_>) -> Result<Box<dyn Subscriber>> {
        bail!("the HTTP driver only publishes; subscribe with another protocol")
    }

    async fn idle(&self, addr: SocketAddr, from: Option<std::net::IpAddr>) -> Result<Idle> {
        Ok(Box::new(crate::driver::connect(addr, from).await?))
    }

    async fn publisher(&self, addr: SocketAddr) -> Result<Box<dyn Publisher>> {
        Ok(Box::new(HttpPub {
            conn: HttpConn::connect(addr).await?,
            batch: self.batch,
        }))
    }
}

/// Requests per second that `connections` keep-alive connections achieve
/// sending `count` single-message POSTs of `size` bytes to `path` in total.
pub async fn request_rate(
    addr: SocketAddr,
    path: &str,
    connections: usize,
    count: u64,
    size: usize,
) -> Result<f64> {
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        conns.push(HttpConn::connect(addr).await?);
    }
    let per = count / conns.len() as u64;
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            let path = path.to_owned();
            tokio::spawn(async move {
                let mut payload = vec![FILL; size];
                let mut req = Vec::with_capacity(size + 256);
                for _ in 0..per {
                    stamp(&mut payload, now_ns());
                    req.clear();
                    request(&mut req, &path, None, &payload);
                    let status = c.round_trip(&req).await?;
                    if !(200..300).contains(&status) {
                        bail!("answered {status}");
                    }
                }
                Ok::<u64, anyhow::Error>(per)
            })
        })
        .collect();
    let mut done = 0;
    for t in tasks {
        done += t.await.context("request task")??;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// The reference endpoint: every POST is answered `202` with its body, by
/// axum on a multi-threaded tokio runtime, `TCP_NODELAY` set — the same
/// stack Switchyard's HTTP listener runs on, without the broker.
pub async fn echo_server(listener: tokio::net::TcpListener) -> Result<()> {
    use axum::routing::post;
    async fn echo(body: axum::body::Bytes) -> (axum::http::StatusCode, axum::body::Bytes) {
        (axum::http::StatusCode::ACCEPTED, body)
    }
    let app = axum::Router::new().route("/{*path}", post(echo));
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_with_and_without_bodies() {
        let r = b"HTTP/1.1 202 Accepted\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(response(r).ok().flatten(), Some((202, r.len())));
        assert_eq!(response(&r[..r.len() - 1]).ok().flatten(), None);
        let r = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\nHTTP/1.1";
        assert_eq!(response(r).ok().flatten(), Some((404, r.len() - 8)));
    }

    #[test]
    fn json_lines_are_json_and_stamped() {
        let mut out = Vec::new();
        json_line(&mut out, 40, 0x1234);
        assert_eq!(out.len(), 40);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
        assert!(v.is_string());
        assert_eq!(crate::driver::stamped(&out), Some(0x1234));
    }
}
