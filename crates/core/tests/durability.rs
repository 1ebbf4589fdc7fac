//! Durable state through the journal: restart recovery, paging, compaction.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bytes::Bytes;
use std::path::Path;
use switchyard_core::journal::{Journal, JournalConfig};
use switchyard_core::{
    Broker, ConsumeOptions, CoreConfig, DeadLetterTarget, DeclareQueue, Deliveries, Delivery,
    ExchangeKind, ExchangeOptions, QueueOptions, RecoveryReport, Session, Size, Transaction,
};
use switchyard_model::{Headers, Message, Namespace, Str, Value};

fn open(dir: &Path, cfg: CoreConfig) -> (Broker, RecoveryReport) {
    let mut jc = JournalConfig::new(dir);
    jc.segment_size = 64 * 1024;
    let b = Broker::with_journal(cfg, Journal::open(jc).unwrap());
    let r = b.recover().unwrap();
    (b, r)
}

fn cfg() -> CoreConfig {
    CoreConfig::new()
}

fn session(b: &Broker) -> Session {
    b.session("test", b.next_conn_id())
}

fn durable_queue(s: &mut Session, name: &str) {
    s.declare_queue(DeclareQueue {
        name: Some(Str::from(name)),
        options: QueueOptions {
            durable: true,
            ..Default::default()
        },
        passive: false,
    })
    .unwrap();
}

fn persistent(q: &str, body: &str) -> Message {
    let mut m = Message::anycast(q, Bytes::copy_from_slice(body.as_bytes()));
    m.properties.durable = true;
    m
}

async fn publish(s: &Session, m: Message) {
    let p = s.publish(m).unwrap();
    if let Some(c) = p.completion {
        c.await.unwrap();
    }
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

async fn restart(b: Broker, dir: &Path, cfg: CoreConfig) -> (Broker, RecoveryReport) {
    b.close_journal().await.unwrap();
    drop(b);
    open(dir, cfg)
}

#[tokio::test]
async fn persistent_messages_survive_a_restart_in_order_and_acked_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let (b, r) = open(dir.path(), cfg());
    assert_eq!(r.messages, 0);
    let mut s = session(&b);
    durable_queue(&mut s, "orders");
    for i in 0..10 {
        publish(&s, persistent("orders", &format!("m{i}"))).await;
    }
    // A transient message in the durable queue is not kept.
    s.publish(Message::anycast("orders", Bytes::from_static(b"transient")))
        .unwrap();
    let c = s.consume("orders", MANUAL).unwrap();
    let got = drain(s.deliveries());
    assert_eq!(got.len(), 11);
    s.ack(c, got[2].tag, true).unwrap(); // m0..m2 acked
    s.sync_for_tests().await;
    drop(s);
    let (b, r) = restart(b, dir.path(), cfg()).await;
    assert_eq!((r.queues, r.messages), (1, 7));
    let mut s = session(&b);
    s.consume("orders", ConsumeOptions::default()).unwrap();
    assert_eq!(
        bodies(&drain(s.deliveries())),
        ["m3", "m4", "m5", "m6", "m7", "m8", "m9"]
    );
    // New ids continue past the recovered ones.
    let p = s.publish(persistent("orders", "next")).unwrap();
    assert!(p.id.0 > 11);
}

#[tokio::test]
async fn transient_traffic_never_touches_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (b, _) = open(dir.path(), cfg());
    let mut s = session(&b);
    s.declare_queue(DeclareQueue {
        name: Some(Str::from("temp")),
        ..Default::default()
    })
    .unwrap();
    for _ in 0..100 {
        let mut m = persistent("temp", "x");
        m.properties.durable = true;
        assert!(
            s.publish(m).unwrap().completion.is_none(),
            "non-durable queue"
        );
    }
    durable_queue(&mut s, "dq");
    let before = b.journal_stats().unwrap().records_appended;
    for _ in 0..100 {
        assert!(
            s.publish(Message::anycast("dq", Bytes::from_static(b"x")))
                .unwrap()
                .completion
                .is_none()
        );
    }
    assert_eq!(b.journal_stats().unwrap().records_appended, before);
}

#[tokio::test]
async fn exchanges_bindings_and_deletions_are_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let (b, _) = open(dir.path(), cfg());
    let mut s = session(&b);
    b.declare_exchange(
        "events",
        ExchangeKind::Topic,
        ExchangeOptions {
            durable: true,
            ..Default::default()
        },
        false,
    )
    .unwrap();
    b.declare_exchange(
        "scratch",
        ExchangeKind::Fanout,
        ExchangeOptions::default(),
        false,
    )
    .unwrap();
    durable_queue(&mut s, "audit");
    durable_queue(&mut s, "gone");
    let none = Headers::new();
    s.bind_queue("audit", "events", "user.#", &none).unwrap();
    s.bind_queue("audit", "amq.topic", "sensors.*", &none)
        .unwrap();
    s.bind_queue("gone", "events", "#", &none).unwrap();
    s.bind_queue("audit", "events", "tmp.#", &none).unwrap();
    s.unbind_queue("audit", "events", "tmp.#", &none).unwrap();
    s.delete_queue("gone", false, false).unwrap();
    s.sync_for_tests().await;
    drop(s);
    let (b, r) = restart(b, dir.path(), cfg()).await;
    assert_eq!((r.exchanges, r.queues, r.bindings), (1, 1, 2));
    assert!(b.exchange_info("events").is_some());
    assert!(
        b.exchange_info("scratch").is_none(),
        "transient exchange gone"
    );
    assert!(b.queue_info("gone").is_none());
    let s = session(&b);
    let via = |ex: &str, key: &str| {
        let mut m = Message::new(
            Namespace::Exchange(Str::from(ex)),
            Str::from(key),
            Bytes::new(),
        );
        m.properties.durable = true;
        s.publish(m).unwrap().routed
    };
    assert_eq!(via("events", "user.login"), 1);
    assert_eq!(via("events", "tmp.x"), 0, "unbinding was recovered");
    assert_eq!(via("amq.topic", "sensors.t1"), 1);
    let mut names: Vec<String> = b
        .queue_bindings("audit")
        .into_iter()
        .map(|(e, k)| format!("{e}/{k}"))
        .collect();
    names.sort();
    assert_eq!(names, ["amq.topic/sensors.*", "events/user.#"]);
}

#[tokio::test]
async fn a_queue_over_its_memory_budget_pages_out_and_delivers_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut conf = cfg();
    conf.limits.queue_memory = Size(8 * 1024);
    let (b, _) = open(dir.path(), conf.clone());
    let mut s = session(&b);
    durable_queue(&mut s, "big");
    let body = |i: usize| format!("{i:04}-{}", "x".repeat(1000));
    for i in 0..200 {
        publish(&s, persistent("big", &body(i))).await;
    }
    let info = b.queue_info("big").unwrap();
    assert_eq!(info.messages, 200);
    let c = s
        .consume(
            "big",
            ConsumeOptions {
                prefetch: 10,
                ..MANUAL
            },
        )
        .unwrap();
    let mut d = s.deliveries();
    let mut got = Vec::new();
    while got.len() < 100 {
        let x = tokio::time::timeout(std::time::Duration::from_secs(5), d.recv())
            .await
            .unwrap()
            .unwrap();
        s.ack(c, x.tag, false).unwrap();
        got.push(x);
    }
    drop(d);
    for (i, x) in got.iter().enumerate() {
        assert_eq!(String::from_utf8(x.message.body.to_vec()).unwrap(), body(i));
    }
    s.sync_for_tests().await;
    drop(s);
    // Half consumed (acked); the rest comes back, paged, in order.
    let (b, r) = restart(b, dir.path(), conf).await;
    assert_eq!(r.messages, 100, "{r:?}");
    assert!(
        r.paged > 0,
        "recovered past the budget stays on disk: {r:?}"
    );
    let mut s = session(&b);
    s.consume("big", ConsumeOptions::default()).unwrap();
    let mut d = s.deliveries();
    let mut rest = Vec::new();
    while rest.len() < r.messages as usize {
        rest.push(
            tokio::time::timeout(std::time::Duration::from_secs(5), d.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let first: usize = String::from_utf8(rest[0].message.body[..4].to_vec())
        .unwrap()
        .parse()
        .unwrap();
    for (k, x) in rest.iter().enumerate() {
        assert_eq!(
            String::from_utf8(x.message.body.to_vec()).unwrap(),
            body(first + k)
        );
    }
    assert_eq!(first + rest.len(), 200);
}

#[tokio::test]
async fn compaction_keeps_exactly_the_live_set() {
    let dir = tempfile::tempdir().unwrap();
    let (b, _) = open(dir.path(), cfg());
    let mut s = session(&b);
    durable_queue(&mut s, "work");
    let c = s
        .consume(
            "work",
            ConsumeOptions {
                prefetch: 0,
                ..MANUAL
            },
        )
        .unwrap();
    let mut keep = Vec::new();
    let mut d = s.deliveries();
    for i in 0..600 {
        publish(
            &s,
            persistent("work", &format!("{i:04}{}", "y".repeat(500))),
        )
        .await;
        let x = d.try_recv().unwrap();
        // Keep every 50th message unacked; ack the rest.
        if i % 50 == 0 {
            keep.push(x);
        } else {
            s.ack(c, x.tag, false).unwrap();
        }
    }
    drop(d);
    s.sync_for_tests().await;
    let before = b.journal_stats().unwrap();
    for _ in 0..3 {
        b.compact_now();
        s.sync_for_tests().await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let after = b.journal_stats().unwrap();
    assert!(
        after.segments_deleted > before.segments_deleted,
        "{before:?} -> {after:?}"
    );
    assert!(after.segments < before.segments, "{before:?} -> {after:?}");
    // One of the relocated messages is acked after the move.
    s.ack(c, keep[0].tag, false).unwrap();
    s.sync_for_tests().await;
    drop(s);
    let (b, r) = restart(b, dir.path(), cfg()).await;
    assert_eq!(r.messages, keep.len() as u64 - 1, "{r:?}");
    let mut s = session(&b);
    s.consume("work", ConsumeOptions::default()).unwrap();
    let want: Vec<String> = keep[1..]
        .iter()
        .map(|x| String::from_utf8(x.message.body.to_vec()).unwrap())
        .collect();
    assert_eq!(bodies(&drain(s.deliveries())), want);
}

#[tokio::test]
async fn committed_transactions_and_dead_letters_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (b, _) = open(dir.path(), cfg());
    let mut s = session(&b);
    durable_queue(&mut s, "dlq");
    s.declare_queue(DeclareQueue {
        name: Some(Str::from("src")),
        options: QueueOptions {
            durable: true,
            dead_letter: Some(DeadLetterTarget {
                namespace: Namespace::Anycast,
                routing_key: Some(Str::from("dlq")),
            }),
            ..Default::default()
        },
        passive: false,
    })
    .unwrap();
    let mut tx = Transaction::new();
    tx.publish(persistent("src", "a"));
    tx.publish(persistent("src", "b"));
    for p in s.commit(tx).unwrap() {
        p.completion.expect("journaled").await.unwrap();
    }
    let c = s.consume("src", MANUAL).unwrap();
    let got = drain(s.deliveries());
    s.nack(c, got[0].tag, false, false).unwrap(); // "a" dead-lettered
    s.sync_for_tests().await;
    drop(s);
    let (b, _) = restart(b, dir.path(), cfg()).await;
    let mut s = session(&b);
    s.consume("src", ConsumeOptions::default()).unwrap();
    assert_eq!(
        bodies(&drain(s.deliveries())),
        ["b"],
        "b was unacked when we stopped"
    );
    let mut s2 = session(&b);
    s2.consume("dlq", ConsumeOptions::default()).unwrap();
    let dead = drain(s2.deliveries());
    assert_eq!(bodies(&dead), ["a"]);
    assert_eq!(
        dead[0]
            .message
            .headers
            .get("x-first-death-reason")
            .and_then(Value::as_str),
        Some("rejected")
    );
}

#[tokio::test]
async fn retained_messages_and_session_state_survive_a_restart() {
    use switchyard_model::{Address, AddressFilter};
    let dir = tempfile::tempdir().unwrap();
    let (b, _) = open(dir.path(), cfg());
    let addr = |a: &str| Address::new(a).unwrap();
    let retained = |a: &str, body: &'static str| {
        let mut m = Message::multicast(&addr(a), Bytes::from_static(body.as_bytes()));
        m.headers.push("k", Value::I32(7));
        Some(std::sync::Arc::new(m))
    };
    b.retain(&addr("home.temp"), retained("home.temp", "20"));
    b.retain(&addr("home.temp"), retained("home.temp", "21"));
    b.retain(&addr("home.door"), retained("home.door", "open"));
    b.retain(&addr("home.gone"), retained("home.gone", "x"));
    b.retain(&addr("home.gone"), None);
    b.save_state("mqtt", "client-1", b"subscriptions v1");
    b.save_state("mqtt", "client-1", b"subscriptions v2");
    b.save_state("mqtt", "client-2", b"bye");
    b.delete_state("mqtt", "client-2");
    session(&b).sync_for_tests().await;
    let (b, r) = restart(b, dir.path(), cfg()).await;
    assert_eq!((r.retained, r.states), (2, 1), "{r:?}");
    let mut got: Vec<(String, Bytes)> = b
        .retained(&AddressFilter::new("home.#").unwrap())
        .into_iter()
        .map(|m| (m.address.to_string(), m.body.clone()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("home.door".into(), Bytes::from_static(b"open")),
            ("home.temp".into(), Bytes::from_static(b"21"))
        ]
    );
    let temp = &b.retained(&AddressFilter::new("home.temp").unwrap())[0];
    assert_eq!(temp.headers.get("k"), Some(&Value::I32(7)));
    assert_eq!(
        b.load_state("mqtt", "client-1").as_deref(),
        Some(&b"subscriptions v2"[..])
    );
    assert!(b.load_state("mqtt", "client-2").is_none());
    assert_eq!(b.state_keys("mqtt"), ["client-1"]);
}
