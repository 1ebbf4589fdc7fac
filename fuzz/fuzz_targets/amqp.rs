//! AMQP 0-9-1: protocol header, frames, methods and content headers
//! (`decode_frame` decodes a method frame's arguments and a content
//! header's properties and field tables).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchyard_amqp::codec::{decode_frame, decode_protocol_header};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    if data.starts_with(b"AMQP") {
        if !matches!(decode_protocol_header(&mut buf), Ok(Some(()))) {
            return;
        }
    }
    while let Ok(Some(_)) = decode_frame(&mut buf, 131_072) {}
});
