//! `switchyard-bench`: the load generator.
//!
//! * `run`: one scenario against brokers already running.
//! * `compare`: starts Switchyard (release build) and the peers on free
//!   ports, runs every scenario against each, alternating, several times,
//!   and prints medians and ratios (optionally writing a Markdown report).
//! * `smoke`: every scenario briefly against Switchyard (CI).

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use switchyard_bench::driver::Driver;
use switchyard_bench::report::Report;
use switchyard_bench::scenario::{self, Scenario, Shape, Target};
use switchyard_bench::{brokers, http, nats};

#[derive(Debug, Parser)]
#[command(
    name = "switchyard-bench",
    about = "Load generator and peer comparison for Switchyard"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run one scenario against a running broker.
    Run {
        /// Name printed in the report.
        #[arg(long, default_value = "broker")]
        broker: String,
        /// Broker PID, for CPU and memory figures.
        #[arg(long)]
        pid: Option<u32>,
        /// NATS address (host:port).
        #[arg(long)]
        nats: Option<SocketAddr>,
        /// HTTP address (host:port).
        #[arg(long)]
        http: Option<SocketAddr>,
        /// Protocol of the publishers (and of the subscribers unless
        /// --subscribe-protocol says otherwise).
        #[arg(long, default_value = "nats")]
        protocol: String,
        #[arg(long)]
        subscribe_protocol: Option<String>,
        /// Messages per HTTP request (NDJSON batches when > 1).
        #[arg(long, default_value_t = 1)]
        http_batch: usize,
        /// pubsub | queue | reqrep
        #[arg(long, default_value = "pubsub")]
        shape: String,
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        #[arg(long, default_value_t = 1)]
        subscribers: usize,
        #[arg(long, default_value_t = 16)]
        size: usize,
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        /// Total publish rate (msg/s); default: as fast as possible.
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long)]
        json: bool,
    },
    /// Start Switchyard and the peers, run every scenario against each.
    Compare {
        /// The Switchyard binary (a release build).
        #[arg(long, default_value = "target/release/switchyard")]
        switchyard: PathBuf,
        /// Protocols to compare (nats; http compares against an axum echo
        /// endpoint).
        #[arg(long, value_delimiter = ',', default_value = "nats")]
        protocols: Vec<String>,
        /// Repetitions of every scenario on every broker (medians are reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Fewer messages per run.
        #[arg(long)]
        quick: bool,
        /// Also print every run as a JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Every scenario briefly against Switchyard only (CI smoke test).
    Smoke {
        #[arg(long, default_value = "target/debug/switchyard")]
        switchyard: PathBuf,
    },
    /// Single-message POSTs over keep-alive connections as fast as they are
    /// answered; prints requests per second.
    HttpLoad {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value = "/v1/topics/bench.load")]
        path: String,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        #[arg(long, default_value_t = 200_000)]
        count: u64,
        #[arg(long, default_value_t = 16)]
        size: usize,
    },
    /// The reference for HTTP comparisons: a plain axum endpoint answering
    /// every POST with its body (started by `compare --protocols http`).
    #[command(hide = true)]
    EchoServer {
        #[arg(long)]
        bind: SocketAddr,
    },
}

fn driver(protocol: &str) -> Result<Box<dyn Driver>> {
    Ok(match protocol {
        "nats" => Box::new(nats::Nats),
        "http" => Box::new(http::Http { batch: 1 }),
        other => bail!("no driver for {other}"),
    })
}

fn shape(name: &str, publishers: usize, subscribers: usize) -> Result<Shape> {
    Ok(match name {
        "pubsub" => Shape::PubSub {
            publishers,
            subscribers,
        },
        "queue" => Shape::Queue {
            publishers,
            consumers: subscribers,
        },
        "reqrep" => Shape::ReqRep {
            window: subscribers.max(1),
        },
        other => bail!("unknown shape {other}"),
    })
}

/// What a scenario must achieve against its peer.
#[derive(Debug, Clone, Copy)]
enum Goal {
    /// Switchyard's delivery rate ≥ this × the peer's.
    RateRatio(f64),
    /// Switchyard's p99 ≤ this × the peer's.
    P99Ratio(f64),
}

struct Case {
    scenario: Scenario,
    goals: Vec<Goal>,
}

fn nats_suite(scale: u64) -> Vec<Case> {
    let mut v = Vec::new();
    let ps = |n: &str, p, s, size, count: u64, goals: Vec<Goal>| Case {
        scenario: Scenario {
            name: n.to_owned(),
            shape: Shape::PubSub {
                publishers: p,
                subscribers: s,
            },
            size,
            count,
            rate: None,
            publish_protocol: "nats",
            subscribe_protocol: "nats",
        },
        goals,
    };
    for size in [16usize, 1024] {
        let n = if size == 16 { 2_000_000 } else { 500_000 } / scale;
        v.push(ps("1->1", 1, 1, size, n, vec![Goal::RateRatio(1.0)]));
        v.push(ps(
            "1->10 fan-out",
            1,
            10,
            size,
            n / 5,
            vec![Goal::RateRatio(1.0)],
        ));
        v.push(ps(
            "10->1 fan-in",
            10,
            1,
            size,
            n,
            vec![Goal::RateRatio(1.0)],
        ));
    }
    v.push(Case {
        scenario: Scenario {
            name: "request/reply (32 in flight)".into(),
            shape: Shape::ReqRep { window: 32 },
            size: 16,
            count: 200_000 / scale,
            rate: None,
            publish_protocol: "nats",
            subscribe_protocol: "nats",
        },
        goals: vec![],
    });
    for size in [16usize, 1024] {
        v.push(Case {
            scenario: Scenario {
                name: "latency @2000/s".into(),
                shape: Shape::PubSub {
                    publishers: 1,
                    subscribers: 1,
                },
                size,
                count: 20_000 / scale.min(4),
                rate: Some(2000.0),
                publish_protocol: "nats",
                subscribe_protocol: "nats",
            },
            goals: vec![Goal::P99Ratio(1.2)],
        });
    }
    v
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v.get(n / 2).copied().unwrap_or(0.0),
        n => {
            (v.get(n / 2 - 1).copied().unwrap_or(0.0) + v.get(n / 2).copied().unwrap_or(0.0)) / 2.0
        }
    }
}

struct Summary {
    rate: f64,
    p50: Option<f64>,
    p99: Option<f64>,
    cpu_per_m: f64,
    gen_cpu: f64,
    complete: bool,
}

fn summarize(runs: &[Report]) -> Summary {
    let lat = |f: fn(&switchyard_bench::report::Latency) -> f64| {
        let v: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.latency_us.as_ref().map(f))
            .collect();
        (!v.is_empty()).then(|| median(v))
    };
    Summary {
        rate: median(runs.iter().map(|r| r.rate).collect()),
        p50: lat(|l| l.p50),
        p99: lat(|l| l.p99),
        cpu_per_m: median(runs.iter().map(|r| r.broker_cpu_s_per_million).collect()),
        gen_cpu: median(runs.iter().map(|r| r.generator_cpu_s).collect()),
        complete: runs.iter().all(|r| r.delivered >= r.expected),
    }
}

async fn compare(
    bin: PathBuf,
    protocols: Vec<String>,
    reps: usize,
    quick: bool,
    json: bool,
) -> Result<()> {
    if !bin.exists() {
        bail!(
            "{} not found: cargo build --release -p switchyard",
            bin.display()
        );
    }
    let scale = if quick { 10 } else { 1 };
    let sy = brokers::start_switchyard(&bin).await?;
    println!("{}", Report::table_header());
    for protocol in &protocols {
        if protocol == "http" {
            http_compare(&sy, reps, scale, json).await?;
            continue;
        }
        let (peer, suite) = match protocol.as_str() {
            "nats" => (brokers::start_nats_server().await?, nats_suite(scale)),
            other => bail!("no comparison suite for {other}"),
        };
        let d = driver(protocol)?;
        println!("\n## {protocol}: switchyard vs {}\n", peer.target.name);
        let mut table = Vec::new();
        for case in &suite {
            let mut mine = Vec::new();
            let mut theirs = Vec::new();
            for rep in 0..reps {
                // Alternate who goes first.
                let order: [&Target; 2] = if rep % 2 == 0 {
                    [&sy.target, &peer.target]
                } else {
                    [&peer.target, &sy.target]
                };
                for t in order {
                    let r = scenario::run(&case.scenario, t, d.as_ref(), d.as_ref())
                        .await
                        .with_context(|| format!("{} on {}", case.scenario.name, t.name))?;
                    println!("{}", r.table_row());
                    if json {
                        println!("{}", serde_json::to_string(&r)?);
                    }
                    if t.name == "switchyard" {
                        mine.push(r);
                    } else {
                        theirs.push(r);
                    }
                }
            }
            table.push((case, summarize(&mine), summarize(&theirs)));
        }
        println!("\nmedians of {reps} runs:");
        println!(
            "| scenario | size | switchyard msg/s | {peer} msg/s | ratio | switchyard p50/p99 µs | {peer} p50/p99 µs | cpu-s/M (sy / {peer}) | gen cpu-s | goal |",
            peer = peer.target.name
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
        for (case, a, b) in &table {
            let ratio = if b.rate > 0.0 { a.rate / b.rate } else { 0.0 };
            let fmt_lat = |s: &Summary| match (s.p50, s.p99) {
                (Some(x), Some(y)) => format!("{x:.0} / {y:.0}"),
                _ => "-".into(),
            };
            let goals: Vec<String> = case
                .goals
                .iter()
                .map(|g| match *g {
                    Goal::RateRatio(x) => {
                        format!("rate ≥ {x}× {}", if ratio >= x { "met" } else { "NOT met" })
                    }
                    Goal::P99Ratio(x) => match (a.p99, b.p99) {
                        (Some(p), Some(q)) => {
                            format!("p99 ≤ {x}× {}", if p <= x * q { "met" } else { "NOT met" })
                        }
                        _ => "p99: no data".into(),
                    },
                })
                .collect();
            println!(
                "| {}{} | {} | {:.0} | {:.0} | {:.2} | {} | {} | {:.2} / {:.2} | {:.2} / {:.2} | {} |",
                case.scenario.name,
                if a.complete && b.complete {
                    ""
                } else {
                    " (incomplete)"
                },
                case.scenario.size,
                a.rate,
                b.rate,
                ratio,
                fmt_lat(a),
                fmt_lat(b),
                a.cpu_per_m,
                b.cpu_per_m,
                a.gen_cpu,
                b.gen_cpu,
                goals.join("; ")
            );
        }
    }
    Ok(())
}

/// HTTP publish (single and batch, keep-alive connections) → a NATS
/// subscriber, against the request rate of a plain axum echo endpoint on
/// the same machine (goal: single publish ≥ 0.7× the echo rate).
async fn http_compare(sy: &brokers::BrokerProc, reps: usize, scale: u64, json: bool) -> Result<()> {
    const CONNECTIONS: usize = 4;
    const BATCH: usize = 100;
    let echo = brokers::start_echo().await?;
    let echo_addr = echo.target.addr("http")?;
    let sy_addr = sy.target.addr("http")?;
    let single_n = 200_000 / scale;
    let scenario = |name: &str, count: u64| Scenario {
        name: name.to_owned(),
        shape: Shape::PubSub {
            publishers: CONNECTIONS,
            subscribers: 1,
        },
        size: 16,
        count,
        rate: None,
        publish_protocol: "http",
        subscribe_protocol: "nats",
    };
    let single = scenario("http single -> nats", single_n);
    let batch = scenario("http batch -> nats", 20 * single_n);
    let single_driver = http::Http { batch: 1 };
    let batch_driver = http::Http { batch: BATCH };
    println!(
        "\n## http: switchyard vs axum echo ({CONNECTIONS} keep-alive connections, 16-byte bodies)\n"
    );
    // (rate, server CPU µs per message) of every run.
    let (mut echo_runs, mut raw_runs, mut singles, mut batches) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let cpu = |pid: Option<u32>| {
        pid.and_then(switchyard_bench::procstat::cpu_time)
            .unwrap_or_default()
    };
    let measured = |target: &Target, addr, path: &'static str| {
        let pid = target.pid;
        async move {
            let c0 = cpu(pid);
            let rate = http::request_rate(addr, path, CONNECTIONS, single_n, 16).await?;
            let us = cpu(pid).saturating_sub(c0).as_secs_f64() * 1e6 / single_n as f64;
            Ok::<(f64, f64), anyhow::Error>((rate, us))
        }
    };
    for rep in 0..reps {
        let echo_first = rep % 2 == 1;
        if echo_first {
            echo_runs.push(measured(&echo.target, echo_addr, "/v1/topics/echo").await?);
        }
        let r = scenario::run(&single, &sy.target, &single_driver, &nats::Nats).await?;
        println!("{}", r.table_row());
        if json {
            println!("{}", serde_json::to_string(&r)?);
        }
        singles.push((r.rate, r.broker_cpu_s_per_million));
        raw_runs.push(measured(&sy.target, sy_addr, "/v1/topics/bench.nobody").await?);
        if !echo_first {
            echo_runs.push(measured(&echo.target, echo_addr, "/v1/topics/echo").await?);
        }
        let r = scenario::run(&batch, &sy.target, &batch_driver, &nats::Nats).await?;
        println!("{}", r.table_row());
        if json {
            println!("{}", serde_json::to_string(&r)?);
        }
        batches.push((r.rate, r.broker_cpu_s_per_million));
    }
    let med = |v: &[(f64, f64)]| {
        (
            median(v.iter().map(|x| x.0).collect()),
            median(v.iter().map(|x| x.1).collect()),
        )
    };
    let (echo_rate, echo_cpu) = med(&echo_runs);
    let (single, single_cpu) = med(&singles);
    let (raw, raw_cpu) = med(&raw_runs);
    let (batch, batch_cpu) = med(&batches);
    println!("\nmedians of {reps} runs:");
    println!("| what | msg/s (req/s) | × echo | server CPU µs/msg | goal |");
    println!("| --- | ---: | ---: | ---: | --- |");
    println!(
        "| axum echo endpoint (POST → 202 + body) | {echo_rate:.0} | 1.00 | {echo_cpu:.1} | |"
    );
    let ratio = |x: f64| if echo_rate > 0.0 { x / echo_rate } else { 0.0 };
    let goal = |x: f64| {
        if ratio(x) >= 0.7 {
            "≥ 0.7× met"
        } else {
            "≥ 0.7× NOT met"
        }
    };
    println!(
        "| switchyard single publish, no subscriber | {raw:.0} | {:.2} | {raw_cpu:.1} | {} |",
        ratio(raw),
        goal(raw)
    );
    println!(
        "| switchyard single publish → NATS subscriber | {single:.0} | {:.2} | {single_cpu:.1} | {} |",
        ratio(single),
        goal(single)
    );
    println!(
        "| switchyard batch publish ({BATCH}/request) → NATS subscriber | {batch:.0} | {:.2} | {batch_cpu:.2} | |",
        ratio(batch)
    );
    Ok(())
}

async fn smoke(bin: PathBuf) -> Result<()> {
    let sy = brokers::start_switchyard(&bin).await?;
    println!("{}", Report::table_header());
    let protocols: Vec<&str> = sy
        .target
        .addrs
        .keys()
        .copied()
        .filter(|p| *p != "http")
        .collect();
    if sy.target.addrs.contains_key("http") && sy.target.addrs.contains_key("nats") {
        for batch in [1, 50] {
            let s = Scenario {
                name: format!("http batch {batch} -> nats"),
                shape: Shape::PubSub {
                    publishers: 2,
                    subscribers: 1,
                },
                size: 16,
                count: 2_000,
                rate: None,
                publish_protocol: "http",
                subscribe_protocol: "nats",
            };
            let r = scenario::run(&s, &sy.target, &http::Http { batch }, &nats::Nats).await?;
            println!("{}", r.table_row());
            if r.delivered < r.expected {
                bail!("{}: {} of {} delivered", s.name, r.delivered, r.expected);
            }
        }
    }
    for p in protocols {
        let d = match driver(p) {
            Ok(d) => d,
            Err(_) => continue,
        };
        let suite = match p {
            "nats" => nats_suite(1000),
            _ => continue,
        };
        for case in suite {
            let r = scenario::run(&case.scenario, &sy.target, d.as_ref(), d.as_ref()).await?;
            println!("{}", r.table_row());
            if r.delivered < r.expected {
                bail!(
                    "{} on {p}: {} of {} delivered",
                    case.scenario.name,
                    r.delivered,
                    r.expected
                );
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Run {
            broker,
            pid,
            nats,
            http: http_addr,
            protocol,
            subscribe_protocol,
            http_batch,
            shape: shape_name,
            publishers,
            subscribers,
            size,
            count,
            rate,
            json,
        } => {
            let mut addrs = HashMap::new();
            if let Some(a) = nats {
                addrs.insert("nats", a);
            }
            if let Some(a) = http_addr {
                addrs.insert("http", a);
            }
            let target = Target {
                name: broker,
                pid,
                addrs,
            };
            let d: Box<dyn Driver> = match protocol.as_str() {
                "http" => Box::new(http::Http { batch: http_batch }),
                p => driver(p)?,
            };
            let sd = driver(subscribe_protocol.as_deref().unwrap_or(&protocol))?;
            let s = Scenario {
                name: shape_name.clone(),
                shape: shape(&shape_name, publishers, subscribers)?,
                size,
                count,
                rate,
                publish_protocol: d.protocol(),
                subscribe_protocol: sd.protocol(),
            };
            let r = scenario::run(&s, &target, d.as_ref(), sd.as_ref()).await?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("{}\n{}", Report::table_header(), r.table_row());
            }
            Ok(())
        }
        Cmd::Compare {
            switchyard,
            protocols,
            reps,
            quick,
            json,
        } => compare(switchyard, protocols, reps, quick, json).await,
        Cmd::Smoke { switchyard } => smoke(switchyard).await,
        Cmd::HttpLoad {
            addr,
            path,
            connections,
            count,
            size,
        } => {
            let rate = http::request_rate(addr, &path, connections, count, size).await?;
            println!("{rate:.0} requests/s");
            Ok(())
        }
        Cmd::EchoServer { bind } => {
            let listener = tokio::net::TcpListener::bind(bind).await?;
            http::echo_server(listener).await
        }
    }
}
