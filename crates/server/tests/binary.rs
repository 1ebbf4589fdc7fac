//! The `switchyard` binary: CLI, configuration checking, startup on
//! ephemeral ports through environment overrides, graceful shutdown on
//! SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;
use switchyard_testkit::process::{BrokerProcess, binary, default_listeners};

fn bin() -> Command {
    // Cargo builds the binary for this package's integration tests.
    let _ = env!("CARGO_BIN_EXE_switchyard");
    Command::new(binary())
}

#[test]
fn version_prints_the_package_version() {
    let out = bin().arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
}

#[test]
fn check_config_rejects_a_broken_file_with_the_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[listeners.http]\nbind = \"not-an-address\"\n").unwrap();
    let out = bin().arg("check-config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("listeners.http.bind"), "{err}");

    std::fs::write(&file, "[limits]\nmax_queus = 5\n").unwrap();
    let out = bin().arg("check-config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("limits") && err.contains("max_queus"), "{err}");

    let out = bin()
        .arg("check-config")
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn check_config_accepts_the_documented_reference_file() {
    let reference = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/switchyard.toml");
    let out = bin().arg("check-config").arg(reference).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
}

#[test]
fn serve_binds_env_overridden_listeners_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), &[], &[]);
    let http = broker.addr("http");
    assert_ne!(
        http.port(),
        8080,
        "the environment override moved it to an ephemeral port"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let body = rt
        .block_on(async {
            reqwest::get(format!("http://{http}/healthz"))
                .await?
                .text()
                .await
        })
        .unwrap();
    assert_eq!(body, "ok\n");
    broker.signal(libc_sigterm());
    let status = broker
        .wait(Duration::from_secs(20))
        .expect("exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    assert!(broker.log.iter().any(|l| l.contains("SIGTERM received")));
    assert!(broker.log.iter().any(|l| l.contains("\"stopped\"")));
}

#[test]
fn environment_variables_without_a_section_are_not_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ok.toml");
    std::fs::write(&file, "").unwrap();
    let out = bin()
        .arg("check-config")
        .arg(&file)
        .env("SWITCHYARD_BIN", "/somewhere/switchyard")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = bin()
        .arg("check-config")
        .arg(&file)
        .env("SWITCHYARD_LIMITS__MAX_QUEUES", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.max_queues"));
}

#[test]
fn bind_failure_names_the_listener_and_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = bin();
    cmd.arg("serve")
        .env("SWITCHYARD_SERVER__DATA_DIR", dir.path());
    for name in default_listeners() {
        cmd.env(
            format!("SWITCHYARD_LISTENERS__{}__BIND", name.to_uppercase()),
            "127.0.0.1:0",
        );
    }
    let out = cmd
        .env("SWITCHYARD_LISTENERS__HTTP__BIND", &addr)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("listener 'http'") && err.contains(&addr),
        "{err}"
    );
}

fn libc_sigterm() -> i32 {
    15
}
