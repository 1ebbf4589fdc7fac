//! The connection driver: the one `select!` loop per AMQP connection and
//! the only code here that touches the socket.
//!
//! Each turn does one thing — shutdown, a write, a flush, a journal
//! completion, a batch of deliveries, broker events, one read (decoding
//! every complete frame in it), or a timer — then sends the confirms the
//! turn settled. Output accumulates in [`Conn::out`] and goes out with one
//! `write` per turn; reads and deliveries pause while more than
//! [`HIGH_WATER`] bytes wait to be written, so a client that stops reading
//! holds back its queues instead of growing our buffers. Buffers shrink
//! back when idle (the target is a few KiB per idle connection).
//!
//! A publishing connection is not read while the broker blocks publishers
//! (memory/disk watermark, told with `connection.blocked`) nor while a
//! queue it published to is past its bound with `overflow = block`
//! (silently, as RabbitMQ's per-queue credit flow); its heartbeats are not
//! held against it meanwhile.
//!
//! Timers: the handshake must finish within `limits.handshake_timeout`; a
//! heartbeat goes out when nothing was written for half the negotiated
//! interval, and a client silent for two intervals is disconnected; output
//! stalled for `write_timeout` closes the connection; after sending
//! `connection.close` we wait [`CLOSE_TIMEOUT`] for `close-ok`.

use crate::codec::{AmqpCodec, DecodeError, Frame, encode_heartbeat};
use crate::config::AmqpConfig;
use crate::session::{Conn, Params, Phase};
use bytes::BytesMut;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use switchyard_core::Broker;
use switchyard_core::spi::{AdapterError, Connection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::codec::Decoder;

/// Pending output above which we stop reading and taking deliveries.
pub const HIGH_WATER: usize = 256 * 1024;
/// How long we wait for `connection.close-ok` (or the client's EOF).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// A read or write this small means a quiet connection: its emptied
/// buffer is dropped rather than kept.
const SMALL: usize = 512;
/// Buffers larger than this are dropped when empty.
const SHRINK_ABOVE: usize = 64 * 1024;

type ConfirmFuture = Pin<Box<dyn Future<Output = (u16, u64, u64, bool)> + Send>>;

/// Serves one connection until it closes.
pub async fn run(conn: Connection, broker: Broker, cfg: &AmqpConfig) -> Result<(), AdapterError> {
    let Connection {
        id,
        stream,
        shutdown,
        peer,
        tls_identity,
        ..
    } = conn;
    let limits = broker.config().limits.clone();
    let session = broker.session("amqp", id);
    let events = session.deliveries().events();
    let mut flow = broker.flow();
    let mut c = Conn::new(
        session,
        Params {
            frame_max: cfg.frame_max_u32(),
            channel_max: cfg.channel_max,
            heartbeat: cfg.heartbeat_secs(),
            max_message_size: limits.max_message_size.as_usize(),
            product_version: env!("CARGO_PKG_VERSION"),
        },
    );
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut codec = AmqpCodec::server();
    let mut rbuf = BytesMut::new();
    let mut read_hint = 1024usize;
    let mut confirms: FuturesUnordered<ConfirmFuture> = FuturesUnordered::new();
    let started = Instant::now();
    let handshake_deadline = started + limits.handshake_timeout.get();
    let mut last_read = started;
    let mut last_write = started;
    let mut closing_since: Option<Instant> = None;
    let mut need_flush = false;
    let mut eof = false;
    // After a framing error the input cannot be trusted: discard it.
    let mut discard = false;
    let mut shutdown_seen = false;
    let timer = tokio::time::sleep_until(handshake_deadline);
    tokio::pin!(timer);
    let mut result = Ok(());

    loop {
        if c.phase == Phase::Closed && c.out.is_empty() {
            break;
        }
        if eof && c.out.is_empty() {
            break;
        }
        let now = Instant::now();
        if matches!(c.phase, Phase::Closing | Phase::Closed) && closing_since.is_none() {
            closing_since = Some(now);
        }
        // The next deadline.
        let hb = Duration::from_secs(u64::from(c.heartbeat));
        let mut deadline = match closing_since {
            Some(t) => t + CLOSE_TIMEOUT,
            None if c.phase != Phase::Open => handshake_deadline,
            None if !hb.is_zero() => (last_write + hb / 2).min(last_read + hb * 2),
            None => now + Duration::from_secs(3600),
        };
        if !c.out.is_empty() {
            deadline = deadline.min(last_write + cfg.write_timeout.get());
        }
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        let room = c.out.len() < HIGH_WATER;
        let open = c.phase == Phase::Open;
        // A publishing connection is held back while publishers are
        // blocked (memory/disk watermark): told with connection.blocked when
        // it asked for it, and not read meanwhile. Its heartbeats are not
        // read either, so missing ones are not held against it.
        let hold = c.publisher && flow.is_blocked();
        if c.publisher {
            c.set_blocked(hold, flow.reason().as_deref().unwrap_or(""));
        }
        // Likewise (but silently: no connection.blocked) while a queue it
        // published to is past its bound (`overflow = block`).
        if c.pressure.as_ref().is_some_and(|p| p.is_relieved()) {
            c.pressure = None;
        }
        let pressed = c.pressure.is_some();
        if hold || pressed {
            last_read = now;
        }
        let reading = !eof && room && c.phase != Phase::Closed && !hold && !pressed;
        if reading && rbuf.capacity() - rbuf.len() < read_hint / 2 {
            rbuf.reserve(read_hint);
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled(), if !shutdown_seen => {
                shutdown_seen = true;
                c.shutdown();
            }
            r = write_or_flush(&mut wr, &mut c.out), if !c.out.is_empty() || need_flush => {
                match r {
                    Ok(Some(0)) => {
                        result = Err(AdapterError::Io(std::io::ErrorKind::WriteZero.into()));
                        break;
                    }
                    Ok(Some(n)) => {
                        last_write = Instant::now();
                        need_flush = true;
                        if c.out.is_empty() && n < SMALL {
                            c.out = BytesMut::new();
                        }
                    }
                    Ok(None) => need_flush = false,
                    Err(e) => {
                        result = Err(e.into());
                        break;
                    }
                }
            }
            Some((channel, epoch, seq, ok)) = confirms.next(), if !confirms.is_empty() => {
                c.on_confirm_done(channel, epoch, seq, ok);
            }
            d = c.deliveries.recv(), if open && room => {
                if let Some(d) = d {
                    c.on_delivery(d);
                    while c.out.len() < HIGH_WATER {
                        let Some(d) = c.deliveries.try_recv() else { break };
                        c.on_delivery(d);
                    }
                }
            }
            () = flow.turn(hold), if c.publisher => {}
            () = switchyard_core::Pressure::relieved_or_never(c.pressure.as_ref()), if pressed => {}
            () = events.ready(), if open => {
                for e in events.take() {
                    c.on_event(e);
                }
            }
            r = rd.read_buf(&mut rbuf), if reading => {
                match r {
                    Ok(0) => {
                        eof = true;
                        if !discard && !rbuf.is_empty() && c.phase == Phase::Open {
                            tracing::debug!(left = rbuf.len(), "connection closed inside a frame");
                        }
                        if c.phase != Phase::Closed {
                            c.phase = Phase::Closed;
                        }
                    }
                    Ok(n) => {
                        last_read = Instant::now();
                        read_hint = if n >= read_hint { (read_hint * 2).min(SHRINK_ABOVE) } else { read_hint };
                        if discard {
                            rbuf.clear();
                        } else {
                            let mut login = decode_all(&mut c, &mut codec, &mut rbuf, &mut discard, (peer.map(|p| p.ip()), tls_identity.as_deref()));
                            while let Some((frame, creds)) = login.take() {
                                // Nothing after start-ok is read until the
                                // authenticator answered.
                                // Boxed: the login future would otherwise live in every
                                // connection future for the connection's life.
                                c.set_login(Box::pin(broker.authenticate(creds)).await);
                                c.on_frame(frame);
                                login = decode_all(&mut c, &mut codec, &mut rbuf, &mut discard, (peer.map(|p| p.ip()), tls_identity.as_deref()));
                            }
                        }
                        // A quiet connection gives its read buffer back (the
                        // decoded frames keep what they use); a busy one
                        // keeps it.
                        if rbuf.is_empty() && n < SMALL {
                            rbuf = BytesMut::new();
                        }
                    }
                    Err(e) => {
                        result = Err(e.into());
                        break;
                    }
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                if let Some(t) = closing_since {
                    if now >= t + CLOSE_TIMEOUT {
                        break;
                    }
                } else if c.phase != Phase::Open {
                    if now >= handshake_deadline {
                        tracing::debug!("handshake timed out");
                        result = Err(AdapterError::Timeout("AMQP handshake"));
                        break;
                    }
                } else if !hb.is_zero() {
                    if now >= last_read + hb * 2 {
                        tracing::debug!(heartbeat = c.heartbeat, "missed heartbeats from client");
                        result = Err(AdapterError::Timeout("missed heartbeats"));
                        break;
                    }
                    if now >= last_write + hb / 2 && c.out.is_empty() {
                        encode_heartbeat(&mut c.out);
                    }
                }
                if !c.out.is_empty() && now >= last_write + cfg.write_timeout.get() {
                    result = Err(AdapterError::Timeout("client stopped reading"));
                    break;
                }
            }
        }
        c.flush_confirms();
        for p in c.take_pending_confirms() {
            let (channel, epoch, seq) = (p.channel, p.epoch, p.seq);
            let done = p.completion;
            confirms.push(Box::pin(async move {
                (channel, epoch, seq, done.await.is_ok())
            }));
        }
        if c.out.is_empty() && c.out.capacity() > SHRINK_ABOVE {
            c.out = BytesMut::new();
        }
        if rbuf.is_empty() && rbuf.capacity() > SHRINK_ABOVE {
            rbuf = BytesMut::new();
            read_hint = 1024;
        }
    }
    // Say goodbye politely: send what is left, close our side, and let the
    // client read it before the socket goes (closing with unread input
    // would reset the connection and lose our last frames).
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        if !c.out.is_empty() {
            wr.write_all_buf(&mut c.out).await?;
        }
        wr.flush().await?;
        wr.shutdown().await?;
        // On the heap: an array here would be part of every connection's
        // future for its whole life.
        let mut sink = vec![0u8; 1024];
        if !eof {
            while rd.read(&mut sink).await? != 0 {}
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
    result
}

/// Writes some of `out`, or flushes once it is empty. Cancel-safe: a
/// write either happened (and `out` advanced) or did not.
async fn write_or_flush<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut BytesMut,
) -> std::io::Result<Option<usize>> {
    if out.is_empty() {
        wr.flush().await?;
        Ok(None)
    } else {
        wr.write_buf(out).await.map(Some)
    }
}

/// Decodes and applies every complete frame; stops at a
/// `connection.start-ok`, returned with its credentials for the
/// authenticator.
fn decode_all(
    c: &mut Conn,
    codec: &mut AmqpCodec,
    rbuf: &mut BytesMut,
    discard: &mut bool,
    who: (Option<std::net::IpAddr>, Option<&str>),
) -> Option<(Frame, switchyard_core::Credentials)> {
    // Publishes from one read wake each receiving connection once, at the end.
    let _batch = switchyard_core::WakeBatch::new();
    loop {
        if c.phase == Phase::Closed {
            rbuf.clear();
            return None;
        }
        match codec.decode(rbuf) {
            Ok(Some(frame)) => {
                if let Some(creds) = c.login_credentials(&frame, who.0, who.1) {
                    return Some((frame, creds));
                }
                c.on_frame(frame);
                if codec.frame_max() != c.frame_max {
                    codec.set_frame_max(c.frame_max);
                }
            }
            Ok(None) => return None,
            Err(e) => {
                let e = match e {
                    crate::codec::CodecError::Decode(d) => d,
                    crate::codec::CodecError::Io(_) => DecodeError::Malformed("input"),
                };
                tracing::debug!(error = %e, "undecodable input");
                c.on_decode_error(&e);
                *discard = true;
                rbuf.clear();
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The connection future lives as long as the connection: keep it small
    /// (the target is a few KiB per idle connection in all).
    #[test]
    fn connection_future_is_small() {
        let broker = Broker::new(switchyard_core::CoreConfig::new());
        let (a, _b) = tokio::io::duplex(64);
        let conn = Connection {
            id: switchyard_model::ConnId(1),
            listener: "amqp".into(),
            peer: None,
            local: None,
            transport: switchyard_core::spi::Transport::Tcp,
            tls_identity: None,
            start_tls: None,
            stream: Box::new(a),
            shutdown: tokio_util::sync::CancellationToken::new(),
        };
        let cfg = AmqpConfig::default();
        let fut = run(conn, broker, &cfg);
        let size = std::mem::size_of_val(&fut);
        eprintln!("connection future: {size} bytes");
        assert!(size < 3 * 1024, "connection future is {size} bytes");
    }
}
