//! Queue watches (waiting for messages without polling) and per-protocol
//! traffic counters.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use std::time::Duration;
use switchyard_core::{Broker, CoreConfig, CoreError, DeclareQueue, Subscribe};
use switchyard_model::{Address, AddressFilter, Message, Str};

fn broker_with_queue(name: &str) -> Broker {
    let b = Broker::new(CoreConfig::new());
    b.declare_queue(
        DeclareQueue {
            name: Some(Str::from(name)),
            ..Default::default()
        },
        None,
    )
    .unwrap();
    b
}

async fn fires(w: &mut switchyard_core::QueueWatch) -> bool {
    tokio::time::timeout(Duration::from_millis(200), w.changed())
        .await
        .is_ok()
}

#[tokio::test]
async fn watch_fires_on_publish_requeue_and_delete_only() {
    let b = broker_with_queue("w");
    assert!(matches!(
        b.watch_queue("nope"),
        Err(CoreError::NotFound { .. })
    ));
    let mut w = b.watch_queue("w").unwrap();
    assert_eq!(w.queue(), "w");
    assert!(!fires(&mut w).await, "nothing happened yet");

    b.publish(Message::anycast("w", Bytes::from_static(b"1")))
        .unwrap();
    assert!(fires(&mut w).await, "a publish makes a message ready");
    assert!(!fires(&mut w).await, "each change is reported once");

    let mut s = b.session("test", b.next_conn_id());
    let (d, _) = s.get("w", true).unwrap().unwrap();
    assert!(!fires(&mut w).await, "taking a message is not a change");
    s.nack(d.consumer, d.tag, false, true).unwrap();
    assert!(fires(&mut w).await, "a requeue makes a message ready");

    // A change between two waits is not lost.
    b.publish(Message::anycast("w", Bytes::from_static(b"2")))
        .unwrap();
    assert!(fires(&mut w).await);

    b.delete_queue("w", false, false, None).unwrap();
    assert!(fires(&mut w).await, "deletion wakes watchers");
    assert!(w.is_deleted());
}

#[tokio::test]
async fn a_waiting_watcher_is_woken() {
    let b = broker_with_queue("w2");
    let mut w = b.watch_queue("w2").unwrap();
    let waiter = tokio::spawn(async move {
        w.changed().await;
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    b.publish(Message::anycast("w2", Bytes::from_static(b"x")))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken")
        .unwrap();
}

#[tokio::test]
async fn traffic_counts_publishes_deliveries_and_gets_per_protocol() {
    let b = broker_with_queue("t");
    let mut sub = b.session("proto-b", b.next_conn_id());
    sub.subscribe(Subscribe::temporary(AddressFilter::new("t.#").unwrap()))
        .unwrap();
    let mut deliveries = sub.deliveries();
    let publisher = b.session("proto-a", b.next_conn_id());
    for _ in 0..3 {
        publisher
            .publish(Message::multicast(
                &Address::new("t.x").unwrap(),
                Bytes::from_static(b"12345"),
            ))
            .unwrap();
    }
    publisher
        .publish(Message::anycast("t", Bytes::from_static(b"1234567")))
        .unwrap();
    drop(publisher);
    for _ in 0..3 {
        deliveries.recv().await.unwrap();
    }
    // The next wait flushes the subscriber's counts.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), deliveries.recv())
            .await
            .is_err()
    );
    let mut getter = b.session("proto-b", b.next_conn_id());
    getter.get("t", false).unwrap().unwrap();
    drop(getter);

    let stats: std::collections::HashMap<_, _> = b.traffic_stats().into_iter().collect();
    let a = stats["proto-a"];
    assert_eq!((a.messages_in, a.bytes_in), (4, 22));
    assert_eq!(a.messages_out, 0);
    let bb = stats["proto-b"];
    assert_eq!((bb.messages_out, bb.bytes_out), (4, 22));
    assert_eq!(bb.messages_in, 0);

    b.traffic("proto-c").add_in(2, 10);
    let c = b
        .traffic_stats()
        .into_iter()
        .find(|(p, _)| *p == "proto-c")
        .unwrap()
        .1;
    assert_eq!((c.messages_in, c.bytes_in), (2, 10));
    assert!(b.queue_exists("t"));
    assert!(!b.queue_exists("nope"));
}
