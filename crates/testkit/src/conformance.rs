//! The conformance checks every protocol adapter passes.
//!
//! Each protocol's tests implement [`Client`] with a public client library
//! (async-nats, rumqttc, lapin, a STOMP client, reqwest) and call [`run`].
//! The checks speak in canonical terms (addresses, filters), so one written
//! contract holds every adapter to the same behaviour:
//!
//! 1. publish/subscribe round trip, body byte-identical (all 256 byte values);
//! 2. `*` matches exactly one word, `#` zero or more;
//! 3. unsubscribe stops delivery;
//! 4. a message published in-process through the core reaches the client,
//!    and a message the client publishes reaches an in-process subscriber
//!    (the cross-protocol path);
//! 5. a large body (the adapter's declared limit, capped at 1 MiB) round-trips;
//! 6. headers round-trip when the protocol carries them.

use anyhow::{Context, Result, bail, ensure};
use async_trait::async_trait;
use bytes::Bytes;
use std::time::Duration;
use switchyard_core::{Broker, Subscribe};
use switchyard_model::{Address, AddressFilter, ConnId, Message};

/// A message as a client received it, in canonical terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The canonical address (dot-separated), converted from the protocol's form.
    pub address: String,
    pub body: Bytes,
    /// User headers the protocol carried (empty if it carries none).
    pub headers: Vec<(String, String)>,
}

/// A protocol client driven by the conformance checks.
#[async_trait]
pub trait Client: Send {
    /// Subscribes to a canonical filter (`a.*.c`, `a.#`); returns an id for
    /// `unsubscribe`. Returns once the broker has the subscription.
    async fn subscribe(&mut self, filter: &str) -> Result<u64>;
    async fn unsubscribe(&mut self, id: u64) -> Result<()>;
    /// Publishes to a canonical address. Returns once the broker has it
    /// (e.g. after a flush/ping round trip or an ack).
    async fn publish(
        &mut self,
        address: &str,
        body: Bytes,
        headers: &[(String, String)],
    ) -> Result<()>;
    /// The next message for any subscription, or `None` after `timeout`.
    async fn next(&mut self, timeout: Duration) -> Result<Option<Received>>;
    /// Whether user headers travel in this protocol (MQTT 3.1.1: no).
    fn carries_headers(&self) -> bool;
    /// Largest body the check sends.
    fn max_body(&self) -> usize {
        1024 * 1024
    }
}

const QUIET: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(10);

async fn expect(c: &mut dyn Client, what: &str) -> Result<Received> {
    c.next(WAIT)
        .await?
        .with_context(|| format!("no message arrived: {what}"))
}

async fn expect_none(c: &mut dyn Client, what: &str) -> Result<()> {
    if let Some(m) = c.next(QUIET).await? {
        bail!("unexpected message ({what}): {:?} on {}", m.body, m.address);
    }
    Ok(())
}

/// Runs every check. `a` and `b` are two connections of the protocol under
/// test to the broker `broker` runs.
pub async fn run(broker: &Broker, a: &mut dyn Client, b: &mut dyn Client) -> Result<()> {
    roundtrip_is_byte_identical(a, b)
        .await
        .context("round trip")?;
    wildcards(a, b).await.context("wildcards")?;
    unsubscribe_stops_delivery(a, b)
        .await
        .context("unsubscribe")?;
    core_to_client_and_back(broker, a)
        .await
        .context("core <-> client")?;
    large_body(a, b).await.context("large body")?;
    if a.carries_headers() && b.carries_headers() {
        headers(a, b).await.context("headers")?;
    }
    Ok(())
}

async fn roundtrip_is_byte_identical(a: &mut dyn Client, b: &mut dyn Client) -> Result<()> {
    let id = b.subscribe("conf.rt").await?;
    let body = Bytes::from((0..=255u8).collect::<Vec<_>>());
    a.publish("conf.rt", body.clone(), &[]).await?;
    let got = expect(b, "conf.rt").await?;
    ensure!(got.body == body, "body changed in transit");
    ensure!(
        got.address == "conf.rt",
        "address {} != conf.rt",
        got.address
    );
    b.unsubscribe(id).await?;
    Ok(())
}

async fn wildcards(a: &mut dyn Client, b: &mut dyn Client) -> Result<()> {
    let star = b.subscribe("conf.w.*.x").await?;
    for addr in ["conf.w.1.x", "conf.w.x", "conf.w.1.2.x"] {
        a.publish(addr, Bytes::from(addr.to_owned()), &[]).await?;
    }
    let got = expect(b, "star").await?;
    ensure!(got.address == "conf.w.1.x", "'*' matched {}", got.address);
    expect_none(b, "'*' must match exactly one word").await?;
    b.unsubscribe(star).await?;

    let hash = b.subscribe("conf.h.#").await?;
    for addr in ["conf.h", "conf.h.1", "conf.h.1.2", "conf.other"] {
        a.publish(addr, Bytes::from(addr.to_owned()), &[]).await?;
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(expect(b, "hash").await?.address);
    }
    seen.sort();
    ensure!(
        seen == ["conf.h", "conf.h.1", "conf.h.1.2"],
        "'#' matched {seen:?}"
    );
    expect_none(b, "'#' must not match conf.other").await?;
    b.unsubscribe(hash).await?;
    Ok(())
}

async fn unsubscribe_stops_delivery(a: &mut dyn Client, b: &mut dyn Client) -> Result<()> {
    let id = b.subscribe("conf.unsub").await?;
    a.publish("conf.unsub", Bytes::from_static(b"1"), &[])
        .await?;
    expect(b, "before unsubscribe").await?;
    b.unsubscribe(id).await?;
    a.publish("conf.unsub", Bytes::from_static(b"2"), &[])
        .await?;
    expect_none(b, "after unsubscribe").await
}

async fn core_to_client_and_back(broker: &Broker, a: &mut dyn Client) -> Result<()> {
    let id = a.subscribe("conf.core.in").await?;
    let body = Bytes::from_static(b"\x00from the core\xff");
    broker.publish(Message::multicast(
        &Address::new("conf.core.in")?,
        body.clone(),
    ))?;
    let got = expect(a, "core publish").await?;
    ensure!(got.body == body, "body changed from the core");
    a.unsubscribe(id).await?;

    let mut session = broker.session("conformance", ConnId(u64::MAX));
    session.subscribe(Subscribe::temporary(AddressFilter::new("conf.core.out")?))?;
    let mut deliveries = session.deliveries();
    let body = Bytes::from_static(b"\x01to the core\xfe");
    a.publish("conf.core.out", body.clone(), &[]).await?;
    let d = tokio::time::timeout(WAIT, deliveries.recv())
        .await
        .context("no delivery in the core")?
        .context("session closed")?;
    ensure!(d.message.body == body, "body changed into the core");
    ensure!(&*d.message.address == "conf.core.out");
    Ok(())
}

async fn large_body(a: &mut dyn Client, b: &mut dyn Client) -> Result<()> {
    let size = a.max_body().min(b.max_body()).min(1024 * 1024);
    let id = b.subscribe("conf.large").await?;
    let body = Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    a.publish("conf.large", body.clone(), &[]).await?;
    let got = expect(b, "large").await?;
    ensure!(
        got.body.len() == size,
        "got {} bytes of {size}",
        got.body.len()
    );
    ensure!(got.body == body, "large body changed");
    b.unsubscribe(id).await?;
    Ok(())
}

async fn headers(a: &mut dyn Client, b: &mut dyn Client) -> Result<()> {
    let id = b.subscribe("conf.headers").await?;
    let headers = vec![
        ("x-trace".to_owned(), "abc-123".to_owned()),
        ("priority-class".to_owned(), "gold".to_owned()),
    ];
    a.publish("conf.headers", Bytes::from_static(b"h"), &headers)
        .await?;
    let got = expect(b, "headers").await?;
    for (k, v) in &headers {
        ensure!(
            got.headers.iter().any(|(gk, gv)| gk == k && gv == v),
            "header {k}={v} missing from {:?}",
            got.headers
        );
    }
    b.unsubscribe(id).await?;
    Ok(())
}
