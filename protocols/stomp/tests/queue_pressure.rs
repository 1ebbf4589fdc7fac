//! A queue with `overflow = block` past its bound holds STOMP publishers
//! back, as it does MQTT ones: a STOMP fan-in into a slow MQTT subscriber
//! (`[listeners.mqtt] max_queued_messages`) is paced, losing nothing, and
//! the held publisher's heart-beats are not held against it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::StompClient;
use switchyard_stomp::codec::Command;
use switchyard_testkit::eventually;
use switchyard_testkit::slow_mqtt::{BOUND, assert_all_in_order, body, bounded_broker};

const WAIT: Duration = Duration::from_secs(20);
const N: usize = 600;
const SIZE: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_mqtt_subscriber_holds_stomp_publishers_back_and_loses_nothing() {
    let (b, mut sub) = bounded_broker(|c| {
        c.listener_mut("stomp")
            .unwrap()
            .options
            .insert("heart_beat_grace".into(), "0s".into());
    })
    .await;
    let broker = b.broker().clone();

    // The client promises a heart-beat every second: the server gives up
    // on it after 1.5 s of silence, less than it is held below.
    let (publ, connected) = StompClient::connect_with(
        b.addr("stomp"),
        Command::Connect,
        &[
            ("host", "/"),
            ("accept-version", "1.2"),
            ("heart-beat", "1000,0"),
        ],
    )
    .await;
    assert_eq!(connected.command, Command::Connected, "{connected:?}");
    let sent = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut publ = publ;
            for i in 0..N {
                // Each SEND waits for its RECEIPT.
                publ.send("/topic/slow.t", &body(i, SIZE)).await;
                sent.fetch_add(1, Ordering::SeqCst);
            }
            publ
        })
    };

    assert!(
        eventually(WAIT, || broker.stats().queue_totals.blocked > 0).await,
        "the subscription never reached its bound"
    );
    // Held back for 2.5 s (past the heart-beat timeout, within the core's
    // 5 s episode): the subscription stays near its bound while nobody
    // reads it, and no more receipts come.
    let mut held_at = None;
    for i in 0..25 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ready = broker.stats().messages_ready;
        assert!(
            ready <= BOUND + 8,
            "{ready} messages held for the subscriber"
        );
        if i == 4 {
            held_at = Some(sent.load(Ordering::SeqCst));
        }
    }
    assert!(!publisher.is_finished(), "the publisher was not held back");
    assert_eq!(
        Some(sent.load(Ordering::SeqCst)),
        held_at,
        "receipts kept coming while held"
    );

    let got = sub.take(N).await;
    // Every SEND got its RECEIPT: the publisher's connection was not closed
    // for its silence while held.
    let publ = tokio::time::timeout(WAIT, publisher)
        .await
        .expect("the publisher is still held")
        .unwrap();
    drop(publ);
    assert_eq!(sent.load(Ordering::SeqCst), N);
    assert_all_in_order(&got, N, SIZE);
    assert_eq!(
        broker.stats().queue_totals.dropped,
        0,
        "messages were dropped"
    );
    b.stop().await;
}
