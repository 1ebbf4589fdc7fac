//! NATS client protocol parser (CONNECT, PUB, HPUB with headers, SUB, ...).
//! First byte: the chunk size the bytes arrive in; the rest is wire data.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchyard_nats::codec::Parser;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, wire)) = data.split_first() else {
        return;
    };
    let mut p = Parser::new(4096, 1 << 20);
    let chunk = usize::from(mode) + 1;
    let mut buf = BytesMut::new();
    for c in wire.chunks(chunk) {
        buf.extend_from_slice(c);
        loop {
            match p.parse(&mut buf) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
