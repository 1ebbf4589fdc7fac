//! The accept loop of a stream listener: admission (connection caps),
//! `TCP_NODELAY`, the TLS handshake (bounded by `limits.handshake_timeout`,
//! on the connection's own task), one task and one tracing span per
//! connection.

use crate::Ctx;
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::spi::{Connection, ProtocolAdapter, StartTls, Stream, Transport, Upgraded};
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
    /// The protocol starts TLS after its greeting (see `registry::Protocol`).
    pub(crate) tls_after_greeting: bool,
    pub(crate) handshake_timeout: Duration,
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
        let listener = a.name.clone();
        let shutdown = a.close.child_token();
        let tls = a.tls.clone();
        let after_greeting = a.tls_after_greeting;
        let timeout = a.handshake_timeout;
        a.connections.spawn(
            async move {
                let _slot = slot;
                let stream: Box<dyn Stream> = Box::new(stream);
                let (stream, transport, tls_identity, start_tls) = match tls {
                    None => (stream, Transport::Tcp, None, None),
                    Some(tls) if after_greeting => {
                        let required = !tls.section().allow_non_tls;
                        let start = StartTls::new(
                            required,
                            Box::new(move |s| {
                                Box::pin(async move {
                                    let a = tls.accept(s, timeout).await?;
                                    note_identity(a.identity.as_deref());
                                    Ok(Upgraded {
                                        stream: Box::new(a.stream),
                                        tls_identity: a.identity,
                                    })
                                })
                            }),
                        );
                        (stream, Transport::Tcp, None, Some(start))
                    }
                    Some(tls) => match tls.accept(stream, timeout).await {
                        Ok(a) => {
                            note_identity(a.identity.as_deref());
                            let s: Box<dyn Stream> = Box::new(a.stream);
                            (s, Transport::Tls, a.identity, None)
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                    },
                };
                let conn = Connection {
                    id,
                    listener,
                    peer: Some(peer),
                    local,
                    transport,
                    tls_identity,
                    start_tls,
                    stream,
                    shutdown,
                };
                tracing::debug!("connected");
                match adapter.serve(conn, broker).await {
                    Ok(()) => tracing::debug!("closed"),
                    Err(e) => tracing::debug!(error = %e, "closed with error"),
                }
            }
            .instrument(span),
        );
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
