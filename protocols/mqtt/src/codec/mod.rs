//! The MQTT 3.1.1 and 5.0 codec: bytes ⇄ [`Packet`]s, as pure functions.
//!
//! # Byte layout (section 2)
//!
//! ```text
//! byte 0      packet type (high nibble) | flags (low nibble)
//! 1..=4 bytes remaining length, a variable byte integer (7 bits a byte,
//!             high bit = "more"), at most 268 435 455
//! ...         variable header and payload: remaining-length bytes
//! ```
//!
//! [`Decoder::decode`] reads the fixed header first and checks the packet's
//! total size against the maximum packet size **before** any of it is
//! buffered (so a client cannot make the server hold more than the limit);
//! a packet is then cut out of the read buffer with `split_to(n).freeze()`,
//! and its payload and topic stay slices of that one allocation (zero-copy).
//! `Ok(None)` means "need more bytes"; every `Err` is a Malformed Packet or
//! Protocol Error and closes the connection (section 4.13).
//!
//! Which packets are legal depends on the protocol level the CONNECT chose:
//! the decoder starts with none (only CONNECT is accepted, `[MQTT-3.1.0-1]`)
//! and is told the level afterwards.

mod packet;
pub mod props;
mod wire;

pub use packet::{
    Ack, Auth, ConnAck, Connect, Disconnect, Packet, Publish, QoS, SubAck, SubOptions, Subscribe,
    UnsubAck, Unsubscribe, Version, Will, kind, reason,
};
pub use props::{Context, Properties};
pub(crate) use wire::Reader;
pub use wire::{MAX_VARINT, check_utf8, put_binary, put_str, put_varint, varint_len};

use bytes::{BufMut, Bytes, BytesMut};

/// Why bytes are not a valid packet. Each maps to the 5.0 reason code the
/// server answers with ([`DecodeError::reason_code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Cannot be parsed as the spec lays it out (reason 0x81).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// Parses, but breaks a rule of the protocol (reason 0x82).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// Larger than the maximum packet size (reason 0x95).
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    TooLarge { size: usize, max: usize },
    /// A CONNECT for a protocol name or level the server does not speak
    /// (CONNACK 0x01 in 3.1.1, 0x84 in 5.0).
    #[error("unsupported protocol level {0}")]
    UnsupportedVersion(u8),
    /// The first packet was not CONNECT: the connection is closed without
    /// an answer (`[MQTT-3.1.0-1]`).
    #[error("the first packet must be CONNECT")]
    NotConnect,
}

impl DecodeError {
    /// The 5.0 reason code for a DISCONNECT (or CONNACK) about this error.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::Malformed(_) | DecodeError::NotConnect => reason::MALFORMED_PACKET,
            DecodeError::Protocol(_) => reason::PROTOCOL_ERROR,
            DecodeError::TooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::UnsupportedVersion(_) => reason::UNSUPPORTED_PROTOCOL_VERSION,
        }
    }
}

/// Reads the fixed header at the start of `buf`: `Ok(None)` if incomplete,
/// else `(header bytes, total packet bytes)`. Checks the total against
/// `max` before anything else is read.
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut remaining: usize = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            let header = 2 + i;
            let total = header + remaining;
            if total > max {
                return Err(DecodeError::TooLarge { size: total, max });
            }
            return Ok(Some((header, total)));
        }
    }
    Err(DecodeError::Malformed(
        "remaining length longer than 4 bytes",
    ))
}

/// The decoding side of one connection: the protocol level once known,
/// and the maximum packet size this side accepts.
#[derive(Debug, Clone)]
pub struct Decoder {
    version: Option<Version>,
    max_packet_size: usize,
}

impl Decoder {
    /// A decoder that expects CONNECT first.
    pub fn new(max_packet_size: usize) -> Self {
        Decoder {
            version: None,
            max_packet_size,
        }
    }

    /// A decoder for a connection already at `version` (clients, tests).
    pub fn with_version(version: Version, max_packet_size: usize) -> Self {
        Decoder {
            version: Some(version),
            max_packet_size,
        }
    }

    pub fn version(&self) -> Option<Version> {
        self.version
    }

    pub fn set_version(&mut self, v: Version) {
        self.version = Some(v);
    }

    pub fn max_packet_size(&self) -> usize {
        self.max_packet_size
    }

    /// Decodes one packet from the front of `buf`. `Ok(None)`: more bytes
    /// are needed (the caller reads more; `buf` is unchanged).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        if self.version.is_none() && first >> 4 != kind::CONNECT {
            return Err(DecodeError::NotConnect);
        }
        let Some((header, total)) = frame_len(buf, self.max_packet_size)? else {
            return Ok(None);
        };
        if buf.len() < total {
            return Ok(None);
        }
        let mut frame = buf.split_to(total).freeze();
        let body = frame.split_off(header);
        let packet = decode_packet(first, body, self.version)?;
        if let Packet::Connect(c) = &packet
            && self.version.is_none()
        {
            self.version = Some(c.version());
        }
        Ok(Some(packet))
    }

    /// How many more bytes the packet at the front of `buf` needs, when its
    /// header is complete (for a read buffer to reserve exactly that).
    pub fn shortfall(&self, buf: &[u8]) -> Option<usize> {
        match frame_len(buf, self.max_packet_size) {
            Ok(Some((_, total))) => total.checked_sub(buf.len()),
            _ => None,
        }
    }
}

fn fixed_flags(first: u8, want: u8) -> Result<(), DecodeError> {
    if first & 0x0F != want {
        return Err(DecodeError::Malformed(
            "reserved fixed-header flags are wrong [MQTT-2.2.2-2]",
        ));
    }
    Ok(())
}

fn packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    let id = r.u16()?;
    if id == 0 {
        return Err(DecodeError::Malformed("packet identifier 0 [MQTT-2.2.1-3]"));
    }
    Ok(id)
}

fn done(r: &Reader) -> Result<(), DecodeError> {
    if !r.is_empty() {
        return Err(DecodeError::Malformed(
            "bytes left over after the packet's fields",
        ));
    }
    Ok(())
}

/// Decodes the body of one packet whose first byte is `first`.
pub fn decode_packet(
    first: u8,
    body: Bytes,
    version: Option<Version>,
) -> Result<Packet, DecodeError> {
    let mut r = Reader::new(body);
    let v5 = version == Some(Version::V5);
    let t = first >> 4;
    if t != kind::CONNECT && version.is_none() {
        return Err(DecodeError::NotConnect);
    }
    let packet = match t {
        kind::CONNECT => {
            // A second CONNECT is a Protocol Error [MQTT-3.1.0-2]; it is
            // decoded all the same and the session layer answers it.
            fixed_flags(first, 0)?;
            Packet::Connect(Box::new(decode_connect(&mut r)?))
        }
        kind::CONNACK => {
            fixed_flags(first, 0)?;
            let flags = r.u8()?;
            if flags & 0xFE != 0 {
                return Err(DecodeError::Malformed("CONNACK reserved flags set"));
            }
            let code = r.u8()?;
            let properties = if v5 && !r.is_empty() {
                Properties::decode(&mut r, Context::ConnAck)?
            } else {
                Properties::default()
            };
            Packet::ConnAck(ConnAck {
                session_present: flags & 1 == 1,
                code,
                properties,
            })
        }
        kind::PUBLISH => {
            let qos = QoS::from_bits((first >> 1) & 3)
                .ok_or(DecodeError::Malformed("PUBLISH with QoS 3 [MQTT-3.3.1-4]"))?;
            let dup = first & 0x08 != 0;
            if dup && qos == QoS::AtMostOnce {
                return Err(DecodeError::Malformed(
                    "DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]",
                ));
            }
            let topic = r.utf8()?;
            let packet_id = if qos == QoS::AtMostOnce {
                0
            } else {
                packet_id(&mut r)?
            };
            let properties = if v5 {
                Properties::decode(&mut r, Context::Publish)?
            } else {
                Properties::default()
            };
            Packet::Publish(Publish {
                dup,
                qos,
                retain: first & 1 != 0,
                topic,
                packet_id,
                properties,
                payload: r.rest(),
            })
        }
        kind::PUBACK | kind::PUBREC | kind::PUBREL | kind::PUBCOMP => {
            fixed_flags(first, if t == kind::PUBREL { 2 } else { 0 })?;
            let packet_id = packet_id(&mut r)?;
            let mut ack = Ack::new(packet_id, 0);
            if v5 {
                if !r.is_empty() {
                    ack.reason = r.u8()?;
                }
                if !r.is_empty() {
                    ack.properties = Properties::decode(&mut r, Context::PubAck)?;
                }
            }
            done(&r)?;
            match t {
                kind::PUBACK => Packet::PubAck(ack),
                kind::PUBREC => Packet::PubRec(ack),
                kind::PUBREL => Packet::PubRel(ack),
                _ => Packet::PubComp(ack),
            }
        }
        kind::SUBSCRIBE => {
            fixed_flags(first, 2)?;
            let packet_id = packet_id(&mut r)?;
            let properties = if v5 {
                Properties::decode(&mut r, Context::Subscribe)?
            } else {
                Properties::default()
            };
            let mut filters = Vec::new();
            while !r.is_empty() {
                let filter = r.string()?;
                if filter.is_empty() {
                    return Err(DecodeError::Malformed("empty topic filter [MQTT-4.7.3-1]"));
                }
                let o = r.u8()?;
                let qos = QoS::from_bits(o & 3)
                    .ok_or(DecodeError::Malformed("subscription QoS 3 [MQTT-3.8.3-4]"))?;
                let options = if v5 {
                    if o & 0xC0 != 0 {
                        return Err(DecodeError::Malformed(
                            "reserved subscription option bits set [MQTT-3.8.3-5]",
                        ));
                    }
                    let retain_handling = (o >> 4) & 3;
                    if retain_handling == 3 {
                        return Err(DecodeError::Protocol("retain handling 3"));
                    }
                    SubOptions {
                        qos,
                        no_local: o & 0x04 != 0,
                        retain_as_published: o & 0x08 != 0,
                        retain_handling,
                    }
                } else {
                    if o & 0xFC != 0 {
                        return Err(DecodeError::Malformed(
                            "reserved subscription option bits set [MQTT-3-8.3-4]",
                        ));
                    }
                    SubOptions {
                        qos,
                        ..SubOptions::default()
                    }
                };
                filters.push((filter, options));
            }
            if filters.is_empty() {
                return Err(DecodeError::Protocol(
                    "SUBSCRIBE without a topic filter [MQTT-3.8.3-3]",
                ));
            }
            Packet::Subscribe(Subscribe {
                packet_id,
                properties,
                filters,
            })
        }
        kind::SUBACK => {
            fixed_flags(first, 0)?;
            let packet_id = packet_id(&mut r)?;
            let properties = if v5 {
                Properties::decode(&mut r, Context::SubAck)?
            } else {
                Properties::default()
            };
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                codes: r.rest().to_vec(),
            })
        }
        kind::UNSUBSCRIBE => {
            fixed_flags(first, 2)?;
            let packet_id = packet_id(&mut r)?;
            let properties = if v5 {
                Properties::decode(&mut r, Context::Unsubscribe)?
            } else {
                Properties::default()
            };
            let mut filters = Vec::new();
            while !r.is_empty() {
                let filter = r.string()?;
                if filter.is_empty() {
                    return Err(DecodeError::Malformed("empty topic filter [MQTT-4.7.3-1]"));
                }
                filters.push(filter);
            }
            if filters.is_empty() {
                return Err(DecodeError::Protocol(
                    "UNSUBSCRIBE without a topic filter [MQTT-3.10.3-2]",
                ));
            }
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters,
            })
        }
        kind::UNSUBACK => {
            fixed_flags(first, 0)?;
            let packet_id = packet_id(&mut r)?;
            let (properties, codes) = if v5 {
                (
                    Properties::decode(&mut r, Context::UnsubAck)?,
                    r.rest().to_vec(),
                )
            } else {
                (Properties::default(), Vec::new())
            };
            done(&r)?;
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                codes,
            })
        }
        kind::PINGREQ | kind::PINGRESP => {
            fixed_flags(first, 0)?;
            done(&r)?;
            if t == kind::PINGREQ {
                Packet::PingReq
            } else {
                Packet::PingResp
            }
        }
        kind::DISCONNECT => {
            fixed_flags(first, 0)?;
            let mut d = Disconnect::default();
            if v5 {
                if !r.is_empty() {
                    d.reason = r.u8()?;
                }
                if !r.is_empty() {
                    d.properties = Properties::decode(&mut r, Context::Disconnect)?;
                }
            }
            done(&r)?;
            Packet::Disconnect(d)
        }
        kind::AUTH if v5 => {
            fixed_flags(first, 0)?;
            let mut a = Auth::default();
            if !r.is_empty() {
                a.reason = r.u8()?;
            }
            if !r.is_empty() {
                a.properties = Properties::decode(&mut r, Context::Auth)?;
            }
            done(&r)?;
            Packet::Auth(a)
        }
        _ => return Err(DecodeError::Malformed("reserved packet type")),
    };
    Ok(packet)
}

fn decode_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    match (&name[..], level) {
        (b"MQTT", 4 | 5) | (b"MQIsdp", 3) => {}
        _ => return Err(DecodeError::UnsupportedVersion(level)),
    }
    let v5 = level == 5;
    let flags = r.u8()?;
    if flags & 1 != 0 {
        return Err(DecodeError::Malformed(
            "CONNECT reserved flag set [MQTT-3.1.2-3]",
        ));
    }
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 3;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::Malformed(
            "will QoS or retain set without a will [MQTT-3.1.2-11]",
        ));
    }
    let will_qos =
        QoS::from_bits(will_qos).ok_or(DecodeError::Malformed("will QoS 3 [MQTT-3.1.2-12]"))?;
    if !v5 && has_password && !has_username {
        return Err(DecodeError::Malformed(
            "password without a user name [MQTT-3.1.2-22]",
        ));
    }
    let keep_alive = r.u16()?;
    let properties = if v5 {
        Properties::decode(r, Context::Connect)?
    } else {
        Properties::default()
    };
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = if v5 {
            Properties::decode(r, Context::Will)?
        } else {
            Properties::default()
        };
        let topic = r.string()?;
        let payload = r.binary()?;
        Some(Will {
            qos: will_qos,
            retain: will_retain,
            topic,
            payload,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string()?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary()?)
    } else {
        None
    };
    done(r)?;
    Ok(Connect {
        level,
        clean_start: flags & 0x02 != 0,
        keep_alive,
        properties,
        client_id,
        will,
        username,
        password,
    })
}

/// Writes the fixed header of a packet whose body is `remaining` bytes.
#[inline]
pub fn put_header(out: &mut BytesMut, first: u8, remaining: usize) {
    out.put_u8(first);
    put_varint(out, remaining);
}

/// Writes PUBACK, PUBREC, PUBREL or PUBCOMP (`kind`) without properties:
/// the per-message acknowledgement path, with nothing to allocate or size.
/// A 5.0 success omits the reason code (remaining length 2).
#[inline]
pub fn encode_ack(out: &mut BytesMut, ack_kind: u8, packet_id: u16, reason: u8, version: Version) {
    let first = (ack_kind << 4) | if ack_kind == kind::PUBREL { 2 } else { 0 };
    out.reserve(5);
    out.put_u8(first);
    if version.is_v5() && reason != 0 {
        out.put_u8(3);
        out.put_u16(packet_id);
        out.put_u8(reason);
    } else {
        out.put_u8(2);
        out.put_u16(packet_id);
    }
}

/// Size of an acknowledgement's body (PUBACK..PUBCOMP).
fn ack_len(a: &Ack, v5: bool) -> usize {
    if !v5 || (a.reason == 0 && a.properties.is_empty()) {
        2
    } else if a.properties.is_empty() {
        3
    } else {
        3 + a.properties.wire_len()
    }
}

/// Bytes the whole of `p` takes on the wire at `version`.
pub fn encoded_len(p: &Packet, version: Version) -> usize {
    let body = body_len(p, version);
    1 + varint_len(body) + body
}

fn props_len(p: &Properties, v5: bool) -> usize {
    if v5 { p.wire_len() } else { 0 }
}

fn body_len(p: &Packet, version: Version) -> usize {
    let v5 = version.is_v5();
    match p {
        Packet::Connect(c) => {
            let name = if c.level == 3 { 6 } else { 4 };
            let mut n = 2 + name + 1 + 1 + 2 + props_len(&c.properties, c.level == 5);
            n += 2 + c.client_id.len();
            if let Some(w) = &c.will {
                n += props_len(&w.properties, c.level == 5)
                    + 2
                    + w.topic.len()
                    + 2
                    + w.payload.len();
            }
            if let Some(u) = &c.username {
                n += 2 + u.len();
            }
            if let Some(pw) = &c.password {
                n += 2 + pw.len();
            }
            n
        }
        Packet::ConnAck(c) => 2 + props_len(&c.properties, v5),
        Packet::Publish(p) => {
            2 + p.topic.len()
                + if p.qos == QoS::AtMostOnce { 0 } else { 2 }
                + props_len(&p.properties, v5)
                + p.payload.len()
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            ack_len(a, v5)
        }
        Packet::Subscribe(s) => {
            2 + props_len(&s.properties, v5)
                + s.filters.iter().map(|(f, _)| 3 + f.len()).sum::<usize>()
        }
        Packet::SubAck(s) => 2 + props_len(&s.properties, v5) + s.codes.len(),
        Packet::Unsubscribe(u) => {
            2 + props_len(&u.properties, v5) + u.filters.iter().map(|f| 2 + f.len()).sum::<usize>()
        }
        Packet::UnsubAck(u) => {
            if v5 {
                2 + u.properties.wire_len() + u.codes.len()
            } else {
                2
            }
        }
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => reason_props_len(d.reason, &d.properties, v5),
        Packet::Auth(a) => reason_props_len(a.reason, &a.properties, v5),
    }
}

fn reason_props_len(reason: u8, props: &Properties, v5: bool) -> usize {
    if !v5 || (reason == 0 && props.is_empty()) {
        0
    } else {
        1 + props.wire_len()
    }
}

/// Writes `p` as `version` speaks it.
pub fn encode(p: &Packet, version: Version, out: &mut BytesMut) {
    let v5 = version.is_v5();
    let body = body_len(p, version);
    out.reserve(1 + varint_len(body) + body);
    match p {
        Packet::Connect(c) => {
            put_header(out, kind::CONNECT << 4, body);
            let cv5 = c.level == 5;
            put_binary(out, if c.level == 3 { b"MQIsdp" } else { b"MQTT" });
            out.put_u8(c.level);
            let mut flags = 0u8;
            if c.clean_start {
                flags |= 0x02;
            }
            if let Some(w) = &c.will {
                flags |= 0x04 | (w.qos.bits() << 3);
                if w.retain {
                    flags |= 0x20;
                }
            }
            if c.password.is_some() {
                flags |= 0x40;
            }
            if c.username.is_some() {
                flags |= 0x80;
            }
            out.put_u8(flags);
            out.put_u16(c.keep_alive);
            if cv5 {
                c.properties.encode(out);
            }
            put_str(out, &c.client_id);
            if let Some(w) = &c.will {
                if cv5 {
                    w.properties.encode(out);
                }
                put_str(out, &w.topic);
                put_binary(out, &w.payload);
            }
            if let Some(u) = &c.username {
                put_str(out, u);
            }
            if let Some(pw) = &c.password {
                put_binary(out, pw);
            }
        }
        Packet::ConnAck(c) => {
            put_header(out, kind::CONNACK << 4, body);
            out.put_u8(u8::from(c.session_present));
            out.put_u8(c.code);
            if v5 {
                c.properties.encode(out);
            }
        }
        Packet::Publish(p) => {
            let first = (kind::PUBLISH << 4)
                | (u8::from(p.dup) << 3)
                | (p.qos.bits() << 1)
                | u8::from(p.retain);
            put_header(out, first, body);
            put_binary(out, &p.topic);
            if p.qos != QoS::AtMostOnce {
                out.put_u16(p.packet_id);
            }
            if v5 {
                p.properties.encode(out);
            }
            out.put_slice(&p.payload);
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            let t = match p {
                Packet::PubAck(_) => kind::PUBACK << 4,
                Packet::PubRec(_) => kind::PUBREC << 4,
                Packet::PubRel(_) => (kind::PUBREL << 4) | 2,
                _ => kind::PUBCOMP << 4,
            };
            put_header(out, t, body);
            out.put_u16(a.packet_id);
            if body >= 3 {
                out.put_u8(a.reason);
            }
            if body > 3 {
                a.properties.encode(out);
            }
        }
        Packet::Subscribe(s) => {
            put_header(out, (kind::SUBSCRIBE << 4) | 2, body);
            out.put_u16(s.packet_id);
            if v5 {
                s.properties.encode(out);
            }
            for (f, o) in &s.filters {
                put_str(out, f);
                let mut b = o.qos.bits();
                if v5 {
                    b |= u8::from(o.no_local) << 2
                        | u8::from(o.retain_as_published) << 3
                        | (o.retain_handling & 3) << 4;
                }
                out.put_u8(b);
            }
        }
        Packet::SubAck(s) => {
            put_header(out, kind::SUBACK << 4, body);
            out.put_u16(s.packet_id);
            if v5 {
                s.properties.encode(out);
            }
            out.put_slice(&s.codes);
        }
        Packet::Unsubscribe(u) => {
            put_header(out, (kind::UNSUBSCRIBE << 4) | 2, body);
            out.put_u16(u.packet_id);
            if v5 {
                u.properties.encode(out);
            }
            for f in &u.filters {
                put_str(out, f);
            }
        }
        Packet::UnsubAck(u) => {
            put_header(out, kind::UNSUBACK << 4, body);
            out.put_u16(u.packet_id);
            if v5 {
                u.properties.encode(out);
                out.put_slice(&u.codes);
            }
        }
        Packet::PingReq => put_header(out, kind::PINGREQ << 4, 0),
        Packet::PingResp => put_header(out, kind::PINGRESP << 4, 0),
        Packet::Disconnect(d) => {
            put_header(out, kind::DISCONNECT << 4, body);
            if body > 0 {
                out.put_u8(d.reason);
                d.properties.encode(out);
            }
        }
        Packet::Auth(a) => {
            put_header(out, kind::AUTH << 4, body);
            if body > 0 {
                out.put_u8(a.reason);
                a.properties.encode(out);
            }
        }
    }
}

/// A `tokio_util` codec over [`Decoder`] and [`encode`], for clients and
/// tests that want a `Framed` stream. The server's driver calls the pure
/// functions directly.
#[derive(Debug, Clone)]
pub struct MqttCodec {
    pub decoder: Decoder,
    /// The level packets are encoded at.
    pub version: Version,
}

impl tokio_util::codec::Decoder for MqttCodec {
    type Item = Packet;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, std::io::Error> {
        self.decoder
            .decode(src)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

impl tokio_util::codec::Encoder<Packet> for MqttCodec {
    type Error = std::io::Error;

    fn encode(&mut self, p: Packet, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        encode(&p, self.version, dst);
        Ok(())
    }
}
