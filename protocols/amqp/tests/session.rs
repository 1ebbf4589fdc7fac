//! The sans-IO connection state machine driven by a scripted peer: frames
//! in, frames out, no sockets.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bytes::Bytes;
use std::sync::Arc;
use switchyard_amqp::codec::*;
use switchyard_amqp::session::{Conn, Params, Phase};
use switchyard_core::{Broker, CoreConfig};
use switchyard_model::{ConnId, Headers, Value};

fn conn(broker: &Broker) -> Conn {
    Conn::new(
        broker.session("amqp", ConnId(1)),
        Params {
            frame_max: 131_072,
            channel_max: 16,
            heartbeat: 60,
            max_message_size: 1 << 20,
            product_version: "test",
        },
    )
}

fn out(c: &mut Conn) -> Vec<Frame> {
    let mut buf = c.out.split();
    let mut frames = Vec::new();
    while let Some(f) = decode_frame(&mut buf, 1 << 20).unwrap() {
        frames.push(f);
    }
    frames
}

fn m(channel: u16, method: impl Into<Method>) -> Frame {
    Frame::Method {
        channel,
        method: method.into(),
    }
}

fn open(c: &mut Conn, blocked_capability: bool) {
    c.on_frame(Frame::ProtocolHeader);
    let start = out(c);
    assert!(matches!(
        &start[..],
        [Frame::Method {
            method: Method::ConnectionStart(_),
            ..
        }]
    ));
    let mut caps = Headers::new();
    caps.push("connection.blocked", Value::Bool(blocked_capability));
    caps.push("consumer_cancel_notify", Value::Bool(true));
    let mut props = Headers::new();
    props.push("capabilities", Value::Map(Arc::new(caps)));
    c.on_frame(m(
        0,
        ConnectionStartOk {
            client_properties: props,
            mechanism: "PLAIN".into(),
            response: Bytes::from_static(b"\0u\0p"),
            locale: "en_US".into(),
        },
    ));
    assert!(matches!(
        &out(c)[..],
        [Frame::Method {
            method: Method::ConnectionTune(_),
            ..
        }]
    ));
    c.on_frame(m(
        0,
        ConnectionTuneOk {
            channel_max: 0,
            frame_max: 8192,
            heartbeat: 5,
        },
    ));
    c.on_frame(m(
        0,
        ConnectionOpen {
            virtual_host: "/".into(),
            ..Default::default()
        },
    ));
    assert!(matches!(
        &out(c)[..],
        [Frame::Method {
            method: Method::ConnectionOpenOk(_),
            ..
        }]
    ));
    assert_eq!(c.phase, Phase::Open);
    assert_eq!((c.frame_max, c.heartbeat), (8192, 5));
}

#[test]
fn connection_blocked_is_sent_only_to_clients_that_asked() {
    let b = Broker::new(CoreConfig::new());
    let mut c = conn(&b);
    open(&mut c, true);
    c.set_blocked(true, "low on memory");
    c.set_blocked(true, "still low");
    c.set_blocked(false, "");
    let frames = out(&mut c);
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert!(
        matches!(&frames[0], Frame::Method { method: Method::ConnectionBlocked(ConnectionBlocked { reason }), .. } if reason.as_bytes() == b"low on memory")
    );
    assert!(matches!(
        &frames[1],
        Frame::Method {
            method: Method::ConnectionUnblocked(_),
            ..
        }
    ));

    let mut c = conn(&b);
    open(&mut c, false);
    c.set_blocked(true, "x");
    assert!(out(&mut c).is_empty());
}

#[test]
fn channel_flow_holds_deliveries_until_resumed() {
    let b = Broker::new(CoreConfig::new());
    let mut c = conn(&b);
    open(&mut c, false);
    let mut deliveries = c.session().deliveries();
    c.on_frame(m(1, ChannelOpen::default()));
    c.on_frame(m(
        1,
        QueueDeclare {
            queue: "fq".into(),
            ..Default::default()
        },
    ));
    c.on_frame(m(
        1,
        BasicConsume {
            queue: "fq".into(),
            consumer_tag: "t".into(),
            no_ack: true,
            ..Default::default()
        },
    ));
    out(&mut c);
    c.on_frame(m(1, ChannelFlow { active: false }));
    assert!(matches!(
        &out(&mut c)[..],
        [Frame::Method {
            method: Method::ChannelFlowOk(ChannelFlowOk { active: false }),
            ..
        }]
    ));
    b.publish(switchyard_model::Message::anycast(
        "fq",
        Bytes::from_static(b"held"),
    ))
    .unwrap();
    while let Some(d) = deliveries.try_recv() {
        c.on_delivery(d);
    }
    assert!(
        out(&mut c).is_empty(),
        "nothing is delivered while flow is off"
    );
    c.on_frame(m(1, ChannelFlow { active: true }));
    for d in std::iter::from_fn(|| deliveries.try_recv()) {
        c.on_delivery(d);
    }
    let frames = out(&mut c);
    assert!(
        frames.iter().any(|f| matches!(
            f,
            Frame::Method {
                method: Method::BasicDeliver(_),
                ..
            }
        )),
        "{frames:?}"
    );
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, Frame::Body { payload, .. } if &payload[..] == b"held"))
    );
}

#[test]
fn a_channel_error_closes_the_channel_and_ignores_it_until_close_ok() {
    let b = Broker::new(CoreConfig::new());
    let mut c = conn(&b);
    open(&mut c, false);
    c.on_frame(m(1, ChannelOpen::default()));
    out(&mut c);
    c.on_frame(m(
        1,
        QueueDeclare {
            queue: "nope".into(),
            passive: true,
            ..Default::default()
        },
    ));
    let frames = out(&mut c);
    let [
        Frame::Method {
            channel: 1,
            method: Method::ChannelClose(close),
        },
    ] = &frames[..]
    else {
        panic!("{frames:?}")
    };
    assert_eq!(close.reply_code, NOT_FOUND);
    assert_eq!((close.class_id, close.method_id), (50, 10));
    // Ignored while closing.
    c.on_frame(m(
        1,
        QueueDeclare {
            queue: "x".into(),
            ..Default::default()
        },
    ));
    assert!(out(&mut c).is_empty());
    c.on_frame(m(1, ChannelCloseOk {}));
    c.on_frame(m(1, ChannelOpen::default()));
    assert!(matches!(
        &out(&mut c)[..],
        [Frame::Method {
            method: Method::ChannelOpenOk(_),
            ..
        }]
    ));
    assert_eq!(c.phase, Phase::Open);
}

#[test]
fn confirms_settled_in_one_turn_go_out_as_one_multiple_ack() {
    let b = Broker::new(CoreConfig::new());
    let mut c = conn(&b);
    open(&mut c, false);
    c.on_frame(m(1, ChannelOpen::default()));
    c.on_frame(m(1, ConfirmSelect { nowait: false }));
    c.on_frame(m(
        1,
        QueueDeclare {
            queue: "cq".into(),
            ..Default::default()
        },
    ));
    out(&mut c);
    for _ in 0..5 {
        c.on_frame(m(
            1,
            BasicPublish {
                routing_key: "cq".into(),
                ..Default::default()
            },
        ));
        c.on_frame(Frame::Header {
            channel: 1,
            header: ContentHeader {
                class_id: 60,
                body_size: 1,
                properties: BasicProperties::default(),
            },
        });
        c.on_frame(Frame::Body {
            channel: 1,
            payload: Bytes::from_static(b"x"),
        });
    }
    c.flush_confirms();
    let frames = out(&mut c);
    assert!(
        matches!(
            &frames[..],
            [Frame::Method {
                method: Method::BasicAck(BasicAck {
                    delivery_tag: 5,
                    multiple: true
                }),
                ..
            }]
        ),
        "{frames:?}"
    );
}

#[test]
fn shutdown_sends_320_and_waits_for_close_ok() {
    let b = Broker::new(CoreConfig::new());
    let mut c = conn(&b);
    open(&mut c, false);
    c.shutdown();
    let frames = out(&mut c);
    assert!(matches!(
        &frames[..],
        [Frame::Method {
            method: Method::ConnectionClose(ConnectionClose {
                reply_code: 320,
                ..
            }),
            ..
        }]
    ));
    assert_eq!(c.phase, Phase::Closing);
    c.on_frame(m(0, ConnectionCloseOk {}));
    assert_eq!(c.phase, Phase::Closed);
}
