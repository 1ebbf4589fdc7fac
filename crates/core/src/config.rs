//! The core's configuration: `[limits]` and `[addresses."pattern"]`.
//!
//! Sizes and durations are strings with units in the config file
//! (`"64MiB"`, `"10s"`); [`Size`] and [`Dur`] parse them (a bare integer is
//! bytes or milliseconds). Doc comments here are also the user documentation
//! in `config/switchyard.toml`.

use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;
use switchyard_model::AddressFilter;

/// A size in bytes, written `"64MiB"`, `"1GB"`, `"512"` or `512`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Size(pub u64);

impl Size {
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// The size as `usize`, saturating.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }

    pub const fn kib(n: u64) -> Size {
        Size(n * 1024)
    }

    pub const fn mib(n: u64) -> Size {
        Size(n * 1024 * 1024)
    }
}

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Ok(n) = t.parse::<u64>() {
            return Ok(Size(n));
        }
        t.parse::<bytesize::ByteSize>()
            .map(|b| Size(b.as_u64()))
            .map_err(|e| format!("invalid size '{s}': {e} (examples: \"64MiB\", \"1GB\", \"512\")"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec())
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A duration, written `"10s"`, `"500ms"`, `"1h 30m"` or a number of
/// milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn get(self) -> Duration {
        self.0
    }

    pub const fn secs(n: u64) -> Dur {
        Dur(Duration::from_secs(n))
    }

    pub const fn millis(n: u64) -> Dur {
        Dur(Duration::from_millis(n))
    }
}

impl std::str::FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Ok(n) = t.parse::<u64>() {
            return Ok(Dur(Duration::from_millis(n)));
        }
        humantime::parse_duration(t).map(Dur).map_err(|e| {
            format!("invalid duration '{s}': {e} (examples: \"10s\", \"500ms\", \"1h\")")
        })
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Dur(Duration::from_millis(n))),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// What a queue does when a message would take it past `max_length` or
/// `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overflow {
    /// Drop (dead-letter, if the queue has a dead-letter target) the oldest
    /// ready message to make room. RabbitMQ's default.
    #[default]
    DropHead,
    /// Refuse the new message: the publisher is told (AMQP confirm nack) and
    /// the message is not enqueued in this queue.
    RejectPublish,
    /// Refuse the new message and dead-letter it.
    RejectPublishDlx,
    /// Tell publishers to wait: past the limit a publish returns a
    /// [`crate::Pressure`] that resolves once the queue has drained to half
    /// its limits (ActiveMQ Artemis' `BLOCK` address policy). Bounded so
    /// that a consumer that stops reading cannot stall publishers or grow
    /// memory for ever: an episode lasts at most
    /// [`crate::BLOCK_TIMEOUT`], after which (and whenever the queue holds
    /// twice its limits, e.g. from publishers that ignore the pressure) the
    /// queue drops its oldest messages as with `DropHead`, counted.
    Block,
}

impl Overflow {
    /// The RabbitMQ `x-overflow` spelling.
    pub fn parse(s: &str) -> Option<Overflow> {
        match s {
            "drop-head" => Some(Overflow::DropHead),
            "reject-publish" => Some(Overflow::RejectPublish),
            "reject-publish-dlx" => Some(Overflow::RejectPublishDlx),
            _ => None,
        }
    }
}

/// Broker-wide limits (`[limits]`). Every limit is checked before memory is
/// committed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest message body accepted from any protocol.
    pub max_message_size: Size,
    /// Most queues (including one per live subscription) the broker holds.
    pub max_queues: u64,
    /// Most subscriptions and consumers one connection may hold.
    pub max_consumers_per_connection: u64,
    /// Most unacknowledged deliveries one consumer may hold, whatever its
    /// prefetch says (0 = no cap beyond the prefetch).
    pub max_unacked_per_consumer: u32,
    /// Deliveries buffered between the queues and one connection's writer.
    pub connection_buffer: usize,
    /// Bytes of message bodies buffered between the queues and one
    /// connection's writer; past it, queues hold messages back.
    pub connection_buffer_bytes: Size,
    /// Most open connections in total.
    pub max_connections: u64,
    /// Most open connections from one source IP address (clients behind
    /// one NAT or proxy count as one address).
    pub max_connections_per_ip: u64,
    /// A client that connects but completes no protocol handshake within
    /// this time is disconnected.
    pub handshake_timeout: Dur,
    /// Bytes of ready message bodies one queue keeps in memory; persistent
    /// messages past it stay only in the journal and are read back as
    /// consumers reach them (paging).
    pub queue_memory: Size,
    /// Above this resident memory publishers are held back until it falls
    /// (AMQP `connection.blocked`, read back-pressure on MQTT, STOMP and
    /// NATS, 503 on HTTP). 0: 40% of the machine's memory.
    pub memory_high_watermark: Size,
    /// Below this much free disk in the data directory publishers are held
    /// back the same way. 0 disables the check.
    pub disk_free_low_watermark: Size,
    /// New connections accepted per second from one source IP address, on
    /// average (a token bucket refilled at this rate); past it connections
    /// are closed at once. 0 disables the check.
    pub connection_rate_per_ip: u32,
    /// New connections one source IP address may open at once before the
    /// rate applies (the token bucket's size). 0: the same as
    /// `connection_rate_per_ip`.
    pub connection_burst_per_ip: u32,
    /// Delay before answering a failed login; doubled for each further
    /// failure from the same IP address within a minute.
    pub auth_failure_delay: Dur,
    /// Cap on the failed-login delay.
    pub auth_failure_max_delay: Dur,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: Size::mib(16),
            max_queues: 1_000_000,
            max_consumers_per_connection: 100_000,
            max_unacked_per_consumer: 0,
            connection_buffer: 4096,
            connection_buffer_bytes: Size::mib(8),
            max_connections: 100_000,
            max_connections_per_ip: 1000,
            handshake_timeout: Dur::secs(10),
            queue_memory: Size::mib(64),
            memory_high_watermark: Size(0),
            disk_free_low_watermark: Size::mib(256),
            connection_rate_per_ip: 200,
            connection_burst_per_ip: 1000,
            auth_failure_delay: Dur::millis(100),
            auth_failure_max_delay: Dur::secs(5),
        }
    }
}

/// Per-address policy (`[addresses."pattern"]`), applied to queues whose name
/// (anycast) or filter (subscriptions) the pattern matches. Settings made by
/// a client when it declares a queue (AMQP `x-` arguments) win over the
/// policy.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AddressPolicy {
    /// Queue that receives messages which expire, are rejected without
    /// requeue, exceed `max_deliveries`, or are dropped by overflow. Created
    /// on first use (durable).
    pub dlq: Option<String>,
    /// Message time-to-live in the queue.
    pub ttl: Option<Dur>,
    /// Most ready messages in the queue.
    pub max_length: Option<u64>,
    /// Most bytes of ready message bodies in the queue.
    pub max_bytes: Option<Size>,
    /// What happens past `max_length` / `max_bytes`.
    pub overflow: Option<Overflow>,
    /// After this many deliveries without an ack, a message is dead-lettered
    /// instead of requeued.
    pub max_deliveries: Option<u32>,
    /// Whether STOMP `SEND /queue/x` and HTTP `POST /v1/queues/x` create the
    /// queue when it does not exist (default true).
    pub auto_create_queues: Option<bool>,
}

/// The core's whole configuration.
#[derive(Debug, Clone, Default)]
pub struct CoreConfig {
    pub limits: Limits,
    /// Policies in the order of precedence (most specific first).
    pub policies: Vec<(AddressFilter, AddressPolicy)>,
    /// How often queues are swept for expired messages and unused
    /// auto-expiring queues.
    pub sweep_interval: Dur,
    /// Addresses cached by each router (0 disables the cache).
    pub route_cache_capacity: usize,
    /// Users, ACL rules, anonymous access, login back-off.
    pub auth: crate::auth::AuthConfig,
}

impl CoreConfig {
    /// Builds the policy list from the config file's map, ordered most
    /// specific first: more literal words, then fewer `#`, then fewer `*`,
    /// then by text.
    pub fn with_policies(
        mut self,
        map: &BTreeMap<String, AddressPolicy>,
    ) -> Result<Self, (String, String)> {
        let mut list = Vec::with_capacity(map.len());
        for (pattern, policy) in map {
            let filter =
                AddressFilter::new(pattern).map_err(|e| (pattern.clone(), e.to_string()))?;
            list.push((filter, policy.clone()));
        }
        list.sort_by_key(|(f, _)| {
            use switchyard_model::FilterWord as W;
            let lit = f
                .words()
                .iter()
                .filter(|w| matches!(w, W::Literal(_)))
                .count();
            let hash = f.words().iter().filter(|w| matches!(w, W::Hash)).count();
            let star = f.words().iter().filter(|w| matches!(w, W::Star)).count();
            (std::cmp::Reverse(lit), hash, star, f.as_str().to_owned())
        });
        self.policies = list;
        Ok(self)
    }

    /// The most specific policy matching `name`.
    pub fn policy_for(&self, name: &str) -> Option<&AddressPolicy> {
        self.policies
            .iter()
            .find(|(f, _)| f.matches(name))
            .map(|(_, p)| p)
    }
}

impl CoreConfig {
    /// The defaults used when nothing is configured.
    pub fn new() -> Self {
        CoreConfig {
            limits: Limits::default(),
            policies: Vec::new(),
            sweep_interval: Dur::millis(250),
            route_cache_capacity: switchyard_router::DEFAULT_CACHE_CAPACITY,
            auth: crate::auth::AuthConfig {
                anonymous: true,
                failure_delay: Limits::default().auth_failure_delay.get(),
                failure_max_delay: Limits::default().auth_failure_max_delay.get(),
                ..Default::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse_with_units() {
        assert_eq!("64MiB".parse::<Size>().unwrap(), Size::mib(64));
        assert_eq!("1KiB".parse::<Size>().unwrap(), Size(1024));
        assert_eq!("512".parse::<Size>().unwrap(), Size(512));
        assert!("lots".parse::<Size>().is_err());
        assert_eq!("10s".parse::<Dur>().unwrap(), Dur::secs(10));
        assert_eq!("250ms".parse::<Dur>().unwrap(), Dur::millis(250));
        assert_eq!("1500".parse::<Dur>().unwrap(), Dur::millis(1500));
        assert!("soon".parse::<Dur>().is_err());
    }

    #[test]
    fn most_specific_policy_wins() {
        let mut map = BTreeMap::new();
        map.insert(
            "#".to_string(),
            AddressPolicy {
                max_length: Some(1),
                ..Default::default()
            },
        );
        map.insert(
            "orders.*".to_string(),
            AddressPolicy {
                max_length: Some(2),
                ..Default::default()
            },
        );
        map.insert(
            "orders.eu".to_string(),
            AddressPolicy {
                max_length: Some(3),
                ..Default::default()
            },
        );
        let cfg = CoreConfig::new().with_policies(&map).unwrap();
        assert_eq!(cfg.policy_for("orders.eu").unwrap().max_length, Some(3));
        assert_eq!(cfg.policy_for("orders.us").unwrap().max_length, Some(2));
        assert_eq!(cfg.policy_for("x").unwrap().max_length, Some(1));
    }
}
