//! The HTTP listener's connections: admission (the connection caps of
//! `[limits]` and the `http` connection gauges), `TCP_NODELAY`, and an I/O
//! wrapper that fails a connection
//!
//! * whose writes make no progress for `write_timeout` — a client that
//!   stops reading a Server-Sent Events stream (or a WebSocket) is cut off
//!   instead of holding its response open, and
//! * that is still open `shutdown_grace` after the listener stopped, so the
//!   listener's graceful shutdown (which waits for open responses) ends even
//!   when a client never reads again.
//!
//! and the request-head timer ([`HeadClock`], given to hyper as its
//! [`hyper::rt::Timer`]): whenever hyper waits for a request's header block
//! — the first request of a connection and every later one on a keep-alive
//! connection — the connection is closed when
//!
//! * no byte of it arrives within the idle time: `limits.handshake_timeout`
//!   for the first request (a client that connects and says nothing),
//!   `keep_alive_timeout` after a response (an idle keep-alive connection);
//! * or the block is not whole within `header_timeout` of its first byte
//!   (a client dribbling its headers, slowloris).
//!
//! hyper starts the timer when it begins reading a head and drops it once
//! the head is parsed, so request bodies, long polls and streamed
//! responses are never timed by it.

use crate::conns::{Admission, Admitted};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use switchyard_core::spi::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// When the listener's open connections must go.
///
/// Checked on every read and write, so it is two atomic flags rather than
/// the token's mutex; a connection registers a waker (the token's future)
/// only once the listener is stopping, when its I/O is pending.
#[derive(Debug, Default)]
pub(crate) struct KillSwitch {
    stopping: AtomicBool,
    killed: AtomicBool,
    token: CancellationToken,
}

impl KillSwitch {
    /// The listener stopped: connections start watching for the kill.
    /// Call before the server tells connections to shut down gracefully.
    pub(crate) fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Every open connection fails its next (or pending) read or write.
    pub(crate) fn kill(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.killed.store(true, Ordering::SeqCst);
        self.token.cancel();
    }
}

/// The request-head timer of one connection (see the module docs): shared
/// by its [`HttpIo`], which notes the first byte of a head, and the
/// [`HeadTimer`] hyper arms while it waits for one.
#[derive(Debug)]
pub(crate) struct HeadClock {
    /// hyper is waiting for a request head (a [`HeadSleep`] is alive).
    waiting: AtomicBool,
    /// When the head's first byte arrived, in nanoseconds since `epoch`,
    /// plus one; 0: not yet.
    first_byte: AtomicU64,
    epoch: Instant,
    /// Heads waited for so far (the first gets `first_idle`).
    waits: AtomicU64,
    first_idle: Duration,
    keep_alive: Duration,
    header: Duration,
}

/// The request-head timeouts of an HTTP listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadTimeouts {
    /// No byte of the first request within this: closed
    /// (`limits.handshake_timeout`).
    pub(crate) first_idle: Duration,
    /// No byte of a next request within this after a response: closed.
    pub(crate) keep_alive: Duration,
    /// A head not whole within this of its first byte: closed.
    pub(crate) header: Duration,
}

impl HeadClock {
    pub(crate) fn new(t: HeadTimeouts) -> Arc<HeadClock> {
        Arc::new(HeadClock {
            waiting: AtomicBool::new(false),
            first_byte: AtomicU64::new(0),
            epoch: Instant::now(),
            waits: AtomicU64::new(0),
            first_idle: t.first_idle,
            keep_alive: t.keep_alive,
            header: t.header,
        })
    }

    /// Bytes were read: the first of a head starts its header timer.
    #[inline]
    fn saw_bytes(&self) {
        if self.waiting.load(Ordering::Relaxed) && self.first_byte.load(Ordering::Relaxed) == 0 {
            let at = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
            self.first_byte.store(at + 1, Ordering::Relaxed);
        }
    }

    fn first_byte(&self) -> Option<Instant> {
        match self.first_byte.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.epoch + Duration::from_nanos(n - 1)),
        }
    }
}

/// hyper's timer for one connection: every `sleep_until` is a wait for a
/// request head (hyper's HTTP/1 server uses its timer for nothing else:
/// `header_read_timeout`), whose deadline the [`HeadClock`] decides.
#[derive(Debug, Clone)]
pub(crate) struct HeadTimer(pub(crate) Arc<HeadClock>);

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(PlainSleep(Box::pin(tokio::time::sleep(duration))))
    }

    fn sleep_until(&self, _deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let clock = self.0.clone();
        let n = clock.waits.fetch_add(1, Ordering::Relaxed);
        let first = n == 0;
        clock.first_byte.store(0, Ordering::Relaxed);
        clock.waiting.store(true, Ordering::Relaxed);
        let idle = if first {
            clock.first_idle
        } else {
            clock.keep_alive
        };
        Box::pin(HeadSleep {
            clock,
            sleep: Box::pin(tokio::time::sleep(idle)),
            header_armed: false,
            wait: n,
        })
    }
}

struct PlainSleep(Pin<Box<Sleep>>);

impl std::future::Future for PlainSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for PlainSleep {}

/// A wait for a request head: ready at the idle deadline, or, once the
/// head's first byte arrived, `header` after it.
struct HeadSleep {
    clock: Arc<HeadClock>,
    sleep: Pin<Box<Sleep>>,
    header_armed: bool,
    /// Which wait this is (`HeadClock::waits` before it).
    wait: u64,
}

impl std::future::Future for HeadSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.header_armed
            && let Some(at) = self.clock.first_byte()
        {
            self.header_armed = true;
            let deadline = at + self.clock.header;
            self.sleep.as_mut().reset(deadline);
        }
        self.sleep.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeadSleep {}

impl Drop for HeadSleep {
    fn drop(&mut self) {
        // The head was parsed (or the connection is going), unless a newer
        // wait replaced this one.
        if self.clock.waits.load(Ordering::Relaxed) == self.wait + 1 {
            self.clock.waiting.store(false, Ordering::Relaxed);
        }
    }
}

/// Accepts HTTP connections through admission.
pub(crate) struct HttpListener {
    pub(crate) socket: TcpListener,
    pub(crate) admission: Arc<Admission>,
    pub(crate) write_timeout: Duration,
    /// The TLS handshake's limit (`limits.handshake_timeout`).
    pub(crate) handshake_timeout: Duration,
    pub(crate) heads: HeadTimeouts,
    pub(crate) switch: Arc<KillSwitch>,
    /// HTTPS: handshakes run on tasks of their own (`handshakes`), so a
    /// client that stalls its handshake holds up no one else.
    pub(crate) tls: Option<Arc<crate::tls::Tls>>,
    pub(crate) handshakes: tokio::task::JoinSet<Option<(HttpIo, SocketAddr)>>,
}

impl axum::serve::Listener for HttpListener {
    type Io = HttpIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (HttpIo, SocketAddr) {
        loop {
            let accepted = tokio::select! {
                Some(Ok(Some(done))) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    return done;
                }
                r = self.socket.accept() => r,
            };
            let (tcp, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = "http", error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = self.admission.admit("http", peer.ip()) else {
                tracing::debug!(%peer, "HTTP connection refused: connection limit");
                continue;
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
            }
            let io = |stream: Box<dyn Stream>, slot| HttpIo {
                tcp: stream,
                _slot: slot,
                write_timeout: self.write_timeout,
                stall: None,
                stalled: false,
                switch: self.switch.clone(),
                kill: None,
                clock: HeadClock::new(self.heads),
            };
            let Some(tls) = &self.tls else {
                return (io(Box::new(tcp), slot), peer);
            };
            let tls = tls.clone();
            let timeout = self.handshake_timeout;
            let mut pending = io(Box::new(tcp), slot);
            self.handshakes.spawn(async move {
                let tcp = std::mem::replace(&mut pending.tcp, Box::new(tokio::io::empty()));
                match tls.accept(tcp, timeout).await {
                    Ok(a) => {
                        if let Some(id) = &a.identity {
                            tracing::info!(%peer, tls_identity = %id, "TLS client certificate verified");
                        }
                        pending.tcp = Box::new(a.stream);
                        Some((pending, peer))
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        None
                    }
                }
            });
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// One accepted HTTP connection (see the module docs).
pub(crate) struct HttpIo {
    /// The TCP stream, or the TLS stream over it.
    tcp: Box<dyn Stream>,
    _slot: Admitted,
    write_timeout: Duration,
    /// Armed while a write is pending (made on the first stall).
    stall: Option<Pin<Box<Sleep>>>,
    stalled: bool,
    switch: Arc<KillSwitch>,
    /// Made once the listener is stopping and the I/O is pending.
    kill: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// The request-head timer, told when bytes arrive.
    clock: Arc<HeadClock>,
}

fn killed() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "closed: the server's shutdown grace period ended",
    )
}

impl HttpIo {
    /// The timer to give hyper for this connection.
    pub(crate) fn head_timer(&self) -> HeadTimer {
        HeadTimer(self.clock.clone())
    }

    #[inline]
    fn is_killed(&self) -> bool {
        self.switch.killed.load(Ordering::Relaxed)
    }

    /// After the socket said "not now": fail if the connection must go,
    /// and while the listener is stopping, be woken when it must.
    fn check_kill(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if !self.switch.stopping.load(Ordering::Relaxed) {
            return Poll::Pending;
        }
        let token = &self.switch.token;
        let kill = self
            .kill
            .get_or_insert_with(|| Box::pin(token.clone().cancelled_owned()));
        match kill.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(killed()),
            Poll::Pending => Poll::Pending,
        }
    }

    fn on_write<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.stalled = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let at = Instant::now() + self.write_timeout;
                let stall = self
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                if !self.stalled {
                    self.stalled = true;
                    stall.as_mut().reset(at);
                }
                if stall.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "closed: the client did not read for the write timeout",
                    )));
                }
                self.check_kill(cx).map(Err)
            }
        }
    }
}

impl AsyncRead for HttpIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.is_killed() {
            return Poll::Ready(Err(killed()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.tcp).poll_read(cx, buf) {
            Poll::Pending => self.check_kill(cx).map(Err),
            ready => {
                if buf.filled().len() > before {
                    self.clock.saw_bytes();
                }
                ready
            }
        }
    }
}

impl AsyncWrite for HttpIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_killed() {
            return Poll::Ready(Err(killed()));
        }
        let r = Pin::new(&mut self.tcp).poll_write(cx, data);
        self.on_write(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.is_killed() {
            return Poll::Ready(Err(killed()));
        }
        let r = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        self.on_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
