//! A scripted, frame-level MQTT peer (built on this crate's codec) for what
//! a well-behaved client library will not do: bad input, keep-alive
//! silence, exact flow-control and alias behaviour. Every bad-input test
//! checks the spec's reaction and that another client on the same broker
//! keeps working.

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
use switchyard_testkit::TestBroker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

struct Raw {
    s: TcpStream,
    buf: BytesMut,
    dec: Decoder,
    v: Version,
}

fn connect_packet(v: Version, id: &str, keep_alive: u16, props: Properties) -> Packet {
    Packet::Connect(Box::new(Connect {
        level: if v == Version::V5 { 5 } else { 4 },
        clean_start: true,
        keep_alive,
        properties: props,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
    }))
}

impl Raw {
    async fn open(addr: SocketAddr, v: Version) -> Raw {
        Raw {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
            dec: Decoder::with_version(v, 1 << 24),
            v,
        }
    }

    async fn connect(
        addr: SocketAddr,
        v: Version,
        id: &str,
        props: Properties,
    ) -> (Raw, codec::ConnAck) {
        let mut r = Raw::open(addr, v).await;
        r.send(&connect_packet(v, id, 60, props)).await;
        match r.recv().await {
            Some(Packet::ConnAck(c)) => (r, c),
            other => panic!("no CONNACK: {other:?}"),
        }
    }

    async fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        codec::encode(p, self.v, &mut out);
        self.s.write_all(&out).await.unwrap();
    }

    async fn send_raw(&mut self, b: &[u8]) {
        self.s.write_all(b).await.unwrap();
    }

    /// The next packet; `None` at EOF or after the timeout.
    async fn recv_within(&mut self, t: Duration) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            if let Some(p) = self.dec.decode(&mut self.buf).unwrap() {
                return Some(p);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.put_slice(&chunk[..n]),
            }
        }
    }

    async fn recv(&mut self) -> Option<Packet> {
        self.recv_within(WAIT).await
    }

    /// Reads until the server closes; returns what came before. Panics if
    /// it stays open.
    async fn closed(&mut self) -> Vec<Packet> {
        let mut got = vec![];
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            while let Ok(Some(p)) = self.dec.decode(&mut self.buf) {
                got.push(p);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return got,
                Ok(Ok(n)) => self.buf.put_slice(&chunk[..n]),
                Err(_) => panic!("the server did not close the connection; got {got:?}"),
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
}

fn publish(topic: &[u8], qos: QoS, id: u16, body: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        qos,
        topic: Bytes::copy_from_slice(topic),
        packet_id: id,
        payload: Bytes::from_static(body),
        ..Default::default()
    })
}

fn disconnect_reason(got: &[Packet]) -> Option<u8> {
    got.iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason),
        _ => None,
    })
}

/// Another client on the same broker still publishes and receives.
async fn others_keep_working(addr: SocketAddr) {
    let (mut sub, _) =
        Raw::connect(addr, Version::V311, "bystander-sub", Properties::default()).await;
    sub.subscribe("still/ok", QoS::AtLeastOnce).await;
    let (mut p, _) = Raw::connect(addr, Version::V5, "bystander-pub", Properties::default()).await;
    p.send(&publish(b"still/ok", QoS::AtLeastOnce, 3, b"alive"))
        .await;
    assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    match sub.recv().await {
        Some(Packet::Publish(m)) => assert_eq!(&m.payload[..], b"alive"),
        other => panic!("bystander got {other:?}"),
    }
}

async fn with_bystander(b: &TestBroker, f: impl AsyncFnOnce(SocketAddr)) {
    let addr = b.addr("mqtt");
    let (mut watcher, _) = Raw::connect(addr, Version::V5, "watcher", Properties::default()).await;
    watcher.subscribe("#", QoS::AtMostOnce).await;
    f(addr).await;
    // The watcher, connected all along, is unaffected.
    watcher.send(&Packet::PingReq).await;
    assert!(matches!(watcher.recv().await, Some(Packet::PingResp)));
    others_keep_working(addr).await;
}

#[tokio::test]
async fn malformed_remaining_length_closes_with_0x81() {
    let b = TestBroker::start().await;
    with_bystander(&b, async |addr| {
        let (mut c, _) = Raw::connect(addr, Version::V5, "bad-len", Properties::default()).await;
        c.send_raw(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).await;
        assert_eq!(disconnect_reason(&c.closed().await), Some(0x81));
        let (mut c, _) =
            Raw::connect(addr, Version::V311, "bad-len-3", Properties::default()).await;
        c.send_raw(&[0x30, 0x80, 0x80, 0x80, 0x80]).await;
        assert!(c.closed().await.is_empty(), "3.1.1: closed without a word");
    })
    .await;
    b.stop().await;
}

#[tokio::test]
async fn a_packet_over_the_limit_closes_with_0x95_before_it_is_buffered() {
    let b = TestBroker::start_with(|c| {
        c.listener_mut("mqtt")
            .unwrap()
            .options
            .insert("max_packet_size".into(), "2KiB".into());
    })
    .await;
    with_bystander(&b, async |addr| {
        let (mut c, ack) = Raw::connect(addr, Version::V5, "too-big", Properties::default()).await;
        assert_eq!(ack.properties.maximum_packet_size, Some(2048));
        // Only the header of a 1 MiB PUBLISH: refused on its declared size.
        let mut header = BytesMut::new();
        codec::put_header(&mut header, 0x30, 1 << 20);
        c.send_raw(&header).await;
        assert_eq!(disconnect_reason(&c.closed().await), Some(0x95));
    })
    .await;
    b.stop().await;
}

#[tokio::test]
async fn invalid_utf8_in_a_topic_closes_with_0x81() {
    let b = TestBroker::start().await;
    with_bystander(&b, async |addr| {
        let (mut c, _) = Raw::connect(addr, Version::V5, "bad-utf8", Properties::default()).await;
        c.send(&publish(&[b'a', 0xC3, 0x28], QoS::AtMostOnce, 0, b"x"))
            .await;
        assert_eq!(disconnect_reason(&c.closed().await), Some(0x81));
        let (mut c, _) = Raw::connect(addr, Version::V5, "nul-topic", Properties::default()).await;
        c.send(&publish(b"a\0b", QoS::AtMostOnce, 0, b"x")).await;
        assert_eq!(disconnect_reason(&c.closed().await), Some(0x81));
    })
    .await;
    b.stop().await;
}

#[tokio::test]
async fn publish_to_a_wildcard_topic_closes_with_0x90() {
    let b = TestBroker::start().await;
    with_bystander(&b, async |addr| {
        let (mut c, _) = Raw::connect(addr, Version::V5, "wild-pub", Properties::default()).await;
        c.send(&publish(b"a/+/c", QoS::AtLeastOnce, 1, b"x")).await;
        let got = c.closed().await;
        assert_eq!(disconnect_reason(&got), Some(0x90));
        assert!(!got.iter().any(|p| matches!(p, Packet::PubAck(_))));
        let (mut c, _) =
            Raw::connect(addr, Version::V311, "wild-pub-3", Properties::default()).await;
        c.send(&publish(b"a/#", QoS::AtMostOnce, 0, b"x")).await;
        assert!(c.closed().await.is_empty());
    })
    .await;
    b.stop().await;
}

#[tokio::test]
async fn a_second_connect_closes_with_0x82() {
    let b = TestBroker::start().await;
    with_bystander(&b, async |addr| {
        let (mut c, _) = Raw::connect(addr, Version::V5, "twice", Properties::default()).await;
        c.send(&connect_packet(
            Version::V5,
            "twice",
            60,
            Properties::default(),
        ))
        .await;
        assert_eq!(disconnect_reason(&c.closed().await), Some(0x82));
        let (mut c, _) = Raw::connect(addr, Version::V311, "twice-3", Properties::default()).await;
        c.send(&connect_packet(
            Version::V311,
            "twice-3",
            60,
            Properties::default(),
        ))
        .await;
        assert!(c.closed().await.is_empty());
    })
    .await;
    b.stop().await;
}

#[tokio::test]
async fn a_subscribe_with_an_empty_filter_closes_with_0x81() {
    let b = TestBroker::start().await;
    with_bystander(&b, async |addr| {
        let (mut c, _) =
            Raw::connect(addr, Version::V5, "empty-filter", Properties::default()).await;
        // packet id 1, no properties, filter "" with QoS 0
        c.send_raw(&[0x82, 6, 0, 1, 0, 0, 0, 0]).await;
        assert_eq!(disconnect_reason(&c.closed().await), Some(0x81));
        let (mut c, _) =
            Raw::connect(addr, Version::V311, "empty-filter-3", Properties::default()).await;
        c.send_raw(&[0x82, 5, 0, 1, 0, 0, 0]).await;
        assert!(c.closed().await.is_empty());
        // An invalid (non-empty) filter is refused in SUBACK, the
        // connection stays.
        let (mut c, _) = Raw::connect(addr, Version::V5, "bad-filter", Properties::default()).await;
        c.send(&Packet::Subscribe(Subscribe {
            packet_id: 2,
            properties: Properties::default(),
            filters: vec![
                ("a/#/b".into(), SubOptions::default()),
                ("ok/+".into(), SubOptions::default()),
            ],
        }))
        .await;
        match c.recv().await {
            Some(Packet::SubAck(s)) => assert_eq!(s.codes, vec![0x8F, 0x00]),
            other => panic!("{other:?}"),
        }
    })
    .await;
    b.stop().await;
}

#[tokio::test]
async fn the_first_packet_must_be_connect_and_the_level_known() {
    let b = TestBroker::start().await;
    with_bystander(&b, async |addr| {
        let mut c = Raw::open(addr, Version::V311).await;
        c.send(&Packet::PingReq).await;
        assert!(c.closed().await.is_empty());
        let mut c = Raw::open(addr, Version::V311).await;
        // CONNECT "MQTT" level 6
        c.send_raw(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 6, 2, 0, 60, 0, 0])
            .await;
        let got = c.closed().await;
        assert!(
            matches!(&got[..], [Packet::ConnAck(a)] if a.code == 1),
            "CONNACK 0x01: {got:?}"
        );
        // 3.1.1: an empty client id needs clean session [MQTT-3.1.3-8].
        let mut c = Raw::open(addr, Version::V311).await;
        let Packet::Connect(mut p) = connect_packet(Version::V311, "", 60, Properties::default())
        else {
            unreachable!()
        };
        p.clean_start = false;
        c.send(&Packet::Connect(p)).await;
        let got = c.closed().await;
        assert!(
            matches!(&got[..], [Packet::ConnAck(a)] if a.code == 2),
            "{got:?}"
        );
    })
    .await;
    b.stop().await;
}

#[tokio::test]
async fn keep_alive_silence_closes_the_connection_after_one_and_a_half_times() {
    let b = TestBroker::start().await;
    with_bystander(&b, async |addr| {
        for v in [Version::V311, Version::V5] {
            let mut c = Raw::open(addr, v).await;
            c.send(&connect_packet(v, "sleepy", 1, Properties::default()))
                .await;
            assert!(matches!(c.recv().await, Some(Packet::ConnAck(_))));
            let started = tokio::time::Instant::now();
            let got = c.closed().await;
            let took = started.elapsed();
            assert!(took >= Duration::from_millis(1400), "closed after {took:?}");
            assert!(took < Duration::from_secs(5), "closed after {took:?}");
            if v == Version::V5 {
                assert_eq!(disconnect_reason(&got), Some(0x8D));
            }
        }
        // A client that pings stays.
        let mut c = Raw::open(addr, Version::V311).await;
        c.send(&connect_packet(
            Version::V311,
            "pinger",
            1,
            Properties::default(),
        ))
        .await;
        assert!(matches!(c.recv().await, Some(Packet::ConnAck(_))));
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            c.send(&Packet::PingReq).await;
            assert!(matches!(c.recv().await, Some(Packet::PingResp)));
        }
    })
    .await;
    b.stop().await;
}

#[tokio::test]
async fn outbound_topic_aliases_and_receive_maximum() {
    let b = TestBroker::start().await;
    let addr = b.addr("mqtt");
    let props = Properties {
        topic_alias_maximum: Some(4),
        receive_maximum: Some(2),
        ..Default::default()
    };
    let (mut s, _) = Raw::connect(addr, Version::V5, "aliased", props).await;
    s.subscribe("al/#", QoS::AtLeastOnce).await;
    let (mut p, _) = Raw::connect(addr, Version::V311, "al-pub", Properties::default()).await;
    for i in 1..=4u16 {
        p.send(&publish(b"al/topic", QoS::AtLeastOnce, i, b"m"))
            .await;
        assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    }
    let mut ids = vec![];
    for i in 0..2 {
        let Some(Packet::Publish(m)) = s.recv().await else {
            panic!("no publish")
        };
        assert_eq!(m.properties.topic_alias, Some(1));
        if i == 0 {
            assert_eq!(&m.topic[..], b"al/topic", "the first sets the alias");
        } else {
            assert!(m.topic.is_empty(), "later ones use it");
        }
        ids.push(m.packet_id);
    }
    assert!(
        s.recv_within(Duration::from_millis(300)).await.is_none(),
        "receive maximum 2: the third waits for an ack"
    );
    s.send(&Packet::PubAck(Ack::new(ids[0], 0))).await;
    assert!(matches!(s.recv().await, Some(Packet::Publish(_))));
    assert!(s.recv_within(Duration::from_millis(300)).await.is_none());
    b.stop().await;
}

#[tokio::test]
async fn a_repeated_qos2_publish_is_routed_once() {
    let b = TestBroker::start_with(|c| {
        c.listener_mut("mqtt")
            .unwrap()
            .options
            .insert("receive_maximum".into(), 2.into());
    })
    .await;
    let addr = b.addr("mqtt");
    let (mut s, _) = Raw::connect(addr, Version::V311, "q2-sub", Properties::default()).await;
    s.subscribe("q2/#", QoS::ExactlyOnce).await;
    let (mut p, ack) = Raw::connect(addr, Version::V5, "q2-pub", Properties::default()).await;
    assert_eq!(ack.properties.receive_maximum, Some(2));
    p.send(&publish(b"q2/x", QoS::ExactlyOnce, 7, b"once"))
        .await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(a)) if a.packet_id == 7));
    let Packet::Publish(mut again) = publish(b"q2/x", QoS::ExactlyOnce, 7, b"once") else {
        unreachable!()
    };
    again.dup = true;
    p.send(&Packet::Publish(again)).await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(a)) if a.packet_id == 7));
    p.send(&Packet::PubRel(Ack::new(7, 0))).await;
    assert!(
        matches!(p.recv().await, Some(Packet::PubComp(a)) if a.packet_id == 7 && a.reason == 0)
    );
    let Some(Packet::Publish(m)) = s.recv().await else {
        panic!()
    };
    assert_eq!(m.qos, QoS::ExactlyOnce);
    s.send(&Packet::PubRec(Ack::new(m.packet_id, 0))).await;
    assert!(matches!(s.recv().await, Some(Packet::PubRel(_))));
    s.send(&Packet::PubComp(Ack::new(m.packet_id, 0))).await;
    assert!(
        s.recv_within(Duration::from_millis(300)).await.is_none(),
        "never twice"
    );
    // More QoS 2 in flight than Receive Maximum: 0x93.
    for id in 1..=3 {
        p.send(&publish(b"q2/y", QoS::ExactlyOnce, id, b"x")).await;
    }
    let got = p.closed().await;
    assert_eq!(disconnect_reason(&got), Some(0x93));
    b.stop().await;
}

#[tokio::test]
async fn server_keep_alive_and_will_properties_v5() {
    let b = TestBroker::start_with(|c| {
        c.listener_mut("mqtt")
            .unwrap()
            .options
            .insert("max_keep_alive".into(), "10s".into());
    })
    .await;
    let addr = b.addr("mqtt");
    // Keep alive 0 (none) or over the maximum: the server's is imposed.
    let mut c = Raw::open(addr, Version::V5).await;
    c.send(&connect_packet(
        Version::V5,
        "ska",
        0,
        Properties::default(),
    ))
    .await;
    let Some(Packet::ConnAck(ack)) = c.recv().await else {
        panic!()
    };
    assert_eq!(ack.properties.server_keep_alive, Some(10));

    let (mut watcher, _) =
        Raw::connect(addr, Version::V5, "will-watch", Properties::default()).await;
    watcher.subscribe("wp/#", QoS::AtLeastOnce).await;
    let mut d = Raw::open(addr, Version::V5).await;
    let Packet::Connect(mut p) =
        connect_packet(Version::V5, "will-props", 60, Properties::default())
    else {
        unreachable!()
    };
    p.will = Some(codec::Will {
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "wp/x".into(),
        payload: Bytes::from_static(b"{\"gone\":true}"),
        properties: Properties {
            content_type: Some("application/json".into()),
            user_properties: vec![("why".into(), "test".into())],
            correlation_data: Some(Bytes::from_static(b"c")),
            ..Default::default()
        },
    });
    d.send(&Packet::Connect(p)).await;
    assert!(matches!(d.recv().await, Some(Packet::ConnAck(_))));
    drop(d);
    let Some(Packet::Publish(m)) = watcher.recv().await else {
        panic!("no will")
    };
    assert_eq!(&m.payload[..], b"{\"gone\":true}");
    assert_eq!(
        m.properties.content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(
        m.properties.user_properties,
        vec![("why".into(), "test".into())]
    );
    assert_eq!(m.properties.correlation_data.as_deref(), Some(&b"c"[..]));
    b.stop().await;
}
