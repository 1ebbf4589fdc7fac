//! PUBLISH ⇄ canonical [`Message`].
//!
//! | MQTT | canonical | notes |
//! | --- | --- | --- |
//! | topic | `address` (multicast) | see [`crate::topic`] |
//! | payload | `body` | the same bytes, not copied |
//! | QoS ≥ 1 | `properties.durable = true` | QoS 2 also sets header `x-mqtt-publish-qos = 2` |
//! | RETAIN | header `x-mqtt-retain = true` | only when set, for Retain As Published |
//! | Content Type | `content_type` | |
//! | Response Topic | `reply_to` (as an address) | |
//! | Correlation Data | `correlation_id` | |
//! | Message Expiry Interval | `expires_at` (absolute) | sent out as the time left |
//! | Payload Format Indicator 1 | header `x-mqtt-payload-format-indicator = 1` | |
//! | User Property | `headers` (strings, in order) | non-string headers go out as [`switchyard_model::Value::to_text`] |
//!
//! Outgoing QoS is the publication's QoS (header, else 1 when durable, else
//! 0 — RabbitMQ's rule for messages from other protocols) capped by the
//! subscription's. `message_id`, `priority`, `timestamp` and
//! `content_encoding` have no MQTT slot and are not sent.

use crate::codec::{Properties, Publish, QoS, Will, put_binary, put_str, put_varint, varint_len};
use crate::codec::{kind, props::id};
use crate::topic;
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::{Arc, LazyLock};
use switchyard_model::{Headers, Message, Namespace, Str, Value};

/// Header carrying a QoS 2 publication's QoS (RabbitMQ's name).
pub const QOS_HEADER: &str = "x-mqtt-publish-qos";
/// Header marking a publication sent with RETAIN set.
pub const RETAIN_HEADER: &str = "x-mqtt-retain";
/// Header carrying Payload Format Indicator 1 (UTF-8 payload).
pub const FORMAT_HEADER: &str = "x-mqtt-payload-format-indicator";

static QOS_NAME: LazyLock<Str> = LazyLock::new(|| Str::from(QOS_HEADER));
static RETAIN_NAME: LazyLock<Str> = LazyLock::new(|| Str::from(RETAIN_HEADER));
static FORMAT_NAME: LazyLock<Str> = LazyLock::new(|| Str::from(FORMAT_HEADER));

fn is_internal(name: &str) -> bool {
    name == QOS_HEADER || name == RETAIN_HEADER || name == FORMAT_HEADER
}

/// Why a publication cannot become a message: the 5.0 reason code.
pub type Refusal = u8;

/// Fills a message's properties and headers from a PUBLISH or will.
#[allow(clippy::too_many_arguments)]
fn build(
    address: Str,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    props: &Properties,
    v5: bool,
    now: u64,
) -> Result<Message, Refusal> {
    let mut m = Message::new(Namespace::Multicast, address, payload);
    m.properties.durable = qos != QoS::AtMostOnce;
    if qos == QoS::ExactlyOnce {
        m.headers.push(QOS_NAME.clone(), Value::U8(2));
    }
    if retain {
        m.headers.push(RETAIN_NAME.clone(), Value::Bool(true));
    }
    if !v5 {
        return Ok(m);
    }
    if props.payload_format_indicator == Some(1) {
        // [MQTT-3.3.2-4] lets the receiver check; a wrong claim is 0x99.
        if std::str::from_utf8(&m.body).is_err() {
            return Err(crate::codec::reason::PAYLOAD_FORMAT_INVALID);
        }
        m.headers.push(FORMAT_NAME.clone(), Value::U8(1));
    }
    if let Some(secs) = props.message_expiry_interval {
        m.properties.expires_at = Some(now.saturating_add(u64::from(secs) * 1000));
    }
    if let Some(ct) = &props.content_type {
        m.properties.content_type = Some(Str::from(ct.as_str()));
    }
    if let Some(rt) = &props.response_topic {
        // A Response Topic is a topic name: no wildcards [MQTT-3.3.2-14].
        let addr =
            topic::topic_to_address(rt).map_err(|_| crate::codec::reason::TOPIC_NAME_INVALID)?;
        m.properties.reply_to = Some(Str::from(addr));
    }
    if let Some(cd) = &props.correlation_data {
        m.properties.correlation_id = Some(cd.clone());
    }
    if !props.user_properties.is_empty() {
        let mut h = Headers::new();
        for (k, v) in &props.user_properties {
            h.push(k.as_str(), v.as_str());
        }
        for (k, v) in m.headers.iter() {
            h.push(k, v.clone());
        }
        m.headers = h;
    }
    Ok(m)
}

/// The message a PUBLISH makes, for `address` (the mapped topic).
pub fn to_message(address: Str, p: &Publish, v5: bool, now: u64) -> Result<Message, Refusal> {
    build(
        address,
        p.payload.clone(),
        p.qos,
        p.retain,
        &p.properties,
        v5,
        now,
    )
}

/// The message a will makes.
pub fn will_message(address: Str, w: &Will, v5: bool, now: u64) -> Result<Message, Refusal> {
    build(
        address,
        w.payload.clone(),
        w.qos,
        w.retain,
        &w.properties,
        v5,
        now,
    )
}

/// The QoS a message was published with (see the module docs).
pub fn message_qos(m: &Message) -> QoS {
    if !m.headers.is_empty() && m.headers.get(QOS_HEADER).and_then(Value::as_i64) == Some(2) {
        return QoS::ExactlyOnce;
    }
    if m.properties.durable {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    }
}

/// True when the message was published with RETAIN set.
pub fn published_retained(m: &Message) -> bool {
    !m.headers.is_empty() && m.headers.get(RETAIN_HEADER) == Some(&Value::Bool(true))
}

/// Topic alias use for one outgoing PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alias {
    None,
    /// Send the topic and set this alias.
    Set(u16),
    /// Send an empty topic and this alias.
    Use(u16),
}

/// One outgoing PUBLISH of a message.
#[derive(Debug)]
pub struct Outgoing<'a> {
    pub msg: &'a Message,
    pub qos: QoS,
    pub packet_id: u16,
    pub dup: bool,
    pub retain: bool,
    pub alias: Alias,
    pub sub_ids: &'a [u32],
    pub now: u64,
}

fn text(v: &Value) -> std::borrow::Cow<'_, str> {
    match v.as_str() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(v.to_text()),
    }
}

fn user_props(m: &Message) -> impl Iterator<Item = (&str, std::borrow::Cow<'_, str>)> {
    m.headers.iter().filter_map(|(k, v)| {
        if is_internal(k) || k.contains('\0') || k.len() > 65_535 {
            return None;
        }
        let t = text(v);
        if t.contains('\0') || t.len() > 65_535 {
            return None;
        }
        Some((k, t))
    })
}

fn expiry_secs(m: &Message, now: u64) -> Option<u32> {
    m.properties
        .expires_at
        .map(|at| u32::try_from(at.saturating_sub(now).div_ceil(1000).max(1)).unwrap_or(u32::MAX))
}

fn props_len(o: &Outgoing<'_>) -> usize {
    let m = o.msg;
    let mut n = 0;
    if !m.headers.is_empty() {
        if m.headers.get(FORMAT_HEADER).is_some() {
            n += 2;
        }
        n += user_props(m)
            .map(|(k, v)| 5 + k.len() + v.len())
            .sum::<usize>();
    }
    if expiry_secs(m, o.now).is_some() {
        n += 5;
    }
    if let Some(ct) = &m.properties.content_type {
        n += 3 + ct.len().min(65_535);
    }
    if let Some(rt) = &m.properties.reply_to {
        n += 3 + topic::topic_len(rt).min(65_535);
    }
    if let Some(cd) = &m.properties.correlation_id {
        n += 3 + cd.len().min(65_535);
    }
    if o.alias != Alias::None {
        n += 3;
    }
    n += o
        .sub_ids
        .iter()
        .map(|s| 1 + varint_len(*s as usize))
        .sum::<usize>();
    n
}

/// Lengths of an outgoing PUBLISH: (properties, remaining length, total).
pub fn publish_len(o: &Outgoing<'_>, v5: bool) -> (usize, usize, usize) {
    let topic = if matches!(o.alias, Alias::Use(_)) {
        0
    } else {
        topic::topic_len(&o.msg.address)
    };
    let props = if v5 { props_len(o) } else { 0 };
    let remaining = 2
        + topic
        + if o.qos == QoS::AtMostOnce { 0 } else { 2 }
        + if v5 { varint_len(props) + props } else { 0 }
        + o.msg.body.len();
    (props, remaining, 1 + varint_len(remaining) + remaining)
}

/// Writes an outgoing PUBLISH straight from the message: the topic is
/// mapped while it is written, nothing is allocated for it.
pub fn write_publish(out: &mut BytesMut, o: &Outgoing<'_>, v5: bool) {
    let total = publish_len(o, v5).2;
    out.reserve(total);
    write_publish_head(out, o, v5);
    out.put_slice(&o.msg.body);
}

/// Writes everything of an outgoing PUBLISH but its payload, which must
/// follow on the wire (`o.msg.body`, sent from the message by reference:
/// large bodies are not copied into the write buffer).
pub fn write_publish_head(out: &mut BytesMut, o: &Outgoing<'_>, v5: bool) {
    let (props, remaining, total) = publish_len(o, v5);
    let m = o.msg;
    out.reserve(total - m.body.len());
    let first = (kind::PUBLISH << 4)
        | (u8::from(o.dup && o.qos != QoS::AtMostOnce) << 3)
        | (o.qos.bits() << 1)
        | u8::from(o.retain);
    out.put_u8(first);
    put_varint(out, remaining);
    if matches!(o.alias, Alias::Use(_)) {
        out.put_u16(0);
    } else {
        let len = topic::topic_len(&m.address);
        out.put_u16(u16::try_from(len).unwrap_or(u16::MAX));
        topic::write_topic(&m.address, out);
    }
    if o.qos != QoS::AtMostOnce {
        out.put_u16(o.packet_id);
    }
    if v5 {
        put_varint(out, props);
        if m.headers.get(FORMAT_HEADER).is_some() {
            out.put_u8(id::PAYLOAD_FORMAT_INDICATOR);
            out.put_u8(1);
        }
        if let Some(secs) = expiry_secs(m, o.now) {
            out.put_u8(id::MESSAGE_EXPIRY_INTERVAL);
            out.put_u32(secs);
        }
        if let Some(ct) = &m.properties.content_type {
            out.put_u8(id::CONTENT_TYPE);
            put_str(out, ct);
        }
        if let Some(rt) = &m.properties.reply_to {
            out.put_u8(id::RESPONSE_TOPIC);
            let len = topic::topic_len(rt).min(65_535);
            out.put_u16(len as u16);
            let start = out.len();
            topic::write_topic(rt, out);
            out.truncate(start + len);
        }
        if let Some(cd) = &m.properties.correlation_id {
            out.put_u8(id::CORRELATION_DATA);
            put_binary(out, cd);
        }
        if let Alias::Set(a) | Alias::Use(a) = o.alias {
            out.put_u8(id::TOPIC_ALIAS);
            out.put_u16(a);
        }
        for s in o.sub_ids {
            out.put_u8(id::SUBSCRIPTION_IDENTIFIER);
            put_varint(out, *s as usize);
        }
        if !m.headers.is_empty() {
            for (k, v) in user_props(m) {
                out.put_u8(id::USER_PROPERTY);
                put_str(out, k);
                put_str(out, &v);
            }
        }
    }
}

/// A shared, immutable copy of a message for the retained store.
pub fn for_retain(m: &Message) -> Arc<Message> {
    Arc::new(m.clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::codec::{Decoder, Packet, Version};

    fn publish(topic: &str, qos: QoS, props: Properties) -> Publish {
        Publish {
            dup: false,
            qos,
            retain: true,
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { 7 },
            properties: props,
            payload: Bytes::from_static(b"\x00\xffbody"),
        }
    }

    #[test]
    fn every_v5_property_crosses_into_the_message_and_back() {
        let props = Properties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            content_type: Some("text/plain".into()),
            response_topic: Some("reply/to/me".into()),
            correlation_data: Some(Bytes::from_static(b"\x01\x02")),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            ..Default::default()
        };
        let mut p = publish("a/b", QoS::ExactlyOnce, props);
        p.payload = Bytes::from_static(b"utf8 text");
        let m = to_message(Str::from("a.b"), &p, true, 1_000).unwrap();
        assert!(m.properties.durable);
        assert_eq!(message_qos(&m), QoS::ExactlyOnce);
        assert!(published_retained(&m));
        assert_eq!(m.properties.reply_to.as_deref(), Some("reply.to.me"));
        assert_eq!(m.properties.expires_at, Some(61_000));
        assert_eq!(m.headers.get("k").and_then(Value::as_str), Some("v"));

        let sub_ids = [3u32, 300];
        let o = Outgoing {
            msg: &m,
            qos: QoS::AtLeastOnce,
            packet_id: 9,
            dup: true,
            retain: false,
            alias: Alias::Set(4),
            sub_ids: &sub_ids,
            now: 31_500,
        };
        let mut out = BytesMut::new();
        write_publish(&mut out, &o, true);
        assert_eq!(out.len(), publish_len(&o, true).2);
        let Packet::Publish(back) = Decoder::with_version(Version::V5, 1 << 20)
            .decode(&mut out)
            .unwrap()
            .unwrap()
        else {
            panic!("not a publish")
        };
        assert!(out.is_empty());
        assert_eq!(back.topic_str(), "a/b");
        assert!(back.dup && !back.retain);
        assert_eq!(back.packet_id, 9);
        assert_eq!(back.payload, m.body);
        let bp = &back.properties;
        assert_eq!(bp.payload_format_indicator, Some(1));
        assert_eq!(bp.message_expiry_interval, Some(30));
        assert_eq!(bp.content_type.as_deref(), Some("text/plain"));
        assert_eq!(bp.response_topic.as_deref(), Some("reply/to/me"));
        assert_eq!(bp.correlation_data.as_deref(), Some(&b"\x01\x02"[..]));
        assert_eq!(bp.topic_alias, Some(4));
        assert_eq!(bp.subscription_identifiers, vec![3, 300]);
        assert_eq!(
            bp.user_properties,
            vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            "internal headers stay inside"
        );
    }

    #[test]
    fn v311_publish_carries_no_properties() {
        let p = publish("x", QoS::AtLeastOnce, Properties::default());
        let m = to_message(Str::from("x"), &p, false, 0).unwrap();
        assert_eq!(message_qos(&m), QoS::AtLeastOnce);
        let o = Outgoing {
            msg: &m,
            qos: QoS::AtLeastOnce,
            packet_id: 1,
            dup: false,
            retain: false,
            alias: Alias::None,
            sub_ids: &[],
            now: 0,
        };
        let mut out = BytesMut::new();
        write_publish(&mut out, &o, false);
        let Packet::Publish(back) = Decoder::with_version(Version::V311, 1 << 20)
            .decode(&mut out)
            .unwrap()
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(back.payload, p.payload);
        assert_eq!(back.topic_str(), "x");
    }

    #[test]
    fn wrong_payload_format_and_wildcard_response_topic_are_refused() {
        let p = publish(
            "x",
            QoS::AtLeastOnce,
            Properties {
                payload_format_indicator: Some(1),
                ..Default::default()
            },
        );
        assert_eq!(to_message(Str::from("x"), &p, true, 0), Err(0x99));
        let p = publish(
            "x",
            QoS::AtLeastOnce,
            Properties {
                response_topic: Some("a/#".into()),
                ..Default::default()
            },
        );
        assert_eq!(to_message(Str::from("x"), &p, true, 0), Err(0x90));
    }

    #[test]
    fn messages_from_other_protocols_get_qos_from_durability() {
        let mut m = Message::anycast("q", Bytes::new());
        assert_eq!(message_qos(&m), QoS::AtMostOnce);
        m.properties.durable = true;
        assert_eq!(message_qos(&m), QoS::AtLeastOnce);
        m.headers.push("n", Value::I32(5));
        let o = Outgoing {
            msg: &m,
            qos: QoS::AtMostOnce,
            packet_id: 0,
            dup: true,
            retain: false,
            alias: Alias::Use(2),
            sub_ids: &[],
            now: 0,
        };
        let mut out = BytesMut::new();
        write_publish(&mut out, &o, true);
        let Packet::Publish(back) = Decoder::with_version(Version::V5, 1 << 20)
            .decode(&mut out)
            .unwrap()
            .unwrap()
        else {
            panic!()
        };
        assert!(!back.dup, "never DUP at QoS 0");
        assert!(back.topic.is_empty());
        assert_eq!(back.properties.topic_alias, Some(2));
        assert_eq!(
            back.properties.user_properties,
            vec![("n".into(), "5".into())]
        );
    }
}
