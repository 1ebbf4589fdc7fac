//! proptest strategies for the canonical model.

use bytes::Bytes;
use proptest::prelude::*;
use switchyard_model::{Address, Message};

/// A word of an address: short, from a small alphabet so filters collide.
pub fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("sensor".to_owned()),
        "[a-z0-9_-]{1,8}",
    ]
}

/// A valid address of 1–6 words.
pub fn address() -> impl Strategy<Value = Address> {
    prop::collection::vec(word(), 1..6)
        .prop_map(|w| Address::new(&w.join(".")).expect("valid address"))
}

/// A valid filter of 1–6 words, with `*` and `#`.
pub fn filter() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![4 => word(), 1 => Just("*".to_owned()), 1 => Just("#".to_owned())],
        1..6,
    )
    .prop_map(|w| w.join("."))
}

/// Arbitrary body bytes, up to `max` long.
pub fn body(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

/// A multicast message with a random body, content type and string headers.
pub fn message() -> impl Strategy<Value = Message> {
    (
        address(),
        body(256),
        proptest::option::of("[a-z]+/[a-z]+"),
        prop::collection::vec(("[a-z][a-z0-9-]{0,10}", "[ -~]{0,20}"), 0..4),
    )
        .prop_map(|(addr, body, ct, headers)| {
            let mut m = Message::multicast(&addr, body);
            m.properties.content_type = ct.map(|c| c.as_str().into());
            for (k, v) in headers {
                m.headers.push(k.as_str(), v.as_str());
            }
            m
        })
}
