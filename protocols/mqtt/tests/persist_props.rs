//! The state store records of persistent sessions (`switchyard_mqtt::persist`):
//! every record round-trips, every truncation and every trailing byte is
//! refused, and arbitrary bytes never panic.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::Bytes;
use proptest::prelude::*;
use switchyard_model::MessageId;
use switchyard_mqtt::codec::{Properties, QoS, SubOptions, Will};
use switchyard_mqtt::persist::{
    self, Dir, Qos2Entry, SessionRecord, StateError, StoredSub, StoredWill,
};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z/+#$ ]{1,12}",
        "\\PC{1,6}".prop_filter("no NUL", |s: &String| !s.contains('\0')),
    ]
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn sub() -> impl Strategy<Value = StoredSub> {
    (
        text(),
        qos(),
        any::<bool>(),
        any::<bool>(),
        0u8..=2,
        proptest::option::of(1u32..=268_435_455),
    )
        .prop_map(|(filter, qos, nl, rap, rh, id)| StoredSub {
            filter,
            options: SubOptions {
                qos,
                no_local: nl,
                retain_as_published: rap,
                retain_handling: rh,
            },
            id,
        })
}

fn will() -> impl Strategy<Value = StoredWill> {
    (
        qos(),
        any::<bool>(),
        text(),
        prop::collection::vec(any::<u8>(), 0..32),
        proptest::option::of(any::<u32>()),
        proptest::option::of(text()),
        prop::collection::vec((text(), text()), 0..3),
        any::<bool>(),
    )
        .prop_map(
            |(qos, retain, topic, payload, wdi, ct, up, v5)| StoredWill {
                will: Will {
                    qos,
                    retain,
                    topic,
                    payload: Bytes::from(payload),
                    properties: Properties {
                        will_delay_interval: wdi,
                        content_type: ct,
                        user_properties: up,
                        ..Properties::default()
                    },
                },
                v5,
            },
        )
}

fn record() -> impl Strategy<Value = SessionRecord> {
    (
        any::<u32>(),
        any::<u64>(),
        prop::collection::vec(sub(), 0..6),
        prop::collection::vec((any::<u64>(), 1u16..), 0..6),
        proptest::option::of(will()),
    )
        .prop_map(|(expiry, left_at, subs, reuse, will)| SessionRecord {
            expiry,
            left_at,
            subs,
            reuse: reuse.into_iter().map(|(m, p)| (MessageId(m), p)).collect(),
            will,
        })
}

fn qos2_entry() -> impl Strategy<Value = Qos2Entry> {
    prop_oneof![
        Just(Qos2Entry::Incoming),
        any::<u64>().prop_map(|m| Qos2Entry::AwaitPubRec(MessageId(m))),
        Just(Qos2Entry::AwaitPubComp),
    ]
}

proptest! {
    #[test]
    fn session_records_round_trip(rec in record()) {
        let bytes = persist::encode_session(&rec);
        prop_assert_eq!(persist::decode_session(&bytes), Ok(rec));
    }

    #[test]
    fn truncated_session_records_are_refused(rec in record()) {
        let bytes = persist::encode_session(&rec);
        for n in 0..bytes.len() {
            prop_assert!(persist::decode_session(&bytes[..n]).is_err(), "prefix of {}", n);
        }
    }

    #[test]
    fn trailing_bytes_are_refused(rec in record(), extra in prop::collection::vec(any::<u8>(), 1..8)) {
        let mut bytes = persist::encode_session(&rec).to_vec();
        bytes.extend_from_slice(&extra);
        prop_assert_eq!(persist::decode_session(&bytes), Err(StateError::Trailing(extra.len())));
        let mut q = persist::encode_qos2(Qos2Entry::AwaitPubComp);
        q.extend_from_slice(&extra);
        prop_assert!(persist::decode_qos2(&q).is_err());
    }

    #[test]
    fn qos2_entries_round_trip(e in qos2_entry()) {
        let bytes = persist::encode_qos2(e);
        prop_assert_eq!(persist::decode_qos2(&bytes), Ok(e));
        for n in 0..bytes.len() {
            prop_assert!(persist::decode_qos2(&bytes[..n]).is_err());
        }
    }

    #[test]
    fn qos2_keys_round_trip(client in "\\PC{0,12}".prop_filter("no NUL", |s: &String| !s.contains('\0')),
                            out in any::<bool>(), id in 1u16..) {
        let dir = if out { Dir::Out } else { Dir::In };
        let key = persist::qos2_key(&client, dir, id);
        prop_assert_eq!(persist::parse_qos2_key(&key), Some((client.as_str(), dir, id)));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = persist::decode_session(&bytes);
        let _ = persist::decode_qos2(&bytes);
        if let Ok(s) = std::str::from_utf8(&bytes) {
            let _ = persist::parse_qos2_key(s);
        }
    }

    /// Arbitrary bytes behind a valid version byte reach deeper into the
    /// decoder; still never a panic, and what decodes re-encodes the same.
    #[test]
    fn arbitrary_bodies_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut b = vec![persist::VERSION];
        b.extend_from_slice(&bytes);
        if let Ok(rec) = persist::decode_session(&b) {
            prop_assert_eq!(persist::decode_session(&persist::encode_session(&rec)), Ok(rec));
        }
    }
}

#[test]
fn a_corrupt_byte_is_refused_or_decodes_to_something_valid() {
    let rec = SessionRecord {
        expiry: 60,
        left_at: 1,
        subs: vec![StoredSub {
            filter: "a/#".into(),
            options: SubOptions::default(),
            id: Some(3),
        }],
        reuse: vec![],
        will: None,
    };
    let bytes = persist::encode_session(&rec).to_vec();
    for i in 0..bytes.len() {
        for v in [0u8, 0x7F, 0x80, 0xFF] {
            let mut b = bytes.clone();
            b[i] = v;
            let _ = persist::decode_session(&b);
        }
    }
}
