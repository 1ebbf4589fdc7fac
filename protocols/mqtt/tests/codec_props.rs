//! Codec properties: every packet of both versions round-trips, decoding is
//! the same however the bytes are split, and arbitrary bytes never panic.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use switchyard_mqtt::codec::{
    self, Ack, Auth, ConnAck, Connect, Context, DecodeError, Decoder, Disconnect, Packet,
    Properties, Publish, QoS, SubAck, SubOptions, Subscribe, UnsubAck, Unsubscribe, Version, Will,
};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z/+#$%. ]{0,12}",
        "\\PC{0,6}".prop_filter("no NUL", |s: &String| !s.contains('\0')),
    ]
}

fn nonempty() -> impl Strategy<Value = String> {
    "[a-z/+#$%.]{1,12}"
}

fn bin() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn user() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((text(), text()), 0..3)
}

/// Properties valid for `ctx` (5.0).
fn props(ctx: Context) -> BoxedStrategy<Properties> {
    let o8 = || proptest::option::of(0u8..=1);
    let nz16 = || proptest::option::of(1u16..);
    let nz32 = || proptest::option::of(1u32..);
    match ctx {
        Context::Connect => (
            proptest::option::of(any::<u32>()),
            nz16(),
            nz32(),
            proptest::option::of(any::<u16>()),
            o8(),
            o8(),
            user(),
        )
            .prop_map(|(sei, rm, mps, tam, rpi, rri, up)| Properties {
                session_expiry_interval: sei,
                receive_maximum: rm,
                maximum_packet_size: mps,
                topic_alias_maximum: tam,
                request_problem_information: rpi,
                request_response_information: rri,
                user_properties: up,
                ..Default::default()
            })
            .boxed(),
        Context::ConnAck => (
            (
                proptest::option::of(any::<u32>()),
                proptest::option::of(text()),
                proptest::option::of(any::<u16>()),
                nz16(),
                nz32(),
            ),
            (o8(), o8(), o8(), o8(), o8(), proptest::option::of(text())),
            user(),
        )
            .prop_map(
                |((sei, aci, ska, rm, mps), (mq, ra, wsa, sia, ssa, rs), up)| Properties {
                    session_expiry_interval: sei,
                    assigned_client_identifier: aci,
                    server_keep_alive: ska,
                    receive_maximum: rm,
                    maximum_packet_size: mps,
                    maximum_qos: mq,
                    retain_available: ra,
                    wildcard_subscription_available: wsa,
                    subscription_identifier_available: sia,
                    shared_subscription_available: ssa,
                    reason_string: rs,
                    user_properties: up,
                    ..Default::default()
                },
            )
            .boxed(),
        Context::Publish | Context::Will => (
            o8(),
            proptest::option::of(any::<u32>()),
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(bin()),
            user(),
            prop::collection::vec(1u32..=268_435_455, 0..3),
            (nz16(), proptest::option::of(any::<u32>())),
        )
            .prop_map(move |(pfi, mei, ct, rt, cd, up, ids, (ta, wdi))| {
                let publish = ctx == Context::Publish;
                Properties {
                    payload_format_indicator: pfi,
                    message_expiry_interval: mei,
                    content_type: ct,
                    response_topic: rt,
                    correlation_data: cd,
                    user_properties: up,
                    subscription_identifiers: if publish { ids } else { vec![] },
                    topic_alias: if publish { ta } else { None },
                    will_delay_interval: if publish { None } else { wdi },
                    ..Default::default()
                }
            })
            .boxed(),
        Context::Subscribe => (proptest::option::of(1u32..=268_435_455), user())
            .prop_map(|(id, up)| Properties {
                subscription_identifiers: id.into_iter().collect(),
                user_properties: up,
                ..Default::default()
            })
            .boxed(),
        Context::Disconnect => (
            proptest::option::of(any::<u32>()),
            proptest::option::of(text()),
            proptest::option::of(text()),
            user(),
        )
            .prop_map(|(sei, sr, rs, up)| Properties {
                session_expiry_interval: sei,
                server_reference: sr,
                reason_string: rs,
                user_properties: up,
                ..Default::default()
            })
            .boxed(),
        Context::Auth => (
            proptest::option::of(text()),
            proptest::option::of(bin()),
            proptest::option::of(text()),
            user(),
        )
            .prop_map(|(am, ad, rs, up)| Properties {
                authentication_method: am,
                authentication_data: ad,
                reason_string: rs,
                user_properties: up,
                ..Default::default()
            })
            .boxed(),
        Context::Unsubscribe => user()
            .prop_map(|up| Properties {
                user_properties: up,
                ..Default::default()
            })
            .boxed(),
        Context::PubAck | Context::SubAck | Context::UnsubAck => {
            (proptest::option::of(text()), user())
                .prop_map(|(rs, up)| Properties {
                    reason_string: rs,
                    user_properties: up,
                    ..Default::default()
                })
                .boxed()
        }
    }
}

fn p(v: Version, ctx: Context) -> BoxedStrategy<Properties> {
    if v == Version::V5 {
        props(ctx)
    } else {
        Just(Properties::default()).boxed()
    }
}

fn ack(v: Version) -> impl Strategy<Value = Ack> {
    let v5 = v == Version::V5;
    (1u16.., any::<u8>(), p(v, Context::PubAck)).prop_map(move |(id, r, props)| Ack {
        packet_id: id,
        reason: if v5 { r } else { 0 },
        properties: props,
    })
}

fn connect() -> impl Strategy<Value = Packet> {
    (
        prop_oneof![Just(3u8), Just(4u8), Just(5u8)],
        any::<bool>(),
        any::<u16>(),
    )
        .prop_flat_map(|(level, clean, ka)| {
            let v = if level == 5 {
                Version::V5
            } else {
                Version::V311
            };
            (
                Just((level, clean, ka)),
                p(v, Context::Connect),
                text(),
                proptest::option::of((qos(), any::<bool>(), text(), bin(), p(v, Context::Will))),
                proptest::option::of(text()),
                proptest::option::of(bin()),
            )
        })
        .prop_map(|((level, clean, ka), props, id, will, user, pass)| {
            let pass = if level != 5 && user.is_none() {
                None
            } else {
                pass
            };
            Packet::Connect(Box::new(Connect {
                level,
                clean_start: clean,
                keep_alive: ka,
                properties: props,
                client_id: id,
                will: will.map(|(qos, retain, topic, payload, properties)| Will {
                    qos,
                    retain,
                    topic,
                    payload,
                    properties,
                }),
                username: user,
                password: pass,
            }))
        })
}

fn packet(v: Version) -> BoxedStrategy<Packet> {
    let v5 = v == Version::V5;
    let publish = (
        qos(),
        any::<bool>(),
        any::<bool>(),
        nonempty(),
        1u16..,
        p(v, Context::Publish),
        bin(),
    )
        .prop_map(|(qos, dup, retain, topic, id, properties, payload)| {
            let q0 = qos == QoS::AtMostOnce;
            Packet::Publish(Publish {
                dup: dup && !q0,
                qos,
                retain,
                topic: Bytes::from(topic),
                packet_id: if q0 { 0 } else { id },
                properties,
                payload,
            })
        });
    let sub_opts =
        (qos(), any::<bool>(), any::<bool>(), 0u8..=2).prop_map(move |(q, nl, rap, rh)| {
            if v5 {
                SubOptions {
                    qos: q,
                    no_local: nl,
                    retain_as_published: rap,
                    retain_handling: rh,
                }
            } else {
                SubOptions {
                    qos: q,
                    ..Default::default()
                }
            }
        });
    let subscribe = (
        1u16..,
        p(v, Context::Subscribe),
        prop::collection::vec((nonempty(), sub_opts), 1..4),
    )
        .prop_map(|(id, properties, filters)| {
            Packet::Subscribe(Subscribe {
                packet_id: id,
                properties,
                filters,
            })
        });
    let mut all = vec![
        publish.boxed(),
        ack(v).prop_map(Packet::PubAck).boxed(),
        ack(v).prop_map(Packet::PubRec).boxed(),
        ack(v).prop_map(Packet::PubRel).boxed(),
        ack(v).prop_map(Packet::PubComp).boxed(),
        subscribe.boxed(),
        (
            1u16..,
            p(v, Context::SubAck),
            prop::collection::vec(any::<u8>(), 1..4),
        )
            .prop_map(|(id, properties, codes)| {
                Packet::SubAck(SubAck {
                    packet_id: id,
                    properties,
                    codes,
                })
            })
            .boxed(),
        (
            1u16..,
            p(v, Context::Unsubscribe),
            prop::collection::vec(nonempty(), 1..4),
        )
            .prop_map(|(id, properties, filters)| {
                Packet::Unsubscribe(Unsubscribe {
                    packet_id: id,
                    properties,
                    filters,
                })
            })
            .boxed(),
        (
            1u16..,
            p(v, Context::UnsubAck),
            prop::collection::vec(any::<u8>(), 1..4),
        )
            .prop_map(move |(id, properties, codes)| {
                Packet::UnsubAck(UnsubAck {
                    packet_id: id,
                    properties,
                    codes: if v5 { codes } else { vec![] },
                })
            })
            .boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        (any::<bool>(), any::<u8>(), p(v, Context::ConnAck))
            .prop_map(|(sp, code, properties)| {
                Packet::ConnAck(ConnAck {
                    session_present: sp,
                    code,
                    properties,
                })
            })
            .boxed(),
        (any::<u8>(), p(v, Context::Disconnect))
            .prop_map(move |(r, properties)| {
                Packet::Disconnect(Disconnect {
                    reason: if v5 { r } else { 0 },
                    properties,
                })
            })
            .boxed(),
    ];
    if v5 {
        all.push(
            (any::<u8>(), p(v, Context::Auth))
                .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }))
                .boxed(),
        );
    }
    proptest::strategy::Union::new(all).boxed()
}

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![Just(Version::V311), Just(Version::V5)]
}

fn encode_all(ps: &[Packet], v: Version) -> BytesMut {
    let mut out = BytesMut::new();
    for p in ps {
        codec::encode(p, v, &mut out);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_packet_round_trips(
        (v, ps) in version().prop_flat_map(|v| (Just(v), prop::collection::vec(packet(v), 1..4)))
    ) {
        let mut buf = encode_all(&ps, v);
        let total: usize = ps.iter().map(|p| codec::encoded_len(p, v)).sum();
        prop_assert_eq!(buf.len(), total);
        let mut d = Decoder::with_version(v, 1 << 20);
        for p in &ps {
            let got = d.decode(&mut buf).unwrap();
            prop_assert_eq!(got.as_ref(), Some(p));
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(d.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn connect_round_trips_and_sets_the_version(c in connect()) {
        let Packet::Connect(inner) = &c else { unreachable!() };
        let v = inner.version();
        let mut buf = BytesMut::new();
        codec::encode(&c, v, &mut buf);
        let mut d = Decoder::new(1 << 20);
        prop_assert_eq!(d.decode(&mut buf).unwrap(), Some(c.clone()));
        prop_assert_eq!(d.version(), Some(v));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn decoding_is_the_same_split_at_every_byte(
        (v, ps) in version().prop_flat_map(|v| (Just(v), prop::collection::vec(packet(v), 1..3)))
    ) {
        let bytes = encode_all(&ps, v).freeze();
        for split in 0..=bytes.len() {
            let mut d = Decoder::with_version(v, 1 << 20);
            let mut buf = BytesMut::from(&bytes[..split]);
            let mut got = vec![];
            while let Some(p) = d.decode(&mut buf).unwrap() {
                got.push(p);
            }
            buf.extend_from_slice(&bytes[split..]);
            while let Some(p) = d.decode(&mut buf).unwrap() {
                got.push(p);
            }
            prop_assert_eq!(&got, &ps);
            prop_assert!(buf.is_empty());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256), max in 0usize..512) {
        for mut d in [
            Decoder::new(max),
            Decoder::with_version(Version::V311, max),
            Decoder::with_version(Version::V5, max),
        ] {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = d.decode(&mut buf) {}
            let _ = d.shortfall(&buf);
        }
    }

    #[test]
    fn mutated_packets_never_panic(
        (v, p) in version().prop_flat_map(|v| (Just(v), packet(v))),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)
    ) {
        let mut bytes = encode_all(std::slice::from_ref(&p), v).to_vec();
        for (i, b) in flips {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        let mut d = Decoder::with_version(v, 1 << 20);
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = d.decode(&mut buf) {}
    }
}

#[test]
fn the_declared_size_is_refused_before_the_body_arrives() {
    let mut d = Decoder::with_version(Version::V5, 100);
    let mut buf = BytesMut::from(&[0x30u8, 0xE8, 0x07][..]); // PUBLISH, 1000 bytes
    assert_eq!(
        d.decode(&mut buf),
        Err(DecodeError::TooLarge {
            size: 1003,
            max: 100
        })
    );
}

#[test]
fn property_rules_are_enforced() {
    // PUBACK with a Topic Alias (not allowed there).
    let mut d = Decoder::with_version(Version::V5, 1 << 20);
    let mut buf = BytesMut::from(&[0x40u8, 7, 0, 1, 0, 3, 0x23, 0, 1][..]);
    assert!(matches!(d.decode(&mut buf), Err(DecodeError::Protocol(_))));
    // PUBLISH with two Content Types.
    let mut buf = BytesMut::from(
        &[
            0x30u8, 13, 0, 1, b't', 8, 0x03, 0, 1, b'a', 0x03, 0, 1, b'b', b'x',
        ][..],
    );
    assert!(matches!(d.decode(&mut buf), Err(DecodeError::Protocol(_))));
    // QoS 3.
    let mut buf = BytesMut::from(&[0x36u8, 3, 0, 1, b't'][..]);
    assert!(matches!(d.decode(&mut buf), Err(DecodeError::Malformed(_))));
    // A reserved flag in SUBSCRIBE's fixed header.
    let mut buf = BytesMut::from(&[0x80u8, 6, 0, 1, 0, 1, b'a', 0][..]);
    assert!(matches!(d.decode(&mut buf), Err(DecodeError::Malformed(_))));
}

proptest! {
    #[test]
    fn the_ack_fast_path_writes_what_encode_writes(
        v in version(), k in 4u8..=7, id in 1u16.., reason in any::<u8>()
    ) {
        let reason = if v == Version::V5 { reason } else { 0 };
        let ack = Ack::new(id, reason);
        let p = match k {
            4 => Packet::PubAck(ack),
            5 => Packet::PubRec(ack),
            6 => Packet::PubRel(ack),
            _ => Packet::PubComp(ack),
        };
        let mut a = BytesMut::new();
        codec::encode(&p, v, &mut a);
        let mut b = BytesMut::new();
        codec::encode_ack(&mut b, k, id, reason, v);
        prop_assert_eq!(a, b);
    }
}
