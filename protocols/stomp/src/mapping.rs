//! STOMP ↔ the canonical model: destinations ↔ namespaces and addresses,
//! `SEND` frames → [`Message`], [`Delivery`] → `MESSAGE` frames.
//!
//! # Destinations
//!
//! | destination | SEND | SUBSCRIBE |
//! | --- | --- | --- |
//! | `/topic/a.b` | multicast address `a.b` | multicast filter (`*`, `#`) |
//! | `/queue/q` | anycast queue `q` (created on first use if the address policy allows) | consume queue `q` (created likewise) |
//! | `/amq/queue/q` | anycast queue `q`, which must exist | consume `q`, which must exist |
//! | `/exchange/x/k` | exchange `x`, routing key `k` | a private queue bound to `x` with key `k` |
//! | bare `name` | as `/queue/name` or `/topic/name` (`default_destination`) | likewise |
//!
//! `/temp-queue/…` and `/reply-queue/…` (RabbitMQ's private reply queues) are
//! refused with an ERROR that says to use a `/queue/` of the client's own.
//!
//! # Headers
//!
//! `content-type`, `content-encoding`, `correlation-id`, `reply-to`,
//! `priority`, `expires` (absolute ms since the epoch; 0 = never),
//! `timestamp`, `persistent` and `amqp-message-id` map to the canonical
//! properties; every other header, except the ones STOMP itself defines
//! ([`RESERVED`]), is a user header (a string), first occurrence only.

use crate::codec::{Command, Frame, FrameWriter, Version};
use crate::config::DefaultDestination;
use crate::session::StompError;
use bytes::BytesMut;
use switchyard_core::Delivery;
use switchyard_model::{Message, Namespace, Str, Value};

/// Longest queue name (AMQP 0-9-1's limit, so every protocol can name it).
pub const MAX_QUEUE_NAME: usize = 255;

/// Headers that are never copied into the canonical user headers (STOMP's
/// own, and the ones mapped to canonical properties).
pub const RESERVED: &[&str] = &[
    "destination",
    "content-length",
    "content-type",
    "content-encoding",
    "receipt",
    "transaction",
    "message-id",
    "subscription",
    "ack",
    "redelivered",
    "correlation-id",
    "reply-to",
    "priority",
    "expires",
    "timestamp",
    "persistent",
    "amqp-message-id",
];

fn is_reserved(name: &str) -> bool {
    RESERVED.contains(&name)
}

/// A parsed destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination<'a> {
    /// `/topic/…`: a multicast address (SEND) or filter (SUBSCRIBE).
    Topic(&'a str),
    /// `/queue/…`: a queue, created on first use when the policy allows.
    Queue(&'a str),
    /// `/amq/queue/…`: an existing queue.
    AmqQueue(&'a str),
    /// `/exchange/name/key`.
    Exchange { name: &'a str, key: &'a str },
}

impl Destination<'_> {
    /// Parses a `destination` header.
    pub fn parse(d: &str, default: DefaultDestination) -> Result<Destination<'_>, StompError> {
        let nonempty = |rest: &str, kind: &str| {
            if rest.is_empty() {
                Err(StompError::new(
                    "invalid destination",
                    format!("destination '{d}' names no {kind}"),
                ))
            } else {
                Ok(())
            }
        };
        let queue = |name: &str| {
            nonempty(name, "queue")?;
            if name.len() > MAX_QUEUE_NAME {
                return Err(StompError::new(
                    "invalid destination",
                    format!("queue names are at most {MAX_QUEUE_NAME} bytes"),
                ));
            }
            Ok(())
        };
        if let Some(rest) = d.strip_prefix("/topic/") {
            nonempty(rest, "topic")?;
            return Ok(Destination::Topic(rest));
        }
        if let Some(rest) = d.strip_prefix("/queue/") {
            queue(rest)?;
            return Ok(Destination::Queue(rest));
        }
        if let Some(rest) = d.strip_prefix("/amq/queue/") {
            queue(rest)?;
            return Ok(Destination::AmqQueue(rest));
        }
        if let Some(rest) = d.strip_prefix("/exchange/") {
            let (name, key) = rest.split_once('/').unwrap_or((rest, ""));
            nonempty(name, "exchange")?;
            if name == Namespace::MULTICAST_EXCHANGE {
                nonempty(key, "topic")?;
                return Ok(Destination::Topic(key));
            }
            return Ok(Destination::Exchange { name, key });
        }
        if d.starts_with("/temp-queue/") || d.starts_with("/reply-queue/") {
            return Err(StompError::new(
                "unsupported destination",
                format!(
                    "destination '{d}': temporary reply queues (/temp-queue/, /reply-queue/) are not \
                     supported; use a /queue/ with a name of your own (e.g. a UUID) as reply-to and \
                     subscribe to it"
                ),
            ));
        }
        if d.starts_with('/') {
            return Err(StompError::new(
                "unknown destination",
                format!(
                    "destination '{d}' has an unknown prefix; use /topic/NAME, /queue/NAME, \
                     /amq/queue/NAME, /exchange/NAME/KEY or a bare NAME"
                ),
            ));
        }
        match default {
            DefaultDestination::Queue => {
                queue(d)?;
                Ok(Destination::Queue(d))
            }
            DefaultDestination::Topic => {
                nonempty(d, "topic")?;
                Ok(Destination::Topic(d))
            }
        }
    }
}

fn invalid(name: &str, value: &str, what: &str) -> StompError {
    StompError::new(
        "invalid header",
        format!("header {name}:{value} is not {what}"),
    )
}

/// Builds the canonical message of a SEND frame.
pub fn message_from_send(
    namespace: Namespace,
    address: Str,
    frame: &Frame,
) -> Result<Message, StompError> {
    let mut msg = Message::new(namespace, address, frame.body.clone());
    let mut persistent_seen = false;
    for (name, value) in &frame.headers {
        let p = &mut msg.properties;
        let v = value.as_str();
        match name.as_str() {
            "content-type" => {
                if p.content_type.is_none() {
                    p.content_type = Some(Str::from(v));
                }
            }
            "content-encoding" => {
                if p.content_encoding.is_none() {
                    p.content_encoding = Some(Str::from(v));
                }
            }
            "correlation-id" => {
                if p.correlation_id.is_none() {
                    p.correlation_id = Some(value.bytes().clone());
                }
            }
            "reply-to" => {
                if p.reply_to.is_none() {
                    p.reply_to = Some(Str::from(v.strip_prefix("/topic/").unwrap_or(v)));
                }
            }
            "amqp-message-id" => {
                if p.message_id.is_none() {
                    p.message_id = Some(Str::from(v));
                }
            }
            "priority" => {
                if p.priority.is_none() {
                    let n: u64 = v
                        .parse()
                        .map_err(|_| invalid("priority", v, "a priority 0-9"))?;
                    p.priority = Some(u8::try_from(n.min(9)).unwrap_or(9));
                }
            }
            "expires" => {
                if p.expires_at.is_none() {
                    let n: u64 = v.parse().map_err(|_| {
                        invalid("expires", v, "a time in milliseconds since the epoch")
                    })?;
                    p.expires_at = (n > 0).then_some(n);
                }
            }
            "timestamp" => {
                if p.timestamp.is_none() {
                    let n: u64 = v.parse().map_err(|_| {
                        invalid("timestamp", v, "a time in milliseconds since the epoch")
                    })?;
                    p.timestamp = Some(n);
                }
            }
            "persistent" => {
                if !persistent_seen {
                    persistent_seen = true;
                    p.durable = v.eq_ignore_ascii_case("true");
                }
            }
            n if is_reserved(n) => {}
            n => {
                if msg.headers.get(n).is_none() {
                    msg.headers.push(Str::from(n), Value::String(Str::from(v)));
                }
            }
        }
    }
    Ok(msg)
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(b.len() * 2);
    for byte in b {
        let _ = write!(s, "{byte:02x}");
    }
    s
}

/// Writes the MESSAGE frame of a delivery to subscription `sub_id`.
///
/// `message-id` (and, in 1.2, `ack`) is `<consumer>-<tag>`: unique per
/// delivery, and it names the delivery in ACK/NACK without a lookup table.
pub fn write_message(
    out: &mut BytesMut,
    version: Version,
    sub_id: &str,
    manual_ack: bool,
    d: &Delivery,
) {
    let m = &*d.message;
    let p = &m.properties;
    let mut w = FrameWriter::begin(out, Command::Message, Some(version));
    w.header("subscription", sub_id);
    w.header_pair("message-id", d.consumer.get(), d.tag.get());
    match &m.namespace {
        Namespace::Multicast => w.header_parts("destination", &["/topic/", &m.address]),
        Namespace::Anycast => w.header_parts("destination", &["/queue/", &m.address]),
        Namespace::Exchange(x) => {
            w.header_parts("destination", &["/exchange/", x, "/", &m.address])
        }
    };
    if manual_ack && version >= Version::V1_2 {
        w.header_pair("ack", d.consumer.get(), d.tag.get());
    }
    if let Some(ct) = &p.content_type {
        w.header("content-type", ct);
    }
    if let Some(ce) = &p.content_encoding {
        w.header("content-encoding", ce);
    }
    if let Some(c) = &p.correlation_id {
        match std::str::from_utf8(c) {
            Ok(s) => w.header("correlation-id", s),
            Err(_) => w.header("correlation-id", &hex(c)),
        };
    }
    if let Some(r) = &p.reply_to {
        if r.starts_with('/') {
            w.header("reply-to", r);
        } else {
            w.header_parts("reply-to", &["/topic/", r]);
        }
    }
    if let Some(pr) = p.priority {
        w.header_u64("priority", u64::from(pr));
    }
    if let Some(e) = p.expires_at {
        w.header_u64("expires", e);
    }
    if let Some(t) = p.timestamp {
        w.header_u64("timestamp", t);
    }
    if p.durable {
        w.header("persistent", "true");
    }
    if let Some(id) = &p.message_id {
        w.header("amqp-message-id", id);
    }
    if d.redelivered {
        w.header("redelivered", "true");
    }
    for (name, value) in m.headers.iter() {
        if is_reserved(name) {
            continue;
        }
        match value {
            Value::String(s) => w.header(name, s),
            other => w.header(name, &other.to_text()),
        };
    }
    w.header_u64("content-length", m.body.len() as u64);
    w.finish(&m.body);
}

/// Parses a message id written by [`write_message`] back into the consumer
/// and delivery tag it names.
pub fn parse_ack_id(id: &str) -> Option<(u64, u64)> {
    let (c, t) = id.split_once('-')?;
    Some((c.parse().ok()?, t.parse().ok()?))
}
