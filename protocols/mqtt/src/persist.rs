//! What a persistent session keeps in the broker's state store
//! ([`switchyard_core::Broker::save_state`]), so it survives a restart, and
//! its byte format. Pure functions, no I/O.
//!
//! The session's queue `$mqtt.session.<client id>`, its bindings and its
//! messages are the core's (journaled as queues, bindings and messages).
//! What MQTT adds is kept in two scopes:
//!
//! * scope [`SESSION_SCOPE`], key = the client id: one [`SessionRecord`]
//!   (session expiry, when the session was last left, subscriptions with
//!   their options and identifiers, packet identifiers to reuse, a delayed
//!   will). Written on CONNECT, on every SUBSCRIBE / UNSUBSCRIBE that
//!   changes something, when the connection ends, and when a delayed will
//!   has gone out. Never per message.
//! * scope [`QOS2_SCOPE`], one key per QoS 2 packet identifier in flight
//!   ([`qos2_key`]: the client id, U+0000, `i` or `o`, the identifier in
//!   decimal), value a [`Qos2Entry`]. QoS 2 changes one small record each,
//!   whatever the number of subscriptions or identifiers in flight. A
//!   client id cannot contain U+0000 (`[MQTT-1.5.4-2]`), so the key splits
//!   back unambiguously.
//!
//! # Session record, version 1
//!
//! Integers are big-endian; `string` is a two-byte length and UTF-8 (no
//! U+0000), `binary` a two-byte length and bytes, `varint` MQTT's variable
//! byte integer (at most four bytes) — the encodings of MQTT itself.
//!
//! ```text
//! u8      version = 1
//! u32     session expiry interval, seconds (0xFFFF_FFFF: never expires)
//! u64     left at: when the last connection ended, ms since the Unix epoch
//!         (wall clock); 0 while a connection holds the session
//! varint  number of subscriptions, then for each:
//!   string  the MQTT topic filter (never a `$share/…` one)
//!   u8      options: bits 0-1 granted QoS, bit 2 no local, bit 3 retain
//!           as published, bits 4-5 retain handling, bits 6-7 zero
//!   varint  subscription identifier (0: none; identifiers are 1..2^28-1)
//! varint  number of packet identifiers to reuse, then for each:
//!   u64     message id
//!   u16     packet identifier (1..65535)
//! u8      0: no will; 1: a delayed will follows:
//!   u8      bits 0-1 QoS, bit 2 retain, bit 3 sent by a 5.0 client
//!   string  will topic
//!   binary  will payload
//!   ...     will properties as in a 5.0 CONNECT (varint length, then
//!           properties; Will Delay Interval among them)
//! ```
//!
//! Nothing may follow. A record that is truncated, has trailing bytes, an
//! unknown version or an out-of-range value is refused with a
//! [`StateError`] — never a panic — and the adapter falls back to
//! rebuilding the subscriptions from the queue's bindings (granted QoS 2,
//! default options), as it did before this record existed.
//!
//! # QoS 2 entry, version 1
//!
//! ```text
//! u8   version = 1
//! u8   1: incoming PUBLISH routed, waiting for PUBREL     (key …\0i<id>)
//!      2: outgoing PUBLISH sent, waiting for PUBREC;      (key …\0o<id>)
//!         followed by u64 message id
//!      3: outgoing PUBREL sent, waiting for PUBCOMP       (key …\0o<id>)
//! ```

use crate::codec::{Context, DecodeError, Properties, QoS, SubOptions, Will, put_binary, put_str};
use crate::codec::{Reader, put_varint};
use bytes::{BufMut, Bytes, BytesMut};
use switchyard_model::MessageId;

/// The state store scope of session records (key: the client id).
pub const SESSION_SCOPE: &str = "mqtt.session";
/// The state store scope of QoS 2 packet identifiers in flight.
pub const QOS2_SCOPE: &str = "mqtt.qos2";
/// The format version this build writes (and the only one it reads).
pub const VERSION: u8 = 1;

/// "never expires" as an expiry interval.
pub const NEVER: u32 = u32::MAX;

/// One subscription of a persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSub {
    /// The MQTT topic filter, as the client sent it.
    pub filter: String,
    pub options: SubOptions,
    pub id: Option<u32>,
}

/// What a persistent session keeps besides its queue (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionRecord {
    /// Session Expiry Interval granted, seconds ([`NEVER`]: never).
    pub expiry: u32,
    /// When the last connection ended (ms since the Unix epoch); 0 while a
    /// connection holds the session.
    pub left_at: u64,
    pub subs: Vec<StoredSub>,
    /// Packet identifiers of messages that were in flight, by message id.
    pub reuse: Vec<(MessageId, u16)>,
    /// A will waiting for its Will Delay Interval.
    pub will: Option<StoredWill>,
}

/// A delayed will, as the CONNECT carried it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredWill {
    pub will: Will,
    /// Sent by a 5.0 client (its properties count).
    pub v5: bool,
}

/// One QoS 2 packet identifier in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos2Entry {
    /// An incoming PUBLISH was routed; PUBREL has not come yet.
    Incoming,
    /// An outgoing PUBLISH of this message is waiting for PUBREC.
    AwaitPubRec(MessageId),
    /// The PUBREL went out; PUBCOMP has not come yet.
    AwaitPubComp,
}

/// Which side a QoS 2 packet identifier belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Sent by the client (`i`).
    In,
    /// Sent by the server (`o`).
    Out,
}

/// Why stored bytes cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("unknown state format version {0}")]
    Version(u8),
    #[error("truncated or malformed state: {0}")]
    Malformed(String),
    #[error("state has {0} bytes after its end")]
    Trailing(usize),
}

impl From<DecodeError> for StateError {
    fn from(e: DecodeError) -> Self {
        StateError::Malformed(e.to_string())
    }
}

fn bad(what: &str) -> StateError {
    StateError::Malformed(what.to_owned())
}

fn options_byte(o: &SubOptions) -> u8 {
    o.qos.bits()
        | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | ((o.retain_handling & 3) << 4)
}

fn options_from(b: u8) -> Result<SubOptions, StateError> {
    if b & 0xC0 != 0 {
        return Err(bad("reserved subscription option bits set"));
    }
    let qos = QoS::from_bits(b & 3).ok_or_else(|| bad("QoS 3"))?;
    let retain_handling = (b >> 4) & 3;
    if retain_handling == 3 {
        return Err(bad("retain handling 3"));
    }
    Ok(SubOptions {
        qos,
        no_local: b & 4 != 0,
        retain_as_published: b & 8 != 0,
        retain_handling,
    })
}

fn u64_from(r: &mut Reader) -> Result<u64, StateError> {
    let hi = r.u32()?;
    let lo = r.u32()?;
    Ok((u64::from(hi) << 32) | u64::from(lo))
}

/// Encodes a session record (format version [`VERSION`]).
pub fn encode_session(rec: &SessionRecord) -> BytesMut {
    let mut out = BytesMut::with_capacity(
        32 + rec.subs.iter().map(|s| s.filter.len() + 8).sum::<usize>() + rec.reuse.len() * 10,
    );
    out.put_u8(VERSION);
    out.put_u32(rec.expiry);
    out.put_u64(rec.left_at);
    put_varint(&mut out, rec.subs.len());
    for s in &rec.subs {
        put_str(&mut out, &s.filter);
        out.put_u8(options_byte(&s.options));
        put_varint(&mut out, s.id.map_or(0, |i| i as usize));
    }
    put_varint(&mut out, rec.reuse.len());
    for (m, p) in &rec.reuse {
        out.put_u64(m.0);
        out.put_u16(*p);
    }
    match &rec.will {
        None => out.put_u8(0),
        Some(w) => {
            out.put_u8(1);
            out.put_u8(w.will.qos.bits() | (u8::from(w.will.retain) << 2) | (u8::from(w.v5) << 3));
            put_str(&mut out, &w.will.topic);
            put_binary(&mut out, &w.will.payload);
            w.will.properties.encode(&mut out);
        }
    }
    out
}

/// Decodes a session record; never panics, whatever the bytes.
pub fn decode_session(bytes: &[u8]) -> Result<SessionRecord, StateError> {
    let mut r = Reader::new(Bytes::copy_from_slice(bytes));
    let version = r.u8()?;
    if version != VERSION {
        return Err(StateError::Version(version));
    }
    let expiry = r.u32()?;
    let left_at = u64_from(&mut r)?;
    let n = r.varint()? as usize;
    // Each subscription takes at least 4 bytes: no allocation beyond what
    // the input can hold.
    let mut subs = Vec::with_capacity(n.min(bytes.len() / 4));
    for _ in 0..n {
        let filter = r.string()?;
        if filter.is_empty() {
            return Err(bad("empty topic filter"));
        }
        let options = options_from(r.u8()?)?;
        let id = match r.varint()? {
            0 => None,
            i => Some(i),
        };
        subs.push(StoredSub {
            filter,
            options,
            id,
        });
    }
    let n = r.varint()? as usize;
    let mut reuse = Vec::with_capacity(n.min(bytes.len() / 10));
    for _ in 0..n {
        let m = MessageId(u64_from(&mut r)?);
        let p = r.u16()?;
        if p == 0 {
            return Err(bad("packet identifier 0"));
        }
        reuse.push((m, p));
    }
    let will = match r.u8()? {
        0 => None,
        1 => {
            let flags = r.u8()?;
            if flags & 0xF0 != 0 {
                return Err(bad("reserved will flag bits set"));
            }
            let qos = QoS::from_bits(flags & 3).ok_or_else(|| bad("will QoS 3"))?;
            let topic = r.string()?;
            let payload = r.binary()?;
            let properties = Properties::decode(&mut r, Context::Will)?;
            Some(StoredWill {
                will: Will {
                    qos,
                    retain: flags & 4 != 0,
                    topic,
                    payload,
                    properties,
                },
                v5: flags & 8 != 0,
            })
        }
        _ => return Err(bad("will marker other than 0 or 1")),
    };
    let left = r.rest().len();
    if left > 0 {
        return Err(StateError::Trailing(left));
    }
    Ok(SessionRecord {
        expiry,
        left_at,
        subs,
        reuse,
        will,
    })
}

/// The key of a QoS 2 packet identifier of `client`.
pub fn qos2_key(client: &str, dir: Dir, packet_id: u16) -> String {
    let d = match dir {
        Dir::In => 'i',
        Dir::Out => 'o',
    };
    format!("{client}\u{0}{d}{packet_id}")
}

/// Splits a [`qos2_key`] back into its parts.
pub fn parse_qos2_key(key: &str) -> Option<(&str, Dir, u16)> {
    let (client, rest) = key.rsplit_once('\u{0}')?;
    let mut chars = rest.chars();
    let dir = match chars.next()? {
        'i' => Dir::In,
        'o' => Dir::Out,
        _ => return None,
    };
    let digits = chars.as_str();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id: u16 = digits.parse().ok()?;
    (id != 0).then_some((client, dir, id))
}

/// Encodes a QoS 2 entry (format version [`VERSION`]).
pub fn encode_qos2(e: Qos2Entry) -> Vec<u8> {
    match e {
        Qos2Entry::Incoming => vec![VERSION, 1],
        Qos2Entry::AwaitPubRec(m) => {
            let mut v = Vec::with_capacity(10);
            v.extend_from_slice(&[VERSION, 2]);
            v.extend_from_slice(&m.0.to_be_bytes());
            v
        }
        Qos2Entry::AwaitPubComp => vec![VERSION, 3],
    }
}

/// Decodes a QoS 2 entry; never panics.
pub fn decode_qos2(bytes: &[u8]) -> Result<Qos2Entry, StateError> {
    match bytes {
        [] => Err(bad("empty QoS 2 entry")),
        [v, ..] if *v != VERSION => Err(StateError::Version(*v)),
        [_, 1] => Ok(Qos2Entry::Incoming),
        [_, 3] => Ok(Qos2Entry::AwaitPubComp),
        [_, 2, rest @ ..] => {
            let m: [u8; 8] = rest
                .try_into()
                .map_err(|_| bad("QoS 2 entry of the wrong length"))?;
            Ok(Qos2Entry::AwaitPubRec(MessageId(u64::from_be_bytes(m))))
        }
        _ => Err(bad("unknown QoS 2 entry")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn sample() -> SessionRecord {
        SessionRecord {
            expiry: 3600,
            left_at: 1_700_000_000_123,
            subs: vec![
                StoredSub {
                    filter: "a/+/c".into(),
                    options: SubOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: 2,
                    },
                    id: Some(268_435_455),
                },
                StoredSub {
                    filter: "#".into(),
                    options: SubOptions::default(),
                    id: None,
                },
            ],
            reuse: vec![(MessageId(u64::MAX), 65535), (MessageId(7), 1)],
            will: Some(StoredWill {
                will: Will {
                    qos: QoS::ExactlyOnce,
                    retain: true,
                    topic: "dev/gone".into(),
                    payload: Bytes::from_static(b"bye"),
                    properties: Properties {
                        will_delay_interval: Some(30),
                        content_type: Some("text/plain".into()),
                        user_properties: vec![("k".into(), "v".into())],
                        ..Properties::default()
                    },
                },
                v5: true,
            }),
        }
    }

    #[test]
    fn a_record_round_trips_and_every_prefix_is_refused() {
        let rec = sample();
        let bytes = encode_session(&rec);
        assert_eq!(decode_session(&bytes).unwrap(), rec);
        for n in 0..bytes.len() {
            assert!(decode_session(&bytes[..n]).is_err(), "prefix of {n} bytes");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(decode_session(&longer), Err(StateError::Trailing(1)));
    }

    #[test]
    fn an_unknown_version_is_refused() {
        let mut bytes = encode_session(&sample()).to_vec();
        bytes[0] = 2;
        assert_eq!(decode_session(&bytes), Err(StateError::Version(2)));
        assert_eq!(decode_qos2(&[9, 1]), Err(StateError::Version(9)));
    }

    #[test]
    fn qos2_entries_and_keys_round_trip() {
        for e in [
            Qos2Entry::Incoming,
            Qos2Entry::AwaitPubRec(MessageId(0x0102_0304_0506_0708)),
            Qos2Entry::AwaitPubComp,
        ] {
            let b = encode_qos2(e);
            assert_eq!(decode_qos2(&b).unwrap(), e);
            for k in 0..b.len() {
                assert!(decode_qos2(&b[..k]).is_err());
            }
        }
        let k = qos2_key("dev/1 x", Dir::Out, 65535);
        assert_eq!(parse_qos2_key(&k), Some(("dev/1 x", Dir::Out, 65535)));
        assert_eq!(
            parse_qos2_key(&qos2_key("", Dir::In, 1)),
            Some(("", Dir::In, 1))
        );
        for bad in ["x", "x\0", "x\0i", "x\0i0", "x\0q1", "x\0i65536", "x\0i+1"] {
            assert_eq!(parse_qos2_key(bad), None, "{bad:?}");
        }
    }
}
