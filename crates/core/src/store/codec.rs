//! Binary encoding of the core's journal records.
//!
//! Integers are little-endian fixed width; strings and byte strings are a
//! `u32` length then the bytes; options are a `u8` flag then the value.
//! A message record starts with the fields paging needs (id, priority,
//! expiry, body length) so a paged-out message can be indexed without
//! decoding its body.

use crate::config::Overflow;
use crate::exchange::{ExchangeKind, ExchangeOptions};
use crate::queue::{DeadLetterTarget, QueueOptions};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use switchyard_model::{Headers, Message, MessageId, Namespace, Origin, Properties, Value};

/// A malformed record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed journal record: {0}")]
pub struct DecodeError(pub &'static str);

type R<T> = Result<T, DecodeError>;

/// Appends encoded values to a buffer.
#[derive(Debug, Default)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(v);
        self
    }
    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
    pub fn opt_u64(&mut self, v: Option<u64>) -> &mut Self {
        match v {
            Some(x) => self.u8(1).u64(x),
            None => self.u8(0),
        }
    }
    pub fn opt_str(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            Some(x) => self.u8(1).str(x),
            None => self.u8(0),
        }
    }
}

/// Reads encoded values from a buffer.
#[derive(Debug)]
pub struct Dec<'a>(pub &'a [u8]);

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        if self.0.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    pub fn u8(&mut self) -> R<u8> {
        self.take(1)?
            .first()
            .copied()
            .ok_or(DecodeError("truncated"))
    }
    pub fn bool(&mut self) -> R<bool> {
        Ok(self.u8()? != 0)
    }
    pub fn u32(&mut self) -> R<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| DecodeError("u32"))?,
        ))
    }
    pub fn u64(&mut self) -> R<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().map_err(|_| DecodeError("u64"))?,
        ))
    }
    pub fn bytes(&mut self) -> R<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub fn str(&mut self) -> R<&'a str> {
        std::str::from_utf8(self.bytes()?).map_err(|_| DecodeError("utf-8"))
    }
    pub fn opt_u64(&mut self) -> R<Option<u64>> {
        Ok(if self.bool()? {
            Some(self.u64()?)
        } else {
            None
        })
    }
    pub fn opt_str(&mut self) -> R<Option<&'a str>> {
        Ok(if self.bool()? {
            Some(self.str()?)
        } else {
            None
        })
    }
}

fn ms(d: Option<Duration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn namespace(e: &mut Enc, n: &Namespace) {
    match n {
        Namespace::Multicast => e.u8(0),
        Namespace::Anycast => e.u8(1),
        Namespace::Exchange(name) => e.u8(2).str(name),
    };
}

fn read_namespace(d: &mut Dec<'_>) -> R<Namespace> {
    Ok(match d.u8()? {
        0 => Namespace::Multicast,
        1 => Namespace::Anycast,
        2 => Namespace::Exchange(Arc::from(d.str()?)),
        _ => return Err(DecodeError("namespace")),
    })
}

pub fn value(e: &mut Enc, v: &Value) {
    match v {
        Value::Null => e.u8(0),
        Value::Bool(b) => e.u8(1).bool(*b),
        Value::I8(x) => e.u8(2).u8(x.cast_unsigned()),
        Value::U8(x) => e.u8(3).u8(*x),
        Value::I16(x) => e.u8(4).u32(u32::from(x.cast_unsigned())),
        Value::U16(x) => e.u8(5).u32(u32::from(*x)),
        Value::I32(x) => e.u8(6).u32(x.cast_unsigned()),
        Value::U32(x) => e.u8(7).u32(*x),
        Value::I64(x) => e.u8(8).u64(x.cast_unsigned()),
        Value::F32(x) => e.u8(9).u32(x.to_bits()),
        Value::F64(x) => e.u8(10).u64(x.to_bits()),
        Value::Decimal { scale, value } => e.u8(11).u8(*scale).u32(*value),
        Value::String(s) => e.u8(12).str(s),
        Value::Bytes(b) => e.u8(13).bytes(b),
        Value::Timestamp(t) => e.u8(14).u64(*t),
        Value::List(l) => {
            e.u8(15).u32(u32::try_from(l.len()).unwrap_or(u32::MAX));
            for x in l.iter() {
                value(e, x);
            }
            e
        }
        Value::Map(m) => {
            e.u8(16);
            headers(e, m);
            e
        }
    };
}

pub fn read_value(d: &mut Dec<'_>, depth: u32) -> R<Value> {
    if depth > 64 {
        return Err(DecodeError("nesting too deep"));
    }
    Ok(match d.u8()? {
        0 => Value::Null,
        1 => Value::Bool(d.bool()?),
        2 => Value::I8(d.u8()?.cast_signed()),
        3 => Value::U8(d.u8()?),
        4 => Value::I16(
            u16::try_from(d.u32()?)
                .map_err(|_| DecodeError("i16"))?
                .cast_signed(),
        ),
        5 => Value::U16(u16::try_from(d.u32()?).map_err(|_| DecodeError("u16"))?),
        6 => Value::I32(d.u32()?.cast_signed()),
        7 => Value::U32(d.u32()?),
        8 => Value::I64(d.u64()?.cast_signed()),
        9 => Value::F32(f32::from_bits(d.u32()?)),
        10 => Value::F64(f64::from_bits(d.u64()?)),
        11 => Value::Decimal {
            scale: d.u8()?,
            value: d.u32()?,
        },
        12 => Value::String(Arc::from(d.str()?)),
        13 => Value::Bytes(Bytes::copy_from_slice(d.bytes()?)),
        14 => Value::Timestamp(d.u64()?),
        15 => {
            let n = d.u32()? as usize;
            let mut v = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                v.push(read_value(d, depth + 1)?);
            }
            Value::List(Arc::from(v))
        }
        16 => Value::Map(Arc::new(read_headers(d, depth + 1)?)),
        _ => return Err(DecodeError("value type")),
    })
}

pub fn headers(e: &mut Enc, h: &Headers) {
    e.u32(u32::try_from(h.len()).unwrap_or(u32::MAX));
    for (k, v) in h.iter() {
        e.str(k);
        value(e, v);
    }
}

pub fn read_headers(d: &mut Dec<'_>, depth: u32) -> R<Headers> {
    let n = d.u32()? as usize;
    let mut h = Headers::new();
    for _ in 0..n {
        let k = d.str()?;
        let v = read_value(d, depth)?;
        h.push(k, v);
    }
    Ok(h)
}

/// What paging needs without the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageMeta {
    pub id: MessageId,
    pub priority: u8,
    pub expires_at: Option<u64>,
    pub body_len: u32,
}

pub fn message(e: &mut Enc, m: &Message) {
    let p = &m.properties;
    e.u64(m.id.0)
        .u8(m.priority())
        .opt_u64(p.expires_at)
        .u32(u32::try_from(m.body.len()).unwrap_or(u32::MAX));
    namespace(e, &m.namespace);
    e.str(&m.address)
        .opt_str(p.content_type.as_deref())
        .opt_str(p.content_encoding.as_deref());
    match &p.correlation_id {
        Some(c) => e.u8(1).bytes(c),
        None => e.u8(0),
    };
    e.opt_str(p.reply_to.as_deref())
        .opt_str(p.message_id.as_deref())
        .opt_u64(p.priority.map(u64::from))
        .opt_u64(p.timestamp)
        .bool(p.durable);
    headers(e, &p.extensions);
    headers(e, &m.headers);
    e.str(m.origin.protocol);
    e.bytes(&m.body);
}

pub fn read_meta(d: &mut Dec<'_>) -> R<MessageMeta> {
    Ok(MessageMeta {
        id: MessageId(d.u64()?),
        priority: d.u8()?,
        expires_at: d.opt_u64()?,
        body_len: d.u32()?,
    })
}

/// Interns the protocol name of a recovered message's origin.
fn protocol_name(p: &str) -> &'static str {
    match p {
        "mqtt" => "mqtt",
        "amqp" => "amqp",
        "stomp" => "stomp",
        "nats" => "nats",
        "http" => "http",
        _ => "internal",
    }
}

pub fn read_message(d: &mut Dec<'_>) -> R<Message> {
    let meta = read_meta(d)?;
    let namespace = read_namespace(d)?;
    let address = Arc::from(d.str()?);
    let content_type = d.opt_str()?.map(Arc::from);
    let content_encoding = d.opt_str()?.map(Arc::from);
    let correlation_id = if d.bool()? {
        Some(Bytes::copy_from_slice(d.bytes()?))
    } else {
        None
    };
    let reply_to = d.opt_str()?.map(Arc::from);
    let message_id = d.opt_str()?.map(Arc::from);
    let priority = d
        .opt_u64()?
        .map(|p| u8::try_from(p.min(255)).unwrap_or(255));
    let timestamp = d.opt_u64()?;
    let durable = d.bool()?;
    let extensions = read_headers(d, 0)?;
    let hs = read_headers(d, 0)?;
    let protocol = protocol_name(d.str()?);
    let body = Bytes::copy_from_slice(d.bytes()?);
    Ok(Message {
        id: meta.id,
        namespace,
        address,
        body,
        properties: Properties {
            content_type,
            content_encoding,
            correlation_id,
            reply_to,
            message_id,
            priority,
            expires_at: meta.expires_at,
            timestamp,
            durable,
            extensions,
        },
        headers: hs,
        origin: Origin {
            protocol,
            conn: switchyard_model::ConnId(0),
        },
    })
}

fn overflow_code(o: Overflow) -> u8 {
    match o {
        Overflow::DropHead => 0,
        Overflow::RejectPublish => 1,
        Overflow::RejectPublishDlx => 2,
        Overflow::Block => 3,
    }
}

pub fn queue_options(e: &mut Enc, o: &QueueOptions) {
    e.bool(o.auto_delete)
        .opt_u64(o.max_priority.map(u64::from))
        .opt_u64(ms(o.message_ttl))
        .opt_u64(ms(o.expires))
        .opt_u64(o.max_length)
        .opt_u64(o.max_bytes)
        .u8(overflow_code(o.overflow));
    match &o.dead_letter {
        Some(t) => {
            e.u8(1);
            namespace(e, &t.namespace);
            e.opt_str(t.routing_key.as_deref());
        }
        None => {
            e.u8(0);
        }
    }
    e.opt_u64(o.max_deliveries.map(u64::from))
        .bool(o.single_active_consumer)
        .bool(o.notify_overflow);
    headers(e, &o.arguments);
}

pub fn read_queue_options(d: &mut Dec<'_>) -> R<QueueOptions> {
    let auto_delete = d.bool()?;
    let max_priority = d
        .opt_u64()?
        .map(|p| u8::try_from(p.min(255)).unwrap_or(255));
    let message_ttl = d.opt_u64()?.map(Duration::from_millis);
    let expires = d.opt_u64()?.map(Duration::from_millis);
    let max_length = d.opt_u64()?;
    let max_bytes = d.opt_u64()?;
    let overflow = match d.u8()? {
        0 => Overflow::DropHead,
        1 => Overflow::RejectPublish,
        2 => Overflow::RejectPublishDlx,
        3 => Overflow::Block,
        _ => return Err(DecodeError("overflow")),
    };
    let dead_letter = if d.bool()? {
        Some(DeadLetterTarget {
            namespace: read_namespace(d)?,
            routing_key: d.opt_str()?.map(Arc::from),
        })
    } else {
        None
    };
    let max_deliveries = d.opt_u64()?.map(|x| u32::try_from(x).unwrap_or(u32::MAX));
    let single_active_consumer = d.bool()?;
    let notify_overflow = d.bool()?;
    let arguments = read_headers(d, 0)?;
    Ok(QueueOptions {
        durable: true,
        exclusive: false,
        auto_delete,
        max_priority,
        message_ttl,
        expires,
        max_length,
        max_bytes,
        overflow,
        dead_letter,
        max_deliveries,
        single_active_consumer,
        no_local: false,
        notify_overflow,
        arguments,
    })
}

pub fn exchange_kind_code(k: ExchangeKind) -> u8 {
    match k {
        ExchangeKind::Direct => 0,
        ExchangeKind::Fanout => 1,
        ExchangeKind::Topic => 2,
        ExchangeKind::Headers => 3,
    }
}

pub fn read_exchange_kind(d: &mut Dec<'_>) -> R<ExchangeKind> {
    Ok(match d.u8()? {
        0 => ExchangeKind::Direct,
        1 => ExchangeKind::Fanout,
        2 => ExchangeKind::Topic,
        3 => ExchangeKind::Headers,
        _ => return Err(DecodeError("exchange kind")),
    })
}

pub fn exchange_options(e: &mut Enc, o: &ExchangeOptions) {
    e.bool(o.auto_delete).bool(o.internal);
    headers(e, &o.arguments);
}

pub fn read_exchange_options(d: &mut Dec<'_>) -> R<ExchangeOptions> {
    Ok(ExchangeOptions {
        durable: true,
        auto_delete: d.bool()?,
        internal: d.bool()?,
        arguments: read_headers(d, 0)?,
    })
}
