//! The HTTP listener: `/healthz`, `/readyz`, `/metrics`, the WebSocket
//! paths of stream protocols (`/mqtt`, `/stomp`), and the HTTP adapter's
//! REST and Server-Sent Events routes (`/v1/…`, `switchyard-http`).
//!
//! Connections go through admission like every other listener's (see
//! `http_conn`); a WebSocket carried on one is also counted under its own
//! protocol.

use crate::Ctx;
use crate::http_conn::{HeadTimeouts, HttpListener, KillSwitch};
use crate::registry::WsRoute;
use crate::ws::WsStream;
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use switchyard_core::spi::{Connection, ProtocolAdapter, Transport};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// A stream protocol served on a WebSocket path.
#[derive(Clone)]
pub(crate) struct WsService {
    pub(crate) route: WsRoute,
    pub(crate) protocol: &'static str,
    pub(crate) adapter: Arc<dyn ProtocolAdapter>,
}

#[derive(Clone)]
struct AppState {
    ctx: Arc<Ctx>,
    close: CancellationToken,
    connections: TaskTracker,
}

pub(crate) struct Serve {
    pub(crate) socket: TcpListener,
    /// The HTTP adapter's routes (opened once the broker has recovered).
    pub(crate) api: switchyard_http::HttpApi,
    /// How long open connections get after `stop` before they are cut.
    pub(crate) grace: Duration,
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) ws: Arc<Vec<WsService>>,
    pub(crate) stop: CancellationToken,
    pub(crate) close: CancellationToken,
    pub(crate) connections: TaskTracker,
    /// HTTPS: the handshake runs before a request is read.
    pub(crate) tls: Option<Arc<crate::tls::Tls>>,
    pub(crate) handshake_timeout: Duration,
}

fn router(state: AppState, ws: &[WsService]) -> Router {
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    for service in ws {
        let service = service.clone();
        app = app.route(
            service.route.path,
            get(
                move |State(state): State<AppState>,
                      ConnectInfo(peer): ConnectInfo<SocketAddr>,
                      upgrade: WebSocketUpgrade| async move {
                    websocket(state, service, peer, upgrade)
                },
            ),
        );
    }
    app.with_state(state)
}

pub(crate) async fn serve(s: Serve) {
    let api = s.api;
    let switch = Arc::new(KillSwitch::default());
    let config = api.config();
    let heads = HeadTimeouts {
        first_idle: s.handshake_timeout,
        keep_alive: config.keep_alive_timeout.get(),
        header: config.header_timeout.get(),
    };
    let mut listener = HttpListener {
        socket: s.socket,
        admission: s.ctx.admission.clone(),
        write_timeout: config.write_timeout.get(),
        handshake_timeout: s.handshake_timeout,
        heads,
        switch: switch.clone(),
        tls: s.tls,
        handshakes: tokio::task::JoinSet::new(),
    };
    let state = AppState {
        ctx: s.ctx,
        close: s.close.clone(),
        connections: s.connections,
    };
    let app = router(state, &s.ws).merge(api.router());
    drop(api);
    let stop = s.stop;
    let grace = s.grace;
    let killer = {
        let stop = stop.clone();
        let switch = switch.clone();
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            stop.cancelled().await;
            tokio::time::sleep(grace).await;
            switch.kill();
        }))
    };
    // hyper's HTTP/1 server, one task per connection (what `axum::serve`
    // does, plus the request-head timer, which `axum::serve` cannot set).
    // Once the listener stops, connections finish their current response
    // (hyper's graceful shutdown) within the grace period.
    let finish = CancellationToken::new();
    let conns = TaskTracker::new();
    loop {
        let (io, peer) = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
        };
        let timer = io.head_timer();
        let service = hyper_util::service::TowerToHyperService::new(WithPeer {
            app: app.clone(),
            peer,
        });
        let finish = finish.clone();
        conns.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            // The timer decides the deadlines (`HeadClock`); hyper only
            // needs some header timeout to run it.
            builder.timer(timer).header_read_timeout(heads.keep_alive);
            let conn = builder
                .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = finish.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTP connection closed with an error");
            }
        });
    }
    switch.stopping();
    finish.cancel();
    drop(listener);
    conns.close();
    conns.wait().await;
    drop(killer);
}

/// The router, with the connection's peer address as axum's
/// `ConnectInfo<SocketAddr>` in every request.
#[derive(Clone)]
struct WithPeer {
    app: Router,
    peer: SocketAddr,
}

impl tower_service::Service<axum::http::Request<hyper::body::Incoming>> for WithPeer {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future =
        <Router as tower_service::Service<axum::http::Request<hyper::body::Incoming>>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tower_service::Service::<axum::http::Request<hyper::body::Incoming>>::poll_ready(
            &mut self.app,
            cx,
        )
    }

    fn call(&mut self, mut req: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        tower_service::Service::call(&mut self.app, req)
    }
}

fn websocket(
    state: AppState,
    service: WsService,
    peer: SocketAddr,
    upgrade: WebSocketUpgrade,
) -> Response {
    // The HTTP connection holds the admission slot; count the protocol too.
    let slot = state.ctx.admission.track(service.protocol);
    let frames = service.route.frames;
    upgrade
        .protocols(service.route.subprotocols.iter().copied())
        .on_upgrade(move |socket| async move {
            let id = state.ctx.broker.next_conn_id();
            let conn = Connection {
                id,
                listener: "http".to_owned(),
                peer: Some(peer),
                local: None,
                transport: Transport::WebSocket,
                tls_identity: None,
                start_tls: None,
                stream: Box::new(WsStream::new(socket, frames)),
                shutdown: state.close.child_token(),
            };
            let broker = state.ctx.broker.clone();
            let span = tracing::info_span!(
                "conn",
                protocol = service.protocol,
                conn_id = id.get(),
                %peer,
                transport = "websocket",
                client_id = tracing::field::Empty
            );
            let task = state.connections.spawn(
                async move {
                    let _slot = slot;
                    match service.adapter.serve(conn, broker).await {
                        Ok(()) => tracing::debug!("closed"),
                        Err(e) => tracing::debug!(error = %e, "closed with error"),
                    }
                }
                .instrument(span),
            );
            let _ = task.await;
        })
}

/// Liveness: the process answers.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: every listener is bound (and, with a durable store, it has
/// recovered). 503 before that and during shutdown (`shutting_down`: from
/// the signal on, through `server.drain_period`, while listeners still
/// serve).
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let ctx = &state.ctx;
    let ready = ctx.ready.load(Ordering::Acquire);
    let recovery = ctx.recovery.lock().as_ref().map(|r| {
        serde_json::json!({
            "elapsed_ms": r.elapsed.as_millis() as u64,
            "queues": r.queues,
            "exchanges": r.exchanges,
            "bindings": r.bindings,
            "messages": r.messages,
            "paged": r.paged,
            "retained": r.retained,
            "states": r.states,
            "bad_records": r.bad_records,
            "segments": r.journal.segments,
            "records": r.journal.records,
            "bytes": r.journal.bytes,
            "torn_bytes": r.journal.torn_bytes,
            "corrupt_segments": r.journal.corrupt_segments,
        })
    });
    let body = serde_json::json!({
        "ready": ready,
        "shutting_down": ctx.shutting_down.load(Ordering::Acquire),
        "name": ctx.name,
        "uptime_ms": ctx.started.elapsed().as_millis() as u64,
        "ready_after_ms": ctx.ready_after.lock().map(|d| d.as_millis() as u64),
        "recovery": recovery,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&state.ctx),
    )
}
