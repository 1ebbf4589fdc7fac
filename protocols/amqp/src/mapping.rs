//! AMQP content ⇄ the canonical [`Message`], and queue arguments ⇄
//! [`QueueOptions`].
//!
//! | AMQP basic property | canonical | back out |
//! | --- | --- | --- |
//! | content-type, content-encoding | `content_type`, `content_encoding` | same |
//! | headers | `headers` (typed values 1:1) | same |
//! | delivery-mode 2 | `durable = true` | 2; a non-persistent message goes out without delivery-mode |
//! | priority | `priority` | same |
//! | correlation-id | `correlation_id` (its bytes) | same when at most 255 bytes |
//! | reply-to | `reply_to` | same |
//! | expiration (relative ms) | `expires_at` (absolute ms) | the remaining ms |
//! | message-id | `message_id` | same |
//! | timestamp (s) | `timestamp` (ms) | seconds |
//! | type, user-id, app-id, cluster-id | `extensions` `amqp.type`, `amqp.user-id`, `amqp.app-id`, `amqp.cluster-id` | same |
//!
//! Delivery encodes the properties straight from the message into the
//! output buffer ([`encode_properties`]) with no intermediate allocation.

use crate::codec::{BasicProperties, ShortStr, put_str, put_table};
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::{DeadLetterTarget, Overflow, QueueOptions};
use switchyard_model::{Headers, Message, Namespace, Properties, Str, Value};

/// Extension key of the AMQP `type` property.
pub const EXT_TYPE: &str = "amqp.type";
/// Extension key of the AMQP `user-id` property.
pub const EXT_USER_ID: &str = "amqp.user-id";
/// Extension key of the AMQP `app-id` property.
pub const EXT_APP_ID: &str = "amqp.app-id";
/// Extension key of the AMQP `cluster-id` property.
pub const EXT_CLUSTER_ID: &str = "amqp.cluster-id";

fn text(s: &ShortStr) -> Str {
    match s.to_str() {
        Ok(t) => Str::from(t),
        Err(_) => Str::from(String::from_utf8_lossy(s.as_bytes()).as_ref()),
    }
}

/// Parses an `expiration` property: a non-negative decimal number of
/// milliseconds (RabbitMQ's rule).
pub fn parse_expiration(s: &ShortStr) -> Option<u64> {
    let t = s.to_str().ok()?;
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// Builds the canonical message of a publish. `now` is milliseconds since
/// the epoch (for `expiration`). Errors name the invalid property.
pub fn to_message(
    namespace: Namespace,
    address: Str,
    body: Bytes,
    p: BasicProperties,
    now: u64,
) -> Result<Message, String> {
    let mut msg = Message::new(namespace, address, body);
    let mut ext = Headers::new();
    let props = Properties {
        content_type: p.content_type.as_ref().map(text),
        content_encoding: p.content_encoding.as_ref().map(text),
        correlation_id: p.correlation_id.map(|c| c.bytes().clone()),
        reply_to: p.reply_to.as_ref().map(text),
        message_id: p.message_id.as_ref().map(text),
        priority: p.priority,
        expires_at: match &p.expiration {
            None => None,
            Some(e) => Some(now.saturating_add(
                parse_expiration(e).ok_or_else(|| format!("invalid expiration '{e:?}'"))?,
            )),
        },
        timestamp: p.timestamp.map(|s| s.saturating_mul(1000)),
        durable: p.delivery_mode == Some(2),
        extensions: {
            for (key, v) in [
                (EXT_TYPE, &p.kind),
                (EXT_USER_ID, &p.user_id),
                (EXT_APP_ID, &p.app_id),
                (EXT_CLUSTER_ID, &p.cluster_id),
            ] {
                if let Some(v) = v {
                    ext.push(key, Value::String(text(v)));
                }
            }
            ext
        },
    };
    msg.properties = props;
    if let Some(h) = p.headers {
        msg.headers = h;
    }
    Ok(msg)
}

fn ext_str<'a>(m: &'a Message, key: &str) -> Option<&'a str> {
    m.properties.extensions.get(key).and_then(Value::as_str)
}

/// The basic properties a message goes out with. Used for `basic.return`
/// of canonical messages and by tests; deliveries use
/// [`encode_properties`], which writes the same bytes.
pub fn properties_of(m: &Message, now: u64) -> BasicProperties {
    let p = &m.properties;
    BasicProperties {
        content_type: p.content_type.as_deref().map(ShortStr::copy),
        content_encoding: p.content_encoding.as_deref().map(ShortStr::copy),
        headers: (!m.headers.is_empty()).then(|| m.headers.clone()),
        delivery_mode: p.durable.then_some(2),
        priority: p.priority,
        correlation_id: p
            .correlation_id
            .as_ref()
            .and_then(|c| ShortStr::new(c.clone())),
        reply_to: p.reply_to.as_deref().map(ShortStr::copy),
        expiration: p
            .expires_at
            .map(|at| ShortStr::copy(&at.saturating_sub(now).to_string())),
        message_id: p.message_id.as_deref().map(ShortStr::copy),
        timestamp: p.timestamp.map(|t| t / 1000),
        kind: ext_str(m, EXT_TYPE).map(ShortStr::copy),
        user_id: ext_str(m, EXT_USER_ID).map(ShortStr::copy),
        app_id: ext_str(m, EXT_APP_ID).map(ShortStr::copy),
        cluster_id: ext_str(m, EXT_CLUSTER_ID).map(ShortStr::copy),
    }
}

/// Writes the property flags and properties of `m` (as [`properties_of`]
/// would give them) into `out`.
pub fn encode_properties(out: &mut BytesMut, m: &Message, now: impl Fn() -> u64) {
    let p = &m.properties;
    let corr = p.correlation_id.as_ref().filter(|c| c.len() <= 255);
    let ty = ext_str(m, EXT_TYPE);
    let user = ext_str(m, EXT_USER_ID);
    let app = ext_str(m, EXT_APP_ID);
    let cluster = ext_str(m, EXT_CLUSTER_ID);
    let mut flags = 0u16;
    let mut set = |present: bool, bit: u16| {
        if present {
            flags |= 1 << bit;
        }
    };
    set(p.content_type.is_some(), 15);
    set(p.content_encoding.is_some(), 14);
    set(!m.headers.is_empty(), 13);
    set(p.durable, 12);
    set(p.priority.is_some(), 11);
    set(corr.is_some(), 10);
    set(p.reply_to.is_some(), 9);
    set(p.expires_at.is_some(), 8);
    set(p.message_id.is_some(), 7);
    set(p.timestamp.is_some(), 6);
    set(ty.is_some(), 5);
    set(user.is_some(), 4);
    set(app.is_some(), 3);
    set(cluster.is_some(), 2);
    out.put_u16(flags);
    if let Some(s) = &p.content_type {
        put_str(out, s);
    }
    if let Some(s) = &p.content_encoding {
        put_str(out, s);
    }
    if !m.headers.is_empty() {
        put_table(out, &m.headers);
    }
    if p.durable {
        out.put_u8(2);
    }
    if let Some(v) = p.priority {
        out.put_u8(v);
    }
    if let Some(c) = corr {
        out.put_u8(c.len() as u8);
        out.put_slice(c);
    }
    if let Some(s) = &p.reply_to {
        put_str(out, s);
    }
    if let Some(at) = p.expires_at {
        let left = at.saturating_sub(now());
        put_str(out, itoa(left, &mut [0u8; 20]));
    }
    if let Some(s) = &p.message_id {
        put_str(out, s);
    }
    if let Some(t) = p.timestamp {
        out.put_u64(t / 1000);
    }
    for s in [ty, user, app, cluster].into_iter().flatten() {
        put_str(out, s);
    }
}

/// Formats `v` in decimal into `buf` without allocating.
fn itoa(mut v: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        if let Some(slot) = buf.get_mut(i) {
            *slot = b'0' + (v % 10) as u8;
        }
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    std::str::from_utf8(buf.get(i..).unwrap_or_default()).unwrap_or("0")
}

fn int_arg(queue: &str, key: &str, v: &Value) -> Result<u64, String> {
    match v.as_i64() {
        Some(n) if n >= 0 => Ok(n as u64),
        _ => Err(format!(
            "invalid arg '{key}' for queue '{queue}' in vhost '/': expected a non-negative integer, got {}",
            v.to_text()
        )),
    }
}

fn str_arg<'a>(queue: &str, key: &str, v: &'a Value) -> Result<&'a str, String> {
    v.as_str().ok_or_else(|| {
        format!(
            "invalid arg '{key}' for queue '{queue}' in vhost '/': expected a string, got {}",
            v.to_text()
        )
    })
}

/// Queue declare flags and `x-` arguments → [`QueueOptions`]. The raw table
/// is kept in `arguments` so a redeclare with other arguments is refused.
/// Errors are PRECONDITION_FAILED texts in RabbitMQ's words.
pub fn queue_options(
    queue: &str,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    args: Headers,
) -> Result<QueueOptions, String> {
    let mut o = QueueOptions {
        durable,
        exclusive,
        auto_delete,
        ..Default::default()
    };
    let mut dlx: Option<Str> = None;
    let mut dlrk: Option<Str> = None;
    for (key, v) in args.iter() {
        match key {
            "x-message-ttl" => {
                o.message_ttl = Some(Duration::from_millis(int_arg(queue, key, v)?));
            }
            "x-expires" => {
                let n = int_arg(queue, key, v)?;
                if n == 0 {
                    return Err(format!(
                        "invalid arg '{key}' for queue '{queue}' in vhost '/': {{value_zero,0}}"
                    ));
                }
                o.expires = Some(Duration::from_millis(n));
            }
            "x-max-length" => o.max_length = Some(int_arg(queue, key, v)?),
            "x-max-length-bytes" => o.max_bytes = Some(int_arg(queue, key, v)?),
            "x-overflow" => {
                let s = str_arg(queue, key, v)?;
                o.overflow = Overflow::parse(s).ok_or_else(|| {
                    format!(
                        "invalid arg '{key}' for queue '{queue}' in vhost '/': unknown overflow mode '{s}' (drop-head, reject-publish, reject-publish-dlx)"
                    )
                })?;
            }
            "x-dead-letter-exchange" => dlx = Some(Str::from(str_arg(queue, key, v)?)),
            "x-dead-letter-routing-key" => dlrk = Some(Str::from(str_arg(queue, key, v)?)),
            "x-max-priority" => {
                let n = int_arg(queue, key, v)?;
                o.max_priority = Some(u8::try_from(n.min(255)).unwrap_or(u8::MAX));
            }
            "x-single-active-consumer" => match v {
                Value::Bool(b) => o.single_active_consumer = *b,
                _ => {
                    return Err(format!(
                        "invalid arg '{key}' for queue '{queue}' in vhost '/': expected a boolean, got {}",
                        v.to_text()
                    ));
                }
            },
            "x-delivery-limit" => {
                o.max_deliveries = Some(u32::try_from(int_arg(queue, key, v)?).unwrap_or(u32::MAX));
            }
            "x-queue-type" => {
                let s = str_arg(queue, key, v)?;
                if !matches!(s, "classic" | "quorum") {
                    return Err(format!(
                        "invalid arg '{key}' for queue '{queue}' in vhost '/': queue type '{s}' is not supported"
                    ));
                }
            }
            _ => {}
        }
    }
    match (dlx, dlrk) {
        (Some(x), rk) => {
            o.dead_letter = Some(DeadLetterTarget {
                namespace: Namespace::from_exchange(&x),
                routing_key: rk,
            });
        }
        (None, Some(_)) => {
            return Err(format!(
                "invalid arg 'x-dead-letter-routing-key' for queue '{queue}' in vhost '/': Key x-dead-letter-exchange should also be set"
            ));
        }
        (None, None) => {}
    }
    o.arguments = args;
    Ok(o)
}

/// Builds a `Value::String`.
pub fn string(s: &str) -> Value {
    Value::String(Arc::from(s))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn itoa_formats() {
        assert_eq!(itoa(0, &mut [0; 20]), "0");
        assert_eq!(itoa(12345, &mut [0; 20]), "12345");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), u64::MAX.to_string());
    }

    #[test]
    fn expiration_must_be_digits() {
        assert_eq!(parse_expiration(&ShortStr::from("1500")), Some(1500));
        assert_eq!(parse_expiration(&ShortStr::from("-1")), None);
        assert_eq!(parse_expiration(&ShortStr::from("")), None);
        assert_eq!(parse_expiration(&ShortStr::from("1e3")), None);
    }

    #[test]
    fn direct_encoding_matches_generated_encoding() {
        let mut headers = Headers::new();
        headers.push("k", Value::I32(7));
        let p = BasicProperties {
            content_type: Some("text/plain".into()),
            content_encoding: Some("gzip".into()),
            headers: Some(headers),
            delivery_mode: Some(2),
            priority: Some(5),
            correlation_id: Some("c".into()),
            reply_to: Some("r".into()),
            expiration: Some("60000".into()),
            message_id: Some("m".into()),
            timestamp: Some(1_700_000_000),
            kind: Some("t".into()),
            user_id: Some("u".into()),
            app_id: Some("a".into()),
            cluster_id: Some("cl".into()),
        };
        let now = 1_000_000;
        let m = to_message(
            Namespace::Anycast,
            Str::from("q"),
            Bytes::new(),
            p.clone(),
            now,
        )
        .unwrap();
        assert_eq!(properties_of(&m, now), p);
        let mut a = BytesMut::new();
        p.encode(&mut a);
        let mut b = BytesMut::new();
        encode_properties(&mut b, &m, || now);
        assert_eq!(a, b);
    }

    #[test]
    fn queue_arguments_map_to_options() {
        let mut args = Headers::new();
        args.push("x-message-ttl", Value::I32(1000));
        args.push("x-expires", Value::I64(60_000));
        args.push("x-max-length", Value::I16(10));
        args.push("x-max-length-bytes", Value::I64(1 << 20));
        args.push("x-overflow", "reject-publish");
        args.push("x-dead-letter-exchange", "dlx");
        args.push("x-dead-letter-routing-key", "dead");
        args.push("x-max-priority", Value::U8(9));
        args.push("x-single-active-consumer", Value::Bool(true));
        let o = queue_options("q", true, false, false, args.clone()).unwrap();
        assert_eq!(o.message_ttl, Some(Duration::from_secs(1)));
        assert_eq!(o.expires, Some(Duration::from_secs(60)));
        assert_eq!(o.max_length, Some(10));
        assert_eq!(o.max_bytes, Some(1 << 20));
        assert_eq!(o.overflow, Overflow::RejectPublish);
        assert_eq!(
            o.dead_letter,
            Some(DeadLetterTarget {
                namespace: Namespace::Exchange(Str::from("dlx")),
                routing_key: Some(Str::from("dead")),
            })
        );
        assert_eq!(o.max_priority, Some(9));
        assert!(o.single_active_consumer);
        assert_eq!(o.arguments, args);

        let mut bad = Headers::new();
        bad.push("x-max-length", "ten");
        assert!(queue_options("q", false, false, false, bad).is_err());
        let mut bad = Headers::new();
        bad.push("x-dead-letter-routing-key", "k");
        assert!(queue_options("q", false, false, false, bad).is_err());
    }
}
