//! MQTT packet decoder (3.1.1, 5.0 and version detection from CONNECT).
//! First byte: which decoder and the packet-size limit; the rest is wire data.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchyard_mqtt::codec::{Decoder, Version};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, wire)) = data.split_first() else {
        return;
    };
    let max = [64usize, 1024, 1 << 20][usize::from(mode >> 4) % 3];
    let mut d = match mode % 3 {
        0 => Decoder::new(max),
        1 => Decoder::with_version(Version::V311, max),
        _ => Decoder::with_version(Version::V5, max),
    };
    let mut buf = BytesMut::from(wire);
    while let Ok(Some(_)) = d.decode(&mut buf) {}
    let _ = d.shortfall(&buf);
});
