//! Property tests of the HTTP adapter's pure encoders and parsers: SSE
//! events parse back (with a WHATWG "Server-sent events" parser written
//! here) whatever the chunking, split at every byte; JSON output parses and
//! round-trips; NDJSON batches split into exactly their lines; query and
//! receipt parsers never panic on arbitrary input.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::Delivery;
use switchyard_http::consume::{format_receipt, parse_receipt};
use switchyard_http::mapping::{self, BatchError, BodyForm, PollLimits};
use switchyard_model::{ConsumerId, DeliveryTag, Message, MessageId, Value};
use switchyard_testkit::strategies;

mod common;
use common::{SseParser, body_of, parse_whole};

fn message_strategy() -> impl Strategy<Value = Message> {
    (
        strategies::message(),
        any::<u64>(),
        proptest::option::of(0u8..10),
        proptest::option::of(any::<u64>()),
        proptest::option::of("[ -~]{0,12}"),
        any::<bool>(),
        prop::sample::select(vec![
            Bytes::from_static(b"line one\nline two\n"),
            Bytes::from_static(b"\n\n"),
            Bytes::from_static(b"cr\rlf\r\n"),
            Bytes::from_static(b""),
            Bytes::from_static(" unicode \u{2028} \u{0} é".as_bytes()),
            Bytes::from_static(b"\xff\xfe"),
        ]),
        any::<bool>(),
    )
        .prop_map(
            |(mut m, id, pr, exp, corr, durable, special, use_special)| {
                m.id = MessageId(id);
                m.properties.priority = pr;
                m.properties.expires_at = exp;
                m.properties.correlation_id = corr.map(Bytes::from);
                m.properties.durable = durable;
                if use_special {
                    m.body = special;
                }
                m
            },
        )
}

fn check_meta(meta: &serde_json::Value, m: &Message) {
    assert_eq!(meta["address"], &*m.address);
    let headers = meta["headers"].as_object().expect("headers object");
    for (name, value) in m.headers.iter() {
        let got = headers
            .get(&format!("x-msg-{name}"))
            .and_then(|v| v.as_str())
            .expect("header present");
        assert!(got.contains(&value.to_text()), "{got} lacks {value:?}");
    }
    if let Some(ct) = &m.properties.content_type {
        assert_eq!(headers["content-type"], &**ct);
    }
    assert_eq!(
        meta.get("priority").and_then(|p| p.as_u64()),
        m.properties.priority.map(u64::from)
    );
    assert_eq!(
        meta.get("expires_at").and_then(|p| p.as_u64()),
        m.properties.expires_at
    );
    assert_eq!(
        meta.get("durable")
            .and_then(|d| d.as_bool())
            .unwrap_or(false),
        m.properties.durable
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sse_events_parse_back_whatever_the_chunking(
        msgs in prop::collection::vec(message_strategy(), 1..4),
        chunk in 1usize..64,
    ) {
        let mut out = BytesMut::new();
        mapping::put_sse_comment(&mut out, "subscribed to a.#");
        for m in &msgs {
            mapping::put_sse_message(&mut out, m);
        }
        mapping::put_sse_comment(&mut out, "keep-alive");
        mapping::put_sse_close(&mut out, "shutdown", "bye \"now\"\n");
        let p = parse_whole(&out, chunk);
        prop_assert_eq!(p.events.len(), msgs.len() + 1);
        prop_assert_eq!(&p.comments, &["subscribed to a.#".to_owned(), "keep-alive".to_owned()]);
        for (e, m) in p.events.iter().zip(&msgs) {
            prop_assert_eq!(&e.kind, "message");
            prop_assert_eq!(e.id.clone(), m.id.get().to_string());
            prop_assert_eq!(body_of(e), m.body.to_vec());
            let text = std::str::from_utf8(&m.body).is_ok() && !m.body.contains(&b'\r');
            prop_assert_eq!(e.other.contains_key("encoding"), !text);
            let meta: serde_json::Value = serde_json::from_str(&e.other["meta"]).unwrap();
            check_meta(&meta, m);
        }
        let close = p.events.last().unwrap();
        prop_assert_eq!(&close.kind, "close");
        let v: serde_json::Value = serde_json::from_str(&close.data).unwrap();
        prop_assert_eq!(&v["reason"], "shutdown");
        prop_assert_eq!(&v["detail"], "bye \"now\"\n");
    }

    #[test]
    fn json_strings_round_trip(s in any::<String>()) {
        let mut out = Vec::new();
        mapping::put_json_str(&mut out, &s);
        let back: String = serde_json::from_slice(&out).unwrap();
        prop_assert_eq!(back, s);
    }

    #[test]
    fn polled_messages_are_json_and_carry_the_body(m in message_strategy(), count in 1u32..5) {
        let d = Delivery {
            consumer: ConsumerId(1),
            tag: DeliveryTag(2),
            message: Arc::new(m.clone()),
            redelivered: count > 1,
            delivery_count: count,
        };
        let mut out = Vec::new();
        mapping::put_polled(&mut out, "00000000000000010000000000000002", &d);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let body = match v.get("encoding").and_then(|e| e.as_str()) {
            Some("base64") => base64::engine::general_purpose::STANDARD
                .decode(v["body"].as_str().unwrap())
                .unwrap(),
            None => v["body"].as_str().unwrap().as_bytes().to_vec(),
            Some(other) => panic!("encoding {other}"),
        };
        prop_assert_eq!(body, m.body.to_vec());
        prop_assert_eq!(v["delivery_count"].as_u64(), Some(u64::from(count)));
        prop_assert_eq!(v["redelivered"].as_bool(), Some(count > 1));
        prop_assert_eq!(v["id"].as_u64(), Some(m.id.get()));
        check_meta(&v, &m);
    }

    #[test]
    fn ndjson_batches_split_into_their_lines(
        values in prop::collection::vec(any::<(i64, String, bool)>(), 0..20),
        crlf in any::<bool>(),
        blank in any::<bool>(),
    ) {
        let lines: Vec<String> = values
            .iter()
            .map(|v| serde_json::to_string(&serde_json::json!({"n": v.0, "s": v.1, "b": v.2})).unwrap())
            .collect();
        let sep = if crlf { "\r\n" } else { "\n" };
        let mut text = lines.join(sep);
        if blank {
            text = format!("{sep}  {sep}{text}{sep}{sep}");
        }
        let body = Bytes::from(text);
        let got = mapping::split_batch(&body, 100, 1 << 20).unwrap();
        let got: Vec<String> = got.iter().map(|b| String::from_utf8(b.to_vec()).unwrap()).collect();
        prop_assert_eq!(got, lines);
    }

    #[test]
    fn arbitrary_batch_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let body = Bytes::from(body);
        if let Ok(lines) = mapping::split_batch(&body, 8, 64) {
            prop_assert!(lines.len() <= 8);
            for l in lines {
                prop_assert!(l.len() <= 64);
                let text = std::str::from_utf8(&l).expect("lines are UTF-8");
                prop_assert!(serde_json::from_str::<serde_json::Value>(text).is_ok());
            }
        }
    }

    #[test]
    fn arbitrary_queries_never_panic(q in "[a-z=&%0-9.\\-]{0,40}", raw in any::<String>()) {
        let limits = PollLimits {
            max_messages: 10,
            max_wait: Duration::from_secs(20),
            default_visibility: Duration::from_secs(30),
            max_visibility: Duration::from_secs(60),
        };
        for query in [q.as_str(), raw.as_str()] {
            let _ = mapping::publish_params(Some(query));
            if let Ok(p) = mapping::poll_params(Some(query), &limits) {
                prop_assert!((1..=10).contains(&p.max));
                prop_assert!(p.wait <= limits.max_wait);
                prop_assert!(p.visibility <= limits.max_visibility);
            }
        }
    }

    #[test]
    fn receipts_round_trip_and_garbage_is_refused(seq in any::<u64>(), mac in any::<u64>(), junk in any::<String>()) {
        prop_assert_eq!(parse_receipt(&format_receipt(seq, mac)), Some((seq, mac)));
        if let Some((s, m)) = parse_receipt(&junk) {
            prop_assert_eq!(format_receipt(s, m), junk.to_ascii_lowercase());
        }
    }
}

#[test]
fn every_split_point_of_a_stream_parses_the_same() {
    let mut m = Message::multicast(
        &switchyard_model::Address::new("a.b").unwrap(),
        Bytes::from_static(b"one\ntwo\n\nthree"),
    );
    m.id = MessageId(7);
    m.headers.push("k", "v");
    m.headers.push("k", Value::I32(2));
    let mut bin = m.clone();
    bin.body = Bytes::from_static(&[0, 1, 2, 0xff, b'\r']);
    bin.id = MessageId(8);
    let mut out = BytesMut::new();
    mapping::put_sse_message(&mut out, &m);
    mapping::put_sse_comment(&mut out, "keep-alive");
    mapping::put_sse_message(&mut out, &bin);
    let whole = parse_whole(&out, out.len()).events;
    assert_eq!(whole.len(), 2);
    assert_eq!(whole[0].data, "one\ntwo\n\nthree");
    let meta: serde_json::Value = serde_json::from_str(&whole[0].other["meta"]).unwrap();
    assert_eq!(
        meta["headers"]["x-msg-k"], "v, 2",
        "repeated names are joined"
    );
    assert_eq!(body_of(&whole[1]), bin.body.to_vec());
    for split in 0..=out.len() {
        let mut p = SseParser::default();
        p.feed(&out[..split]);
        p.feed(&out[split..]);
        assert_eq!(p.events, whole, "split at {split}");
    }
}

#[test]
fn body_forms() {
    assert_eq!(mapping::body_form(b"hi", true), BodyForm::Text("hi"));
    assert_eq!(mapping::body_form(b"a\rb", true), BodyForm::Base64);
    assert_eq!(mapping::body_form(b"a\rb", false), BodyForm::Text("a\rb"));
    assert_eq!(mapping::body_form(b"\xff", false), BodyForm::Base64);
}

#[test]
fn batch_errors_name_the_line() {
    let body = Bytes::from_static(b"{}\n[1]\nnope\n");
    assert!(matches!(
        mapping::split_batch(&body, 10, 100),
        Err(BatchError::BadLine { line: 3, .. })
    ));
    let body = Bytes::from_static(b"1\n2\n3\n");
    assert_eq!(
        mapping::split_batch(&body, 2, 100),
        Err(BatchError::TooMany { max: 2 })
    );
    let body = Bytes::from_static(b"1\n\"long string\"\n");
    assert!(matches!(
        mapping::split_batch(&body, 10, 5),
        Err(BatchError::LineTooLong {
            line: 2,
            len: 13,
            max: 5
        })
    ));
}
