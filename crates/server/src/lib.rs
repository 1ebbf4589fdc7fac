//! The `switchyard` binary's library: configuration, listeners, the adapter
//! registry, the HTTP listener (health, readiness, metrics; REST and
//! WebSocket paths as the protocols land), signals and graceful shutdown.
//!
//! This is the only crate that knows every other one. Tests start a whole
//! broker in-process with [`Server::start`] (listeners on port 0) and stop
//! it with [`Server::shutdown`]; `main` does the same around the process's
//! signals ([`run`]).

pub mod config;
mod conns;
mod http;
mod http_conn;
mod listener;
pub mod logging;
mod metrics;
mod monitor;
pub mod registry;
pub mod tls;
pub mod ws;

pub use config::{Config, ConfigError};

use conns::Admission;
use registry::Service;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use switchyard_core::Broker;
use switchyard_core::journal::{FsyncPolicy, Journal, JournalConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("configuration error: {0}")]
    Config(#[from] ConfigError),
    #[error("the journal cannot be opened or recovered: {0}")]
    Journal(String),
    #[error("listener '{listener}': TLS: {message}")]
    Tls { listener: String, message: String },
    #[error("listener '{listener}' cannot bind {addr}: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A bound listener.
#[derive(Debug, Clone)]
pub struct Bound {
    pub name: String,
    pub protocol: String,
    pub addr: SocketAddr,
}

/// State shared by listeners, connections and the HTTP routes.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) broker: Broker,
    pub(crate) admission: Arc<Admission>,
    pub(crate) ready: AtomicBool,
    /// Set when shutdown begins (readiness answers 503 from then on).
    pub(crate) shutting_down: AtomicBool,
    pub(crate) started: Instant,
    pub(crate) ready_after: parking_lot::Mutex<Option<Duration>>,
    /// What the journal's recovery found (reported by `/readyz`).
    pub(crate) recovery: parking_lot::Mutex<Option<switchyard_core::RecoveryReport>>,
    pub(crate) name: String,
}

/// A running broker.
#[derive(Debug)]
pub struct Server {
    ctx: Arc<Ctx>,
    bound: Vec<Bound>,
    stop_accepting: CancellationToken,
    close_connections: CancellationToken,
    listeners: TaskTracker,
    connections: TaskTracker,
    grace: Duration,
    drain: Duration,
    maintenance: tokio::task::JoinHandle<()>,
    tls: Arc<Vec<Arc<tls::Tls>>>,
}

impl Server {
    /// Binds every enabled listener and starts serving. Returns once every
    /// listener is bound (so `local_addr` answers).
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        let started = Instant::now();
        let broker = if config.journal.enabled {
            let dir = config.server.data_dir.join("journal");
            let mut jc = JournalConfig::new(&dir);
            jc.segment_size = config.journal.segment_size.bytes();
            jc.fsync = FsyncPolicy::parse(&config.journal.fsync).unwrap_or_default();
            jc.max_batch_delay = config.journal.max_batch_delay.get();
            let journal = Journal::open(jc)
                .map_err(|e| ServerError::Journal(format!("{}: {e}", dir.display())))?;
            Broker::with_journal(config.core.clone(), journal)
        } else {
            Broker::new(config.core.clone())
        };
        if config.core.auth.anonymous {
            if config.core.auth.users.is_empty() {
                tracing::warn!(
                    "no [[users]] configured: every client is let in without credentials (anonymous access)"
                );
            } else {
                tracing::warn!("[auth] anonymous = true: clients without credentials are let in");
            }
        }
        let protocols: Vec<&'static str> = registry::PROTOCOLS.iter().map(|p| p.name).collect();
        let limits = &config.core.limits;
        let admission = Arc::new(
            Admission::new(
                limits.max_connections,
                limits.max_connections_per_ip,
                &protocols,
            )
            .with_rate_per_ip(
                limits.connection_rate_per_ip,
                limits.connection_burst_per_ip,
            ),
        );
        let ctx = Arc::new(Ctx {
            broker: broker.clone(),
            admission,
            ready: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            started,
            ready_after: parking_lot::Mutex::new(None),
            recovery: parking_lot::Mutex::new(None),
            name: config.server.name.clone(),
        });
        let stop_accepting = CancellationToken::new();
        let close_connections = CancellationToken::new();
        let listeners = TaskTracker::new();
        let connections = TaskTracker::new();

        // Build every listener's service (disabled ones too: a protocol's
        // WebSocket path uses its listener's options even when its TCP
        // listener is off), then bind, so a failure starts nothing.
        let mut services = Vec::new();
        let mut ws_routes: Vec<http::WsService> = Vec::new();
        for l in &config.listeners {
            let protocol = registry::protocol(&l.protocol).ok_or_else(|| {
                ConfigError::new(format!("listeners.{}.protocol", l.name), "unknown protocol")
            })?;
            let service = (protocol.build)(l)?;
            if let (Some(route), Service::Stream(adapter)) = (protocol.websocket, &service)
                && !ws_routes.iter().any(|w| w.route.path == route.path)
            {
                ws_routes.push(http::WsService {
                    route,
                    protocol: protocol.name,
                    adapter: adapter.clone(),
                });
            }
            services.push((l, protocol, service));
        }
        let ws_routes = Arc::new(ws_routes);
        let mut sockets = Vec::new();
        let mut tls_all = Vec::new();
        for (l, protocol, service) in services.into_iter().filter(|(l, _, _)| l.enabled) {
            let socket = TcpListener::bind(l.bind)
                .await
                .map_err(|source| ServerError::Bind {
                    listener: l.name.clone(),
                    addr: l.bind,
                    source,
                })?;
            let addr = socket.local_addr().map_err(|source| ServerError::Bind {
                listener: l.name.clone(),
                addr: l.bind,
                source,
            })?;
            let tls = match &l.tls {
                None => None,
                Some(section) => {
                    let mut t =
                        tls::Tls::new(&l.name, section, protocol.alpn).map_err(|message| {
                            ServerError::Tls {
                                listener: l.name.clone(),
                                message,
                            }
                        })?;
                    t.after_greeting = protocol.tls_after_greeting;
                    t.timeout = config.core.limits.handshake_timeout.get();
                    Some(Arc::new(t))
                }
            };
            if let Some(t) = &tls {
                tls_all.push(t.clone());
            }
            tracing::info!(
                listener = %l.name,
                protocol = %l.protocol,
                %addr,
                tls = tls.is_some(),
                "listening"
            );
            sockets.push((
                Bound {
                    name: l.name.clone(),
                    protocol: l.protocol.clone(),
                    addr,
                },
                protocol,
                service,
                socket,
                tls,
            ));
        }
        // The HTTP listener starts first, so /healthz answers and /readyz
        // says 503 while the journal is recovered; stream listeners accept
        // connections only once recovery is done.
        let mut bound = Vec::new();
        let config_grace = config.server.shutdown_grace.get();
        let mut streams = Vec::new();
        let mut http_apis = Vec::new();
        let handshake_timeout = config.core.limits.handshake_timeout.get();
        for (b, protocol, service, socket, tls) in sockets {
            match service {
                Service::Stream(adapter) => {
                    streams.push((b.name.clone(), protocol, adapter, socket, tls))
                }
                Service::Http(config) => {
                    let api = switchyard_http::HttpApi::new(
                        *config,
                        broker.clone(),
                        stop_accepting.clone(),
                    );
                    http_apis.push(api.clone());
                    listeners.spawn(http::serve(http::Serve {
                        socket,
                        api,
                        grace: config_grace,
                        ctx: ctx.clone(),
                        ws: ws_routes.clone(),
                        stop: stop_accepting.clone(),
                        close: close_connections.clone(),
                        connections: connections.clone(),
                        tls,
                        handshake_timeout,
                    }));
                }
            }
            bound.push(b);
        }
        let recovering = broker.clone();
        let report = tokio::task::spawn_blocking(move || recovering.recover())
            .await
            .map_err(|e| ServerError::Journal(e.to_string()))?
            .map_err(|e| ServerError::Journal(e.to_string()))?;
        if config.journal.enabled {
            tracing::info!(
                queues = report.queues,
                exchanges = report.exchanges,
                bindings = report.bindings,
                messages = report.messages,
                paged = report.paged,
                retained = report.retained,
                states = report.states,
                bad_records = report.bad_records,
                segments = report.journal.segments,
                records = report.journal.records,
                torn_bytes = report.journal.torn_bytes,
                corrupt_segments = ?report.journal.corrupt_segments,
                elapsed_ms = report.elapsed.as_millis() as u64,
                "journal recovered"
            );
        }
        *ctx.recovery.lock() = Some(report);
        // Each protocol restores its saved state once (whichever of its
        // listeners comes first), before its listeners accept connections.
        let mut recovered: Vec<&'static str> = Vec::new();
        let adapters = streams
            .iter()
            .map(|(_, protocol, adapter, _, _)| (protocol.name, adapter))
            .chain(ws_routes.iter().map(|w| (w.protocol, &w.adapter)));
        for (protocol, adapter) in adapters {
            if !recovered.contains(&protocol) {
                recovered.push(protocol);
                adapter.recovered(&broker);
            }
        }
        for api in http_apis {
            api.open();
        }
        for (name, protocol, adapter, socket, tls) in streams {
            listeners.spawn(listener::accept_loop(listener::Accept {
                socket,
                name,
                protocol: protocol.name,
                tls,
                adapter,
                ctx: ctx.clone(),
                stop: stop_accepting.clone(),
                close: close_connections.clone(),
                connections: connections.clone(),
            }));
        }
        let tls_all = Arc::new(tls_all);
        #[cfg(unix)]
        listeners.spawn(reload_on_sighup(tls_all.clone(), stop_accepting.clone()));
        let maintenance = broker.start_maintenance();
        let _ = std::fs::create_dir_all(&config.server.data_dir);
        listeners.spawn(monitor::spawn(
            broker.clone(),
            config.server.data_dir.clone(),
            config.core.limits.memory_high_watermark,
            config.core.limits.disk_free_low_watermark,
            stop_accepting.clone(),
        ));
        ctx.ready.store(true, Ordering::Release);
        *ctx.ready_after.lock() = Some(started.elapsed());
        tracing::info!(
            listeners = bound.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "switchyard ready"
        );
        Ok(Server {
            ctx,
            bound,
            stop_accepting,
            close_connections,
            listeners,
            connections,
            grace: config.server.shutdown_grace.get(),
            drain: config.server.drain_period.get(),
            maintenance,
            tls: tls_all,
        })
    }

    /// Reads every TLS listener's certificate, key and client CA files
    /// again (what SIGHUP does). New handshakes use the new files; open
    /// connections keep theirs. A listener whose files fail to load keeps
    /// its old configuration. Returns each listener's outcome.
    pub fn reload_tls(&self) -> Vec<(String, Result<(), String>)> {
        reload_tls(&self.tls)
    }

    /// The address listener `name` is bound to.
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.bound.iter().find(|b| b.name == name).map(|b| b.addr)
    }

    /// Every bound listener.
    pub fn bound(&self) -> &[Bound] {
        &self.bound
    }

    pub fn broker(&self) -> &Broker {
        &self.ctx.broker
    }

    /// Open client connections.
    pub fn connections(&self) -> u64 {
        self.ctx.admission.active()
    }

    /// Graceful shutdown: report not ready and keep serving for the drain
    /// period, stop accepting, ask every connection to leave with its
    /// protocol's goodbye, wait up to the grace period, drop the rest, stop
    /// the broker's background work.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        self.ctx.shutting_down.store(true, Ordering::Release);
        self.ctx.ready.store(false, Ordering::Release);
        if !self.drain.is_zero() {
            tracing::info!(
                drain_ms = self.drain.as_millis() as u64,
                "draining: not ready, still serving"
            );
            tokio::time::sleep(self.drain).await;
        }
        self.stop_accepting.cancel();
        self.listeners.close();
        self.listeners.wait().await;
        self.close_connections.cancel();
        self.connections.close();
        if tokio::time::timeout(self.grace, self.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.ctx.admission.active(),
                "connections still open after the grace period; dropping them"
            );
        }
        self.ctx.broker.shutdown();
        let _ = self.maintenance.await;
        if let Err(e) = self.ctx.broker.close_journal().await {
            tracing::error!(error = %e, "the journal could not be flushed at shutdown");
        }
        tracing::info!("stopped");
    }
}

/// Runs a broker until `shutdown` resolves, then stops it gracefully.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    let mut shutdown = std::pin::pin!(shutdown);
    // Poll it once before starting: signal handlers are installed on the
    // first poll, and a SIGTERM that came between "ready" and that poll
    // would otherwise kill the process with the default action.
    let early = tokio::select! {
        biased;
        () = &mut shutdown => true,
        () = std::future::ready(()) => false,
    };
    let server = Server::start(config).await?;
    if !early {
        shutdown.await;
    }
    server.shutdown().await;
    Ok(())
}

fn reload_tls(all: &[Arc<tls::Tls>]) -> Vec<(String, Result<(), String>)> {
    all.iter()
        .map(|t| {
            let r = t.reload();
            match &r {
                Ok(()) => tracing::info!(listener = %t.listener, "TLS certificate reloaded"),
                Err(e) => tracing::error!(
                    listener = %t.listener,
                    error = %e,
                    "TLS reload failed; the previous certificate stays in use"
                ),
            }
            (t.listener.clone(), r)
        })
        .collect()
}

/// SIGHUP reloads the TLS files of every TLS listener.
#[cfg(unix)]
async fn reload_on_sighup(all: Arc<Vec<Arc<tls::Tls>>>, stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; TLS reload on signal is off");
        return;
    };
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            r = hup.recv() => {
                if r.is_none() {
                    return;
                }
                tracing::info!(listeners = all.len(), "SIGHUP received: reloading TLS certificates");
                let all = all.clone();
                let _ = tokio::task::spawn_blocking(move || reload_tls(&all)).await;
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
