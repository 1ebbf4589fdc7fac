//! The MQTT adapter driven by a public client, rumqttc (its 3.1.1 and 5.0
//! clients), against an in-process broker: the shared conformance checks,
//! then the MQTT features one by one.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use anyhow::{Context as _, Result, bail};
use async_trait::async_trait;
use bytes::Bytes;
use std::time::Duration;
use switchyard_core::Subscribe;
use switchyard_model::{Address, AddressFilter, ConnId, Message};
use switchyard_mqtt::topic::{address_to_topic, topic_to_address};
use switchyard_testkit::TestBroker;
use switchyard_testkit::conformance::{self, Received};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

mod v4 {
    pub use rumqttc::{
        AsyncClient, ConnAck, Event, LastWill, MqttOptions, Packet, Publish, QoS, Transport,
    };
}
mod v5 {
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::mqttbytes::v5::{
        ConnAck, LastWill, LastWillProperties, Packet, Publish, PublishProperties,
    };
    pub use rumqttc::v5::{AsyncClient, Event, MqttOptions};
}

// ---------- a 3.1.1 client ----------

struct C4 {
    client: v4::AsyncClient,
    rx: mpsc::UnboundedReceiver<Result<v4::Packet, String>>,
    task: tokio::task::JoinHandle<()>,
    connack: v4::ConnAck,
}

fn opts4(b: &TestBroker, id: &str, clean: bool) -> v4::MqttOptions {
    let a = b.addr("mqtt");
    let mut o = v4::MqttOptions::new(id, a.ip().to_string(), a.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(clean);
    o.set_max_packet_size(4 << 20, 4 << 20);
    o
}

async fn start4(o: v4::MqttOptions) -> C4 {
    let (client, mut el) = v4::AsyncClient::new(o, 1000);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(v4::Event::Incoming(p)) => {
                    if tx.send(Ok(p)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    let connack = loop {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(Ok(v4::Packet::ConnAck(c)))) => break c,
            Ok(Some(Ok(_))) => {}
            other => panic!("no CONNACK: {other:?}"),
        }
    };
    C4 {
        client,
        rx,
        task,
        connack,
    }
}

async fn c4(b: &TestBroker, id: &str) -> C4 {
    start4(opts4(b, id, true)).await
}

impl C4 {
    /// The next packet matching `f`, skipping others.
    async fn wait<T>(&mut self, what: &str, mut f: impl FnMut(v4::Packet) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ok(p))) => {
                    if let Some(t) = f(p) {
                        return t;
                    }
                }
                other => panic!("waiting for {what}: {other:?}"),
            }
        }
    }

    async fn publish_msg(&mut self, timeout: Duration) -> Option<v4::Publish> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ok(v4::Packet::Publish(p)))) => return Some(p),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_))) | Ok(None) | Err(_) => return None,
            }
        }
    }

    async fn sub(&mut self, filter: &str, qos: v4::QoS) {
        self.client.subscribe(filter, qos).await.unwrap();
        self.wait("SUBACK", |p| {
            matches!(p, v4::Packet::SubAck(_)).then_some(())
        })
        .await;
    }

    async fn pub_acked(&mut self, topic: &str, qos: v4::QoS, retain: bool, body: &[u8]) {
        self.client
            .publish(topic, qos, retain, body.to_vec())
            .await
            .unwrap();
        match qos {
            v4::QoS::AtMostOnce => {
                // A ping round trip: the broker has read everything before.
                self.ping().await;
            }
            v4::QoS::AtLeastOnce => {
                self.wait("PUBACK", |p| {
                    matches!(p, v4::Packet::PubAck(_)).then_some(())
                })
                .await
            }
            v4::QoS::ExactlyOnce => {
                self.wait("PUBCOMP", |p| {
                    matches!(p, v4::Packet::PubComp(_)).then_some(())
                })
                .await
            }
        }
    }

    async fn ping(&mut self) {
        // rumqttc has no explicit ping; subscribe/unsubscribe round trip instead.
        self.client.unsubscribe("switchyard/none").await.unwrap();
        self.wait("UNSUBACK", |p| {
            matches!(p, v4::Packet::UnsubAck(_)).then_some(())
        })
        .await;
    }

    /// Drops the connection without DISCONNECT.
    fn kill(self) {
        self.task.abort();
    }

    /// Waits for the connection to end (server closed it).
    async fn closed(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Err(e))) => return e,
                Ok(None) => return "ended".into(),
                Ok(Some(Ok(_))) => {}
                Err(_) => panic!("the connection was not closed"),
            }
        }
    }
}

// ---------- a 5.0 client ----------

struct C5 {
    client: v5::AsyncClient,
    rx: mpsc::UnboundedReceiver<Result<v5::Packet, String>>,
    task: tokio::task::JoinHandle<()>,
    connack: v5::ConnAck,
}

fn opts5(b: &TestBroker, id: &str) -> v5::MqttOptions {
    let a = b.addr("mqtt");
    let mut o = v5::MqttOptions::new(id, a.ip().to_string(), a.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(Some(4 << 20));
    o
}

async fn start5(o: v5::MqttOptions) -> C5 {
    let (client, mut el) = v5::AsyncClient::new(o, 1000);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(v5::Event::Incoming(p)) => {
                    if tx.send(Ok(p)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    let connack = loop {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(Ok(v5::Packet::ConnAck(c)))) => break c,
            Ok(Some(Ok(_))) => {}
            other => panic!("no CONNACK: {other:?}"),
        }
    };
    C5 {
        client,
        rx,
        task,
        connack,
    }
}

async fn c5(b: &TestBroker, id: &str) -> C5 {
    start5(opts5(b, id)).await
}

impl C5 {
    async fn wait<T>(&mut self, what: &str, mut f: impl FnMut(v5::Packet) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ok(p))) => {
                    if let Some(t) = f(p) {
                        return t;
                    }
                }
                other => panic!("waiting for {what}: {other:?}"),
            }
        }
    }

    async fn publish_msg(&mut self, timeout: Duration) -> Option<v5::Publish> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ok(v5::Packet::Publish(p)))) => return Some(p),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_))) | Ok(None) | Err(_) => return None,
            }
        }
    }

    async fn sub(&mut self, filter: &str, qos: v5::QoS) -> Vec<u8> {
        self.client.subscribe(filter, qos).await.unwrap();
        self.wait("SUBACK", |p| match p {
            v5::Packet::SubAck(s) => Some(
                s.return_codes
                    .iter()
                    .map(|c| match c {
                        rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(q) => *q as u8,
                        _ => 0x80,
                    })
                    .collect(),
            ),
            _ => None,
        })
        .await
    }

    async fn pub_props(
        &mut self,
        topic: &str,
        qos: v5::QoS,
        retain: bool,
        body: &[u8],
        props: v5::PublishProperties,
    ) {
        self.client
            .publish_with_properties(topic, qos, retain, body.to_vec(), props)
            .await
            .unwrap();
        match qos {
            v5::QoS::AtMostOnce => {
                self.client.unsubscribe("switchyard/none").await.unwrap();
                self.wait("UNSUBACK", |p| {
                    matches!(p, v5::Packet::UnsubAck(_)).then_some(())
                })
                .await
            }
            v5::QoS::AtLeastOnce => {
                self.wait("PUBACK", |p| {
                    matches!(p, v5::Packet::PubAck(_)).then_some(())
                })
                .await
            }
            v5::QoS::ExactlyOnce => {
                self.wait("PUBCOMP", |p| {
                    matches!(p, v5::Packet::PubComp(_)).then_some(())
                })
                .await
            }
        }
    }

    async fn closed(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Err(e))) => return e,
                Ok(None) => return "ended".into(),
                Ok(Some(Ok(v5::Packet::Disconnect(d)))) => return format!("{:?}", d.reason_code),
                Ok(Some(Ok(_))) => {}
                Err(_) => panic!("the connection was not closed"),
            }
        }
    }

    fn kill(self) {
        self.task.abort();
    }
}

fn body_of(p: &v4::Publish) -> &[u8] {
    &p.payload
}

// ---------- conformance ----------

struct Conf4(C4, u64, Vec<(u64, String)>);

#[async_trait]
impl conformance::Client for Conf4 {
    async fn subscribe(&mut self, filter: &str) -> Result<u64> {
        let topic = address_to_topic(filter);
        self.0.sub(&topic, v4::QoS::AtLeastOnce).await;
        self.1 += 1;
        self.2.push((self.1, topic));
        Ok(self.1)
    }
    async fn unsubscribe(&mut self, id: u64) -> Result<()> {
        let pos = self.2.iter().position(|(i, _)| *i == id).context("id")?;
        let (_, t) = self.2.remove(pos);
        self.0.client.unsubscribe(t).await?;
        self.0
            .wait("UNSUBACK", |p| {
                matches!(p, v4::Packet::UnsubAck(_)).then_some(())
            })
            .await;
        Ok(())
    }
    async fn publish(&mut self, address: &str, body: Bytes, _h: &[(String, String)]) -> Result<()> {
        let topic = address_to_topic(address);
        self.0
            .pub_acked(&topic, v4::QoS::AtLeastOnce, false, &body)
            .await;
        Ok(())
    }
    async fn next(&mut self, timeout: Duration) -> Result<Option<Received>> {
        Ok(self.0.publish_msg(timeout).await.map(|p| Received {
            address: topic_to_address(&p.topic).unwrap(),
            body: p.payload,
            headers: vec![],
        }))
    }
    fn carries_headers(&self) -> bool {
        false
    }
}

struct Conf5(C5, u64, Vec<(u64, String)>);

#[async_trait]
impl conformance::Client for Conf5 {
    async fn subscribe(&mut self, filter: &str) -> Result<u64> {
        let topic = address_to_topic(filter);
        let codes = self.0.sub(&topic, v5::QoS::AtLeastOnce).await;
        if codes != [1] {
            bail!("SUBACK {codes:?}");
        }
        self.1 += 1;
        self.2.push((self.1, topic));
        Ok(self.1)
    }
    async fn unsubscribe(&mut self, id: u64) -> Result<()> {
        let pos = self.2.iter().position(|(i, _)| *i == id).context("id")?;
        let (_, t) = self.2.remove(pos);
        self.0.client.unsubscribe(t).await?;
        self.0
            .wait("UNSUBACK", |p| {
                matches!(p, v5::Packet::UnsubAck(_)).then_some(())
            })
            .await;
        Ok(())
    }
    async fn publish(&mut self, address: &str, body: Bytes, h: &[(String, String)]) -> Result<()> {
        let topic = address_to_topic(address);
        let props = v5::PublishProperties {
            user_properties: h.to_vec(),
            ..Default::default()
        };
        self.0
            .pub_props(&topic, v5::QoS::AtLeastOnce, false, &body, props)
            .await;
        Ok(())
    }
    async fn next(&mut self, timeout: Duration) -> Result<Option<Received>> {
        Ok(self.0.publish_msg(timeout).await.map(|p| Received {
            address: topic_to_address(std::str::from_utf8(&p.topic).unwrap()).unwrap(),
            body: p.payload,
            headers: p.properties.map(|p| p.user_properties).unwrap_or_default(),
        }))
    }
    fn carries_headers(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn conformance_with_rumqttc_v311() {
    let b = TestBroker::start().await;
    let mut a = Conf4(c4(&b, "conf-a").await, 0, vec![]);
    let mut c = Conf4(c4(&b, "conf-b").await, 0, vec![]);
    conformance::run(b.broker(), &mut a, &mut c).await.unwrap();
    b.stop().await;
}

#[tokio::test]
async fn conformance_with_rumqttc_v5() {
    let b = TestBroker::start().await;
    let mut a = Conf5(c5(&b, "conf5-a").await, 0, vec![]);
    let mut c = Conf5(c5(&b, "conf5-b").await, 0, vec![]);
    conformance::run(b.broker(), &mut a, &mut c).await.unwrap();
    b.stop().await;
}

// ---------- QoS ----------

fn q4(n: u8) -> v4::QoS {
    match n {
        0 => v4::QoS::AtMostOnce,
        1 => v4::QoS::AtLeastOnce,
        _ => v4::QoS::ExactlyOnce,
    }
}

#[tokio::test]
async fn every_qos_both_ways_is_delivered_at_the_lower_qos() {
    let b = TestBroker::start().await;
    let mut sub = c4(&b, "qos-sub").await;
    let mut publ = c4(&b, "qos-pub").await;
    for s in 0..=2u8 {
        let topic = format!("qos/{s}");
        sub.sub(&topic, q4(s)).await;
        for p in 0..=2u8 {
            let body = format!("pub{p}-sub{s}");
            publ.pub_acked(&topic, q4(p), false, body.as_bytes()).await;
            let got = sub.publish_msg(WAIT).await.expect("delivered");
            assert_eq!(body_of(&got), body.as_bytes());
            assert_eq!(got.qos, q4(p.min(s)), "pub {p} sub {s}");
        }
    }
    // Nothing is delivered twice (QoS 2 especially).
    assert!(sub.publish_msg(Duration::from_millis(300)).await.is_none());
    b.stop().await;
}

#[tokio::test]
async fn messages_cross_to_and_from_the_core_byte_identical() {
    let b = TestBroker::start().await;
    let mut client = c5(&b, "x-proto").await;
    client.sub("from/core", v5::QoS::AtLeastOnce).await;
    let body = Bytes::from((0..=255u8).rev().collect::<Vec<_>>());
    let mut m = Message::multicast(&Address::new("from.core").unwrap(), body.clone());
    m.properties.durable = true;
    m.headers.push("h", "v");
    b.broker().publish(m).unwrap();
    let got = client.publish_msg(WAIT).await.unwrap();
    assert_eq!(got.payload, body);
    assert_eq!(got.qos, v5::QoS::AtLeastOnce, "durable → QoS 1");
    assert_eq!(
        got.properties.unwrap().user_properties,
        vec![("h".to_owned(), "v".to_owned())]
    );

    let mut s = b.broker().session("test", ConnId(u64::MAX - 1));
    s.subscribe(Subscribe::temporary(
        AddressFilter::new("to.core.*").unwrap(),
    ))
    .unwrap();
    let mut d = s.deliveries();
    client
        .pub_props(
            "to/core/x",
            v5::QoS::ExactlyOnce,
            false,
            &body,
            v5::PublishProperties {
                content_type: Some("application/octet-stream".into()),
                ..Default::default()
            },
        )
        .await;
    let got = tokio::time::timeout(WAIT, d.recv()).await.unwrap().unwrap();
    assert_eq!(got.message.body, body);
    assert_eq!(&*got.message.address, "to.core.x");
    assert!(got.message.properties.durable);
    assert_eq!(
        got.message.properties.content_type.as_deref(),
        Some("application/octet-stream")
    );
    b.stop().await;
}

// ---------- retained ----------

#[tokio::test]
async fn retained_messages_reach_later_subscribers_until_cleared() {
    let b = TestBroker::start().await;
    let mut p = c4(&b, "ret-pub").await;
    p.pub_acked("ret/a", v4::QoS::AtLeastOnce, true, b"kept-a")
        .await;
    p.pub_acked("ret/b", v4::QoS::AtMostOnce, true, b"kept-b")
        .await;
    p.pub_acked("ret/b", v4::QoS::AtLeastOnce, true, b"kept-b2")
        .await;
    let mut s = c4(&b, "ret-sub").await;
    s.sub("ret/+", v4::QoS::AtLeastOnce).await;
    let mut got = vec![];
    for _ in 0..2 {
        let m = s.publish_msg(WAIT).await.unwrap();
        assert!(m.retain, "retained on subscribe carries RETAIN");
        got.push(String::from_utf8(m.payload.to_vec()).unwrap());
    }
    got.sort();
    assert_eq!(got, ["kept-a", "kept-b2"]);
    // A live publish with RETAIN goes to current subscribers without it
    // [MQTT-3.3.1-9].
    p.pub_acked("ret/a", v4::QoS::AtLeastOnce, true, b"live")
        .await;
    let m = s.publish_msg(WAIT).await.unwrap();
    assert_eq!(&m.payload[..], b"live");
    assert!(!m.retain);
    // An empty retained publish clears.
    p.pub_acked("ret/a", v4::QoS::AtLeastOnce, true, b"").await;
    let _ = s.publish_msg(WAIT).await.unwrap();
    let mut s2 = c4(&b, "ret-sub2").await;
    s2.sub("ret/#", v4::QoS::AtMostOnce).await;
    let m = s2.publish_msg(WAIT).await.unwrap();
    assert_eq!(&m.payload[..], b"kept-b2");
    assert!(s2.publish_msg(Duration::from_millis(300)).await.is_none());
    b.stop().await;
}

#[tokio::test]
async fn retain_handling_and_retain_as_published_v5() {
    use rumqttc::v5::mqttbytes::v5::{Filter, RetainForwardRule};
    let b = TestBroker::start().await;
    let mut p = c5(&b, "rh-pub").await;
    p.pub_props("rh/x", v5::QoS::AtLeastOnce, true, b"r", Default::default())
        .await;
    let mut s = c5(&b, "rh-sub").await;
    let mut never = Filter::new("rh/#", v5::QoS::AtLeastOnce);
    never.retain_forward_rule = RetainForwardRule::Never;
    never.preserve_retain = true;
    s.client.subscribe_many(vec![never]).await.unwrap();
    s.wait("SUBACK", |p| {
        matches!(p, v5::Packet::SubAck(_)).then_some(())
    })
    .await;
    assert!(
        s.publish_msg(Duration::from_millis(300)).await.is_none(),
        "retain handling 2: nothing on subscribe"
    );
    p.pub_props(
        "rh/x",
        v5::QoS::AtLeastOnce,
        true,
        b"r2",
        Default::default(),
    )
    .await;
    let m = s.publish_msg(WAIT).await.unwrap();
    assert!(m.retain, "retain as published keeps the flag");
    b.stop().await;
}

// ---------- will ----------

#[tokio::test]
async fn a_will_is_published_when_the_connection_drops() {
    let b = TestBroker::start().await;
    let mut watcher = c4(&b, "will-watch").await;
    watcher.sub("will/#", v4::QoS::AtLeastOnce).await;
    let mut o = opts4(&b, "will-client", true);
    o.set_last_will(v4::LastWill::new(
        "will/gone",
        "bye",
        v4::QoS::AtLeastOnce,
        false,
    ));
    let dying = start4(o).await;
    // A clean DISCONNECT sends no will.
    let mut o2 = opts4(&b, "will-polite", true);
    o2.set_last_will(v4::LastWill::new(
        "will/polite",
        "x",
        v4::QoS::AtLeastOnce,
        false,
    ));
    let mut polite = start4(o2).await;
    polite.client.disconnect().await.unwrap();
    let _ = polite.closed().await;
    dying.kill();
    let m = watcher.publish_msg(WAIT).await.unwrap();
    assert_eq!(m.topic, "will/gone");
    assert_eq!(&m.payload[..], b"bye");
    assert!(
        watcher
            .publish_msg(Duration::from_millis(300))
            .await
            .is_none()
    );
    b.stop().await;
}

#[tokio::test]
async fn a_will_delay_holds_the_will_and_a_resumed_session_cancels_it() {
    let b = TestBroker::start().await;
    let mut watcher = c5(&b, "wd-watch").await;
    watcher.sub("wd/#", v5::QoS::AtLeastOnce).await;
    let will = |topic: &str| {
        v5::LastWill::new(
            topic,
            "late",
            v5::QoS::AtLeastOnce,
            false,
            Some(v5::LastWillProperties {
                delay_interval: Some(1),
                payload_format_indicator: None,
                message_expiry_interval: None,
                content_type: None,
                response_topic: None,
                correlation_data: None,
                user_properties: vec![],
            }),
        )
    };
    // Delayed: nothing at once, the will after about a second.
    let mut o = opts5(&b, "wd-1");
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(60));
    o.set_last_will(will("wd/one"));
    let c = start5(o).await;
    c.kill();
    let started = tokio::time::Instant::now();
    assert!(
        watcher
            .publish_msg(Duration::from_millis(500))
            .await
            .is_none()
    );
    let m = watcher.publish_msg(WAIT).await.unwrap();
    assert_eq!(&m.topic[..], b"wd/one");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // Resumed before the delay: no will.
    let mut o = opts5(&b, "wd-2");
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(60));
    o.set_last_will(will("wd/two"));
    start5(o.clone()).await.kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut o2 = opts5(&b, "wd-2");
    o2.set_clean_start(false);
    o2.set_session_expiry_interval(Some(60));
    let back = start5(o2).await;
    assert!(back.connack.session_present);
    assert!(
        watcher
            .publish_msg(Duration::from_millis(1500))
            .await
            .is_none()
    );
    b.stop().await;
}

// ---------- sessions ----------

#[tokio::test]
async fn a_persistent_session_receives_what_was_published_while_offline() {
    let b = TestBroker::start().await;
    let mut s = start4(opts4(&b, "persist", false)).await;
    assert!(!s.connack.session_present);
    s.sub("persist/#", v4::QoS::ExactlyOnce).await;
    s.client.disconnect().await.unwrap();
    let _ = s.closed().await;
    assert!(
        b.broker().queue_info("$mqtt.session.persist").is_some(),
        "the session is a durable queue"
    );
    let mut p = c4(&b, "persist-pub").await;
    p.pub_acked("persist/1", v4::QoS::AtLeastOnce, false, b"one")
        .await;
    p.pub_acked("persist/2", v4::QoS::ExactlyOnce, false, b"two")
        .await;
    p.pub_acked("persist/0", v4::QoS::AtMostOnce, false, b"zero")
        .await;
    let mut back = start4(opts4(&b, "persist", false)).await;
    assert!(back.connack.session_present, "session present");
    let mut got = vec![];
    for _ in 0..3 {
        let m = back.publish_msg(WAIT).await.expect("queued while offline");
        got.push((String::from_utf8(m.payload.to_vec()).unwrap(), m.qos));
    }
    assert_eq!(
        got,
        [
            ("one".to_owned(), v4::QoS::AtLeastOnce),
            ("two".to_owned(), v4::QoS::ExactlyOnce),
            ("zero".to_owned(), v4::QoS::AtMostOnce)
        ]
    );
    assert!(back.publish_msg(Duration::from_millis(300)).await.is_none());
    // clean session 1 ends it.
    back.client.disconnect().await.unwrap();
    let _ = back.closed().await;
    let fresh = start4(opts4(&b, "persist", true)).await;
    assert!(!fresh.connack.session_present);
    assert!(b.broker().queue_info("$mqtt.session.persist").is_none());
    b.stop().await;
}

#[tokio::test]
async fn session_expiry_deletes_the_session() {
    let b = TestBroker::start().await;
    let mut o = opts5(&b, "expiring");
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(1));
    let mut c = start5(o.clone()).await;
    c.sub("exp/#", v5::QoS::AtLeastOnce).await;
    c.client.disconnect().await.unwrap();
    let _ = c.closed().await;
    assert!(b.broker().queue_info("$mqtt.session.expiring").is_some());
    assert!(
        switchyard_testkit::eventually(Duration::from_secs(5), || b
            .broker()
            .queue_info("$mqtt.session.expiring")
            .is_none())
        .await
    );
    let back = start5(o).await;
    assert!(!back.connack.session_present);
    b.stop().await;
}

#[tokio::test]
async fn unacknowledged_messages_are_sent_again_with_dup_on_reconnect() {
    let b = TestBroker::start().await;
    let mut o = opts4(&b, "redeliver", false);
    o.set_manual_acks(true);
    let mut s = start4(o.clone()).await;
    s.sub("redo/#", v4::QoS::AtLeastOnce).await;
    let mut p = c4(&b, "redo-pub").await;
    p.pub_acked("redo/x", v4::QoS::AtLeastOnce, false, b"again")
        .await;
    let first = s.publish_msg(WAIT).await.unwrap();
    assert!(!first.dup);
    s.kill(); // never acknowledged
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut back = start4(o).await;
    assert!(back.connack.session_present);
    let again = back.publish_msg(WAIT).await.unwrap();
    assert_eq!(&again.payload[..], b"again");
    assert!(again.dup, "sent again with DUP set");
    assert_eq!(again.pkid, first.pkid, "with its original packet id");
    back.client.ack(&again).await.unwrap();
    back.client.disconnect().await.unwrap();
    let _ = back.closed().await;
    let mut o3 = opts4(&b, "redeliver", false);
    o3.set_manual_acks(true);
    let mut third = start4(o3).await;
    assert!(
        third
            .publish_msg(Duration::from_millis(500))
            .await
            .is_none(),
        "acknowledged: not sent again"
    );
    b.stop().await;
}

#[tokio::test]
async fn a_second_connect_with_the_same_client_id_takes_over() {
    let b = TestBroker::start().await;
    let mut first = c5(&b, "same-id").await;
    let _second = c5(&b, "same-id").await;
    let why = first.closed().await;
    assert!(why.contains("SessionTakenOver"), "{why}");
    let mut o4 = c4(&b, "same-v4").await;
    let _o4b = c4(&b, "same-v4").await;
    let _ = o4.closed().await;
    b.stop().await;
}

#[tokio::test]
async fn an_empty_client_id_gets_an_assigned_id_in_v5() {
    let b = TestBroker::start().await;
    let c = c5(&b, "").await;
    let id = c
        .connack
        .properties
        .as_ref()
        .and_then(|p| p.assigned_client_identifier.clone())
        .unwrap();
    assert!(!id.is_empty());
    let c4 = c4(&b, "").await;
    assert_eq!(c4.connack.code, rumqttc::ConnectReturnCode::Success);
    b.stop().await;
}

// ---------- subscriptions ----------

#[tokio::test]
async fn shared_subscriptions_split_the_messages() {
    let b = TestBroker::start().await;
    let mut a = c5(&b, "share-a").await;
    let mut c = c5(&b, "share-b").await;
    a.sub("$share/g/jobs/#", v5::QoS::AtLeastOnce).await;
    c.sub("$share/g/jobs/#", v5::QoS::AtLeastOnce).await;
    let mut p = c5(&b, "share-pub").await;
    for i in 0..20 {
        p.pub_props(
            "jobs/x",
            v5::QoS::AtLeastOnce,
            false,
            format!("{i}").as_bytes(),
            Default::default(),
        )
        .await;
    }
    let mut got = vec![];
    for cl in [&mut a, &mut c] {
        let mut n = 0;
        while let Some(m) = cl.publish_msg(Duration::from_millis(500)).await {
            got.push(
                String::from_utf8(m.payload.to_vec())
                    .unwrap()
                    .parse::<u32>()
                    .unwrap(),
            );
            n += 1;
        }
        assert!(n > 0, "each member gets some");
    }
    got.sort_unstable();
    assert_eq!(got, (0..20).collect::<Vec<_>>(), "each message once");
    b.stop().await;
}

#[tokio::test]
async fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let b = TestBroker::start().await;
    let mut all = c4(&b, "dollar-all").await;
    all.sub("#", v4::QoS::AtMostOnce).await;
    all.sub("+/load", v4::QoS::AtMostOnce).await;
    let mut sys = c4(&b, "dollar-sys").await;
    sys.sub("$SYS/#", v4::QoS::AtMostOnce).await;
    b.broker()
        .publish(Message::multicast(
            &Address::new("$SYS.load").unwrap(),
            Bytes::from_static(b"1"),
        ))
        .unwrap();
    let m = sys.publish_msg(WAIT).await.unwrap();
    assert_eq!(m.topic, "$SYS/load");
    assert!(all.publish_msg(Duration::from_millis(300)).await.is_none());
    // Clients may not publish to $SYS (acknowledged, dropped).
    let mut p = c4(&b, "dollar-pub").await;
    p.pub_acked("$SYS/load", v4::QoS::AtLeastOnce, false, b"fake")
        .await;
    assert!(sys.publish_msg(Duration::from_millis(300)).await.is_none());
    // Other $ topics are open, still hidden from '#'.
    p.pub_acked("$app/x", v4::QoS::AtLeastOnce, false, b"app")
        .await;
    assert!(all.publish_msg(Duration::from_millis(300)).await.is_none());
    b.stop().await;
}

#[tokio::test]
async fn no_local_and_subscription_identifiers_v5() {
    use rumqttc::v5::mqttbytes::v5::{Filter, SubscribeProperties};
    let b = TestBroker::start().await;
    let mut c = c5(&b, "nolocal").await;
    let mut f = Filter::new("nl/#", v5::QoS::AtLeastOnce);
    f.nolocal = true;
    c.client
        .subscribe_many_with_properties(
            vec![f],
            SubscribeProperties {
                id: Some(42),
                user_properties: vec![],
            },
        )
        .await
        .unwrap();
    c.wait("SUBACK", |p| {
        matches!(p, v5::Packet::SubAck(_)).then_some(())
    })
    .await;
    c.pub_props(
        "nl/x",
        v5::QoS::AtLeastOnce,
        false,
        b"mine",
        Default::default(),
    )
    .await;
    assert!(
        c.publish_msg(Duration::from_millis(300)).await.is_none(),
        "no local"
    );
    let mut other = c5(&b, "nolocal-other").await;
    other
        .pub_props(
            "nl/x",
            v5::QoS::AtLeastOnce,
            false,
            b"theirs",
            Default::default(),
        )
        .await;
    let m = c.publish_msg(WAIT).await.unwrap();
    assert_eq!(
        m.properties.unwrap().subscription_identifiers,
        vec![42usize]
    );
    b.stop().await;
}

// ---------- 5.0 properties ----------

#[tokio::test]
async fn user_properties_and_request_response_cross_protocols() {
    let b = TestBroker::start().await;
    let mut responder = c5(&b, "responder").await;
    responder.sub("svc/echo", v5::QoS::AtLeastOnce).await;
    let mut requester = c5(&b, "requester").await;
    requester
        .sub("replies/requester", v5::QoS::AtLeastOnce)
        .await;
    requester
        .pub_props(
            "svc/echo",
            v5::QoS::AtLeastOnce,
            false,
            b"ping",
            v5::PublishProperties {
                response_topic: Some("replies/requester".into()),
                correlation_data: Some(Bytes::from_static(b"\x00corr\xff")),
                user_properties: vec![("trace".into(), "t-1".into())],
                content_type: Some("text/plain".into()),
                ..Default::default()
            },
        )
        .await;
    let req = responder.publish_msg(WAIT).await.unwrap();
    let props = req.properties.unwrap();
    assert_eq!(props.user_properties, vec![("trace".into(), "t-1".into())]);
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    let rt = props.response_topic.unwrap();
    responder
        .pub_props(
            &rt,
            v5::QoS::AtLeastOnce,
            false,
            b"pong",
            v5::PublishProperties {
                correlation_data: props.correlation_data.clone(),
                ..Default::default()
            },
        )
        .await;
    let reply = requester.publish_msg(WAIT).await.unwrap();
    assert_eq!(&reply.payload[..], b"pong");
    assert_eq!(
        reply.properties.unwrap().correlation_data.as_deref(),
        Some(&b"\x00corr\xff"[..])
    );

    // The same request answered by an in-process (other protocol) responder.
    let mut s = b.broker().session("other", ConnId(u64::MAX - 2));
    s.subscribe(Subscribe::temporary(
        AddressFilter::new("svc.core").unwrap(),
    ))
    .unwrap();
    let mut d = s.deliveries();
    requester
        .pub_props(
            "svc/core",
            v5::QoS::AtMostOnce,
            false,
            b"q",
            v5::PublishProperties {
                response_topic: Some("replies/requester".into()),
                correlation_data: Some(Bytes::from_static(b"c2")),
                ..Default::default()
            },
        )
        .await;
    let got = tokio::time::timeout(WAIT, d.recv()).await.unwrap().unwrap();
    assert_eq!(
        got.message.properties.reply_to.as_deref(),
        Some("replies.requester")
    );
    let mut answer = Message::multicast(
        &Address::new(got.message.properties.reply_to.as_deref().unwrap()).unwrap(),
        Bytes::from_static(b"a2"),
    );
    answer.properties.correlation_id = got.message.properties.correlation_id.clone();
    b.broker().publish(answer).unwrap();
    let reply = requester.publish_msg(WAIT).await.unwrap();
    assert_eq!(&reply.payload[..], b"a2");
    assert_eq!(
        reply.properties.unwrap().correlation_data.as_deref(),
        Some(&b"c2"[..])
    );
    b.stop().await;
}

#[tokio::test]
async fn message_expiry_drops_stale_messages_and_counts_down() {
    let b = TestBroker::start().await;
    let mut o = opts5(&b, "expiry-sub");
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(60));
    let mut s = start5(o.clone()).await;
    s.sub("mx/#", v5::QoS::AtLeastOnce).await;
    s.client.disconnect().await.unwrap();
    let _ = s.closed().await;
    let mut p = c5(&b, "expiry-pub").await;
    let exp = |secs| v5::PublishProperties {
        message_expiry_interval: Some(secs),
        ..Default::default()
    };
    p.pub_props("mx/short", v5::QoS::AtLeastOnce, false, b"short", exp(1))
        .await;
    p.pub_props("mx/long", v5::QoS::AtLeastOnce, false, b"long", exp(100))
        .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut back = start5(o).await;
    let m = back.publish_msg(WAIT).await.unwrap();
    assert_eq!(&m.payload[..], b"long", "the expired one is gone");
    let left = m.properties.unwrap().message_expiry_interval.unwrap();
    assert!(
        (97..=99).contains(&left),
        "time left, not the original: {left}"
    );
    assert!(back.publish_msg(Duration::from_millis(300)).await.is_none());
    b.stop().await;
}

#[tokio::test]
async fn the_client_maximum_packet_size_is_respected() {
    let b = TestBroker::start().await;
    let mut o = opts5(&b, "small-client");
    o.set_max_packet_size(Some(200));
    let mut s = start5(o).await;
    s.sub("mps/#", v5::QoS::AtLeastOnce).await;
    let mut p = c5(&b, "big-pub").await;
    p.pub_props(
        "mps/big",
        v5::QoS::AtLeastOnce,
        false,
        &[7u8; 1000],
        Default::default(),
    )
    .await;
    p.pub_props(
        "mps/small",
        v5::QoS::AtLeastOnce,
        false,
        b"ok",
        Default::default(),
    )
    .await;
    let m = s.publish_msg(WAIT).await.unwrap();
    assert_eq!(
        &m.payload[..],
        b"ok",
        "the packet too large for it is dropped"
    );
    b.stop().await;
}

#[tokio::test]
async fn a_v5_client_publishes_with_topic_aliases() {
    let b = TestBroker::start().await;
    let mut s = c5(&b, "alias-sub").await;
    s.sub("alias/#", v5::QoS::AtLeastOnce).await;
    let mut p = c5(&b, "alias-pub").await;
    let with = |a| v5::PublishProperties {
        topic_alias: Some(a),
        ..Default::default()
    };
    p.pub_props(
        "alias/long/topic",
        v5::QoS::AtLeastOnce,
        false,
        b"1",
        with(3),
    )
    .await;
    p.pub_props("", v5::QoS::AtLeastOnce, false, b"2", with(3))
        .await;
    for want in [&b"1"[..], b"2"] {
        let m = s.publish_msg(WAIT).await.unwrap();
        assert_eq!(&m.topic[..], b"alias/long/topic");
        assert_eq!(&m.payload[..], want);
    }
    b.stop().await;
}

// ---------- WebSocket ----------

#[tokio::test]
async fn mqtt_over_websocket_works_like_tcp() {
    let b = TestBroker::start().await;
    let http = b.addr("http");
    let mut o = v4::MqttOptions::new(
        "ws-client",
        format!("ws://{}:{}/mqtt", http.ip(), http.port()),
        http.port(),
    );
    o.set_transport(v4::Transport::Ws);
    o.set_keep_alive(Duration::from_secs(30));
    let mut ws = start4(o).await;
    ws.sub("ws/#", v4::QoS::AtLeastOnce).await;
    let mut tcp = c4(&b, "ws-tcp").await;
    tcp.sub("tcp/#", v4::QoS::AtLeastOnce).await;
    tcp.pub_acked("ws/in", v4::QoS::AtLeastOnce, false, b"to ws")
        .await;
    assert_eq!(&ws.publish_msg(WAIT).await.unwrap().payload[..], b"to ws");
    ws.pub_acked("tcp/in", v4::QoS::ExactlyOnce, false, b"from ws")
        .await;
    assert_eq!(
        &tcp.publish_msg(WAIT).await.unwrap().payload[..],
        b"from ws"
    );
    b.stop().await;
}

#[tokio::test]
async fn a_session_resumed_with_expiry_zero_ends_with_that_connection() {
    let b = TestBroker::start().await;
    let mut o = opts5(&b, "resume-zero");
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(60));
    let mut c = start5(o).await;
    c.sub("rz/#", v5::QoS::AtLeastOnce).await;
    c.client.disconnect().await.unwrap();
    let _ = c.closed().await;
    let mut p = c5(&b, "rz-pub").await;
    p.pub_props(
        "rz/1",
        v5::QoS::AtLeastOnce,
        false,
        b"kept",
        Default::default(),
    )
    .await;
    let mut o = opts5(&b, "resume-zero");
    o.set_clean_start(false);
    o.set_session_expiry_interval(None);
    let mut back = start5(o).await;
    assert!(back.connack.session_present, "clean start 0 resumes it");
    assert_eq!(&back.publish_msg(WAIT).await.unwrap().payload[..], b"kept");
    back.client.disconnect().await.unwrap();
    let _ = back.closed().await;
    assert!(
        switchyard_testkit::eventually(Duration::from_secs(5), || b
            .broker()
            .queue_info("$mqtt.session.resume-zero")
            .is_none())
        .await,
        "expiry 0: the session ended with the connection"
    );
    b.stop().await;
}

#[tokio::test]
async fn publishers_are_held_back_while_the_broker_is_blocked() {
    let b = TestBroker::start().await;
    let mut consumer = c4(&b, "flow-consumer").await;
    consumer.sub("flow/x", v4::QoS::AtMostOnce).await;
    let mut publisher = c4(&b, "flow-publisher").await;
    publisher
        .pub_acked("flow/x", v4::QoS::AtMostOnce, false, b"1")
        .await;
    assert_eq!(body_of(&consumer.publish_msg(WAIT).await.unwrap()), b"1");

    b.broker().set_blocked(Some("test watermark".into()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    publisher
        .client
        .publish("flow/x", v4::QoS::AtMostOnce, false, b"2".to_vec())
        .await
        .unwrap();
    assert!(
        consumer
            .publish_msg(Duration::from_millis(300))
            .await
            .is_none(),
        "a publishing connection is not read while blocked"
    );
    // Consumers are not held back.
    b.broker()
        .publish(Message::multicast(
            &Address::new("flow.x").unwrap(),
            Bytes::from_static(b"core"),
        ))
        .unwrap();
    assert_eq!(body_of(&consumer.publish_msg(WAIT).await.unwrap()), b"core");

    b.broker().set_blocked(None);
    assert_eq!(body_of(&consumer.publish_msg(WAIT).await.unwrap()), b"2");
    b.stop().await;
}
