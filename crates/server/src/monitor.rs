//! The resource monitor: every half second, compares the process's
//! resident memory with `limits.memory_high_watermark` and the free disk of
//! the data directory with `limits.disk_free_low_watermark`, and blocks or
//! unblocks publishers (see `switchyard_core::Flow`).

use std::path::PathBuf;
use std::time::Duration;
use switchyard_core::{Broker, Size};
use tokio_util::sync::CancellationToken;

/// Total memory of the machine, from /proc/meminfo.
fn total_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// This process's resident memory, from /proc/self/status.
pub(crate) fn rss() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = text
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Bytes free for unprivileged users on the file system holding `path`.
fn disk_free(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable
    // memory of the right type; statvfs only writes into it, and we read it
    // only when the call reports success (0).
    #[allow(unsafe_code)]
    let st = unsafe {
        if libc::statvfs(c.as_ptr(), st.as_mut_ptr()) != 0 {
            return None;
        }
        st.assume_init()
    };
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

pub(crate) fn spawn(
    broker: Broker,
    data_dir: PathBuf,
    memory: Size,
    disk: Size,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let high = if memory.bytes() == 0 {
        total_memory().map_or(u64::MAX, |t| t / 10 * 4)
    } else {
        memory.bytes()
    };
    let low = disk.bytes();
    tracing::info!(
        memory_high_watermark = high,
        disk_free_low_watermark = low,
        "resource monitor"
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let memory = rss().filter(|&r| r > high).map(|r| {
                format!(
                    "memory: {} resident, high watermark {}",
                    Size(r),
                    Size(high)
                )
            });
            broker.set_blocked_by("memory", memory);
            let disk = disk_free(&data_dir)
                .filter(|&free| low > 0 && free < low)
                .map(|free| {
                    format!(
                        "disk: {} free in {}, low watermark {}",
                        Size(free),
                        data_dir.display(),
                        Size(low)
                    )
                });
            broker.set_blocked_by("disk", disk);
        }
    })
}
