//! Queue semantics through the public broker/session API.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bytes::Bytes;
use std::collections::BTreeSet;
use std::time::Duration;
use switchyard_core::{
    Broker, ConsumeOptions, CoreConfig, CoreError, DeadLetterTarget, DeclareQueue, Deliveries,
    Delivery, ExchangeKind, ExchangeOptions, Limits, Overflow, QueueOptions, RouteMemo, Session,
    SessionEvent, Subscribe, SubscriptionKind, Transaction,
};
use switchyard_model::{
    Address, AddressFilter, ConnId, DeliveryTag, Headers, Message, Namespace, Str, Value,
};

fn broker() -> Broker {
    Broker::new(CoreConfig::new())
}

fn session(b: &Broker) -> Session {
    b.session("test", b.next_conn_id())
}

fn declare(s: &mut Session, name: &str, options: QueueOptions) {
    s.declare_queue(DeclareQueue {
        name: Some(Str::from(name)),
        options,
        passive: false,
    })
    .unwrap();
}

fn to_queue(q: &str, body: &str) -> Message {
    Message::anycast(q, Bytes::copy_from_slice(body.as_bytes()))
}

fn to_topic(a: &str, body: &str) -> Message {
    Message::multicast(
        &Address::new(a).unwrap(),
        Bytes::copy_from_slice(body.as_bytes()),
    )
}

fn drain(mut d: Deliveries) -> Vec<Delivery> {
    std::iter::from_fn(|| d.try_recv()).collect()
}

fn bodies(ds: &[Delivery]) -> Vec<String> {
    ds.iter()
        .map(|d| String::from_utf8(d.message.body.to_vec()).unwrap())
        .collect()
}

const MANUAL: ConsumeOptions = ConsumeOptions {
    manual_ack: true,
    prefetch: 0,
    exclusive: false,
};

#[test]
fn competing_consumers_get_disjoint_sets_covering_everything() {
    let b = broker();
    let mut admin = session(&b);
    declare(&mut admin, "work", QueueOptions::default());
    let mut c1 = session(&b);
    let mut c2 = session(&b);
    let mut c3 = session(&b);
    c1.consume("work", ConsumeOptions::default()).unwrap();
    c2.consume("work", ConsumeOptions::default()).unwrap();
    c3.consume("work", ConsumeOptions::default()).unwrap();
    for i in 0..300 {
        let p = admin.publish(to_queue("work", &i.to_string())).unwrap();
        assert_eq!(p.routed, 1);
    }
    let got: Vec<Vec<String>> = [&c1, &c2, &c3]
        .iter()
        .map(|s| bodies(&drain(s.deliveries())))
        .collect();
    let mut all = BTreeSet::new();
    for set in &got {
        assert_eq!(set.len(), 100, "round-robin splits evenly");
        for m in set {
            assert!(all.insert(m.clone()), "message {m} delivered twice");
        }
    }
    assert_eq!(all.len(), 300);
}

#[test]
fn prefetch_one_gives_fair_dispatch_to_slow_and_fast_consumers() {
    let b = broker();
    let mut admin = session(&b);
    declare(&mut admin, "jobs", QueueOptions::default());
    let mut slow = session(&b);
    let mut fast = session(&b);
    let opts = ConsumeOptions {
        manual_ack: true,
        prefetch: 1,
        exclusive: false,
    };
    let slow_id = slow.consume("jobs", opts).unwrap();
    let fast_id = fast.consume("jobs", opts).unwrap();
    for i in 0..20 {
        admin.publish(to_queue("jobs", &i.to_string())).unwrap();
    }
    // The slow consumer takes one and sits on it; the fast one acks each as
    // it arrives and so receives everything else.
    let slow_first = drain(slow.deliveries());
    assert_eq!(slow_first.len(), 1);
    let mut fast_count = 0;
    loop {
        let ds = drain(fast.deliveries());
        if ds.is_empty() {
            break;
        }
        for d in ds {
            fast_count += 1;
            fast.ack(fast_id, d.tag, false).unwrap();
        }
    }
    assert_eq!(fast_count, 19);
    assert!(
        drain(slow.deliveries()).is_empty(),
        "slow consumer is at its prefetch"
    );
    slow.ack(slow_id, slow_first[0].tag, false).unwrap();
    assert_eq!(b.queue_info("jobs").unwrap().messages, 0);
}

#[test]
fn nack_requeue_redelivers_in_place_with_flag_and_count() {
    let b = broker();
    let mut s = session(&b);
    declare(&mut s, "q", QueueOptions::default());
    let c = s
        .consume(
            "q",
            ConsumeOptions {
                prefetch: 2,
                ..MANUAL
            },
        )
        .unwrap();
    for m in ["a", "b", "c"] {
        s.publish(to_queue("q", m)).unwrap();
    }
    let first = drain(s.deliveries());
    assert_eq!(bodies(&first), ["a", "b"]);
    assert!(!first[0].redelivered);
    assert_eq!(first[0].delivery_count, 1);
    // Requeue "a": it goes back ahead of "c" (its original place).
    s.nack(c, first[0].tag, false, true).unwrap();
    let again = drain(s.deliveries());
    assert_eq!(bodies(&again), ["a"]);
    assert!(again[0].redelivered);
    assert_eq!(again[0].delivery_count, 2);
    s.ack(c, again[0].tag, false).unwrap();
    s.ack(c, first[1].tag, false).unwrap();
    let last = drain(s.deliveries());
    assert_eq!(bodies(&last), ["c"]);
    assert!(!last[0].redelivered);
}

#[test]
fn cancel_returns_unacked_messages_in_order() {
    let b = broker();
    let mut s = session(&b);
    declare(&mut s, "q", QueueOptions::default());
    let c = s.consume("q", MANUAL).unwrap();
    for m in ["1", "2", "3"] {
        s.publish(to_queue("q", m)).unwrap();
    }
    assert_eq!(drain(s.deliveries()).len(), 3);
    s.cancel(c).unwrap();
    assert_eq!(b.queue_info("q").unwrap().messages, 3);
    let mut s2 = session(&b);
    s2.consume("q", MANUAL).unwrap();
    let ds = drain(s2.deliveries());
    assert_eq!(bodies(&ds), ["1", "2", "3"]);
    assert!(ds.iter().all(|d| d.redelivered));
}

#[test]
fn paused_consumer_gets_nothing_and_can_still_ack() {
    let b = broker();
    let mut s = session(&b);
    declare(&mut s, "q", QueueOptions::default());
    let c = s.consume("q", MANUAL).unwrap();
    s.publish(to_queue("q", "1")).unwrap();
    let first = drain(s.deliveries());
    assert_eq!(bodies(&first), ["1"]);
    s.set_paused(c, true).unwrap();
    s.publish(to_queue("q", "2")).unwrap();
    assert!(drain(s.deliveries()).is_empty());
    assert_eq!(s.unacked(c).unwrap(), 1);
    assert_eq!(s.ack(c, first[0].tag, false).unwrap(), 1);
    assert_eq!(s.unacked(c).unwrap(), 0);
    assert!(drain(s.deliveries()).is_empty(), "ack must not resume");
    assert_eq!(b.queue_info("q").unwrap().messages, 1);
    s.set_paused(c, false).unwrap();
    assert_eq!(bodies(&drain(s.deliveries())), ["2"]);
}

#[test]
fn ack_multiple_and_unknown_tags() {
    let b = broker();
    let mut s = session(&b);
    declare(&mut s, "q", QueueOptions::default());
    let c = s.consume("q", MANUAL).unwrap();
    for m in ["1", "2", "3"] {
        s.publish(to_queue("q", m)).unwrap();
    }
    let ds = drain(s.deliveries());
    assert_eq!(s.ack(c, ds[1].tag, true).unwrap(), 2);
    assert_eq!(
        s.ack(c, ds[0].tag, false),
        Err(CoreError::UnknownDeliveryTag(ds[0].tag))
    );
    assert_eq!(
        s.ack(c, DeliveryTag(999), false),
        Err(CoreError::UnknownDeliveryTag(DeliveryTag(999)))
    );
    assert_eq!(b.queue_info("q").unwrap().unacked, 1);
}

#[test]
fn priority_queue_delivers_highest_first_fifo_within_level() {
    let b = broker();
    let mut s = session(&b);
    declare(
        &mut s,
        "p",
        QueueOptions {
            max_priority: Some(9),
            ..Default::default()
        },
    );
    for (body, prio) in [
        ("low1", 1),
        ("high1", 8),
        ("mid", 5),
        ("high2", 8),
        ("low2", 1),
        ("none", 0),
    ] {
        let mut m = to_queue("p", body);
        m.properties.priority = Some(prio);
        s.publish(m).unwrap();
    }
    s.consume("p", ConsumeOptions::default()).unwrap();
    assert_eq!(
        bodies(&drain(s.deliveries())),
        ["high1", "high2", "mid", "low1", "low2", "none"]
    );
}

fn dlx_options(extra: QueueOptions) -> QueueOptions {
    QueueOptions {
        dead_letter: Some(DeadLetterTarget {
            namespace: Namespace::Anycast,
            routing_key: Some(Str::from("dlq")),
        }),
        ..extra
    }
}

#[tokio::test(start_paused = false)]
async fn ttl_expiry_dead_letters_with_x_death() {
    let mut cfg = CoreConfig::new();
    cfg.sweep_interval = switchyard_core::Dur::millis(20);
    let b = Broker::new(cfg);
    let _sweeper = b.start_maintenance();
    let mut s = session(&b);
    declare(&mut s, "dlq", QueueOptions::default());
    declare(
        &mut s,
        "short",
        dlx_options(QueueOptions {
            message_ttl: Some(Duration::from_millis(50)),
            ..Default::default()
        }),
    );
    s.publish(to_queue("short", "stale")).unwrap();
    // A per-message expiry in a queue without TTL expires too.
    declare(&mut s, "plain", dlx_options(QueueOptions::default()));
    let mut m = to_queue("plain", "stale2");
    m.properties.expires_at = Some(switchyard_model::now_millis() + 30);
    s.publish(m).unwrap();

    let c = s.consume("dlq", MANUAL).unwrap();
    let mut d = s.deliveries();
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(
            tokio::time::timeout(Duration::from_secs(5), d.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let mut names: Vec<String> = bodies(&got);
    names.sort();
    assert_eq!(names, ["stale", "stale2"]);
    let dead = got.iter().find(|d| &*d.message.body == b"stale").unwrap();
    let h = &dead.message.headers;
    assert_eq!(
        h.get("x-first-death-reason").and_then(Value::as_str),
        Some("expired")
    );
    assert_eq!(
        h.get("x-first-death-queue").and_then(Value::as_str),
        Some("short")
    );
    match h.get("x-death") {
        Some(Value::List(l)) => match &l[0] {
            Value::Map(e) => {
                assert_eq!(e.get("count").and_then(Value::as_i64), Some(1));
                assert_eq!(e.get("reason").and_then(Value::as_str), Some("expired"));
            }
            other => panic!("x-death entry {other:?}"),
        },
        other => panic!("x-death {other:?}"),
    }
    assert!(dead.message.properties.expires_at.is_none());
    s.ack(c, got[0].tag, true).unwrap();
    assert_eq!(b.queue_info("short").unwrap().messages, 0);
    assert_eq!(b.queue_info("short").unwrap().stats.expired, 1);
}

#[test]
fn expired_message_is_not_delivered_to_a_consumer() {
    let b = broker();
    let mut s = session(&b);
    declare(&mut s, "dlq", QueueOptions::default());
    declare(&mut s, "q", dlx_options(QueueOptions::default()));
    let mut m = to_queue("q", "old");
    m.properties.expires_at = Some(1);
    s.publish(m).unwrap();
    s.publish(to_queue("q", "fresh")).unwrap();
    let mut c = session(&b);
    c.consume("q", ConsumeOptions::default()).unwrap();
    assert_eq!(bodies(&drain(c.deliveries())), ["fresh"]);
    assert_eq!(b.queue_info("dlq").unwrap().messages, 1);
}

#[test]
fn max_deliveries_dead_letters_instead_of_requeueing() {
    let b = broker();
    let mut s = session(&b);
    declare(&mut s, "dlq", QueueOptions::default());
    declare(
        &mut s,
        "q",
        dlx_options(QueueOptions {
            max_deliveries: Some(3),
            ..Default::default()
        }),
    );
    let c = s.consume("q", MANUAL).unwrap();
    s.publish(to_queue("q", "poison")).unwrap();
    for attempt in 1..=3 {
        let ds = drain(s.deliveries());
        assert_eq!(ds.len(), 1, "attempt {attempt}");
        assert_eq!(ds[0].delivery_count, attempt);
        s.nack(c, ds[0].tag, false, true).unwrap();
    }
    assert!(drain(s.deliveries()).is_empty());
    let info = b.queue_info("dlq").unwrap();
    assert_eq!(info.messages, 1);
    let mut d = session(&b);
    d.consume("dlq", ConsumeOptions::default()).unwrap();
    let dead = drain(d.deliveries());
    assert_eq!(
        dead[0]
            .message
            .headers
            .get("x-first-death-reason")
            .and_then(Value::as_str),
        Some("delivery_limit")
    );
}

#[test]
fn reject_without_requeue_dead_letters() {
    let b = broker();
    let mut s = session(&b);
    declare(&mut s, "dlq", QueueOptions::default());
    declare(&mut s, "q", dlx_options(QueueOptions::default()));
    let c = s.consume("q", MANUAL).unwrap();
    s.publish(to_queue("q", "bad")).unwrap();
    let ds = drain(s.deliveries());
    s.nack(c, ds[0].tag, false, false).unwrap();
    assert_eq!(b.queue_info("dlq").unwrap().messages, 1);
    assert_eq!(b.queue_info("q").unwrap().messages, 0);
}

#[test]
fn max_length_drop_head_dead_letters_the_oldest() {
    let b = broker();
    let mut s = session(&b);
    declare(&mut s, "dlq", QueueOptions::default());
    declare(
        &mut s,
        "q",
        dlx_options(QueueOptions {
            max_length: Some(2),
            overflow: Overflow::DropHead,
            ..Default::default()
        }),
    );
    for m in ["1", "2", "3", "4"] {
        assert_eq!(s.publish(to_queue("q", m)).unwrap().routed, 1);
    }
    let mut c = session(&b);
    c.consume("q", ConsumeOptions::default()).unwrap();
    assert_eq!(bodies(&drain(c.deliveries())), ["3", "4"]);
    let mut d = session(&b);
    d.consume("dlq", ConsumeOptions::default()).unwrap();
    let dead = drain(d.deliveries());
    assert_eq!(bodies(&dead), ["1", "2"]);
    assert_eq!(
        dead[0]
            .message
            .headers
            .get("x-first-death-reason")
            .and_then(Value::as_str),
        Some("maxlen")
    );
}

#[test]
fn max_length_reject_publish_refuses_new_messages() {
    let b = broker();
    let mut s = session(&b);
    declare(
        &mut s,
        "q",
        QueueOptions {
            max_length: Some(2),
            overflow: Overflow::RejectPublish,
            ..Default::default()
        },
    );
    assert_eq!(s.publish(to_queue("q", "1")).unwrap().routed, 1);
    assert_eq!(s.publish(to_queue("q", "2")).unwrap().routed, 1);
    let p = s.publish(to_queue("q", "3")).unwrap();
    assert_eq!((p.routed, p.rejected), (0, 1));
    assert!(!p.is_unroutable());
    let mut c = session(&b);
    c.consume("q", ConsumeOptions::default()).unwrap();
    assert_eq!(bodies(&drain(c.deliveries())), ["1", "2"]);
    // With room again, publishing works.
    assert_eq!(s.publish(to_queue("q", "4")).unwrap().routed, 1);
}

#[tokio::test]
async fn block_overflow_keeps_every_message_and_presses_publishers_until_half_drained() {
    let b = broker();
    let mut s = session(&b);
    declare(
        &mut s,
        "q",
        QueueOptions {
            max_length: Some(4),
            overflow: Overflow::Block,
            ..Default::default()
        },
    );
    for m in ["1", "2", "3", "4"] {
        let p = s.publish(to_queue("q", m)).unwrap();
        assert_eq!(p.routed, 1);
        assert!(p.pressure.is_none(), "at the limit, not past it");
    }
    let p = s.publish(to_queue("q", "5")).unwrap();
    assert_eq!((p.routed, p.rejected), (1, 0), "past the limit: kept");
    let pressure = p.pressure.expect("past the limit: publishers are told");
    assert!(!pressure.is_relieved());
    // Later publishes are kept too, and see the same pressure.
    assert!(s.publish(to_queue("q", "6")).unwrap().pressure.is_some());
    assert_eq!(b.stats().queue_totals.blocked, 1);
    assert_eq!(b.stats().queue_totals.dropped, 0);
    // A consumer that takes one message at a time: relieved at half (2).
    let mut c = session(&b);
    let id = c
        .consume(
            "q",
            ConsumeOptions {
                manual_ack: true,
                prefetch: 1,
                exclusive: false,
            },
        )
        .unwrap();
    let mut d = c.deliveries();
    let mut got = vec![];
    while !pressure.is_relieved() {
        let x = d.try_recv().expect("a delivery while pressed");
        got.push(x.message.body.clone());
        c.ack(id, x.tag, false).unwrap();
    }
    assert_eq!(got.len(), 3, "relieved once 2 of 4 are left ready");
    tokio::time::timeout(Duration::from_secs(5), pressure.relieved())
        .await
        .unwrap();
    while let Some(x) = d.try_recv() {
        got.push(x.message.body.clone());
        c.ack(id, x.tag, false).unwrap();
    }
    assert_eq!(got, ["1", "2", "3", "4", "5", "6"].map(Bytes::from));
}

/// A transaction's publishes press their publisher like plain ones.
#[test]
fn a_committed_transaction_past_a_blocking_limit_presses_its_publisher() {
    let b = broker();
    let mut s = session(&b);
    declare(
        &mut s,
        "q",
        QueueOptions {
            max_length: Some(2),
            overflow: Overflow::Block,
            ..Default::default()
        },
    );
    let mut tx = Transaction::new();
    for m in ["1", "2"] {
        tx.publish(to_queue("q", m));
    }
    let done = s.commit(tx).unwrap();
    assert!(done.iter().all(|p| p.routed == 1 && p.pressure.is_none()));
    let mut tx = Transaction::new();
    tx.publish(to_queue("q", "3"));
    let done = s.commit(tx).unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].routed, 1, "past the limit: kept");
    let pressure = done[0]
        .pressure
        .as_ref()
        .expect("past the limit: the publisher is told");
    assert!(!pressure.is_relieved());
    assert_eq!(b.stats().queue_totals.dropped, 0);
}

#[tokio::test]
async fn block_overflow_is_bounded_by_twice_the_limit_and_by_the_block_timeout() {
    let b = broker();
    let mut s = session(&b);
    declare(
        &mut s,
        "q",
        QueueOptions {
            max_length: Some(4),
            overflow: Overflow::Block,
            ..Default::default()
        },
    );
    // A publisher that ignores the pressure: kept up to twice the limit,
    // then the oldest go (counted), so memory stays bounded.
    for i in 0..20 {
        s.publish(to_queue("q", &i.to_string())).unwrap();
    }
    let ready = b.queue_info("q").unwrap().messages;
    assert!(ready <= 8, "{ready} ready past twice the limit of 4");
    assert!(b.stats().queue_totals.dropped >= 12);
    let pressure = s
        .publish(to_queue("q", "x"))
        .unwrap()
        .pressure
        .expect("still pressed");
    // Nobody ever consumes: the publisher is let go after BLOCK_TIMEOUT.
    let waited = std::time::Instant::now();
    tokio::time::timeout(
        switchyard_core::BLOCK_TIMEOUT + Duration::from_secs(5),
        pressure.relieved(),
    )
    .await
    .expect("a stuck consumer holds publishers at most BLOCK_TIMEOUT");
    assert!(waited.elapsed() <= switchyard_core::BLOCK_TIMEOUT + Duration::from_secs(1));
    // From then on publishes are not pressed, and the queue keeps its limit.
    let p = s.publish(to_queue("q", "y")).unwrap();
    assert!(p.pressure.is_none());
    assert_eq!(p.routed, 1);
    assert_eq!(b.queue_info("q").unwrap().messages, 4);
}

#[test]
fn max_bytes_limits_ready_bodies() {
    let b = broker();
    let mut s = session(&b);
    declare(
        &mut s,
        "q",
        QueueOptions {
            max_bytes: Some(10),
            overflow: Overflow::RejectPublish,
            ..Default::default()
        },
    );
    assert_eq!(s.publish(to_queue("q", "123456")).unwrap().routed, 1);
    assert_eq!(s.publish(to_queue("q", "123456")).unwrap().rejected, 1);
    assert_eq!(s.publish(to_queue("q", "1234")).unwrap().routed, 1);
}

#[test]
fn transaction_commit_applies_publishes_and_acks_together() {
    let b = broker();
    let mut s = session(&b);
    declare(&mut s, "in", QueueOptions::default());
    declare(&mut s, "out", QueueOptions::default());
    let c = s.consume("in", MANUAL).unwrap();
    s.publish(to_queue("in", "job")).unwrap();
    let job = drain(s.deliveries()).remove(0);

    let mut tx = Transaction::new();
    tx.publish(to_queue("out", "result-1"));
    tx.publish(to_queue("out", "result-2"));
    tx.ack(c, job.tag, false);
    // Nothing is visible before commit.
    assert_eq!(b.queue_info("out").unwrap().messages, 0);
    assert_eq!(b.queue_info("in").unwrap().unacked, 1);
    let results = s.commit(tx).unwrap();
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|p| p.routed == 1));
    assert_eq!(b.queue_info("out").unwrap().messages, 2);
    assert_eq!(b.queue_info("in").unwrap().unacked, 0);
}

#[test]
fn transaction_rollback_discards_everything() {
    let b = broker();
    let mut s = session(&b);
    declare(&mut s, "in", QueueOptions::default());
    declare(&mut s, "out", QueueOptions::default());
    let c = s.consume("in", MANUAL).unwrap();
    s.publish(to_queue("in", "job")).unwrap();
    let job = drain(s.deliveries()).remove(0);
    let mut tx = Transaction::new();
    tx.publish(to_queue("out", "result"));
    tx.ack(c, job.tag, false);
    drop(tx); // rollback
    assert_eq!(b.queue_info("out").unwrap().messages, 0);
    assert_eq!(b.queue_info("in").unwrap().unacked, 1);
}

#[test]
fn transaction_with_a_bad_ack_applies_nothing() {
    let b = broker();
    let mut s = session(&b);
    declare(&mut s, "in", QueueOptions::default());
    declare(&mut s, "out", QueueOptions::default());
    let c = s.consume("in", MANUAL).unwrap();
    let mut tx = Transaction::new();
    tx.publish(to_queue("out", "result"));
    tx.ack(c, DeliveryTag(42), false);
    assert_eq!(
        s.commit(tx).unwrap_err(),
        CoreError::UnknownDeliveryTag(DeliveryTag(42))
    );
    assert_eq!(b.queue_info("out").unwrap().messages, 0);
}

#[test]
fn multicast_fanout_shares_one_message_allocation() {
    let b = broker();
    // Issue 2: "fan-out to 1000 subscribers without copying the body".
    let mut subs: Vec<Session> = (0..1000).map(|_| session(&b)).collect();
    for s in &mut subs {
        s.subscribe(Subscribe::temporary(
            AddressFilter::new("sensors.*.temp").unwrap(),
        ))
        .unwrap();
    }
    let p = session(&b);
    let body = Bytes::from(vec![7u8; 4096]);
    let published = p
        .publish(Message::multicast(
            &Address::new("sensors.r1.temp").unwrap(),
            body.clone(),
        ))
        .unwrap();
    assert_eq!(published.routed, 1000);
    let first = drain(subs[0].deliveries()).remove(0);
    for s in &subs[1..] {
        let d = drain(s.deliveries()).remove(0);
        assert!(std::sync::Arc::ptr_eq(&d.message, &first.message));
        assert_eq!(d.message.body.as_ptr(), body.as_ptr(), "body not copied");
    }
    assert_eq!(
        p.publish(to_topic("sensors.r1.humidity", "x"))
            .unwrap()
            .routed,
        0
    );
    assert_eq!(b.stats().unroutable, 1);
}

#[test]
fn temporary_subscription_queue_goes_with_its_consumer_or_session() {
    let b = broker();
    let mut s = session(&b);
    let c = s
        .subscribe(Subscribe::temporary(AddressFilter::new("a.#").unwrap()))
        .unwrap();
    assert_eq!(b.queues().len(), 1);
    s.cancel(c).unwrap();
    assert!(b.queues().is_empty());
    s.subscribe(Subscribe::temporary(AddressFilter::new("a.#").unwrap()))
        .unwrap();
    drop(s);
    assert!(b.queues().is_empty());
    assert_eq!(session(&b).publish(to_topic("a.b", "x")).unwrap().routed, 0);
}

#[test]
fn no_local_skips_own_messages() {
    let b = broker();
    let mut s = session(&b);
    let mut sub = Subscribe::temporary(AddressFilter::new("chat").unwrap());
    sub.queue.no_local = true;
    s.subscribe(sub).unwrap();
    let mut other = session(&b);
    other
        .subscribe(Subscribe::temporary(AddressFilter::new("chat").unwrap()))
        .unwrap();
    s.publish(to_topic("chat", "mine")).unwrap();
    assert!(drain(s.deliveries()).is_empty());
    assert_eq!(drain(other.deliveries()).len(), 1);
    other.publish(to_topic("chat", "theirs")).unwrap();
    assert_eq!(bodies(&drain(s.deliveries())), ["theirs"]);
}

#[test]
fn shared_subscription_splits_between_members() {
    let b = broker();
    let mut m1 = session(&b);
    let mut m2 = session(&b);
    let mut solo = session(&b);
    for s in [&mut m1, &mut m2] {
        s.subscribe(Subscribe {
            kind: SubscriptionKind::Shared(Str::from("workers")),
            ..Subscribe::temporary(AddressFilter::new("jobs.#").unwrap())
        })
        .unwrap();
    }
    solo.subscribe(Subscribe::temporary(AddressFilter::new("jobs.#").unwrap()))
        .unwrap();
    let p = session(&b);
    for i in 0..10 {
        assert_eq!(
            p.publish(to_topic("jobs.x", &i.to_string()))
                .unwrap()
                .routed,
            2
        );
    }
    let a = drain(m1.deliveries()).len();
    let c = drain(m2.deliveries()).len();
    assert_eq!((a, c), (5, 5));
    assert_eq!(drain(solo.deliveries()).len(), 10);
    drop(m1);
    drop(m2);
    assert_eq!(
        b.queues().len(),
        1,
        "shared queue deleted with its last member"
    );
}

#[test]
fn a_route_memo_follows_subscription_changes() {
    let b = broker();
    let p = session(&b);
    let mut memo = RouteMemo::default();
    let publish = |memo: &mut RouteMemo, a: &str, body: &str| {
        p.publish_memo(std::sync::Arc::new(to_topic(a, body)), memo)
            .unwrap()
            .routed
    };
    assert_eq!(publish(&mut memo, "news.a", "nobody"), 0);
    let mut s1 = session(&b);
    let c1 = s1
        .subscribe(Subscribe::temporary(AddressFilter::new("news.*").unwrap()))
        .unwrap();
    // The memo of "no route" is stale now.
    assert_eq!(publish(&mut memo, "news.a", "one"), 1);
    assert_eq!(publish(&mut memo, "news.a", "two"), 1);
    // Another address through the same memo.
    assert_eq!(publish(&mut memo, "other", "x"), 0);
    let mut s2 = session(&b);
    s2.subscribe(Subscribe::temporary(AddressFilter::new("news.a").unwrap()))
        .unwrap();
    assert_eq!(publish(&mut memo, "news.a", "three"), 2);
    s1.cancel(c1).unwrap();
    assert_eq!(publish(&mut memo, "news.a", "four"), 1);
    assert_eq!(bodies(&drain(s1.deliveries())), ["one", "two", "three"]);
    assert_eq!(bodies(&drain(s2.deliveries())), ["three", "four"]);
    // Same ids, origin and counts as a plain publish.
    let d = drain(s2.deliveries());
    assert!(d.is_empty());
    let mut s3 = session(&b);
    s3.subscribe(Subscribe::temporary(AddressFilter::new("#").unwrap()))
        .unwrap();
    publish(&mut memo, "z", "memo");
    p.publish(to_topic("z", "plain")).unwrap();
    let got = drain(s3.deliveries());
    assert_eq!(bodies(&got), ["memo", "plain"]);
    assert_eq!(got[0].message.origin, got[1].message.origin);
    assert_eq!(got[0].message.origin, p.origin());
    assert!(got[0].message.id < got[1].message.id);
}

#[test]
fn durable_subscription_collects_while_away() {
    let b = broker();
    let name = Str::from("device-7");
    let sub = || Subscribe {
        kind: SubscriptionKind::Durable(name.clone()),
        queue: QueueOptions {
            durable: true,
            ..Default::default()
        },
        ..Subscribe::temporary(AddressFilter::new("alerts.#").unwrap())
    };
    let mut s = session(&b);
    s.subscribe(sub()).unwrap();
    drop(s);
    let p = session(&b);
    p.publish(to_topic("alerts.fire", "while-away")).unwrap();
    let mut s = session(&b);
    s.subscribe(sub()).unwrap();
    assert_eq!(bodies(&drain(s.deliveries())), ["while-away"]);
}

#[test]
fn exclusive_queue_is_locked_to_its_owner_and_deleted_with_it() {
    let b = broker();
    let mut owner = session(&b);
    declare(
        &mut owner,
        "mine",
        QueueOptions {
            exclusive: true,
            ..Default::default()
        },
    );
    let mut other = session(&b);
    assert!(matches!(
        other.consume("mine", ConsumeOptions::default()),
        Err(CoreError::ResourceLocked(_))
    ));
    assert!(matches!(
        other.declare_queue(DeclareQueue {
            name: Some(Str::from("mine")),
            options: QueueOptions {
                exclusive: true,
                ..Default::default()
            },
            passive: false,
        }),
        Err(CoreError::ResourceLocked(_))
    ));
    drop(owner);
    assert!(b.queue_info("mine").is_none());
}

#[test]
fn auto_delete_queue_goes_with_its_last_consumer() {
    let b = broker();
    let mut s = session(&b);
    declare(
        &mut s,
        "temp",
        QueueOptions {
            auto_delete: true,
            ..Default::default()
        },
    );
    let c1 = s.consume("temp", ConsumeOptions::default()).unwrap();
    let c2 = s.consume("temp", ConsumeOptions::default()).unwrap();
    s.cancel(c1).unwrap();
    assert!(b.queue_info("temp").is_some());
    s.cancel(c2).unwrap();
    assert!(b.queue_info("temp").is_none());
}

#[test]
fn redeclare_with_other_options_is_precondition_failed() {
    let b = broker();
    let mut s = session(&b);
    declare(&mut s, "q", QueueOptions::default());
    let err = s
        .declare_queue(DeclareQueue {
            name: Some(Str::from("q")),
            options: QueueOptions {
                durable: true,
                ..Default::default()
            },
            passive: false,
        })
        .unwrap_err();
    assert!(matches!(err, CoreError::PreconditionFailed(_)), "{err:?}");
    assert_eq!(err.amqp_reply_code(), 406);
    let err = s
        .declare_queue(DeclareQueue {
            name: Some(Str::from("missing")),
            passive: true,
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(err.amqp_reply_code(), 404);
    let named = s.declare_queue(DeclareQueue::default()).unwrap();
    assert!(named.name.starts_with("amq.gen-"));
    assert!(matches!(
        s.declare_queue(DeclareQueue {
            name: Some(Str::from("amq.mine")),
            ..Default::default()
        }),
        Err(CoreError::AccessRefused(_))
    ));
}

#[test]
fn deleting_a_queue_cancels_its_consumers() {
    let b = broker();
    let mut s = session(&b);
    declare(&mut s, "q", QueueOptions::default());
    let c = s.consume("q", ConsumeOptions::default()).unwrap();
    let mut admin = session(&b);
    assert!(matches!(
        admin.delete_queue("q", true, false),
        Err(CoreError::PreconditionFailed(_))
    ));
    admin.publish(to_queue("q", "x")).unwrap();
    drain(s.deliveries());
    admin.delete_queue("q", false, false).unwrap();
    assert_eq!(
        s.deliveries().take_events(),
        [SessionEvent::ConsumerCancelled(c)]
    );
}

#[test]
fn exchanges_route_by_kind() {
    let b = broker();
    let mut s = session(&b);
    for (name, kind) in [
        ("d", ExchangeKind::Direct),
        ("f", ExchangeKind::Fanout),
        ("t", ExchangeKind::Topic),
        ("h", ExchangeKind::Headers),
    ] {
        b.declare_exchange(name, kind, ExchangeOptions::default(), false)
            .unwrap();
    }
    for q in ["q1", "q2", "q3"] {
        declare(&mut s, q, QueueOptions::default());
    }
    let none = Headers::new();
    s.bind_queue("q1", "d", "red", &none).unwrap();
    s.bind_queue("q2", "d", "blue", &none).unwrap();
    s.bind_queue("q1", "f", "", &none).unwrap();
    s.bind_queue("q2", "f", "", &none).unwrap();
    s.bind_queue("q3", "t", "*.error", &none).unwrap();
    s.bind_queue("q1", "t", "app.#", &none).unwrap();
    let mut any = Headers::new();
    any.push("x-match", "any");
    any.push("kind", "pdf");
    any.push("size", Value::I32(10));
    s.bind_queue("q3", "h", "", &any).unwrap();

    let via = |ex: &str, key: &str, headers: Headers| {
        let mut m = Message::new(
            Namespace::Exchange(Str::from(ex)),
            Str::from(key),
            Bytes::new(),
        );
        m.headers = headers;
        s.publish(m).unwrap().routed
    };
    assert_eq!(via("d", "red", Headers::new()), 1);
    assert_eq!(via("d", "green", Headers::new()), 0);
    assert_eq!(via("f", "ignored", Headers::new()), 2);
    assert_eq!(via("t", "app.error", Headers::new()), 2);
    assert_eq!(via("t", "db.error", Headers::new()), 1);
    let mut h = Headers::new();
    h.push("size", Value::I32(10));
    assert_eq!(via("h", "", h), 1);
    assert_eq!(via("h", "", Headers::new()), 0);
    let counts: Vec<u64> = ["q1", "q2", "q3"]
        .iter()
        .map(|q| b.queue_info(q).unwrap().messages)
        .collect();
    assert_eq!(counts, [3, 1, 3]);
    assert!(matches!(
        s.publish(Message::new(
            Namespace::Exchange(Str::from("nope")),
            Str::from("k"),
            Bytes::new()
        )),
        Err(CoreError::NotFound { .. })
    ));
}

#[test]
fn exchange_to_exchange_bindings_reach_each_queue_once() {
    let b = broker();
    let mut s = session(&b);
    b.declare_exchange(
        "edge",
        ExchangeKind::Fanout,
        ExchangeOptions::default(),
        false,
    )
    .unwrap();
    declare(&mut s, "q", QueueOptions::default());
    let none = Headers::new();
    b.bind_exchange("amq.topic", "edge", "", &none).unwrap();
    s.bind_queue("q", "amq.topic", "metrics.#", &none).unwrap();
    s.bind_queue("q", "edge", "", &none).unwrap();
    let m = Message::new(
        Namespace::Exchange(Str::from("edge")),
        Str::from("metrics.cpu"),
        Bytes::new(),
    );
    assert_eq!(
        s.publish(m).unwrap().routed,
        1,
        "reached twice, enqueued once"
    );
    // A cycle terminates.
    b.bind_exchange("edge", "amq.topic", "loop.#", &none)
        .unwrap();
    let m = Message::new(
        Namespace::Exchange(Str::from("edge")),
        Str::from("loop.x"),
        Bytes::new(),
    );
    assert_eq!(s.publish(m).unwrap().routed, 1);
    b.delete_exchange("edge", false).unwrap();
    assert!(b.exchange_info("edge").is_none());
    assert!(matches!(
        b.delete_exchange("amq.topic", false),
        Err(CoreError::AccessRefused(_))
    ));
}

#[tokio::test]
async fn slow_connection_holds_back_and_resumes_without_loss() {
    let mut cfg = CoreConfig::new();
    cfg.limits = Limits {
        connection_buffer: 8,
        ..Limits::default()
    };
    let b = Broker::new(cfg);
    let mut s = session(&b);
    declare(&mut s, "q", QueueOptions::default());
    s.consume("q", ConsumeOptions::default()).unwrap();
    let p = session(&b);
    for i in 0..1000u32 {
        p.publish(to_queue("q", &i.to_string())).unwrap();
    }
    // Only the channel's worth went out; the rest waits in the queue.
    assert!(b.queue_info("q").unwrap().messages >= 990);
    let mut d = s.deliveries();
    let mut got = Vec::new();
    while got.len() < 1000 {
        let x = tokio::time::timeout(Duration::from_secs(5), d.recv())
            .await
            .unwrap()
            .unwrap();
        got.push(
            String::from_utf8(x.message.body.to_vec())
                .unwrap()
                .parse::<u32>()
                .unwrap(),
        );
    }
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
}

#[test]
fn byte_budget_holds_back_large_messages() {
    let mut cfg = CoreConfig::new();
    cfg.limits.connection_buffer_bytes = switchyard_core::Size(10_000);
    let b = Broker::new(cfg);
    let mut s = session(&b);
    declare(&mut s, "q", QueueOptions::default());
    s.consume("q", ConsumeOptions::default()).unwrap();
    for _ in 0..10 {
        s.publish(Message::anycast("q", Bytes::from(vec![0u8; 4000])))
            .unwrap();
    }
    assert_eq!(
        s.deliveries().len(),
        2,
        "4000-byte bodies, 10 000-byte budget"
    );
    assert_eq!(b.queue_info("q").unwrap().messages, 8);
}

#[test]
fn basic_get_takes_one_and_reports_the_rest() {
    let b = broker();
    let mut s = session(&b);
    declare(&mut s, "q", QueueOptions::default());
    assert!(s.get("q", true).unwrap().is_none());
    for m in ["1", "2"] {
        s.publish(to_queue("q", m)).unwrap();
    }
    let (d, left) = s.get("q", true).unwrap().unwrap();
    assert_eq!((&d.message.body[..], left), (&b"1"[..], 1));
    s.nack(d.consumer, d.tag, false, true).unwrap();
    let (d, _) = s.get("q", false).unwrap().unwrap();
    assert_eq!(&d.message.body[..], b"1");
    assert!(d.redelivered);
}

#[test]
fn single_active_consumer_gets_everything_until_it_leaves() {
    let b = broker();
    let mut s = session(&b);
    declare(
        &mut s,
        "sac",
        QueueOptions {
            single_active_consumer: true,
            ..Default::default()
        },
    );
    let mut a = session(&b);
    let mut c = session(&b);
    let ca = a.consume("sac", ConsumeOptions::default()).unwrap();
    c.consume("sac", ConsumeOptions::default()).unwrap();
    for i in 0..4 {
        s.publish(to_queue("sac", &i.to_string())).unwrap();
    }
    assert_eq!(drain(a.deliveries()).len(), 4);
    assert!(drain(c.deliveries()).is_empty());
    a.cancel(ca).unwrap();
    s.publish(to_queue("sac", "next")).unwrap();
    assert_eq!(bodies(&drain(c.deliveries())), ["next"]);
}

#[test]
fn message_over_the_size_limit_is_refused() {
    let mut cfg = CoreConfig::new();
    cfg.limits.max_message_size = switchyard_core::Size(10);
    let b = Broker::new(cfg);
    let s = session(&b);
    assert!(matches!(
        s.publish(Message::anycast("q", Bytes::from(vec![0u8; 11]))),
        Err(CoreError::MessageTooLarge { size: 11, max: 10 })
    ));
}

#[test]
fn address_policy_applies_to_new_queues() {
    let toml = r#"
        [orders]
        max_length = 1
        overflow = "reject-publish"
        dlq = "orders.dead"
    "#;
    let map: std::collections::BTreeMap<String, switchyard_core::AddressPolicy> =
        toml::from_str(toml).unwrap();
    let cfg = CoreConfig::new().with_policies(&map).unwrap();
    let b = Broker::new(cfg);
    let mut s = session(&b);
    declare(&mut s, "orders", QueueOptions::default());
    assert!(b.queue_info("orders.dead").is_some(), "dlq created");
    assert_eq!(s.publish(to_queue("orders", "1")).unwrap().routed, 1);
    assert_eq!(s.publish(to_queue("orders", "2")).unwrap().rejected, 1);
    let _ = ConnId(0);
}

#[test]
fn dead_letter_cycle_without_rejection_drops_the_message() {
    let b = broker();
    let mut s = session(&b);
    let to = |q: &str| DeadLetterTarget {
        namespace: Namespace::Anycast,
        routing_key: Some(Str::from(q)),
    };
    declare(
        &mut s,
        "a",
        QueueOptions {
            max_length: Some(0),
            dead_letter: Some(to("b")),
            ..Default::default()
        },
    );
    declare(
        &mut s,
        "b",
        QueueOptions {
            max_length: Some(0),
            dead_letter: Some(to("a")),
            ..Default::default()
        },
    );
    s.publish(to_queue("a", "loop")).unwrap();
    assert_eq!(b.queue_info("a").unwrap().messages, 0);
    assert_eq!(b.queue_info("b").unwrap().messages, 0);
}

/// A queue that held back messages for a full connection buffer hands them
/// over in order once there is room, tags counting up by one, with the
/// delivered counter matching; a message requeued by an earlier
/// manual-ack consumer keeps its redelivery flag and count when a consumer
/// without acks takes it.
#[test]
fn held_back_messages_go_out_in_order_with_flags_and_counters() {
    let mut cfg = CoreConfig::new();
    cfg.limits.connection_buffer = 4;
    let b = Broker::new(cfg);
    let mut s = session(&b);
    declare(&mut s, "q", QueueOptions::default());
    let c = s.consume("q", MANUAL).unwrap();
    for m in ["r1", "r2"] {
        s.publish(to_queue("q", m)).unwrap();
    }
    assert_eq!(drain(s.deliveries()).len(), 2);
    s.cancel(c).unwrap();
    let mut s2 = session(&b);
    s2.consume("q", ConsumeOptions::default()).unwrap();
    for i in 0..20 {
        s.publish(to_queue("q", &i.to_string())).unwrap();
    }
    let mut d = s2.deliveries();
    let mut got = Vec::new();
    while let Some(x) = d.try_recv() {
        got.push(x);
    }
    let want: Vec<String> = ["r1", "r2"]
        .into_iter()
        .map(str::to_owned)
        .chain((0..20).map(|i| i.to_string()))
        .collect();
    assert_eq!(bodies(&got), want);
    assert!(
        got[..2]
            .iter()
            .all(|x| x.redelivered && x.delivery_count == 2)
    );
    assert!(
        got[2..]
            .iter()
            .all(|x| !x.redelivered && x.delivery_count == 1)
    );
    for w in got.windows(2) {
        assert_eq!(w[1].tag.0, w[0].tag.0 + 1);
    }
    let info = b.queue_info("q").unwrap();
    assert_eq!(info.messages, 0);
    assert_eq!(info.stats.delivered, 2 + 22);
    assert_eq!(info.stats.redelivered, 2);
}

/// A broker whose connection buffer holds 3 deliveries, and a session
/// subscribed to `t.*` with `queue`'s policy (the consumer is returned).
fn slow_subscription(queue: QueueOptions) -> (Broker, Session, switchyard_model::ConsumerId) {
    let mut cfg = CoreConfig::new();
    cfg.limits.connection_buffer = 3;
    let b = Broker::new(cfg);
    let mut s = session(&b);
    let c = s
        .subscribe(Subscribe {
            filter: AddressFilter::new("t.*").unwrap(),
            queue,
            kind: SubscriptionKind::Temporary,
            consume: ConsumeOptions::default(),
        })
        .unwrap();
    (b, s, c)
}

/// A plain subscription whose connection does not keep up: the connection
/// buffer takes its bound, the subscription's queue keeps the rest up to its
/// byte limit, drops the oldest past it and tells the session.
#[test]
fn a_plain_subscription_over_its_limit_drops_the_oldest_and_says_so() {
    let (b, s, c) = slow_subscription(QueueOptions {
        max_bytes: Some(4),
        overflow: Overflow::DropHead,
        notify_overflow: true,
        ..QueueOptions::default()
    });
    let p = session(&b);
    for i in 0..10 {
        p.publish(to_topic("t.x", &format!("{i}"))).unwrap();
    }
    let mut d = s.deliveries();
    assert_eq!(d.take_events(), vec![SessionEvent::Overflowed(c)]);
    let mut got = Vec::new();
    while let Some(x) = d.try_recv() {
        got.push(x);
    }
    // 3 in the buffer, then the newest 4 one-byte bodies the queue kept.
    assert_eq!(bodies(&got), ["0", "1", "2", "6", "7", "8", "9"]);
}

/// A blocking subscription whose publisher ignores the pressure: past twice
/// its limit the oldest go, as with drop-head, and the session is told.
#[test]
fn a_blocking_subscription_past_its_hard_limit_drops_the_oldest_and_says_so() {
    let (b, s, c) = slow_subscription(QueueOptions {
        max_length: Some(2),
        overflow: Overflow::Block,
        notify_overflow: true,
        ..QueueOptions::default()
    });
    let p = session(&b);
    for i in 0..7 {
        p.publish(to_topic("t.x", &format!("{i}"))).unwrap();
    }
    let mut d = s.deliveries();
    assert!(d.take_events().is_empty(), "within twice the limit: kept");
    for i in 7..12 {
        p.publish(to_topic("t.x", &format!("{i}"))).unwrap();
    }
    assert_eq!(d.take_events(), vec![SessionEvent::Overflowed(c)]);
    let mut got = Vec::new();
    while let Some(x) = d.try_recv() {
        got.push(x);
    }
    // 3 in the buffer, then the newest the queue kept (at most its limit
    // of 2 after a drop).
    let got = bodies(&got);
    assert_eq!(got[..3], ["0", "1", "2"]);
    assert_eq!(got.last().map(String::as_str), Some("11"));
    assert!(got.len() <= 3 + 4, "{got:?}");
}
