//! CI smoke test: every scenario of every protocol, briefly, against an
//! in-process Switchyard (every listener on 127.0.0.1:0); fails if anything
//! is not delivered. The comparison with the peers is not part of CI
//! (`bench/compare.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use switchyard_bench::scenario::Target;
use switchyard_testkit::TestBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_of_every_protocol_delivers_everything() {
    // A load generator: every connection comes from 127.0.0.1, so the
    // per-IP connection limits are lifted as for `brokers::start_switchyard`.
    let b = TestBroker::start_with(|c| {
        c.core.limits.max_connections_per_ip = c.core.limits.max_connections;
        c.core.limits.connection_rate_per_ip = 0;
    })
    .await;
    let mut addrs = HashMap::new();
    for p in ["nats", "mqtt", "amqp", "stomp", "http"] {
        addrs.insert(p, b.addr(p));
    }
    let target = Target {
        name: "switchyard".into(),
        // In-process: the broker's CPU and memory are this process's.
        pid: Some(std::process::id()),
        addrs,
    };
    let reports = switchyard_bench::smoke::smoke(&target).await.unwrap();
    assert!(reports.len() > 40, "only {} scenarios ran", reports.len());
}
