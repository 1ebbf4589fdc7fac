//! Bad input: each case gets an ERROR frame (with a `message` header and an
//! explanatory body) and the connection is closed, while another client on
//! the same broker keeps publishing and receiving.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::net::SocketAddr;
use support::StompClient;
use switchyard_stomp::codec::Frame;
use switchyard_testkit::TestBroker;

/// A second client that must keep working whatever the first one does.
struct Bystander {
    c: StompClient,
    n: u32,
}

impl Bystander {
    async fn new(addr: SocketAddr) -> Bystander {
        let mut c = StompClient::connect(addr, Some("1.2")).await;
        c.subscribe("/topic/bystander", "auto").await;
        Bystander { c, n: 0 }
    }

    async fn still_works(&mut self) {
        self.n += 1;
        let body = format!("ping {}", self.n);
        self.c.send("/topic/bystander", body.as_bytes()).await;
        assert_eq!(&self.c.message().await.body[..], body.as_bytes());
    }
}

/// Sends `bytes` on a fresh 1.2 connection; returns the ERROR frame after
/// checking the connection was closed.
async fn bad(addr: SocketAddr, bytes: &[u8], half_close: bool) -> Frame {
    let mut c = StompClient::connect(addr, Some("1.2")).await;
    c.send_raw(bytes).await;
    if half_close {
        c.shutdown_write().await;
    }
    c.expect_error_and_close().await
}

fn body(f: &Frame) -> String {
    String::from_utf8_lossy(&f.body).into_owned()
}

#[tokio::test]
async fn each_bad_input_gets_an_error_and_a_close_and_others_go_on() {
    let b = TestBroker::start().await;
    let addr = b.addr("stomp");
    let mut other = Bystander::new(addr).await;

    // (bytes, half-close after sending, expected `message`, text the body holds)
    let cases: Vec<(&[u8], bool, &str, &str)> = vec![
        (
            b"SEND\ndestination:/queue/a\ncontent-length:5\n\nhelloX",
            false,
            "frame not terminated by NUL",
            "NUL",
        ),
        (
            b"SEND\ndestination:/queue/a\n\nthis frame never ends",
            true,
            "incomplete frame",
            "middle of a frame",
        ),
        (b"FOO\nx:y\n\n\0", false, "unknown command", "FOO"),
        (b"MESSAGE\n\n\0", false, "unknown command", "server frame"),
        (
            b"SEND\ndestination /queue/a\n\n\0",
            false,
            "malformed frame",
            "without a ':'",
        ),
        (
            b"SEND\ndestination:/queue/a\nx:bad\\tescape\n\n\0",
            false,
            "invalid header escape",
            "\\t",
        ),
        (
            b"SEND\ndestination:/queue/a\ncontent-length:100\n\nshort\0",
            true,
            "incomplete frame",
            "middle of a frame",
        ),
        (
            b"SEND\ndestination:/queue/a\ncontent-length:10\n\nshort\0SEND\ndestination:/queue/a\n\n\0",
            false,
            "frame not terminated by NUL",
            "content-length 10",
        ),
        (b"SEND\ncontent-length:1\n\nx\0", false, "missing destination header", "destination"),
        (b"ACK\nid:99-99\n\n\0", false, "unknown message id", "99-99"),
        (b"ACK\nid:not-an-id\n\n\0", false, "unknown message id", "not-an-id"),
        (b"ACK\n\n\0", false, "missing id header", "'id'"),
        (b"NACK\nid:1-1\n\n\0", false, "unknown message id", "1-1"),
        (b"SUBSCRIBE\ndestination:/topic/a\n\n\0", false, "missing id header", "'id'"),
        (
            b"SUBSCRIBE\nid:1\ndestination:/topic/a\nack:sometimes\n\n\0",
            false,
            "invalid ack mode",
            "sometimes",
        ),
        (b"UNSUBSCRIBE\nid:nope\n\n\0", false, "unknown subscription", "nope"),
        (
            b"SUBSCRIBE\nid:1\ndestination:/queue/a\nselector:color = 'red'\n\n\0",
            false,
            "selectors are not supported",
            "color",
        ),
        (b"COMMIT\ntransaction:none\n\n\0", false, "unknown transaction", "none"),
        (b"BEGIN\n\n\0", false, "missing transaction header", "transaction"),
        (
            b"SEND\ndestination:/topic/a.*\n\n\0",
            false,
            "invalid destination",
            "wildcards",
        ),
        (
            b"SEND\ndestination:/topic/a..b\n\n\0",
            false,
            "invalid destination",
            "empty",
        ),
        (b"SEND\ndestination:/nowhere/x\n\n\0", false, "unknown destination", "prefix"),
        (
            b"SEND\ndestination:/queue/a\npriority:high\n\n\0",
            false,
            "invalid header",
            "priority",
        ),
        (b"CONNECT\naccept-version:1.2\n\n\0", false, "already connected", "CONNECT"),
        (
            b"SEND\ndestination:/queue/a\ncontent-length:99999999999\n\n",
            false,
            "frame too large",
            "limit",
        ),
        (b"SEND\ndestination:/queue/a\nx:\xc3\x28\n\n\0", false, "malformed frame", "UTF-8"),
    ];
    for (bytes, half_close, message, explains) in cases {
        let what = String::from_utf8_lossy(bytes).into_owned();
        let err = bad(addr, bytes, half_close).await;
        assert_eq!(err.header("message"), Some(message), "{what:?}: {err:?}");
        assert!(
            body(&err).contains(explains),
            "{what:?}: body {:?} should mention {explains:?}",
            body(&err)
        );
        other.still_works().await;
    }
    assert_eq!(b.connections(), 1, "only the bystander is left");
    b.stop().await;
}

#[tokio::test]
async fn an_error_names_the_receipt_of_the_frame_that_caused_it() {
    let b = TestBroker::start().await;
    let err = bad(b.addr("stomp"), b"SEND\nreceipt:r-42\n\n\0", false).await;
    assert_eq!(err.header("receipt-id"), Some("r-42"));
    b.stop().await;
}

#[tokio::test]
async fn frames_before_connect_are_refused() {
    let b = TestBroker::start().await;
    let addr = b.addr("stomp");
    let mut other = Bystander::new(addr).await;
    let mut c = StompClient::tcp(addr).await;
    c.send_raw(b"SEND\ndestination:/queue/a\n\nx\0").await;
    let err = c.expect_error_and_close().await;
    assert_eq!(err.header("message"), Some("not connected"));
    let mut c = StompClient::tcp(addr).await;
    c.send_raw(b"CONNECT\naccept-version:1.2\nheart-beat:soon\n\n\0")
        .await;
    let err = c.expect_error_and_close().await;
    assert_eq!(err.header("message"), Some("invalid heart-beat header"));
    other.still_works().await;
    b.stop().await;
}

#[tokio::test]
async fn header_limits_are_enforced() {
    let b = TestBroker::start().await;
    let addr = b.addr("stomp");
    let mut other = Bystander::new(addr).await;
    let mut many = b"SEND\ndestination:/queue/a\n".to_vec();
    for i in 0..200 {
        many.extend_from_slice(format!("h{i}:v\n").as_bytes());
    }
    many.extend_from_slice(b"\n\0");
    let err = bad(addr, &many, false).await;
    assert_eq!(err.header("message"), Some("frame too large"));
    assert!(body(&err).contains("128 headers"));
    let long = [b"SEND\nx:".as_slice(), &vec![b'a'; 20_000]].concat();
    let err = bad(addr, &long, false).await;
    assert!(body(&err).contains("longer than the limit"));
    other.still_works().await;
    b.stop().await;
}

#[tokio::test]
async fn stomp_1_1_rejects_the_1_2_only_escape() {
    let b = TestBroker::start().await;
    let addr = b.addr("stomp");
    let mut c = StompClient::connect(addr, Some("1.1")).await;
    c.send_raw(b"SEND\ndestination:/queue/a\nx:a\\rb\n\n\0")
        .await;
    let err = c.expect_error_and_close().await;
    assert_eq!(err.header("message"), Some("invalid header escape"));
    b.stop().await;
}
