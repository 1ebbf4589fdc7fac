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
