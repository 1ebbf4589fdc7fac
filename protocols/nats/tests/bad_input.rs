//! Hostile and broken clients: each gets nats-server's `-ERR` and a closed
//! connection, while a well-behaved async-nats client on the same broker
//! keeps working throughout.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::Bytes;
use futures_util::StreamExt;
use std::net::SocketAddr;
use std::time::Duration;
use switchyard_testkit::TestBroker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// Connects, reads INFO, sends `input`, and returns everything the server
/// wrote until it closed the connection (or `WAIT` passed: then `closed` is false).
async fn raw(addr: SocketAddr, input: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = Vec::new();
    let _ = s.write_all(input).await;
    let closed = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// A well-behaved client: publish and receive one message.
async fn healthy(client: &async_nats::Client, sub: &mut async_nats::Subscriber, n: usize) {
    client
        .publish("healthy.check", Bytes::from(n.to_string()))
        .await
        .unwrap();
    let m = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload, Bytes::from(n.to_string()));
}

#[tokio::test]
async fn each_bad_input_gets_err_and_close_while_others_go_on() {
    let b = TestBroker::start_with(|c| {
        c.listener_mut("nats").unwrap().options.insert(
            "max_payload".into(),
            figment::value::Value::from("1KiB".to_owned()),
        );
    })
    .await;
    let addr = b.addr("nats");
    let good = async_nats::connect(format!("nats://{addr}")).await.unwrap();
    let mut sub = good.subscribe("healthy.check").await.unwrap();
    healthy(&good, &mut sub, 0).await;

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage bytes",
            b"\x00\x01\x02 hello there\r\n".to_vec(),
            "-ERR 'Unknown Protocol Operation'",
        ),
        (
            "unknown verb",
            b"CONNECT {}\r\nFROB x\r\n".to_vec(),
            "-ERR 'Unknown Protocol Operation'",
        ),
        (
            "PUB whose size lies",
            b"CONNECT {}\r\nPUB a.b 3\r\nhello\r\n".to_vec(),
            "-ERR 'Unknown Protocol Operation'",
        ),
        (
            "PUB with bad arguments",
            b"PUB a.b\r\n".to_vec(),
            "-ERR 'Unknown Protocol Operation'",
        ),
        (
            "PUB over max_payload",
            b"PUB a.b 2048\r\n".to_vec(),
            "-ERR 'Maximum Payload Violation'",
        ),
        (
            "1 MiB control line",
            vec![b'P'; 1 << 20],
            "-ERR 'Maximum Control Line Exceeded'",
        ),
        (
            "SUB with an invalid subject",
            b"SUB a..b 1\r\n".to_vec(),
            "-ERR 'Invalid Subject'",
        ),
        (
            "SUB with a misplaced >",
            b"SUB a.>.b 1\r\n".to_vec(),
            "-ERR 'Invalid Subject'",
        ),
        (
            "CONNECT with bad JSON",
            b"CONNECT {nope\r\n".to_vec(),
            "-ERR 'Unknown Protocol Operation'",
        ),
        (
            "no_responders without headers",
            b"CONNECT {\"no_responders\":true}\r\n".to_vec(),
            "-ERR 'no responders requires headers support'",
        ),
    ];
    for (i, (what, input, want)) in cases.into_iter().enumerate() {
        let (out, closed) = raw(addr, &input).await;
        assert!(out.starts_with("INFO {"), "{what}: {out}");
        assert!(out.contains(want), "{what}: expected {want}, got {out:?}");
        assert!(closed, "{what}: connection left open");
        healthy(&good, &mut sub, i + 1).await;
    }
    b.stop().await;
}

#[tokio::test]
async fn verbose_acknowledges_and_pedantic_rejects_bad_publish_subjects() {
    let b = TestBroker::start().await;
    let mut s = TcpStream::connect(b.addr("nats")).await.unwrap();
    s.write_all(b"CONNECT {\"verbose\":true,\"pedantic\":true}\r\nSUB a.b 1\r\nPUB a.* 1\r\nx\r\nPUB a.b 1\r\ny\r\nPING\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while !text.contains("PONG") {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let after_info = text.split_once("\r\n").unwrap().1;
    assert_eq!(
        after_info,
        "+OK\r\n+OK\r\n-ERR 'Invalid Publish Subject'\r\n+OK\r\nMSG a.b 1 1\r\ny\r\nPONG\r\n"
    );
}

#[tokio::test]
async fn stale_connection_is_closed() {
    let b = TestBroker::start_with(|c| {
        let o = &mut c.listener_mut("nats").unwrap().options;
        o.insert(
            "ping_interval".into(),
            figment::value::Value::from("100ms".to_owned()),
        );
        o.insert("max_pings_out".into(), figment::value::Value::from(2u32));
    })
    .await;
    let (out, closed) = raw(b.addr("nats"), b"CONNECT {}\r\n").await;
    assert!(closed);
    assert!(
        out.contains("PING\r\nPING\r\n-ERR 'Stale Connection'"),
        "{out}"
    );
}

#[tokio::test]
async fn silent_client_is_closed_after_the_handshake_timeout() {
    let b = TestBroker::start_with(|c| {
        c.core.limits.handshake_timeout = switchyard_core::Dur::millis(200)
    })
    .await;
    let (out, closed) = raw(b.addr("nats"), b"").await;
    assert!(closed);
    assert!(out.contains("-ERR 'Authentication Timeout'"), "{out}");
}

#[tokio::test]
async fn a_client_that_never_reads_is_cut_off_as_a_slow_consumer() {
    let b = TestBroker::start_with(|c| {
        let o = &mut c.listener_mut("nats").unwrap().options;
        o.insert(
            "max_pending".into(),
            figment::value::Value::from("256KiB".to_owned()),
        );
        o.insert(
            "write_deadline".into(),
            figment::value::Value::from("1s".to_owned()),
        );
    })
    .await;
    let addr = b.addr("nats");
    // Subscribes, then never reads.
    let mut lazy = TcpStream::connect(addr).await.unwrap();
    lazy.write_all(b"CONNECT {}\r\nSUB flood 1\r\nPING\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let mut seen = String::new();
    while !seen.contains("PONG") {
        let n = lazy.read(&mut buf).await.unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let good = async_nats::connect(format!("nats://{addr}")).await.unwrap();
    let mut sub = good.subscribe("healthy.check").await.unwrap();
    let publisher = async_nats::connect(format!("nats://{addr}")).await.unwrap();
    let body = Bytes::from(vec![b'x'; 32 * 1024]);
    // 64 MiB offered to a client reading nothing.
    let mut cut_off = false;
    for i in 0..2048 {
        publisher.publish("flood", body.clone()).await.unwrap();
        if i % 256 == 0 {
            healthy(&good, &mut sub, i).await;
            if b.connections() == 2 {
                cut_off = true;
                break;
            }
        }
    }
    assert!(
        cut_off || switchyard_testkit::eventually(WAIT, || b.connections() == 2).await,
        "slow consumer still connected"
    );
    // The queue it left behind is gone, and memory was bounded by max_pending.
    assert!(
        b.broker()
            .queues()
            .iter()
            .all(|q| q.bytes <= 256 * 1024 + 32 * 1024)
    );
    healthy(&good, &mut sub, 9999).await;
}
