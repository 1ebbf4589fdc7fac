//! A slow subscriber for back-pressure tests: a raw MQTT 3.1.1 client
//! (QoS 0) that reads its socket only when told, so the broker's queue for
//! it fills up; and numbered bodies to check that what it finally reads is
//! every message, in order. Publishers of every protocol are tested
//! against it (a clean-session MQTT subscription is the core's
//! `overflow = block` queue, bounded by `[listeners.mqtt]
//! max_queued_messages`).

#![allow(clippy::indexing_slicing)]

use bytes::{BufMut, Bytes, BytesMut};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a read may wait before the subscriber gives up.
const WAIT: Duration = Duration::from_secs(20);

/// The bound [`bounded_broker`] gives a clean-session MQTT subscription.
pub const BOUND: u64 = 20;

/// A broker whose clean-session MQTT subscriptions are bounded at
/// [`BOUND`] messages and whose connections buffer at most 8 deliveries
/// (512 KiB), further configured by `more`; and a subscriber on `slow/t`
/// (the address `slow.t`) that does not read until told.
pub async fn bounded_broker(
    more: impl FnOnce(&mut switchyard::Config),
) -> (crate::TestBroker, MqttSub) {
    let b = crate::TestBroker::start_with(|c| {
        c.core.limits.connection_buffer = 8;
        c.core.limits.connection_buffer_bytes = switchyard_core::Size::kib(512);
        c.listener_mut("mqtt")
            .expect("an MQTT listener")
            .options
            .insert("max_queued_messages".into(), BOUND.into());
        more(c);
    })
    .await;
    let sub = MqttSub::connect(b.addr("mqtt"), "slow-sub", "slow/t").await;
    (b, sub)
}

/// A raw MQTT 3.1.1 subscriber (QoS 0, clean session) that reads only when
/// [`MqttSub::next`] or [`MqttSub::take`] is called.
#[derive(Debug)]
pub struct MqttSub {
    s: TcpStream,
    buf: BytesMut,
}

impl MqttSub {
    pub async fn connect(addr: SocketAddr, id: &str, filter: &str) -> MqttSub {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut vh = BytesMut::new();
        vh.put_slice(b"\x00\x04MQTT\x04\x02\x00\x00");
        vh.put_u16(id.len() as u16);
        vh.put_slice(id.as_bytes());
        s.write_all(&packet(0x10, &vh)).await.unwrap();
        let mut sub = BytesMut::new();
        sub.put_u16(1);
        sub.put_u16(filter.len() as u16);
        sub.put_slice(filter.as_bytes());
        sub.put_u8(0);
        s.write_all(&packet(0x82, &sub)).await.unwrap();
        let mut m = MqttSub {
            s,
            buf: BytesMut::new(),
        };
        let (t, body) = m.next().await.expect("CONNACK");
        assert_eq!((t, &body[..]), (0x20, &[0u8, 0][..]), "CONNACK");
        let (t, body) = m.next().await.expect("SUBACK");
        assert_eq!(t, 0x90, "SUBACK");
        assert!(body[2] < 0x80, "subscription refused");
        m
    }

    /// The next packet: (first byte, body).
    pub async fn next(&mut self) -> Option<(u8, Bytes)> {
        loop {
            if let Some(p) = self.parse() {
                return Some(p);
            }
            self.buf.reserve(256 * 1024);
            match tokio::time::timeout(WAIT, self.s.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    fn parse(&mut self) -> Option<(u8, Bytes)> {
        let mut len = 0usize;
        let mut at = 1;
        loop {
            let b = *self.buf.get(at)?;
            len |= usize::from(b & 0x7f) << (7 * (at - 1));
            at += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        if self.buf.len() < at + len {
            return None;
        }
        let head = self.buf.split_to(at);
        Some((head[0], self.buf.split_to(len).freeze()))
    }

    /// Receives `n` PUBLISH payloads, in order.
    pub async fn take(&mut self, n: usize) -> Vec<Bytes> {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            match self.next().await {
                Some((t, body)) if t >> 4 == 3 => {
                    let topic = usize::from(u16::from_be_bytes([body[0], body[1]]));
                    got.push(body.slice(2 + topic..));
                }
                Some(_) => {}
                None => panic!(
                    "the subscriber's stream ended after {} of {n} messages",
                    got.len()
                ),
            }
        }
        got
    }
}

fn packet(first: u8, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.put_u8(first);
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if len == 0 {
            break;
        }
    }
    out.put_slice(body);
    out
}

/// A body of `len` bytes that names its index (first 4 bytes, big endian)
/// and is unlike any other (a xorshift stream seeded by the index, 8 bytes
/// per step: cheap enough for a debug build to make hundreds of 64 KiB
/// bodies without starving the test's runtime).
pub fn body(i: usize, len: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(len + 8);
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    while b.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.put_u64(x);
    }
    b.truncate(len);
    if len >= 4 {
        b[..4].copy_from_slice(&(i as u32).to_be_bytes());
    }
    b.freeze()
}

/// Checks that `got` is every message `0..n`, in order.
pub fn assert_all_in_order(got: &[Bytes], n: usize, size: usize) {
    assert_eq!(got.len(), n);
    for (i, g) in got.iter().enumerate() {
        if *g != body(i, size) {
            let idx = g
                .get(..4)
                .map(|h| u32::from_be_bytes([h[0], h[1], h[2], h[3]]));
            panic!("message {i} lost or out of order (got message {idx:?})");
        }
    }
}
