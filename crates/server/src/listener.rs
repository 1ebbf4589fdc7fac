//! The accept loop of a stream listener: admission (connection caps),
//! `TCP_NODELAY`, the TLS handshake (bounded by `limits.handshake_timeout`,
//! on the connection's own task), one task and one tracing span per
//! connection.

use crate::Ctx;
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::spi::{Connection, ProtocolAdapter, StartTls, Transport, Upgraded};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub(crate) struct Accept {
    pub(crate) socket: TcpListener,
    pub(crate) name: String,
    pub(crate) protocol: &'static str,
    pub(crate) adapter: Arc<dyn ProtocolAdapter>,
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) stop: CancellationToken,
    pub(crate) close: CancellationToken,
    pub(crate) connections: TaskTracker,
    pub(crate) tls: Option<Arc<crate::tls::Tls>>,
}

pub(crate) async fn accept_loop(a: Accept) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = a.stop.cancelled() => return,
            r = a.socket.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %a.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = a.ctx.admission.admit(a.protocol, peer.ip()) else {
            tracing::debug!(listener = %a.name, %peer, "connection refused: connection limit");
            drop(stream);
            continue;
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let local = stream.local_addr().ok();
        let id = a.ctx.broker.next_conn_id();
        let adapter = a.adapter.clone();
        let broker = a.ctx.broker.clone();
        let span = tracing::info_span!(
            "conn",
            protocol = a.protocol,
            conn_id = id.get(),
            %peer,
            client_id = tracing::field::Empty,
            tls_identity = tracing::field::Empty
        );
        // Boxed, with what only the start needs, so that the task's future
        // keeps 8 bytes for it, not the whole `Connection`, for as long as
        // the connection lives (the adapter's future owns it after the
        // call). `Start::take` frees the box at once.
        let start = Box::new(Start {
            conn: Connection {
                id,
                listener: a.name.clone(),
                peer: Some(peer),
                local,
                transport: Transport::Tcp,
                tls_identity: None,
                start_tls: None,
                stream: Box::new(stream),
                shutdown: a.close.child_token(),
            },
            tls: a.tls.clone(),
            broker,
        });
        let task = connection(start, slot, adapter);
        // Every idle connection keeps its task: without a span to enter
        // (logging below `info`), the task carries none.
        if span.is_disabled() {
            a.connections.spawn(task);
        } else {
            a.connections.spawn(task.instrument(span));
        }
    }
}

/// What a connection's task needs only until the adapter takes over.
struct Start {
    conn: Connection,
    tls: Option<Arc<crate::tls::Tls>>,
    broker: switchyard_core::Broker,
}

impl Start {
    // The box is the point: it is what the connection task holds.
    #[allow(clippy::boxed_local)]
    fn take(self: Box<Self>) -> (Connection, switchyard_core::Broker) {
        let Start { conn, broker, .. } = *self;
        (conn, broker)
    }
}

/// One connection's task: the TLS handshake (if the listener runs it
/// before the protocol), then the adapter, holding the admission slot.
///
/// Not an `async fn`: one would keep its arguments twice (as captures and
/// as locals) in the task for the connection's whole life.
#[allow(clippy::manual_async_fn)]
fn connection(
    mut start: Box<Start>,
    slot: crate::conns::Admitted,
    adapter: Arc<dyn ProtocolAdapter>,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        match start.tls.clone() {
            None => {}
            Some(tls) if tls.after_greeting => {
                let required = !tls.section().allow_non_tls;
                start.conn.start_tls = Some(StartTls::new(
                    required,
                    Box::new(move |s| {
                        Box::pin(async move {
                            let a = tls.accept(s, tls.timeout).await?;
                            note_identity(a.identity.as_deref());
                            Ok(Upgraded {
                                stream: Box::new(a.stream),
                                tls_identity: a.identity,
                            })
                        })
                    }),
                ));
            }
            Some(tls) => {
                let conn = &mut start.conn;
                let tcp = std::mem::replace(&mut conn.stream, Box::new(tokio::io::empty()));
                // Boxed: the handshake's state would otherwise make every
                // connection's task bigger for its whole life.
                match Box::pin(tls.accept(tcp, tls.timeout)).await {
                    Ok(a) => {
                        note_identity(a.identity.as_deref());
                        conn.stream = Box::new(a.stream);
                        conn.transport = Transport::Tls;
                        conn.tls_identity = a.identity;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                }
            }
        }
        tracing::debug!("connected");
        let (conn, broker) = start.take();
        match adapter.serve(conn, broker).await {
            Ok(()) => tracing::debug!("closed"),
            Err(e) => tracing::debug!(error = %e, "closed with error"),
        }
        // The slot is released when the connection ends.
        drop(slot);
    }
}

/// Logs a verified client certificate's name and adds it to the
/// connection's span.
pub(crate) fn note_identity(identity: Option<&str>) {
    if let Some(id) = identity {
        tracing::Span::current().record("tls_identity", id);
        tracing::info!(tls_identity = id, "TLS client certificate verified");
    }
}
