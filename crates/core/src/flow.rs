//! Broker-wide flow control: when memory passes its high watermark or the
//! data directory's disk runs low, publishers are held back until it
//! clears (the server's resource monitor decides; adapters obey).
//!
//! As in RabbitMQ, only connections that publish are blocked — a connection
//! that only consumes keeps reading, so its acknowledgements can free the
//! memory. Each protocol blocks in its own way: AMQP sends
//! `connection.blocked`, MQTT/STOMP/NATS stop reading from the socket
//! (TCP back-pressure reaches the client), HTTP answers 503.

use crate::Broker;
use tokio::sync::watch;

/// Why publishers are held back (`None`: they are not).
pub type BlockReason = Option<String>;

/// A handle on the broker's flow state. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Flow {
    rx: watch::Receiver<BlockReason>,
}

impl Flow {
    /// True while publishers must be held back.
    pub fn is_blocked(&self) -> bool {
        self.rx.borrow().is_some()
    }

    /// The reason publishers are held back, if they are.
    pub fn reason(&self) -> BlockReason {
        self.rx.borrow().clone()
    }

    /// Resolves when publishers may go on (at once when they may now).
    /// Cancel-safe.
    pub async fn unblocked(&mut self) {
        let _ = self.rx.wait_for(Option::is_none).await;
    }

    /// Resolves on the next change of the flow state. Cancel-safe.
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// For a driver's `select!`: while its publishing connection is held
    /// back (`hold`), resolves once publishers are unblocked; otherwise on
    /// the next change, so the driver re-evaluates whether to hold.
    /// Cancel-safe.
    pub async fn turn(&mut self, hold: bool) {
        if hold {
            self.unblocked().await;
        } else {
            self.changed().await;
        }
    }
}

impl Broker {
    /// The broker's flow state, for adapters.
    pub fn flow(&self) -> Flow {
        Flow {
            rx: self.shared.flow.subscribe(),
        }
    }

    /// Records whether `source` (`"memory"`, `"disk"`, ...) wants
    /// publishers blocked (`Some(reason)`) or not (`None`). Publishers are
    /// blocked while any source wants it; changes are logged.
    pub fn set_blocked_by(&self, source: &'static str, reason: BlockReason) {
        let combined = {
            let mut sources = self.shared.flow_sources.lock();
            match reason {
                Some(r) => {
                    sources.insert(source, r);
                }
                None => {
                    sources.remove(source);
                }
            }
            if sources.is_empty() {
                None
            } else {
                Some(sources.values().cloned().collect::<Vec<_>>().join("; "))
            }
        };
        self.shared.flow.send_if_modified(|current| {
            if *current == combined {
                return false;
            }
            match &combined {
                Some(r) => tracing::warn!(reason = %r, "publishers blocked"),
                None => tracing::info!("publishers unblocked"),
            }
            *current = combined;
            true
        });
    }

    /// Blocks or unblocks publishers on the operator's behalf (source
    /// `"operator"`; tests use it too).
    pub fn set_blocked(&self, reason: BlockReason) {
        self.set_blocked_by("operator", reason);
    }
}
