//! The parser against its previous version (`reference/parser_v1.rs`): on
//! protocol-shaped input, split anywhere, both give the same operations and
//! fail with the same error at the same point.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "reference/parser_v1.rs"]
mod parser_v1;

use bytes::BytesMut;
use proptest::prelude::*;
use switchyard_nats::codec::{ClientOp, Parser};

/// One parse result, owned and comparable across the two parsers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Connect(Vec<u8>),
    Pub(Vec<u8>, Option<Vec<u8>>, usize, Vec<u8>),
    Sub(Vec<u8>, Option<Vec<u8>>, Vec<u8>),
    Unsub(Vec<u8>, Option<u64>),
    Ping,
    Pong,
    /// The error's `Display` (same variants and texts in both versions).
    Err(String),
}

fn new_step(op: ClientOp<'_>) -> Step {
    match op {
        ClientOp::Connect(j) => Step::Connect(j.to_vec()),
        ClientOp::Pub {
            subject,
            reply,
            header_len,
            payload,
        } => Step::Pub(
            subject.to_vec(),
            reply.map(<[u8]>::to_vec),
            header_len,
            payload.to_vec(),
        ),
        ClientOp::Sub {
            subject,
            queue,
            sid,
        } => Step::Sub(subject.to_vec(), queue.map(<[u8]>::to_vec), sid.to_vec()),
        ClientOp::Unsub { sid, max } => Step::Unsub(sid.to_vec(), max),
        ClientOp::Ping => Step::Ping,
        ClientOp::Pong => Step::Pong,
    }
}

fn old_step(op: parser_v1::ClientOp<'_>) -> Step {
    use parser_v1::ClientOp as O;
    match op {
        O::Connect(j) => Step::Connect(j.to_vec()),
        O::Pub {
            subject,
            reply,
            header_len,
            payload,
        } => Step::Pub(
            subject.to_vec(),
            reply.map(<[u8]>::to_vec),
            header_len,
            payload.to_vec(),
        ),
        O::Sub {
            subject,
            queue,
            sid,
        } => Step::Sub(subject.to_vec(), queue.map(<[u8]>::to_vec), sid.to_vec()),
        O::Unsub { sid, max } => Step::Unsub(sid.to_vec(), max),
        O::Ping => Step::Ping,
        O::Pong => Step::Pong,
    }
}

/// Feeds `chunks` one after the other; records every op and the first error
/// (with its text for `-ERR`), and what is left in the buffer.
fn run_new(chunks: &[&[u8]], max_line: usize, max_payload: usize) -> (Vec<Step>, usize) {
    let mut p = Parser::new(max_line, max_payload);
    let mut buf = BytesMut::new();
    let mut steps = Vec::new();
    for c in chunks {
        buf.extend_from_slice(c);
        loop {
            match p.parse(&mut buf) {
                Ok(Some(op)) => steps.push(new_step(op)),
                Ok(None) => break,
                Err(e) => {
                    steps.push(Step::Err(format!("{e} / {}", e.err_text())));
                    return (steps, buf.len());
                }
            }
        }
    }
    (steps, buf.len())
}

fn run_old(chunks: &[&[u8]], max_line: usize, max_payload: usize) -> (Vec<Step>, usize) {
    let mut p = parser_v1::Parser::new(max_line, max_payload);
    let mut buf = BytesMut::new();
    let mut steps = Vec::new();
    for c in chunks {
        buf.extend_from_slice(c);
        loop {
            match p.parse(&mut buf) {
                Ok(Some(op)) => steps.push(old_step(op)),
                Ok(None) => break,
                Err(e) => {
                    steps.push(Step::Err(format!("{e} / {}", e.err_text())));
                    return (steps, buf.len());
                }
            }
        }
    }
    (steps, buf.len())
}

/// One of the given byte strings.
fn one_of(xs: &'static [&'static [u8]]) -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(xs).prop_map(<[u8]>::to_vec)
}

fn part() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => one_of(&[
            b"PUB", b"pub", b"Pub", b"HPUB", b"hpub", b"SUB", b"sub", b"UNSUB", b"PING",
            b"PONG", b"ping", b"CONNECT", b"PUBX", b"PU", b"NATS/1.0\r\n\r\n",
        ]),
        6 => one_of(&[b" ", b"\t", b"  ", b" \t "]),
        3 => one_of(&[b"\r\n", b"\n", b"\r"]),
        4 => (0u64..40).prop_map(|n| n.to_string().into_bytes()),
        1 => one_of(&[b"99999999999999999999", b"-1", b"1x", b"0012"]),
        4 => "[a-zA-Z0-9_.*>{}\":-]{1,8}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..12),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn same_ops_and_errors_as_the_previous_parser(
        parts in prop::collection::vec(part(), 0..40),
        cut in any::<u64>(),
        small in any::<bool>(),
    ) {
        let data: Vec<u8> = parts.concat();
        let (line, payload) = if small { (24, 16) } else { (4096, 1 << 20) };
        // Whole, and in two pieces at a pseudo-random point.
        let at = (cut as usize) % (data.len() + 1);
        let whole: [&[u8]; 1] = [&data];
        let two: [&[u8]; 2] = [&data[..at], &data[at..]];
        prop_assert_eq!(run_new(&whole, line, payload), run_old(&whole, line, payload));
        prop_assert_eq!(run_new(&two, line, payload), run_old(&two, line, payload));
    }

    #[test]
    fn same_result_byte_by_byte(parts in prop::collection::vec(part(), 0..25)) {
        let data: Vec<u8> = parts.concat();
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        prop_assert_eq!(run_new(&bytes, 64, 32), run_old(&bytes, 64, 32));
    }
}

#[test]
fn well_formed_traffic_parses_the_same() {
    let wire: &[u8] = b"CONNECT {\"verbose\":false}\r\nPUB a.b 5\r\nhello\r\npub a.b r.1 0\r\n\r\n\
HPUB x 12 14\r\nNATS/1.0\r\n\r\nhi\r\nHPUB x y 12 14\r\nNATS/1.0\r\n\r\nhi\r\nSUB a.* 1\r\n\
sub a.> q 2\r\nUNSUB 1\r\nunsub 2 10\r\nPING\r\npong\n\tPUB\t a \t 1 \r\nx\r\nPING  \r\n";
    let (steps, left) = run_new(&[wire], 4096, 1024);
    assert_eq!((steps.clone(), left), run_old(&[wire], 4096, 1024));
    // Eleven operations, then the line that starts with a tab is refused.
    assert_eq!(steps.len(), 12);
    assert!(matches!(steps.last(), Some(Step::Err(_))));
}
