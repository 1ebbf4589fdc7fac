//! `[limits]` enforced by the accept loop and the core: handshake timeout
//! on every listener, connections per IP, connection rate per IP,
//! subscriptions per connection, queues.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};
use switchyard_core::{CoreError, DeclareQueue, Subscribe};
use switchyard_model::{AddressFilter, Str};
use switchyard_testkit::TestBroker;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Reads until the peer closes; the time it took, or `None` after `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((start + limit).into(), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_silent_connection_is_closed_by_the_handshake_timeout_on_every_listener() {
    let b = TestBroker::start_with(|c| {
        c.core.limits.handshake_timeout = switchyard_core::Dur::secs(1);
    })
    .await;
    for name in ["mqtt", "amqp", "stomp", "nats", "http"] {
        let mut s = TcpStream::connect(b.addr(name)).await.unwrap();
        let took = closed_within(&mut s, Duration::from_secs(15)).await;
        assert!(took.is_some(), "{name}: a silent client was not closed");
        assert!(
            took.unwrap() >= Duration::from_millis(900),
            "{name}: closed before the timeout"
        );
    }
    b.stop().await;
}

#[tokio::test]
async fn connections_past_the_per_ip_cap_are_closed_at_once() {
    let b = TestBroker::start_with(|c| {
        c.core.limits.max_connections_per_ip = 2;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(b.addr("nats")).await.unwrap();
        let mut buf = [0u8; 8];
        assert!(s.read(&mut buf).await.unwrap() > 0, "INFO expected");
        held.push(s);
    }
    let mut third = TcpStream::connect(b.addr("nats")).await.unwrap();
    assert!(
        closed_within(&mut third, Duration::from_secs(5))
            .await
            .is_some()
    );
    drop(held);
    b.stop().await;
}

#[tokio::test]
async fn the_connection_rate_per_ip_refuses_a_burst() {
    let b = TestBroker::start_with(|c| {
        c.core.limits.connection_rate_per_ip = 3;
        c.core.limits.connection_burst_per_ip = 3;
    })
    .await;
    let mut admitted = 0;
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(b.addr("nats")).await.unwrap();
        let mut buf = [0u8; 8];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await
            && n > 0
        {
            admitted += 1;
        }
        held.push(s);
    }
    assert!(admitted >= 3, "the burst is allowed ({admitted})");
    assert!(admitted <= 5, "past the burst, refused ({admitted})");
    drop(held);
    b.stop().await;
}

/// The defaults are safe ones: 1000 connections per IP address, and a
/// burst of 1000 new connections before the 200/s rate applies. A client
/// opening 1000 connections at once gets every one of them (a restart's
/// reconnection storm from one NAT address), the next is closed.
#[tokio::test]
async fn by_default_one_ip_gets_1000_connections_and_no_more() {
    let b = TestBroker::start().await;
    let limits = &b.broker().config().limits;
    assert_eq!(limits.max_connections_per_ip, 1000);
    assert_eq!(limits.connection_rate_per_ip, 200);
    assert_eq!(limits.connection_burst_per_ip, 1000);
    let mut held = Vec::new();
    for i in 0..1000 {
        let mut s = TcpStream::connect(b.addr("nats")).await.unwrap();
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("connection {i}: no INFO"))
            .unwrap_or(0);
        assert!(n > 0, "connection {i} refused");
        held.push(s);
    }
    let mut over = TcpStream::connect(b.addr("nats")).await.unwrap();
    assert!(
        closed_within(&mut over, Duration::from_secs(5))
            .await
            .is_some(),
        "the 1001st connection from one IP is closed"
    );
    drop(held);
    b.stop().await;
}

#[tokio::test]
async fn subscriptions_per_connection_and_queues_are_capped() {
    let b = TestBroker::start_with(|c| {
        c.core.limits.max_consumers_per_connection = 2;
        c.core.limits.max_queues = 5;
    })
    .await;
    let broker = b.broker().clone();
    let mut s = broker.session("test", broker.next_conn_id());
    for f in ["a.#", "b.#"] {
        s.subscribe(Subscribe::temporary(AddressFilter::new(f).unwrap()))
            .unwrap();
    }
    let e = s
        .subscribe(Subscribe::temporary(AddressFilter::new("c.#").unwrap()))
        .unwrap_err();
    assert!(matches!(e, CoreError::ResourceLimit(_)), "{e:?}");
    let mut refused = false;
    for i in 0..10 {
        match broker.declare_queue(
            DeclareQueue {
                name: Some(Str::from(format!("q{i}").as_str())),
                options: Default::default(),
                passive: false,
            },
            None,
        ) {
            Ok(_) => {}
            Err(CoreError::ResourceLimit(_)) => {
                refused = true;
                break;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(refused, "max_queues");
    drop(s);
    b.stop().await;
}
