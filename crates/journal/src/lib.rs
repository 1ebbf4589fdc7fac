//! The journal's interface: what the core hands to durable storage and what
//! it gets back.
//!
//! The journal knows records and bytes, not protocols or queues' rules: a
//! [`Record`] is a type byte and an opaque payload that the core encodes. The
//! contract every implementation keeps:
//!
//! * records are durable in the order they were appended;
//! * the [`Completion`] of an append resolves only after the records up to
//!   and including it are on disk as the [`FsyncPolicy`] promises (for
//!   `always`/`batch`: after the `fdatasync` that covers them);
//! * a failed sync is fatal: every later completion reports the error.
//!
//! [`NullJournal`] keeps nothing: it is what a broker without a data
//! directory uses, and what tests of the core use. The segment-file journal
//! (group commit, recovery, compaction, paging) implements the same trait.

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::oneshot;

/// One journal record: a type the core defines, and its encoded payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: u8,
    pub payload: Bytes,
}

/// When appends reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// `fdatasync` after every append before completing it.
    Always,
    /// One `fdatasync` per batch of appends (group commit), then complete
    /// every append in the batch.
    #[default]
    Batch,
    /// Never sync; complete when written to the OS. Survives a process
    /// crash, not a power cut.
    Never,
}

/// A journal error. Once a sync fails the journal refuses all further work.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    #[error("journal I/O error: {0}")]
    Io(String),
    #[error("journal is closed")]
    Closed,
}

/// Resolves when an append is as durable as the policy promises.
#[derive(Debug)]
pub struct Completion(CompletionInner);

#[derive(Debug)]
enum CompletionInner {
    Ready(Option<Result<(), JournalError>>),
    Pending(oneshot::Receiver<Result<(), JournalError>>),
}

impl Completion {
    /// An append that is already complete.
    pub fn ready(result: Result<(), JournalError>) -> Self {
        Completion(CompletionInner::Ready(Some(result)))
    }

    /// A completion and the sender the journal's writer resolves it with.
    pub fn pending() -> (Self, oneshot::Sender<Result<(), JournalError>>) {
        let (tx, rx) = oneshot::channel();
        (Completion(CompletionInner::Pending(rx)), tx)
    }
}

impl Future for Completion {
    type Output = Result<(), JournalError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            CompletionInner::Ready(r) => Poll::Ready(r.take().unwrap_or(Err(JournalError::Closed))),
            CompletionInner::Pending(rx) => match Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(r)) => Poll::Ready(r),
                Poll::Ready(Err(_)) => Poll::Ready(Err(JournalError::Closed)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// Durable storage for the core's records.
pub trait Journal: Send + Sync + std::fmt::Debug + 'static {
    /// True when appends are kept (false for [`NullJournal`]), so callers can
    /// skip encoding records nobody keeps.
    fn is_durable(&self) -> bool;

    /// Appends records, in order, after every record appended before. Never
    /// blocks; the returned completion resolves per the fsync policy.
    fn append(&self, records: Vec<Record>) -> Completion;
}

/// A journal that keeps nothing and completes at once.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullJournal;

impl Journal for NullJournal {
    fn is_durable(&self) -> bool {
        false
    }

    fn append(&self, _records: Vec<Record>) -> Completion {
        Completion::ready(Ok(()))
    }
}
