//! Health, readiness and metrics on the HTTP listener.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use switchyard_model::{Address, Message};
use switchyard_testkit::TestBroker;

#[tokio::test]
async fn healthz_and_readyz_answer() {
    let b = TestBroker::start().await;
    let url = b.http_url();
    let r = reqwest::get(format!("{url}/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok\n");
    let r = reqwest::get(format!("{url}/readyz")).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["ready"], true);
    assert!(v["ready_after_ms"].is_u64());
    b.stop().await;
}

#[tokio::test]
async fn metrics_move_with_traffic() {
    let b = TestBroker::start().await;
    let url = format!("{}/metrics", b.http_url());
    let before = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert!(
        before.contains("switchyard_messages_published_total 0"),
        "{before}"
    );
    b.broker()
        .publish(Message::multicast(
            &Address::new("a.b").unwrap(),
            Bytes::from_static(b"x"),
        ))
        .unwrap();
    let after = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert!(
        after.contains("switchyard_messages_published_total 1"),
        "{after}"
    );
    assert!(
        after.contains("switchyard_messages_unroutable_total 1"),
        "{after}"
    );
    for line in after
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, value) = line.rsplit_once(' ').unwrap();
        assert!(!name.is_empty());
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad sample line {line}"));
    }
    b.stop().await;
}
