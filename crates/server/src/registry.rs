//! The closed list of protocols this binary serves. Adding a protocol is one
//! crate and one entry here.

use crate::config::{ConfigError, ListenerConfig};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::sync::Arc;
use switchyard_core::spi::ProtocolAdapter;

/// What serves a listener.
pub(crate) enum Service {
    /// A stream protocol: each accepted socket goes to the adapter.
    Stream(Arc<dyn ProtocolAdapter>),
    /// The HTTP listener (REST, SSE, WebSocket paths, health, metrics),
    /// served by the server itself with the HTTP adapter's routes.
    Http(Box<switchyard_http::HttpConfig>),
}

/// A WebSocket path on the HTTP listener that carries a stream protocol.
#[derive(Debug, Clone, Copy)]
pub struct WsRoute {
    pub path: &'static str,
    /// Accepted `Sec-WebSocket-Protocol` values, in order of preference.
    pub subprotocols: &'static [&'static str],
    pub frames: crate::ws::FrameKind,
}

/// One protocol the binary knows.
pub struct Protocol {
    pub name: &'static str,
    pub default_port: u16,
    /// Also served over WebSocket on the HTTP listener at this path.
    pub websocket: Option<WsRoute>,
    /// With TLS, the handshake starts after the server's greeting on the
    /// same port (NATS) instead of right after the TCP accept; the adapter
    /// runs it through `Connection::start_tls`.
    pub tls_after_greeting: bool,
    /// ALPN protocol names offered on TLS listeners.
    pub alpn: &'static [&'static [u8]],
    /// Checks a listener's protocol options (`path` is `listeners.NAME`).
    pub(crate) check_options:
        fn(&str, &BTreeMap<String, figment::value::Value>) -> Result<(), ConfigError>,
    pub(crate) build: fn(&ListenerConfig) -> Result<Service, ConfigError>,
}

impl std::fmt::Debug for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protocol")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Every protocol, with its standard port.
pub static PROTOCOLS: &[Protocol] = &[
    Protocol {
        name: "http",
        default_port: 8080,
        tls_after_greeting: false,
        alpn: &[b"http/1.1"],
        websocket: None,
        check_options: |path, opts| http_config(path, opts).map(|_| ()),
        build: |l| {
            let config = http_config(&format!("listeners.{}", l.name), &l.options)?;
            Ok(Service::Http(Box::new(config)))
        },
    },
    Protocol {
        name: "nats",
        default_port: 4222,
        tls_after_greeting: true,
        alpn: &[],
        websocket: None,
        check_options: |path, o| options::<switchyard_nats::NatsConfig>(path, o).map(|_| ()),
        build: |l| {
            let cfg = options::<switchyard_nats::NatsConfig>(
                &format!("listeners.{}", l.name),
                &l.options,
            )?;
            Ok(Service::Stream(Arc::new(
                switchyard_nats::NatsAdapter::new(cfg),
            )))
        },
    },
    Protocol {
        name: "amqp",
        default_port: 5672,
        tls_after_greeting: false,
        alpn: &[],
        websocket: None,
        check_options: |path, opts| amqp_config(path, opts).map(|_| ()),
        build: |l| {
            let config = amqp_config(&format!("listeners.{}", l.name), &l.options)?;
            let adapter = switchyard_amqp::AmqpAdapter::new(config)
                .map_err(|e| ConfigError::new(format!("listeners.{}", l.name), e))?;
            Ok(Service::Stream(Arc::new(adapter)))
        },
    },
    Protocol {
        name: "mqtt",
        default_port: 1883,
        tls_after_greeting: false,
        alpn: &[],
        websocket: Some(WsRoute {
            path: "/mqtt",
            subprotocols: &["mqtt", "mqttv3.1"],
            frames: crate::ws::FrameKind::Binary,
        }),
        check_options: |path, opts| mqtt_config(path, opts).map(|_| ()),
        build: |l| {
            let path = format!("listeners.{}", l.name);
            let config = mqtt_config(&path, &l.options)?;
            Ok(Service::Stream(Arc::new(
                switchyard_mqtt::MqttAdapter::new(config),
            )))
        },
    },
    Protocol {
        name: "stomp",
        default_port: 61613,
        tls_after_greeting: false,
        alpn: &[],
        websocket: Some(WsRoute {
            path: "/stomp",
            subprotocols: &["v12.stomp", "v11.stomp", "v10.stomp"],
            frames: crate::ws::FrameKind::TextIfUtf8,
        }),
        check_options: |path, opts| options::<switchyard_stomp::StompConfig>(path, opts).map(drop),
        build: |l| {
            let path = format!("listeners.{}", l.name);
            let config = options::<switchyard_stomp::StompConfig>(&path, &l.options)?;
            Ok(Service::Stream(Arc::new(
                switchyard_stomp::StompAdapter::new(config),
            )))
        },
    },
];

fn amqp_config(
    path: &str,
    opts: &BTreeMap<String, figment::value::Value>,
) -> Result<switchyard_amqp::AmqpConfig, ConfigError> {
    let c: switchyard_amqp::AmqpConfig = options(path, opts)?;
    c.validate().map_err(|e| ConfigError::new(path, e))?;
    Ok(c)
}

fn http_config(
    path: &str,
    opts: &BTreeMap<String, figment::value::Value>,
) -> Result<switchyard_http::HttpConfig, ConfigError> {
    let c: switchyard_http::HttpConfig = options(path, opts)?;
    c.validate().map_err(|e| ConfigError::new(path, e))?;
    Ok(c)
}

fn mqtt_config(
    path: &str,
    opts: &BTreeMap<String, figment::value::Value>,
) -> Result<switchyard_mqtt::MqttConfig, ConfigError> {
    let config: switchyard_mqtt::MqttConfig = options(path, opts)?;
    config
        .validate()
        .map_err(|(key, message)| ConfigError::new(format!("{path}.{key}"), message))?;
    Ok(config)
}

pub fn protocol(name: &str) -> Option<&'static Protocol> {
    PROTOCOLS.iter().find(|p| p.name == name)
}

/// Deserializes a listener's protocol options into the adapter's config
/// type, reporting errors with their full key path.
pub(crate) fn options<T: DeserializeOwned>(
    path: &str,
    options: &BTreeMap<String, figment::value::Value>,
) -> Result<T, ConfigError> {
    let dict: figment::value::Dict = options.clone().into_iter().collect();
    figment::value::Value::from(dict)
        .deserialize::<T>()
        .map_err(|e| {
            let key = if e.path.is_empty() {
                path.to_owned()
            } else {
                format!("{path}.{}", e.path.join("."))
            };
            ConfigError::new(key, e.kind.to_string())
        })
}

/// `check_options` of a protocol that takes no options.
#[allow(dead_code)]
fn no_options(
    path: &str,
    options: &BTreeMap<String, figment::value::Value>,
) -> Result<(), ConfigError> {
    match options.keys().next() {
        None => Ok(()),
        Some(k) => Err(ConfigError::new(format!("{path}.{k}"), "unknown field")),
    }
}
