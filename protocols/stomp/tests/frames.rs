//! The STOMP adapter driven over raw frames against an in-process broker:
//! versions, ack modes, NACK and dead-lettering, transactions, receipts,
//! heart-beats, bodies, wildcards, durable subscriptions, competing
//! consumers, destinations and header mapping.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::Duration;
use support::{Next, StompClient, WAIT};
use switchyard_core::{AddressPolicy, ExchangeKind, ExchangeOptions, Subscribe};
use switchyard_model::{Address, AddressFilter, ConnId, Message};
use switchyard_stomp::codec::{Command, Frame, Version};
use switchyard_stomp::session::durable_queue_name;
use switchyard_testkit::TestBroker;

fn policies(map: &[(&str, AddressPolicy)]) -> impl FnOnce(&mut switchyard::Config) {
    let map: BTreeMap<String, AddressPolicy> = map
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    move |c: &mut switchyard::Config| {
        c.core = c.core.clone().with_policies(&map).unwrap();
    }
}

fn stomp_option(key: &'static str, value: &'static str) -> impl FnOnce(&mut switchyard::Config) {
    move |c: &mut switchyard::Config| {
        c.listener_mut("stomp")
            .unwrap()
            .options
            .insert(key.to_owned(), figment::value::Value::from(value));
    }
}

#[tokio::test]
async fn connect_negotiates_the_highest_common_version() {
    let b = TestBroker::start().await;
    let addr = b.addr("stomp");
    for (accept, want) in [
        (None, "1.0"),
        (Some("1.0"), "1.0"),
        (Some("1.0,1.1"), "1.1"),
        (Some("1.1,1.2"), "1.2"),
        (Some("1.0,1.1,1.2,2.1"), "1.2"),
    ] {
        let mut headers = vec![("host", "/"), ("login", "guest"), ("passcode", "guest")];
        if let Some(a) = accept {
            headers.push(("accept-version", a));
        }
        for command in [Command::Connect, Command::Stomp] {
            let (_c, f) = StompClient::connect_with(addr, command, &headers).await;
            assert_eq!(f.command, Command::Connected, "{f:?}");
            assert_eq!(f.header("version"), Some(want));
            assert!(f.header("server").unwrap().starts_with("switchyard/"));
            assert!(f.header("session").is_some());
            assert_eq!(f.header("heart-beat").is_some(), want != "1.0");
        }
    }
    let (mut c, f) =
        StompClient::connect_with(addr, Command::Connect, &[("accept-version", "2.0,3.0")]).await;
    assert_eq!(f.command, Command::Error);
    assert_eq!(f.header("version"), Some("1.0,1.1,1.2"));
    assert!(
        std::str::from_utf8(&f.body)
            .unwrap()
            .contains("1.0 1.1 1.2")
    );
    c.expect_closed().await;
    b.stop().await;
}

#[tokio::test]
async fn publish_and_subscribe_in_each_version_with_escaped_headers() {
    let b = TestBroker::start().await;
    let addr = b.addr("stomp");
    for (accept, value) in [
        (None, "plain value"),
        (Some("1.1"), "colon: and\nnewline \\ back"),
        (Some("1.2"), "colon: and\nnewline \\ back\rcr"),
    ] {
        let mut sub = StompClient::connect(addr, accept).await;
        let mut publ = StompClient::connect(addr, accept).await;
        let id = sub.subscribe("/topic/ver.check", "auto").await;
        publ.send_with("/topic/ver.check", b"hello", &[("x-user", value)])
            .await;
        let m = sub.message().await;
        assert_eq!(m.header("subscription"), Some(id.as_str()));
        assert_eq!(m.header("destination"), Some("/topic/ver.check"));
        assert!(m.header("message-id").is_some());
        assert_eq!(m.header("content-length"), Some("5"));
        assert_eq!(
            m.header("ack"),
            None,
            "auto subscriptions carry no ack header"
        );
        assert_eq!(m.header("x-user"), Some(value), "{accept:?}");
        assert_eq!(&m.body[..], b"hello");
    }
    b.stop().await;
}

#[tokio::test]
async fn message_ids_are_unique_per_delivery_and_1_2_sends_ack() {
    let b = TestBroker::start().await;
    let addr = b.addr("stomp");
    let mut c = StompClient::connect(addr, Some("1.2")).await;
    c.subscribe("/queue/ids", "client-individual").await;
    c.send("/queue/ids", b"1").await;
    c.send("/queue/ids", b"2").await;
    let m1 = c.message().await;
    let m2 = c.message().await;
    assert_ne!(m1.header("message-id"), m2.header("message-id"));
    assert_eq!(m1.header("ack"), m1.header("message-id"));
    assert_eq!(m1.header("destination"), Some("/queue/ids"));
    b.stop().await;
}

/// Sends `n` messages `m0..` to queue `q` from a fresh connection.
async fn fill(addr: std::net::SocketAddr, q: &str, n: usize) {
    let mut p = StompClient::connect(addr, Some("1.2")).await;
    for i in 0..n {
        p.send(&format!("/queue/{q}"), format!("m{i}").as_bytes())
            .await;
    }
}

async fn bodies(c: &mut StompClient, n: usize) -> Vec<Frame> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(c.message().await);
    }
    out
}

fn body_str(f: &Frame) -> String {
    String::from_utf8(f.body.to_vec()).unwrap()
}

#[tokio::test]
async fn client_individual_acks_only_the_named_message() {
    let b = TestBroker::start().await;
    let addr = b.addr("stomp");
    for accept in ["1.1", "1.2"] {
        let q = format!("ci{}", accept.replace('.', ""));
        let dest = format!("/queue/{q}");
        let mut c = StompClient::connect(addr, Some(accept)).await;
        c.subscribe(&dest, "client-individual").await;
        fill(addr, &q, 3).await;
        let got = bodies(&mut c, 3).await;
        let ack = c.ack_frame(Command::Ack, &got[1]);
        c.with_receipt(ack).await.unwrap();
        drop(c);
        let mut c = StompClient::connect(addr, Some(accept)).await;
        c.subscribe(&dest, "client-individual").await;
        let again = bodies(&mut c, 2).await;
        assert_eq!(
            again.iter().map(body_str).collect::<Vec<_>>(),
            ["m0", "m2"],
            "{accept}"
        );
        assert!(
            again
                .iter()
                .all(|m| m.header("redelivered") == Some("true"))
        );
        c.no_message().await;
    }
    b.stop().await;
}

#[tokio::test]
async fn client_ack_is_cumulative() {
    let b = TestBroker::start().await;
    let addr = b.addr("stomp");
    for accept in [None, Some("1.1"), Some("1.2")] {
        let q = format!("cum{}", accept.unwrap_or("10").replace('.', ""));
        let dest = format!("/queue/{q}");
        let mut c = StompClient::connect(addr, accept).await;
        c.subscribe(&dest, "client").await;
        fill(addr, &q, 3).await;
        let got = bodies(&mut c, 3).await;
        let ack = c.ack_frame(Command::Ack, &got[1]);
        c.with_receipt(ack).await.unwrap();
        drop(c);
        let mut c = StompClient::connect(addr, accept).await;
        c.subscribe(&dest, "client").await;
        assert_eq!(body_str(&c.message().await), "m2", "{accept:?}");
        c.no_message().await;
    }
    b.stop().await;
}

#[tokio::test]
async fn auto_ack_does_not_redeliver() {
    let b = TestBroker::start().await;
    let addr = b.addr("stomp");
    let mut c = StompClient::connect(addr, Some("1.2")).await;
    c.subscribe("/queue/autoq", "auto").await;
    fill(addr, "autoq", 2).await;
    bodies(&mut c, 2).await;
    drop(c);
    let mut c = StompClient::connect(addr, Some("1.2")).await;
    c.subscribe("/queue/autoq", "auto").await;
    c.no_message().await;
    b.stop().await;
}

#[tokio::test]
async fn prefetch_count_bounds_unacknowledged_messages() {
    let b = TestBroker::start().await;
    let addr = b.addr("stomp");
    fill(addr, "pf", 5).await;
    let mut c = StompClient::connect(addr, Some("1.2")).await;
    c.subscribe_with("/queue/pf", "client-individual", &[("prefetch-count", "2")])
        .await;
    let got = bodies(&mut c, 2).await;
    c.no_message().await;
    let ack = c.ack_frame(Command::Ack, &got[0]);
    c.send_frame(&ack).await;
    assert_eq!(body_str(&c.message().await), "m2");
    c.no_message().await;
    b.stop().await;
}

#[tokio::test]
async fn nack_redelivers_then_dead_letters_after_max_deliveries() {
    let b = TestBroker::start_with(policies(&[(
        "nackq",
        AddressPolicy {
            max_deliveries: Some(2),
            dlq: Some("nackq.dead".into()),
            ..AddressPolicy::default()
        },
    )]))
    .await;
    let addr = b.addr("stomp");
    let mut c = StompClient::connect(addr, Some("1.2")).await;
    c.subscribe("/queue/nackq", "client-individual").await;
    c.send("/queue/nackq", b"poison").await;
    let first = c.message().await;
    assert_eq!(first.header("redelivered"), None);
    let nack = c.ack_frame(Command::Nack, &first);
    c.send_frame(&nack).await;
    let second = c.message().await;
    assert_eq!(&second.body[..], b"poison");
    assert_eq!(second.header("redelivered"), Some("true"));
    let nack = c.ack_frame(Command::Nack, &second);
    c.with_receipt(nack).await.unwrap();
    c.no_message().await;
    c.subscribe("/queue/nackq.dead", "auto").await;
    let dead = c.message().await;
    assert_eq!(&dead.body[..], b"poison");
    assert_eq!(dead.header("x-first-death-reason"), Some("delivery_limit"));
    assert_eq!(dead.header("x-first-death-queue"), Some("nackq"));
    b.stop().await;
}

#[tokio::test]
async fn nack_with_requeue_false_dead_letters_at_once() {
    let b = TestBroker::start_with(policies(&[(
        "rq",
        AddressPolicy {
            dlq: Some("rq.dead".into()),
            ..AddressPolicy::default()
        },
    )]))
    .await;
    let addr = b.addr("stomp");
    let mut c = StompClient::connect(addr, Some("1.2")).await;
    c.subscribe("/queue/rq", "client-individual").await;
    c.send("/queue/rq", b"x").await;
    let m = c.message().await;
    let nack = c.ack_frame(Command::Nack, &m).with("requeue", "false");
    c.with_receipt(nack).await.unwrap();
    c.subscribe("/queue/rq.dead", "auto").await;
    assert_eq!(
        c.message().await.header("x-first-death-reason"),
        Some("rejected")
    );
    b.stop().await;
}

#[tokio::test]
async fn transactions_commit_and_abort_sends() {
    let b = TestBroker::start().await;
    let addr = b.addr("stomp");
    let mut sub = StompClient::connect(addr, Some("1.2")).await;
    sub.subscribe("/topic/tx.sends", "auto").await;
    let mut c = StompClient::connect(addr, Some("1.2")).await;
    c.with_receipt(Frame::new(Command::Begin).with("transaction", "t1"))
        .await
        .unwrap();
    c.send_with("/topic/tx.sends", b"one", &[("transaction", "t1")])
        .await;
    c.send_with("/topic/tx.sends", b"two", &[("transaction", "t1")])
        .await;
    sub.no_message().await;
    c.with_receipt(Frame::new(Command::Commit).with("transaction", "t1"))
        .await
        .unwrap();
    assert_eq!(body_str(&sub.message().await), "one");
    assert_eq!(body_str(&sub.message().await), "two");

    c.with_receipt(Frame::new(Command::Begin).with("transaction", "t2"))
        .await
        .unwrap();
    c.send_with("/topic/tx.sends", b"three", &[("transaction", "t2")])
        .await;
    c.with_receipt(Frame::new(Command::Abort).with("transaction", "t2"))
        .await
        .unwrap();
    sub.no_message().await;
    // The name is free again after COMMIT/ABORT.
    c.with_receipt(Frame::new(Command::Begin).with("transaction", "t1"))
        .await
        .unwrap();
    b.stop().await;
}

#[tokio::test]
async fn transactions_commit_and_abort_acks() {
    let b = TestBroker::start().await;
    let addr = b.addr("stomp");
    fill(addr, "txack", 2).await;
    let mut c = StompClient::connect(addr, Some("1.2")).await;
    c.subscribe("/queue/txack", "client-individual").await;
    let got = bodies(&mut c, 2).await;
    c.with_receipt(Frame::new(Command::Begin).with("transaction", "a"))
        .await
        .unwrap();
    c.with_receipt(c.ack_frame(Command::Ack, &got[0]).with("transaction", "a"))
        .await
        .unwrap();
    c.with_receipt(Frame::new(Command::Abort).with("transaction", "a"))
        .await
        .unwrap();
    c.with_receipt(Frame::new(Command::Begin).with("transaction", "b"))
        .await
        .unwrap();
    c.with_receipt(c.ack_frame(Command::Ack, &got[1]).with("transaction", "b"))
        .await
        .unwrap();
    c.with_receipt(Frame::new(Command::Commit).with("transaction", "b"))
        .await
        .unwrap();
    drop(c);
    let mut c = StompClient::connect(addr, Some("1.2")).await;
    c.subscribe("/queue/txack", "client-individual").await;
    assert_eq!(
        body_str(&c.message().await),
        "m0",
        "the aborted ack is undone"
    );
    c.no_message().await;
    b.stop().await;
}

#[tokio::test]
async fn a_commit_with_a_stale_ack_applies_nothing() {
    let b = TestBroker::start().await;
    let addr = b.addr("stomp");
    let mut sub = StompClient::connect(addr, Some("1.2")).await;
    sub.subscribe("/topic/tx.atomic", "auto").await;
    fill(addr, "txstale", 1).await;
    let mut c = StompClient::connect(addr, Some("1.2")).await;
    c.subscribe("/queue/txstale", "client-individual").await;
    let m = c.message().await;
    c.with_receipt(c.ack_frame(Command::Ack, &m)).await.unwrap();
    c.with_receipt(Frame::new(Command::Begin).with("transaction", "t"))
        .await
        .unwrap();
    c.send_with("/topic/tx.atomic", b"never", &[("transaction", "t")])
        .await;
    c.send_frame(&c.ack_frame(Command::Ack, &m).with("transaction", "t"))
        .await;
    c.send_frame(&Frame::new(Command::Commit).with("transaction", "t"))
        .await;
    c.expect_error_and_close().await;
    sub.no_message().await;
    b.stop().await;
}

#[tokio::test]
async fn every_frame_that_asks_gets_a_receipt_and_disconnect_closes_after_it() {
    let b = TestBroker::start().await;
    let addr = b.addr("stomp");
    let mut c = StompClient::connect(addr, Some("1.2")).await;
    c.with_receipt(
        Frame::new(Command::Subscribe)
            .with("id", "1")
            .with("destination", "/queue/rcpt")
            .with("ack", "client"),
    )
    .await
    .unwrap();
    c.with_receipt(
        Frame::new(Command::Send)
            .with("destination", "/queue/rcpt")
            .with_body(&b"x"[..]),
    )
    .await
    .unwrap();
    let m = c.message().await;
    c.with_receipt(c.ack_frame(Command::Ack, &m)).await.unwrap();
    c.with_receipt(Frame::new(Command::Begin).with("transaction", "t"))
        .await
        .unwrap();
    c.with_receipt(Frame::new(Command::Commit).with("transaction", "t"))
        .await
        .unwrap();
    c.with_receipt(Frame::new(Command::Unsubscribe).with("id", "1"))
        .await
        .unwrap();
    c.send_frame(&Frame::new(Command::Disconnect).with("receipt", "bye"))
        .await;
    let r = c.expect(Command::Receipt).await;
    assert_eq!(r.header("receipt-id"), Some("bye"));
    c.expect_closed().await;
    b.stop().await;
}

#[tokio::test]
async fn heart_beats_keep_a_quiet_connection_open() {
    let b = TestBroker::start().await;
    let addr = b.addr("stomp");
    let (mut c, f) = StompClient::connect_with(
        addr,
        Command::Connect,
        &[("accept-version", "1.2"), ("heart-beat", "500,500")],
    )
    .await;
    assert_eq!(f.header("heart-beat"), Some("1000,1000"));
    // Both ways at 1 s; the client beats every 400 ms, for 4 s.
    for _ in 0..10 {
        c.send_raw(b"\n").await;
        match c.next_frame(Duration::from_millis(400)).await {
            Next::Timeout => {}
            other => panic!("unexpected: {other:?}"),
        }
    }
    assert!(
        c.eols_seen >= 2,
        "the server heart-beats: saw {}",
        c.eols_seen
    );
    c.send("/topic/still.here", b"alive").await;
    b.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_its_heart_beat_interval() {
    let b = TestBroker::start().await;
    let addr = b.addr("stomp");
    // The client promises a heart-beat every 500 ms (1 s with the server's
    // minimum), then sends nothing.
    let (mut c, f) = StompClient::connect_with(
        addr,
        Command::Connect,
        &[("accept-version", "1.2"), ("heart-beat", "500,0")],
    )
    .await;
    assert_eq!(f.command, Command::Connected);
    let started = tokio::time::Instant::now();
    let err = c.expect_error_and_close().await;
    assert_eq!(err.header("message"), Some("heart-beat timeout"));
    assert!(started.elapsed() >= Duration::from_millis(1000));
    // A client that never offered heart-beats is not dropped.
    let mut quiet = StompClient::connect(addr, Some("1.2")).await;
    match quiet.next_frame(Duration::from_millis(2500)).await {
        Next::Timeout => {}
        other => panic!("unexpected: {other:?}"),
    }
    b.stop().await;
}

#[tokio::test]
async fn binary_bodies_with_nul_bytes_and_a_mebibyte_round_trip() {
    let b = TestBroker::start().await;
    let addr = b.addr("stomp");
    let mut c = StompClient::connect(addr, Some("1.2")).await;
    c.subscribe("/topic/bin", "auto").await;
    let all: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
    c.send("/topic/bin", &all).await;
    let m = c.message().await;
    assert_eq!(&m.body[..], &all[..]);
    assert_eq!(m.header("content-length"), Some("512"));
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    c.send("/topic/bin", &big).await;
    let m = c.message().await;
    assert_eq!(m.body.len(), big.len());
    assert!(m.body[..] == big[..]);
    // A body without content-length ends at the first NUL.
    c.with_receipt(
        Frame::new(Command::Send)
            .with("destination", "/topic/bin")
            .with_body(&b"text body"[..]),
    )
    .await
    .unwrap();
    assert_eq!(&c.message().await.body[..], b"text body");
    b.stop().await;
}

#[tokio::test]
async fn wildcard_topic_subscriptions() {
    let b = TestBroker::start().await;
    let addr = b.addr("stomp");
    let mut star = StompClient::connect(addr, Some("1.2")).await;
    let mut hash = StompClient::connect(addr, Some("1.2")).await;
    star.subscribe("/topic/wc.*.t", "auto").await;
    hash.subscribe("/topic/wc.#", "auto").await;
    let mut p = StompClient::connect(addr, Some("1.2")).await;
    for a in ["wc.a.t", "wc.a.b.t", "wc", "other.a.t"] {
        p.send(&format!("/topic/{a}"), a.as_bytes()).await;
    }
    assert_eq!(
        star.message().await.header("destination"),
        Some("/topic/wc.a.t")
    );
    star.no_message().await;
    let mut got: Vec<String> = Vec::new();
    for _ in 0..3 {
        got.push(body_str(&hash.message().await));
    }
    got.sort();
    assert_eq!(got, ["wc", "wc.a.b.t", "wc.a.t"]);
    hash.no_message().await;
    b.stop().await;
}

#[tokio::test]
async fn durable_subscription_receives_what_was_published_while_away() {
    let b = TestBroker::start().await;
    let addr = b.addr("stomp");
    let mut p = StompClient::connect(addr, Some("1.2")).await;
    // ActiveMQ style: client-id + activemq.subscriptionName.
    let connect = [("accept-version", "1.2"), ("client-id", "app.1")];
    let (mut c, _) = StompClient::connect_with(addr, Command::Connect, &connect).await;
    c.subscribe_with(
        "/topic/dur.news",
        "client-individual",
        &[("activemq.subscriptionName", "news")],
    )
    .await;
    p.send("/topic/dur.news", b"first").await;
    let m = c.message().await;
    c.with_receipt(c.ack_frame(Command::Ack, &m)).await.unwrap();
    drop(c);
    p.send("/topic/dur.news", b"second").await;
    p.send("/topic/dur.news", b"third").await;
    let queue = durable_queue_name("app.1", "news");
    assert_eq!(queue, "$stomp.durable.app%2E1.news");
    let info = b.broker().queue_info(&queue).expect("durable queue kept");
    assert!(info.durable);
    let (mut c, _) = StompClient::connect_with(addr, Command::Connect, &connect).await;
    let id = c
        .subscribe_with(
            "/topic/dur.news",
            "client-individual",
            &[("activemq.subscriptionName", "news")],
        )
        .await;
    assert_eq!(body_str(&c.message().await), "second");
    assert_eq!(body_str(&c.message().await), "third");
    c.no_message().await;
    // Unsubscribing with the name removes the durable subscription.
    c.with_receipt(
        Frame::new(Command::Unsubscribe)
            .with("id", &id)
            .with("activemq.subscriptionName", "news"),
    )
    .await
    .unwrap();
    assert!(b.broker().queue_info(&queue).is_none());

    // RabbitMQ style: durable:true with the subscription id, and a plain
    // UNSUBSCRIBE keeps the queue.
    let mut r = StompClient::connect(addr, Some("1.2")).await;
    r.send_frame(
        &Frame::new(Command::Subscribe)
            .with("id", "rabbit-sub")
            .with("destination", "/topic/dur.rabbit")
            .with("durable", "true")
            .with("auto-delete", "false")
            .with("receipt", "s"),
    )
    .await;
    r.wait_receipt("s").await.unwrap();
    r.with_receipt(Frame::new(Command::Unsubscribe).with("id", "rabbit-sub"))
        .await
        .unwrap();
    p.send("/topic/dur.rabbit", b"kept").await;
    r.send_frame(
        &Frame::new(Command::Subscribe)
            .with("id", "rabbit-sub")
            .with("destination", "/topic/dur.rabbit")
            .with("persistent", "true"),
    )
    .await;
    assert_eq!(body_str(&r.message().await), "kept");
    assert!(
        b.broker()
            .queue_info(&durable_queue_name("", "rabbit-sub"))
            .is_some()
    );
    b.stop().await;
}

#[tokio::test]
async fn queue_consumers_compete() {
    let b = TestBroker::start().await;
    let addr = b.addr("stomp");
    let mut c1 = StompClient::connect(addr, Some("1.2")).await;
    let mut c2 = StompClient::connect(addr, Some("1.2")).await;
    c1.subscribe("/queue/work", "auto").await;
    c2.subscribe("/queue/work", "auto").await;
    fill(addr, "work", 20).await;
    let mut seen = Vec::new();
    let (mut n1, mut n2) = (0, 0);
    while seen.len() < 20 {
        tokio::select! {
            m = c1.message() => { n1 += 1; seen.push(body_str(&m)); }
            m = c2.message() => { n2 += 1; seen.push(body_str(&m)); }
        }
    }
    c1.no_message().await;
    c2.no_message().await;
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 20, "each message exactly once");
    assert!(n1 > 0 && n2 > 0, "both consumers got work: {n1} / {n2}");
    b.stop().await;
}

#[tokio::test]
async fn queues_are_created_on_first_use_unless_the_policy_says_no() {
    let b = TestBroker::start_with(policies(&[(
        "fixed.#",
        AddressPolicy {
            auto_create_queues: Some(false),
            ..AddressPolicy::default()
        },
    )]))
    .await;
    let addr = b.addr("stomp");
    let mut c = StompClient::connect(addr, Some("1.2")).await;
    c.send("/queue/made.here", b"x").await;
    let info = b.broker().queue_info("made.here").expect("created by SEND");
    assert_eq!(info.messages, 1);
    assert!(info.durable);
    c.send_frame(
        &Frame::new(Command::Send)
            .with("destination", "/queue/fixed.q")
            .with("receipt", "r"),
    )
    .await;
    let err = c.expect_error_and_close().await;
    assert_eq!(err.header("message"), Some("no queue 'fixed.q'"));
    assert_eq!(err.header("receipt-id"), Some("r"));
    b.stop().await;
}

#[tokio::test]
async fn bare_destinations_follow_the_configured_default() {
    let b = TestBroker::start().await;
    let mut c = StompClient::connect(b.addr("stomp"), Some("1.2")).await;
    c.send("bare.q", b"to a queue").await;
    assert_eq!(b.broker().queue_info("bare.q").unwrap().messages, 1);
    b.stop().await;

    let b = TestBroker::start_with(stomp_option("default_destination", "topic")).await;
    let mut c = StompClient::connect(b.addr("stomp"), Some("1.2")).await;
    c.subscribe("bare.t", "auto").await;
    c.send("bare.t", b"to a topic").await;
    assert_eq!(
        c.message().await.header("destination"),
        Some("/topic/bare.t")
    );
    assert!(b.broker().queue_info("bare.t").is_none());
    b.stop().await;
}

#[tokio::test]
async fn exchange_and_amq_queue_destinations() {
    let b = TestBroker::start().await;
    let addr = b.addr("stomp");
    b.broker()
        .declare_exchange(
            "logs",
            ExchangeKind::Topic,
            ExchangeOptions::default(),
            false,
        )
        .unwrap();
    let mut c = StompClient::connect(addr, Some("1.2")).await;
    c.subscribe("/exchange/logs/app.#", "auto").await;
    c.send("/exchange/logs/app.web", b"log line").await;
    let m = c.message().await;
    assert_eq!(m.header("destination"), Some("/exchange/logs/app.web"));
    // /exchange/amq.topic/ is /topic/.
    c.subscribe("/exchange/amq.topic/x.y", "auto").await;
    c.send("/topic/x.y", b"t").await;
    assert_eq!(c.message().await.header("destination"), Some("/topic/x.y"));
    // /amq/queue/ uses existing queues only.
    c.send("/queue/exists", b"q").await;
    c.subscribe("/amq/queue/exists", "auto").await;
    assert_eq!(&c.message().await.body[..], b"q");
    c.send_frame(
        &Frame::new(Command::Subscribe)
            .with("id", "x")
            .with("destination", "/amq/queue/missing"),
    )
    .await;
    let err = c.expect_error_and_close().await;
    assert_eq!(err.header("message"), Some("no queue 'missing'"));

    let mut c = StompClient::connect(addr, Some("1.2")).await;
    c.send_frame(
        &Frame::new(Command::Send)
            .with("destination", "/temp-queue/replies")
            .with_body(&b"x"[..]),
    )
    .await;
    let err = c.expect_error_and_close().await;
    assert_eq!(err.header("message"), Some("unsupported destination"));
    assert!(std::str::from_utf8(&err.body).unwrap().contains("/queue/"));
    b.stop().await;
}

#[tokio::test]
async fn headers_map_to_canonical_properties_and_back() {
    let b = TestBroker::start().await;
    let addr = b.addr("stomp");
    let mut core = b.broker().session("test", ConnId(u64::MAX - 1));
    core.subscribe(Subscribe::temporary(AddressFilter::new("map.h").unwrap()))
        .unwrap();
    let mut deliveries = core.deliveries();
    let mut sub = StompClient::connect(addr, Some("1.2")).await;
    sub.subscribe("/topic/map.h", "auto").await;
    let mut c = StompClient::connect(addr, Some("1.2")).await;
    let expires = (switchyard_model::now_millis() + 3_600_000).to_string();
    c.send_with(
        "/topic/map.h",
        b"{}",
        &[
            ("content-type", "application/json"),
            ("correlation-id", "corr-1"),
            ("reply-to", "/topic/replies.x"),
            ("priority", "7"),
            ("expires", &expires),
            ("persistent", "true"),
            ("x-user", "u1"),
            ("x-user", "second is history"),
            ("message-id", "client-says"),
        ],
    )
    .await;
    let d = tokio::time::timeout(WAIT, deliveries.recv())
        .await
        .unwrap()
        .unwrap();
    let p = &d.message.properties;
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(p.correlation_id.as_deref(), Some(&b"corr-1"[..]));
    assert_eq!(p.reply_to.as_deref(), Some("replies.x"));
    assert_eq!(p.priority, Some(7));
    assert_eq!(p.expires_at, Some(expires.parse().unwrap()));
    assert!(p.durable);
    let user: Vec<(&str, String)> = d
        .message
        .headers
        .iter()
        .map(|(k, v)| (k, v.to_text()))
        .collect();
    assert_eq!(user, [("x-user", "u1".to_owned())]);

    let m = sub.message().await;
    assert_eq!(m.header("content-type"), Some("application/json"));
    assert_eq!(m.header("correlation-id"), Some("corr-1"));
    assert_eq!(m.header("reply-to"), Some("/topic/replies.x"));
    assert_eq!(m.header("priority"), Some("7"));
    assert_eq!(m.header("expires"), Some(expires.as_str()));
    assert_eq!(m.header("persistent"), Some("true"));
    assert_eq!(m.header("x-user"), Some("u1"));
    assert_ne!(m.header("message-id"), Some("client-says"));

    // Canonical → STOMP for what another protocol published.
    let mut msg = Message::multicast(&Address::new("map.h").unwrap(), Bytes::from_static(b"x"));
    msg.properties.correlation_id = Some(Bytes::from_static(&[0xff, 0x00]));
    msg.properties.reply_to = Some("inbox.7".into());
    msg.headers.push("count", switchyard_model::Value::I32(-3));
    msg.headers.push(
        "bin",
        switchyard_model::Value::Bytes(Bytes::from_static(b"\x01\x02")),
    );
    b.broker().publish(msg).unwrap();
    let m = sub.message().await;
    assert_eq!(m.header("correlation-id"), Some("ff00"));
    assert_eq!(m.header("reply-to"), Some("/topic/inbox.7"));
    assert_eq!(m.header("count"), Some("-3"));
    assert_eq!(m.header("bin"), Some("0102"));
    b.stop().await;
}

#[tokio::test]
async fn server_shutdown_says_goodbye_with_an_error_frame() {
    let b = TestBroker::start().await;
    let mut c = StompClient::connect(b.addr("stomp"), Some("1.2")).await;
    let stopping = tokio::spawn(b.stop());
    let err = c.expect_error_and_close().await;
    assert_eq!(err.header("message"), Some("server shutting down"));
    stopping.await.unwrap();
}

#[tokio::test]
async fn a_client_that_never_connects_is_dropped() {
    let b = TestBroker::start_with(|c| {
        c.core.limits.handshake_timeout = switchyard_core::Dur::millis(300);
    })
    .await;
    let mut c = StompClient::tcp(b.addr("stomp")).await;
    let err = c.expect_error_and_close().await;
    assert_eq!(err.header("message"), Some("no CONNECT frame"));
    assert_eq!(c.version, None::<Version>);
    b.stop().await;
}

#[tokio::test]
async fn open_transactions_are_bounded() {
    let b = TestBroker::start_with(|c| {
        let opts = &mut c.listener_mut("stomp").unwrap().options;
        opts.insert(
            "max_transaction_size".into(),
            figment::value::Value::from("2KiB"),
        );
        opts.insert("max_transactions".into(), figment::value::Value::from(2u32));
    })
    .await;
    let addr = b.addr("stomp");
    let mut c = StompClient::connect(addr, Some("1.2")).await;
    for t in ["a", "b"] {
        c.with_receipt(Frame::new(Command::Begin).with("transaction", t))
            .await
            .unwrap();
    }
    c.send_frame(&Frame::new(Command::Begin).with("transaction", "c"))
        .await;
    let err = c.expect_error_and_close().await;
    assert_eq!(err.header("message"), Some("too many transactions"));

    let mut c = StompClient::connect(addr, Some("1.2")).await;
    c.with_receipt(Frame::new(Command::Begin).with("transaction", "t"))
        .await
        .unwrap();
    c.send_with("/topic/tx.big", &[1u8; 1000], &[("transaction", "t")])
        .await;
    c.send_frame(
        &Frame::new(Command::Send)
            .with("destination", "/topic/tx.big")
            .with("transaction", "t")
            .with_body(vec![2u8; 1500]),
    )
    .await;
    let err = c.expect_error_and_close().await;
    assert_eq!(err.header("message"), Some("transaction too large"));
    b.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_after_the_write_timeout() {
    let b = TestBroker::start_with(stomp_option("write_timeout", "500ms")).await;
    let addr = b.addr("stomp");
    let mut other = StompClient::connect(addr, Some("1.2")).await;
    other.subscribe("/topic/other", "auto").await;
    let mut slow = StompClient::connect(addr, Some("1.2")).await;
    slow.subscribe("/topic/flood", "auto").await;
    assert_eq!(b.connections(), 2);
    let body = Bytes::from(vec![b'x'; 64 * 1024]);
    let flood = Address::new("flood").unwrap();
    let gone = async {
        for _ in 0..4000 {
            b.broker()
                .publish(Message::multicast(&flood, body.clone()))
                .unwrap();
            if b.connections() == 1 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        switchyard_testkit::eventually(WAIT, || b.connections() == 1).await
    };
    assert!(gone.await, "the slow consumer is cut off");
    other.send("/topic/other", b"unaffected").await;
    assert_eq!(&other.message().await.body[..], b"unaffected");
    drop(slow);
    b.stop().await;
}

#[tokio::test]
async fn publishers_are_held_back_while_the_broker_is_blocked() {
    let b = TestBroker::start().await;
    let addr = b.addr("stomp");
    let mut consumer = StompClient::connect(addr, Some("1.2")).await;
    consumer.subscribe("/topic/flow.x", "auto").await;
    let mut publisher = StompClient::connect(addr, Some("1.2")).await;
    publisher.send("/topic/flow.x", b"1").await;
    assert_eq!(body_str(&consumer.message().await), "1");

    b.broker().set_blocked(Some("test watermark".into()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    publisher
        .send_frame(
            &Frame::new(Command::Send)
                .with("destination", "/topic/flow.x")
                .with("content-length", "1")
                .with_body(Bytes::from_static(b"2")),
        )
        .await;
    consumer.no_message().await;
    // Consumers are not held back.
    b.broker()
        .publish(Message::multicast(
            &Address::new("flow.x").unwrap(),
            Bytes::from_static(b"core"),
        ))
        .unwrap();
    assert_eq!(body_str(&consumer.message().await), "core");

    b.broker().set_blocked(None);
    assert_eq!(body_str(&consumer.message().await), "2");
    b.stop().await;
}
