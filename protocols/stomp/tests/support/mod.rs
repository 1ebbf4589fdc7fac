//! A STOMP test client over raw frames (tokio `TcpStream` and this crate's
//! codec), and its [`conformance::Client`] implementation.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    dead_code
)]

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use switchyard_stomp::codec::{Command, Frame, FrameDecoder, Limits, Version, encode_frame};
use switchyard_testkit::conformance;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous bound for anything that should happen (not a speed assertion).
pub const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing arrives" is watched.
pub const QUIET: Duration = Duration::from_millis(300);

/// What the next read brought.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Next {
    Frame(Frame),
    Timeout,
    Closed,
}

/// A client speaking raw STOMP frames.
#[derive(Debug)]
pub struct StompClient {
    stream: TcpStream,
    rbuf: BytesMut,
    dec: FrameDecoder,
    pub version: Option<Version>,
    /// Frames read while waiting for something else (e.g. MESSAGEs that
    /// arrived before an awaited RECEIPT).
    queued: VecDeque<Frame>,
    next_receipt: u64,
    next_sub: u64,
    /// Heart-beat EOLs seen between frames.
    pub eols_seen: usize,
}

impl StompClient {
    /// Opens a TCP connection without sending anything.
    pub async fn tcp(addr: SocketAddr) -> StompClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        StompClient {
            stream,
            rbuf: BytesMut::new(),
            dec: FrameDecoder::new(Limits {
                max_body: 64 << 20,
                ..Limits::default()
            }),
            version: None,
            queued: VecDeque::new(),
            next_receipt: 0,
            next_sub: 0,
            eols_seen: 0,
        }
    }

    /// Connects and completes the handshake. `accept` is the
    /// `accept-version` header (`None`: a STOMP 1.0 client sends none).
    pub async fn connect(addr: SocketAddr, accept: Option<&str>) -> StompClient {
        let mut headers = vec![("host", "/")];
        if let Some(a) = accept {
            headers.push(("accept-version", a));
        }
        let (c, connected) = StompClient::connect_with(addr, Command::Connect, &headers).await;
        assert_eq!(connected.command, Command::Connected, "{connected:?}");
        c
    }

    /// Sends a CONNECT (or STOMP) frame with `headers`; returns the answer.
    pub async fn connect_with(
        addr: SocketAddr,
        command: Command,
        headers: &[(&str, &str)],
    ) -> (StompClient, Frame) {
        let mut c = StompClient::tcp(addr).await;
        let mut f = Frame::new(command);
        for (k, v) in headers {
            f = f.with(k, v);
        }
        c.send_frame(&f).await;
        let answer = c.frame().await;
        if answer.command == Command::Connected {
            let v = answer
                .header("version")
                .and_then(Version::parse)
                .unwrap_or(Version::V1_0);
            c.version = Some(v);
            c.dec.set_version(v);
        }
        (c, answer)
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    pub async fn send_frame(&mut self, f: &Frame) {
        let mut buf = BytesMut::new();
        encode_frame(f, self.version, &mut buf).expect("encodable frame");
        self.send_raw(&buf).await;
    }

    /// Half-closes the connection (no more frames from this client).
    pub async fn shutdown_write(&mut self) {
        self.stream.shutdown().await.unwrap();
    }

    /// The next frame (queued ones first).
    pub async fn next_frame(&mut self, timeout: Duration) -> Next {
        if let Some(f) = self.queued.pop_front() {
            return Next::Frame(f);
        }
        self.read_frame(timeout).await
    }

    /// The next frame from the socket.
    async fn read_frame(&mut self, timeout: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let before = self.rbuf.len();
            let in_frame = self.dec.in_frame();
            match self.dec.decode(&mut self.rbuf) {
                Ok(Some(f)) => return Next::Frame(f),
                Ok(None) => {
                    if !in_frame && !self.dec.in_frame() {
                        self.eols_seen += before - self.rbuf.len();
                    }
                }
                Err(e) => panic!("server sent an undecodable frame: {e}"),
            }
            self.rbuf.reserve(64 * 1024);
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf));
            match read.await {
                Err(_) => return Next::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => return Next::Closed,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next frame; panics on timeout or close.
    pub async fn frame(&mut self) -> Frame {
        match self.next_frame(WAIT).await {
            Next::Frame(f) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next frame, which must be a `command`.
    pub async fn expect(&mut self, command: Command) -> Frame {
        let f = self.frame().await;
        assert_eq!(f.command, command, "unexpected frame: {f:?}");
        f
    }

    /// Waits for the RECEIPT `id`; other frames are kept for later.
    pub async fn wait_receipt(&mut self, id: &str) -> Result<()> {
        let mut held = Vec::new();
        let result = loop {
            let f = match self.read_frame(WAIT).await {
                Next::Frame(f) => f,
                other => break Err(anyhow::anyhow!("no RECEIPT {id}: {other:?}")),
            };
            match f.command {
                Command::Receipt if f.header("receipt-id") == Some(id) => break Ok(()),
                Command::Error => {
                    break Err(anyhow::anyhow!("ERROR instead of RECEIPT {id}: {f:?}"));
                }
                _ => held.push(f),
            }
        };
        self.queued.extend(held);
        result
    }

    /// Sends `f` with a fresh `receipt` header and waits for the RECEIPT.
    pub async fn with_receipt(&mut self, f: Frame) -> Result<()> {
        self.next_receipt += 1;
        let id = format!("r{}", self.next_receipt);
        self.send_frame(&f.with("receipt", &id)).await;
        self.wait_receipt(&id).await
    }

    /// SUBSCRIBE (confirmed by a receipt); returns the subscription id.
    pub async fn subscribe(&mut self, destination: &str, ack: &str) -> String {
        self.subscribe_with(destination, ack, &[]).await
    }

    pub async fn subscribe_with(
        &mut self,
        destination: &str,
        ack: &str,
        extra: &[(&str, &str)],
    ) -> String {
        self.next_sub += 1;
        let id = format!("s{}", self.next_sub);
        let mut f = Frame::new(Command::Subscribe)
            .with("id", &id)
            .with("destination", destination)
            .with("ack", ack);
        for (k, v) in extra {
            f = f.with(k, v);
        }
        self.with_receipt(f).await.expect("subscribed");
        id
    }

    /// SEND with a content-length (and a receipt, waited for).
    pub async fn send(&mut self, destination: &str, body: &[u8]) {
        self.send_with(destination, body, &[]).await;
    }

    pub async fn send_with(&mut self, destination: &str, body: &[u8], extra: &[(&str, &str)]) {
        let mut f = Frame::new(Command::Send)
            .with("destination", destination)
            .with("content-length", &body.len().to_string());
        for (k, v) in extra {
            f = f.with(k, v);
        }
        self.with_receipt(f.with_body(Bytes::copy_from_slice(body)))
            .await
            .expect("sent");
    }

    /// The next MESSAGE (other frames are skipped), or `None` after `timeout`.
    pub async fn message_within(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Next::Frame(f) if f.command == Command::Message => return Some(f),
                Next::Frame(f) if f.command == Command::Error => panic!("ERROR: {f:?}"),
                Next::Frame(_) => {}
                Next::Timeout => return None,
                Next::Closed => panic!("connection closed while waiting for a MESSAGE"),
            }
        }
    }

    /// The next MESSAGE; panics if none arrives.
    pub async fn message(&mut self) -> Frame {
        self.message_within(WAIT).await.expect("a MESSAGE")
    }

    /// Asserts that no MESSAGE arrives for a short while.
    pub async fn no_message(&mut self) {
        if let Some(m) = self.message_within(QUIET).await {
            panic!("unexpected MESSAGE: {m:?}");
        }
    }

    /// The ack id of a MESSAGE in this client's version.
    pub fn ack_id(&self, m: &Frame) -> String {
        let h = if self.version >= Some(Version::V1_2) {
            "ack"
        } else {
            "message-id"
        };
        m.header(h).expect("ack id").to_owned()
    }

    /// ACK (or NACK) a MESSAGE in this client's version's terms.
    pub fn ack_frame(&self, command: Command, m: &Frame) -> Frame {
        let id = self.ack_id(m);
        match self.version {
            Some(Version::V1_2) => Frame::new(command).with("id", &id),
            Some(Version::V1_1) => Frame::new(command)
                .with("message-id", &id)
                .with("subscription", m.header("subscription").unwrap()),
            _ => Frame::new(command).with("message-id", &id),
        }
    }

    /// Expects an ERROR frame and then the server closing the connection.
    pub async fn expect_error_and_close(&mut self) -> Frame {
        let err = loop {
            match self.next_frame(WAIT).await {
                Next::Frame(f) if f.command == Command::Error => break f,
                Next::Frame(_) => {}
                other => panic!("expected an ERROR frame, got {other:?}"),
            }
        };
        assert!(
            err.header("message").is_some_and(|m| !m.is_empty()),
            "ERROR without a message header: {err:?}"
        );
        assert!(
            !err.body.is_empty(),
            "ERROR without an explanation: {err:?}"
        );
        self.expect_closed().await;
        err
    }

    /// Expects the server to close the connection (frames before are ignored).
    pub async fn expect_closed(&mut self) {
        loop {
            match self.next_frame(WAIT).await {
                Next::Closed => return,
                Next::Frame(_) => {}
                Next::Timeout => panic!("the server did not close the connection"),
            }
        }
    }
}

/// [`conformance::Client`] over [`StompClient`]: canonical addresses are
/// `/topic/` destinations.
#[derive(Debug)]
pub struct Conformance(pub StompClient);

#[async_trait]
impl conformance::Client for Conformance {
    async fn subscribe(&mut self, filter: &str) -> Result<u64> {
        let id = self.0.subscribe(&format!("/topic/{filter}"), "auto").await;
        Ok(id.trim_start_matches('s').parse()?)
    }

    async fn unsubscribe(&mut self, id: u64) -> Result<()> {
        self.0
            .with_receipt(Frame::new(Command::Unsubscribe).with("id", &format!("s{id}")))
            .await
    }

    async fn publish(
        &mut self,
        address: &str,
        body: Bytes,
        headers: &[(String, String)],
    ) -> Result<()> {
        let mut f = Frame::new(Command::Send)
            .with("destination", &format!("/topic/{address}"))
            .with("content-length", &body.len().to_string());
        for (k, v) in headers {
            f = f.with(k, v);
        }
        self.0.with_receipt(f.with_body(body)).await
    }

    async fn next(&mut self, timeout: Duration) -> Result<Option<conformance::Received>> {
        let Some(m) = self.0.message_within(timeout).await else {
            return Ok(None);
        };
        let dest = m
            .header("destination")
            .context("MESSAGE without destination")?;
        let Some(address) = dest.strip_prefix("/topic/") else {
            bail!("MESSAGE destination {dest} is not a topic");
        };
        Ok(Some(conformance::Received {
            address: address.to_owned(),
            body: m.body.clone(),
            headers: m
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }))
    }

    fn carries_headers(&self) -> bool {
        true
    }
}
