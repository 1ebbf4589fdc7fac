//! A queue with `overflow = block` past its bound holds NATS publishers
//! back, as it does MQTT ones (and as nats-server stalls a producer of a
//! slow consumer): a NATS fan-in into a slow MQTT subscriber
//! (`[listeners.mqtt] max_queued_messages`) is paced, losing nothing, and
//! the held publisher is not declared stale for PONGs the server cannot
//! read meanwhile.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::time::Duration;
use switchyard_testkit::eventually;
use switchyard_testkit::slow_mqtt::{BOUND, assert_all_in_order, body, bounded_broker};

const WAIT: Duration = Duration::from_secs(20);
const N: usize = 600;
const SIZE: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_mqtt_subscriber_holds_nats_publishers_back_and_loses_nothing() {
    let (b, mut sub) = bounded_broker(|c| {
        // A client is stale at the third tick without an answer to two
        // PINGs: 1.5 s, less than the publisher is held below (and more
        // than a busy test machine keeps the client from answering).
        let nats = c.listener_mut("nats").unwrap();
        nats.options.insert("ping_interval".into(), "500ms".into());
        nats.options.insert("max_pings_out".into(), 2u64.into());
    })
    .await;
    let broker = b.broker().clone();

    // Disconnections and server errors ("Stale Connection") the client saw.
    let trouble = Arc::new(std::sync::Mutex::new(Vec::new()));
    let t = trouble.clone();
    let client = async_nats::ConnectOptions::new()
        .event_callback(move |e| {
            let t = t.clone();
            async move {
                if matches!(
                    e,
                    async_nats::Event::Disconnected | async_nats::Event::ServerError(_)
                ) {
                    t.lock().unwrap().push(e.to_string());
                }
            }
        })
        .connect(format!("nats://{}", b.addr("nats")))
        .await
        .unwrap();
    let publisher = {
        let client = client.clone();
        tokio::spawn(async move {
            for i in 0..N {
                client.publish("slow.t", body(i, SIZE)).await.unwrap();
            }
            // PING/PONG: every publish before it was read.
            client.flush().await.unwrap();
        })
    };

    assert!(
        eventually(WAIT, || broker.stats().queue_totals.blocked > 0).await,
        "the subscription never reached its bound"
    );
    // Held back for 2.5 s (many PING intervals, within the core's 5 s
    // episode): the subscription stays near its bound (plus one read of the
    // publisher) while nobody reads it, and the flush does not return.
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ready = broker.stats().messages_ready;
        assert!(
            ready <= BOUND + 8,
            "{ready} messages held for the subscriber"
        );
    }
    assert!(!publisher.is_finished(), "the publisher was not held back");

    let got = sub.take(N).await;
    tokio::time::timeout(WAIT, publisher)
        .await
        .expect("the publisher is still held")
        .unwrap();
    let trouble = trouble.lock().unwrap().clone();
    assert!(trouble.is_empty(), "the publisher was cut off: {trouble:?}");
    assert_all_in_order(&got, N, SIZE);
    assert_eq!(
        broker.stats().queue_totals.dropped,
        0,
        "messages were dropped"
    );
    b.stop().await;
}
