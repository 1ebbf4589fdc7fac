//! Keep-alive deadlines of all of an adapter's connections, checked by one
//! task once a second instead of by a timer in every connection.
//!
//! A connection with a keep alive registers a [`Beat`]: when it last
//! received a packet, how long it may stay silent (1.5 × the keep alive,
//! [MQTT-3.1.2-24]) and its shutdown token. The sweep cancels the token of
//! a connection silent for longer and marks its beat expired; the
//! connection's loop, which waits on that token anyway (shutdown and
//! takeover), then closes it with "keep alive timeout". So an idle
//! connection holds no timer of its own (a tokio `Sleep` is 112 bytes of
//! its state, plus its deadline arithmetic), only a pointer to its beat.
//!
//! Precision: a silent connection is closed between 1.5 × its keep alive
//! and one sweep interval ([`TICK`]) later, never before. (Mosquitto checks
//! keep alives coarsely too.) The sweeper runs only while some connection
//! is registered.

use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the deadlines are checked.
pub(crate) const TICK: Duration = Duration::from_secs(1);

/// `last_rx` of a paused beat: never silent for too long.
const PAUSED: u64 = u64::MAX;

/// The keep-alive registry of one adapter. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct KeepAlive {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    epoch: Instant,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    beats: Vec<Arc<Beat>>,
    /// A sweeper task is running (it stops when no beat is left).
    sweeping: bool,
}

/// One connection's keep-alive state, shared with the sweeper.
#[derive(Debug)]
pub(crate) struct Beat {
    /// Milliseconds since the registry's epoch at the last packet received.
    last_rx: AtomicU64,
    /// How long the connection may stay silent, in milliseconds.
    grace: u64,
    expired: AtomicBool,
    token: CancellationToken,
}

impl Beat {
    /// The connection is held back (not read) by the broker: its silence
    /// does not count until [`Beat::resume`].
    pub(crate) fn pause(&self) {
        self.last_rx.store(PAUSED, Ordering::Relaxed);
    }

    /// Counts its silence again (from now) after [`Beat::pause`].
    pub(crate) fn resume(&self, ka: &KeepAlive) {
        if self.last_rx.load(Ordering::Relaxed) == PAUSED {
            ka.touch(self);
        }
    }

    /// The sweeper closed the connection for its silence.
    pub(crate) fn is_expired(&self) -> bool {
        self.expired.load(Ordering::Acquire)
    }
}

impl Default for KeepAlive {
    fn default() -> Self {
        KeepAlive {
            inner: Arc::new(Inner {
                epoch: Instant::now(),
                state: Mutex::new(State::default()),
            }),
        }
    }
}

impl KeepAlive {
    fn now(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Registers a connection that may stay silent for `grace` (non-zero);
    /// `token` is cancelled when it has been silent for longer. Must be
    /// called inside the runtime (the sweeper is started on demand).
    pub(crate) fn register(&self, grace: Duration, token: CancellationToken) -> Arc<Beat> {
        let beat = Arc::new(Beat {
            last_rx: AtomicU64::new(self.now()),
            grace: u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
            expired: AtomicBool::new(false),
            token,
        });
        let mut state = self.inner.state.lock();
        state.beats.push(beat.clone());
        if !state.sweeping {
            state.sweeping = true;
            tokio::spawn(sweep(Arc::downgrade(&self.inner)));
        }
        beat
    }

    /// A packet (or anything that counts as one) was received now.
    pub(crate) fn touch(&self, beat: &Beat) {
        beat.last_rx.store(self.now(), Ordering::Relaxed);
    }
}

/// Checks every registered connection once a [`TICK`]; forgets those that
/// ended (their beat is no longer shared) and expires the silent ones.
async fn sweep(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut expired = Vec::new();
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let ka = KeepAlive { inner };
        let now = ka.now();
        let done = {
            let mut state = ka.inner.state.lock();
            state.beats.retain(|b| {
                if Arc::strong_count(b) == 1 {
                    return false;
                }
                let last = b.last_rx.load(Ordering::Relaxed);
                if now.saturating_sub(last) > b.grace {
                    expired.push(b.clone());
                    return false;
                }
                true
            });
            if state.beats.is_empty() {
                state.sweeping = false;
                // Give the memory of a large crowd back once it is gone.
                state.beats = Vec::new();
            }
            !state.sweeping
        };
        for b in expired.drain(..) {
            b.expired.store(true, Ordering::Release);
            b.token.cancel();
        }
        if done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_silent_connection_expires_a_talking_one_does_not() {
        let ka = KeepAlive::default();
        let silent = CancellationToken::new();
        let talking = CancellationToken::new();
        let gone = CancellationToken::new();
        let s = ka.register(Duration::from_millis(1500), silent.clone());
        let t = ka.register(Duration::from_millis(1500), talking.clone());
        drop(ka.register(Duration::from_millis(10), gone.clone()));
        let started = Instant::now();
        let until = started + Duration::from_secs(5);
        while !silent.is_cancelled() && Instant::now() < until {
            ka.touch(&t);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let took = started.elapsed();
        assert!(silent.is_cancelled() && s.is_expired());
        assert!(took >= Duration::from_millis(1500), "{took:?}");
        assert!(took <= Duration::from_millis(1500) + TICK * 2, "{took:?}");
        assert!(!talking.is_cancelled() && !t.is_expired());
        assert!(
            !gone.is_cancelled(),
            "an ended connection is only forgotten"
        );
        drop(t);
        // Nothing left: the sweeper stops, and starts again when needed.
        tokio::time::sleep(TICK * 2).await;
        assert!(!ka.inner.state.lock().sweeping);
        let again = CancellationToken::new();
        let _a = ka.register(Duration::from_millis(10), again.clone());
        tokio::time::timeout(TICK * 3, again.cancelled())
            .await
            .unwrap();
    }
}
