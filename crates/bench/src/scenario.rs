//! Scenarios: who publishes, who subscribes, how much, how fast.

use crate::driver::{Dest, Driver, PubPlan, Quota, histogram, now_ns};
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

    let (publishers, subs, dest) = match s.shape {
        Shape::PubSub {
            publishers,
            subscribers,
        } => (publishers, subscribers, Dest::Topic(&topic)),
        Shape::Queue {
            publishers,
            consumers,
        } => (publishers, consumers, Dest::Queue(&topic)),
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
        subscribers.push(sub_driver.subscriber(sub_addr, dest).await?);
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
            let queue = matches!(dest, Dest::Queue(_));
            let plan = PubPlan {
                count,
                size: s.size,
                rate,
            };
            tokio::spawn(async move {
                let dest = if queue {
                    Dest::Queue(&topic)
                } else {
                    Dest::Topic(&topic)
                };
                p.run(dest, plan).await
            })
        })
        .collect();
    let mut sent = 0;
    let mut confirms: Option<hdrhistogram::Histogram<u64>> = None;
    for t in pub_tasks {
        let r = t.await.context("publisher task")??;
        sent += r.sent;
        if let Some(h) = r.confirms {
            match &mut confirms {
                Some(all) => {
                    all.add(&h).ok();
                }
                None => confirms = Some(h),
            }
        }
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
        confirm_us: confirms.as_ref().and_then(Latency::from_histogram),
        broker_cpu_s: broker_cpu,
        broker_cpu_s_per_million: if delivered > 0 {
            broker_cpu * 1e6 / delivered as f64
        } else {
            0.0
        },
        generator_cpu_s: gen_cpu,
        broker_rss_kib: target.pid.and_then(procstat::rss_kib),
        mode: sub_driver.mode(),
        store: None,
        steal_pct: None,
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
        confirm_us: None,
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
        mode: driver.mode(),
        store: None,
        steal_pct: None,
    })
}

/// What the `conns` scenario measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnsReport {
    pub broker: String,
    pub protocol: String,
    pub connections: usize,
    /// Handshakes completed per second (with `concurrency` at once).
    pub accept_per_s: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// (after − before) / connections.
    pub kib_per_connection: f64,
    /// The second half's growth / its connections.
    pub kib_per_connection_marginal: f64,
    pub broker_cpu_s: f64,
}

/// Opens `n` idle connections (each through the protocol's handshake),
/// from `sources` loopback addresses (127.0.0.1, .2, ...), `concurrency`
/// handshakes at a time; measures the accept rate and the broker's memory
/// per connection — over all `n` (RSS growth / n) and at the margin (the
/// second half's growth / n/2, without the one-time costs of the first
/// connections) — then closes them.
pub async fn conns(
    target: &Target,
    driver: Arc<dyn Driver>,
    n: usize,
    sources: usize,
    concurrency: usize,
) -> Result<ConnsReport> {
    let addr = target.addr(driver.protocol())?;
    let pid = target
        .pid
        .context("the conns scenario needs the broker's PID")?;
    // Let the broker settle (memory released by earlier runs).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = procstat::rss_kib(pid).unwrap_or(0);
    let cpu0 = cpu(Some(pid));
    let start = Instant::now();
    let half = n / 2;
    let mut held = Vec::with_capacity(n);
    let mut rss_half = rss_before;
    let mut elapsed = 0.0;
    for (from_i, to_i) in [(0, half), (half, n)] {
        let t0 = Instant::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for i in from_i..to_i {
            let permit = sem.clone().acquire_owned().await?;
            let driver = driver.clone();
            let from = (sources > 1).then(|| {
                std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1 + (i % sources) as u8))
            });
            tasks.spawn(async move {
                let r = driver.idle(addr, from).await;
                drop(permit);
                r
            });
        }
        while let Some(r) = tasks.join_next().await {
            held.push(r.context("connection task")??);
        }
        elapsed += t0.elapsed().as_secs_f64();
        // Give the broker a moment to finish its side of every handshake.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        if to_i == half {
            rss_half = procstat::rss_kib(pid).unwrap_or(0);
        }
    }
    let _ = start;
    let rss_after = procstat::rss_kib(pid).unwrap_or(0);
    let broker_cpu = cpu(Some(pid)).saturating_sub(cpu0).as_secs_f64();
    drop(held);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(ConnsReport {
        broker: target.name.clone(),
        protocol: driver.protocol().to_owned(),
        connections: n,
        accept_per_s: if elapsed > 0.0 {
            n as f64 / elapsed
        } else {
            0.0
        },
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        kib_per_connection: rss_after.saturating_sub(rss_before) as f64 / n.max(1) as f64,
        kib_per_connection_marginal: rss_after.saturating_sub(rss_half) as f64
            / (n - half).max(1) as f64,
        broker_cpu_s: broker_cpu,
    })
}

/// One side of a scenario run in its own process (`switchyard-bench run
/// --role pub|sub`): the generator-is-not-the-bottleneck check runs the
/// publishers and the subscribers in two processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Pub,
    Sub,
}

/// What one side reported (a JSON line on its standard output).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PartResult {
    pub sent: u64,
    pub received: u64,
    /// `now_ns()` (the machine's monotonic clock) when publishing started.
    pub start_ns: u64,
    /// When the last message arrived.
    pub last_ns: u64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    /// This process's CPU seconds.
    pub cpu_s: f64,
}

/// Runs one side of `s` on `topic`. The subscribing side prints `READY`
/// on standard output once every subscription is in place.
pub async fn run_part(
    s: &Scenario,
    addr: SocketAddr,
    driver: Arc<dyn Driver>,
    topic: &str,
    role: Role,
) -> Result<PartResult> {
    let (publishers, subs, queue) = match s.shape {
        Shape::PubSub {
            publishers,
            subscribers,
        } => (publishers, subscribers, false),
        Shape::Queue {
            publishers,
            consumers,
        } => (publishers, consumers, true),
        Shape::ReqRep { .. } => anyhow::bail!("request/reply is not split"),
    };
    let dest = if queue {
        Dest::Queue(topic)
    } else {
        Dest::Topic(topic)
    };
    let me = std::process::id();
    let cpu0 = cpu(Some(me));
    let mut result = PartResult {
        sent: 0,
        received: 0,
        start_ns: 0,
        last_ns: 0,
        p50_us: None,
        p99_us: None,
        cpu_s: 0.0,
    };
    match role {
        Role::Sub => {
            let mut tasks = Vec::with_capacity(subs);
            let shared = Arc::new(AtomicU64::new(0));
            let deadline = Instant::now() + Duration::from_secs(180);
            let mut ready = Vec::with_capacity(subs);
            for _ in 0..subs {
                ready.push(driver.subscriber(addr, dest).await?);
            }
            println!("READY");
            for sub in ready {
                let quota = if queue {
                    Quota::Shared(shared.clone(), s.count)
                } else {
                    Quota::Own(s.count)
                };
                tasks.push(tokio::spawn(sub.run(quota, deadline)));
            }
            let mut latency = histogram();
            for t in tasks {
                let r = t.await.context("subscriber task")??;
                result.received += r.received;
                result.last_ns = result.last_ns.max(r.last_ns);
                latency.add(&r.latency).ok();
            }
            if let Some(l) = Latency::from_histogram(&latency) {
                result.p50_us = Some(l.p50);
                result.p99_us = Some(l.p99);
            }
        }
        Role::Pub => {
            let mut pubs = Vec::with_capacity(publishers);
            for _ in 0..publishers {
                pubs.push(driver.publisher(addr).await?);
            }
            result.start_ns = now_ns();
            let per_pub = s.count / publishers.max(1) as u64;
            let mut tasks = Vec::with_capacity(publishers);
            for (i, p) in pubs.into_iter().enumerate() {
                let count = if i == 0 {
                    per_pub + s.count % publishers.max(1) as u64
                } else {
                    per_pub
                };
                let topic = topic.to_owned();
                let plan = PubPlan {
                    count,
                    size: s.size,
                    rate: s.rate.map(|r| r / publishers.max(1) as f64),
                };
                tasks.push(tokio::spawn(async move {
                    let dest = if queue {
                        Dest::Queue(&topic)
                    } else {
                        Dest::Topic(&topic)
                    };
                    p.run(dest, plan).await
                }));
            }
            for t in tasks {
                result.sent += t.await.context("publisher task")??.sent;
            }
        }
    }
    result.cpu_s = cpu(Some(me)).saturating_sub(cpu0).as_secs_f64();
    Ok(result)
}

/// Runs `s` with its publishers and its subscribers in two processes of
/// `exe` (this binary): `args` are the `run` arguments that name the
/// broker and the driver.
pub async fn run_split(
    s: &Scenario,
    target: &Target,
    exe: &std::path::Path,
    args: &[String],
) -> Result<Report> {
    use tokio::io::AsyncBufReadExt;
    let topic = topic(&format!("{}-split", s.name));
    let spawn = |role: &str| {
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("run")
            .args(args)
            .args(["--role", role, "--topic", &topic])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        cmd.spawn()
    };
    let mut sub = spawn("sub").context("start the subscribing generator")?;
    let mut sub_out = tokio::io::BufReader::new(sub.stdout.take().context("stdout")?).lines();
    match sub_out.next_line().await? {
        Some(l) if l == "READY" => {}
        other => anyhow::bail!("subscribing generator: {other:?}"),
    }
    let broker_cpu0 = cpu(target.pid);
    let publ = spawn("pub").context("start the publishing generator")?;
    let pub_out = publ.wait_with_output().await?;
    let pub_res: PartResult = serde_json::from_slice(
        pub_out
            .stdout
            .split(|&b| b == b'\n')
            .rfind(|l| !l.is_empty())
            .unwrap_or_default(),
    )
    .context("publishing generator output")?;
    let line = sub_out
        .next_line()
        .await?
        .context("subscribing generator output")?;
    let sub_res: PartResult = serde_json::from_str(&line)?;
    let _ = sub.wait().await;
    let broker_cpu = cpu(target.pid).saturating_sub(broker_cpu0).as_secs_f64();
    let seconds = sub_res.last_ns.saturating_sub(pub_res.start_ns) as f64 / 1e9;
    let (publishers, subscribers) = match s.shape {
        Shape::PubSub {
            publishers,
            subscribers,
        } => (publishers, subscribers),
        Shape::Queue {
            publishers,
            consumers,
        } => (publishers, consumers),
        Shape::ReqRep { .. } => (1, 1),
    };
    let expected = match s.shape {
        Shape::Queue { .. } => s.count,
        _ => s.count * subscribers as u64,
    };
    Ok(Report {
        broker: target.name.clone(),
        scenario: format!("{} (2 generator processes)", s.name),
        publish_protocol: s.publish_protocol.to_owned(),
        subscribe_protocol: s.subscribe_protocol.to_owned(),
        size: s.size,
        publishers,
        subscribers,
        sent: pub_res.sent,
        delivered: sub_res.received,
        expected,
        seconds,
        rate: if seconds > 0.0 {
            sub_res.received as f64 / seconds
        } else {
            0.0
        },
        latency_us: match (sub_res.p50_us, sub_res.p99_us) {
            (Some(p50), Some(p99)) => Some(Latency {
                p50,
                p90: 0.0,
                p99,
                p999: 0.0,
                max: 0.0,
                samples: sub_res.received,
            }),
            _ => None,
        },
        confirm_us: None,
        broker_cpu_s: broker_cpu,
        broker_cpu_s_per_million: if sub_res.received > 0 {
            broker_cpu * 1e6 / sub_res.received as f64
        } else {
            0.0
        },
        generator_cpu_s: pub_res.cpu_s + sub_res.cpu_s,
        broker_rss_kib: target.pid.and_then(procstat::rss_kib),
        mode: String::new(),
        store: None,
        steal_pct: None,
    })
}
