//! Journal recovery: the segment scan (length, CRC, torn tail) and the
//! core's record decoder (queues, exchanges, bindings, messages, acks).
//!
//! Input: records as `kind u8 | len u16 LE | payload`, each written to a
//! segment with a valid CRC (so the core's payload decoder sees the
//! payloads); whatever is left over is appended raw (torn or corrupt tail).
//! The segment goes through `Journal::open` + `Broker::recover`, and the raw
//! input through `format::decode_record`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use switchyard_core::journal::format::{self, Decoded};
use switchyard_core::journal::{Journal, JournalConfig};
use switchyard_core::{Broker, CoreConfig};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

fn segment(data: &[u8]) -> Vec<u8> {
    let mut out = format::header(1).to_vec();
    let mut rest = data;
    while let [kind, a, b, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*a, *b]));
        if len > tail.len() {
            break;
        }
        let (payload, next) = tail.split_at(len);
        format::encode_record(&mut out, *kind, payload);
        rest = next;
    }
    out.extend_from_slice(rest);
    out
}

fuzz_target!(|data: &[u8]| {
    // The raw scan.
    let mut at = data;
    while let Decoded::Record { size, .. } = format::decode_record(at) {
        let Some(next) = usize::try_from(size).ok().and_then(|s| at.get(s..)) else {
            break;
        };
        at = next;
    }
    // Recovery of a segment made of the input.
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let path = dir.path().join(format::segment_file_name(1));
    if std::fs::write(&path, segment(data)).is_err() {
        return;
    }
    let mut jc = JournalConfig::new(dir.path());
    jc.segment_size = 64 * 1024;
    let Ok(journal) = Journal::open(jc) else {
        return;
    };
    let mut cfg = CoreConfig::new();
    cfg.limits.queue_memory = switchyard_core::Size::kib(64);
    let broker = Broker::with_journal(cfg, journal);
    let _ = broker.recover();
    broker.shutdown();
    let _ = runtime().block_on(broker.close_journal());
});
