//! STOMP ↔ the core: a STOMP client's message reaches an in-process core
//! subscriber byte-identical, and the reverse, for topics and queues.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use support::{StompClient, WAIT};
use switchyard_core::{ConsumeOptions, DeclareQueue, QueueOptions, Subscribe};
use switchyard_model::{Address, AddressFilter, ConnId, Message, Namespace};
use switchyard_testkit::TestBroker;

fn every_byte() -> Bytes {
    Bytes::from((0..=255u8).rev().chain(0..=255u8).collect::<Vec<_>>())
}

#[tokio::test]
async fn stomp_to_core_subscriber_is_byte_identical() {
    let b = TestBroker::start().await;
    let mut core = b.broker().session("test", ConnId(u64::MAX - 7));
    core.subscribe(Subscribe::temporary(AddressFilter::new("x.*.out").unwrap()))
        .unwrap();
    let mut deliveries = core.deliveries();
    let mut c = StompClient::connect(b.addr("stomp"), Some("1.2")).await;
    let body = every_byte();
    c.send_with(
        "/topic/x.stomp.out",
        &body,
        &[("content-type", "application/octet-stream")],
    )
    .await;
    let d = tokio::time::timeout(WAIT, deliveries.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.message.body, body);
    assert_eq!(d.message.namespace, Namespace::Multicast);
    assert_eq!(&*d.message.address, "x.stomp.out");
    assert_eq!(d.message.origin.protocol, "stomp");
    assert_eq!(
        d.message.properties.content_type.as_deref(),
        Some("application/octet-stream")
    );

    // And into a queue a core consumer reads.
    c.send("/queue/to.core", &body).await;
    let id = core.consume("to.core", ConsumeOptions::default()).unwrap();
    let d = tokio::time::timeout(WAIT, deliveries.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.consumer, id);
    assert_eq!(d.message.body, body);
    assert_eq!(d.message.namespace, Namespace::Anycast);
    b.stop().await;
}

#[tokio::test]
async fn core_publisher_to_stomp_is_byte_identical() {
    let b = TestBroker::start().await;
    let mut c = StompClient::connect(b.addr("stomp"), Some("1.2")).await;
    c.subscribe("/topic/x.#", "auto").await;
    let body = every_byte();
    let mut msg = Message::multicast(&Address::new("x.core.in").unwrap(), body.clone());
    msg.properties.content_type = Some("application/x-test".into());
    msg.headers.push("origin", "core");
    b.broker().publish(msg).unwrap();
    let m = c.message().await;
    assert_eq!(m.body, body);
    assert_eq!(m.header("destination"), Some("/topic/x.core.in"));
    assert_eq!(m.header("content-type"), Some("application/x-test"));
    assert_eq!(m.header("origin"), Some("core"));

    // A queue declared in the core, read over STOMP.
    let mut core = b.broker().session("test", ConnId(u64::MAX - 8));
    core.declare_queue(DeclareQueue {
        name: Some("from.core".into()),
        options: QueueOptions::default(),
        passive: false,
    })
    .unwrap();
    core.publish(Message::anycast("from.core", body.clone()))
        .unwrap();
    c.subscribe("/amq/queue/from.core", "client-individual")
        .await;
    let m = c.message().await;
    assert_eq!(m.body, body);
    assert_eq!(m.header("destination"), Some("/queue/from.core"));
    b.stop().await;
}
