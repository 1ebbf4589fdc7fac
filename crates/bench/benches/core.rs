//! Core benchmarks: publish → fan-out, and enqueue → deliver → ack.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use switchyard_bench::{fanout_setup, message};
use switchyard_core::{Broker, ConsumeOptions, CoreConfig, DeclareQueue, QueueOptions};
use switchyard_model::{Message, Str};

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_fanout");
    for n in [1usize, 10, 1000] {
        let (_broker, subs, publisher) = fanout_setup(n);
        let mut streams: Vec<_> = subs.iter().map(|s| s.deliveries()).collect();
        let msg = message("bench.fanout", 1024).unwrap();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let p = publisher.publish(msg.clone()).unwrap();
                debug_assert_eq!(p.routed as usize, n);
                for s in &mut streams {
                    black_box(s.try_recv());
                }
            })
        });
    }
    group.finish();
}

fn queue_roundtrip(c: &mut Criterion) {
    let broker = Broker::new(CoreConfig::new());
    let mut s = broker.session("bench", broker.next_conn_id());
    s.declare_queue(DeclareQueue {
        name: Some(Str::from("bench.q")),
        options: QueueOptions::default(),
        passive: false,
    })
    .unwrap();
    let consumer = s
        .consume(
            "bench.q",
            ConsumeOptions {
                manual_ack: true,
                prefetch: 100,
                exclusive: false,
            },
        )
        .unwrap();
    let mut deliveries = s.deliveries();
    let msg = Message::anycast("bench.q", bytes::Bytes::from(vec![0u8; 1024]));
    c.bench_function("queue/enqueue_deliver_ack", |b| {
        b.iter(|| {
            s.publish(msg.clone()).unwrap();
            let d = deliveries.try_recv().unwrap();
            s.ack(consumer, d.tag, false).unwrap();
        })
    });
}

criterion_group!(benches, fanout, queue_roundtrip);
criterion_main!(benches);
