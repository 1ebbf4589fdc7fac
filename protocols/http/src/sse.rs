//! `GET /v1/topics/{filter}/events`: a Server-Sent Events stream of the
//! messages matching a filter (WHATWG HTML, "Server-sent events").
//!
//! Each request opens a [`Session`] with one temporary subscription; the
//! response body owns it, so when the client goes away (hyper drops the
//! body) or the stream ends, the session is dropped and its queue deleted.
//!
//! The stream, per turn (biased): the listener's stop (→ `event: close`,
//! `shutdown`, end), broker events (overflow → `close`, `slow_consumer`;
//! the subscription cancelled → `close`, `cancelled`), deliveries (every
//! ready one coalesced into one chunk, up to [`CHUNK`] bytes), the
//! keep-alive timer (→ a comment).
//!
//! Buffering is bounded: the subscription's queue holds at most
//! `sse_max_pending` bytes / `sse_max_pending_messages` messages, past
//! which it drops its oldest and raises `Overflowed`, which ends the stream.
//! A client that stops reading altogether is cut off by the listener's
//! write timeout.

use crate::mapping;
use bytes::{Bytes, BytesMut};
use std::convert::Infallible;
use std::time::Duration;
use switchyard_core::{Deliveries, Events, Session, SessionEvent};
use tokio_util::sync::CancellationToken;

/// Most bytes coalesced into one chunk of the response.
pub const CHUNK: usize = 256 * 1024;

/// The state of one stream.
pub struct SseStream {
    /// Kept for its subscription; dropped with the stream.
    _session: Session,
    deliveries: Deliveries,
    events: Events,
    stop: CancellationToken,
    keepalive: Duration,
    first: Option<Bytes>,
    done: bool,
}

impl std::fmt::Debug for SseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseStream").finish_non_exhaustive()
    }
}

impl SseStream {
    /// A stream over `session`'s deliveries. `first` is sent at once.
    pub fn new(
        session: Session,
        stop: CancellationToken,
        keepalive: Duration,
        first: Bytes,
    ) -> SseStream {
        let deliveries = session.deliveries();
        let events = deliveries.events();
        SseStream {
            _session: session,
            deliveries,
            events,
            stop,
            keepalive,
            first: Some(first),
            done: false,
        }
    }

    /// The response body: a stream of chunks.
    pub fn into_stream(
        self,
    ) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
        futures_util::stream::unfold(self, |mut s| async move {
            let chunk = s.next_chunk().await?;
            Some((Ok(chunk), s))
        })
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        if self.done {
            return None;
        }
        let mut out = BytesMut::new();
        tokio::select! {
            biased;
            () = self.stop.cancelled() => {
                mapping::put_sse_close(&mut out, "shutdown", "the server is shutting down");
                self.done = true;
            }
            () = self.events.ready() => {
                for e in self.events.take() {
                    let (reason, detail) = match e {
                        SessionEvent::Overflowed(_) => (
                            "slow_consumer",
                            "the client did not keep up; messages were dropped",
                        ),
                        SessionEvent::ConsumerCancelled(_) => {
                            ("cancelled", "the subscription was cancelled by the broker")
                        }
                    };
                    if !self.done {
                        tracing::debug!(reason, "SSE stream closed");
                        mapping::put_sse_close(&mut out, reason, detail);
                        self.done = true;
                    }
                }
            }
            d = self.deliveries.recv() => match d {
                Some(d) => {
                    mapping::put_sse_message(&mut out, &d.message);
                    while out.len() < CHUNK {
                        match self.deliveries.try_recv() {
                            Some(d) => mapping::put_sse_message(&mut out, &d.message),
                            None => break,
                        }
                    }
                }
                None => self.done = true,
            },
            () = tokio::time::sleep(self.keepalive) => {
                mapping::put_sse_comment(&mut out, "keep-alive");
            }
        }
        if out.is_empty() {
            return None;
        }
        Some(out.freeze())
    }
}
