//! Fuzz target: the frame decoder on arbitrary bytes, fed in arbitrary
//! chunks under each version. It must never panic, and every frame it
//! accepts must survive encode → decode unchanged.
//!
//! Run: `cargo +nightly fuzz run decode` in `protocols/stomp/fuzz`.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchyard_stomp::codec::{FrameDecoder, Limits, Version, encode_frame};

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let version = match control % 4 {
        0 => None,
        1 => Some(Version::V1_0),
        2 => Some(Version::V1_1),
        _ => Some(Version::V1_2),
    };
    let chunk = usize::from(control / 4) + 1;
    let limits = Limits {
        max_line: 256,
        max_headers: 16,
        max_header_bytes: 1024,
        max_body: 4096,
    };
    let mut dec = FrameDecoder::new(limits);
    if let Some(v) = version {
        dec.set_version(v);
    }
    let mut buf = BytesMut::new();
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let mut out = BytesMut::new();
                    if encode_frame(&frame, version, &mut out).is_ok() {
                        // Escaping can lengthen lines (a raw ':' becomes
                        // `\c`), so the re-decode gets roomier limits.
                        let mut again = FrameDecoder::new(Limits::default());
                        if let Some(v) = version {
                            again.set_version(v);
                        }
                        let back = again.decode(&mut out).expect("re-encoded frame decodes");
                        assert_eq!(back.as_ref(), Some(&frame), "round trip changed the frame");
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
