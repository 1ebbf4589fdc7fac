//! STOMP codec benchmarks: decoding SEND frames (16 B and 1 KiB bodies, a
//! batch as one read delivers them) and writing MESSAGE frames from a
//! delivery, the two per-message costs of the adapter's hot path.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::Arc;
use switchyard_core::Delivery;
use switchyard_model::{Address, ConsumerId, DeliveryTag, Message};
use switchyard_stomp::codec::{Command, Frame, FrameDecoder, Limits, Version, encode_frame};
use switchyard_stomp::mapping::write_message;

const BATCH: usize = 64;

fn send_frames(body: usize) -> Vec<u8> {
    let f = Frame::new(Command::Send)
        .with("destination", "/topic/bench.sensor.temp")
        .with("content-type", "application/octet-stream")
        .with("content-length", &body.to_string())
        .with_body(vec![7u8; body]);
    let mut buf = BytesMut::new();
    for _ in 0..BATCH {
        encode_frame(&f, Some(Version::V1_2), &mut buf).unwrap();
    }
    buf.to_vec()
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_send");
    for size in [16usize, 1024] {
        let bytes = send_frames(size);
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function(format!("{size}B_x{BATCH}"), |b| {
            let mut dec = FrameDecoder::new(Limits::default());
            dec.set_version(Version::V1_2);
            b.iter(|| {
                let mut buf = BytesMut::from(&bytes[..]);
                let mut n = 0;
                while let Some(f) = dec.decode(&mut buf).unwrap() {
                    n += f.body.len();
                }
                black_box(n)
            });
        });
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("write_message");
    for size in [16usize, 1024] {
        let mut msg = Message::multicast(
            &Address::new("bench.sensor.temp").unwrap(),
            Bytes::from(vec![7u8; size]),
        );
        msg.properties.content_type = Some("application/octet-stream".into());
        msg.headers.push("x-trace", "abc-123");
        let d = Delivery {
            consumer: ConsumerId(17),
            tag: DeliveryTag(123_456),
            message: Arc::new(msg),
            redelivered: false,
            delivery_count: 1,
        };
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function(format!("{size}B_x{BATCH}"), |b| {
            let mut out = BytesMut::with_capacity(BATCH * (size + 256));
            b.iter(|| {
                out.clear();
                for _ in 0..BATCH {
                    write_message(&mut out, Version::V1_2, "sub-1", true, &d);
                }
                black_box(out.len())
            });
        });
    }
    g.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
