//! The shared adapter conformance checks, driven by the raw-frame client.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::{Conformance, StompClient};
use switchyard_testkit::{TestBroker, conformance};

#[tokio::test]
async fn stomp_passes_the_adapter_conformance_checks() {
    let b = TestBroker::start().await;
    let addr = b.addr("stomp");
    for accept in [None, Some("1.1"), Some("1.2")] {
        let mut a = Conformance(StompClient::connect(addr, accept).await);
        let mut c = Conformance(StompClient::connect(addr, accept).await);
        conformance::run(b.broker(), &mut a, &mut c)
            .await
            .unwrap_or_else(|e| panic!("version {accept:?}: {e:#}"));
    }
    b.stop().await;
}
