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
    dir: PathBuf,
}

impl BrokerProc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BrokerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn scratch_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("switchyard-bench-{name}-{}", std::process::id()));
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
    cmd.arg("serve")
        .env("SWITCHYARD_LOG__LEVEL", "warn")
        .env("SWITCHYARD_SERVER__DATA_DIR", &dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
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
    let mut child = cmd
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
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
    let mut child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &addr.port().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
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

/// Starts the axum echo endpoint (`switchyard-bench echo-server`, this
/// very binary) on a free port: the reference for HTTP publish rates.
pub async fn start_echo() -> Result<BrokerProc> {
    let dir = scratch_dir("echo")?;
    let addr = free_addr()?;
    let exe = std::env::current_exe().context("this binary's path")?;
    let mut child = Command::new(exe)
        .args(["echo-server", "--bind", &addr.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
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
