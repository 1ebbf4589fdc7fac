//! The connection driver: one task and one `select!` loop per connection.
//! This is the only code that touches the socket.
//!
//! Each turn of the loop:
//! 1. decodes every complete frame already read and applies it
//!    ([`StompSession::on_frame`]) — while fewer than
//!    [`MAX_PENDING_RECEIPTS`] receipts wait for the journal;
//! 2. writes everything produced in the turn with one `write_all` + flush
//!    (bounded by `write_timeout`);
//! 3. waits, in this order of priority (`biased`): server shutdown, a
//!    journal completion a receipt waits for, broker events, the
//!    heart-beat/handshake timer, deliveries (every ready one is encoded in
//!    the same turn, then one read is tried without waiting, so a busy
//!    subscription cannot starve the client's frames), and reading.
//!
//! A connection that sent a SEND is not read while the broker blocks
//! publishers (memory/disk watermark) nor while a queue it sent to is past
//! its bound with `overflow = block` (until relieved, at most the core's
//! `BLOCK_TIMEOUT`); deliveries, receipts and heart-beats still go out, and
//! its own heart-beats are not expected meanwhile.
//!
//! After an ERROR the connection is flushed, its write side shut down, and
//! the input drained for a moment (so the kernel does not reset the
//! connection before the client has read the ERROR: 1.2 §Connection
//! Lingering).

use crate::auth;
use crate::codec::{Command, FrameDecoder};
use crate::config::StompConfig;
use crate::session::{HeartBeat, Output, PROTOCOL, Step, StompError, StompSession};
use bytes::{BufMut, BytesMut};
use futures_util::FutureExt;
use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use switchyard_core::spi::{AdapterError, Connection, Stream};
use switchyard_core::{Broker, SessionEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 8 * 1024;
/// Most receipts waiting for durable writes before reading stops.
pub const MAX_PENDING_RECEIPTS: usize = 1024;
/// How long input is drained after an ERROR, and how much of it.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 1 << 20;
/// A write buffer that grew past this is freed after the write.
const KEEP_BUFFER: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// An ERROR is in the buffer: flush, shut down, linger.
    Error,
    /// DISCONNECT: close once the pending receipts are written.
    Disconnect,
    /// The client closed the connection.
    Eof,
}

struct Io {
    stream: Box<dyn Stream>,
    rbuf: BytesMut,
    eof: bool,
    last_read: Instant,
    last_write: Instant,
    write_timeout: Duration,
}

impl Io {
    /// Makes room for the next read: what a frame of known length still
    /// needs, at least a chunk, and at least the buffered length (so a long
    /// NUL-terminated body grows the buffer geometrically, not a chunk at a
    /// time; the decoder's body limit bounds it).
    fn prepare_read(&mut self, dec: &FrameDecoder) {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK {
            let want = dec
                .needs(&self.rbuf)
                .unwrap_or(0)
                .max(READ_CHUNK)
                .max(self.rbuf.len());
            self.rbuf.reserve(want);
        }
    }

    fn on_read(&mut self, r: std::io::Result<usize>) -> Result<(), AdapterError> {
        match r? {
            0 => self.eof = true,
            _ => self.last_read = Instant::now(),
        }
        Ok(())
    }

    async fn flush(&mut self, buf: &mut BytesMut) -> Result<(), AdapterError> {
        if buf.is_empty() {
            return Ok(());
        }
        let stream = &mut self.stream;
        let data: &[u8] = buf;
        tokio::time::timeout(self.write_timeout, async move {
            stream.write_all(data).await?;
            stream.flush().await
        })
        .await
        .map_err(|_| AdapterError::Timeout("writing to a client that does not read"))??;
        self.last_write = Instant::now();
        if buf.capacity() > KEEP_BUFFER {
            *buf = BytesMut::new();
        } else {
            buf.clear();
        }
        Ok(())
    }

    /// Shuts the write side down; with `linger`, reads and drops input for a
    /// moment so the peer gets to read what was written before the socket
    /// closes.
    async fn close(&mut self, linger: bool) {
        let _ = tokio::time::timeout(LINGER, self.stream.shutdown()).await;
        if !linger || self.eof {
            return;
        }
        let stream = &mut self.stream;
        let _ = tokio::time::timeout(LINGER, async move {
            let mut scratch = [0u8; 4096];
            let mut total = 0;
            while total < LINGER_BYTES {
                match stream.read(&mut scratch).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        })
        .await;
    }
}

/// Resolves when the receipt at the front of `pending` may make progress:
/// `Ok` when one of its completions resolved (or it waits for none).
fn front_completion(
    pending: &mut VecDeque<crate::session::Pending>,
) -> impl Future<Output = Result<(), String>> + '_ {
    poll_fn(move |cx| match pending.front_mut() {
        None => Poll::Pending,
        Some(p) => match p.wait.last_mut() {
            None => Poll::Ready(Ok(())),
            Some(c) => Pin::new(c).poll(cx).map(|r| r.map_err(|e| e.to_string())),
        },
    })
}

/// After a completion resolved: drops it, then writes every receipt at the
/// front that waits for nothing more.
fn release_receipts(st: &StompSession, out: &mut Output) {
    if let Some(front) = out.pending.front_mut() {
        front.wait.pop();
    }
    while out.pending.front().is_some_and(|p| p.wait.is_empty()) {
        if let Some(p) = out.pending.pop_front() {
            st.write_receipt(&mut out.buf, &p.receipt);
        }
    }
}

fn next_deadline(hb: HeartBeat, last_read: Instant, last_write: Instant) -> Instant {
    let send = hb.send.map(|s| last_write + s);
    let silence = hb.silence.map(|s| last_read + s);
    send.into_iter()
        .chain(silence)
        .min()
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
}

/// Serves one STOMP connection until it closes.
pub(crate) async fn serve(
    conn: Connection,
    broker: Broker,
    config: Arc<StompConfig>,
) -> Result<(), AdapterError> {
    let Connection {
        id,
        stream,
        shutdown,
        peer,
        tls_identity,
        ..
    } = conn;
    let mut core = broker.session(PROTOCOL, id);
    let mut deliveries = core.deliveries();
    let events = deliveries.events();
    let mut flow = broker.flow();
    let mut dec = FrameDecoder::new(config.limits(broker.config().limits.max_message_size));
    let mut st = StompSession::new(config.clone(), id);
    let mut out = Output::default();
    let now = Instant::now();
    let mut io = Io {
        stream,
        rbuf: BytesMut::new(),
        eof: false,
        last_read: now,
        last_write: now,
        write_timeout: config.write_timeout.get(),
    };
    let handshake = broker.config().limits.handshake_timeout.get();
    let timer = tokio::time::sleep_until(now + handshake);
    tokio::pin!(timer);
    let mut heart_beat_armed = false;
    let mut end: Option<End> = None;

    loop {
        // Publishes from one read wake each receiving connection once, at the end.
        let mut batch = Some(switchyard_core::WakeBatch::new());
        while end.is_none() && out.pending.len() < MAX_PENDING_RECEIPTS {
            match dec.decode(&mut io.rbuf) {
                Ok(Some(frame)) => {
                    if !st.is_connected()
                        && matches!(frame.command, Command::Connect | Command::Stomp)
                    {
                        // The authenticator may wait (hashing, back-off):
                        // nothing is pending in the batch before CONNECT.
                        drop(batch.take());
                        let creds = auth::credentials(
                            frame.header("login"),
                            frame.header("passcode"),
                            peer.map(|p| p.ip()),
                            tls_identity.as_deref(),
                        );
                        st.set_login(Box::pin(broker.authenticate(creds)).await);
                        batch = Some(switchyard_core::WakeBatch::new());
                    }
                    match st.on_frame(frame, &mut core, &mut out) {
                        Step::Continue => {}
                        Step::Close => end = Some(End::Error),
                        Step::Disconnect => end = Some(End::Disconnect),
                    }
                    if let Some(v) = st.version() {
                        dec.set_version(v);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "undecodable frame");
                    st.write_decode_error(&mut out.buf, &e);
                    end = Some(End::Error);
                }
            }
        }
        drop(batch);
        if end.is_none() && io.eof {
            if dec.in_frame() {
                let e = StompError::new(
                    "incomplete frame",
                    "the connection was closed in the middle of a frame",
                );
                st.write_error(&mut out.buf, &e, None);
                end = Some(End::Error);
            } else {
                end = Some(End::Eof);
            }
        }
        if !heart_beat_armed && st.is_connected() {
            heart_beat_armed = true;
            timer
                .as_mut()
                .reset(next_deadline(st.heart_beat(), io.last_read, io.last_write));
        }
        io.flush(&mut out.buf).await?;
        match end {
            Some(End::Error) => {
                io.close(true).await;
                return Ok(());
            }
            Some(End::Eof) => return Ok(()),
            Some(End::Disconnect) if out.pending.is_empty() => {
                io.close(false).await;
                return Ok(());
            }
            _ => {}
        }

        let connected = st.is_connected();
        // A connection that publishes is not read while publishers are
        // blocked (memory/disk watermark); its heart-beats are not held
        // against it meanwhile.
        let hold = st.is_publisher() && flow.is_blocked();
        // Likewise while a queue it sent to is past its bound
        // (`overflow = block`).
        let pressed = st.pressure().is_some();
        if hold || pressed {
            io.last_read = Instant::now();
        }
        let can_read = end.is_none()
            && !io.eof
            && out.pending.len() < MAX_PENDING_RECEIPTS
            && !hold
            && !pressed;
        if can_read {
            io.prepare_read(&dec);
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                let e = StompError::new("server shutting down", "the server is shutting down; reconnect later");
                st.write_error(&mut out.buf, &e, None);
                let _ = io.flush(&mut out.buf).await;
                io.close(false).await;
                return Ok(());
            }
            r = front_completion(&mut out.pending), if !out.pending.is_empty() => match r {
                Ok(()) => release_receipts(&st, &mut out),
                Err(e) => {
                    let e = StompError::new("message not stored", format!("a persistent message could not be stored: {e}"));
                    st.write_error(&mut out.buf, &e, None);
                    out.pending.clear();
                    end = Some(End::Error);
                }
            },
            () = events.ready(), if connected && end.is_none() => {
                for event in events.take() {
                    match event {
                        SessionEvent::ConsumerCancelled(c) => {
                            if let Some(e) = st.cancelled(c) {
                                st.write_error(&mut out.buf, &e, None);
                                end = Some(End::Error);
                            }
                        }
                        SessionEvent::Overflowed(_) => {}
                    }
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                if !st.is_connected() {
                    let e = StompError::new(
                        "no CONNECT frame",
                        format!("no CONNECT or STOMP frame arrived within {handshake:?}"),
                    );
                    st.write_error(&mut out.buf, &e, None);
                    end = Some(End::Error);
                } else {
                    let hb = st.heart_beat();
                    if let Some(silence) = hb.silence && now >= io.last_read + silence {
                        let e = StompError::new(
                            "heart-beat timeout",
                            format!("nothing arrived from the client for {silence:?}, past its negotiated heart-beat interval"),
                        );
                        st.write_error(&mut out.buf, &e, None);
                        end = Some(End::Error);
                    } else if let Some(send) = hb.send && now >= io.last_write + send {
                        // A heart-beat: one EOL, flushed at the top of the loop.
                        out.buf.put_u8(b'\n');
                        io.last_write = now;
                    }
                    timer.as_mut().reset(next_deadline(hb, io.last_read, io.last_write));
                }
            }
            d = deliveries.recv(), if connected && end.is_none() => {
                if let Some(d) = d {
                    st.on_delivery(&d, &mut out.buf);
                    while let Some(d) = deliveries.try_recv() {
                        st.on_delivery(&d, &mut out.buf);
                    }
                }
                if can_read && let Some(r) = io.stream.read_buf(&mut io.rbuf).now_or_never() {
                    io.on_read(r)?;
                }
            }
            () = flow.turn(hold), if st.is_publisher() => {}
            () = switchyard_core::Pressure::relieved_or_never(st.pressure()), if pressed => {}
            r = io.stream.read_buf(&mut io.rbuf), if can_read => io.on_read(r)?,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::codec::{Command, Frame, FrameDecoder, Limits, Text};
    use switchyard_core::{Completion, CoreConfig};
    use switchyard_model::ConnId;

    fn frames(buf: &mut BytesMut) -> Vec<Frame> {
        let mut d = FrameDecoder::new(Limits::default());
        let mut out = Vec::new();
        while let Some(f) = d.decode(buf).unwrap() {
            out.push(f);
        }
        out
    }

    /// A receipt waiting for the journal holds back every later receipt,
    /// and they go out in order once it resolves.
    #[tokio::test]
    async fn receipts_wait_for_durable_writes_in_order() {
        let broker = Broker::new(CoreConfig::new());
        let mut core = broker.session(PROTOCOL, ConnId(1));
        let mut st = StompSession::new(Arc::new(StompConfig::default()), ConnId(1));
        let mut out = Output::default();
        let connect = Frame::new(Command::Connect).with("accept-version", "1.2");
        assert_eq!(st.on_frame(connect, &mut core, &mut out), Step::Continue);
        out.buf.clear();

        let (c1, done1) = Completion::pending();
        st.receipt(&mut out, &Text::new("durable"), vec![c1]);
        let begin = Frame::new(Command::Begin)
            .with("transaction", "t")
            .with("receipt", "later");
        assert_eq!(st.on_frame(begin, &mut core, &mut out), Step::Continue);
        let bye = Frame::new(Command::Disconnect).with("receipt", "bye");
        assert_eq!(st.on_frame(bye, &mut core, &mut out), Step::Disconnect);
        assert!(out.buf.is_empty(), "nothing may pass the waiting receipt");
        assert_eq!(out.pending.len(), 3);

        let pending = front_completion(&mut out.pending).now_or_never();
        assert!(pending.is_none(), "the journal has not answered yet");
        done1.send(Ok(())).unwrap();
        let r = front_completion(&mut out.pending).await;
        assert_eq!(r, Ok(()));
        release_receipts(&st, &mut out);
        assert!(out.pending.is_empty());
        let ids: Vec<String> = frames(&mut out.buf)
            .iter()
            .map(|f| f.header("receipt-id").unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["durable", "later", "bye"]);
    }

    #[tokio::test]
    async fn a_failed_durable_write_is_reported() {
        let mut pending = VecDeque::new();
        let (c, done) = Completion::pending();
        pending.push_back(crate::session::Pending {
            receipt: Text::new("r"),
            wait: vec![c],
        });
        drop(done);
        assert!(front_completion(&mut pending).await.is_err());
    }
}
