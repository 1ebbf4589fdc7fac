//! Test support shared by every crate's tests (dev-dependency only).
//!
//! * [`TestBroker`]: a whole Switchyard in-process, every listener on
//!   `127.0.0.1:0`, data in a temporary directory.
//! * [`conformance`]: the checks every protocol adapter must pass, written
//!   once against the [`conformance::Client`] trait that each protocol's
//!   tests implement with a public client library.
//! * [`slow_mqtt`]: a subscriber that reads only when told, for
//!   back-pressure tests.
//! * [`strategies`]: proptest strategies for addresses, filters and
//!   messages.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod conformance;
pub mod process;
pub mod slow_mqtt;
pub mod strategies;

use std::net::SocketAddr;
use std::time::Duration;
use switchyard::{Config, Server};
use switchyard_core::Broker;

/// A broker running in this process on ephemeral ports.
#[derive(Debug)]
pub struct TestBroker {
    server: Option<Server>,
    dir: tempfile::TempDir,
}

impl TestBroker {
    /// Starts a broker with the default configuration, every listener on
    /// `127.0.0.1:0`.
    pub async fn start() -> TestBroker {
        Self::start_with(|_| {}).await
    }

    /// Starts a broker after `edit` has changed the configuration (the
    /// listeners are already on port 0; `edit` may change that too).
    pub async fn start_with(edit: impl FnOnce(&mut Config)) -> TestBroker {
        init_logging();
        let dir = tempfile::tempdir().expect("temporary data directory");
        let mut config = Config::defaults()
            .expect("default configuration")
            .with_ephemeral_ports([127, 0, 0, 1].into());
        config.server.data_dir = dir.path().to_path_buf();
        config.server.shutdown_grace = switchyard_core::Dur(Duration::from_millis(500));
        edit(&mut config);
        let server = Server::start(config).await.expect("test broker starts");
        TestBroker {
            server: Some(server),
            dir,
        }
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("broker is running")
    }

    /// The bound address of listener `name` (`"nats"`, `"mqtt"`, `"http"`, ...).
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.server()
            .local_addr(name)
            .unwrap_or_else(|| panic!("no listener named {name}"))
    }

    /// `http://127.0.0.1:PORT` of the HTTP listener.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr("http"))
    }

    /// The broker, for in-process publishers and subscribers.
    pub fn broker(&self) -> &Broker {
        self.server().broker()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Open client connections.
    pub fn connections(&self) -> u64 {
        self.server().connections()
    }

    /// Graceful shutdown.
    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Polls `f` every 10 ms until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
