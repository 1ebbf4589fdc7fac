//! A queue with `overflow = block` past its bound holds AMQP publishers
//! back, as it does MQTT ones: an AMQP fan-in into a slow MQTT subscriber
//! (`[listeners.mqtt] max_queued_messages`) is paced, losing nothing,
//! silently (no `connection.blocked`) and without the held publisher's
//! heartbeats being held against it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::{BufMut, Bytes, BytesMut};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use switchyard_testkit::{TestBroker, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(20);
const BOUND: u64 = 20;
const N: usize = 600;
const SIZE: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_mqtt_subscriber_holds_amqp_publishers_back_and_loses_nothing() {
    let b = TestBroker::start_with(|c| {
        c.core.limits.connection_buffer = 8;
        c.core.limits.connection_buffer_bytes = switchyard_core::Size::kib(512);
        c.listener_mut("mqtt")
            .unwrap()
            .options
            .insert("max_queued_messages".into(), BOUND.into());
    })
    .await;
    let broker = b.broker().clone();
    let mut sub = MqttSub::connect(b.addr("mqtt"), "slow-sub", "slow/t").await;

    // A one-second heartbeat: the server gives up on a client silent for
    // two intervals, less than the publisher is held below.
    let uri = format!("amqp://guest:guest@{}/%2f?heartbeat=1", b.addr("amqp"));
    let conn = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirmed = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let ch = ch.clone();
        let confirmed = confirmed.clone();
        tokio::spawn(async move {
            let mut waiting = Vec::with_capacity(N);
            for i in 0..N {
                let c = ch
                    .basic_publish(
                        "amq.topic".into(),
                        "slow.t".into(),
                        BasicPublishOptions::default(),
                        &body(i, SIZE),
                        BasicProperties::default(),
                    )
                    .await
                    .unwrap();
                waiting.push(c);
            }
            for c in waiting {
                assert!(c.await.unwrap().is_ack());
                confirmed.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    assert!(
        eventually(WAIT, || broker.stats().queue_totals.blocked > 0).await,
        "the subscription never reached its bound"
    );
    // Held back for 2.5 s (more than two heartbeat intervals, less than the
    // core's 5 s episode): the subscription stays near its bound (plus one
    // read of the publisher) while nobody reads it.
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ready = broker.stats().messages_ready;
        assert!(
            ready <= BOUND + 8,
            "{ready} messages held for the subscriber"
        );
        assert!(!conn.status().blocked(), "connection.blocked was sent");
    }
    assert!(!publisher.is_finished(), "the publisher was not held back");
    assert!(
        confirmed.load(Ordering::SeqCst) < N,
        "every publish was confirmed while held"
    );

    let got = sub.take(N).await;
    assert_all_in_order(&got, N, SIZE);
    tokio::time::timeout(WAIT, publisher)
        .await
        .expect("the publisher is still held")
        .unwrap();
    assert_eq!(confirmed.load(Ordering::SeqCst), N);
    assert_eq!(
        broker.stats().queue_totals.dropped,
        0,
        "messages were dropped"
    );
    // Not closed for missed heartbeats while held, and never told
    // connection.blocked (that is for the memory/disk alarms).
    assert!(
        conn.status().connected(),
        "the publisher's connection closed"
    );
    assert!(!conn.status().blocked(), "connection.blocked was sent");
    let c = ch
        .basic_publish(
            "amq.topic".into(),
            "slow.t".into(),
            BasicPublishOptions::default(),
            b"after",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(WAIT, c)
            .await
            .unwrap()
            .unwrap()
            .is_ack()
    );
    assert_eq!(&sub.take(1).await[0][..], b"after");
    conn.close(200, "bye".into()).await.unwrap();
    b.stop().await;
}

// ---- A raw MQTT 3.1.1 subscriber (QoS 0) that reads only when told. ----

struct MqttSub {
    s: TcpStream,
    buf: BytesMut,
}

impl MqttSub {
    async fn connect(addr: SocketAddr, id: &str, filter: &str) -> MqttSub {
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
    async fn next(&mut self) -> Option<(u8, Bytes)> {
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
    async fn take(&mut self, n: usize) -> Vec<Bytes> {
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
    b[..4].copy_from_slice(&(i as u32).to_be_bytes());
    b.freeze()
}

/// Checks that `got` is every message `0..n`, in order.
fn assert_all_in_order(got: &[Bytes], n: usize, size: usize) {
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
