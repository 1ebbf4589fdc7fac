//! "Tell me when this queue may have messages": for consumers that take
//! messages with [`crate::Session::get`] and want to wait for more without
//! polling (HTTP long-poll).
//!
//! A queue keeps a count of its watchers, a generation number and a
//! [`Notify`]. Whenever a message becomes ready in a watched queue (a
//! publish that no consumer took at once, a requeue) or the queue is
//! deleted, the generation is bumped and every waiting watcher is woken. An
//! unwatched queue pays one relaxed atomic load per message that lands in
//! its ready list.
//!
//! No wake-up is lost: a watcher registers (count up) before it first looks
//! at the queue, and the look and the enqueue are ordered by the queue's
//! lock, so an enqueue after the look sees the watcher and bumps the
//! generation, which [`QueueWatch::changed`] compares against what it has
//! seen. Wake-ups may be spurious (another consumer took the message first);
//! callers look again and wait again.

use crate::queue::Queue;
use crate::{Broker, CoreError, CoreResult};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio::sync::Notify;

/// A queue's side of its watchers.
#[derive(Debug, Default)]
pub(crate) struct WatchPoint {
    watchers: AtomicUsize,
    generation: AtomicU64,
    notify: Notify,
}

impl WatchPoint {
    /// A message became ready (or the queue went away): wake the watchers.
    /// Called with the queue's lock held.
    #[inline]
    pub(crate) fn ready_gained(&self) {
        if self.watchers.load(Ordering::Relaxed) > 0 {
            self.generation.fetch_add(1, Ordering::Release);
            self.notify.notify_waiters();
        }
    }
}

/// A watch on one queue: [`QueueWatch::changed`] resolves when messages may
/// have become ready since the watch was made or `changed` last returned.
/// Made by [`Broker::watch_queue`]; dropping it stops watching.
#[derive(Debug)]
pub struct QueueWatch {
    queue: Arc<Queue>,
    seen: u64,
}

impl Broker {
    /// Watches the queue called `name` (see [`QueueWatch`]). Make the watch
    /// before looking at the queue, so nothing that arrives after the look
    /// is missed.
    pub fn watch_queue(&self, name: &str) -> CoreResult<QueueWatch> {
        let queue = self
            .shared
            .queue(name)
            .ok_or_else(|| CoreError::not_found("queue", name))?;
        queue.watch.watchers.fetch_add(1, Ordering::SeqCst);
        let seen = queue.watch.generation.load(Ordering::Acquire);
        Ok(QueueWatch { queue, seen })
    }
}

impl QueueWatch {
    /// Resolves once a message may have become ready, or the queue was
    /// deleted, since the watch was made or this last returned. Cancel-safe.
    pub async fn changed(&mut self) {
        let w = &self.queue.watch;
        loop {
            let notified = w.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let g = w.generation.load(Ordering::Acquire);
            if g != self.seen {
                self.seen = g;
                return;
            }
            notified.await;
        }
    }

    /// The name of the watched queue.
    pub fn queue(&self) -> &str {
        &self.queue.name
    }

    /// True once the watched queue was deleted (a queue created later under
    /// the same name is another queue: watch it anew).
    pub fn is_deleted(&self) -> bool {
        Queue::is_deleted(&self.queue.lock())
    }
}

impl Drop for QueueWatch {
    fn drop(&mut self) {
        self.queue.watch.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}
