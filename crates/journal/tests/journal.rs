//! The journal against its contract: replay, torn tails, corruption, group
//! commit, liveness and deletion, reads, and injected I/O faults.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use proptest::prelude::*;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use switchyard_journal::format::HEADER_LEN;
use switchyard_journal::storage::{FsStorage, SegmentFile, Storage};
use switchyard_journal::{FsyncPolicy, Journal, JournalConfig, JournalError, RecordLoc};

fn config(dir: &Path) -> JournalConfig {
    let mut c = JournalConfig::new(dir);
    c.segment_size = 4096;
    c
}

fn open(dir: &Path) -> (Journal, Vec<(RecordLoc, u8, Vec<u8>)>) {
    let j = Journal::open(config(dir)).unwrap();
    let mut got = Vec::new();
    j.replay(|_, r| {
        got.push((r.loc, r.kind, r.payload.to_vec()));
        Ok(())
    })
    .unwrap();
    j.start().unwrap();
    (j, got)
}

fn seg_path(dir: &Path, seg: u32) -> std::path::PathBuf {
    dir.join(format!("{seg:08}.seg"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn records_replay_in_order_across_segments(records in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..1500)), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (j, got) = open(dir.path());
        prop_assert!(got.is_empty());
        let mut locs = Vec::new();
        for (kind, payload) in &records {
            locs.push(j.append(*kind, payload).unwrap());
        }
        rt.block_on(j.sync()).unwrap();
        for (loc, (kind, payload)) in locs.iter().zip(&records) {
            let (k, p) = j.read(*loc).unwrap();
            prop_assert_eq!(k, *kind);
            prop_assert_eq!(&p[..], &payload[..]);
        }
        rt.block_on(j.close()).unwrap();
        drop(j);
        let (j2, got) = open(dir.path());
        prop_assert_eq!(got.len(), records.len());
        // Records found on disk can be read back after a restart.
        for loc in &locs {
            prop_assert!(j2.read(*loc).is_ok());
        }
        for ((loc, kind, payload), (k, p)) in got.iter().zip(&records) {
            prop_assert_eq!(kind, k);
            prop_assert_eq!(payload, p);
            prop_assert!(locs.contains(loc));
        }
    }
}

#[tokio::test]
async fn a_torn_last_record_is_cut_at_every_byte_offset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (j, _) = open(dir.path());
        for i in 0..5u8 {
            j.append(i, &[i; 100]).unwrap();
        }
        j.close().await.unwrap();
    }
    let path = seg_path(dir.path(), 1);
    let full = std::fs::read(&path).unwrap();
    let record = 8 + 1 + 100;
    let last_start = full.len() - record;
    for cut in last_start..full.len() {
        std::fs::write(&path, &full[..cut]).unwrap();
        let (j, got) = open(dir.path());
        assert_eq!(got.len(), 4, "cut at {cut}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len() as usize,
            last_start,
            "tail cut off"
        );
        // The journal goes on appending after the cut.
        j.append(9, b"after").unwrap();
        j.close().await.unwrap();
        drop(j);
        let (_j, got) = open(dir.path());
        assert_eq!(got.len(), 5);
        assert_eq!(got[4].2, b"after");
    }
}

#[tokio::test]
async fn a_crc_mismatch_in_a_closed_segment_is_reported_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (j, _) = open(dir.path());
        // 4096-byte segments hold four 1009-byte records (16-byte header).
        for i in 0..9u8 {
            j.append(i, &[i; 1000]).unwrap();
        }
        j.close().await.unwrap();
    }
    let path = seg_path(dir.path(), 1);
    let mut bytes = std::fs::read(&path).unwrap();
    // Flip a byte in the second record's payload.
    let second = HEADER_LEN as usize + 1009 + 9 + 500;
    bytes[second] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let j = Journal::open(config(dir.path())).unwrap();
    let mut kinds = Vec::new();
    let report = j
        .replay(|_, r| {
            kinds.push(r.kind);
            Ok(())
        })
        .unwrap();
    assert_eq!(report.corrupt_segments, vec![1]);
    assert_eq!(
        kinds,
        [0, 4, 5, 6, 7, 8],
        "record 1 corrupt; 2 and 3 skipped with it"
    );
}

#[tokio::test]
async fn group_commit_syncs_many_appends_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.segment_size = 64 * 1024 * 1024;
    let j = Journal::open(c).unwrap();
    j.replay(|_, _| Ok(())).unwrap();
    j.start().unwrap();
    let mut waits = Vec::new();
    for i in 0..2000u32 {
        j.append(1, &i.to_le_bytes()).unwrap();
        waits.push(j.sync());
    }
    for w in waits {
        w.await.unwrap();
    }
    let s = j.stats();
    assert_eq!(s.records_appended, 2000);
    assert!(s.fsyncs < 2000, "{} fsyncs for 2000 syncs", s.fsyncs);
    assert!(s.fsyncs >= 1);
}

#[tokio::test]
async fn dead_segments_are_deleted_and_tombstones_outlive_their_targets() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = open(dir.path());
    // Segment 1: three 1359-byte records fill it (16 + 3 × 1359 = 4093).
    let a: Vec<RecordLoc> = (0..3).map(|i| j.append(1, &[i; 1350]).unwrap()).collect();
    assert!(a.iter().all(|l| l.segment == 1));
    // Segment 2: tombstones for them, and two more records.
    let t: Vec<RecordLoc> = a
        .iter()
        .map(|l| j.append_tombstone(2, &l.offset.to_le_bytes(), *l).unwrap())
        .collect();
    assert!(t.iter().all(|l| l.segment == 2));
    let keep = j.append(1, &[9; 1000]).unwrap();
    let x = j.append(1, &[7; 2000]).unwrap();
    assert_eq!((keep.segment, x.segment), (2, 2));
    // Roll to segment 3 so 1 and 2 are closed.
    let y = j.append(1, &[7; 2000]).unwrap();
    assert_eq!(y.segment, 3);
    j.sync().await.unwrap();
    for l in &a {
        j.release(*l);
    }
    j.sync().await.unwrap();
    // Writer deletes after its next turn.
    j.append(3, b"tick").unwrap();
    j.sync().await.unwrap();
    wait_for(|| !seg_path(dir.path(), 1).exists()).await;
    assert!(
        seg_path(dir.path(), 2).exists(),
        "segment 2 still holds `keep`"
    );
    // With segment 1 gone the tombstones are dead; releasing the rest frees 2.
    j.release(keep);
    j.release(x);
    j.append(3, b"tick").unwrap();
    j.sync().await.unwrap();
    wait_for(|| !seg_path(dir.path(), 2).exists()).await;
    j.close().await.unwrap();
    drop(j);
    // Only what is live comes back.
    let (_j, got) = open(dir.path());
    assert!(got.iter().all(|(l, _, _)| l.segment >= 3));
}

#[tokio::test]
async fn compacting_tombstones_frees_their_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = open(dir.path());
    let target = j.append(1, &[1; 2000]).unwrap(); // segment 1
    let pin = j.append(1, &[1; 2060]).unwrap(); // segment 1 stays alive through this (16 + 2009 + 2069 = 4094)
    assert_eq!((target.segment, pin.segment), (1, 1));
    let tomb = j.append_tombstone(2, b"gone", target).unwrap(); // segment 2
    let filler = j.append(1, &[0; 3000]).unwrap(); // segment 2 or 3
    let _roll = j.append(1, &[0; 3000]).unwrap();
    j.release(target);
    j.release(filler);
    j.sync().await.unwrap();
    assert_eq!(tomb.segment, 2);
    assert!(j.sparse_segments(0.5).contains(&2));
    assert_eq!(j.compact_tombstones(2).unwrap(), 1);
    j.append(3, b"tick").unwrap();
    j.sync().await.unwrap();
    wait_for(|| !seg_path(dir.path(), 2).exists()).await;
    assert!(seg_path(dir.path(), 1).exists());
    j.close().await.unwrap();
}

async fn wait_for(mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached");
}

/// Storage whose syncs fail once `fail` is set.
struct Faulty {
    inner: FsStorage,
    fail: Arc<AtomicBool>,
}

struct FaultyFile {
    inner: Box<dyn SegmentFile>,
    fail: Arc<AtomicBool>,
}

impl SegmentFile for FaultyFile {
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.inner.append(data)
    }
    fn sync(&mut self) -> io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected fsync failure"));
        }
        self.inner.sync()
    }
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.inner.truncate(len)
    }
}

impl Storage for Faulty {
    fn list(&self) -> io::Result<Vec<u32>> {
        self.inner.list()
    }
    fn open(&self, segment: u32, create: bool) -> io::Result<Box<dyn SegmentFile>> {
        Ok(Box::new(FaultyFile {
            inner: self.inner.open(segment, create)?,
            fail: self.fail.clone(),
        }))
    }
    fn open_read(&self, segment: u32) -> io::Result<Arc<dyn SegmentFile>> {
        self.inner.open_read(segment)
    }
    fn remove(&self, segment: u32) -> io::Result<()> {
        self.inner.remove(segment)
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.inner.sync_dir()
    }
}

#[tokio::test]
async fn an_fsync_failure_is_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    let storage = Arc::new(Faulty {
        inner: FsStorage::new(dir.path()).unwrap(),
        fail: fail.clone(),
    });
    let j = Journal::open_with(config(dir.path()), storage).unwrap();
    j.replay(|_, _| Ok(())).unwrap();
    j.start().unwrap();
    j.append(1, b"ok").unwrap();
    j.sync().await.unwrap();
    fail.store(true, Ordering::SeqCst);
    j.append(1, b"lost").unwrap();
    assert!(matches!(j.sync().await, Err(JournalError::Io(_))));
    assert!(matches!(j.append(1, b"more"), Err(JournalError::Io(_))));
    assert!(matches!(j.sync().await, Err(JournalError::Io(_))));
}

#[tokio::test]
async fn never_policy_completes_without_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.fsync = FsyncPolicy::Never;
    let j = Journal::open(c).unwrap();
    j.replay(|_, _| Ok(())).unwrap();
    j.start().unwrap();
    j.append(1, b"x").unwrap();
    j.sync().await.unwrap();
    assert_eq!(j.stats().fsyncs, 0);
    assert_eq!(j.read(j.append(2, b"y").unwrap()).unwrap().1, &b"y"[..]);
}
