//! A queue with `overflow = block` past its bound paces HTTP publishers as
//! it holds MQTT, AMQP, STOMP and NATS ones: the 202 for a message that
//! went into a slow MQTT subscriber's full queue (`[listeners.mqtt]
//! max_queued_messages`) waits until the queue has drained, so a client
//! that waits for its answers is paced and nothing is dropped.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use switchyard_testkit::eventually;
use switchyard_testkit::slow_mqtt::{BOUND, assert_all_in_order, body, bounded_broker};

const WAIT: Duration = Duration::from_secs(20);
const N: usize = 300;
const SIZE: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_mqtt_subscriber_paces_http_publishers_and_loses_nothing() {
    let (b, mut sub) = bounded_broker(|_| {}).await;
    let broker = b.broker().clone();

    let url = format!("http://{}/v1/topics/slow.t", b.addr("http"));
    let answered = Arc::new(AtomicUsize::new(0));
    // Two clients, one request in flight each (keep-alive), as HTTP
    // publishers usually are.
    let publishers: Vec<_> = (0..2)
        .map(|k| {
            let (url, answered) = (url.clone(), answered.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                for i in (k..N).step_by(2) {
                    let r = http.post(&url).body(body(i, SIZE)).send().await.unwrap();
                    assert_eq!(r.status(), 202, "message {i}: {}", r.text().await.unwrap());
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    assert!(
        eventually(WAIT, || broker.stats().queue_totals.blocked > 0).await,
        "the subscription never reached its bound"
    );
    // Paced for 2.5 s (within the core's 5 s episode): the subscription
    // stays near its bound (plus the request in flight of each client)
    // while nobody reads it, and the answers stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = answered.load(Ordering::Relaxed);
    for _ in 0..23 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ready = broker.stats().messages_ready;
        assert!(
            ready <= BOUND + 2,
            "{ready} messages held for the subscriber"
        );
    }
    assert_eq!(
        answered.load(Ordering::Relaxed),
        before,
        "publishers were answered while the queue was past its bound"
    );
    assert!(before < N, "the publishers were not paced");

    // The subscriber reads: every message arrives, in order (the two
    // clients' messages interleave; each client's are in its own order).
    let got = sub.take(N).await;
    for p in publishers {
        tokio::time::timeout(WAIT, p)
            .await
            .expect("a publisher is still held")
            .unwrap();
    }
    let index = |g: &bytes::Bytes| u32::from_be_bytes([g[0], g[1], g[2], g[3]]) as usize;
    for k in 0..2 {
        let mine: Vec<usize> = got.iter().map(index).filter(|i| i % 2 == k).collect();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "client {k}'s messages out of order"
        );
    }
    let mut got = got;
    got.sort_by_key(index);
    assert_all_in_order(&got, N, SIZE);
    assert_eq!(
        broker.stats().queue_totals.dropped,
        0,
        "messages were dropped"
    );
    b.stop().await;
}
