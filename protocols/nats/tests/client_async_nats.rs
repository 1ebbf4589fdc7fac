//! The NATS adapter against the public `async-nats` client, in-process
//! broker on ephemeral ports.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use anyhow::Result;
use async_nats::{ConnectOptions, HeaderMap};
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;
use switchyard_core::Subscribe;
use switchyard_model::{Address, AddressFilter, ConnId, Message};
use switchyard_testkit::{TestBroker, conformance};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

/// A server round trip: everything this client sent before is processed
/// when it returns (async-nats' `flush` only empties the client's buffer).
async fn sync(c: &async_nats::Client) {
    let inbox = c.new_inbox();
    let mut sub = c.subscribe(inbox.clone()).await.unwrap();
    c.publish(inbox, Bytes::new()).await.unwrap();
    tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
}

fn url(addr: SocketAddr) -> String {
    format!("nats://{addr}")
}

async fn connect(b: &TestBroker) -> async_nats::Client {
    async_nats::connect(url(b.addr("nats"))).await.unwrap()
}

/// `conformance::Client` over async-nats.
struct NatsClient {
    client: async_nats::Client,
    tx: mpsc::UnboundedSender<conformance::Received>,
    rx: mpsc::UnboundedReceiver<conformance::Received>,
    subs: HashMap<u64, tokio::task::JoinHandle<()>>,
    next: u64,
}

impl NatsClient {
    async fn new(b: &TestBroker) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        NatsClient {
            client: connect(b).await,
            tx,
            rx,
            subs: HashMap::new(),
            next: 0,
        }
    }
}

#[async_trait::async_trait]
impl conformance::Client for NatsClient {
    async fn subscribe(&mut self, filter: &str) -> Result<u64> {
        let subject = filter.replace('#', ">");
        let mut sub = self.client.subscribe(subject).await?;
        sync(&self.client).await;
        let tx = self.tx.clone();
        let task = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let headers = m
                    .headers
                    .iter()
                    .flat_map(|h| h.iter())
                    .flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.to_string())))
                    .collect();
                let _ = tx.send(conformance::Received {
                    address: m.subject.to_string(),
                    body: m.payload,
                    headers,
                });
            }
        });
        self.next += 1;
        self.subs.insert(self.next, task);
        Ok(self.next)
    }

    async fn unsubscribe(&mut self, id: u64) -> Result<()> {
        if let Some(task) = self.subs.remove(&id) {
            // Dropping the subscriber sends UNSUB.
            task.abort();
            let _ = task.await;
        }
        sync(&self.client).await;
        // Messages already on their way before the UNSUB are not "after" it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while self.rx.try_recv().is_ok() {}
        Ok(())
    }

    async fn publish(
        &mut self,
        address: &str,
        body: Bytes,
        headers: &[(String, String)],
    ) -> Result<()> {
        if headers.is_empty() {
            self.client.publish(address.to_owned(), body).await?;
        } else {
            let mut map = HeaderMap::new();
            for (k, v) in headers {
                map.insert(k.as_str(), v.as_str());
            }
            self.client
                .publish_with_headers(address.to_owned(), map, body)
                .await?;
        }
        sync(&self.client).await;
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

    fn max_body(&self) -> usize {
        self.client.server_info().max_payload
    }
}

#[tokio::test]
async fn conformance_with_async_nats() {
    let b = TestBroker::start().await;
    let mut a = NatsClient::new(&b).await;
    let mut c = NatsClient::new(&b).await;
    conformance::run(b.broker(), &mut a, &mut c).await.unwrap();
    b.stop().await;
}

#[tokio::test]
async fn queue_group_members_split_the_work_and_together_get_everything() {
    let b = TestBroker::start().await;
    let c1 = connect(&b).await;
    let c2 = connect(&b).await;
    let plain = connect(&b).await;
    let mut w1 = c1
        .queue_subscribe("jobs.*", "workers".into())
        .await
        .unwrap();
    let mut w2 = c2
        .queue_subscribe("jobs.*", "workers".into())
        .await
        .unwrap();
    let mut all = plain.subscribe("jobs.*").await.unwrap();
    for c in [&c1, &c2, &plain] {
        sync(c).await;
    }
    let p = connect(&b).await;
    for i in 0..100 {
        p.publish(format!("jobs.{i}"), Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    sync(&p).await;
    let mut seen = BTreeSet::new();
    let (mut n1, mut n2) = (0, 0);
    while seen.len() < 100 {
        tokio::select! {
            Some(m) = w1.next() => { n1 += 1; assert!(seen.insert(m.payload)); }
            Some(m) = w2.next() => { n2 += 1; assert!(seen.insert(m.payload)); }
            () = tokio::time::sleep(WAIT) => panic!("only {} of 100 arrived", seen.len()),
        }
    }
    assert!(n1 > 0 && n2 > 0, "both members worked: {n1} / {n2}");
    assert_eq!(n1 + n2, 100, "each message went to exactly one member");
    for _ in 0..100 {
        tokio::time::timeout(WAIT, all.next())
            .await
            .unwrap()
            .unwrap();
    }
    b.stop().await;
}

#[tokio::test]
async fn request_reply_and_no_responders() {
    let b = TestBroker::start().await;
    let responder = connect(&b).await;
    let mut service = responder.subscribe("svc.echo").await.unwrap();
    sync(&responder).await;
    let rc = responder.clone();
    tokio::spawn(async move {
        while let Some(m) = service.next().await {
            if let Some(reply) = m.reply {
                let mut body = b"echo:".to_vec();
                body.extend_from_slice(&m.payload);
                rc.publish(reply, body.into()).await.unwrap();
            }
        }
    });
    let requester = connect(&b).await;
    let answer = requester.request("svc.echo", "hi".into()).await.unwrap();
    assert_eq!(&answer.payload[..], b"echo:hi");
    let err = requester
        .request("svc.nobody", "hi".into())
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        async_nats::RequestErrorKind::NoResponders,
        "{err:?}"
    );
    b.stop().await;
}

#[tokio::test]
async fn headers_round_trip() {
    let b = TestBroker::start().await;
    let c = connect(&b).await;
    let mut sub = c.subscribe("h.test").await.unwrap();
    sync(&c).await;
    let mut headers = HeaderMap::new();
    headers.insert("X-Trace", "abc");
    headers.append("X-Multi", "1");
    headers.append("X-Multi", "2");
    headers.insert("Content-Type", "text/plain");
    c.publish_with_headers("h.test", headers, "body".into())
        .await
        .unwrap();
    let m = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    let h = m.headers.unwrap();
    assert_eq!(h.get("X-Trace").map(|v| v.as_str()), Some("abc"));
    let multi: Vec<&str> = h.get_all("X-Multi").map(|v| v.as_str()).collect();
    assert_eq!(multi, ["1", "2"]);
    assert_eq!(
        h.get("Content-Type").map(|v| v.as_str()),
        Some("text/plain")
    );
    assert_eq!(&m.payload[..], b"body");
    b.stop().await;
}

#[tokio::test]
async fn unsubscribe_after_max_messages() {
    let b = TestBroker::start().await;
    let c = connect(&b).await;
    let mut sub = c.subscribe("max.test").await.unwrap();
    sub.unsubscribe_after(3).await.unwrap();
    sync(&c).await;
    for i in 0..10 {
        c.publish("max.test", Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    sync(&c).await;
    let mut got = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
        got.push(m.payload);
    }
    assert_eq!(got, ["0", "1", "2"]);
    // The server dropped the subscription too.
    assert!(switchyard_testkit::eventually(WAIT, || b.broker().queues().is_empty()).await);
    b.stop().await;
}

#[tokio::test]
async fn echo_off_suppresses_own_messages() {
    let b = TestBroker::start().await;
    let quiet = ConnectOptions::new()
        .no_echo()
        .connect(url(b.addr("nats")))
        .await
        .unwrap();
    let other = connect(&b).await;
    let mut own = quiet.subscribe("chat").await.unwrap();
    // A no-echo client cannot sync through its own inbox; a request nobody
    // answers is a round trip too (the 503 comes from the server).
    let quiet_sync = || async {
        let e = quiet
            .request("sync.nobody", Bytes::new())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), async_nats::RequestErrorKind::NoResponders);
    };
    quiet_sync().await;
    quiet.publish("chat", "mine".into()).await.unwrap();
    quiet_sync().await;
    other.publish("chat", "theirs".into()).await.unwrap();
    sync(&other).await;
    let m = tokio::time::timeout(WAIT, own.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"theirs");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), own.next())
            .await
            .is_err()
    );
    b.stop().await;
}

#[tokio::test]
async fn payload_up_to_max_payload_and_refused_past_it() {
    let b = TestBroker::start_with(|c| {
        c.listener_mut("nats")
            .unwrap()
            .options
            .insert("max_payload".into(), figment_value("64KiB"));
    })
    .await;
    let c = connect(&b).await;
    assert_eq!(c.server_info().max_payload, 64 * 1024);
    let mut sub = c.subscribe("big").await.unwrap();
    sync(&c).await;
    let body = Bytes::from(vec![7u8; 64 * 1024]);
    c.publish("big", body.clone()).await.unwrap();
    let m = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload, body);
    // async-nats refuses past max_payload itself; the server's own check is
    // exercised with a raw client in `bad_input`.
    assert!(
        c.publish("big", Bytes::from(vec![0u8; 64 * 1024 + 1]))
            .await
            .is_err()
    );
    b.stop().await;
}

fn figment_value(s: &str) -> figment::value::Value {
    figment::value::Value::from(s.to_owned())
}

#[tokio::test]
async fn client_reconnects_after_the_server_restarts() {
    let first = TestBroker::start().await;
    let addr = first.addr("nats");
    let c = ConnectOptions::new()
        .retry_on_initial_connect()
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(url(addr))
        .await
        .unwrap();
    let mut sub = c.subscribe("restart.test").await.unwrap();
    sync(&c).await;
    first.stop().await;
    let second = TestBroker::start_with(|cfg| {
        cfg.listener_mut("nats").unwrap().bind = addr;
    })
    .await;
    // The client reconnects and re-subscribes on its own.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        c.publish("restart.test", "after".into()).await.ok();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            assert_eq!(&m.payload[..], b"after");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no reconnect");
    }
    second.stop().await;
}

#[tokio::test]
async fn nats_publisher_reaches_a_core_subscriber_byte_identical() {
    let b = TestBroker::start().await;
    let mut s = b.broker().session("test", ConnId(u64::MAX - 1));
    s.subscribe(Subscribe::temporary(AddressFilter::new("x.*").unwrap()))
        .unwrap();
    let mut d = s.deliveries();
    let c = connect(&b).await;
    let body = Bytes::from((0..=255u8).collect::<Vec<_>>());
    c.publish("x.y", body.clone()).await.unwrap();
    sync(&c).await;
    let got = tokio::time::timeout(WAIT, d.recv()).await.unwrap().unwrap();
    assert_eq!(got.message.body, body);
    assert_eq!(got.message.origin.protocol, "nats");
    // And the reverse.
    let mut sub = c.subscribe("from.core").await.unwrap();
    sync(&c).await;
    b.broker()
        .publish(Message::multicast(
            &Address::new("from.core").unwrap(),
            body.clone(),
        ))
        .unwrap();
    let m = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload, body);
    b.stop().await;
}

#[tokio::test]
async fn publishers_are_held_back_while_the_broker_is_blocked() {
    let b = TestBroker::start().await;
    let consumer = connect(&b).await;
    let mut sub = consumer.subscribe("flow.x").await.unwrap();
    sync(&consumer).await;
    let publisher = connect(&b).await;
    publisher.publish("flow.x", "1".into()).await.unwrap();
    assert_eq!(
        &tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap()
            .unwrap()
            .payload[..],
        b"1"
    );

    b.broker().set_blocked(Some("test watermark".into()));
    publisher.publish("flow.x", "2".into()).await.unwrap();
    publisher.flush().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "a publishing connection is not read while blocked"
    );
    // Consumers are not held back.
    b.broker()
        .publish(Message::multicast(
            &Address::new("flow.x").unwrap(),
            Bytes::from_static(b"core"),
        ))
        .unwrap();
    assert_eq!(
        &tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap()
            .unwrap()
            .payload[..],
        b"core"
    );

    b.broker().set_blocked(None);
    assert_eq!(
        &tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap()
            .unwrap()
            .payload[..],
        b"2"
    );
    b.stop().await;
}
