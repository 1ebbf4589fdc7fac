//! The real `switchyard` binary as a child process, for black-box tests
//! (restart, crash, signals, config files).
//!
//! The binary is started with JSON logs and every listener on
//! `127.0.0.1:0` (through `SWITCHYARD_LISTENERS__*__BIND`); the bound
//! addresses are read from its `listening` log lines.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Path of the `switchyard` binary: `$SWITCHYARD_BIN`, or the one cargo
/// built next to the running test (`target/<profile>/switchyard`).
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SWITCHYARD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current test executable");
    // target/<profile>/deps/<test> -> target/<profile>/switchyard
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join(format!("switchyard{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build -p switchyard) or set SWITCHYARD_BIN",
        bin.display()
    );
    bin
}

/// Listener names the default configuration has.
pub fn default_listeners() -> Vec<String> {
    switchyard::registry::PROTOCOLS
        .iter()
        .map(|p| p.name.to_owned())
        .collect()
}

/// A running `switchyard serve`.
#[derive(Debug)]
pub struct BrokerProcess {
    child: Child,
    addrs: HashMap<String, SocketAddr>,
    logs: mpsc::Receiver<String>,
    /// Every log line read so far.
    pub log: Vec<String>,
}

impl BrokerProcess {
    /// Starts `switchyard serve` with data in `data_dir`, every default
    /// listener on `127.0.0.1:0`, plus `extra_env` and `args`, and waits
    /// until it reports ready.
    pub fn start(data_dir: &Path, args: &[&str], extra_env: &[(&str, &str)]) -> BrokerProcess {
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .args(args)
            .env("SWITCHYARD_LOG__FORMAT", "json")
            .env("SWITCHYARD_LOG__LEVEL", "info")
            .env_remove("RUST_LOG")
            // Harness variables, not configuration keys.
            .env_remove("SWITCHYARD_BIN")
            .env_remove("SWITCHYARD_TEST_ECHO")
            .env("SWITCHYARD_SERVER__DATA_DIR", data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for name in default_listeners() {
            cmd.env(
                format!("SWITCHYARD_LISTENERS__{}__BIND", name.to_uppercase()),
                "127.0.0.1:0",
            );
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn switchyard");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, logs) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("SWITCHYARD_TEST_ECHO").is_some() {
                    eprintln!("[switchyard] {line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = BrokerProcess {
            child,
            addrs: HashMap::new(),
            logs,
            log: Vec::new(),
        };
        p.wait_for_ready(Duration::from_secs(60));
        p
    }

    fn wait_for_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(line) => {
                    let parsed: Option<serde_json::Value> = serde_json::from_str(&line).ok();
                    let fields = parsed.as_ref().and_then(|v| v.get("fields"));
                    let message = fields
                        .and_then(|f| f.get("message"))
                        .and_then(|m| m.as_str());
                    if message == Some("listening")
                        && let Some(f) = fields
                        && let (Some(name), Some(addr)) = (
                            f.get("listener").and_then(|v| v.as_str()),
                            f.get("addr")
                                .and_then(|v| v.as_str())
                                .and_then(|a| a.parse().ok()),
                        )
                    {
                        self.addrs.insert(name.to_owned(), addr);
                    }
                    let ready = message == Some("switchyard ready");
                    self.log.push(line);
                    if ready {
                        return;
                    }
                }
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "switchyard did not become ready (exit status {status:?}); log:\n{}",
                        self.log.join("\n")
                    );
                }
            }
        }
    }

    /// The bound address of listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        *self
            .addrs
            .get(name)
            .unwrap_or_else(|| panic!("listener {name} not bound; log:\n{}", self.log.join("\n")))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`libc::SIGTERM`, `libc::SIGKILL`, ...).
    pub fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        // SAFETY: `kill` with a valid signal number on our own child's pid
        // has no memory-safety preconditions.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Ok(line) = self.logs.try_recv() {
                self.log.push(line);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                while let Ok(line) = self.logs.recv_timeout(Duration::from_millis(100)) {
                    self.log.push(line);
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
