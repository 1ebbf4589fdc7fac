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
        // Boxed so that the task's future keeps 8 bytes for it, not the whole
        // `Connection`, for as long as the connection lives (the adapter's
        // future owns it after the call). `unbox` frees the box at once; a
        // `*conn` move in the block would keep it allocated to the block's end.
        let mut conn = Box::new(Connection {
            id,
            listener: a.name.clone(),
            peer: Some(peer),
            local,
            transport: Transport::Tcp,
            tls_identity: None,
            start_tls: None,
            stream: Box::new(stream),
            shutdown: a.close.child_token(),
        });
        let tls = a.tls.clone();
        a.connections.spawn(
            async move {
                let _slot = slot;
                match tls {
                    None => {}
                    Some(tls) if tls.after_greeting => {
                        let required = !tls.section().allow_non_tls;
                        conn.start_tls = Some(StartTls::new(
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
                        let tcp = std::mem::replace(&mut conn.stream, Box::new(tokio::io::empty()));
                        // Boxed: the handshake's state would otherwise make
                        // every connection's task bigger for its whole life.
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
                match adapter.serve(unbox(conn), broker).await {
                    Ok(()) => tracing::debug!("closed"),
                    Err(e) => tracing::debug!(error = %e, "closed with error"),
                }
            }
            .instrument(span),
        );
    }
}

// The box is the point: it is what the connection task holds.
#[allow(clippy::boxed_local)]
fn unbox(conn: Box<Connection>) -> Connection {
    *conn
}

/// Logs a verified client certificate's name and adds it to the
/// connection's span.
pub(crate) fn note_identity(identity: Option<&str>) {
    if let Some(id) = identity {
        tracing::Span::current().record("tls_identity", id);
        tracing::info!(tls_identity = id, "TLS client certificate verified");
    }
}
