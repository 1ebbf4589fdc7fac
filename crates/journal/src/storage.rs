//! File I/O behind a small trait, so tests can inject faults (failed syncs,
//! torn writes) and the journal's logic can be checked against them.

use crate::format::{parse_segment_file_name, segment_file_name};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

/// One segment file.
pub trait SegmentFile: Send + Sync {
    /// Current length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Appends at the end of the file.
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// `fdatasync`.
    fn sync(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
}

/// A directory of segment files.
pub trait Storage: Send + Sync + 'static {
    /// Segment ids present, in any order.
    fn list(&self) -> io::Result<Vec<u32>>;
    /// Opens a segment (creating it empty when `create`).
    fn open(&self, segment: u32, create: bool) -> io::Result<Box<dyn SegmentFile>>;
    /// Opens a segment for reading only (shared by concurrent readers).
    fn open_read(&self, segment: u32) -> io::Result<Arc<dyn SegmentFile>>;
    fn remove(&self, segment: u32) -> io::Result<()>;
    /// Makes created/removed files durable (`fsync` of the directory).
    fn sync_dir(&self) -> io::Result<()>;
}

/// Segment files in a directory of the file system.
#[derive(Debug, Clone)]
pub struct FsStorage {
    dir: PathBuf,
}

impl FsStorage {
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<FsStorage> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(FsStorage { dir })
    }
}

struct FsFile(File);

impl SegmentFile for FsFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.0.write_all(data)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)?;
        self.0.sync_data()
    }
}

impl Storage for FsStorage {
    fn list(&self) -> io::Result<Vec<u32>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if let Some(id) = entry.file_name().to_str().and_then(parse_segment_file_name) {
                out.push(id);
            }
        }
        Ok(out)
    }

    fn open(&self, segment: u32, create: bool) -> io::Result<Box<dyn SegmentFile>> {
        let path = self.dir.join(segment_file_name(segment));
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(create)
            .open(path)?;
        Ok(Box::new(FsFile(file)))
    }

    fn open_read(&self, segment: u32) -> io::Result<Arc<dyn SegmentFile>> {
        let path = self.dir.join(segment_file_name(segment));
        Ok(Arc::new(FsFile(File::open(path)?)))
    }

    fn remove(&self, segment: u32) -> io::Result<()> {
        match std::fs::remove_file(self.dir.join(segment_file_name(segment))) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}
