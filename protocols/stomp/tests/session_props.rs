//! The session state machine, without sockets, against an in-memory core:
//! arbitrary sequences of client frames never panic, every frame that asks
//! for a receipt gets exactly one RECEIPT or an ERROR, and an ERROR always
//! ends the session.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::BytesMut;
use proptest::prelude::*;
use std::sync::Arc;
use switchyard_core::{Broker, CoreConfig};
use switchyard_model::ConnId;
use switchyard_stomp::StompConfig;
use switchyard_stomp::codec::{Command, Frame, FrameDecoder, Limits, Version};
use switchyard_stomp::session::{Output, Step, StompSession};

fn value(name: &'static str) -> BoxedStrategy<(String, String)> {
    let values: Vec<&'static str> = match name {
        "destination" => vec![
            "/topic/a.b",
            "/topic/a.*",
            "/topic/a.#",
            "/topic/",
            "/topic/a..b",
            "/queue/q1",
            "/queue/q2",
            "/queue/",
            "/amq/queue/q1",
            "/amq/queue/none",
            "/exchange/amq.fanout/k",
            "/exchange/amq.topic/a.b",
            "/exchange/missing/k",
            "/temp-queue/x",
            "/weird/x",
            "bare",
            "",
        ],
        "id" => vec!["1", "2", "1-1", "2-1", "3-2", "x", ""],
        "ack" => vec!["auto", "client", "client-individual", "bogus"],
        "transaction" => vec!["t1", "t2", ""],
        "receipt" => vec!["r"],
        "prefetch-count" => vec!["1", "0", "-1", "x"],
        "durable" => vec!["true", "false"],
        "activemq.subscriptionName" => vec!["s", "s.1"],
        "content-type" => vec!["text/plain"],
        "priority" => vec!["0", "9", "12", "x"],
        "expires" => vec!["0", "1", "99999999999999", "x"],
        "persistent" => vec!["true"],
        "accept-version" => vec!["1.0", "1.1", "1.2", "1.0,1.1,1.2", "9.9"],
        "heart-beat" => vec!["0,0", "10,10", "x"],
        "requeue" => vec!["false", "true"],
        "subscription" => vec!["1", "2"],
        "message-id" => vec!["1-1", "2-2", "x"],
        _ => vec!["v"],
    };
    prop::sample::select(values)
        .prop_map(move |v| (name.to_owned(), v.to_owned()))
        .boxed()
}

fn frame() -> impl Strategy<Value = Frame> {
    let names = vec![
        "destination",
        "id",
        "ack",
        "transaction",
        "receipt",
        "prefetch-count",
        "durable",
        "activemq.subscriptionName",
        "content-type",
        "priority",
        "expires",
        "persistent",
        "accept-version",
        "heart-beat",
        "requeue",
        "subscription",
        "message-id",
        "x-user",
    ];
    let commands = vec![
        Command::Connect,
        Command::Stomp,
        Command::Send,
        Command::Send,
        Command::Subscribe,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Message,
    ];
    (
        prop::sample::select(commands),
        prop::collection::vec(prop::sample::select(names).prop_flat_map(value), 0..6),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(|(command, headers, body)| {
            let mut f = Frame::new(command);
            for (k, v) in headers {
                f = f.with(&k, &v);
            }
            f.with_body(body)
        })
}

fn decode_all(buf: &mut BytesMut, version: Option<Version>) -> Vec<Frame> {
    let mut d = FrameDecoder::new(Limits::default());
    if let Some(v) = version {
        d.set_version(v);
    }
    let mut out = Vec::new();
    while let Some(f) = d.decode(buf).expect("the server writes valid frames") {
        out.push(f);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn arbitrary_frame_sequences_never_panic(
        start in prop::sample::select(vec![None, Some("1.0"), Some("1.1"), Some("1.2")]),
        frames in prop::collection::vec(frame(), 0..24),
    ) {
        let broker = Broker::new(CoreConfig::new());
        let mut core = broker.session("stomp", ConnId(1));
        let mut deliveries = core.deliveries();
        let mut st = StompSession::new(Arc::new(StompConfig::default()), ConnId(1));
        let mut out = Output::default();
        let mut sequence = Vec::new();
        if let Some(v) = start {
            sequence.push(Frame::new(Command::Connect).with("accept-version", v));
        }
        sequence.extend(frames);
        for f in sequence {
            let receipt = f.header("receipt").is_some() && f.command != Command::Connect
                && f.command != Command::Stomp;
            out.buf.clear();
            out.pending.clear();
            let step = st.on_frame(f, &mut core, &mut out);
            let version = st.version();
            while let Some(d) = deliveries.try_recv() {
                st.on_delivery(&d, &mut out.buf);
            }
            let written = decode_all(&mut out.buf, version);
            let errors = written.iter().filter(|w| w.command == Command::Error).count();
            let receipts = written.iter().filter(|w| w.command == Command::Receipt).count();
            match step {
                Step::Close => prop_assert_eq!(errors, 1),
                Step::Continue | Step::Disconnect => {
                    prop_assert_eq!(errors, 0);
                    prop_assert_eq!(receipts, usize::from(receipt));
                }
            }
            if step != Step::Continue {
                break;
            }
        }
    }
}
