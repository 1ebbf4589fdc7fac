//! Codec properties: every frame round-trips, decoding is the same however
//! the bytes are split, and arbitrary bytes never panic.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use std::sync::Arc;
use switchyard_amqp::codec::*;
use switchyard_model::{Headers, Value};

fn shortstr() -> impl Strategy<Value = ShortStr> {
    proptest::collection::vec(any::<u8>(), 0..40)
        .prop_map(|v| ShortStr::new(Bytes::from(v)).unwrap())
}

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_.-]{0,20}"
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i8>().prop_map(Value::I8),
        any::<u8>().prop_map(Value::U8),
        any::<i16>().prop_map(Value::I16),
        any::<u16>().prop_map(Value::U16),
        any::<i32>().prop_map(Value::I32),
        any::<u32>().prop_map(Value::U32),
        any::<i64>().prop_map(Value::I64),
        (-1e6f32..1e6).prop_map(Value::F32),
        (-1e12f64..1e12).prop_map(Value::F64),
        (any::<u8>(), any::<u32>()).prop_map(|(scale, value)| Value::Decimal { scale, value }),
        "\\PC{0,20}".prop_map(|s| Value::String(Arc::from(s.as_str()))),
        proptest::collection::vec(128u8..=255, 1..10).prop_map(|v| Value::Bytes(Bytes::from(v))),
        any::<u64>().prop_map(Value::Timestamp),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(|v| Value::List(Arc::from(v))),
            proptest::collection::vec((name(), inner), 0..4).prop_map(|v| {
                Value::Map(Arc::new(
                    v.into_iter()
                        .map(|(k, v)| (Arc::from(k.as_str()), v))
                        .collect(),
                ))
            }),
        ]
    })
}

fn table() -> impl Strategy<Value = Headers> {
    proptest::collection::vec((name(), value()), 0..6).prop_map(|v| {
        v.into_iter()
            .map(|(k, v)| (Arc::from(k.as_str()), v))
            .collect()
    })
}

fn properties() -> impl Strategy<Value = BasicProperties> {
    (
        (
            proptest::option::of(shortstr()),
            proptest::option::of(shortstr()),
            proptest::option::of(table()),
            proptest::option::of(any::<u8>()),
            proptest::option::of(any::<u8>()),
            proptest::option::of(shortstr()),
            proptest::option::of(shortstr()),
        ),
        (
            proptest::option::of(shortstr()),
            proptest::option::of(shortstr()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(shortstr()),
            proptest::option::of(shortstr()),
            proptest::option::of(shortstr()),
            proptest::option::of(shortstr()),
        ),
    )
        .prop_map(
            |((a, b, c, d, e, f, g), (h, i, j, k, l, m, n))| BasicProperties {
                content_type: a,
                content_encoding: b,
                headers: c,
                delivery_mode: d,
                priority: e,
                correlation_id: f,
                reply_to: g,
                expiration: h,
                message_id: i,
                timestamp: j,
                kind: k,
                user_id: l,
                app_id: m,
                cluster_id: n,
            },
        )
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        (shortstr(), shortstr(), any::<bool>(), any::<bool>()).prop_map(
            |(exchange, routing_key, mandatory, immediate)| {
                Method::BasicPublish(BasicPublish {
                    ticket: 0,
                    exchange,
                    routing_key,
                    mandatory,
                    immediate,
                })
            }
        ),
        (
            shortstr(),
            any::<u64>(),
            any::<bool>(),
            shortstr(),
            shortstr()
        )
            .prop_map(
                |(consumer_tag, delivery_tag, redelivered, exchange, routing_key)| {
                    Method::BasicDeliver(BasicDeliver {
                        consumer_tag,
                        delivery_tag,
                        redelivered,
                        exchange,
                        routing_key,
                    })
                }
            ),
        (shortstr(), any::<[bool; 5]>(), table()).prop_map(|(queue, b, arguments)| {
            Method::QueueDeclare(QueueDeclare {
                ticket: 0,
                queue,
                passive: b[0],
                durable: b[1],
                exclusive: b[2],
                auto_delete: b[3],
                nowait: b[4],
                arguments,
            })
        }),
        (shortstr(), shortstr(), any::<[bool; 5]>(), table()).prop_map(
            |(exchange, kind, b, arguments)| {
                Method::ExchangeDeclare(ExchangeDeclare {
                    ticket: 0,
                    exchange,
                    kind,
                    passive: b[0],
                    durable: b[1],
                    auto_delete: b[2],
                    internal: b[3],
                    nowait: b[4],
                    arguments,
                })
            }
        ),
        (table(), proptest::collection::vec(any::<u8>(), 0..50)).prop_map(
            |(server_properties, m)| {
                Method::ConnectionStart(ConnectionStart {
                    version_major: 0,
                    version_minor: 9,
                    server_properties,
                    mechanisms: Bytes::from(m),
                    locales: Bytes::from_static(b"en_US"),
                })
            }
        ),
        (any::<u16>(), shortstr(), any::<u16>(), any::<u16>()).prop_map(
            |(reply_code, reply_text, class_id, method_id)| {
                Method::ConnectionClose(ConnectionClose {
                    reply_code,
                    reply_text,
                    class_id,
                    method_id,
                })
            }
        ),
        (any::<u64>(), any::<bool>(), any::<bool>()).prop_map(
            |(delivery_tag, multiple, requeue)| {
                Method::BasicNack(BasicNack {
                    delivery_tag,
                    multiple,
                    requeue,
                })
            }
        ),
        (any::<u16>(), any::<u32>(), any::<u16>()).prop_map(
            |(channel_max, frame_max, heartbeat)| {
                Method::ConnectionTuneOk(ConnectionTuneOk {
                    channel_max,
                    frame_max,
                    heartbeat,
                })
            }
        ),
        any::<bool>().prop_map(|active| Method::ChannelFlow(ChannelFlow { active })),
        Just(Method::TxCommit(TxCommit {})),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u16>(), method()).prop_map(|(channel, method)| Frame::Method { channel, method }),
        (any::<u16>(), any::<u64>(), properties()).prop_map(|(channel, body_size, properties)| {
            Frame::Header {
                channel,
                header: ContentHeader {
                    class_id: 60,
                    body_size,
                    properties,
                },
            }
        }),
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(channel, b)| {
            Frame::Body {
                channel,
                payload: Bytes::from(b),
            }
        }),
        Just(Frame::Heartbeat { channel: 0 }),
    ]
}

const MAX: u32 = 1 << 20;

fn decode_all(bytes: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(f) = decode_frame(&mut buf, MAX).unwrap() {
        out.push(f);
    }
    assert!(buf.is_empty(), "{} bytes left", buf.len());
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn frames_round_trip(frames in proptest::collection::vec(frame(), 1..6)) {
        let mut out = BytesMut::new();
        for f in &frames {
            encode_frame(&mut out, f);
        }
        prop_assert_eq!(decode_all(&out), frames);
    }

    #[test]
    fn decoding_is_the_same_split_at_every_byte(frames in proptest::collection::vec(frame(), 1..4)) {
        let mut bytes = BytesMut::from(&PROTOCOL_HEADER[..]);
        for f in &frames {
            encode_frame(&mut bytes, f);
        }
        let bytes = bytes.freeze();
        for cut in 0..=bytes.len() {
            let mut codec = AmqpCodec::server();
            codec.set_frame_max(MAX);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for part in [&bytes[..cut], &bytes[cut..]] {
                buf.extend_from_slice(part);
                while let Some(f) = tokio_util::codec::Decoder::decode(&mut codec, &mut buf).unwrap() {
                    got.push(f);
                }
            }
            prop_assert_eq!(got.first(), Some(&Frame::ProtocolHeader));
            prop_assert_eq!(&got[1..], &frames[..]);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decode_frame(&mut buf, 4096) {}
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = decode_protocol_header(&mut buf);
    }

    #[test]
    fn arbitrary_method_payloads_never_panic(class in prop_oneof![Just(10u16), Just(20), Just(40), Just(50), Just(60), Just(85), Just(90), any::<u16>()], method in 0u16..130, body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut payload = BytesMut::new();
        payload.extend_from_slice(&class.to_be_bytes());
        payload.extend_from_slice(&method.to_be_bytes());
        payload.extend_from_slice(&body);
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&[1, 0, 1]);
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(&payload);
        frame.extend_from_slice(&[FRAME_END]);
        let _ = decode_frame(&mut frame, 4096);
        let mut header = BytesMut::new();
        header.extend_from_slice(&[2, 0, 1]);
        header.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        header.extend_from_slice(&payload);
        header.extend_from_slice(&[FRAME_END]);
        let _ = decode_frame(&mut header, 4096);
    }
}

#[test]
fn oversized_frame_is_refused_before_its_payload_arrives() {
    // Only the 7-byte header: the declared size is checked at once.
    let mut buf = BytesMut::from(&[3u8, 0, 1, 0, 0, 0x20, 0][..]);
    assert_eq!(
        decode_frame(&mut buf, 4096),
        Err(DecodeError::FrameTooLarge {
            size: 0x2000,
            max: 4096
        })
    );
    let mut buf = BytesMut::from(&[3u8, 0, 1, 0, 0, 0x0f, 0xf8][..]);
    assert_eq!(
        decode_frame(&mut buf, 4096),
        Ok(None),
        "4088 + 8 = 4096 fits"
    );
}

#[test]
fn wrong_protocol_header_is_reported_at_the_first_wrong_byte() {
    let mut buf = BytesMut::from(&b"AMQ"[..]);
    assert_eq!(decode_protocol_header(&mut buf), Ok(None));
    let mut buf = BytesMut::from(&b"GET "[..]);
    assert!(matches!(
        decode_protocol_header(&mut buf),
        Err(DecodeError::BadProtocolHeader(_))
    ));
    let mut buf = BytesMut::from(&b"AMQP\x00\x00\x09\x01"[..]);
    assert_eq!(decode_protocol_header(&mut buf), Ok(Some(())));
}

#[test]
fn unknown_methods_and_bad_frame_ends_are_errors() {
    let mut f = BytesMut::new();
    encode_method(&mut f, 1, &Method::TxSelect(TxSelect {}));
    let n = f.len();
    f[10] = 99; // method id 10 -> 99 (type 1, channel 2, size 4, class 2, method 2)
    f[n - 1] = FRAME_END;
    assert!(matches!(
        decode_frame(&mut f.clone(), 4096),
        Err(DecodeError::UnknownMethod { class_id: 90, .. })
    ));
    let mut g = BytesMut::new();
    encode_heartbeat(&mut g);
    let last = g.len() - 1;
    g[last] = 0;
    assert_eq!(decode_frame(&mut g, 4096), Err(DecodeError::BadFrameEnd(0)));
}

#[test]
fn deep_tables_are_refused() {
    let mut v = Value::Null;
    for _ in 0..40 {
        v = Value::List(Arc::from(vec![v]));
    }
    let mut h = Headers::new();
    h.push("deep", v);
    let mut out = BytesMut::new();
    put_table(&mut out, &h);
    assert!(Reader::new(out.freeze()).table().is_err());
}

#[test]
fn deliver_fast_path_matches_generated_encoder() {
    let mut a = BytesMut::new();
    encode_deliver(
        &mut a,
        7,
        &ShortStr::from("ctag"),
        42,
        true,
        "amq.topic",
        "a.b",
    );
    let mut b = BytesMut::new();
    encode_method(
        &mut b,
        7,
        &Method::BasicDeliver(BasicDeliver {
            consumer_tag: "ctag".into(),
            delivery_tag: 42,
            redelivered: true,
            exchange: "amq.topic".into(),
            routing_key: "a.b".into(),
        }),
    );
    assert_eq!(a, b);
}

#[test]
fn bodies_are_split_by_frame_max_and_sliced_without_copying() {
    let body = vec![7u8; 10_000];
    let mut out = BytesMut::new();
    encode_content(&mut out, 1, &BasicProperties::default(), &body, 4096);
    let frames = decode_all(&out);
    let sizes: Vec<usize> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Body { payload, .. } => Some(payload.len()),
            _ => None,
        })
        .collect();
    assert_eq!(sizes, [4088, 4088, 1824]);
}
