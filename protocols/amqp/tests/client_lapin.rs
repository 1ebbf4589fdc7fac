//! The adapter driven by lapin (a public Rust AMQP client) against an
//! in-process broker: the shared conformance checks, then RabbitMQ
//! features one by one, and the cross-protocol path through the core.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use anyhow::{Context, Result};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use std::collections::HashMap;
use std::time::Duration;
use switchyard_core::Subscribe;
use switchyard_model::{Address, AddressFilter, ConnId, Message, Value};
use switchyard_testkit::TestBroker;
use switchyard_testkit::conformance::{self, Received};

const WAIT: Duration = Duration::from_secs(10);

async fn connect(b: &TestBroker) -> Connection {
    let uri = format!("amqp://guest:guest@{}/%2f", b.addr("amqp"));
    Connection::connect(&uri, ConnectionProperties::default())
        .await
        .expect("lapin connects")
}

async fn channel(b: &TestBroker) -> (Connection, Channel) {
    let c = connect(b).await;
    let ch = c.create_channel().await.unwrap();
    (c, ch)
}

fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

async fn declare(ch: &Channel, name: &str, a: FieldTable) -> String {
    ch.queue_declare(name.into(), QueueDeclareOptions::default(), a)
        .await
        .unwrap()
        .name()
        .to_string()
}

async fn publish(ch: &Channel, ex: &str, rk: &str, body: &[u8], props: BasicProperties) {
    ch.basic_publish(
        ex.into(),
        rk.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .unwrap();
}

async fn consume(ch: &Channel, q: &str, no_ack: bool) -> Consumer {
    ch.basic_consume(
        q.into(),
        "".into(),
        BasicConsumeOptions {
            no_ack,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap()
}

async fn next(c: &mut Consumer) -> lapin::message::Delivery {
    tokio::time::timeout(WAIT, c.next())
        .await
        .expect("a delivery in time")
        .expect("consumer open")
        .expect("delivery ok")
}

async fn nothing(c: &mut Consumer) {
    if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(300), c.next()).await {
        panic!("unexpected delivery {:?}", d.map(|d| d.data));
    }
}

async fn get(ch: &Channel, q: &str) -> Option<lapin::message::BasicGetMessage> {
    ch.basic_get(q.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------
// Conformance

struct LapinClient {
    _conn: Connection,
    ch: Channel,
    consumer: Option<Consumer>,
    queue: String,
    next_id: u64,
    subs: HashMap<u64, String>,
}

impl LapinClient {
    async fn new(b: &TestBroker) -> Self {
        let (conn, ch) = channel(b).await;
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .name()
            .to_string();
        let consumer = consume(&ch, &q, true).await;
        LapinClient {
            _conn: conn,
            ch,
            consumer: Some(consumer),
            queue: q,
            next_id: 0,
            subs: HashMap::new(),
        }
    }
}

#[async_trait]
impl conformance::Client for LapinClient {
    async fn subscribe(&mut self, filter: &str) -> Result<u64> {
        self.ch
            .queue_bind(
                self.queue.as_str().into(),
                "amq.topic".into(),
                filter.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.next_id += 1;
        self.subs.insert(self.next_id, filter.to_owned());
        Ok(self.next_id)
    }

    async fn unsubscribe(&mut self, id: u64) -> Result<()> {
        let filter = self.subs.remove(&id).context("unknown subscription")?;
        self.ch
            .queue_unbind(
                self.queue.as_str().into(),
                "amq.topic".into(),
                filter.as_str().into(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    async fn publish(
        &mut self,
        address: &str,
        body: Bytes,
        headers: &[(String, String)],
    ) -> Result<()> {
        let mut t = FieldTable::default();
        for (k, v) in headers {
            t.insert(k.as_str().into(), s(v));
        }
        self.ch
            .basic_publish(
                "amq.topic".into(),
                address.into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_headers(t),
            )
            .await?;
        // A round trip so the broker has routed the publish.
        self.ch
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    async fn next(&mut self, timeout: Duration) -> Result<Option<Received>> {
        let c = self.consumer.as_mut().context("no consumer")?;
        match tokio::time::timeout(timeout, c.next()).await {
            Err(_) => Ok(None),
            Ok(None) => anyhow::bail!("consumer closed"),
            Ok(Some(d)) => {
                let d = d?;
                let headers = d
                    .properties
                    .headers()
                    .as_ref()
                    .map(|h| {
                        h.inner()
                            .iter()
                            .filter_map(|(k, v)| match v {
                                AMQPValue::LongString(s) => Some((
                                    k.to_string(),
                                    String::from_utf8_lossy(s.as_bytes()).into_owned(),
                                )),
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(Some(Received {
                    address: d.routing_key.to_string(),
                    body: Bytes::from(d.data),
                    headers,
                }))
            }
        }
    }

    fn carries_headers(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn conformance_with_lapin() {
    let b = TestBroker::start().await;
    let mut a = LapinClient::new(&b).await;
    let mut c = LapinClient::new(&b).await;
    conformance::run(b.broker(), &mut a, &mut c).await.unwrap();
    b.stop().await;
}

// ---------------------------------------------------------------------------
// Properties and headers

fn all_properties() -> BasicProperties {
    let mut nested = FieldTable::default();
    nested.insert("inner".into(), AMQPValue::LongInt(-5));
    let headers = args(&[
        ("bool", AMQPValue::Boolean(true)),
        ("i8", AMQPValue::ShortShortInt(-8)),
        ("u8", AMQPValue::ShortShortUInt(8)),
        ("i16", AMQPValue::ShortInt(-16)),
        ("u16", AMQPValue::ShortUInt(16)),
        ("i32", AMQPValue::LongInt(-32)),
        ("u32", AMQPValue::LongUInt(32)),
        ("i64", AMQPValue::LongLongInt(-64)),
        ("f32", AMQPValue::Float(1.5)),
        ("f64", AMQPValue::Double(2.25)),
        (
            "dec",
            AMQPValue::DecimalValue(lapin::types::DecimalValue {
                scale: 2,
                value: 1250,
            }),
        ),
        ("str", s("text")),
        ("bytes", AMQPValue::ByteArray(vec![0u8, 255, 7].into())),
        ("ts", AMQPValue::Timestamp(1_700_000_000)),
        (
            "list",
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongInt(1), s("two")])),
        ),
        ("table", AMQPValue::FieldTable(nested)),
        ("void", AMQPValue::Void),
    ]);
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("gzip".into())
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_priority(7)
        .with_correlation_id("corr-1".into())
        .with_reply_to("replies".into())
        .with_expiration("600000".into())
        .with_message_id("msg-1".into())
        .with_timestamp(1_700_000_123)
        .with_type("order.created".into())
        .with_user_id("guest".into())
        .with_app_id("shop".into())
        .with_cluster_id("c1".into())
}

#[tokio::test]
async fn all_14_properties_and_every_header_type_reach_an_amqp_consumer() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    let q = declare(&ch, "props", FieldTable::default()).await;
    let mut cons = consume(&ch, &q, true).await;
    let sent = all_properties();
    publish(&ch, "", &q, b"body", sent.clone()).await;
    let d = next(&mut cons).await;
    let got = d.properties;
    assert_eq!(got.content_type(), sent.content_type());
    assert_eq!(got.content_encoding(), sent.content_encoding());
    assert_eq!(
        got.headers(),
        sent.headers(),
        "every field type round-trips"
    );
    assert_eq!(got.delivery_mode(), &Some(2));
    assert_eq!(got.priority(), &Some(7));
    assert_eq!(got.correlation_id(), sent.correlation_id());
    assert_eq!(got.reply_to(), sent.reply_to());
    let left: u64 = got.expiration().as_ref().unwrap().as_str().parse().unwrap();
    assert!(left <= 600_000 && left > 590_000, "remaining ms {left}");
    assert_eq!(got.message_id(), sent.message_id());
    assert_eq!(got.timestamp(), sent.timestamp());
    assert_eq!(got.kind(), sent.kind());
    assert_eq!(got.user_id(), sent.user_id());
    assert_eq!(got.app_id(), sent.app_id());
    assert_eq!(got.cluster_id(), sent.cluster_id());

    // Canonical view: slots filled, AMQP-only properties kept out of the
    // user headers.
    let mut s2 = b.broker().session("test", ConnId(u64::MAX));
    s2.subscribe(Subscribe::temporary(
        AddressFilter::new("canon.props").unwrap(),
    ))
    .unwrap();
    publish(&ch, "amq.topic", "canon.props", b"x", sent.clone()).await;
    let d = tokio::time::timeout(WAIT, s2.deliveries().recv())
        .await
        .unwrap()
        .unwrap();
    let p = &d.message.properties;
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(p.correlation_id.as_deref(), Some(&b"corr-1"[..]));
    assert_eq!(p.timestamp, Some(1_700_000_123_000));
    assert!(p.durable);
    assert!(d.message.headers.get("app-id").is_none());
    assert_eq!(
        p.extensions.get("amqp.app-id").and_then(Value::as_str),
        Some("shop")
    );
    b.stop().await;
}

// ---------------------------------------------------------------------------
// Cross-protocol through the core

#[tokio::test]
async fn amqp_to_core_and_core_to_amqp_bodies_are_byte_identical() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    let body: Vec<u8> = (0..=255u8).collect();

    let mut s = b.broker().session("test", ConnId(u64::MAX));
    s.subscribe(Subscribe::temporary(AddressFilter::new("x.*.out").unwrap()))
        .unwrap();
    publish(
        &ch,
        "amq.topic",
        "x.1.out",
        &body,
        BasicProperties::default(),
    )
    .await;
    let d = tokio::time::timeout(WAIT, s.deliveries().recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&d.message.body[..], &body[..]);
    assert_eq!(&*d.message.address, "x.1.out");

    let q = declare(&ch, "", FieldTable::default()).await;
    ch.queue_bind(
        q.as_str().into(),
        "amq.topic".into(),
        "x.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut cons = consume(&ch, &q, true).await;
    b.broker()
        .publish(Message::multicast(
            &Address::new("x.in").unwrap(),
            Bytes::from(body.clone()),
        ))
        .unwrap();
    let d = next(&mut cons).await;
    assert_eq!(d.data, body);
    assert_eq!(d.exchange.as_str(), "amq.topic");
    assert_eq!(d.routing_key.as_str(), "x.in");

    // The default exchange is the anycast namespace.
    b.broker()
        .publish(Message::anycast(&q, Bytes::from_static(b"p2p")))
        .unwrap();
    assert_eq!(next(&mut cons).await.data, b"p2p");
    b.stop().await;
}

// ---------------------------------------------------------------------------
// Exchanges

#[tokio::test]
async fn every_exchange_type_routes_as_rabbitmq() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    let opts = ExchangeDeclareOptions::default();
    for (name, kind) in [
        ("ex.direct", ExchangeKind::Direct),
        ("ex.fanout", ExchangeKind::Fanout),
        ("ex.topic", ExchangeKind::Topic),
        ("ex.headers", ExchangeKind::Headers),
    ] {
        ch.exchange_declare(name.into(), kind, opts, FieldTable::default())
            .await
            .unwrap();
    }
    let q1 = declare(&ch, "", FieldTable::default()).await;
    let q2 = declare(&ch, "", FieldTable::default()).await;
    let bind = |q: String, ex: &'static str, key: &'static str, a: FieldTable| {
        let ch = ch.clone();
        async move {
            ch.queue_bind(
                q.as_str().into(),
                ex.into(),
                key.into(),
                QueueBindOptions::default(),
                a,
            )
            .await
            .unwrap()
        }
    };
    bind(q1.clone(), "ex.direct", "k1", FieldTable::default()).await;
    bind(q2.clone(), "ex.direct", "k2", FieldTable::default()).await;
    bind(q1.clone(), "ex.fanout", "", FieldTable::default()).await;
    bind(q2.clone(), "ex.fanout", "", FieldTable::default()).await;
    bind(q1.clone(), "ex.topic", "a.*", FieldTable::default()).await;
    bind(q2.clone(), "ex.topic", "a.#", FieldTable::default()).await;
    bind(
        q1.clone(),
        "ex.headers",
        "",
        args(&[("x-match", s("all")), ("f", s("pdf")), ("t", s("report"))]),
    )
    .await;
    bind(
        q2.clone(),
        "ex.headers",
        "",
        args(&[("x-match", s("any")), ("f", s("pdf")), ("t", s("log"))]),
    )
    .await;

    let p = BasicProperties::default;
    publish(&ch, "ex.direct", "k1", b"d1", p()).await;
    publish(&ch, "ex.fanout", "whatever", b"f", p()).await;
    publish(&ch, "ex.topic", "a.b.c", b"t-deep", p()).await;
    publish(&ch, "ex.topic", "a.b", b"t-one", p()).await;
    let h = |pairs: &[(&str, AMQPValue)]| p().with_headers(args(pairs));
    publish(
        &ch,
        "ex.headers",
        "",
        b"h-both",
        h(&[("f", s("pdf")), ("t", s("report"))]),
    )
    .await;
    publish(&ch, "ex.headers", "", b"h-any", h(&[("f", s("pdf"))])).await;

    let drain = |q: String| {
        let ch = ch.clone();
        async move {
            let mut out = Vec::new();
            while let Some(m) = get(&ch, &q).await {
                out.push(String::from_utf8(m.delivery.data).unwrap());
            }
            out
        }
    };
    assert_eq!(drain(q1.clone()).await, ["d1", "f", "t-one", "h-both"]);
    assert_eq!(
        drain(q2.clone()).await,
        ["f", "t-deep", "t-one", "h-both", "h-any"]
    );

    // Built-ins exist; amq.* names are reserved.
    for x in [
        "amq.direct",
        "amq.fanout",
        "amq.topic",
        "amq.headers",
        "amq.match",
    ] {
        ch.exchange_declare(
            x.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    let err = ch
        .exchange_declare(
            "amq.mine".into(),
            ExchangeKind::Direct,
            opts,
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ACCESS_REFUSED"), "{err}");
    b.stop().await;
}

#[tokio::test]
async fn exchange_to_exchange_bindings_and_delete_if_unused() {
    let b = TestBroker::start().await;
    let (c, ch) = channel(&b).await;
    let o = ExchangeDeclareOptions::default();
    ch.exchange_declare("src".into(), ExchangeKind::Topic, o, FieldTable::default())
        .await
        .unwrap();
    ch.exchange_declare("dst".into(), ExchangeKind::Fanout, o, FieldTable::default())
        .await
        .unwrap();
    ch.exchange_bind(
        "dst".into(),
        "src".into(),
        "logs.#".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let q = declare(&ch, "", FieldTable::default()).await;
    ch.queue_bind(
        q.as_str().into(),
        "dst".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish(&ch, "src", "logs.error", b"e2e", BasicProperties::default()).await;
    publish(&ch, "src", "metrics.cpu", b"no", BasicProperties::default()).await;
    assert_eq!(get(&ch, &q).await.unwrap().delivery.data, b"e2e");
    assert!(get(&ch, &q).await.is_none());
    let err = ch
        .exchange_delete(
            "src".into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("PRECONDITION_FAILED"), "{err}");
    let ch = c.create_channel().await.unwrap();
    ch.exchange_unbind(
        "dst".into(),
        "src".into(),
        "logs.#".into(),
        ExchangeUnbindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_delete(
        "src".into(),
        ExchangeDeleteOptions {
            if_unused: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    b.stop().await;
}

// ---------------------------------------------------------------------------
// Queues

#[tokio::test]
async fn ttl_and_dead_letter_exchange_write_x_death() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    ch.exchange_declare(
        "dlx".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let dead = declare(&ch, "dead", FieldTable::default()).await;
    ch.queue_bind(
        dead.as_str().into(),
        "dlx".into(),
        "expired".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare(
        &ch,
        "short-lived",
        args(&[
            ("x-message-ttl", AMQPValue::LongInt(50)),
            ("x-dead-letter-exchange", s("dlx")),
            ("x-dead-letter-routing-key", s("expired")),
        ]),
    )
    .await;
    publish(&ch, "", "short-lived", b"old", BasicProperties::default()).await;
    let mut cons = consume(&ch, &dead, true).await;
    let d = next(&mut cons).await;
    assert_eq!(d.data, b"old");
    assert_eq!(d.routing_key.as_str(), "expired");
    let h = d.properties.headers().clone().unwrap();
    let deaths = match h.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        other => panic!("x-death is {other:?}"),
    };
    let AMQPValue::FieldTable(first) = &deaths[0] else {
        panic!("x-death entry is not a table")
    };
    assert_eq!(first.inner().get("reason"), Some(&s("expired")));
    assert_eq!(first.inner().get("queue"), Some(&s("short-lived")));
    assert!(matches!(
        first.inner().get("count"),
        Some(AMQPValue::LongLongInt(1))
    ));
    assert_eq!(h.inner().get("x-first-death-reason"), Some(&s("expired")));
    assert_eq!(
        h.inner().get("x-first-death-queue"),
        Some(&s("short-lived"))
    );
    b.stop().await;
}

#[tokio::test]
async fn max_length_overflow_priority_and_single_active_consumer() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    // drop-head keeps the newest.
    declare(&ch, "ml", args(&[("x-max-length", AMQPValue::LongInt(2))])).await;
    for m in ["1", "2", "3"] {
        publish(&ch, "", "ml", m.as_bytes(), BasicProperties::default()).await;
    }
    assert_eq!(get(&ch, "ml").await.unwrap().delivery.data, b"2");
    assert_eq!(get(&ch, "ml").await.unwrap().delivery.data, b"3");
    // max bytes.
    declare(
        &ch,
        "mb",
        args(&[("x-max-length-bytes", AMQPValue::LongInt(5))]),
    )
    .await;
    for m in ["aaa", "bbb"] {
        publish(&ch, "", "mb", m.as_bytes(), BasicProperties::default()).await;
    }
    assert_eq!(get(&ch, "mb").await.unwrap().delivery.data, b"bbb");
    assert!(get(&ch, "mb").await.is_none());
    // reject-publish: the confirm is a nack.
    let cch = _c.create_channel().await.unwrap();
    cch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare(
        &cch,
        "rp",
        args(&[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", s("reject-publish")),
        ]),
    )
    .await;
    let c1 = cch
        .basic_publish(
            "".into(),
            "rp".into(),
            BasicPublishOptions::default(),
            b"1",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let c2 = cch
        .basic_publish(
            "".into(),
            "rp".into(),
            BasicPublishOptions::default(),
            b"2",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(c1.is_ack());
    assert!(c2.is_nack());
    // priorities.
    declare(
        &ch,
        "prio",
        args(&[("x-max-priority", AMQPValue::ShortShortUInt(9))]),
    )
    .await;
    for (body, p) in [("low", 1u8), ("high", 8), ("mid", 4)] {
        publish(
            &ch,
            "",
            "prio",
            body.as_bytes(),
            BasicProperties::default().with_priority(p),
        )
        .await;
    }
    let order: Vec<Vec<u8>> = [0, 1, 2].iter().map(|_| Vec::new()).collect();
    let mut order = order;
    for slot in order.iter_mut() {
        *slot = get(&ch, "prio").await.unwrap().delivery.data;
    }
    assert_eq!(order, [b"high".to_vec(), b"mid".to_vec(), b"low".to_vec()]);
    // single active consumer: only the first consumer receives.
    declare(
        &ch,
        "sac",
        args(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await;
    let mut first = consume(&ch, "sac", true).await;
    let ch2 = _c.create_channel().await.unwrap();
    let mut second = consume(&ch2, "sac", true).await;
    for m in ["a", "b", "c"] {
        publish(&ch, "", "sac", m.as_bytes(), BasicProperties::default()).await;
    }
    for want in ["a", "b", "c"] {
        assert_eq!(next(&mut first).await.data, want.as_bytes());
    }
    nothing(&mut second).await;
    // x-expires: an unused queue goes away.
    declare(&ch, "exp", args(&[("x-expires", AMQPValue::LongInt(100))])).await;
    assert!(
        switchyard_testkit::eventually(WAIT, || b.broker().queue_info("exp").is_none()).await,
        "x-expires queue deleted"
    );
    b.stop().await;
}

#[tokio::test]
async fn redeclare_with_other_arguments_is_precondition_failed() {
    let b = TestBroker::start().await;
    let (c, ch) = channel(&b).await;
    declare(&ch, "eq", args(&[("x-max-length", AMQPValue::LongInt(5))])).await;
    declare(&ch, "eq", args(&[("x-max-length", AMQPValue::LongInt(5))])).await;
    let err = ch
        .queue_declare(
            "eq".into(),
            QueueDeclareOptions::default(),
            args(&[("x-max-length", AMQPValue::LongInt(6))]),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("PRECONDITION_FAILED"), "{err}");
    // Only the channel closed: the connection goes on.
    let ch = c.create_channel().await.unwrap();
    let err = ch
        .queue_declare(
            "missing".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NOT_FOUND"), "{err}");
    assert!(c.status().connected());
    b.stop().await;
}

#[tokio::test]
async fn exclusive_and_auto_delete_lifecycle() {
    let b = TestBroker::start().await;
    let (c1, ch1) = channel(&b).await;
    let (_c2, ch2) = channel(&b).await;
    ch1.queue_declare(
        "excl".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let err = ch2
        .basic_consume(
            "excl".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("RESOURCE_LOCKED"), "{err}");
    let ch2 = _c2.create_channel().await.unwrap();
    ch2.queue_declare(
        "auto".into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let cons = consume(&ch2, "auto", true).await;
    ch2.basic_cancel(cons.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    assert!(switchyard_testkit::eventually(WAIT, || b.broker().queue_info("auto").is_none()).await);
    c1.close(200, "bye".into()).await.unwrap();
    assert!(switchyard_testkit::eventually(WAIT, || b.broker().queue_info("excl").is_none()).await);
    // Server-named queues.
    let q = declare(&ch2, "", FieldTable::default()).await;
    assert!(q.starts_with("amq.gen-"), "{q}");
    b.stop().await;
}

#[tokio::test]
async fn purge_and_delete_report_message_counts() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "pq", FieldTable::default()).await;
    for _ in 0..3 {
        publish(&ch, "", "pq", b"x", BasicProperties::default()).await;
    }
    let st = ch
        .queue_declare(
            "pq".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(st.message_count(), 3);
    assert_eq!(
        ch.queue_purge("pq".into(), QueuePurgeOptions::default())
            .await
            .unwrap(),
        3
    );
    publish(&ch, "", "pq", b"x", BasicProperties::default()).await;
    let err = ch
        .queue_delete(
            "pq".into(),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("PRECONDITION_FAILED"), "{err}");
    let ch = _c.create_channel().await.unwrap();
    assert_eq!(
        ch.queue_delete("pq".into(), QueueDeleteOptions::default())
            .await
            .unwrap(),
        1
    );
    b.stop().await;
}

// ---------------------------------------------------------------------------
// Consuming

#[tokio::test]
async fn prefetch_gives_fair_dispatch_across_two_consumers() {
    let b = TestBroker::start().await;
    let (c, ch1) = channel(&b).await;
    let ch2 = c.create_channel().await.unwrap();
    declare(&ch1, "work", FieldTable::default()).await;
    for ch in [&ch1, &ch2] {
        ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    }
    let mut slow = consume(&ch1, "work", false).await;
    let mut fast = consume(&ch2, "work", false).await;
    for i in 0..10 {
        publish(
            &ch1,
            "",
            "work",
            format!("{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    // The slow consumer holds its one message; the fast one gets the rest.
    let held = next(&mut slow).await;
    let mut fast_count = 0;
    for _ in 0..9 {
        let d = next(&mut fast).await;
        d.acker.ack(BasicAckOptions::default()).await.unwrap();
        fast_count += 1;
    }
    assert_eq!(fast_count, 9);
    nothing(&mut slow).await;
    held.acker.ack(BasicAckOptions::default()).await.unwrap();
    b.stop().await;
}

#[tokio::test]
async fn global_qos_limits_the_channel_across_consumers() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "g1", FieldTable::default()).await;
    declare(&ch, "g2", FieldTable::default()).await;
    ch.basic_qos(2, BasicQosOptions { global: true })
        .await
        .unwrap();
    for q in ["g1", "g2"] {
        for i in 0..3 {
            publish(
                &ch,
                "",
                q,
                format!("{q}-{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await;
        }
    }
    let mut a = consume(&ch, "g1", false).await;
    let mut c = consume(&ch, "g2", false).await;
    let first = next(&mut a).await;
    let second = next(&mut a).await;
    nothing(&mut c).await;
    nothing(&mut a).await;
    first.acker.ack(BasicAckOptions::default()).await.unwrap();
    second.acker.ack(BasicAckOptions::default()).await.unwrap();
    let mut seen = 2;
    while seen < 6 {
        let d = tokio::select! {
            d = next(&mut a) => d,
            d = next(&mut c) => d,
        };
        d.acker.ack(BasicAckOptions::default()).await.unwrap();
        seen += 1;
    }
    b.stop().await;
}

#[tokio::test]
async fn nack_reject_requeue_redeliver_with_the_flag_and_recover() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "rq", FieldTable::default()).await;
    publish(&ch, "", "rq", b"m", BasicProperties::default()).await;
    let mut cons = consume(&ch, "rq", false).await;
    let d = next(&mut cons).await;
    assert!(!d.redelivered);
    d.acker
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
        .unwrap();
    let d = next(&mut cons).await;
    assert!(d.redelivered);
    d.acker
        .reject(BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    let d = next(&mut cons).await;
    assert!(d.redelivered);
    ch.basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .unwrap();
    let d = next(&mut cons).await;
    assert!(d.redelivered);
    d.acker
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    nothing(&mut cons).await;
    assert_eq!(b.broker().queue_info("rq").unwrap().messages, 0);

    // ack multiple settles everything up to the tag.
    for i in 0..3 {
        publish(
            &ch,
            "",
            "rq",
            format!("{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    let mut last = None;
    for _ in 0..3 {
        last = Some(next(&mut cons).await);
    }
    last.unwrap()
        .acker
        .ack(BasicAckOptions { multiple: true })
        .await
        .unwrap();
    assert!(
        switchyard_testkit::eventually(WAIT, || b.broker().queue_info("rq").unwrap().unacked == 0)
            .await
    );
    b.stop().await;
}

#[tokio::test]
async fn basic_get_returns_counts_and_empty() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "gq", FieldTable::default()).await;
    assert!(
        ch.basic_get("gq".into(), BasicGetOptions::default())
            .await
            .unwrap()
            .is_none()
    );
    publish(&ch, "", "gq", b"a", BasicProperties::default()).await;
    publish(&ch, "", "gq", b"b", BasicProperties::default()).await;
    let m = ch
        .basic_get("gq".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.delivery.data, b"a");
    assert_eq!(m.message_count, 1);
    m.delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
        .unwrap();
    let m = ch
        .basic_get("gq".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.delivery.data, b"a");
    assert!(m.delivery.redelivered);
    m.delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    b.stop().await;
}

#[tokio::test]
async fn server_cancels_consumers_of_a_deleted_queue() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "doomed", FieldTable::default()).await;
    let mut cons = consume(&ch, "doomed", true).await;
    b.broker()
        .delete_queue("doomed", false, false, None)
        .unwrap();
    let end = tokio::time::timeout(WAIT, cons.next())
        .await
        .expect("consumer ends");
    assert!(
        end.is_none(),
        "consumer stream ends after basic.cancel: {end:?}"
    );
    b.stop().await;
}

// ---------------------------------------------------------------------------
// Publishing

#[tokio::test]
async fn mandatory_unroutable_is_returned_and_confirms_ack() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = ch
        .basic_publish(
            "".into(),
            "nobody-home".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"lost",
            BasicProperties::default().with_message_id("m1".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    let ret = confirm.take_message().expect("basic.return");
    assert_eq!(ret.delivery.data, b"lost");
    assert_eq!(ret.reply_code, 312);
    assert_eq!(
        ret.delivery
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .as_str(),
        "m1"
    );
    declare(&ch, "here", FieldTable::default()).await;
    for _ in 0..50 {
        ch.basic_publish(
            "".into(),
            "here".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    assert!(ch.wait_for_confirms().await.unwrap().is_empty());
    assert_eq!(b.broker().queue_info("here").unwrap().messages, 50);
    b.stop().await;
}

#[tokio::test]
async fn transactions_commit_and_roll_back() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    declare(&ch, "txq", FieldTable::default()).await;
    ch.tx_select().await.unwrap();
    publish(&ch, "", "txq", b"1", BasicProperties::default()).await;
    assert_eq!(b.broker().queue_info("txq").unwrap().messages, 0);
    ch.tx_rollback().await.unwrap();
    assert_eq!(b.broker().queue_info("txq").unwrap().messages, 0);
    publish(&ch, "", "txq", b"2", BasicProperties::default()).await;
    ch.tx_commit().await.unwrap();
    assert_eq!(b.broker().queue_info("txq").unwrap().messages, 1);
    // Acks inside a transaction apply on commit.
    let mut cons = consume(&ch, "txq", false).await;
    let d = next(&mut cons).await;
    d.acker.ack(BasicAckOptions::default()).await.unwrap();
    ch.tx_rollback().await.unwrap();
    assert_eq!(b.broker().queue_info("txq").unwrap().unacked, 1);
    // lapin's acker acks once; ack the tag again on the channel.
    ch.basic_ack(d.delivery_tag, BasicAckOptions::default())
        .await
        .unwrap();
    ch.tx_commit().await.unwrap();
    assert_eq!(b.broker().queue_info("txq").unwrap().unacked, 0);
    b.stop().await;
}

#[tokio::test]
async fn a_1_mib_message_is_split_by_frame_max_and_arrives_whole() {
    let b = TestBroker::start().await;
    let uri = format!("amqp://guest:guest@{}/%2f?frame_max=8192", b.addr("amqp"));
    let c = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .unwrap();
    assert_eq!(c.configuration().frame_max(), 8192);
    let ch = c.create_channel().await.unwrap();
    declare(&ch, "big", FieldTable::default()).await;
    let body: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut cons = consume(&ch, "big", true).await;
    publish(&ch, "", "big", &body, BasicProperties::default()).await;
    let d = next(&mut cons).await;
    assert_eq!(d.data.len(), body.len());
    assert!(d.data == body);
    b.stop().await;
}

#[tokio::test]
async fn publishers_are_held_back_while_the_broker_is_blocked() {
    let b = TestBroker::start().await;
    let (_pc, publisher) = channel(&b).await;
    let (_cc, consumer) = channel(&b).await;
    declare(&consumer, "flow.q", FieldTable::default()).await;
    let mut deliveries = consumer
        .basic_consume(
            "flow.q".into(),
            "c".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let publish = |body: &'static [u8]| {
        let publisher = publisher.clone();
        async move {
            publisher
                .basic_publish(
                    "".into(),
                    "flow.q".into(),
                    BasicPublishOptions::default(),
                    body,
                    BasicProperties::default(),
                )
                .await
                .unwrap();
        }
    };
    publish(b"1").await;
    let got = tokio::time::timeout(WAIT, deliveries.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.data, b"1");

    b.broker().set_blocked(Some("test watermark".into()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // lapin itself holds publishes back once told connection.blocked.
    let pending = tokio::spawn(publish(b"2"));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), deliveries.next())
            .await
            .is_err(),
        "a publishing connection is not read while blocked"
    );
    // The consuming connection is not held back.
    b.broker()
        .publish(Message::anycast("flow.q", Bytes::from_static(b"core")))
        .unwrap();
    let got = tokio::time::timeout(WAIT, deliveries.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.data, b"core");

    b.broker().set_blocked(None);
    let got = tokio::time::timeout(WAIT, deliveries.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.data, b"2");
    pending.await.unwrap();
    b.stop().await;
}

// ---------------------------------------------------------------------------
// Cross-protocol request/reply (docs/protocol-mapping.md)

#[tokio::test]
async fn rpc_replies_cross_between_the_default_exchange_and_multicast() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;

    // An RPC server answering a request whose reply_to is a multicast
    // address (a NATS inbox): the default exchange names no such queue, so
    // the answer goes to that address.
    let mut s = b.broker().session("requester", ConnId(u64::MAX));
    s.subscribe(Subscribe::temporary(
        AddressFilter::new("_INBOX.abc.*").unwrap(),
    ))
    .unwrap();
    publish(
        &ch,
        "",
        "_INBOX.abc.1",
        b"answer",
        BasicProperties::default(),
    )
    .await;
    let d = tokio::time::timeout(WAIT, s.deliveries().recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&d.message.body[..], b"answer");
    assert_eq!(&*d.message.address, "_INBOX.abc.1");

    // A key that names a queue still goes only to the queue.
    let q = declare(&ch, "jobs.one", FieldTable::default()).await;
    s.subscribe(Subscribe::temporary(
        AddressFilter::new("jobs.one").unwrap(),
    ))
    .unwrap();
    publish(&ch, "", &q, b"job", BasicProperties::default()).await;
    assert_eq!(get(&ch, &q).await.unwrap().delivery.data, b"job");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), s.deliveries().recv())
            .await
            .is_err(),
        "a publish to an existing queue must not reach multicast subscribers"
    );

    // An RPC client: its reply queue, named in reply_to, receives what a
    // responder of another protocol publishes to that address.
    let reply_q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .name()
        .to_string();
    let mut replies = consume(&ch, &reply_q, true).await;
    publish(
        &ch,
        "amq.topic",
        "svc.echo",
        b"request",
        BasicProperties::default()
            .with_reply_to(ShortString::from(reply_q.clone()))
            .with_correlation_id(ShortString::from("c1")),
    )
    .await;
    let mut answer = Message::multicast(
        &Address::new(&reply_q).unwrap(),
        Bytes::from_static(b"reply"),
    );
    answer.properties.correlation_id = Some(Bytes::from_static(b"c1"));
    // The publish and the binding are on the same connection, in order; a
    // confirm round trip makes sure the broker has processed both.
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    b.broker().publish(answer).unwrap();
    let d = next(&mut replies).await;
    assert_eq!(d.data, b"reply");
    assert_eq!(
        d.properties.correlation_id().as_ref().map(|c| c.as_str()),
        Some("c1")
    );
    b.stop().await;
}
