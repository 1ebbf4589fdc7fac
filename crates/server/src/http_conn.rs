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

use crate::conns::{Admission, Admitted};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Accepts HTTP connections through admission.
pub(crate) struct HttpListener {
    pub(crate) socket: TcpListener,
    pub(crate) admission: Arc<Admission>,
    pub(crate) write_timeout: Duration,
    /// A connection that sends nothing for this long is closed
    /// (`limits.handshake_timeout`).
    pub(crate) handshake_timeout: Duration,
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
                silent: Some(Box::pin(tokio::time::sleep(self.handshake_timeout))),
                read_early: 0,
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
    /// The handshake deadline: until the first response is written (or a
    /// body larger than any header block is being read), reads must not
    /// stall past it — a silent client, or one that dribbles its request
    /// headers a byte at a time (slowloris), is closed.
    silent: Option<Pin<Box<Sleep>>>,
    /// Bytes read while `silent` is armed.
    read_early: usize,
}

/// Past this many bytes read before the first response, the client is
/// sending a body (hyper refuses header blocks far smaller): the handshake
/// deadline no longer applies.
const HEADER_BOUND: usize = 1024 * 1024;

fn killed() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "closed: the server's shutdown grace period ended",
    )
}

impl HttpIo {
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
        // A response is going out: the first request arrived whole.
        self.silent = None;
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
            Poll::Pending => {
                if let Some(silent) = self.silent.as_mut()
                    && silent.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "closed: no complete request within the handshake timeout",
                    )));
                }
                self.check_kill(cx).map(Err)
            }
            ready => {
                if self.silent.is_some() {
                    self.read_early += buf.filled().len() - before;
                    if self.read_early > HEADER_BOUND {
                        self.silent = None;
                    }
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
