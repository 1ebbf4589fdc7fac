//! `switchyard-bench compare`: Switchyard and the peers side by side, in one
//! run, alternating, medians; writes `docs/benchmarks.md`.

use crate::brokers::{self, BrokerProc};
use crate::report::{Latency, Report, StoreFigures};
use crate::scenario::{self, ConnsReport, Shape, Target};
use crate::suite::{self, Case, Goal, Kind, MOSQUITTO, NATS_SERVER, RABBITMQ, fmt_us};
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What `compare` does.
#[derive(Debug, Clone)]
pub struct Options {
    /// The Switchyard binary (a release build).
    pub switchyard: PathBuf,
    /// Sections: nats, mqtt, amqp, stomp, http, cross.
    pub sections: Vec<String>,
    pub reps: usize,
    pub quick: bool,
    pub json: bool,
    /// Write the Markdown report here.
    pub write: Option<PathBuf>,
    /// The command line, for the report.
    pub command: String,
}

/// The results of one case.
#[derive(Debug)]
struct CaseResult {
    case: Case,
    /// Per broker name, every repetition.
    runs: HashMap<String, Vec<Report>>,
    /// Fixed-rate runs during which the hypervisor stole CPU time, each
    /// repeated (see [`QUIET_STEAL`]); listed in the report, not counted.
    stolen: HashMap<String, Vec<Report>>,
    conns: HashMap<String, Vec<ConnsReport>>,
    /// The offered rate, for fixed- and relative-rate cases.
    offered: Option<f64>,
    /// The two-generator-process run, per broker.
    split: HashMap<String, Vec<Report>>,
    /// Why a broker's runs are missing.
    errors: Vec<String>,
    /// Waits of a second or more for a broker to go idle before a run.
    settles: Vec<(String, Duration)>,
    /// HTTP cases: the axum echo endpoint's median request rate.
    echo_rate: Option<f64>,
    /// Persistent cases: the disk's raw rate (4 KiB appends + `fdatasync`
    /// per second, p50 µs) measured just before the case: on a shared disk
    /// it moves during a run.
    disk: Option<(f64, f64)>,
}

/// The HTTP section's reference: single-message POSTs over keep-alive
/// connections to a plain axum echo endpoint and to Switchyard without a
/// subscriber, alternating, medians of (requests/s, server CPU µs/request).
#[derive(Debug, Clone, Default)]
struct HttpReference {
    echo: (f64, f64),
    no_subscriber: (f64, f64),
    requests: u64,
    errors: Vec<String>,
}

/// Measures [`HttpReference`]: `reps` runs of `count` requests on each.
async fn http_reference(sy: &Target, count: u64, reps: usize) -> HttpReference {
    let mut out = HttpReference {
        requests: count,
        ..HttpReference::default()
    };
    let echo = match brokers::start_echo().await {
        Ok(e) => e,
        Err(e) => {
            out.errors.push(format!("echo endpoint: {e:#}"));
            return out;
        }
    };
    let cpu = |pid: Option<u32>| pid.and_then(crate::procstat::cpu_time).unwrap_or_default();
    let (mut echo_runs, mut raw_runs) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let mut pair = [
            (&echo.target, "/v1/topics/echo"),
            (sy, "/v1/topics/bench.nobody"),
        ];
        if rep % 2 == 1 {
            pair.reverse();
        }
        for (t, path) in pair {
            settle(t, Duration::from_secs(30)).await;
            let Ok(addr) = t.addr("http") else { continue };
            let c0 = cpu(t.pid);
            match crate::http::request_rate(addr, path, suite::HTTP_CONNECTIONS, count, 16).await {
                Ok(rate) => {
                    let us = cpu(t.pid).saturating_sub(c0).as_secs_f64() * 1e6 / count as f64;
                    println!(
                        "{:<12} http single POST, no subscriber: {rate:.0} requests/s, {us:.1} µs CPU/request",
                        t.name
                    );
                    if t.name == "switchyard" {
                        raw_runs.push((rate, us));
                    } else {
                        echo_runs.push((rate, us));
                    }
                }
                Err(e) => out.errors.push(format!("{}: {e:#}", t.name)),
            }
        }
    }
    let med = |v: &[(f64, f64)]| {
        (
            median(v.iter().map(|x| x.0).collect()),
            median(v.iter().map(|x| x.1).collect()),
        )
    };
    out.echo = med(&echo_runs);
    out.no_subscriber = med(&raw_runs);
    out
}

/// Medians of a broker's runs of one case.
#[derive(Debug, Clone, Default)]
struct Summary {
    rate: f64,
    latency: Option<Latency>,
    confirm: Option<Latency>,
    cpu_per_m: f64,
    gen_per_m: f64,
    complete: bool,
    store: Option<StoreFigures>,
    runs: usize,
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v.get(n / 2).copied().unwrap_or(0.0),
        n => {
            (v.get(n / 2 - 1).copied().unwrap_or(0.0) + v.get(n / 2).copied().unwrap_or(0.0)) / 2.0
        }
    }
}

fn median_latency(v: Vec<&Latency>) -> Option<Latency> {
    if v.is_empty() {
        return None;
    }
    let m = |f: fn(&Latency) -> f64| median(v.iter().map(|l| f(l)).collect());
    Some(Latency {
        p50: m(|l| l.p50),
        p90: m(|l| l.p90),
        p99: m(|l| l.p99),
        p999: m(|l| l.p999),
        max: m(|l| l.max),
        samples: v.iter().map(|l| l.samples).sum(),
    })
}

fn summarize(runs: &[Report]) -> Summary {
    let stores: Vec<&StoreFigures> = runs.iter().filter_map(|r| r.store.as_ref()).collect();
    Summary {
        rate: median(runs.iter().map(|r| r.rate).collect()),
        latency: median_latency(runs.iter().filter_map(|r| r.latency_us.as_ref()).collect()),
        confirm: median_latency(runs.iter().filter_map(|r| r.confirm_us.as_ref()).collect()),
        cpu_per_m: median(runs.iter().map(|r| r.broker_cpu_s_per_million).collect()),
        gen_per_m: median(
            runs.iter()
                .filter(|r| r.delivered > 0)
                .map(|r| r.generator_cpu_s * 1e6 / r.delivered as f64)
                .collect(),
        ),
        complete: runs.iter().all(|r| r.delivered >= r.expected),
        store: (!stores.is_empty()).then(|| StoreFigures {
            fsyncs: median(stores.iter().map(|s| s.fsyncs as f64).collect()) as u64,
            fsyncs_per_s: median(stores.iter().map(|s| s.fsyncs_per_s).collect()),
            batches: median(stores.iter().map(|s| s.batches as f64).collect()) as u64,
            records: median(stores.iter().map(|s| s.records as f64).collect()) as u64,
            records_per_batch: median(stores.iter().map(|s| s.records_per_batch).collect()),
        }),
        runs: runs.len(),
    }
}

/// Messages a broker gets in a throughput case, relative to the case's
/// count (chosen for Switchyard): slower brokers get fewer, so that every
/// run takes a similar time.
fn count_scale(section: &str, broker: &str) -> f64 {
    match (section, broker) {
        (_, "switchyard") | (_, NATS_SERVER) => 1.0,
        (_, MOSQUITTO) => 0.5,
        ("MQTT", RABBITMQ) => 0.05,
        ("STOMP", RABBITMQ) => 0.04,
        (_, RABBITMQ) => 0.05,
        _ => 1.0,
    }
}

/// Waits until the broker is idle (under 5% of a core over 200 ms), at most
/// `limit`: a run must not pay for work an earlier run left behind.
/// Returns how long it waited.
async fn settle(target: &Target, limit: Duration) -> Duration {
    let start = Instant::now();
    let Some(pid) = target.pid else {
        return Duration::ZERO;
    };
    loop {
        let a = crate::procstat::cpu_time(pid).unwrap_or_default();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let b = crate::procstat::cpu_time(pid).unwrap_or_default();
        if b.saturating_sub(a) <= Duration::from_millis(10) || start.elapsed() >= limit {
            return start.elapsed();
        }
    }
}

/// Switchyard's store counters from its `/metrics`.
async fn store_counters(target: &Target) -> Option<(u64, u64, u64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = target.addrs.get("http")?;
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut body))
        .await
        .ok()?
        .ok()?;
    let get = |name: &str| -> Option<u64> {
        body.lines()
            .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b' '))?
            .split_whitespace()
            .nth(1)?
            .parse::<f64>()
            .ok()
            .map(|v| v as u64)
    };
    Some((
        get("switchyard_store_fsyncs_total")?,
        get("switchyard_store_batches_total")?,
        get("switchyard_store_records_appended_total")?,
    ))
}

/// The disk's raw rate of 4 KiB appends each followed by `fdatasync`, in
/// `dir`, for about `seconds`: (syncs per second, p50 µs).
pub fn disk_fdatasync(dir: &Path, seconds: f64) -> Result<(f64, f64)> {
    use std::io::Write;
    let path = dir.join(format!("fdatasync-probe-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let block = vec![0xa5u8; 4096];
    let start = Instant::now();
    let mut times = Vec::new();
    while start.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let rate = times.len() as f64 / start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok((rate, median(times)))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or_default().trim().to_owned()
        })
        .unwrap_or_default()
}

/// CPU, cores, memory, kernel, disk.
pub fn machine() -> Vec<(String, String)> {
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map_or("unknown".into(), |k| {
            format!("{:.1} GiB", k / 1024.0 / 1024.0)
        });
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
    let tmp = std::env::temp_dir();
    let mounts = read("/proc/mounts");
    // The mount that holds the temporary directory (the brokers' data).
    let mount = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((*f.first()?, *f.get(1)?, *f.get(2)?))
        })
        .filter(|(_, mp, _)| tmp.starts_with(mp))
        .max_by_key(|(_, mp, _)| mp.len());
    let disk = match mount {
        Some((dev, mp, fs)) => {
            let name = dev.trim_start_matches("/dev/");
            let base: String = name.chars().take_while(|c| !c.is_ascii_digit()).collect();
            let rot = read(&format!("/sys/block/{base}/queue/rotational"));
            let kind = match rot.trim() {
                "0" => "non-rotational",
                "1" => "rotational",
                _ => "unknown type",
            };
            format!("{dev} ({fs}, {kind}) mounted at {mp}")
        }
        None => "unknown".into(),
    };
    vec![
        ("CPU".into(), model),
        ("cores".into(), cores.to_string()),
        ("memory".into(), mem),
        ("kernel".into(), kernel),
        ("disk (data directories)".into(), disk),
    ]
}

pub fn load_average() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn installed(bin: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {bin} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
        || Path::new(&format!("/usr/sbin/{bin}")).exists()
}

/// Installs missing peers with apt-get (Debian packages).
pub fn install_peers(need: &[&str]) -> Result<()> {
    let mut missing = Vec::new();
    for (peer, bin, pkg) in [
        (NATS_SERVER, "nats-server", "nats-server"),
        (MOSQUITTO, "mosquitto", "mosquitto"),
        (RABBITMQ, "rabbitmq-server", "rabbitmq-server"),
    ] {
        if need.contains(&peer) && !installed(bin) {
            missing.push(pkg);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing {}", missing.join(" "));
    let ok = std::process::Command::new("sh")
        .args([
            "-c",
            &format!(
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {}",
                missing.join(" ")
            ),
        ])
        .status()?
        .success();
    if !ok {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}

/// `run` arguments that reproduce `case` against `target` in a child process.
fn split_args(case: &Case, s: &scenario::Scenario, target: &Target) -> Result<Vec<String>> {
    let (shape, p, c) = match s.shape {
        Shape::PubSub {
            publishers,
            subscribers,
        } => ("pubsub", publishers, subscribers),
        Shape::Queue {
            publishers,
            consumers,
        } => ("queue", publishers, consumers),
        Shape::ReqRep { .. } => bail!("request/reply is not split"),
    };
    Ok(vec![
        "--broker".into(),
        target.name.clone(),
        "--addr".into(),
        target.addr(case.pub_driver.protocol())?.to_string(),
        "--driver".into(),
        case.pub_driver.spec(),
        "--shape".into(),
        shape.into(),
        "--publishers".into(),
        p.to_string(),
        "--subscribers".into(),
        c.to_string(),
        "--size".into(),
        s.size.to_string(),
        "--count".into(),
        s.count.to_string(),
    ])
}

/// Runs of a 2 000 msg/s case per broker: at least 5. Its p99 comes from
/// 4 000 samples, where a single scheduling stall of the shared machine
/// moves it by milliseconds; the median of more runs is the steadier figure
/// (the runs are short, so this costs seconds).
fn fixed_rate_reps(reps: usize) -> usize {
    reps.max(5)
}

/// A fixed-rate run is repeated when the hypervisor stole at least this
/// share of the machine's CPU time during it (`/proc/stat`): 0.5 % of a
/// 2 s run on 2 CPUs is 20 ms in which a virtual CPU could not run at all,
/// which puts stalls of milliseconds into the p99 of 4 000 samples whatever
/// the broker does. Every broker gets the same rule; the report lists the
/// repeated runs.
const QUIET_STEAL: f64 = 0.5;

/// How many times one fixed-rate repetition is tried at most before its
/// last run counts, stolen or not.
const STEAL_ATTEMPTS: usize = 4;

#[allow(clippy::too_many_arguments)]
async fn run_case(
    switchyard: &Path,
    case: &Case,
    targets: &[&Target],
    reps: usize,
    results: &[&CaseResult],
    json: bool,
    lat_seconds: f64,
) -> CaseResult {
    let mut out = CaseResult {
        case: case.clone(),
        runs: HashMap::new(),
        stolen: HashMap::new(),
        conns: HashMap::new(),
        offered: None,
        split: HashMap::new(),
        errors: Vec::new(),
        settles: Vec::new(),
        echo_rate: None,
        disk: None,
    };
    if case.persistent {
        let dir = std::env::temp_dir();
        out.disk = tokio::task::spawn_blocking(move || disk_fdatasync(&dir, 1.0))
            .await
            .ok()
            .and_then(|r| r.ok());
    }
    let mut scenario = case.scenario.clone();
    match &case.kind {
        Kind::FixedRate => out.offered = scenario.rate,
        Kind::RelativeRate { of, fraction } => {
            let reference = results
                .iter()
                .find(|r| r.case.section == case.section && r.case.scenario.name == *of);
            let rates: Vec<f64> = targets
                .iter()
                .filter_map(|t| reference.and_then(|r| r.runs.get(&t.name)))
                .map(|runs| summarize(runs).rate)
                .filter(|r| *r > 0.0)
                .collect();
            if rates.len() < targets.len() {
                out.errors
                    .push(format!("no measured maximum from '{of}' for every broker"));
                return out;
            }
            let rate = rates.iter().copied().fold(f64::INFINITY, f64::min) * fraction;
            scenario.rate = Some(rate);
            scenario.count = (rate * lat_seconds).max(100.0) as u64;
            out.offered = Some(rate);
        }
        _ => {}
    }
    // Idle connections are measured once per broker, on a broker that has
    // carried no traffic yet (a second round would reuse memory the first
    // one freed, and show less than a connection costs).
    let reps = match case.kind {
        Kind::Conns { .. } => 1,
        Kind::FixedRate => fixed_rate_reps(reps),
        _ => reps,
    };
    for rep in 0..reps {
        // Alternate who goes first.
        let n = targets.len();
        for k in 0..n {
            let Some(t) = targets.get((k + rep) % n) else {
                continue;
            };
            if let Kind::Conns { n } = case.kind {
                // A fresh broker where starting one is cheap: memory freed
                // by an earlier measurement would be reused and hide what
                // connections cost. (RabbitMQ is measured on the running
                // node; its later sections can only come out lower.)
                let fresh = match t.name.as_str() {
                    "switchyard" => Some(brokers::start_switchyard(switchyard).await),
                    NATS_SERVER => Some(brokers::start_nats_server().await),
                    MOSQUITTO => Some(brokers::start_mosquitto().await),
                    _ => None,
                };
                let fresh = match fresh.transpose() {
                    Ok(f) => f,
                    Err(e) => {
                        out.errors.push(format!("{}: {e:#}", t.name));
                        continue;
                    }
                };
                let on = fresh.as_ref().map_or(*t, |f| &f.target);
                let measured = scenario::conns(on, case.sub_driver.clone(), n, 1, 64).await;
                drop(fresh);
                match measured {
                    Ok(r) => {
                        println!(
                            "{:<12} {:<10} {} connections: {:.2} KiB each, {:.0} handshakes/s",
                            r.broker,
                            r.protocol,
                            r.connections,
                            r.kib_per_connection,
                            r.accept_per_s
                        );
                        if json {
                            println!("{}", serde_json::to_string(&r).unwrap_or_default());
                        }
                        out.conns.entry(t.name.clone()).or_default().push(r);
                    }
                    Err(e) => out.errors.push(format!("{}: {e:#}", t.name)),
                }
                continue;
            }
            let waited = settle(t, Duration::from_secs(30)).await;
            if waited >= Duration::from_secs(1) {
                println!(
                    "{}: waited {:.1} s for the broker to go idle",
                    t.name,
                    waited.as_secs_f64()
                );
                out.settles.push((t.name.clone(), waited));
            }
            let mut s = scenario.clone();
            if matches!(case.kind, Kind::Throughput) {
                let k = match case.peer_count_scale {
                    Some(k) if t.name != "switchyard" => k,
                    _ => count_scale(case.section, &t.name),
                };
                s.count = ((s.count as f64 * k) as u64).max(1000);
            }
            let before = if case.persistent {
                store_counters(t).await
            } else {
                None
            };
            let mut attempt = 1;
            let r = loop {
                let mut steal = crate::procstat::steal_ticks();
                let mut r =
                    scenario::run(&s, t, case.pub_driver.as_ref(), case.sub_driver.as_ref()).await;
                if let Err(e) = &r {
                    // One retry: a shared machine has its moments.
                    eprintln!("{} on {}: {e:#}; retrying once", s.name, t.name);
                    out.errors.push(format!("{} (retried): {e:#}", t.name));
                    steal = crate::procstat::steal_ticks();
                    r = scenario::run(&s, t, case.pub_driver.as_ref(), case.sub_driver.as_ref())
                        .await;
                }
                if let Ok(r) = &mut r {
                    r.steal_pct = steal
                        .zip(crate::procstat::steal_ticks())
                        .and_then(|(b, a)| crate::procstat::steal_percent(b, a));
                }
                match &r {
                    Ok(run)
                        if matches!(case.kind, Kind::FixedRate)
                            && attempt < STEAL_ATTEMPTS
                            && run.steal_pct.is_some_and(|st| st >= QUIET_STEAL) =>
                    {
                        println!(
                            "{}: {:.1} % of the CPU time stolen by the hypervisor during the run; repeating it",
                            t.name,
                            run.steal_pct.unwrap_or_default()
                        );
                        out.stolen
                            .entry(t.name.clone())
                            .or_default()
                            .push(run.clone());
                        attempt += 1;
                        settle(t, Duration::from_secs(30)).await;
                    }
                    _ => break r,
                }
            };
            match r {
                Ok(mut r) => {
                    if let (Some(b), Some(a)) = (before, store_counters(t).await) {
                        let fsyncs = a.0.saturating_sub(b.0);
                        let batches = a.1.saturating_sub(b.1);
                        let records = a.2.saturating_sub(b.2);
                        r.store = Some(StoreFigures {
                            fsyncs,
                            fsyncs_per_s: if r.seconds > 0.0 {
                                fsyncs as f64 / r.seconds
                            } else {
                                0.0
                            },
                            batches,
                            records,
                            records_per_batch: if batches > 0 {
                                records as f64 / batches as f64
                            } else {
                                0.0
                            },
                        });
                    }
                    println!("{}", r.table_row());
                    if json {
                        println!("{}", serde_json::to_string(&r).unwrap_or_default());
                    }
                    out.runs.entry(t.name.clone()).or_default().push(r);
                }
                Err(e) => {
                    eprintln!("{} on {}: {e:#}", s.name, t.name);
                    out.errors.push(format!("{}: {e:#}", t.name));
                }
            }
        }
    }
    if case.split_check
        && let Ok(exe) = std::env::current_exe()
    {
        // Switchyard and the first peer, so that the effect of a second
        // generator process is seen on both; medians of `reps` runs.
        let both: Vec<&Target> = targets.iter().take(2).copied().collect();
        for rep in 0..reps {
            for k in 0..both.len() {
                let Some(t) = both.get((k + rep) % both.len()) else {
                    continue;
                };
                let mut s = scenario.clone();
                s.count = ((s.count as f64 * count_scale(case.section, &t.name)) as u64).max(1000);
                settle(t, Duration::from_secs(30)).await;
                let r = match split_args(case, &s, t) {
                    Ok(args) => scenario::run_split(&s, t, &exe, &args).await,
                    Err(e) => Err(e),
                };
                match r {
                    Ok(r) => {
                        println!("{}", r.table_row());
                        out.split.entry(t.name.clone()).or_default().push(r);
                    }
                    Err(e) => out.errors.push(format!("split run on {}: {e:#}", t.name)),
                }
            }
        }
    }
    out
}

/// Runs the comparison; returns the Markdown report.
pub async fn compare(opts: &Options) -> Result<String> {
    if !opts.switchyard.exists() {
        bail!(
            "{} not found: cargo build --release -p switchyard",
            opts.switchyard.display()
        );
    }
    let started = Instant::now();
    let load = load_average();
    // The idle-connection cases open thousands of sockets on both ends;
    // the brokers started here inherit the limit.
    crate::scale::raise_nofile(4 * suite::MQTT_IDLE_CONNECTIONS as u64 + 4096);
    // Counts chosen so that the whole comparison (3 repetitions) stays
    // under 20 minutes on a 2-core machine.
    let (scale, lat_seconds, conns) = if opts.quick {
        (0.1, 1.0, 200)
    } else {
        (0.5, 2.0, 2000)
    };
    let mut cases = Vec::new();
    for s in &opts.sections {
        cases.extend(match s.as_str() {
            "nats" => suite::nats(scale, lat_seconds, conns),
            "mqtt" => suite::mqtt(
                scale,
                lat_seconds,
                if opts.quick {
                    conns
                } else {
                    conns.max(suite::MQTT_IDLE_CONNECTIONS)
                },
            ),
            "amqp" => suite::amqp(scale, lat_seconds, conns),
            "stomp" => suite::stomp(scale, lat_seconds, conns),
            "http" => suite::http(scale),
            "cross" => suite::cross(scale),
            other => bail!("unknown section {other} (nats, mqtt, amqp, stomp, http, cross)"),
        });
    }
    let mut need: Vec<&'static str> = cases.iter().flat_map(|c| c.peers.clone()).collect();
    need.sort_unstable();
    need.dedup();
    install_peers(&need)?;

    let tmp = std::env::temp_dir();
    let (disk_rate, disk_p50) = disk_fdatasync(&tmp, 2.0)?;
    println!("disk: {disk_rate:.0} fdatasync/s of 4 KiB appends (p50 {disk_p50:.0} µs)");

    let sy = brokers::start_switchyard(&opts.switchyard).await?;
    let mut peers: HashMap<&'static str, BrokerProc> = HashMap::new();
    for p in &need {
        let proc = match *p {
            NATS_SERVER => brokers::start_nats_server().await,
            MOSQUITTO => brokers::start_mosquitto().await,
            RABBITMQ => brokers::start_rabbitmq().await,
            _ => continue,
        };
        match proc {
            Ok(b) => {
                peers.insert(p, b);
            }
            Err(e) => eprintln!("{p} did not start: {e:#}"),
        }
    }
    println!("{}", Report::table_header());
    // Idle-connection cases first, on brokers that have carried no traffic
    // yet: an allocator that keeps memory freed by earlier runs would
    // otherwise hide what new connections cost.
    let mut order: Vec<usize> = (0..cases.len()).collect();
    order.sort_by_key(|&i| !matches!(cases.get(i).map(|c| &c.kind), Some(Kind::Conns { .. })));
    // The HTTP reference (echo endpoint, Switchyard without a subscriber)
    // runs right after the last HTTP case, so that all HTTP figures come
    // from the same minutes of the run.
    let last_http = order
        .iter()
        .rev()
        .find(|&&i| cases.get(i).is_some_and(|c| c.section == "HTTP"))
        .copied();
    let mut http_ref = None;
    let mut done: Vec<(usize, CaseResult)> = Vec::new();
    for i in order {
        let Some(case) = cases.get(i) else { continue };
        let mut targets: Vec<&Target> = vec![&sy.target];
        let mut missing = Vec::new();
        for p in &case.peers {
            match peers.get(p) {
                Some(b) => targets.push(&b.target),
                None => missing.push(*p),
            }
        }
        let so_far: Vec<&CaseResult> = done.iter().map(|(_, r)| r).collect();
        let mut r = run_case(
            &opts.switchyard,
            case,
            &targets,
            opts.reps,
            &so_far,
            opts.json,
            lat_seconds,
        )
        .await;
        for m in missing {
            r.errors.push(format!("{m} is not running"));
        }
        done.push((i, r));
        if Some(i) == last_http {
            let count = cases
                .iter()
                .find(|c| c.section == "HTTP")
                .map_or(1000, |c| c.scenario.count);
            http_ref = Some(http_reference(&sy.target, count, opts.reps).await);
        }
    }
    done.sort_by_key(|(i, _)| *i);
    let mut results: Vec<CaseResult> = done.into_iter().map(|(_, r)| r).collect();
    if let Some(h) = &http_ref {
        for r in results.iter_mut().filter(|r| r.case.section == "HTTP") {
            r.echo_rate = (h.echo.0 > 0.0).then_some(h.echo.0);
        }
    }
    let versions = versions(&opts.switchyard, &peers);
    drop(peers);
    drop(sy);
    let elapsed = started.elapsed();
    let doc = markdown(
        opts,
        &results,
        &load,
        (disk_rate, disk_p50),
        &versions,
        elapsed,
        lat_seconds,
        http_ref.as_ref(),
    );
    if let Some(path) = &opts.write {
        // Keep the criterion section (bench/micro.sh) of the file it replaces.
        let old = std::fs::read_to_string(path).unwrap_or_default();
        let doc = match crate::micro::extract(&old) {
            Some(section) => crate::micro::splice(&doc, section),
            None => doc.clone(),
        };
        std::fs::write(path, &doc).with_context(|| format!("write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(doc)
}

fn versions(bin: &Path, peers: &HashMap<&'static str, BrokerProc>) -> Vec<(String, String)> {
    let mut v = vec![(
        "switchyard".to_owned(),
        format!(
            "{} (`{}`, git {})",
            command_line(&bin.display().to_string(), &["--version"]),
            bin.display(),
            command_line("git", &["rev-parse", "--short", "HEAD"])
        ),
    )];
    if peers.contains_key(NATS_SERVER) {
        v.push((
            NATS_SERVER.into(),
            command_line("nats-server", &["--version"]),
        ));
    }
    if peers.contains_key(MOSQUITTO) {
        v.push((
            MOSQUITTO.into(),
            command_line(
                "dpkg-query",
                &["-W", "-f", "mosquitto ${Version}", "mosquitto"],
            ),
        ));
    }
    if peers.contains_key(RABBITMQ) {
        v.push((
            RABBITMQ.into(),
            command_line(
                "dpkg-query",
                &["-W", "-f", "rabbitmq-server ${Version}", "rabbitmq-server"],
            ) + &format!(
                " on Erlang/OTP {}",
                command_line("dpkg-query", &["-W", "-f", "${Version}", "erlang-base"])
            ),
        ));
    }
    v
}

/// Switchyard, then the peers in name order.
fn switchyard_first<'a>(names: impl Iterator<Item = &'a String>) -> Vec<&'a String> {
    let mut names: Vec<&String> = names.collect();
    names.sort_by_key(|n| (n.as_str() != "switchyard", n.as_str()));
    names
}

/// How a broker is named in the report.
fn broker_title(name: &str) -> &'static str {
    if name == "switchyard" {
        "Switchyard"
    } else {
        peer_title(name)
    }
}

fn peer_title(p: &str) -> &'static str {
    match p {
        NATS_SERVER => "nats-server",
        MOSQUITTO => "Mosquitto",
        RABBITMQ => "RabbitMQ",
        _ => "peer",
    }
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

fn fmt_lat(l: &Option<Latency>) -> String {
    match l {
        Some(l) => format!("{} / {} / {}", fmt_us(l.p50), fmt_us(l.p99), fmt_us(l.p999)),
        None => "–".into(),
    }
}

/// Met / NOT met for one goal of a case against `peer`.
fn verdict(goal: Goal, r: &CaseResult, peer: Option<&str>) -> Option<bool> {
    let sy = r.runs.get("switchyard").map(|v| summarize(v));
    let other = peer.and_then(|p| r.runs.get(p)).map(|v| summarize(v));
    Some(match goal {
        Goal::RateRatio(x) => {
            let (a, b) = (sy?, other?);
            a.complete && b.rate > 0.0 && a.rate / b.rate >= x
        }
        Goal::P99Ratio(x) => {
            let (a, b) = (sy?.latency?, other?.latency?);
            a.p99 <= x * b.p99
        }
        Goal::P99Under(us) => sy?.latency?.p99 < us,
        Goal::ConfirmP99Under(us) => sy?.confirm?.p99 < us,
        Goal::RssPerConnUnder(k) => {
            let c = r.conns.get("switchyard")?;
            median(c.iter().map(|c| c.kib_per_connection).collect()) <= k
        }
        Goal::EchoRatio(x) => {
            let (a, echo) = (sy?, r.echo_rate?);
            a.complete && a.rate / echo >= x
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn markdown(
    opts: &Options,
    results: &[CaseResult],
    load: &str,
    disk: (f64, f64),
    versions: &[(String, String)],
    elapsed: Duration,
    lat_seconds: f64,
    http_ref: Option<&HttpReference>,
) -> String {
    let mut d = String::new();
    let _ = writeln!(
        d,
        "# Benchmarks: Switchyard beside the brokers it replaces\n"
    );
    let _ = writeln!(
        d,
        "Generated by `{}` in one run ({:.1} minutes). Every scenario ran {} times per broker \
         (the fixed 2 000 msg/s latency rows {} times), alternating which broker went first; \
         the figures are medians. Do not edit by hand: run the command again.\n",
        opts.command,
        elapsed.as_secs_f64() / 60.0,
        opts.reps,
        fixed_rate_reps(opts.reps)
    );
    let _ = writeln!(d, "## Machine\n");
    let _ = writeln!(d, "| | |\n| --- | --- |");
    for (k, v) in machine() {
        let _ = writeln!(d, "| {k} | {v} |");
    }
    let _ = writeln!(
        d,
        "| load average at the start (1, 5, 15 min) | {load} (the machine is shared) |"
    );
    let _ = writeln!(
        d,
        "| disk: 4 KiB append + `fdatasync` | {:.0} /s, p50 {:.0} µs (measured at the start of this run) |",
        disk.0, disk.1
    );
    for (k, v) in versions {
        let _ = writeln!(d, "| {k} | {v} |");
    }
    let _ = writeln!(d);
    let _ = writeln!(
        d,
        "## How to read this\n\n\
         * The load generator (`crates/bench`, `switchyard-bench`) has lean drivers per protocol: \
         frames are encoded by hand into one large buffer and written in one system call, and \
         deliveries are counted without building message objects, so that the broker is \
         measured, not the client library. The generator runs on the same 2 cores as the broker.\n\
         * **msg/s** is deliveries per second over all subscribers (a 1→10 fan-out of N messages \
         is 10·N deliveries), from the first publish to the last delivery.\n\
         * **latency** is publish → delivery (the send time travels in the payload), as p50 / p99 / p99.9. \
         Under saturation it mostly measures queueing; the fixed-rate rows (2 000 msg/s, and half \
         the lower of the two brokers' measured 1→1 maxima, offered to both) are the meaningful ones. \
         Fixed-rate runs last {lat_seconds} s; one during which the hypervisor stole CPU time is \
         repeated (see \"The fixed-rate latency runs one by one\").\n\
         * **CPU µs/msg** is the broker's CPU time (user + system, `/proc/PID/stat`) per delivery; \
         it is steadier than throughput on a shared machine. **gen µs/msg** is the generator's.\n\
         * Slower brokers get proportionally fewer messages per run so that every run lasts about \
         as long; rates are comparable, totals are not.\n\
         * Peers run with their Debian defaults except: Mosquitto `max_inflight_messages 1000` and \
         `max_queued_messages 0` (its defaults, 20 and 1000, throttle and then drop QoS 1 \
         messages; Switchyard's in-flight window is 1024), `persistence true` (Mosquitto writes a \
         snapshot at shutdown or every 30 min, not per message); RabbitMQ with the STOMP and MQTT \
         plugins, a private node on loopback. Switchyard runs with its defaults except the per-IP \
         connection limits (`max_connections_per_ip`, `connection_rate_per_ip`), lifted because \
         every bench connection comes from loopback; the peers have no such limits by default.\n"
    );

    // Targets summary.
    let _ = writeln!(d, "## Targets (issues 3, 4, 5, 6, 7, 8)\n");
    let _ = writeln!(
        d,
        "| section | scenario | target | Switchyard | peer | result |"
    );
    let _ = writeln!(d, "| --- | --- | --- | ---: | ---: | --- |");
    for r in results {
        let peer = r.case.peers.first().copied();
        for g in &r.case.goals {
            let (mine, theirs) = goal_figures(*g, r, peer);
            let res = match verdict(*g, r, peer) {
                Some(true) => "met",
                Some(false) => "**NOT met**",
                None => "no data",
            };
            let _ = writeln!(
                d,
                "| {} | {} | {} | {} | {} | {} |",
                r.case.section,
                r.case.scenario.name,
                g.describe(peer.map(peer_title).unwrap_or("peer")),
                mine,
                theirs,
                res
            );
        }
    }
    let _ = writeln!(d);

    let mut sections: Vec<&'static str> = Vec::new();
    for r in results {
        if !sections.contains(&r.case.section) {
            sections.push(r.case.section);
        }
    }
    for section in sections {
        let rows: Vec<&CaseResult> = results
            .iter()
            .filter(|r| r.case.section == section)
            .collect();
        let mut peers: Vec<&'static str> = Vec::new();
        for r in &rows {
            for p in &r.case.peers {
                if !peers.contains(p) {
                    peers.push(p);
                }
            }
        }
        let _ = writeln!(d, "## {section}\n");
        if peers.is_empty() {
            throughput_table(&mut d, &rows, None);
        }
        for p in &peers {
            let mine: Vec<&CaseResult> = rows
                .iter()
                .copied()
                .filter(|r| r.case.peers.contains(p))
                .collect();
            let _ = writeln!(d, "### Switchyard vs {}\n", peer_title(p));
            throughput_table(&mut d, &mine, Some(p));
        }
        if section == "HTTP"
            && let Some(h) = http_ref
        {
            http_table(&mut d, &rows, h);
        }
        persistent_table(&mut d, &rows, disk);
        conns_table(&mut d, &rows);
        let errors: Vec<String> = rows
            .iter()
            .flat_map(|r| {
                r.errors
                    .iter()
                    .map(move |e| format!("* {}: {e}", r.case.scenario.name))
            })
            .collect();
        if !errors.is_empty() {
            let _ = writeln!(d, "Runs that failed:\n\n{}\n", errors.join("\n"));
        }
    }
    settle_table(&mut d, results);
    fixed_rate_table(&mut d, results);
    generator_table(&mut d, results);
    let _ = writeln!(
        d,
        "## Not compared\n\n\
         * Request/reply is measured for NATS (the only protocol whose issue asks for it). \
         Durable (persistent) runs are for AMQP, MQTT and STOMP; core NATS has no persistence \
         (JetStream is out of scope).\n\
         * Cross-protocol runs are Switchyard's alone: no peer bridges these protocols on one address space.\n\
         * HTTP has no peer broker: its publish rate is judged against a plain axum endpoint \
         answering every POST with its body (the same HTTP stack without the broker), in the \
         HTTP section.\n\
         * Scale checks (50 000 idle MQTT connections, 10 000 NATS connections, a fan-out to \
         10 000 MQTT subscribers) run outside this comparison: `switchyard-bench scale` \
         (figures in `docs/benchmarks-scale.md` when it has been run).\n"
    );
    d
}

fn goal_figures(g: Goal, r: &CaseResult, peer: Option<&str>) -> (String, String) {
    let s = |name: &str| r.runs.get(name).map(|v| summarize(v));
    let sy = s("switchyard");
    let other = peer.and_then(s);
    match g {
        Goal::RateRatio(_) => (
            sy.map_or("–".into(), |x| fmt_rate(x.rate)),
            other.map_or("–".into(), |x| fmt_rate(x.rate)),
        ),
        Goal::P99Ratio(_) | Goal::P99Under(_) => (
            sy.and_then(|x| x.latency)
                .map_or("–".into(), |l| fmt_us(l.p99)),
            other
                .and_then(|x| x.latency)
                .map_or("–".into(), |l| fmt_us(l.p99)),
        ),
        Goal::ConfirmP99Under(_) => (
            sy.and_then(|x| x.confirm)
                .map_or("–".into(), |l| fmt_us(l.p99)),
            other
                .and_then(|x| x.confirm)
                .map_or("–".into(), |l| fmt_us(l.p99)),
        ),
        Goal::EchoRatio(_) => (
            sy.map_or("–".into(), |x| fmt_rate(x.rate)),
            r.echo_rate
                .map_or("–".into(), |e| format!("{} (axum echo)", fmt_rate(e))),
        ),
        Goal::RssPerConnUnder(_) => {
            let k = |name: &str| {
                r.conns.get(name).map_or("–".into(), |c| {
                    format!(
                        "{:.2} KiB",
                        median(c.iter().map(|c| c.kib_per_connection).collect())
                    )
                })
            };
            (k("switchyard"), peer.map_or("–".into(), k))
        }
    }
}

fn throughput_table(d: &mut String, rows: &[&CaseResult], peer: Option<&str>) {
    let rows: Vec<&&CaseResult> = rows
        .iter()
        .filter(|r| !matches!(r.case.kind, Kind::Conns { .. }))
        .collect();
    if rows.is_empty() {
        return;
    }
    match peer {
        Some(p) => {
            let t = peer_title(p);
            let _ = writeln!(
                d,
                "| scenario | mode | Switchyard msg/s | {t} msg/s | ratio | Switchyard latency p50 / p99 / p99.9 | {t} latency | CPU µs/msg Switchyard / {t} | gen µs/msg | target |"
            );
            let _ = writeln!(
                d,
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
            );
        }
        None => {
            let _ = writeln!(
                d,
                "| scenario | mode | Switchyard msg/s | latency p50 / p99 / p99.9 | CPU µs/msg | gen µs/msg |"
            );
            let _ = writeln!(d, "| --- | --- | ---: | ---: | ---: | ---: |");
        }
    }
    for r in rows {
        let sy = r
            .runs
            .get("switchyard")
            .map(|v| summarize(v))
            .unwrap_or_default();
        let name = match r.offered {
            Some(rate) if matches!(r.case.kind, Kind::RelativeRate { .. }) => {
                format!("{} ({} msg/s)", r.case.scenario.name, fmt_rate(rate))
            }
            _ => r.case.scenario.name.clone(),
        };
        let incomplete = |s: &Summary| {
            if s.runs > 0 && !s.complete {
                " (incomplete)"
            } else {
                ""
            }
        };
        let mode = match r.case.sub_driver.mode() {
            m if m.is_empty() => r.case.pub_driver.mode(),
            m => m,
        };
        match peer {
            Some(p) => {
                let o = r.runs.get(p).map(|v| summarize(v)).unwrap_or_default();
                let ratio = if o.rate > 0.0 { sy.rate / o.rate } else { 0.0 };
                let goals: Vec<String> = if r.case.peers.first() == Some(&p) {
                    r.case
                        .goals
                        .iter()
                        .filter(|g| !matches!(g, Goal::RssPerConnUnder(_)))
                        .map(|g| {
                            format!(
                                "{}: {}",
                                g.describe(peer_title(p)),
                                match verdict(*g, r, Some(p)) {
                                    Some(true) => "met",
                                    Some(false) => "**NOT met**",
                                    None => "no data",
                                }
                            )
                        })
                        .collect()
                } else {
                    vec![]
                };
                let _ = writeln!(
                    d,
                    "| {name} | {mode} | {}{} | {}{} | {} | {} | {} | {:.2} / {:.2} | {:.2} / {:.2} | {} |",
                    fmt_rate(sy.rate),
                    incomplete(&sy),
                    fmt_rate(o.rate),
                    incomplete(&o),
                    if ratio > 0.0 {
                        format!("{ratio:.2}×")
                    } else {
                        "–".into()
                    },
                    fmt_lat(&sy.latency),
                    fmt_lat(&o.latency),
                    sy.cpu_per_m,
                    o.cpu_per_m,
                    sy.gen_per_m,
                    o.gen_per_m,
                    goals.join("; ")
                );
            }
            None => {
                let _ = writeln!(
                    d,
                    "| {name} | {mode} | {}{} | {} | {:.2} | {:.2} |",
                    fmt_rate(sy.rate),
                    incomplete(&sy),
                    fmt_lat(&sy.latency),
                    sy.cpu_per_m,
                    sy.gen_per_m
                );
            }
        }
    }
    let _ = writeln!(d);
}

/// The HTTP section's comparison with the axum echo endpoint.
fn http_table(d: &mut String, rows: &[&CaseResult], h: &HttpReference) {
    let (echo, echo_cpu) = h.echo;
    let ratio = |x: f64| {
        if echo > 0.0 {
            format!("{:.2}", x / echo)
        } else {
            "–".into()
        }
    };
    let _ = writeln!(
        d,
        "Against a plain axum endpoint that answers every POST `202` with its body (same \
         axum/hyper/tokio stack, no broker; `switchyard-bench echo-server`), {} keep-alive \
         connections, one request in flight each, 16-byte bodies, {} requests per run, \
         alternating, medians of {} runs. Server CPU is the serving process's (µs per \
         message; per request for the echo endpoint).\n",
        suite::HTTP_CONNECTIONS,
        h.requests,
        rows.first()
            .and_then(|r| r.runs.get("switchyard"))
            .map_or(0, |v| v.len())
    );
    let _ = writeln!(
        d,
        "| what | msg/s (requests/s) | × echo | server CPU µs/msg | target |"
    );
    let _ = writeln!(d, "| --- | ---: | ---: | ---: | --- |");
    let _ = writeln!(
        d,
        "| axum echo endpoint (POST → 202 + body) | {} | 1.00 | {echo_cpu:.1} | |",
        fmt_rate(echo)
    );
    let (raw, raw_cpu) = h.no_subscriber;
    let met = |x: f64| {
        if echo > 0.0 && x / echo >= 0.7 {
            "≥ 0.7× echo: met"
        } else if echo > 0.0 {
            "≥ 0.7× echo: **NOT met**"
        } else {
            "no data"
        }
    };
    let _ = writeln!(
        d,
        "| Switchyard single publish, no subscriber | {} | {} | {raw_cpu:.1} | {} |",
        fmt_rate(raw),
        ratio(raw),
        met(raw)
    );
    for r in rows {
        let Some(sy) = r.runs.get("switchyard").map(|v| summarize(v)) else {
            continue;
        };
        let goal = if r.case.goals.is_empty() {
            ""
        } else {
            met(sy.rate)
        };
        let _ = writeln!(
            d,
            "| Switchyard {} | {} | {} | {:.2} | {goal} |",
            r.case.scenario.name,
            fmt_rate(sy.rate),
            ratio(sy.rate),
            sy.cpu_per_m
        );
    }
    for e in &h.errors {
        let _ = writeln!(d, "\nReference run failed: {e}");
    }
    let _ = writeln!(d);
}

fn persistent_table(d: &mut String, rows: &[&CaseResult], disk: (f64, f64)) {
    let rows: Vec<&&CaseResult> = rows.iter().filter(|r| r.case.persistent).collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        d,
        "Persistent runs: publish → confirm latency, and what Switchyard's store did \
         (`/metrics`: `switchyard_store_fsyncs_total`, `_batches_total`, `_records_appended_total`). \
         The disk's raw rate, measured at the start of this run: {:.0} `fdatasync`/s of 4 KiB \
         appends; the last column measures it again (1 s) just before each case.\n",
        disk.0
    );
    let _ = writeln!(
        d,
        "| scenario | Switchyard confirm p50 / p99 / p99.9 | peer confirm p50 / p99 / p99.9 | fsyncs/s | records per batch | fsyncs in the run | disk's raw fdatasync/s (p50) just before |"
    );
    let _ = writeln!(d, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        let sy = r
            .runs
            .get("switchyard")
            .map(|v| summarize(v))
            .unwrap_or_default();
        let peer = r
            .case
            .peers
            .first()
            .and_then(|p| r.runs.get(*p))
            .map(|v| summarize(v))
            .unwrap_or_default();
        let (fs, rb, n) = sy.store.map_or(("–".into(), "–".into(), "–".into()), |s| {
            (
                format!("{:.0}", s.fsyncs_per_s),
                format!("{:.1}", s.records_per_batch),
                s.fsyncs.to_string(),
            )
        });
        let raw = r.disk.map_or("–".into(), |(rate, p50)| {
            format!("{rate:.0} ({})", fmt_us(p50))
        });
        let _ = writeln!(
            d,
            "| {} | {} | {} | {fs} | {rb} | {n} | {raw} |",
            r.case.scenario.name,
            fmt_lat(&sy.confirm),
            fmt_lat(&peer.confirm)
        );
    }
    let _ = writeln!(d);
}

fn conns_table(d: &mut String, rows: &[&CaseResult]) {
    let rows: Vec<&&CaseResult> = rows
        .iter()
        .filter(|r| matches!(r.case.kind, Kind::Conns { .. }))
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        d,
        "Idle connections (each through the protocol's handshake, 64 at a time), measured once \
         per broker before any other traffic, on a freshly started Switchyard, nats-server or \
         Mosquitto (RabbitMQ: the running node): broker RSS growth (`VmRSS`, 1 s after the last \
         handshake) per connection over all of them, and over the second half only (marginal: \
         without the one-time costs of a fresh process); handshakes per second. MQTT is measured \
         at 10 000 connections, the count its target (issue 4) names. The scale checks \
         (`docs/benchmarks-scale.md`) go further.\n"
    );
    let _ = writeln!(
        d,
        "| broker | connections | KiB per connection | handshakes/s |"
    );
    let _ = writeln!(d, "| --- | ---: | ---: | ---: |");
    for r in rows {
        let names = switchyard_first(r.conns.keys());
        for name in names {
            let Some(c) = r.conns.get(name) else { continue };
            let _ = writeln!(
                d,
                "| {} | {} | {:.2} | {:.2} | {:.0} |",
                broker_title(name),
                c.first().map_or(0, |c| c.connections),
                median(c.iter().map(|c| c.kib_per_connection).collect()),
                median(c.iter().map(|c| c.kib_per_connection_marginal).collect()),
                median(c.iter().map(|c| c.accept_per_s).collect()),
            );
        }
    }
    let _ = writeln!(d);
}

fn settle_table(d: &mut String, results: &[CaseResult]) {
    let _ = writeln!(d, "## Background work left behind\n");
    let _ = writeln!(
        d,
        "Before every run the bench waits until the broker is idle (under 5% of a core over \
         200 ms, at most 30 s), so that no run pays for work an earlier one left behind. Waits \
         of a second or more:\n"
    );
    let rows: Vec<(&CaseResult, &(String, Duration))> = results
        .iter()
        .flat_map(|r| r.settles.iter().map(move |s| (r, s)))
        .collect();
    if rows.is_empty() {
        let _ = writeln!(d, "(none)\n");
        return;
    }
    let _ = writeln!(d, "| before | broker | waited |");
    let _ = writeln!(d, "| --- | --- | ---: |");
    for (r, (name, waited)) in rows {
        let _ = writeln!(
            d,
            "| {} {} | {} | {:.1} s{} |",
            r.case.section,
            r.case.scenario.name,
            broker_title(name),
            waited.as_secs_f64(),
            if waited.as_secs() >= 30 {
                " (still busy)"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(d);
}

/// Every run of the 2 000 msg/s cases, with the machine's hypervisor steal
/// during it: their p99 is where the shared machine shows most.
fn fixed_rate_table(d: &mut String, results: &[CaseResult]) {
    let rows: Vec<&CaseResult> = results
        .iter()
        .filter(|r| matches!(r.case.kind, Kind::FixedRate))
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(d, "## The fixed-rate latency runs one by one\n");
    let _ = writeln!(
        d,
        "p99 of each run in µs, in the order they ran, and in brackets the hypervisor's steal \
         during it (`/proc/stat`: time this virtual machine's CPUs wanted to run but the host ran \
         something else, % of all CPU time). A run with {QUIET_STEAL} % steal or more was \
         repeated, up to {STEAL_ATTEMPTS} tries, the same for every broker: such runs are listed \
         after \"repeated\" and not counted (the last try counts whatever its steal). The tables \
         above show the median of the counted runs.\n"
    );
    let _ = writeln!(
        d,
        "| scenario | broker | p99 per run (steal) | median p99 |"
    );
    let _ = writeln!(d, "| --- | --- | --- | ---: |");
    for r in rows {
        let names = switchyard_first(r.runs.keys());
        for name in names {
            let Some(runs) = r.runs.get(name) else {
                continue;
            };
            let each: Vec<String> = runs
                .iter()
                .map(|run| {
                    let p99 = run
                        .latency_us
                        .as_ref()
                        .map_or("–".into(), |l| format!("{:.0}", l.p99));
                    match run.steal_pct {
                        Some(st) => format!("{p99} ({st:.1} %)"),
                        None => p99,
                    }
                })
                .collect();
            let stolen: Vec<String> = r
                .stolen
                .get(name.as_str())
                .into_iter()
                .flatten()
                .map(|run| {
                    let p99 = run
                        .latency_us
                        .as_ref()
                        .map_or("–".into(), |l| format!("{:.0}", l.p99));
                    format!("{p99} ({:.1} %)", run.steal_pct.unwrap_or_default())
                })
                .collect();
            let each = if stolen.is_empty() {
                each.join(", ")
            } else {
                format!("{}; repeated: {}", each.join(", "), stolen.join(", "))
            };
            let median = summarize(runs)
                .latency
                .map_or("–".into(), |l| fmt_us(l.p99));
            let _ = writeln!(
                d,
                "| {} {} | {} | {each} | {median} |",
                r.case.section,
                r.case.scenario.name,
                broker_title(name),
            );
        }
    }
    let _ = writeln!(d);
}

fn generator_table(d: &mut String, results: &[CaseResult]) {
    let rows: Vec<&CaseResult> = results.iter().filter(|r| !r.split.is_empty()).collect();
    let _ = writeln!(d, "## Is the generator the bottleneck?\n");
    let _ = writeln!(
        d,
        "Beside every row above, **gen µs/msg** is the generator's CPU per delivery and \
         **CPU µs/msg** the broker's: the generator spends a fraction of what the broker spends \
         per message. For the peak scenarios the same run was repeated once per broker with the \
         publishers and the subscribers in **two separate generator processes** \
         (`switchyard-bench run --role pub|sub`), as many times, alternating; medians. If the one-process generator limited a figure, \
         the two-process figure would be clearly higher. On 2 shared cores a second process \
         also takes a larger share of the CPU from the broker (the scheduler shares CPU by \
         thread), so read the two columns together with the broker's CPU per message.\n"
    );
    if rows.is_empty() {
        let _ = writeln!(d, "(No two-process run in this comparison.)\n");
        return;
    }
    let _ = writeln!(
        d,
        "| scenario | broker | one process msg/s | two processes msg/s | change | broker CPU µs/msg (one / two) | generator CPU µs/msg (one / two) |"
    );
    let _ = writeln!(d, "| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        let names = switchyard_first(r.split.keys());
        for name in names {
            let Some(two) = r.split.get(name).map(|v| summarize(v)) else {
                continue;
            };
            let one = r.runs.get(name).map(|v| summarize(v)).unwrap_or_default();
            let change = if one.rate > 0.0 {
                format!("{:+.0}%", (two.rate / one.rate - 1.0) * 100.0)
            } else {
                "–".into()
            };
            let _ = writeln!(
                d,
                "| {} {} | {} | {} | {} | {change} | {:.2} / {:.2} | {:.2} / {:.2} |",
                r.case.section,
                r.case.scenario.name,
                broker_title(name),
                fmt_rate(one.rate),
                fmt_rate(two.rate),
                one.cpu_per_m,
                two.cpu_per_m,
                one.gen_per_m,
                two.gen_per_m
            );
        }
    }
    let _ = writeln!(d);
}
