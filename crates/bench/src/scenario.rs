//! Scenarios: who publishes, who subscribes, how much, how fast.

use crate::driver::{Driver, PubPlan, Quota, histogram, now_ns};
use crate::procstat;
use crate::report::{Latency, Report};
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A broker under test: its name, process and the address of each protocol.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub pid: Option<u32>,
    pub addrs: HashMap<&'static str, SocketAddr>,
}

impl Target {
    pub fn addr(&self, protocol: &str) -> Result<SocketAddr> {
        self.addrs
            .get(protocol)
            .copied()
            .with_context(|| format!("{} does not serve {protocol}", self.name))
    }
}

/// The shape of a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `publishers` → every one of `subscribers` gets every message.
    PubSub {
        publishers: usize,
        subscribers: usize,
    },
    /// `publishers` → `consumers` competing (each message to one of them).
    Queue { publishers: usize, consumers: usize },
    /// Request/reply with `window` requests in flight.
    ReqRep { window: usize },
}

/// One scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub shape: Shape,
    pub size: usize,
    /// Messages published in total (requests, for request/reply).
    pub count: u64,
    /// Total publish rate (msg/s); `None` = as fast as possible.
    pub rate: Option<f64>,
    pub publish_protocol: &'static str,
    pub subscribe_protocol: &'static str,
}

static TOPIC: AtomicU64 = AtomicU64::new(0);

fn topic(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("bench.{clean}.{}", TOPIC.fetch_add(1, Ordering::Relaxed))
}

fn cpu(pid: Option<u32>) -> Duration {
    pid.and_then(procstat::cpu_time).unwrap_or_default()
}

/// Runs a scenario against a target.
pub async fn run(
    s: &Scenario,
    target: &Target,
    pub_driver: &dyn Driver,
    sub_driver: &dyn Driver,
) -> Result<Report> {
    let pub_addr = target.addr(s.publish_protocol)?;
    let sub_addr = target.addr(s.subscribe_protocol)?;
    let topic = topic(&s.name);
    let me = std::process::id();
    let deadline = Instant::now() + Duration::from_secs(180);

    let (publishers, subs, group) = match s.shape {
        Shape::PubSub {
            publishers,
            subscribers,
        } => (publishers, subscribers, None),
        Shape::Queue {
            publishers,
            consumers,
        } => (publishers, consumers, Some("benchgroup")),
        Shape::ReqRep { window } => {
            return run_reqrep(s, target, pub_driver, pub_addr, &topic, window).await;
        }
    };
    let expected_total = match s.shape {
        Shape::Queue { .. } => s.count,
        _ => s.count * subs as u64,
    };
    let shared = Arc::new(AtomicU64::new(0));
    let mut subscribers = Vec::with_capacity(subs);
    for _ in 0..subs {
        subscribers.push(sub_driver.subscriber(sub_addr, &topic, group).await?);
    }
    let mut pubs = Vec::with_capacity(publishers);
    for _ in 0..publishers {
        pubs.push(pub_driver.publisher(pub_addr).await?);
    }
    let broker_cpu0 = cpu(target.pid);
    let gen_cpu0 = cpu(Some(me));
    let start_ns = now_ns();
    let sub_tasks: Vec<_> = subscribers
        .into_iter()
        .map(|sub| {
            let quota = match s.shape {
                Shape::Queue { .. } => Quota::Shared(shared.clone(), s.count),
                _ => Quota::Own(s.count),
            };
            tokio::spawn(sub.run(quota, deadline))
        })
        .collect();
    let per_pub = s.count / publishers as u64;
    let rate = s.rate.map(|r| r / publishers as f64);
    let pub_tasks: Vec<_> = pubs
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let count = if i == 0 {
                per_pub + s.count % publishers as u64
            } else {
                per_pub
            };
            let topic = topic.clone();
            let plan = PubPlan {
                count,
                size: s.size,
                rate,
            };
            tokio::spawn(async move { p.run(&topic, plan).await })
        })
        .collect();
    let mut sent = 0;
    for t in pub_tasks {
        sent += t.await.context("publisher task")??;
    }
    let mut delivered = 0;
    let mut last_ns = start_ns;
    let mut latency = histogram();
    for t in sub_tasks {
        let r = t.await.context("subscriber task")??;
        delivered += r.received;
        last_ns = last_ns.max(r.last_ns);
        latency.add(&r.latency).ok();
    }
    let seconds = (last_ns.saturating_sub(start_ns)) as f64 / 1e9;
    let broker_cpu = cpu(target.pid).saturating_sub(broker_cpu0).as_secs_f64();
    let gen_cpu = cpu(Some(me)).saturating_sub(gen_cpu0).as_secs_f64();
    Ok(Report {
        broker: target.name.clone(),
        scenario: s.name.clone(),
        publish_protocol: s.publish_protocol.to_owned(),
        subscribe_protocol: s.subscribe_protocol.to_owned(),
        size: s.size,
        publishers,
        subscribers: subs,
        sent,
        delivered,
        expected: expected_total,
        seconds,
        rate: if seconds > 0.0 {
            delivered as f64 / seconds
        } else {
            0.0
        },
        latency_us: Latency::from_histogram(&latency),
        broker_cpu_s: broker_cpu,
        broker_cpu_s_per_million: if delivered > 0 {
            broker_cpu * 1e6 / delivered as f64
        } else {
            0.0
        },
        generator_cpu_s: gen_cpu,
        broker_rss_kib: target.pid.and_then(procstat::rss_kib),
    })
}

async fn run_reqrep(
    s: &Scenario,
    target: &Target,
    driver: &dyn Driver,
    addr: SocketAddr,
    topic: &str,
    window: usize,
) -> Result<Report> {
    let responder = driver.responder(addr, topic).await?;
    let broker_cpu0 = cpu(target.pid);
    let gen_cpu0 = cpu(Some(std::process::id()));
    let start = now_ns();
    let plan = PubPlan {
        count: s.count,
        size: s.size,
        rate: None,
    };
    let r = driver.requester(addr, topic, plan, window).await;
    responder.abort();
    let r = r?;
    let seconds = r.last_ns.saturating_sub(start) as f64 / 1e9;
    let broker_cpu = cpu(target.pid).saturating_sub(broker_cpu0).as_secs_f64();
    Ok(Report {
        broker: target.name.clone(),
        scenario: s.name.clone(),
        publish_protocol: s.publish_protocol.to_owned(),
        subscribe_protocol: s.subscribe_protocol.to_owned(),
        size: s.size,
        publishers: 1,
        subscribers: 1,
        sent: s.count,
        delivered: r.received,
        expected: s.count,
        seconds,
        rate: if seconds > 0.0 {
            r.received as f64 / seconds
        } else {
            0.0
        },
        latency_us: Latency::from_histogram(&r.latency),
        broker_cpu_s: broker_cpu,
        broker_cpu_s_per_million: if r.received > 0 {
            broker_cpu * 1e6 / r.received as f64
        } else {
            0.0
        },
        generator_cpu_s: cpu(Some(std::process::id()))
            .saturating_sub(gen_cpu0)
            .as_secs_f64(),
        broker_rss_kib: target.pid.and_then(procstat::rss_kib),
    })
}
