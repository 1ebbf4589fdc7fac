//! The adapter SPI: what a protocol crate implements and what it is given.
//!
//! The server owns the listeners. For each accepted socket (plain TCP, TLS,
//! or a WebSocket carrying binary frames) it builds a [`Connection`] and calls
//! the listener's [`ProtocolAdapter::serve`] on a task of its own. The
//! adapter speaks its protocol, opens a [`crate::Session`] on the
//! [`crate::Broker`], and returns when the connection ends.
//!
//! Shutdown: when [`Connection::shutdown`] is cancelled the adapter sends its
//! protocol's goodbye (MQTT 5 DISCONNECT 0x8B, AMQP `connection.close` 320,
//! STOMP `ERROR`, NATS `-ERR`), flushes, and returns. The server waits a grace
//! period, then drops what is left.

use crate::Broker;
use std::net::SocketAddr;
use switchyard_model::ConnId;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

/// Any byte stream a connection can run over.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// What carries the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
    WebSocket,
}

/// One accepted client connection, handed to an adapter.
pub struct Connection {
    pub id: ConnId,
    /// The listener's name in the config (`mqtt`, `mqtt-tls`, ...).
    pub listener: String,
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub transport: Transport,
    /// The name from the client's certificate when a TLS listener verified
    /// one (mutual TLS): set by the server, `None` otherwise. Adapters
    /// treat it as an authenticated user name.
    pub tls_identity: Option<String>,
    /// Set on listeners whose protocol starts TLS after its greeting (NATS
    /// sends INFO in clear, then the client starts the handshake on the same
    /// socket): the adapter sends its greeting, then calls
    /// [`StartTls::upgrade`] on the stream. `None` when the listener has no
    /// TLS or the server already ran the handshake.
    pub start_tls: Option<StartTls>,
    pub stream: Box<dyn Stream>,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("listener", &self.listener)
            .field("peer", &self.peer)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

/// The result of a TLS upgrade: the encrypted stream and the verified
/// client-certificate name (as [`Connection::tls_identity`]).
pub struct Upgraded {
    pub stream: Box<dyn Stream>,
    pub tls_identity: Option<String>,
}

type UpgradeFn = Box<
    dyn FnOnce(
            Box<dyn Stream>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = std::io::Result<Upgraded>> + Send>,
        > + Send,
>;

/// TLS that begins after the protocol's greeting, run by the server's TLS
/// acceptor (the handshake is bounded by the server's handshake timeout).
/// One pointer wide, so it costs idle connections nothing.
pub struct StartTls(Box<(bool, UpgradeFn)>);

impl StartTls {
    /// `required`: clients must upgrade; when false they may also stay in
    /// clear.
    pub fn new(required: bool, upgrade: UpgradeFn) -> StartTls {
        StartTls(Box::new((required, upgrade)))
    }

    /// Clients must upgrade (false: they may also stay in clear).
    pub fn required(&self) -> bool {
        self.0.0
    }

    /// Runs the server side of the TLS handshake on `stream`.
    pub async fn upgrade(self, stream: Box<dyn Stream>) -> std::io::Result<Upgraded> {
        (self.0.1)(stream).await
    }
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded")
            .field("tls_identity", &self.tls_identity)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for StartTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartTls")
            .field("required", &self.required())
            .finish_non_exhaustive()
    }
}

/// Why a connection ended other than by a clean close.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer broke the protocol; the adapter has sent its error.
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error(transparent)]
    Core(#[from] crate::CoreError),
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

/// A protocol adapter: one per protocol crate, registered by the server.
#[async_trait::async_trait]
pub trait ProtocolAdapter: Send + Sync + 'static {
    /// The protocol's name (`"mqtt"`), used in logs, metrics and origins.
    fn name(&self) -> &'static str;

    /// Serves one connection until it closes.
    async fn serve(&self, conn: Connection, broker: Broker) -> Result<(), AdapterError>;

    /// Called once per protocol, inside the runtime, after the journal has
    /// been recovered and before any listener of the protocol accepts a
    /// connection: the adapter brings back what it kept with
    /// [`Broker::save_state`] (sessions, timers). Without a journal it is
    /// called too, on an empty state store. Default: nothing.
    fn recovered(&self, _broker: &Broker) {}
}

/// Writes `buf` with each of `refs`' bodies spliced in at its offset into
/// `buf` (offsets in order), in full: a connection's frames encoded into one
/// buffer, with large bodies sent by reference instead of copied in. At most
/// `IOV` pieces go to one vectored write.
pub async fn write_chain<const IOV: usize>(
    stream: &mut (impl AsyncWrite + Unpin + ?Sized),
    buf: &[u8],
    refs: &[(usize, bytes::Bytes)],
) -> std::io::Result<()> {
    use std::task::Poll;
    let total = buf.len() + refs.iter().map(|(_, b)| b.len()).sum::<usize>();
    let mut done = 0;
    std::future::poll_fn(|cx| {
        while done < total {
            let mut iov = [std::io::IoSlice::new(&[]); IOV];
            let n = chain_slices(buf, refs, done, &mut iov);
            let slices = iov.get(..n).unwrap_or_default();
            match std::pin::Pin::new(&mut *stream).poll_write_vectored(cx, slices) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(w)) => done += w,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    })
    .await
}

/// Fills `iov` with the pieces of the chain (`buf` with `refs` spliced in)
/// from byte `skip` on; returns how many it filled.
fn chain_slices<'a>(
    buf: &'a [u8],
    refs: &'a [(usize, bytes::Bytes)],
    mut skip: usize,
    iov: &mut [std::io::IoSlice<'a>],
) -> usize {
    let mut n = 0;
    let mut push = |piece: &'a [u8], n: &mut usize| -> bool {
        if piece.is_empty() {
            return true;
        }
        if skip >= piece.len() {
            skip -= piece.len();
            return true;
        }
        let piece = piece.get(skip..).unwrap_or_default();
        skip = 0;
        match iov.get_mut(*n) {
            Some(slot) => {
                *slot = std::io::IoSlice::new(piece);
                *n += 1;
                true
            }
            None => false,
        }
    };
    let mut at = 0;
    for (off, body) in refs {
        if !push(buf.get(at..*off).unwrap_or_default(), &mut n) || !push(body, &mut n) {
            return n;
        }
        at = *off;
    }
    push(buf.get(at..).unwrap_or_default(), &mut n);
    n
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use bytes::Bytes;

    /// The pieces a vectored write gets, from every starting byte and with
    /// room for only a few pieces at a time, add up to the buffer with the
    /// bodies spliced in at their offsets (an empty body and one at the very
    /// end included).
    #[test]
    fn chained_pieces_are_the_buffer_with_the_bodies_spliced_in() {
        let buf: Vec<u8> = (0u8..20).collect();
        let refs = vec![
            (3, Bytes::from_static(b"AAAA")),
            (3, Bytes::from_static(b"")),
            (10, Bytes::from_static(b"BB")),
            (20, Bytes::from_static(b"CCC")),
        ];
        let mut want = buf[..3].to_vec();
        want.extend_from_slice(b"AAAA");
        want.extend_from_slice(&buf[3..10]);
        want.extend_from_slice(b"BB");
        want.extend_from_slice(&buf[10..]);
        want.extend_from_slice(b"CCC");
        for room in 1..8 {
            for skip in 0..=want.len() {
                let mut got = want[..skip].to_vec();
                while got.len() < want.len() {
                    let mut iov = vec![std::io::IoSlice::new(&[]); room];
                    let n = chain_slices(&buf, &refs, got.len(), &mut iov);
                    assert!(n > 0, "room {room}, skip {skip}");
                    for s in &iov[..n] {
                        got.extend_from_slice(s);
                    }
                }
                assert_eq!(got, want, "room {room}, skip {skip}");
            }
        }
        // Nothing left to write: no pieces.
        let mut iov = [std::io::IoSlice::new(&[]); 4];
        assert_eq!(chain_slices(&buf, &refs, want.len(), &mut iov), 0);
    }

    /// A writer that takes a few bytes per call still gets the whole chain.
    #[tokio::test]
    async fn a_chain_is_written_in_full_through_short_writes() {
        let buf = b"MSG a 1 3\r\n\r\nMSG a 1 4\r\n\r\nPING\r\n";
        let refs = vec![
            (11, Bytes::from_static(b"xyz")),
            (24, Bytes::from_static(b"wxyz")),
        ];
        let (mut w, mut r) = tokio::io::duplex(3);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut r, &mut got)
                .await
                .unwrap();
            got
        });
        write_chain::<2>(&mut w, buf, &refs).await.unwrap();
        drop(w);
        assert_eq!(
            reader.await.unwrap(),
            b"MSG a 1 3\r\nxyz\r\nMSG a 1 4\r\nwxyz\r\nPING\r\n"
        );
    }
}
