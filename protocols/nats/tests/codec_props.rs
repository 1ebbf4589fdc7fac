//! Parser properties: round trip, any split of the input, arbitrary bytes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use switchyard_nats::codec::{ClientOp, Parser};

fn token() -> impl Strategy<Value = Bytes> {
    "[a-zA-Z0-9_.*>$-]{1,20}".prop_map(|s| Bytes::from(s.into_bytes()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Connect(Bytes),
    Pub {
        subject: Bytes,
        reply: Option<Bytes>,
        header_len: usize,
        payload: Bytes,
    },
    Sub {
        subject: Bytes,
        queue: Option<Bytes>,
        sid: Bytes,
    },
    Unsub {
        sid: Bytes,
        max: Option<u64>,
    },
    Ping,
    Pong,
}

fn op() -> impl Strategy<Value = Owned> {
    prop_oneof![
        "[ -~]{0,40}"
            .prop_map(|j| Owned::Connect(Bytes::from(j.trim_start().to_owned().into_bytes()))),
        (
            token(),
            proptest::option::of(token()),
            prop::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(subject, reply, payload)| Owned::Pub {
                subject,
                reply,
                header_len: 0,
                payload: payload.into()
            }),
        (
            token(),
            proptest::option::of(token()),
            0usize..40,
            prop::collection::vec(any::<u8>(), 0..100)
        )
            .prop_map(|(subject, reply, hl, body)| {
                let mut payload = vec![b'h'; hl];
                payload.extend(body);
                Owned::Pub {
                    subject,
                    reply,
                    header_len: hl,
                    payload: payload.into(),
                }
            }),
        (token(), proptest::option::of(token()), token()).prop_map(|(subject, queue, sid)| {
            Owned::Sub {
                subject,
                queue,
                sid,
            }
        }),
        (token(), proptest::option::of(any::<u32>())).prop_map(|(sid, max)| Owned::Unsub {
            sid,
            max: max.map(u64::from)
        }),
        Just(Owned::Ping),
        Just(Owned::Pong),
    ]
}

fn encode(op: &Owned, out: &mut Vec<u8>) {
    let sp = |out: &mut Vec<u8>, b: &[u8]| {
        out.push(b' ');
        out.extend_from_slice(b);
    };
    match op {
        Owned::Connect(j) => {
            out.extend_from_slice(b"CONNECT ");
            out.extend_from_slice(j);
        }
        Owned::Pub {
            subject,
            reply,
            header_len,
            payload,
        } => {
            out.extend_from_slice(if *header_len > 0 { b"HPUB" } else { b"PUB" });
            sp(out, subject);
            if let Some(r) = reply {
                sp(out, r);
            }
            if *header_len > 0 {
                sp(out, header_len.to_string().as_bytes());
            }
            sp(out, payload.len().to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(payload);
        }
        Owned::Sub {
            subject,
            queue,
            sid,
        } => {
            out.extend_from_slice(b"SUB");
            sp(out, subject);
            if let Some(q) = queue {
                sp(out, q);
            }
            sp(out, sid);
        }
        Owned::Unsub { sid, max } => {
            out.extend_from_slice(b"UNSUB");
            sp(out, sid);
            if let Some(m) = max {
                sp(out, m.to_string().as_bytes());
            }
        }
        Owned::Ping => out.extend_from_slice(b"PING"),
        Owned::Pong => out.extend_from_slice(b"PONG"),
    }
    out.extend_from_slice(b"\r\n");
}

/// An owned copy of a parsed op.
fn own(op: ClientOp<'_>) -> Owned {
    match op {
        ClientOp::Connect(j) => Owned::Connect(Bytes::copy_from_slice(j)),
        ClientOp::Pub {
            subject,
            reply,
            header_len,
            payload,
        } => Owned::Pub {
            subject: Bytes::copy_from_slice(subject),
            reply: reply.map(Bytes::copy_from_slice),
            header_len,
            payload,
        },
        ClientOp::Sub {
            subject,
            queue,
            sid,
        } => Owned::Sub {
            subject: Bytes::copy_from_slice(subject),
            queue: queue.map(Bytes::copy_from_slice),
            sid: Bytes::copy_from_slice(sid),
        },
        ClientOp::Unsub { sid, max } => Owned::Unsub {
            sid: Bytes::copy_from_slice(sid),
            max,
        },
        ClientOp::Ping => Owned::Ping,
        ClientOp::Pong => Owned::Pong,
    }
}

fn parse_all(p: &mut Parser, buf: &mut BytesMut, out: &mut Vec<Owned>) -> bool {
    loop {
        match p.parse(buf) {
            Ok(Some(op)) => out.push(own(op)),
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn round_trip_at_every_split(ops in prop::collection::vec(op(), 1..6), split_seed in any::<u64>()) {
        let mut wire = Vec::new();
        for op in &ops {
            encode(op, &mut wire);
        }
        // Whole buffer at once.
        let mut p = Parser::new(4096, 1 << 20);
        let mut buf = BytesMut::from(&wire[..]);
        let mut got = Vec::new();
        prop_assert!(parse_all(&mut p, &mut buf, &mut got));
        prop_assert_eq!(&got, &ops);
        // Two pieces at a pseudo-random split, then one byte at a time.
        let split = (split_seed as usize) % (wire.len() + 1);
        let mut p = Parser::new(4096, 1 << 20);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        buf.extend_from_slice(&wire[..split]);
        prop_assert!(parse_all(&mut p, &mut buf, &mut got));
        buf.extend_from_slice(&wire[split..]);
        prop_assert!(parse_all(&mut p, &mut buf, &mut got));
        prop_assert_eq!(&got, &ops);
        let mut p = Parser::new(4096, 1 << 20);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in &wire {
            buf.extend_from_slice(&[*b]);
            prop_assert!(parse_all(&mut p, &mut buf, &mut got));
        }
        prop_assert_eq!(&got, &ops);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..2000)) {
        let mut p = Parser::new(256, 1024);
        let mut buf = BytesMut::from(&data[..]);
        let mut got = Vec::new();
        let _ = parse_all(&mut p, &mut buf, &mut got);
    }

    #[test]
    fn protocol_shaped_noise_never_panics(parts in prop::collection::vec(prop_oneof![
        Just(b"PUB ".to_vec()), Just(b"HPUB ".to_vec()), Just(b"SUB ".to_vec()), Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()), Just(b" ".to_vec()), Just(b"99999999999999999999".to_vec()), Just(b"5".to_vec()),
        "[a-z.*>]{0,5}".prop_map(String::into_bytes),
    ], 0..40)) {
        let data: Vec<u8> = parts.concat();
        let mut p = Parser::new(64, 64);
        let mut buf = BytesMut::from(&data[..]);
        let mut got = Vec::new();
        let _ = parse_all(&mut p, &mut buf, &mut got);
    }
}
