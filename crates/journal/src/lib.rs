//! Switchyard's journal: the durable log under the core's persistent state.
//!
//! It knows records and bytes, not protocols or queues' rules. The core
//! appends typed records (a type byte and an opaque payload), releases them
//! when they are no longer needed, and replays them on start.
//!
//! # Contract
//!
//! * [`Journal::append`] assigns the record its place ([`RecordLoc`]) at
//!   once, so records appended under a lock land in the log in lock order.
//!   Records become durable in append order.
//! * [`Journal::sync`] returns a [`Completion`] that resolves once every
//!   record appended before the call is as durable as the [`FsyncPolicy`]
//!   promises (for `always`/`batch`: after the `fdatasync` that covers it).
//! * One writer thread takes everything appended since its last turn,
//!   writes it, issues one `fdatasync` and completes every waiter (group
//!   commit). An I/O error is fatal: the journal refuses all further work and
//!   every waiter gets the error.
//! * Liveness: an appended record is live until [`Journal::release`]d. A
//!   *tombstone* (a record saying another is gone, [`Journal::append_tombstone`])
//!   stays live as long as the segment holding the record it refers to
//!   exists, so a removal can never be forgotten while what it removes is
//!   still on disk. A segment with no live record is deleted — after the
//!   next sync, so whatever made it dead is durable first.
//! * Tombstones in sparse segments are relocated by the journal itself
//!   ([`Journal::compact_tombstones`]); the core relocates its own live
//!   records (it alone knows whether they are still live).
//! * Recovery ([`Journal::open`] + [`Journal::replay`]): segments are read in
//!   order, every CRC checked; a torn tail (a half-written last record) is
//!   cut off; corruption elsewhere is reported and the rest of that segment
//!   skipped.
//!
//! The byte layout is in [`format`]. File I/O sits behind [`storage`] so
//! tests can inject faults.

pub mod format;
pub mod storage;

use bytes::Bytes;
use format::{Decoded, HEADER_LEN, decode_record, encode_record, header, parse_header, record_len};
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use storage::{FsStorage, SegmentFile, Storage};
use tokio::sync::oneshot;

/// When appends reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Every batch the writer takes is `fdatasync`ed before its records
    /// complete, and the writer never waits to gather more.
    Always,
    /// Group commit: like `always`, but the writer may wait up to the
    /// configured batch delay to gather more records into one `fdatasync`.
    #[default]
    Batch,
    /// Never sync; complete once written to the OS. Survives a crash of the
    /// process, not a power cut.
    Never,
}

impl FsyncPolicy {
    pub fn parse(s: &str) -> Option<FsyncPolicy> {
        match s {
            "always" => Some(FsyncPolicy::Always),
            "batch" => Some(FsyncPolicy::Batch),
            "never" => Some(FsyncPolicy::Never),
            _ => None,
        }
    }
}

/// Journal settings.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    pub dir: PathBuf,
    /// A segment is closed and a new one started past this size.
    pub segment_size: u64,
    pub fsync: FsyncPolicy,
    /// `batch` policy: longest wait to gather records into one sync.
    pub max_batch_delay: Duration,
}

impl JournalConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        JournalConfig {
            dir: dir.into(),
            segment_size: 64 * 1024 * 1024,
            fsync: FsyncPolicy::Batch,
            max_batch_delay: Duration::ZERO,
        }
    }
}

/// A journal error. After one, the journal refuses all further work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    #[error("journal I/O error: {0}")]
    Io(String),
    #[error("journal is closed")]
    Closed,
    #[error("record of {0} bytes is too large")]
    TooLarge(usize),
    #[error("corrupt journal: {0}")]
    Corrupt(String),
}

fn io_err(e: std::io::Error) -> JournalError {
    JournalError::Io(e.to_string())
}

/// Where a record is: its segment, offset and total size on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordLoc {
    pub segment: u32,
    pub offset: u32,
    pub size: u32,
}

/// Resolves when appends are as durable as the policy promises.
#[derive(Debug)]
pub struct Completion(CompletionInner);

#[derive(Debug)]
enum CompletionInner {
    Ready(Option<Result<(), JournalError>>),
    Pending(oneshot::Receiver<Result<(), JournalError>>),
}

impl Completion {
    /// A completion that is already resolved.
    pub fn ready(result: Result<(), JournalError>) -> Self {
        Completion(CompletionInner::Ready(Some(result)))
    }

    /// A completion and the sender that resolves it (tests, and callers
    /// that complete something on the journal's behalf).
    pub fn pending() -> (Self, oneshot::Sender<Result<(), JournalError>>) {
        let (tx, rx) = oneshot::channel();
        (Completion(CompletionInner::Pending(rx)), tx)
    }

    fn waiting(rx: oneshot::Receiver<Result<(), JournalError>>) -> Self {
        Completion(CompletionInner::Pending(rx))
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

/// Counters, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    pub records_appended: u64,
    pub bytes_appended: u64,
    /// Batches written by the writer thread.
    pub batches: u64,
    pub fsyncs: u64,
    /// Total time spent in `fdatasync`, microseconds.
    pub fsync_micros: u64,
    pub segments: u64,
    pub segments_deleted: u64,
    pub live_records: u64,
    pub tombstones_relocated: u64,
}

#[derive(Debug, Default)]
struct Counters {
    records_appended: AtomicU64,
    bytes_appended: AtomicU64,
    batches: AtomicU64,
    fsyncs: AtomicU64,
    fsync_micros: AtomicU64,
    segments_deleted: AtomicU64,
    tombstones_relocated: AtomicU64,
}

/// Bytes appended but not yet handed to the writer, in order.
#[derive(Debug)]
struct Chunk {
    segment: u32,
    /// Offset in the segment just past the chunk's last record.
    end: u64,
    bytes: Vec<u8>,
}

#[derive(Debug, Default)]
struct Tail {
    /// The segment being appended to and the next offset in it.
    segment: u32,
    offset: u64,
    chunks: Vec<Chunk>,
    /// Logical position (total bytes appended) and how far is durable.
    appended: u64,
    durable: u64,
    /// Everything before (segment, offset) is in a file (readable).
    written: (u32, u64),
    waiters: Vec<(u64, oneshot::Sender<Result<(), JournalError>>)>,
    /// Dead segments to delete once what is appended now is durable.
    deletes: Vec<(u64, u32)>,
    failed: Option<JournalError>,
    closing: bool,
    started: bool,
}

#[derive(Debug, Default)]
struct Segment {
    /// Live records (including live tombstones).
    live: u64,
    records: u64,
    bytes: u64,
    live_bytes: u64,
    /// Tombstones elsewhere that refer to records in this segment. (Sets,
    /// not lists: a segment holds up to a million of them, and each is
    /// removed one by one as it is released or relocated.)
    dependents: hashbrown::HashSet<RecordLoc>,
    /// Live tombstones in this segment → the record each refers to.
    tombstones: hashbrown::HashMap<RecordLoc, RecordLoc>,
}

struct Inner {
    storage: Arc<dyn Storage>,
    config: JournalConfig,
    tail: Mutex<Tail>,
    /// Wakes the writer.
    work: Condvar,
    /// Wakes readers waiting for a record to reach its file.
    written_cv: Condvar,
    segments: Mutex<BTreeMap<u32, Segment>>,
    readers: Mutex<HashMap<u32, Arc<dyn SegmentFile>>>,
    counters: Counters,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.config.dir)
            .finish_non_exhaustive()
    }
}

/// The durable log. Cheap to share (`Arc` inside).
#[derive(Debug, Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

/// A record read during replay.
#[derive(Debug)]
pub struct Replayed<'a> {
    pub loc: RecordLoc,
    pub kind: u8,
    pub payload: &'a [u8],
}

/// What recovery found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: u32,
    pub records: u64,
    pub bytes: u64,
    /// Bytes cut off the tail of the last segment (a torn write).
    pub torn_bytes: u64,
    /// Segments in which corruption was found (the rest of them skipped).
    pub corrupt_segments: Vec<u32>,
}

const READ_CHUNK: usize = 4 * 1024 * 1024;

impl Journal {
    /// Opens (creating if needed) the journal in `config.dir`. Nothing is
    /// written until [`Journal::replay`] and [`Journal::start`] ran.
    pub fn open(config: JournalConfig) -> Result<Journal, JournalError> {
        let storage = Arc::new(FsStorage::new(&config.dir).map_err(io_err)?);
        Journal::open_with(config, storage)
    }

    /// Opens the journal over any storage (tests inject faults with this).
    pub fn open_with(
        config: JournalConfig,
        storage: Arc<dyn Storage>,
    ) -> Result<Journal, JournalError> {
        Ok(Journal {
            inner: Arc::new(Inner {
                storage,
                config,
                tail: Mutex::new(Tail::default()),
                work: Condvar::new(),
                written_cv: Condvar::new(),
                segments: Mutex::new(BTreeMap::new()),
                readers: Mutex::new(HashMap::new()),
                counters: Counters::default(),
            }),
        })
    }

    /// Reads every record of every segment in order and hands it to `f`.
    /// Every record starts out live: `f` (or the caller afterwards) releases
    /// the dead ones and declares tombstone dependencies with
    /// [`Journal::depend`]. A torn tail is cut off.
    pub fn replay(
        &self,
        mut f: impl FnMut(&Journal, Replayed<'_>) -> Result<(), JournalError>,
    ) -> Result<RecoveryReport, JournalError> {
        let s = &self.inner.storage;
        let mut ids = s.list().map_err(io_err)?;
        ids.sort_unstable();
        let mut report = RecoveryReport::default();
        let last = ids.last().copied();
        let mut tail_segment = 0;
        let mut tail_offset = HEADER_LEN;
        for &id in &ids {
            let mut file = s.open(id, false).map_err(io_err)?;
            let len = file.size().map_err(io_err)?;
            let is_last = Some(id) == last;
            let mut head = [0u8; HEADER_LEN as usize];
            if len < HEADER_LEN
                || file.read_at(&mut head, 0).is_err()
                || parse_header(&head) != Some(id)
            {
                if is_last && len < HEADER_LEN {
                    // Created but its header never made it: a torn creation.
                    drop(file);
                    s.remove(id).map_err(io_err)?;
                    report.torn_bytes += len;
                    continue;
                }
                return Err(JournalError::Corrupt(format!(
                    "segment {id} has a bad header"
                )));
            }
            report.segments += 1;
            self.inner.segments.lock().entry(id).or_default();
            let mut offset = HEADER_LEN;
            let mut buf: Vec<u8> = Vec::new();
            let mut buf_start = HEADER_LEN;
            let mut stop: Option<bool> = None; // Some(torn?)
            while offset < len {
                // Keep `buf` holding the bytes from `offset` on.
                let have = (buf_start + buf.len() as u64).saturating_sub(offset);
                if have < format::RECORD_PREFIX + 1 || {
                    let peek = buf.get((offset - buf_start) as usize..).unwrap_or_default();
                    matches!(decode_record(peek), Decoded::Truncated)
                } {
                    let keep = buf.split_off(((offset - buf_start) as usize).min(buf.len()));
                    buf = keep;
                    buf_start = offset;
                    let want = READ_CHUNK.max(buf.len() * 2);
                    let from = buf_start + buf.len() as u64;
                    let n = (len - from).min(want as u64) as usize;
                    if n == 0 {
                        stop = Some(true);
                        break;
                    }
                    let at = buf.len();
                    buf.resize(at + n, 0);
                    if let Some(dst) = buf.get_mut(at..) {
                        file.read_at(dst, from).map_err(io_err)?;
                    }
                }
                let data = buf.get((offset - buf_start) as usize..).unwrap_or_default();
                match decode_record(data) {
                    Decoded::Record {
                        kind,
                        payload,
                        size,
                    } => {
                        let loc = RecordLoc {
                            segment: id,
                            offset: u32::try_from(offset)
                                .map_err(|_| JournalError::Corrupt("offset".into()))?,
                            size: u32::try_from(size)
                                .map_err(|_| JournalError::Corrupt("size".into()))?,
                        };
                        {
                            let mut segs = self.inner.segments.lock();
                            let seg = segs.entry(id).or_default();
                            seg.live += 1;
                            seg.records += 1;
                            seg.bytes += size;
                            seg.live_bytes += size;
                        }
                        report.records += 1;
                        report.bytes += size;
                        f(self, Replayed { loc, kind, payload })?;
                        offset += size;
                    }
                    Decoded::Truncated => {
                        // Not enough bytes even after reading everything.
                        stop = Some(true);
                        break;
                    }
                    Decoded::Corrupt => {
                        stop = Some(false);
                        break;
                    }
                    Decoded::End => break,
                }
            }
            if offset < len {
                match (stop, is_last) {
                    (_, true) => {
                        tracing::warn!(
                            segment = id,
                            offset,
                            cut = len - offset,
                            "journal: cutting a torn tail"
                        );
                        report.torn_bytes += len - offset;
                        file.truncate(offset).map_err(io_err)?;
                    }
                    (_, false) => {
                        tracing::error!(
                            segment = id,
                            offset,
                            lost_bytes = len - offset,
                            "journal: corruption in a closed segment; the rest of it is skipped"
                        );
                        report.corrupt_segments.push(id);
                    }
                }
            }
            if is_last {
                tail_segment = id;
                tail_offset = offset.max(HEADER_LEN);
            }
        }
        let mut t = self.inner.tail.lock();
        if tail_segment == 0 {
            t.segment = ids.iter().max().copied().unwrap_or(0) + 1;
            t.offset = HEADER_LEN;
        } else {
            t.segment = tail_segment;
            t.offset = tail_offset;
        }
        // Everything found on disk is written (and readable).
        t.written = (t.segment, t.offset);
        Ok(report)
    }

    /// Starts the writer thread. Dead segments left by recovery are deleted.
    pub fn start(&self) -> Result<(), JournalError> {
        {
            let mut t = self.inner.tail.lock();
            if t.started {
                return Ok(());
            }
            t.started = true;
            if t.segment == 0 {
                t.segment = 1;
                t.offset = HEADER_LEN;
            }
        }
        let dead: Vec<u32> = {
            let tail = self.inner.tail.lock().segment;
            self.inner
                .segments
                .lock()
                .iter()
                .filter(|(id, s)| s.live == 0 && **id != tail)
                .map(|(id, _)| *id)
                .collect()
        };
        for id in dead {
            self.schedule_delete(id);
        }
        let inner = self.inner.clone();
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer(&inner))
            .map_err(io_err)?;
        Ok(())
    }

    /// Appends a record; returns where it is. Never blocks on I/O.
    pub fn append(&self, kind: u8, payload: &[u8]) -> Result<RecordLoc, JournalError> {
        let size = record_len(payload.len());
        if size > u64::from(format::MAX_RECORD) {
            return Err(JournalError::TooLarge(payload.len()));
        }
        let mut rolled = None;
        let loc = {
            let mut t = self.inner.tail.lock();
            if let Some(e) = &t.failed {
                return Err(e.clone());
            }
            if t.closing {
                return Err(JournalError::Closed);
            }
            if t.offset + size > self.inner.config.segment_size && t.offset > HEADER_LEN {
                rolled = Some(t.segment);
                t.segment += 1;
                t.offset = HEADER_LEN;
            }
            let loc = RecordLoc {
                segment: t.segment,
                offset: t.offset as u32,
                size: size as u32,
            };
            let segment = t.segment;
            let end = t.offset + size;
            match t.chunks.last_mut() {
                Some(c) if c.segment == segment => {
                    encode_record(&mut c.bytes, kind, payload);
                    c.end = end;
                }
                _ => {
                    let mut bytes = Vec::with_capacity((size as usize).max(64 * 1024));
                    encode_record(&mut bytes, kind, payload);
                    t.chunks.push(Chunk {
                        segment,
                        end,
                        bytes,
                    });
                }
            }
            t.offset = end;
            t.appended += size;
            loc
        };
        {
            let mut segs = self.inner.segments.lock();
            let seg = segs.entry(loc.segment).or_default();
            seg.live += 1;
            seg.records += 1;
            seg.bytes += size;
            seg.live_bytes += size;
        }
        let c = &self.inner.counters;
        c.records_appended.fetch_add(1, Ordering::Relaxed);
        c.bytes_appended.fetch_add(size, Ordering::Relaxed);
        if let Some(old) = rolled {
            let dead = self
                .inner
                .segments
                .lock()
                .get(&old)
                .is_some_and(|s| s.live == 0);
            if dead {
                self.schedule_delete(old);
            }
        }
        self.inner.work.notify_one();
        Ok(loc)
    }

    /// Appends a tombstone: a record saying `target` is gone. It stays live
    /// while `target`'s segment exists.
    pub fn append_tombstone(
        &self,
        kind: u8,
        payload: &[u8],
        target: RecordLoc,
    ) -> Result<RecordLoc, JournalError> {
        let loc = self.append(kind, payload)?;
        self.depend(loc, target);
        Ok(loc)
    }

    /// Declares that tombstone `tombstone` refers to `target` (replay, and
    /// relocated tombstones). If `target`'s segment is gone already, the
    /// tombstone is released at once.
    pub fn depend(&self, tombstone: RecordLoc, target: RecordLoc) {
        let attached = {
            let mut segs = self.inner.segments.lock();
            match segs.get_mut(&target.segment) {
                Some(t) => {
                    t.dependents.insert(tombstone);
                    segs.entry(tombstone.segment)
                        .or_default()
                        .tombstones
                        .insert(tombstone, target);
                    true
                }
                None => false,
            }
        };
        if !attached {
            self.release(tombstone);
        }
    }

    /// The record at `loc` is no longer needed.
    pub fn release(&self, loc: RecordLoc) {
        release_in(&self.inner, loc);
    }

    fn schedule_delete(&self, segment: u32) {
        schedule_delete_in(&self.inner, segment);
    }

    /// A completion for everything appended so far.
    pub fn sync(&self) -> Completion {
        let mut t = self.inner.tail.lock();
        if let Some(e) = &t.failed {
            return Completion::ready(Err(e.clone()));
        }
        if t.durable >= t.appended {
            return Completion::ready(Ok(()));
        }
        let (tx, rx) = oneshot::channel();
        let target = t.appended;
        t.waiters.push((target, tx));
        drop(t);
        self.inner.work.notify_one();
        Completion::waiting(rx)
    }

    /// Reads a record back (paging). Waits, briefly, if it is still on its
    /// way to its file.
    pub fn read(&self, loc: RecordLoc) -> Result<(u8, Bytes), JournalError> {
        self.wait_written(loc)?;
        let file = {
            let mut readers = self.inner.readers.lock();
            match readers.get(&loc.segment) {
                Some(f) => f.clone(),
                None => {
                    let f = self.inner.storage.open_read(loc.segment).map_err(io_err)?;
                    readers.insert(loc.segment, f.clone());
                    f
                }
            }
        };
        let mut buf = vec![0u8; loc.size as usize];
        file.read_at(&mut buf, u64::from(loc.offset))
            .map_err(io_err)?;
        match decode_record(&buf) {
            Decoded::Record { kind, payload, .. } => {
                let start = buf.len() - payload.len();
                let mut b = Bytes::from(buf);
                Ok((kind, b.split_off(start)))
            }
            _ => Err(JournalError::Corrupt(format!(
                "record at {loc:?} does not check"
            ))),
        }
    }

    fn wait_written(&self, loc: RecordLoc) -> Result<(), JournalError> {
        let end = u64::from(loc.offset) + u64::from(loc.size);
        let give_up = Instant::now() + Duration::from_secs(10);
        let mut t = self.inner.tail.lock();
        loop {
            if Instant::now() > give_up {
                return Err(JournalError::Io(format!(
                    "record {loc:?} never reached its file"
                )));
            }
            if let Some(e) = &t.failed {
                return Err(e.clone());
            }
            let (seg, off) = t.written;
            if seg > loc.segment || (seg == loc.segment && off >= end) {
                return Ok(());
            }
            // Not in a file yet: make sure the writer is on it, and wait.
            self.inner.work.notify_one();
            self.inner
                .written_cv
                .wait_for(&mut t, Duration::from_millis(50));
        }
    }

    /// Live records, relative to all records, per closed segment; the
    /// segments below `max_live_ratio` are candidates for compaction.
    pub fn sparse_segments(&self, max_live_ratio: f64) -> Vec<u32> {
        let tail = self.inner.tail.lock().segment;
        self.inner
            .segments
            .lock()
            .iter()
            .filter(|(id, s)| {
                **id != tail
                    && s.live > 0
                    && (s.live_bytes as f64) < max_live_ratio * s.bytes as f64
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Copies the live tombstones of `segment` to the tail so it can be
    /// deleted once the core has relocated its own live records.
    pub fn compact_tombstones(&self, segment: u32) -> Result<usize, JournalError> {
        let tombstones = self
            .inner
            .segments
            .lock()
            .get(&segment)
            .map(|s| {
                s.tombstones
                    .iter()
                    .map(|(l, t)| (*l, *t))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let mut moved = 0;
        for (loc, target) in tombstones {
            let still = self
                .inner
                .segments
                .lock()
                .get(&segment)
                .is_some_and(|s| s.tombstones.contains_key(&loc));
            if !still {
                continue;
            }
            let (kind, payload) = self.read(loc)?;
            let new = self.append(kind, &payload)?;
            {
                let mut segs = self.inner.segments.lock();
                if let Some(s) = segs.get_mut(&segment) {
                    s.tombstones.remove(&loc);
                }
                if let Some(t) = segs.get_mut(&target.segment) {
                    t.dependents.remove(&loc);
                }
            }
            self.depend(new, target);
            self.release(loc);
            moved += 1;
        }
        self.inner
            .counters
            .tombstones_relocated
            .fetch_add(moved as u64, Ordering::Relaxed);
        Ok(moved)
    }

    pub fn stats(&self) -> JournalStats {
        let c = &self.inner.counters;
        let segs = self.inner.segments.lock();
        JournalStats {
            records_appended: c.records_appended.load(Ordering::Relaxed),
            bytes_appended: c.bytes_appended.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            fsync_micros: c.fsync_micros.load(Ordering::Relaxed),
            segments: segs.len() as u64,
            segments_deleted: c.segments_deleted.load(Ordering::Relaxed),
            live_records: segs.values().map(|s| s.live).sum(),
            tombstones_relocated: c.tombstones_relocated.load(Ordering::Relaxed),
        }
    }

    /// The configured policy.
    pub fn policy(&self) -> FsyncPolicy {
        self.inner.config.fsync
    }

    /// Writes and syncs everything, then stops the writer.
    pub async fn close(&self) -> Result<(), JournalError> {
        let done = self.sync();
        let r = done.await;
        self.inner.tail.lock().closing = true;
        self.inner.work.notify_one();
        r
    }
}

/// The writer thread: take the pending batch, write it, sync once, complete
/// the waiters, delete segments that died before the batch.
fn writer(inner: &Inner) {
    let mut current: Option<(u32, Box<dyn SegmentFile>)> = None;
    loop {
        let (chunks, target, deletes, written) = {
            let mut t = inner.tail.lock();
            while t.chunks.is_empty() && t.deletes.is_empty() && t.waiters.is_empty() && !t.closing
            {
                inner.work.wait(&mut t);
            }
            if t.closing && t.chunks.is_empty() && t.waiters.is_empty() {
                return;
            }
            if inner.config.fsync == FsyncPolicy::Batch
                && !inner.config.max_batch_delay.is_zero()
                && !t.chunks.is_empty()
            {
                // Gather more for one sync.
                let until = Instant::now() + inner.config.max_batch_delay;
                while Instant::now() < until && !t.closing {
                    let left = until.saturating_duration_since(Instant::now());
                    inner.work.wait_for(&mut t, left);
                }
            }
            let chunks = std::mem::take(&mut t.chunks);
            let target = t.appended;
            let written = chunks.last().map(|c| (c.segment, c.end));
            let deletes: Vec<u32> = {
                let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut t.deletes)
                    .into_iter()
                    .partition(|(at, _)| *at <= target);
                t.deletes = later;
                due.into_iter().map(|(_, s)| s).collect()
            };
            (chunks, target, deletes, written)
        };
        let result = write_batch(inner, &mut current, chunks);
        let mut t = inner.tail.lock();
        match result {
            Ok(()) => {
                if let Some(w) = written {
                    t.written = w;
                }
                t.durable = target;
                let waiters = std::mem::take(&mut t.waiters);
                let (done, wait): (Vec<_>, Vec<_>) =
                    waiters.into_iter().partition(|(at, _)| *at <= target);
                t.waiters = wait;
                drop(t);
                inner.written_cv.notify_all();
                for (_, w) in done {
                    let _ = w.send(Ok(()));
                }
                for seg in deletes {
                    delete_segment(inner, seg, current.as_ref().map(|(id, _)| *id));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "journal write failed; the journal stops accepting writes");
                t.failed = Some(e.clone());
                let waiters = std::mem::take(&mut t.waiters);
                drop(t);
                inner.written_cv.notify_all();
                for (_, w) in waiters {
                    let _ = w.send(Err(e.clone()));
                }
                return;
            }
        }
    }
}

fn write_batch(
    inner: &Inner,
    current: &mut Option<(u32, Box<dyn SegmentFile>)>,
    chunks: Vec<Chunk>,
) -> Result<(), JournalError> {
    if chunks.is_empty() {
        return Ok(());
    }
    let sync = inner.config.fsync != FsyncPolicy::Never;
    for chunk in chunks {
        if current.as_ref().map(|(id, _)| *id) != Some(chunk.segment) {
            if let Some((_, mut old)) = current.take()
                && sync
            {
                sync_file(inner, old.as_mut())?;
            }
            let mut file = inner.storage.open(chunk.segment, true).map_err(io_err)?;
            if file.size().map_err(io_err)? == 0 {
                file.append(&header(chunk.segment)).map_err(io_err)?;
                if sync {
                    sync_file(inner, file.as_mut())?;
                    inner.storage.sync_dir().map_err(io_err)?;
                }
            }
            *current = Some((chunk.segment, file));
        }
        if let Some((_, file)) = current.as_mut() {
            file.append(&chunk.bytes).map_err(io_err)?;
        }
    }
    inner.counters.batches.fetch_add(1, Ordering::Relaxed);
    if sync && let Some((_, file)) = current.as_mut() {
        sync_file(inner, file.as_mut())?;
    }
    Ok(())
}

fn sync_file(inner: &Inner, file: &mut dyn SegmentFile) -> Result<(), JournalError> {
    let start = Instant::now();
    file.sync().map_err(io_err)?;
    let c = &inner.counters;
    c.fsyncs.fetch_add(1, Ordering::Relaxed);
    c.fsync_micros
        .fetch_add(start.elapsed().as_micros() as u64, Ordering::Relaxed);
    Ok(())
}

fn delete_segment(inner: &Inner, seg: u32, current: Option<u32>) {
    if Some(seg) == current {
        return;
    }
    let dependents = {
        let mut segs = inner.segments.lock();
        match segs.get(&seg) {
            Some(s) if s.live == 0 => {}
            _ => return,
        }
        segs.remove(&seg).map(|s| s.dependents).unwrap_or_default()
    };
    inner.readers.lock().remove(&seg);
    if let Err(e) = inner.storage.remove(seg) {
        tracing::warn!(segment = seg, error = %e, "could not delete a dead journal segment");
        return;
    }
    inner
        .counters
        .segments_deleted
        .fetch_add(1, Ordering::Relaxed);
    tracing::debug!(segment = seg, "journal segment deleted");
    // Tombstones that referred into it are no longer needed.
    for d in dependents {
        release_in(inner, d);
    }
}

/// Releases a record; schedules its segment's deletion when it was the
/// segment's last live record (never the segment being appended to).
fn release_in(inner: &Inner, loc: RecordLoc) {
    let dead = {
        let mut segs = inner.segments.lock();
        let Some(s) = segs.get_mut(&loc.segment) else {
            return;
        };
        s.live = s.live.saturating_sub(1);
        s.live_bytes = s.live_bytes.saturating_sub(u64::from(loc.size));
        s.tombstones.remove(&loc);
        s.live == 0
    };
    if dead {
        schedule_delete_in(inner, loc.segment);
    }
}

fn schedule_delete_in(inner: &Inner, segment: u32) {
    let mut t = inner.tail.lock();
    if t.segment == segment || t.deletes.iter().any(|(_, s)| *s == segment) {
        return;
    }
    // Deleted once everything appended up to now is durable.
    let at = t.appended;
    t.deletes.push((at, segment));
    drop(t);
    inner.work.notify_one();
}
