//! STOMP frame decoder (version negotiation state, escaping, content-length).
//! First byte: the version set on the decoder and the chunk size the bytes
//! arrive in; the rest is wire data.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchyard_stomp::codec::{FrameDecoder, Limits, Version};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, wire)) = data.split_first() else {
        return;
    };
    let mut d = FrameDecoder::new(Limits::default());
    match mode % 4 {
        0 => {}
        1 => d.set_version(Version::V1_0),
        2 => d.set_version(Version::V1_1),
        _ => d.set_version(Version::V1_2),
    }
    let chunk = usize::from(mode >> 2) + 1;
    let mut buf = BytesMut::new();
    for c in wire.chunks(chunk) {
        buf.extend_from_slice(c);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
