//! A queue with `overflow = block` past its bound holds AMQP publishers
//! back, as it does MQTT ones: an AMQP fan-in into a slow MQTT subscriber
//! (`[listeners.mqtt] max_queued_messages`) is paced, losing nothing,
//! silently (no `connection.blocked`) and without the held publisher's
//! heartbeats being held against it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use switchyard_testkit::eventually;
use switchyard_testkit::slow_mqtt::{BOUND, assert_all_in_order, body, bounded_broker};

const WAIT: Duration = Duration::from_secs(20);
const N: usize = 600;
const SIZE: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_mqtt_subscriber_holds_amqp_publishers_back_and_loses_nothing() {
    let (b, mut sub) = bounded_broker(|_| {}).await;
    let broker = b.broker().clone();

    // A one-second heartbeat: the server gives up on a client silent for
    // two intervals, less than the publisher is held below.
    let uri = format!("amqp://guest:guest@{}/%2f?heartbeat=1", b.addr("amqp"));
    let conn = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirmed = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let ch = ch.clone();
        let confirmed = confirmed.clone();
        tokio::spawn(async move {
            let mut waiting = Vec::with_capacity(N);
            for i in 0..N {
                let c = ch
                    .basic_publish(
                        "amq.topic".into(),
                        "slow.t".into(),
                        BasicPublishOptions::default(),
                        &body(i, SIZE),
                        BasicProperties::default(),
                    )
                    .await
                    .unwrap();
                waiting.push(c);
            }
            for c in waiting {
                assert!(c.await.unwrap().is_ack());
                confirmed.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    assert!(
        eventually(WAIT, || broker.stats().queue_totals.blocked > 0).await,
        "the subscription never reached its bound"
    );
    // Held back for 2.5 s (more than two heartbeat intervals, less than the
    // core's 5 s episode): the subscription stays near its bound (plus one
    // read of the publisher) while nobody reads it.
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ready = broker.stats().messages_ready;
        assert!(
            ready <= BOUND + 8,
            "{ready} messages held for the subscriber"
        );
        assert!(!conn.status().blocked(), "connection.blocked was sent");
    }
    assert!(!publisher.is_finished(), "the publisher was not held back");
    assert!(
        confirmed.load(Ordering::SeqCst) < N,
        "every publish was confirmed while held"
    );

    let got = sub.take(N).await;
    assert_all_in_order(&got, N, SIZE);
    tokio::time::timeout(WAIT, publisher)
        .await
        .expect("the publisher is still held")
        .unwrap();
    assert_eq!(confirmed.load(Ordering::SeqCst), N);
    assert_eq!(
        broker.stats().queue_totals.dropped,
        0,
        "messages were dropped"
    );
    // Not closed for missed heartbeats while held, and never told
    // connection.blocked (that is for the memory/disk alarms).
    assert!(
        conn.status().connected(),
        "the publisher's connection closed"
    );
    assert!(!conn.status().blocked(), "connection.blocked was sent");
    let c = ch
        .basic_publish(
            "amq.topic".into(),
            "slow.t".into(),
            BasicPublishOptions::default(),
            b"after",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(WAIT, c)
            .await
            .unwrap()
            .unwrap()
            .is_ack()
    );
    assert_eq!(&sub.take(1).await[0][..], b"after");
    conn.close(200, "bye".into()).await.unwrap();
    b.stop().await;
}
