//! Configuration: `switchyard.toml`, overridden by `SWITCHYARD_*`
//! environment variables (figment; `__` separates levels:
//! `SWITCHYARD_LISTENERS__MQTT__BIND=127.0.0.1:1884`).
//!
//! Every key, its default and its meaning is documented in
//! `config/switchyard.toml`. Unknown keys are errors, reported with their
//! key path (`listeners.mqtt.bnd: unknown field`). With no file at all every
//! protocol listens on its standard port.

use crate::registry;
use crate::tls::TlsSection;
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use switchyard_core::auth::{AclRuleConfig, AuthConfig, UserConfig};
use switchyard_core::journal::FsyncPolicy;
use switchyard_core::{AddressPolicy, CoreConfig, Dur, Limits, Size};

/// A configuration error, with the key path it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// Dotted key path (`listeners.mqtt.bind`), or the file for read errors.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Name of this node, shown in protocol handshakes (NATS `server_name`,
    /// AMQP `cluster_name`) and logs.
    pub name: String,
    /// Directory for durable data (the journal).
    pub data_dir: PathBuf,
    /// On SIGINT/SIGTERM: how long connections get to leave after the
    /// protocol's goodbye before they are dropped.
    pub shutdown_grace: Dur,
    /// On SIGINT/SIGTERM, before anything closes: how long `/readyz`
    /// answers 503 while every listener keeps serving, so load balancers
    /// (Kubernetes endpoints) stop sending new clients first.
    pub drain_period: Dur,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            name: "switchyard".to_owned(),
            data_dir: PathBuf::from("./data"),
            shutdown_grace: Dur::secs(5),
            drain_period: Dur::secs(0),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter: `info`, `debug`, `switchyard=debug,info`. The
    /// `RUST_LOG` environment variable wins when set.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

/// `[journal]`: the durable store.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalSection {
    /// Keep durable state (durable queues, exchanges, bindings, persistent
    /// messages) in `server.data_dir/journal`. When false, nothing survives
    /// a restart and persistent messages are confirmed without a disk write.
    pub enabled: bool,
    /// `always`: every write batch is `fdatasync`ed before its publishers
    /// are confirmed; `batch`: the same, but the writer may wait
    /// `max_batch_delay` to gather more into one sync (group commit);
    /// `never`: written to the OS only (survives a crash of the process, not
    /// of the machine).
    pub fsync: String,
    /// Size at which a segment file is closed and the next one started.
    pub segment_size: Size,
    /// `batch` only: longest wait to gather writes into one sync.
    pub max_batch_delay: Dur,
}

impl Default for JournalSection {
    fn default() -> Self {
        JournalSection {
            enabled: true,
            fsync: "batch".to_owned(),
            segment_size: Size::mib(64),
            max_batch_delay: Dur::millis(0),
        }
    }
}

/// `[auth]`: anonymous access.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// Let clients in without credentials (as the anonymous principal).
    /// Default: on when no `[[users]]` are configured (logged as a
    /// warning), off otherwise.
    pub anonymous: Option<bool>,
}

/// `[listeners.NAME]` as written; protocol options are kept raw and checked
/// by the protocol's own config type.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct RawListener {
    /// Defaults to NAME when NAME is a protocol name.
    pub protocol: Option<String>,
    /// Default true.
    pub enabled: Option<bool>,
    /// `IP:port`; default `0.0.0.0:<standard port>`. Port 0 binds an
    /// ephemeral port (logged).
    pub bind: Option<String>,
    /// TLS on this listener (see `crate::tls`).
    pub tls: Option<TlsSection>,
    #[serde(flatten)]
    pub options: BTreeMap<String, figment::value::Value>,
}

/// Listener names that are TLS listeners by default: the protocol they
/// serve and their standard port. They exist only when configured (with a
/// `tls` table); `[listeners.mqtt-tls] tls = { cert = "...", key = "..." }`
/// is enough.
pub const TLS_LISTENERS: &[(&str, &str, u16)] = &[
    ("mqtt-tls", "mqtt", 8883),
    ("amqp-tls", "amqp", 5671),
    ("stomp-tls", "stomp", 61614),
    ("https", "http", 8443),
];

/// The whole file as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub listeners: BTreeMap<String, RawListener>,
    #[serde(default)]
    pub journal: JournalSection,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub addresses: BTreeMap<String, AddressPolicy>,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub users: Vec<UserConfig>,
    #[serde(default)]
    pub acl: Vec<AclRuleConfig>,
}

/// One listener, resolved and checked.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub protocol: String,
    pub enabled: bool,
    pub bind: SocketAddr,
    /// TLS settings; the files were loaded once when the config was checked.
    pub tls: Option<TlsSection>,
    pub options: BTreeMap<String, figment::value::Value>,
}

/// The checked configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerSection,
    pub log: LogSection,
    pub listeners: Vec<ListenerConfig>,
    pub core: CoreConfig,
    pub journal: JournalSection,
}

impl Config {
    /// Defaults only (as if no file and no environment were given).
    pub fn defaults() -> Result<Config, ConfigError> {
        Config::from_raw(RawConfig::default())
    }

    /// Loads `file` (if any) and the `SWITCHYARD_` environment, and checks it.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(path.display().to_string(), format!("cannot read: {e}"))
            })?;
            figment = figment.merge(Toml::string(&text));
        }
        // Every key lives in a section (`SWITCHYARD_LIMITS__MAX_QUEUES`), so
        // only variables with a `__` are configuration; others that share the
        // prefix (`SWITCHYARD_BIN` in the test harness) are not.
        figment = figment.merge(
            Env::prefixed("SWITCHYARD_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        );
        Config::from_figment(figment)
    }

    /// Parses a TOML string (no environment), for tests and `check-config`.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::from_figment(Figment::new().merge(Toml::string(text)))
    }

    fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        let raw: RawConfig = figment.extract().map_err(|e| {
            let e = e
                .into_iter()
                .next()
                .unwrap_or_else(|| figment::Error::from("invalid configuration".to_owned()));
            let path = if e.path.is_empty() {
                "config".to_owned()
            } else {
                e.path.join(".")
            };
            ConfigError::new(path, e.kind.to_string())
        })?;
        Config::from_raw(raw)
    }

    /// Resolves defaults and checks everything a file can get wrong.
    pub fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let mut listeners: BTreeMap<String, RawListener> = registry::PROTOCOLS
            .iter()
            .map(|p| (p.name.to_owned(), RawListener::default()))
            .collect();
        for (name, l) in raw.listeners {
            listeners.insert(name, l);
        }
        let mut out = Vec::new();
        for (name, l) in listeners {
            let path = format!("listeners.{name}");
            let tls_default = TLS_LISTENERS.iter().find(|t| t.0 == name);
            let protocol_name = l
                .protocol
                .clone()
                .or_else(|| tls_default.map(|t| t.1.to_owned()))
                .unwrap_or_else(|| name.clone());
            let protocol = registry::protocol(&protocol_name).ok_or_else(|| {
                let known: Vec<&str> = registry::PROTOCOLS.iter().map(|p| p.name).collect();
                if l.protocol.is_some() {
                    ConfigError::new(
                        format!("{path}.protocol"),
                        format!(
                            "unknown protocol '{protocol_name}' (known: {})",
                            known.join(", ")
                        ),
                    )
                } else {
                    ConfigError::new(
                        path.clone(),
                        format!(
                            "'{name}' is not a protocol name; set `protocol` (one of: {})",
                            known.join(", ")
                        ),
                    )
                }
            })?;
            let default_port = tls_default.map_or(protocol.default_port, |t| t.2);
            let bind = match &l.bind {
                None => SocketAddr::from(([0, 0, 0, 0], default_port)),
                Some(text) => text.parse().map_err(|e| {
                    ConfigError::new(
                        format!("{path}.bind"),
                        format!("'{text}' is not an IP:port address ({e})"),
                    )
                })?,
            };
            (protocol.check_options)(&path, &l.options)?;
            let enabled = l.enabled.unwrap_or(true);
            if let Some(tls) = &l.tls {
                if tls.allow_non_tls && !protocol.tls_after_greeting {
                    return Err(ConfigError::new(
                        format!("{path}.tls.allow_non_tls"),
                        format!(
                            "only for protocols that start TLS after their greeting (nats), not {}",
                            protocol.name
                        ),
                    ));
                }
                if enabled {
                    crate::tls::load(tls, &[])
                        .map_err(|e| ConfigError::new(format!("{path}.tls"), e))?;
                }
            } else if tls_default.is_some() && enabled {
                return Err(ConfigError::new(
                    format!("{path}.tls"),
                    "a TLS listener needs `tls = { cert = \"...\", key = \"...\" }`",
                ));
            }
            out.push(ListenerConfig {
                name,
                protocol: protocol.name.to_owned(),
                enabled,
                bind,
                tls: l.tls,
                options: l.options,
            });
        }
        let enabled: Vec<&ListenerConfig> = out.iter().filter(|l| l.enabled).collect();
        for (i, a) in enabled.iter().enumerate() {
            if a.bind.port() == 0 {
                continue;
            }
            if let Some(b) = enabled.iter().skip(i + 1).find(|b| b.bind == a.bind) {
                return Err(ConfigError::new(
                    format!("listeners.{}.bind", b.name),
                    format!("{} is also the address of listener '{}'", b.bind, a.name),
                ));
            }
        }
        if FsyncPolicy::parse(&raw.journal.fsync).is_none() {
            return Err(ConfigError::new(
                "journal.fsync",
                format!("'{}' is not one of always, batch, never", raw.journal.fsync),
            ));
        }
        if raw.journal.segment_size.bytes() < 64 * 1024
            || raw.journal.segment_size.bytes() > u64::from(u32::MAX)
        {
            return Err(ConfigError::new(
                "journal.segment_size",
                "must be between 64KiB and 4GiB",
            ));
        }
        if raw.limits.connection_buffer == 0 {
            return Err(ConfigError::new(
                "limits.connection_buffer",
                "must be at least 1",
            ));
        }
        let mut core = CoreConfig::new();
        core.auth = AuthConfig {
            anonymous: raw.auth.anonymous.unwrap_or(raw.users.is_empty()),
            users: raw.users,
            acl: raw.acl,
            failure_delay: raw.limits.auth_failure_delay.get(),
            failure_max_delay: raw.limits.auth_failure_max_delay.get(),
        };
        core.auth
            .validate()
            .map_err(|(path, e)| ConfigError::new(path, e))?;
        core.limits = raw.limits;
        let core = core
            .with_policies(&raw.addresses)
            .map_err(|(pattern, e)| ConfigError::new(format!("addresses.\"{pattern}\""), e))?;
        Ok(Config {
            server: raw.server,
            log: raw.log,
            listeners: out,
            core,
            journal: raw.journal,
        })
    }

    /// Sets every listener's bind address to `ip:0` (tests).
    pub fn with_ephemeral_ports(mut self, ip: std::net::IpAddr) -> Self {
        for l in &mut self.listeners {
            l.bind = SocketAddr::new(ip, 0);
        }
        self
    }

    /// The listener called `name`.
    pub fn listener_mut(&mut self, name: &str) -> Option<&mut ListenerConfig> {
        self.listeners.iter_mut().find(|l| l.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_file_gives_every_protocol_on_its_standard_port() {
        let c = Config::defaults().unwrap();
        let http = c.listeners.iter().find(|l| l.name == "http").unwrap();
        assert_eq!(http.bind, "0.0.0.0:8080".parse().unwrap());
        assert!(c.listeners.iter().all(|l| l.enabled));
        assert_eq!(c.server.data_dir, PathBuf::from("./data"));
    }

    /// config/switchyard.toml shows every `[limits]` key with its default.
    #[test]
    fn the_reference_file_writes_every_limit_with_its_default() {
        let text = include_str!("../../../config/switchyard.toml");
        let c = Config::from_toml(text).unwrap();
        assert_eq!(c.core.limits, switchyard_core::Limits::default());
        let section = text
            .split("\n[limits]\n")
            .nth(1)
            .and_then(|rest| rest.split("\n[").next())
            .unwrap();
        let keys: Vec<&str> = section
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains(" = "))
            .filter_map(|l| l.split(" = ").next())
            .collect();
        for key in [
            "max_message_size",
            "max_queues",
            "max_consumers_per_connection",
            "max_unacked_per_consumer",
            "connection_buffer",
            "connection_buffer_bytes",
            "max_connections",
            "max_connections_per_ip",
            "handshake_timeout",
            "queue_memory",
            "memory_high_watermark",
            "disk_free_low_watermark",
            "connection_rate_per_ip",
            "connection_burst_per_ip",
            "auth_failure_delay",
            "auth_failure_max_delay",
        ] {
            assert!(
                keys.contains(&key),
                "[limits] {key} is not in the reference file"
            );
        }
    }

    #[test]
    fn unknown_keys_are_reported_with_their_path() {
        let e = Config::from_toml("[server]\nnmae = \"x\"\n").unwrap_err();
        assert_eq!(e.path, "server.nmae");
        assert!(e.message.contains("nmae"), "{e}");
        let e = Config::from_toml("[limits]\nmax_queues = \"many\"\n").unwrap_err();
        assert_eq!(e.path, "limits.max_queues");
        let e = Config::from_toml("[listeners.http]\nbind = \"nowhere\"\n").unwrap_err();
        assert_eq!(e.path, "listeners.http.bind");
        let e = Config::from_toml("[listeners.foo]\nbind = \"127.0.0.1:1\"\n").unwrap_err();
        assert_eq!(e.path, "listeners.foo");
        let e = Config::from_toml("[listeners.foo]\nprotocol = \"gopher\"\n").unwrap_err();
        assert_eq!(e.path, "listeners.foo.protocol");
        let e = Config::from_toml("[addresses.\"a..b\"]\nmax_length = 1\n").unwrap_err();
        assert_eq!(e.path, "addresses.\"a..b\"");
        let e = Config::from_toml("[limits]\nmax_message_size = \"huge\"\n").unwrap_err();
        assert_eq!(e.path, "limits.max_message_size");
    }

    #[test]
    fn duplicate_bind_addresses_are_refused() {
        let e = Config::from_toml(
            "[listeners.http]\nbind = \"127.0.0.1:9000\"\n[listeners.http2]\nprotocol = \"http\"\nbind = \"127.0.0.1:9000\"\n",
        )
        .unwrap_err();
        assert_eq!(e.path, "listeners.http2.bind");
    }

    #[test]
    fn a_listener_can_be_disabled_and_keeps_its_default_port() {
        let c = Config::from_toml("[listeners.http]\nenabled = false\n").unwrap();
        let http = c.listeners.iter().find(|l| l.name == "http").unwrap();
        assert!(!http.enabled);
        assert_eq!(http.bind.port(), 8080);
    }

    #[test]
    fn users_acl_and_anonymous() {
        let c = Config::defaults().unwrap();
        assert!(c.core.auth.anonymous, "no users: anonymous on");
        let hash = switchyard_core::auth::hash_password(b"pw").unwrap();
        let c = Config::from_toml(&format!(
            "[[users]]\nname = \"alice\"\npassword_hash = \"{hash}\"\n[[acl]]\nuser = \"alice\"\naddresses = [\"sensors.#\"]\nverbs = [\"publish\"]\n"
        ))
        .unwrap();
        assert!(!c.core.auth.anonymous, "users: anonymous off");
        assert_eq!(c.core.auth.users.len(), 1);
        assert_eq!(c.core.auth.acl.len(), 1);
        let c = Config::from_toml(&format!(
            "[auth]\nanonymous = true\n[[users]]\nname = \"alice\"\npassword_hash = \"{hash}\"\n"
        ))
        .unwrap();
        assert!(c.core.auth.anonymous);
        let e =
            Config::from_toml("[[users]]\nname = \"a\"\npassword_hash = \"secret\"\n").unwrap_err();
        assert_eq!(e.path, "users[0].password_hash");
        let e = Config::from_toml("[[acl]]\naddresses = [\"a\"]\nverbs = [\"fly\"]\n").unwrap_err();
        assert!(e.path.starts_with("acl"), "{e}");
        let e = Config::from_toml("[[acl]]\naddresses = [\"a..b\"]\nverbs = [\"publish\"]\n")
            .unwrap_err();
        assert_eq!(e.path, "acl[0].addresses");
    }

    #[test]
    fn sizes_and_durations_take_units() {
        let c = Config::from_toml(
            "[limits]\nmax_message_size = \"1MiB\"\nhandshake_timeout = \"3s\"\n[server]\nshutdown_grace = \"250ms\"\n",
        )
        .unwrap();
        assert_eq!(c.core.limits.max_message_size.bytes(), 1024 * 1024);
        assert_eq!(c.core.limits.handshake_timeout.get().as_secs(), 3);
        assert_eq!(c.server.shutdown_grace.get().as_millis(), 250);
    }
}
