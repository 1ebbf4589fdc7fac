//! The HTTP adapter against the public `reqwest` client and an in-process
//! broker on ephemeral ports: the shared conformance checks, SSE, binary and
//! header round trips, batches, long-poll consumption with ack and
//! redelivery, the cross-protocol path, metrics, readiness and shutdown.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use anyhow::Result;
use bytes::Bytes;
use common::{Sse, WAIT, http_option, parse_prometheus, policies, sample, segment};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use switchyard_core::{AddressPolicy, Subscribe};
use switchyard_model::{Address, AddressFilter, ConnId, Message};
use switchyard_testkit::{TestBroker, conformance, eventually};
use tokio::sync::mpsc;

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn publish(
    http: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> serde_json::Value {
    let mut req = http.post(url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 202, "{v}");
    v
}

/// `conformance::Client` over reqwest: publish with POST, subscribe with SSE.
struct HttpClient {
    http: reqwest::Client,
    base: String,
    tx: mpsc::UnboundedSender<conformance::Received>,
    rx: mpsc::UnboundedReceiver<conformance::Received>,
    subs: HashMap<u64, tokio::task::JoinHandle<()>>,
    next: u64,
}

impl HttpClient {
    fn new(b: &TestBroker) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        HttpClient {
            http: client(),
            base: b.http_url(),
            tx,
            rx,
            subs: HashMap::new(),
            next: 0,
        }
    }
}

#[async_trait::async_trait]
impl conformance::Client for HttpClient {
    async fn subscribe(&mut self, filter: &str) -> Result<u64> {
        let mut sse = Sse::open(&self.http, &self.base, filter).await;
        let tx = self.tx.clone();
        let task = tokio::spawn(async move {
            while let Some(e) = sse.event(Duration::from_secs(3600)).await {
                let meta = e.meta();
                let headers = meta["headers"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((k.strip_prefix("x-msg-")?.to_owned(), v.as_str()?.to_owned()))
                    })
                    .collect();
                let _ = tx.send(conformance::Received {
                    address: meta["address"].as_str().unwrap().to_owned(),
                    body: Bytes::from(common::body_of(&e)),
                    headers,
                });
            }
        });
        self.next += 1;
        self.subs.insert(self.next, task);
        Ok(self.next)
    }

    async fn unsubscribe(&mut self, id: u64) -> Result<()> {
        if let Some(t) = self.subs.remove(&id) {
            t.abort();
            let _ = t.await;
        }
        Ok(())
    }

    async fn publish(
        &mut self,
        address: &str,
        body: Bytes,
        headers: &[(String, String)],
    ) -> Result<()> {
        let mut req = self
            .http
            .post(format!("{}/v1/topics/{}", self.base, segment(address)))
            .body(body);
        for (k, v) in headers {
            req = req.header(format!("x-msg-{k}"), v);
        }
        let r = req.send().await?;
        anyhow::ensure!(r.status() == 202, "publish: {}", r.text().await?);
        Ok(())
    }

    async fn next(&mut self, timeout: Duration) -> Result<Option<conformance::Received>> {
        Ok(tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten())
    }

    fn carries_headers(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn conformance_checks_pass() {
    let b = TestBroker::start().await;
    let mut x = HttpClient::new(&b);
    let mut y = HttpClient::new(&b);
    conformance::run(b.broker(), &mut x, &mut y).await.unwrap();
    b.stop().await;
}

#[tokio::test]
async fn sse_carries_text_binary_headers_and_properties() {
    let b = TestBroker::start().await;
    let url = b.http_url();
    let http = client();
    let mut sse = Sse::open(&http, &url, "sensors.*.temp").await;
    let r = publish(
        &http,
        &format!("{url}/v1/topics/sensors.room1.temp?priority=7&ttl=60000&durable=true"),
        "21.5\nsecond line",
        &[
            ("content-type", "text/plain"),
            ("x-msg-trace", "abc"),
            ("x-correlation-id", "c-1"),
            ("x-reply-to", "replies.here"),
            ("x-message-id", "m-1"),
        ],
    )
    .await;
    assert_eq!(r["routed"], 1);
    let e = sse.event(WAIT).await.unwrap();
    assert_eq!(e.kind, "message");
    assert_eq!(e.id, r["id"].to_string());
    assert_eq!(e.data, "21.5\nsecond line");
    assert!(!e.other.contains_key("encoding"));
    let meta = e.meta();
    assert_eq!(meta["address"], "sensors.room1.temp");
    assert_eq!(
        meta["headers"],
        serde_json::json!({
            "content-type": "text/plain",
            "x-correlation-id": "c-1",
            "x-reply-to": "replies.here",
            "x-message-id": "m-1",
            "x-msg-trace": "abc",
        })
    );
    assert_eq!(meta["priority"], 7);
    assert_eq!(meta["durable"], true);
    let expires = meta["expires_at"].as_u64().unwrap();
    let now = switchyard_model::now_millis();
    assert!(
        expires > now + 50_000 && expires <= now + 60_000,
        "{expires}"
    );

    let binary: Vec<u8> = (0..=255u8).collect();
    publish(
        &http,
        &format!("{url}/v1/topics/sensors.b.temp"),
        binary.clone(),
        &[],
    )
    .await;
    let e = sse.event(WAIT).await.unwrap();
    assert_eq!(e.other.get("encoding").map(String::as_str), Some("base64"));
    assert_eq!(common::body_of(&e), binary);

    publish(
        &http,
        &format!("{url}/v1/topics/sensors.room1.humidity"),
        "no",
        &[],
    )
    .await;
    assert!(sse.event(Duration::from_millis(300)).await.is_none());
    b.stop().await;
}

#[tokio::test]
async fn headers_round_trip_through_x_msg() {
    let b = TestBroker::start().await;
    let url = b.http_url();
    let http = client();
    let mut sse = Sse::open(&http, &url, "h.#").await;
    publish(
        &http,
        &format!("{url}/v1/topics/h.one"),
        "x",
        &[
            ("x-msg-a", "1"),
            ("x-msg-b", "two words"),
            ("content-type", "text/csv"),
        ],
    )
    .await;
    let meta = sse.event(WAIT).await.unwrap().meta();
    // Publishing again with the headers we got back gives the same headers.
    let headers: Vec<(String, String)> = meta["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    let borrowed: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    publish(&http, &format!("{url}/v1/topics/h.two"), "y", &borrowed).await;
    let again = sse.event(WAIT).await.unwrap().meta();
    assert_eq!(again["headers"], meta["headers"]);
    assert_eq!(meta["headers"]["x-msg-a"], "1");
    assert_eq!(meta["headers"]["x-msg-b"], "two words");
    assert_eq!(meta["headers"]["content-type"], "text/csv");

    // Headers set by another protocol come out with the prefix.
    let mut m = Message::multicast(&Address::new("h.core").unwrap(), Bytes::from_static(b"z"));
    m.headers.push("Origin-Header", "from the core");
    m.headers.push("count", switchyard_model::Value::I32(3));
    b.broker().publish(m).unwrap();
    let meta = sse.event(WAIT).await.unwrap().meta();
    assert_eq!(meta["headers"]["x-msg-Origin-Header"], "from the core");
    assert_eq!(meta["headers"]["x-msg-count"], "3");
    b.stop().await;
}

#[tokio::test]
async fn batch_publish_delivers_every_line_in_order() {
    let b = TestBroker::start().await;
    let url = b.http_url();
    let http = client();
    let mut sse = Sse::open(&http, &url, "batch.x").await;
    let lines: Vec<String> = (0..50)
        .map(|i| serde_json::json!({"n": i, "s": "x\ny"}).to_string())
        .collect();
    let body = lines.join("\n") + "\n";
    let r = publish(
        &http,
        &format!("{url}/v1/topics/batch.x?batch=true"),
        body,
        &[
            ("content-type", "application/x-ndjson"),
            ("x-msg-src", "batch"),
        ],
    )
    .await;
    assert_eq!(r["count"], 50);
    assert_eq!(r["routed"], 50);
    assert!(r["last_id"].as_u64().unwrap() >= r["first_id"].as_u64().unwrap() + 49);
    for line in &lines {
        let e = sse.event(WAIT).await.unwrap();
        assert_eq!(&e.data, line);
        let meta = e.meta();
        assert_eq!(meta["headers"]["content-type"], "application/json");
        assert_eq!(meta["headers"]["x-msg-src"], "batch");
    }

    // Batches to a queue too.
    let r = publish(
        &http,
        &format!("{url}/v1/queues/batchq?batch=true"),
        "1\n2\n3",
        &[("content-type", "application/x-ndjson; charset=utf-8")],
    )
    .await;
    assert_eq!(r["count"], 3);
    assert_eq!(b.broker().queue_info("batchq").unwrap().messages, 3);
    b.stop().await;
}

async fn poll(http: &reqwest::Client, url: &str) -> Vec<serde_json::Value> {
    let r = http.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    v["messages"].as_array().unwrap().clone()
}

async fn settle(http: &reqwest::Client, url: &str, body: serde_json::Value) -> serde_json::Value {
    let r = http.post(url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn long_poll_ack_and_redelivery_after_the_visibility_timeout() {
    let b = TestBroker::start().await;
    let url = b.http_url();
    let http = client();
    publish(&http, &format!("{url}/v1/queues/jobs"), "first", &[]).await;
    let binary = vec![0u8, 0xff, 0x80, 10];
    publish(
        &http,
        &format!("{url}/v1/queues/jobs"),
        binary.clone(),
        &[("x-msg-kind", "bin")],
    )
    .await;

    let got = poll(
        &http,
        &format!("{url}/v1/queues/jobs/messages?max=10&visibility=0.5"),
    )
    .await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["body"], "first");
    assert_eq!(got[0]["redelivered"], false);
    assert_eq!(got[0]["delivery_count"], 1);
    assert_eq!(got[1]["encoding"], "base64");
    assert_eq!(got[1]["headers"]["x-msg-kind"], "bin");
    use base64::Engine as _;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(got[1]["body"].as_str().unwrap())
            .unwrap(),
        binary
    );
    // Invisible to everyone else meanwhile.
    assert!(
        poll(&http, &format!("{url}/v1/queues/jobs/messages"))
            .await
            .is_empty()
    );
    let info = b.broker().queue_info("jobs").unwrap();
    assert_eq!((info.messages, info.unacked), (0, 2));

    let first = got[0]["receipt"].as_str().unwrap().to_owned();
    let second = got[1]["receipt"].as_str().unwrap().to_owned();
    let r = settle(
        &http,
        &format!("{url}/v1/queues/jobs/ack"),
        serde_json::json!({"receipts": [first]}),
    )
    .await;
    assert_eq!(r, serde_json::json!({"acked": 1, "failed": []}));

    // The second is not acked: after its visibility timeout it comes back.
    let again = poll(
        &http,
        &format!("{url}/v1/queues/jobs/messages?wait=5&visibility=30"),
    )
    .await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["id"], got[1]["id"]);
    assert_eq!(again[0]["redelivered"], true);
    assert_eq!(again[0]["delivery_count"], 2);
    let third = again[0]["receipt"].as_str().unwrap().to_owned();
    assert_ne!(third, second, "a redelivery has a new receipt");

    let r = settle(
        &http,
        &format!("{url}/v1/queues/jobs/ack"),
        serde_json::json!({"receipts": [second, first, third]}),
    )
    .await;
    assert_eq!(r["acked"], 1);
    let failed = r["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().all(|f| f["error"] == "unknown_receipt"));

    let info = b.broker().queue_info("jobs").unwrap();
    assert_eq!((info.messages, info.unacked), (0, 0));
    assert!(
        poll(&http, &format!("{url}/v1/queues/jobs/messages?wait=0.2"))
            .await
            .is_empty()
    );
    b.stop().await;
}

#[tokio::test]
async fn a_long_poll_is_woken_by_a_publish() {
    let b = TestBroker::start().await;
    let url = b.http_url();
    let http = client();
    publish(&http, &format!("{url}/v1/queues/wake"), "warm-up", &[]).await;
    let got = poll(&http, &format!("{url}/v1/queues/wake/messages")).await;
    let receipt = got[0]["receipt"].as_str().unwrap().to_owned();
    settle(
        &http,
        &format!("{url}/v1/queues/wake/ack"),
        serde_json::json!({"receipts": [receipt]}),
    )
    .await;

    let started = Instant::now();
    let waiter = {
        let http = http.clone();
        let url = url.clone();
        tokio::spawn(
            async move { poll(&http, &format!("{url}/v1/queues/wake/messages?wait=20")).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the poll waits for a message");
    publish(&http, &format!("{url}/v1/queues/wake"), "now", &[]).await;
    let got = tokio::time::timeout(WAIT, waiter).await.unwrap().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["body"], "now");
    assert!(started.elapsed() < Duration::from_secs(15));

    // Nothing comes: an empty list after the wait.
    let started = Instant::now();
    let none = poll(&http, &format!("{url}/v1/queues/wake/messages?wait=0.3")).await;
    assert!(none.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250));
    b.stop().await;
}

#[tokio::test]
async fn nack_requeues_or_dead_letters() {
    let b = TestBroker::start_with(|c| {
        policies(
            c,
            &[(
                "work.#",
                AddressPolicy {
                    dlq: Some("work.dead".into()),
                    ..Default::default()
                },
            )],
        )
    })
    .await;
    let url = b.http_url();
    let http = client();
    publish(&http, &format!("{url}/v1/queues/work.q"), "a", &[]).await;
    let got = poll(&http, &format!("{url}/v1/queues/work.q/messages")).await;
    let r = settle(
        &http,
        &format!("{url}/v1/queues/work.q/nack"),
        serde_json::json!({"receipts": [got[0]["receipt"]]}),
    )
    .await;
    assert_eq!(r["nacked"], 1);
    let again = poll(&http, &format!("{url}/v1/queues/work.q/messages")).await;
    assert_eq!(again[0]["delivery_count"], 2);
    let r = settle(
        &http,
        &format!("{url}/v1/queues/work.q/nack"),
        serde_json::json!({"receipts": [again[0]["receipt"]], "requeue": false}),
    )
    .await;
    assert_eq!(r["nacked"], 1);
    let dead = poll(&http, &format!("{url}/v1/queues/work.dead/messages?wait=5")).await;
    assert_eq!(dead[0]["body"], "a");
    assert_eq!(dead[0]["headers"]["x-msg-x-first-death-reason"], "rejected");
    b.stop().await;
}

#[tokio::test]
async fn receipts_cannot_be_forged_or_used_on_another_queue() {
    let b = TestBroker::start().await;
    let url = b.http_url();
    let http = client();
    publish(&http, &format!("{url}/v1/queues/r1"), "a", &[]).await;
    publish(&http, &format!("{url}/v1/queues/r2"), "b", &[]).await;
    let got = poll(&http, &format!("{url}/v1/queues/r1/messages")).await;
    let receipt = got[0]["receipt"].as_str().unwrap().to_owned();
    let mut forged = receipt.clone();
    let last = if forged.ends_with('0') { "1" } else { "0" };
    forged.replace_range(31.., last);
    let r = settle(
        &http,
        &format!("{url}/v1/queues/r2/ack"),
        serde_json::json!({"receipts": [receipt.clone(), forged.clone(), "nonsense"]}),
    )
    .await;
    assert_eq!(r["acked"], 0);
    let errors: Vec<&str> = r["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["error"].as_str().unwrap())
        .collect();
    assert_eq!(
        errors,
        ["wrong_queue", "unknown_receipt", "malformed_receipt"]
    );
    let r = settle(
        &http,
        &format!("{url}/v1/queues/r1/ack"),
        serde_json::json!({"receipts": [forged]}),
    )
    .await;
    assert_eq!(r["acked"], 0);
    let r = settle(
        &http,
        &format!("{url}/v1/queues/r1/ack"),
        serde_json::json!({"receipts": [receipt]}),
    )
    .await;
    assert_eq!(r["acked"], 1);
    b.stop().await;
}

#[tokio::test]
async fn http_publish_reaches_a_core_subscriber_and_back() {
    let b = TestBroker::start().await;
    let url = b.http_url();
    let http = client();
    let mut session = b.broker().session("test", ConnId(u64::MAX));
    session
        .subscribe(Subscribe::temporary(AddressFilter::new("x.#").unwrap()))
        .unwrap();
    let mut deliveries = session.deliveries();
    let body: Vec<u8> = (0..=255u8).rev().collect();
    publish(
        &http,
        &format!("{url}/v1/topics/x.in?priority=2&durable=true"),
        body.clone(),
        &[
            ("x-msg-k", "v"),
            ("content-type", "application/octet-stream"),
        ],
    )
    .await;
    let d = tokio::time::timeout(WAIT, deliveries.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.message.body.as_ref(), body.as_slice());
    assert_eq!(&*d.message.address, "x.in");
    assert_eq!(d.message.origin.protocol, "http");
    assert_eq!(
        d.message.headers.get("k").and_then(|v| v.as_str()),
        Some("v")
    );
    assert_eq!(
        d.message.properties.content_type.as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(d.message.properties.priority, Some(2));
    assert!(d.message.properties.durable);

    let mut sse = Sse::open(&http, &url, "x.out").await;
    let body = Bytes::from_static(b"\x00from the core\xff");
    b.broker()
        .publish(Message::multicast(
            &Address::new("x.out").unwrap(),
            body.clone(),
        ))
        .unwrap();
    let e = sse.event(WAIT).await.unwrap();
    assert_eq!(common::body_of(&e), body.to_vec());
    b.stop().await;
}

#[tokio::test]
async fn queues_are_created_on_first_use_unless_the_policy_says_no() {
    let b = TestBroker::start_with(|c| {
        policies(
            c,
            &[(
                "fixed.#",
                AddressPolicy {
                    auto_create_queues: Some(false),
                    ..Default::default()
                },
            )],
        )
    })
    .await;
    let url = b.http_url();
    let http = client();
    let r = publish(&http, &format!("{url}/v1/queues/made.here"), "x", &[]).await;
    assert_eq!(r["routed"], 1);
    let info = b.broker().queue_info("made.here").unwrap();
    assert!(info.durable);
    assert_eq!(info.messages, 1);

    let r = http
        .post(format!("{url}/v1/queues/fixed.q"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "queue_not_found");
    b.broker()
        .declare_queue(
            switchyard_core::DeclareQueue {
                name: Some("fixed.q".into()),
                ..Default::default()
            },
            None,
        )
        .unwrap();
    publish(&http, &format!("{url}/v1/queues/fixed.q"), "x", &[]).await;
    b.stop().await;
}

fn subscription_queues(b: &TestBroker) -> usize {
    b.broker()
        .queues()
        .iter()
        .filter(|q| q.name.starts_with("$sub."))
        .count()
}

#[tokio::test]
async fn the_session_goes_when_the_client_goes() {
    let b = TestBroker::start().await;
    let url = b.http_url();
    let http = client();
    assert_eq!(subscription_queues(&b), 0);
    let sse = Sse::open(&http, &url, "gone.#").await;
    assert_eq!(subscription_queues(&b), 1);
    drop(sse);
    assert!(
        eventually(WAIT, || subscription_queues(&b) == 0).await,
        "the subscription outlived its client"
    );
    b.stop().await;
}

#[tokio::test]
async fn streams_and_long_polls_end_when_the_server_shuts_down() {
    let b = TestBroker::start().await;
    let url = b.http_url();
    let http = client();
    let mut sse = Sse::open(&http, &url, "bye.#").await;
    publish(&http, &format!("{url}/v1/queues/idle"), "x", &[]).await;
    let got = poll(&http, &format!("{url}/v1/queues/idle/messages")).await;
    assert_eq!(got.len(), 1);
    let waiting = {
        let http = http.clone();
        let url = url.clone();
        tokio::spawn(async move {
            http.get(format!("{url}/v1/queues/idle/messages?wait=20"))
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let broker = b.broker().clone();
    tokio::time::timeout(WAIT, b.stop())
        .await
        .expect("shutdown does not hang");
    assert!(started.elapsed() < Duration::from_secs(5));
    let close = sse.event(WAIT).await.expect("a close event");
    assert_eq!(close.kind, "close");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&close.data).unwrap()["reason"],
        "shutdown"
    );
    assert!(sse.event(WAIT).await.is_none());
    assert!(sse.ended);
    let v = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    assert_eq!(v["messages"], serde_json::json!([]));
    // The unacked message went back to its queue when the listener stopped.
    let info = broker.queue_info("idle").unwrap();
    assert_eq!((info.messages, info.unacked), (1, 0));
}

/// Asks for an event stream on a raw socket and reads only the response head.
async fn stalled_stream(b: &TestBroker, filter: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(b.addr("http"))
        .await
        .unwrap();
    let req = format!("GET /v1/topics/{filter}/events HTTP/1.1\r\nhost: x\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = [0u8; 64];
    let n = tcp.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    assert!(eventually(WAIT, || subscription_queues(b) == 1).await);
    tcp
}

/// Publishes 1 MiB every 20 ms until the subscription is gone; `check`
/// runs after each round.
async fn flood_until_unsubscribed(b: &TestBroker, address: &str, check: impl Fn(&TestBroker)) {
    let body = Bytes::from(vec![b'x'; 64 * 1024]);
    let addr = Address::new(address).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while subscription_queues(b) == 1 {
        assert!(
            Instant::now() < deadline,
            "the stalled client was not cut off"
        );
        for _ in 0..16 {
            b.broker()
                .publish(Message::multicast(&addr, body.clone()))
                .unwrap();
        }
        check(b);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_stream_that_falls_behind_is_bounded_and_closed() {
    let b = TestBroker::start_with(|c| {
        http_option(c, "sse_max_pending", "64KiB");
        c.core.limits.connection_buffer_bytes = switchyard_core::Size::kib(64);
    })
    .await;
    let _tcp = stalled_stream(&b, "flood").await;
    flood_until_unsubscribed(&b, "flood", |b| {
        // The subscription's queue keeps at most sse_max_pending bytes.
        for q in b.broker().queues() {
            assert!(q.bytes <= 128 * 1024, "queue grew to {} bytes", q.bytes);
        }
    })
    .await;
    // Others are unaffected.
    let http = client();
    let mut sse = Sse::open(&http, &b.http_url(), "flood").await;
    b.broker()
        .publish(Message::multicast(
            &Address::new("flood").unwrap(),
            Bytes::from_static(b"ok"),
        ))
        .unwrap();
    assert_eq!(sse.event(WAIT).await.unwrap().data, "ok");
    b.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_by_the_write_timeout() {
    let b = TestBroker::start_with(|c| {
        http_option(c, "write_timeout", "500ms");
        // No overflow: only the write timeout can end this stream.
        http_option(c, "sse_max_pending", "1GiB");
        http_option(c, "sse_max_pending_messages", 100_000_000u64);
    })
    .await;
    let mut tcp = stalled_stream(&b, "stall").await;
    flood_until_unsubscribed(&b, "stall", |_| {}).await;
    // The server closed the connection: reading drains what the kernel
    // holds, then ends.
    use tokio::io::AsyncReadExt;
    let mut sink = vec![0u8; 1 << 20];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection stayed open");
    assert!(
        eventually(WAIT, || b.broker().queues().iter().all(|q| q.bytes == 0)).await,
        "the backlog was not released"
    );
    b.stop().await;
}

#[tokio::test]
async fn shutdown_cuts_a_stuck_request_after_the_grace_period() {
    let b = TestBroker::start_with(|c| {
        c.server.shutdown_grace = switchyard_core::Dur(Duration::from_millis(500));
    })
    .await;
    // A publish whose body never finishes arriving: graceful shutdown would
    // wait for it forever.
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(b.addr("http"))
        .await
        .unwrap();
    tcp.write_all(
        b"POST /v1/topics/stuck HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\npartial",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    tokio::time::timeout(WAIT, b.stop())
        .await
        .expect("shutdown waited for a request that never completes");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "cut before the grace period: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    use tokio::io::AsyncReadExt;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest))
        .await
        .expect("closed");
}

#[tokio::test]
async fn a_slow_stream_ends_with_a_slow_consumer_event() {
    let b = TestBroker::start_with(|c| {
        http_option(c, "sse_max_pending_messages", 50u64);
        c.core.limits.connection_buffer = 16;
    })
    .await;
    let url = b.http_url();
    let http = client();
    let mut sse = Sse::open(&http, &url, "slow").await;
    let addr = Address::new("slow").unwrap();
    let body = Bytes::from(vec![b'y'; 4096]);
    // Far more than the socket buffers, the delivery buffer and the
    // subscription's 50 messages hold while the client reads nothing.
    for _ in 0..20_000 {
        b.broker()
            .publish(Message::multicast(&addr, body.clone()))
            .unwrap();
    }
    let mut messages = 0;
    let close = loop {
        let e = sse.event(WAIT).await.expect("events, then a close");
        if e.kind != "message" {
            break e;
        }
        messages += 1;
    };
    assert_eq!(close.kind, "close");
    let data: serde_json::Value = serde_json::from_str(&close.data).unwrap();
    assert_eq!(data["reason"], "slow_consumer");
    assert!(messages < 20_000, "{messages}");
    assert!(sse.event(WAIT).await.is_none());
    b.stop().await;
}

async fn metrics(http: &reqwest::Client, url: &str) -> Vec<common::Sample> {
    let r = http.get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    parse_prometheus(&r.text().await.unwrap()).unwrap()
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    let b = TestBroker::start().await;
    let url = b.http_url();
    let http = client();
    let before = metrics(&http, &url).await;
    let http_label = [("protocol", "http")];
    for name in [
        "switchyard_protocol_messages_received_total",
        "switchyard_protocol_received_bytes_total",
        "switchyard_protocol_messages_sent_total",
        "switchyard_protocol_sent_bytes_total",
    ] {
        assert_eq!(sample(&before, name, &http_label), Some(0.0), "{name}");
    }
    assert!(sample(&before, "switchyard_connections_active", &http_label).unwrap() >= 1.0);

    let mut sse = Sse::open(&http, &url, "m.#").await;
    for _ in 0..3 {
        publish(&http, &format!("{url}/v1/topics/m.a"), "12345", &[]).await;
    }
    publish(&http, &format!("{url}/v1/queues/mq"), "1234567", &[]).await;
    publish(&http, &format!("{url}/v1/queues/mq"), "1", &[]).await;
    for _ in 0..3 {
        sse.event(WAIT).await.unwrap();
    }
    let got = poll(&http, &format!("{url}/v1/queues/mq/messages")).await;
    assert_eq!(got.len(), 1);
    // Redeliveries move too: give the message back.
    settle(
        &http,
        &format!("{url}/v1/queues/mq/nack"),
        serde_json::json!({"receipts": [got[0]["receipt"]]}),
    )
    .await;
    poll(&http, &format!("{url}/v1/queues/mq/messages?max=2")).await;

    let mut after = Vec::new();
    let mut moved = false;
    for _ in 0..500 {
        after = metrics(&http, &url).await;
        if sample(
            &after,
            "switchyard_protocol_messages_sent_total",
            &http_label,
        ) == Some(6.0)
        {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(moved, "{after:?}");
    let get = |name: &str, labels: &[(&str, &str)]| sample(&after, name, labels).unwrap();
    assert_eq!(
        get("switchyard_protocol_messages_received_total", &http_label),
        5.0
    );
    assert_eq!(
        get("switchyard_protocol_received_bytes_total", &http_label),
        23.0
    );
    assert_eq!(
        get("switchyard_protocol_sent_bytes_total", &http_label),
        15.0 + 7.0 + 7.0 + 1.0
    );
    assert_eq!(get("switchyard_messages_published_total", &[]), 5.0);
    assert_eq!(get("switchyard_messages_redelivered_total", &[]), 1.0);
    assert_eq!(get("switchyard_queue_unacked", &[("queue", "mq")]), 2.0);
    assert_eq!(get("switchyard_queue_messages", &[("queue", "mq")]), 0.0);
    assert!(get("switchyard_route_cache_hit_ratio", &[]) > 0.0);
    assert!(get("switchyard_connections_active", &http_label) >= 2.0);
    assert_eq!(
        get(
            "switchyard_protocol_messages_received_total",
            &[("protocol", "nats")]
        ),
        0.0
    );
    b.stop().await;
}

#[tokio::test]
async fn readiness_turns_503_while_draining_and_health_stays_ok() {
    let b = TestBroker::start_with(|c| {
        c.server.drain_period = switchyard_core::Dur(Duration::from_secs(2));
    })
    .await;
    let url = b.http_url();
    let http = client();
    let r = http.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (v["ready"].clone(), v["shutting_down"].clone()),
        (true.into(), false.into())
    );

    let stopping = tokio::spawn(b.stop());
    let mut seen = None;
    for _ in 0..100 {
        let r = http.get(format!("{url}/readyz")).send().await.unwrap();
        if r.status() == 503 {
            seen = Some(r.json::<serde_json::Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let v = seen.expect("readiness went 503 during shutdown");
    assert_eq!(v["ready"], false);
    assert_eq!(v["shutting_down"], true);
    let r = http.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "alive while draining");
    // Publishing still works while draining.
    publish(&http, &format!("{url}/v1/topics/drain.x"), "x", &[]).await;
    tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
    assert!(http.get(format!("{url}/healthz")).send().await.is_err());
}

#[tokio::test]
async fn the_openapi_document_is_the_docs_file_and_lists_every_route() {
    let b = TestBroker::start().await;
    let url = b.http_url();
    let http = client();
    let r = http
        .get(format!("{url}/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let served = r.text().await.unwrap();
    let file = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/openapi.json"
    ))
    .unwrap();
    assert_eq!(
        served, file,
        "served document differs from docs/openapi.json"
    );
    let doc: serde_json::Value = serde_json::from_str(&served).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/topics/{address}", "post"),
        ("/v1/queues/{queue}", "post"),
        ("/v1/topics/{filter}/events", "get"),
        ("/v1/queues/{queue}/messages", "get"),
        ("/v1/queues/{queue}/ack", "post"),
        ("/v1/queues/{queue}/nack", "post"),
        ("/v1/openapi.json", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} undocumented"
        );
    }
    // Every $ref resolves.
    fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    if k == "$ref" {
                        out.push(x.as_str().unwrap().to_owned());
                    } else {
                        refs(x, out);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let pointer = r.strip_prefix('#').unwrap();
        assert!(doc.pointer(pointer).is_some(), "dangling {r}");
    }
    b.stop().await;
}
