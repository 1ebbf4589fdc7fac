//! `switchyard-bench`: the load generator.
//!
//! * `run`: one scenario against a running broker (or one side of it, for
//!   the two-process generator check).
//! * `compare`: starts Switchyard (release build) and the peers on free
//!   ports, runs every scenario against each, alternating, several times,
//!   and writes medians and ratios to `docs/benchmarks.md`.
//! * `smoke`: every scenario briefly against Switchyard (CI).
//! * `scale`: many idle connections and a wide fan-out (outside CI).
//! * `http-load`: single-message POSTs over keep-alive connections.
//! * `echo-server` (hidden): the axum endpoint HTTP publish is compared with.
//!
//! Drivers (`--driver`, see `switchyard_bench::suite::driver`): `nats`,
//! `mqtt:qos0|qos1|qos1p`, `amqp:transient|acks|persistent`,
//! `stomp:auto|acks|persistent`, `http`, `http:batchN` (publish only; the
//! subscribers of `run` then use `--subscribe-driver`).

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use switchyard_bench::report::Report;
use switchyard_bench::scenario::{self, Role, Scenario, Shape, Target};
use switchyard_bench::{compare, http, micro, scale, smoke, suite};

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
        /// The broker's address for the driver's protocol (host:port).
        #[arg(long)]
        addr: SocketAddr,
        /// nats, mqtt:qos0, mqtt:qos1, mqtt:qos1p, amqp:transient, amqp:acks,
        /// amqp:persistent, stomp:auto, stomp:acks, stomp:persistent, http,
        /// http:batchN.
        #[arg(long, default_value = "nats")]
        driver: String,
        /// The subscribers' driver when it differs (e.g. `--driver http
        /// --subscribe-driver nats --subscribe-addr ...`).
        #[arg(long)]
        subscribe_driver: Option<String>,
        /// The subscribers' address when --subscribe-driver is given.
        #[arg(long)]
        subscribe_addr: Option<SocketAddr>,
        /// pubsub | queue | reqrep
        #[arg(long, default_value = "pubsub")]
        shape: String,
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// Subscribers (pubsub), consumers (queue), requests in flight (reqrep).
        #[arg(long, default_value_t = 1)]
        subscribers: usize,
        #[arg(long, default_value_t = 16)]
        size: usize,
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        /// Total publish rate (msg/s); default: as fast as possible.
        #[arg(long)]
        rate: Option<f64>,
        /// Only one side (`pub` or `sub`), printing a JSON line; the `sub`
        /// side prints READY first. Needs --topic.
        #[arg(long)]
        role: Option<String>,
        /// The topic / queue name (default: a fresh one).
        #[arg(long)]
        topic: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Start Switchyard and the peers, run every scenario against each,
    /// write docs/benchmarks.md.
    Compare {
        /// The Switchyard binary (a release build).
        #[arg(long, default_value = "target/release/switchyard")]
        switchyard: PathBuf,
        /// Sections to run.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "nats,mqtt,amqp,stomp,http,cross"
        )]
        sections: Vec<String>,
        /// Repetitions of every scenario on every broker (medians are reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// A tenth of the messages, shorter latency runs (development).
        #[arg(long)]
        quick: bool,
        /// Also print every run as a JSON line.
        #[arg(long)]
        json: bool,
        /// Write the Markdown report to this file (e.g. docs/benchmarks.md).
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// Every scenario briefly against Switchyard only (CI smoke test).
    Smoke {
        #[arg(long, default_value = "target/debug/switchyard")]
        switchyard: PathBuf,
    },
    /// Scale checks against Switchyard: idle MQTT and NATS connections,
    /// a fan-out to many MQTT subscribers.
    Scale {
        #[arg(long, default_value = "target/release/switchyard")]
        switchyard: PathBuf,
        #[arg(long, default_value_t = 50_000)]
        mqtt: usize,
        #[arg(long, default_value_t = 10_000)]
        nats: usize,
        /// Subscribers of the fan-out.
        #[arg(long, default_value_t = 10_000)]
        fanout: usize,
        /// Write the Markdown report to this file.
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// Read criterion's results (after `cargo bench`) and write them, with
    /// issue 2's targets, into a section of docs/benchmarks.md that
    /// `compare` keeps (bench/micro.sh runs both steps).
    Micro {
        /// criterion's output directory.
        #[arg(long, default_value = "target/criterion")]
        criterion: PathBuf,
        /// The Markdown file whose micro-benchmark section is replaced.
        #[arg(long, default_value = "docs/benchmarks.md")]
        write: PathBuf,
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
    /// every POST with its body (started by `compare`'s http section).
    #[command(hide = true)]
    EchoServer {
        #[arg(long)]
        bind: SocketAddr,
    },
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

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Run {
            broker,
            pid,
            addr,
            driver,
            subscribe_driver,
            subscribe_addr,
            shape: shape_name,
            publishers,
            subscribers,
            size,
            count,
            rate,
            role,
            topic,
            json,
        } => {
            let d = suite::driver(&driver)?;
            let sd = match &subscribe_driver {
                Some(spec) => suite::driver(spec)?,
                None => d.clone(),
            };
            let proto: &'static str = d.protocol();
            let s = Scenario {
                name: shape_name.clone(),
                shape: shape(&shape_name, publishers, subscribers)?,
                size,
                count,
                rate,
                publish_protocol: proto,
                subscribe_protocol: sd.protocol(),
            };
            if let Some(role) = role {
                let role = match role.as_str() {
                    "pub" => Role::Pub,
                    "sub" => Role::Sub,
                    other => bail!("unknown role {other} (pub, sub)"),
                };
                let Some(topic) = topic else {
                    bail!("--role needs --topic");
                };
                let r = scenario::run_part(&s, addr, d, &topic, role).await?;
                println!("{}", serde_json::to_string(&r)?);
                return Ok(());
            }
            let mut addrs = HashMap::from([(proto, addr)]);
            if sd.protocol() != proto {
                let Some(sa) = subscribe_addr else {
                    bail!(
                        "--subscribe-driver {} needs --subscribe-addr",
                        sd.protocol()
                    );
                };
                addrs.insert(sd.protocol(), sa);
            }
            let target = Target {
                name: broker,
                pid,
                addrs,
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
            sections,
            reps,
            quick,
            json,
            write,
        } => {
            let command = std::env::var("SWITCHYARD_BENCH_COMMAND")
                .unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" "));
            let doc = compare::compare(&compare::Options {
                switchyard,
                sections,
                reps,
                quick,
                json,
                write,
                command,
            })
            .await?;
            println!("\n{doc}");
            Ok(())
        }
        Cmd::Smoke { switchyard } => smoke::smoke_binary(&switchyard).await,
        Cmd::Scale {
            switchyard,
            mqtt,
            nats,
            fanout,
            write,
        } => scale::scale(&switchyard, mqtt, nats, fanout, write.as_deref()).await,
        Cmd::Micro { criterion, write } => {
            let estimates = micro::collect(&criterion)?;
            anyhow::ensure!(
                !estimates.is_empty(),
                "no criterion results under {} (run `cargo bench` first)",
                criterion.display()
            );
            let command = std::env::var("SWITCHYARD_BENCH_COMMAND")
                .unwrap_or_else(|_| "switchyard-bench micro".to_owned());
            let mut machine = compare::machine();
            machine.push((
                "load average at the end (1, 5, 15 min)".to_owned(),
                compare::load_average(),
            ));
            let section = micro::section(&estimates, &machine, &command);
            let doc = std::fs::read_to_string(&write).unwrap_or_default();
            std::fs::write(&write, micro::splice(&doc, &section))
                .map_err(|e| anyhow::anyhow!("write {}: {e}", write.display()))?;
            println!("{section}");
            println!("wrote {}", write.display());
            Ok(())
        }
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
