//! Bad input: each request gets its documented status and JSON error, and
//! the broker goes on serving a second client.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use bytes::Bytes;
use common::{WAIT, http_option, policies};
use switchyard_core::{AddressPolicy, Subscribe};
use switchyard_model::{AddressFilter, ConnId};
use switchyard_testkit::TestBroker;

async fn start() -> TestBroker {
    TestBroker::start_with(|c| {
        http_option(c, "max_body", "1KiB");
        http_option(c, "max_batch_body", "4KiB");
        http_option(c, "max_batch_messages", 5u64);
        policies(
            c,
            &[(
                "fixed.#",
                AddressPolicy {
                    auto_create_queues: Some(false),
                    ..Default::default()
                },
            )],
        );
    })
    .await
}

/// Sends `req`, checks the status and the error code, returns the body.
async fn expect_error(req: reqwest::RequestBuilder, status: u16, code: &str) -> serde_json::Value {
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), status);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], code, "{v}");
    assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
    v
}

/// A second client on the same broker still publishes and a core
/// subscriber receives it.
async fn broker_still_works(b: &TestBroker) {
    let mut s = b.broker().session("test", ConnId(u64::MAX - 1));
    s.subscribe(Subscribe::temporary(AddressFilter::new("alive").unwrap()))
        .unwrap();
    let mut d = s.deliveries();
    let other = reqwest::Client::new();
    let r = other
        .post(format!("{}/v1/topics/alive", b.http_url()))
        .body("still here")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let got = tokio::time::timeout(WAIT, d.recv()).await.unwrap().unwrap();
    assert_eq!(got.message.body, Bytes::from_static(b"still here"));
}

#[tokio::test]
async fn malformed_addresses_and_filters_are_400() {
    let b = start().await;
    let url = b.http_url();
    let http = reqwest::Client::new();
    for addr in ["a..b", ".a", "a.", "a%00b"] {
        let v = expect_error(
            http.post(format!("{url}/v1/topics/{addr}")).body("x"),
            400,
            "invalid_address",
        )
        .await;
        assert!(!v["detail"].as_str().unwrap().is_empty());
    }
    let long = "a".repeat(1025);
    expect_error(
        http.post(format!("{url}/v1/topics/{long}")).body("x"),
        400,
        "invalid_address",
    )
    .await;
    expect_error(
        http.post(format!("{url}/v1/topics/a%FFb")).body("x"),
        400,
        "invalid_path",
    )
    .await;
    expect_error(
        http.get(format!("{url}/v1/topics/a..b/events")),
        400,
        "invalid_filter",
    )
    .await;
    expect_error(
        http.post(format!("{url}/v1/queues/a%01b")).body("x"),
        400,
        "invalid_queue",
    )
    .await;
    let long = "q".repeat(256);
    expect_error(
        http.post(format!("{url}/v1/queues/{long}")).body("x"),
        400,
        "invalid_queue",
    )
    .await;
    broker_still_works(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn a_wildcard_in_a_publish_address_is_400() {
    let b = start().await;
    let url = b.http_url();
    let http = reqwest::Client::new();
    for addr in ["a.*", "a.%23", "*", "%23.b", "a.%2A.c"] {
        let v = expect_error(
            http.post(format!("{url}/v1/topics/{addr}")).body("x"),
            400,
            "invalid_address",
        )
        .await;
        assert!(v["detail"].as_str().unwrap().contains("wildcard"), "{v}");
    }
    broker_still_works(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn an_oversized_body_is_413_declared_or_streamed() {
    let b = start().await;
    let url = b.http_url();
    let http = reqwest::Client::new();
    let big = vec![b'x'; 1025];
    expect_error(
        http.post(format!("{url}/v1/topics/big")).body(big.clone()),
        413,
        "body_too_large",
    )
    .await;
    // No Content-Length (chunked): caught while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(vec![b'x'; 600]), Ok(vec![b'y'; 600])];
    expect_error(
        http.post(format!("{url}/v1/queues/bigq"))
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            ))),
        413,
        "body_too_large",
    )
    .await;
    // Exactly the limit is fine.
    let r = http
        .post(format!("{url}/v1/topics/big"))
        .body(vec![b'x'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // A batch over its limit, and a batch line over the message limit.
    let nd = ("content-type", "application/x-ndjson");
    expect_error(
        http.post(format!("{url}/v1/topics/big?batch=true"))
            .header(nd.0, nd.1)
            .body(vec![b'1'; 4097]),
        413,
        "body_too_large",
    )
    .await;
    let line = format!("\"{}\"", "z".repeat(1100));
    let v = expect_error(
        http.post(format!("{url}/v1/topics/big?batch=true"))
            .header(nd.0, nd.1)
            .body(format!("1\n{line}\n")),
        413,
        "body_too_large",
    )
    .await;
    assert_eq!(v["line"], 2);
    expect_error(
        http.post(format!("{url}/v1/topics/big?batch=true"))
            .header(nd.0, nd.1)
            .body("1\n2\n3\n4\n5\n6\n"),
        413,
        "body_too_large",
    )
    .await;
    broker_still_works(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn an_unknown_queue_is_404() {
    let b = start().await;
    let url = b.http_url();
    let http = reqwest::Client::new();
    expect_error(
        http.get(format!("{url}/v1/queues/nowhere/messages?wait=1")),
        404,
        "queue_not_found",
    )
    .await;
    expect_error(
        http.post(format!("{url}/v1/queues/nowhere/ack"))
            .json(&serde_json::json!({"receipts": []})),
        404,
        "queue_not_found",
    )
    .await;
    expect_error(
        http.post(format!("{url}/v1/queues/fixed.orders")).body("x"),
        404,
        "queue_not_found",
    )
    .await;
    assert!(b.broker().queue_info("fixed.orders").is_none());
    expect_error(http.get(format!("{url}/v1/nothing")), 404, "not_found").await;
    expect_error(
        http.delete(format!("{url}/v1/topics/a.b")),
        405,
        "method_not_allowed",
    )
    .await;
    broker_still_works(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn a_bad_ndjson_line_is_415_and_nothing_is_published() {
    let b = start().await;
    let url = b.http_url();
    let http = reqwest::Client::new();
    let mut s = b.broker().session("test", ConnId(u64::MAX));
    s.subscribe(Subscribe::temporary(AddressFilter::new("nd.#").unwrap()))
        .unwrap();
    let mut d = s.deliveries();
    let nd = ("content-type", "application/x-ndjson");
    let v = expect_error(
        http.post(format!("{url}/v1/topics/nd.x?batch=true"))
            .header(nd.0, nd.1)
            .body("{\"ok\":1}\n[2]\n{not json}\n\"fine\"\n"),
        415,
        "bad_batch_line",
    )
    .await;
    assert_eq!(v["line"], 3);
    expect_error(
        http.post(format!("{url}/v1/topics/nd.x?batch=true"))
            .header(nd.0, nd.1)
            .body(vec![b'"', 0xff, b'"']),
        415,
        "bad_batch_line",
    )
    .await;
    expect_error(
        http.post(format!("{url}/v1/topics/nd.x?batch=true"))
            .header("content-type", "text/plain")
            .body("1\n"),
        415,
        "unsupported_media_type",
    )
    .await;
    expect_error(
        http.post(format!("{url}/v1/queues/ndq?batch=true"))
            .header(nd.0, nd.1)
            .body("1\n2\nthree\n"),
        415,
        "bad_batch_line",
    )
    .await;
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), d.recv())
            .await
            .is_err(),
        "a line of a refused batch was published"
    );
    assert_eq!(b.broker().queue_info("ndq").map_or(0, |q| q.messages), 0);
    broker_still_works(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn bad_parameters_headers_and_bodies_are_400() {
    let b = start().await;
    let url = b.http_url();
    let http = reqwest::Client::new();
    for q in [
        "priority=10",
        "priority=-1",
        "ttl=soon",
        "durable=maybe",
        "colour=blue",
    ] {
        expect_error(
            http.post(format!("{url}/v1/topics/p.x?{q}")).body("x"),
            400,
            "invalid_parameter",
        )
        .await;
    }
    http.post(format!("{url}/v1/queues/pq"))
        .body("x")
        .send()
        .await
        .unwrap();
    for q in [
        "max=0",
        "max=101",
        "wait=21",
        "wait=-1",
        "visibility=NaN",
        "x=1",
    ] {
        expect_error(
            http.get(format!("{url}/v1/queues/pq/messages?{q}")),
            400,
            "invalid_parameter",
        )
        .await;
    }
    expect_error(
        http.get(format!("{url}/v1/topics/p.x/events?since=1")),
        400,
        "invalid_parameter",
    )
    .await;
    expect_error(
        http.post(format!("{url}/v1/topics/p.x"))
            .header("x-reply-to", "bad..address")
            .body("x"),
        400,
        "invalid_header",
    )
    .await;
    expect_error(
        http.post(format!("{url}/v1/topics/p.x"))
            .header(
                "x-msg-bin",
                reqwest::header::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
            )
            .body("x"),
        400,
        "invalid_header",
    )
    .await;
    expect_error(
        http.post(format!("{url}/v1/queues/pq/ack"))
            .body("not json"),
        400,
        "invalid_body",
    )
    .await;
    expect_error(
        http.post(format!("{url}/v1/queues/pq/ack"))
            .json(&serde_json::json!({"receipts": ["a"], "extra": 1})),
        400,
        "invalid_body",
    )
    .await;
    broker_still_works(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn a_full_queue_pushes_back_with_503() {
    let b = TestBroker::start_with(|c| {
        policies(
            c,
            &[(
                "tight",
                AddressPolicy {
                    max_length: Some(2),
                    overflow: Some(switchyard_core::Overflow::RejectPublish),
                    ..Default::default()
                },
            )],
        );
    })
    .await;
    let url = b.http_url();
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let r = http
            .post(format!("{url}/v1/queues/tight"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let r = http
        .post(format!("{url}/v1/queues/tight"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "queue_full");
    assert_eq!(v["rejected"], 1);
    assert_eq!(v["routed"], 0);
    // A batch stops at the refusal and says how much went in.
    http.get(format!("{url}/v1/queues/tight/messages"))
        .send()
        .await
        .unwrap();
    let r = http
        .post(format!("{url}/v1/queues/tight?batch=true"))
        .header("content-type", "application/x-ndjson")
        .body("1\n2\n3\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["published"], 1, "{v}");
    assert_eq!(b.broker().queue_info("tight").unwrap().messages, 2);
    broker_still_works(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn publishes_are_503_while_the_broker_holds_publishers_back() {
    let b = TestBroker::start().await;
    let url = b.http_url();
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{url}/v1/queues/held"))
        .body("before")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    b.broker()
        .set_blocked(Some("memory high watermark (test)".into()));
    for path in ["topics/held", "queues/held", "queues/held?batch=true"] {
        let r = http
            .post(format!("{url}/v1/{path}"))
            .header("content-type", "application/x-ndjson")
            .body("\"during\"\n")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503, "{path}");
        assert_eq!(r.headers()["retry-after"], "1");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"], "blocked", "{v}");
        assert!(
            v["detail"]
                .as_str()
                .unwrap()
                .contains("memory high watermark")
        );
    }
    // Consumers go on draining while publishers are held back.
    let r = http
        .get(format!("{url}/v1/queues/held/messages?max=10&wait=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["messages"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(b.broker().queue_info("held").unwrap().messages, 0);
    b.broker().set_blocked(None);
    let r = http
        .post(format!("{url}/v1/queues/held"))
        .body("after")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    broker_still_works(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn too_many_unacked_messages_is_503() {
    let b = TestBroker::start_with(|c| http_option(c, "max_unacked", 2u64)).await;
    let url = b.http_url();
    let http = reqwest::Client::new();
    for _ in 0..3 {
        http.post(format!("{url}/v1/queues/held"))
            .body("x")
            .send()
            .await
            .unwrap();
    }
    let r = http
        .get(format!("{url}/v1/queues/held/messages?max=10"))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["messages"].as_array().unwrap().len(), 2);
    expect_error(
        http.get(format!("{url}/v1/queues/held/messages")),
        503,
        "too_many_unacked",
    )
    .await;
    broker_still_works(&b).await;
    b.stop().await;
}
