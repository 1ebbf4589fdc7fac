//! MQTT 5.0 properties (section 2.2.2): one struct with a slot per property,
//! the rules of which property each packet may carry, and their encoding.
//!
//! Layout: a variable byte integer (the length of what follows), then
//! `identifier (variable byte integer) value` pairs. A property other than
//! User Property (and, in PUBLISH, Subscription Identifier) appearing twice,
//! a property a packet may not carry, or a value out of range is a Protocol
//! Error (`[MQTT-2.2.2-2]`, section 3.x.2.2 of each packet).

use super::DecodeError;
use super::wire::{Reader, put_binary, put_str, put_varint, varint_len};
use bytes::{BufMut, Bytes, BytesMut};

/// Property identifiers.
pub mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Which packet (or the will) a property list belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    Connect,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    PubAck,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
    Will,
}

impl Context {
    /// May a property list of this context carry property `p`?
    fn allows(self, p: u8) -> bool {
        use Context as C;
        use id::*;
        match p {
            PAYLOAD_FORMAT_INDICATOR
            | MESSAGE_EXPIRY_INTERVAL
            | CONTENT_TYPE
            | RESPONSE_TOPIC
            | CORRELATION_DATA => matches!(self, C::Publish | C::Will),
            SUBSCRIPTION_IDENTIFIER => matches!(self, C::Publish | C::Subscribe),
            SESSION_EXPIRY_INTERVAL => matches!(self, C::Connect | C::ConnAck | C::Disconnect),
            ASSIGNED_CLIENT_IDENTIFIER
            | SERVER_KEEP_ALIVE
            | RESPONSE_INFORMATION
            | MAXIMUM_QOS
            | RETAIN_AVAILABLE
            | WILDCARD_SUBSCRIPTION_AVAILABLE
            | SUBSCRIPTION_IDENTIFIER_AVAILABLE
            | SHARED_SUBSCRIPTION_AVAILABLE => self == C::ConnAck,
            AUTHENTICATION_METHOD | AUTHENTICATION_DATA => {
                matches!(self, C::Connect | C::ConnAck | C::Auth)
            }
            REQUEST_PROBLEM_INFORMATION | REQUEST_RESPONSE_INFORMATION => self == C::Connect,
            WILL_DELAY_INTERVAL => self == C::Will,
            SERVER_REFERENCE => matches!(self, C::ConnAck | C::Disconnect),
            REASON_STRING => matches!(
                self,
                C::ConnAck | C::PubAck | C::SubAck | C::UnsubAck | C::Disconnect | C::Auth
            ),
            RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | MAXIMUM_PACKET_SIZE => {
                matches!(self, C::Connect | C::ConnAck)
            }
            TOPIC_ALIAS => self == C::Publish,
            USER_PROPERTY => true,
            _ => false,
        }
    }
}

/// Every MQTT 5.0 property; absent ones are `None` / empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    /// PUBLISH may carry several; SUBSCRIBE at most one.
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user_properties: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

/// Largest Subscription Identifier (the largest variable byte integer).
pub const MAX_SUBSCRIPTION_IDENTIFIER: u32 = 268_435_455;

fn once<T>(slot: &mut Option<T>, v: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Protocol("a property appears twice"));
    }
    *slot = Some(v);
    Ok(())
}

fn flag(v: u8, what: &'static str) -> Result<u8, DecodeError> {
    if v > 1 {
        return Err(DecodeError::Protocol(what));
    }
    Ok(v)
}

impl Properties {
    /// True when no property is set.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads a property list (length prefix included) for `ctx`.
    pub(crate) fn decode(r: &mut Reader, ctx: Context) -> Result<Properties, DecodeError> {
        let len = r.varint()? as usize;
        let mut r = r.sub(len)?;
        let mut p = Properties::default();
        while !r.is_empty() {
            let pid = r.varint()?;
            let pid = u8::try_from(pid).map_err(|_| DecodeError::Protocol("unknown property"))?;
            if !ctx.allows(pid) {
                return Err(DecodeError::Protocol("property not allowed in this packet"));
            }
            match pid {
                id::PAYLOAD_FORMAT_INDICATOR => once(
                    &mut p.payload_format_indicator,
                    flag(r.u8()?, "payload format indicator must be 0 or 1")?,
                )?,
                id::MESSAGE_EXPIRY_INTERVAL => once(&mut p.message_expiry_interval, r.u32()?)?,
                id::CONTENT_TYPE => once(&mut p.content_type, r.string()?)?,
                id::RESPONSE_TOPIC => once(&mut p.response_topic, r.string()?)?,
                id::CORRELATION_DATA => once(&mut p.correlation_data, r.binary()?)?,
                id::SUBSCRIPTION_IDENTIFIER => {
                    let v = r.varint()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("subscription identifier 0"));
                    }
                    if ctx == Context::Subscribe && !p.subscription_identifiers.is_empty() {
                        return Err(DecodeError::Protocol("a property appears twice"));
                    }
                    p.subscription_identifiers.push(v);
                }
                id::SESSION_EXPIRY_INTERVAL => once(&mut p.session_expiry_interval, r.u32()?)?,
                id::ASSIGNED_CLIENT_IDENTIFIER => {
                    once(&mut p.assigned_client_identifier, r.string()?)?
                }
                id::SERVER_KEEP_ALIVE => once(&mut p.server_keep_alive, r.u16()?)?,
                id::AUTHENTICATION_METHOD => once(&mut p.authentication_method, r.string()?)?,
                id::AUTHENTICATION_DATA => once(&mut p.authentication_data, r.binary()?)?,
                id::REQUEST_PROBLEM_INFORMATION => once(
                    &mut p.request_problem_information,
                    flag(r.u8()?, "request problem information must be 0 or 1")?,
                )?,
                id::WILL_DELAY_INTERVAL => once(&mut p.will_delay_interval, r.u32()?)?,
                id::REQUEST_RESPONSE_INFORMATION => once(
                    &mut p.request_response_information,
                    flag(r.u8()?, "request response information must be 0 or 1")?,
                )?,
                id::RESPONSE_INFORMATION => once(&mut p.response_information, r.string()?)?,
                id::SERVER_REFERENCE => once(&mut p.server_reference, r.string()?)?,
                id::REASON_STRING => once(&mut p.reason_string, r.string()?)?,
                id::RECEIVE_MAXIMUM => {
                    let v = r.u16()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("receive maximum 0"));
                    }
                    once(&mut p.receive_maximum, v)?
                }
                id::TOPIC_ALIAS_MAXIMUM => once(&mut p.topic_alias_maximum, r.u16()?)?,
                id::TOPIC_ALIAS => {
                    let v = r.u16()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("topic alias 0"));
                    }
                    once(&mut p.topic_alias, v)?
                }
                id::MAXIMUM_QOS => once(
                    &mut p.maximum_qos,
                    flag(r.u8()?, "maximum QoS must be 0 or 1")?,
                )?,
                id::RETAIN_AVAILABLE => once(
                    &mut p.retain_available,
                    flag(r.u8()?, "retain available must be 0 or 1")?,
                )?,
                id::USER_PROPERTY => {
                    let k = r.string()?;
                    let v = r.string()?;
                    p.user_properties.push((k, v));
                }
                id::MAXIMUM_PACKET_SIZE => {
                    let v = r.u32()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("maximum packet size 0"));
                    }
                    once(&mut p.maximum_packet_size, v)?
                }
                id::WILDCARD_SUBSCRIPTION_AVAILABLE => once(
                    &mut p.wildcard_subscription_available,
                    flag(r.u8()?, "wildcard subscription available must be 0 or 1")?,
                )?,
                id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => once(
                    &mut p.subscription_identifier_available,
                    flag(r.u8()?, "subscription identifier available must be 0 or 1")?,
                )?,
                id::SHARED_SUBSCRIPTION_AVAILABLE => once(
                    &mut p.shared_subscription_available,
                    flag(r.u8()?, "shared subscription available must be 0 or 1")?,
                )?,
                _ => return Err(DecodeError::Protocol("unknown property")),
            }
        }
        Ok(p)
    }

    /// Bytes of the property list without its length prefix.
    pub fn len(&self) -> usize {
        let s = |o: &Option<String>| o.as_ref().map_or(0, |v| 3 + v.len());
        let b = |o: &Option<Bytes>| o.as_ref().map_or(0, |v| 3 + v.len());
        let n8 = |o: &Option<u8>| if o.is_some() { 2 } else { 0 };
        let n16 = |o: &Option<u16>| if o.is_some() { 3 } else { 0 };
        let n32 = |o: &Option<u32>| if o.is_some() { 5 } else { 0 };
        n8(&self.payload_format_indicator)
            + n32(&self.message_expiry_interval)
            + s(&self.content_type)
            + s(&self.response_topic)
            + b(&self.correlation_data)
            + self
                .subscription_identifiers
                .iter()
                .map(|v| 1 + varint_len(*v as usize))
                .sum::<usize>()
            + n32(&self.session_expiry_interval)
            + s(&self.assigned_client_identifier)
            + n16(&self.server_keep_alive)
            + s(&self.authentication_method)
            + b(&self.authentication_data)
            + n8(&self.request_problem_information)
            + n32(&self.will_delay_interval)
            + n8(&self.request_response_information)
            + s(&self.response_information)
            + s(&self.server_reference)
            + s(&self.reason_string)
            + n16(&self.receive_maximum)
            + n16(&self.topic_alias_maximum)
            + n16(&self.topic_alias)
            + n8(&self.maximum_qos)
            + n8(&self.retain_available)
            + self
                .user_properties
                .iter()
                .map(|(k, v)| 5 + k.len() + v.len())
                .sum::<usize>()
            + n32(&self.maximum_packet_size)
            + n8(&self.wildcard_subscription_available)
            + n8(&self.subscription_identifier_available)
            + n8(&self.shared_subscription_available)
    }

    /// Bytes of the property list with its length prefix.
    pub fn wire_len(&self) -> usize {
        let n = self.len();
        varint_len(n) + n
    }

    /// Writes the property list with its length prefix.
    pub fn encode(&self, out: &mut BytesMut) {
        put_varint(out, self.len());
        let u8p = |out: &mut BytesMut, pid: u8, v: &Option<u8>| {
            if let Some(v) = v {
                out.put_u8(pid);
                out.put_u8(*v);
            }
        };
        let u16p = |out: &mut BytesMut, pid: u8, v: &Option<u16>| {
            if let Some(v) = v {
                out.put_u8(pid);
                out.put_u16(*v);
            }
        };
        let u32p = |out: &mut BytesMut, pid: u8, v: &Option<u32>| {
            if let Some(v) = v {
                out.put_u8(pid);
                out.put_u32(*v);
            }
        };
        let sp = |out: &mut BytesMut, pid: u8, v: &Option<String>| {
            if let Some(v) = v {
                out.put_u8(pid);
                put_str(out, v);
            }
        };
        let bp = |out: &mut BytesMut, pid: u8, v: &Option<Bytes>| {
            if let Some(v) = v {
                out.put_u8(pid);
                put_binary(out, v);
            }
        };
        u8p(
            out,
            id::PAYLOAD_FORMAT_INDICATOR,
            &self.payload_format_indicator,
        );
        u32p(
            out,
            id::MESSAGE_EXPIRY_INTERVAL,
            &self.message_expiry_interval,
        );
        sp(out, id::CONTENT_TYPE, &self.content_type);
        sp(out, id::RESPONSE_TOPIC, &self.response_topic);
        bp(out, id::CORRELATION_DATA, &self.correlation_data);
        for v in &self.subscription_identifiers {
            out.put_u8(id::SUBSCRIPTION_IDENTIFIER);
            put_varint(out, *v as usize);
        }
        u32p(
            out,
            id::SESSION_EXPIRY_INTERVAL,
            &self.session_expiry_interval,
        );
        sp(
            out,
            id::ASSIGNED_CLIENT_IDENTIFIER,
            &self.assigned_client_identifier,
        );
        u16p(out, id::SERVER_KEEP_ALIVE, &self.server_keep_alive);
        sp(out, id::AUTHENTICATION_METHOD, &self.authentication_method);
        bp(out, id::AUTHENTICATION_DATA, &self.authentication_data);
        u8p(
            out,
            id::REQUEST_PROBLEM_INFORMATION,
            &self.request_problem_information,
        );
        u32p(out, id::WILL_DELAY_INTERVAL, &self.will_delay_interval);
        u8p(
            out,
            id::REQUEST_RESPONSE_INFORMATION,
            &self.request_response_information,
        );
        sp(out, id::RESPONSE_INFORMATION, &self.response_information);
        sp(out, id::SERVER_REFERENCE, &self.server_reference);
        sp(out, id::REASON_STRING, &self.reason_string);
        u16p(out, id::RECEIVE_MAXIMUM, &self.receive_maximum);
        u16p(out, id::TOPIC_ALIAS_MAXIMUM, &self.topic_alias_maximum);
        u16p(out, id::TOPIC_ALIAS, &self.topic_alias);
        u8p(out, id::MAXIMUM_QOS, &self.maximum_qos);
        u8p(out, id::RETAIN_AVAILABLE, &self.retain_available);
        for (k, v) in &self.user_properties {
            out.put_u8(id::USER_PROPERTY);
            put_str(out, k);
            put_str(out, v);
        }
        u32p(out, id::MAXIMUM_PACKET_SIZE, &self.maximum_packet_size);
        u8p(
            out,
            id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            &self.wildcard_subscription_available,
        );
        u8p(
            out,
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            &self.subscription_identifier_available,
        );
        u8p(
            out,
            id::SHARED_SUBSCRIPTION_AVAILABLE,
            &self.shared_subscription_available,
        );
    }
}
