//! Starting and stopping the brokers under test on free loopback ports.
//! Everything started here is stopped (and its files removed) on drop.

use crate::scenario::Target;
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound and released; a tiny race is accepted).
pub fn free_addr() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// A broker process started by the bench.
#[derive(Debug)]
pub struct BrokerProc {
    pub target: Target,
    child: Child,
    /// The directory of its data, logs and configuration.
    pub dir: PathBuf,
}

impl BrokerProc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn signal(pid: u32, sig: i32, group: bool) {
    let Ok(pid) = i32::try_from(pid) else {
        return;
    };
    let target = if group { -pid } else { pid };
    // SAFETY: kill(2) with a PID (or process group) this bench started.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(target, sig);
    }
}

impl Drop for BrokerProc {
    fn drop(&mut self) {
        // Every broker runs in its own process group (see `spawn`): SIGTERM
        // the group, give it a few seconds, then SIGKILL what is left.
        let pid = self.child.id();
        signal(pid, libc::SIGTERM, true);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        signal(pid, libc::SIGKILL, true);
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Descendants that outlived the leader (they stay in its group).
        signal(pid, libc::SIGKILL, true);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Spawns `cmd` in a new process group, so that the broker and every
/// process it starts can be stopped together, and only those.
fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

/// Processes whose parent is `pid`, recursively, as (pid, command name).
pub fn descendants(pid: u32) -> Vec<(u32, String)> {
    let mut all = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return all;
    };
    let mut parent_of = Vec::new();
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat.get(open + 1..close).unwrap_or_default().to_owned();
        let ppid = stat
            .get(close + 2..)
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0);
        parent_of.push((p, ppid, comm));
    }
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (p, pp, comm) in &parent_of {
            if *pp == parent {
                all.push((*p, comm.clone()));
                frontier.push(*p);
            }
        }
    }
    all
}

fn scratch_dir(name: &str) -> Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "switchyard-bench-{name}-{}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn wait_ready(
    child: &mut Child,
    addrs: &HashMap<&'static str, SocketAddr>,
    what: &str,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for addr in addrs.values() {
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("{what} exited with {status} before listening on {addr}");
            }
            if Instant::now() > deadline {
                bail!("{what} is not listening on {addr}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Starts `switchyard serve` (a release build), every listener on a free port.
pub async fn start_switchyard(bin: &Path) -> Result<BrokerProc> {
    let list = Command::new(bin)
        .arg("protocols")
        .output()
        .with_context(|| format!("run {}", bin.display()))?;
    let dir = scratch_dir("switchyard")?;
    let mut cmd = Command::new(bin);
    // Every bench connection comes from loopback addresses (127.0.0.x), up
    // to 50 000 idle ones in `scale`, thousands at once in the idle-connection
    // runs: the per-IP limits, whose defaults are for production (1000 per
    // address, 200 new per second after a burst of 1000), are lifted here,
    // explicitly, rather than weakened for everyone. The total cap stays.
    cmd.arg("serve")
        .env("SWITCHYARD_LOG__LEVEL", "warn")
        .env("SWITCHYARD_SERVER__DATA_DIR", &dir)
        .env("SWITCHYARD_LIMITS__MAX_CONNECTIONS_PER_IP", "1000000")
        .env("SWITCHYARD_LIMITS__CONNECTION_RATE_PER_IP", "0");
    let mut addrs = HashMap::new();
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let addr = free_addr()?;
        cmd.env(
            format!("SWITCHYARD_LISTENERS__{}__BIND", name.to_uppercase()),
            addr.to_string(),
        );
        let key: &'static str = match name {
            "nats" => "nats",
            "mqtt" => "mqtt",
            "amqp" => "amqp",
            "stomp" => "stomp",
            "http" => "http",
            _ => continue,
        };
        addrs.insert(key, addr);
    }
    let mut child = spawn(&mut cmd).with_context(|| format!("start {}", bin.display()))?;
    wait_ready(&mut child, &addrs, "switchyard").await?;
    let pid = child.id();
    Ok(BrokerProc {
        target: Target {
            name: "switchyard".into(),
            pid: Some(pid),
            addrs,
        },
        child,
        dir,
    })
}

/// Starts `nats-server` (Debian package) on a free port.
pub async fn start_nats_server() -> Result<BrokerProc> {
    let dir = scratch_dir("nats")?;
    let addr = free_addr()?;
    let mut child = spawn(Command::new("nats-server").args([
        "-a",
        "127.0.0.1",
        "-p",
        &addr.port().to_string(),
    ]))
    .context("start nats-server (apt-get install nats-server)")?;
    let addrs = HashMap::from([("nats", addr)]);
    wait_ready(&mut child, &addrs, "nats-server").await?;
    let pid = child.id();
    Ok(BrokerProc {
        target: Target {
            name: "nats-server".into(),
            pid: Some(pid),
            addrs,
        },
        child,
        dir,
    })
}

/// Starts Mosquitto (Debian package) on a free port with a generated
/// configuration: anonymous clients, and the in-flight and queue limits
/// raised to Switchyard's (`max_inflight_messages 1000`, no queue cap), so
/// that QoS 1 runs measure throughput rather than Mosquitto's defaults of 20
/// in flight and 1000 queued (past which it drops messages).
pub async fn start_mosquitto() -> Result<BrokerProc> {
    let dir = scratch_dir("mosquitto")?;
    let addr = free_addr()?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {dir}/\n\
             max_inflight_messages 1000\nmax_queued_messages 0\nlog_dest none\n",
            port = addr.port(),
            dir = dir.display()
        ),
    )?;
    let mut child = spawn(Command::new("mosquitto").arg("-c").arg(&conf))
        .context("start mosquitto (apt-get install mosquitto)")?;
    let addrs = HashMap::from([("mqtt", addr)]);
    wait_ready(&mut child, &addrs, "mosquitto").await?;
    let pid = child.id();
    Ok(BrokerProc {
        target: Target {
            name: "mosquitto".into(),
            pid: Some(pid),
            addrs,
        },
        child,
        dir,
    })
}

/// Starts a private RabbitMQ node (Debian package) with the STOMP and MQTT
/// plugins, everything on free loopback ports and under a temporary
/// directory. Boots in several seconds.
pub async fn start_rabbitmq() -> Result<BrokerProc> {
    let script = Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
    if !script.exists() {
        bail!(
            "{} not found (apt-get install rabbitmq-server)",
            script.display()
        );
    }
    let dir = scratch_dir("rabbitmq")?;
    let amqp = free_addr()?;
    let stomp = free_addr()?;
    let mqtt = free_addr()?;
    let dist = free_addr()?;
    let conf = dir.join("rabbitmq.conf");
    std::fs::write(
        &conf,
        format!(
            "listeners.tcp.default = 127.0.0.1:{}\nstomp.listeners.tcp.1 = 127.0.0.1:{}\n\
             mqtt.listeners.tcp.default = 127.0.0.1:{}\nloopback_users = none\n\
             mqtt.allow_anonymous = true\nlog.console = false\nlog.file.level = warning\n",
            amqp.port(),
            stomp.port(),
            mqtt.port()
        ),
    )?;
    let plugins = dir.join("enabled_plugins");
    std::fs::write(&plugins, "[rabbitmq_stomp,rabbitmq_mqtt].\n")?;
    let node = format!("switchyard-bench-{}@localhost", std::process::id());
    let mut cmd = Command::new(script);
    cmd.current_dir(&dir)
        .env("HOME", &dir)
        .env("RABBITMQ_NODENAME", &node)
        .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
        .env("RABBITMQ_NODE_PORT", amqp.port().to_string())
        .env("RABBITMQ_DIST_PORT", dist.port().to_string())
        .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", dir.join("log"))
        .env("RABBITMQ_PID_FILE", dir.join("rabbit.pid"))
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins)
        .env("RABBITMQ_CONFIG_FILE", &conf)
        .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"));
    let mut child = spawn(&mut cmd).context("start rabbitmq-server")?;
    let addrs = HashMap::from([("amqp", amqp), ("stomp", stomp), ("mqtt", mqtt)]);
    wait_ready(&mut child, &addrs, "rabbitmq").await?;
    // The broker is the Erlang VM below the start script.
    let pid = descendants(child.id())
        .into_iter()
        .find(|(_, comm)| comm.starts_with("beam"))
        .map(|(p, _)| p)
        .unwrap_or(child.id());
    Ok(BrokerProc {
        target: Target {
            name: "rabbitmq".into(),
            pid: Some(pid),
            addrs,
        },
        child,
        dir,
    })
}

/// Starts the axum echo endpoint (`switchyard-bench echo-server`, this
/// very binary) on a free port: the reference for HTTP publish rates.
pub async fn start_echo() -> Result<BrokerProc> {
    let dir = scratch_dir("echo")?;
    let addr = free_addr()?;
    let exe = std::env::current_exe().context("this binary's path")?;
    let mut child = spawn(Command::new(exe).args(["echo-server", "--bind", &addr.to_string()]))
        .context("start the echo server")?;
    let addrs = HashMap::from([("http", addr)]);
    wait_ready(&mut child, &addrs, "echo server").await?;
    let pid = child.id();
    Ok(BrokerProc {
        target: Target {
            name: "axum-echo".into(),
            pid: Some(pid),
            addrs,
        },
        child,
        dir,
    })
}
