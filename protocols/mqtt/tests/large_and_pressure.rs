//! Large payloads (written by reference, spliced between buffered packets
//! in one vectored write) arrive byte-identical and in order, mixed with
//! small ones; and a slow clean-session subscriber's bound
//! (`max_queued_messages` / `max_queued_bytes`) holds publishers back
//! instead of buffering without limit, losing nothing at QoS 0 or 1.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::{BufMut, Bytes, BytesMut};
use std::net::SocketAddr;
use std::time::Duration;
use switchyard_mqtt::codec::{
    self, Ack, Connect, Decoder, Packet, Properties, Publish, QoS, SubOptions, Subscribe, Version,
};
use switchyard_testkit::{TestBroker, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(30);

struct Raw {
    s: TcpStream,
    buf: BytesMut,
    dec: Decoder,
}

impl Raw {
    async fn connect(addr: SocketAddr, id: &str) -> Raw {
        let mut r = Raw {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
            dec: Decoder::with_version(Version::V311, 1 << 24),
        };
        r.send(&Packet::Connect(Box::new(Connect {
            level: 4,
            clean_start: true,
            keep_alive: 0,
            properties: Properties::default(),
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
        })))
        .await;
        match r.recv().await {
            Some(Packet::ConnAck(c)) => assert_eq!(c.code, 0),
            other => panic!("no CONNACK: {other:?}"),
        }
        r
    }

    async fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        codec::encode(p, Version::V311, &mut out);
        self.s.write_all(&out).await.unwrap();
    }

    async fn recv(&mut self) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(p) = self.dec.decode(&mut self.buf).unwrap() {
                return Some(p);
            }
            self.buf.reserve(64 * 1024);
            match tokio::time::timeout_at(deadline, self.s.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(
                filter.into(),
                SubOptions {
                    qos,
                    ..Default::default()
                },
            )],
        }))
        .await;
        match self.recv().await {
            Some(Packet::SubAck(s)) => assert!(s.codes[0] < 0x80, "{s:?}"),
            other => panic!("no SUBACK: {other:?}"),
        }
    }

    /// Receives `n` PUBLISHes (acknowledging QoS 1 ones); returns their
    /// payloads in order.
    async fn take(&mut self, n: usize) -> Vec<Bytes> {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            match self.recv().await {
                Some(Packet::Publish(p)) => {
                    if p.qos == QoS::AtLeastOnce {
                        self.send(&Packet::PubAck(Ack::new(p.packet_id, 0))).await;
                    }
                    got.push(p.payload);
                }
                Some(_) => {}
                None => panic!("stream ended after {} of {n} messages", got.len()),
            }
        }
        got
    }
}

fn publish(topic: &str, qos: QoS, id: u16, body: Bytes) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { id },
        properties: Properties::default(),
        payload: body,
    })
}

/// A body of `len` bytes that names its index and is unlike any other.
fn body(i: usize, len: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(len);
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    while b.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.put_u8(x as u8);
    }
    if len >= 4 {
        b[..4].copy_from_slice(&(i as u32).to_be_bytes());
    }
    b.freeze()
}

/// Sizes around the by-reference threshold, tiny and very large ones.
const SIZES: &[usize] = &[
    0,
    16,
    1024,
    8 * 1024 - 1,
    8 * 1024,
    8 * 1024 + 1,
    64 * 1024,
    16,
    1 << 20,
    64 * 1024,
    3,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_arrive_byte_identical_among_small_ones() {
    let b = TestBroker::start().await;
    let addr = b.addr("mqtt");
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let mut sub = Raw::connect(addr, "big-sub").await;
        sub.subscribe("big/#", qos).await;
        let mut publ = Raw::connect(addr, "big-pub").await;
        // Several rounds written at once: the subscriber's deliveries are
        // coalesced into writes that mix copied and referenced payloads.
        let mut want = vec![];
        let mut out = BytesMut::new();
        for round in 0..4 {
            for (k, len) in SIZES.iter().enumerate() {
                let i = round * SIZES.len() + k;
                let body = body(i, *len);
                codec::encode(
                    &publish("big/x", qos, (i + 1) as u16, body.clone()),
                    Version::V311,
                    &mut out,
                );
                want.push(body);
            }
        }
        publ.s.write_all(&out).await.unwrap();
        let got = sub.take(want.len()).await;
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(g == w, "message {i} ({} bytes) differs", w.len());
        }
        drop(publ);
        drop(sub);
    }
    b.stop().await;
}

/// A subscriber that does not read: with `max_queued_messages` small and
/// the connection buffer small, the publisher is held back (the broker's
/// ready messages stay near the bound), and once the subscriber reads it
/// gets every message, in order.
async fn slow_subscriber_holds_publishers_back(qos: QoS) {
    const BOUND: u64 = 20;
    const N: usize = 600;
    const SIZE: usize = 64 * 1024;
    let b = TestBroker::start_with(|c| {
        c.core.limits.connection_buffer = 8;
        c.core.limits.connection_buffer_bytes = switchyard_core::Size::kib(512);
        c.listener_mut("mqtt")
            .unwrap()
            .options
            .insert("max_queued_messages".into(), BOUND.into());
    })
    .await;
    let addr = b.addr("mqtt");
    let mut sub = Raw::connect(addr, "slow-sub").await;
    sub.subscribe("slow/t", qos).await;
    let publ = Raw::connect(addr, "fast-pub").await;
    let publisher = tokio::spawn(async move {
        let mut publ = publ;
        for i in 0..N {
            let p = publish("slow/t", qos, (i % 60_000 + 1) as u16, body(i, SIZE));
            let mut out = BytesMut::new();
            codec::encode(&p, Version::V311, &mut out);
            publ.s.write_all(&out).await.unwrap();
            if qos == QoS::AtLeastOnce {
                match publ.recv().await {
                    Some(Packet::PubAck(_)) => {}
                    other => panic!("no PUBACK: {other:?}"),
                }
            }
        }
        publ
    });
    let broker = b.broker().clone();
    assert!(
        eventually(WAIT, || broker.stats().queue_totals.blocked > 0).await,
        "the subscription never reached its bound"
    );
    // Held back: what the broker keeps for the subscriber stays near the
    // bound (plus one read buffer of the publisher) while nobody reads.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let ready = broker.stats().messages_ready;
        assert!(
            ready <= BOUND + 8,
            "{ready} messages held for the subscriber"
        );
    }
    assert!(!publisher.is_finished(), "the publisher was not held back");
    let got = sub.take(N).await;
    for (i, g) in got.iter().enumerate() {
        assert!(*g == body(i, SIZE), "message {i} lost or out of order");
    }
    let publ = tokio::time::timeout(WAIT, publisher)
        .await
        .expect("publisher still blocked")
        .unwrap();
    drop(publ);
    assert_eq!(broker.stats().queue_totals.dropped, 0);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_qos0_subscriber_holds_publishers_back_and_loses_nothing() {
    slow_subscriber_holds_publishers_back(QoS::AtMostOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_qos1_subscriber_holds_publishers_back_and_loses_nothing() {
    slow_subscriber_holds_publishers_back(QoS::AtLeastOnce).await;
}
