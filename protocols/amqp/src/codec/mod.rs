//! AMQP 0-9-1 frames: bytes ⇄ [`Frame`].
//!
//! Byte layout (spec 2.3.5, 4.2.3):
//!
//! ```text
//! protocol header (client → server, once): 'A' 'M' 'Q' 'P' 0 0 9 1
//! frame:  type:u8  channel:u16  size:u32  payload[size]  0xCE
//!   type 1 method:  class-id:u16 method-id:u16 arguments…
//!   type 2 header:  class-id:u16 weight:u16 body-size:u64 flags:u16… properties…
//!   type 3 body:    body bytes
//!   type 8 heartbeat (channel 0, empty payload)
//! ```
//!
//! [`decode_frame`] checks the declared size against the negotiated frame
//! max *before* buffering the payload (a frame may be at most `frame_max`
//! bytes including its 8 bytes of header and end octet) and slices the
//! payload out of the read buffer without copying (`split_to(n).freeze()`).
//! The methods and the content properties are generated from RabbitMQ's
//! protocol definition ([`methods`]); [`AmqpCodec`] wraps the pure functions
//! as a `tokio_util` decoder/encoder.

mod methods;
mod types;

pub use methods::*;
pub use types::{
    DecodeError, MAX_TABLE_DEPTH, Reader, ShortStr, put_longstr, put_str, put_table, put_value,
};

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The protocol header of AMQP 0-9-1, also what the server answers a wrong
/// header with.
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";

/// Bytes a frame adds around its payload: type, channel, size, end octet.
pub const FRAME_OVERHEAD: u32 = 8;

/// The content header frame's payload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContentHeader {
    pub class_id: u16,
    pub body_size: u64,
    pub properties: BasicProperties,
}

/// One frame (or the protocol header the client opens with).
///
/// A content header is large (its 14 properties) but is moved once, from
/// the decoder to the session: cheaper than boxing it on every publish.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    ProtocolHeader,
    Method { channel: u16, method: Method },
    Header { channel: u16, header: ContentHeader },
    Body { channel: u16, payload: Bytes },
    Heartbeat { channel: u16 },
}

impl Frame {
    pub fn channel(&self) -> u16 {
        match self {
            Frame::ProtocolHeader => 0,
            Frame::Method { channel, .. }
            | Frame::Header { channel, .. }
            | Frame::Body { channel, .. }
            | Frame::Heartbeat { channel } => *channel,
        }
    }
}

/// Decodes the protocol header: `Ok(Some(()))` once the 8 bytes match,
/// `Ok(None)` while they are a matching prefix, an error as soon as a byte
/// differs.
pub fn decode_protocol_header(buf: &mut BytesMut) -> Result<Option<()>, DecodeError> {
    let n = buf.len().min(PROTOCOL_HEADER.len());
    let have = buf.get(..n).unwrap_or_default();
    if have != PROTOCOL_HEADER.get(..n).unwrap_or_default() {
        let mut got = [0u8; 8];
        for (d, s) in got.iter_mut().zip(have) {
            *d = *s;
        }
        return Err(DecodeError::BadProtocolHeader(got));
    }
    if n < PROTOCOL_HEADER.len() {
        buf.reserve(PROTOCOL_HEADER.len() - n);
        return Ok(None);
    }
    buf.advance(PROTOCOL_HEADER.len());
    Ok(Some(()))
}

/// Decodes one frame from the front of `buf`, or returns `Ok(None)` having
/// reserved room for the rest of it. `frame_max` is the largest whole frame
/// accepted (payload + [`FRAME_OVERHEAD`]).
pub fn decode_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, DecodeError> {
    let Some(head) = buf.get(..7) else {
        buf.reserve(7 - buf.len());
        return Ok(None);
    };
    let mut h = head;
    let kind = h.get_u8();
    let channel = h.get_u16();
    let size = h.get_u32();
    if !matches!(
        kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(DecodeError::UnknownFrameType(kind));
    }
    if u64::from(size) + u64::from(FRAME_OVERHEAD) > u64::from(frame_max) {
        return Err(DecodeError::FrameTooLarge {
            size: u64::from(size),
            max: frame_max,
        });
    }
    // Bounded by frame_max, so it fits in usize.
    let total = 7 + size as usize + 1;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(total).freeze();
    let end = frame.get(total - 1).copied().unwrap_or_default();
    if end != FRAME_END {
        return Err(DecodeError::BadFrameEnd(end));
    }
    frame.truncate(total - 1);
    frame.advance(7);
    decode_payload(kind, channel, frame).map(Some)
}

fn decode_payload(kind: u8, channel: u16, payload: Bytes) -> Result<Frame, DecodeError> {
    match kind {
        FRAME_METHOD => {
            let mut r = Reader::new(payload);
            let class_id = r.u16()?;
            let method_id = r.u16()?;
            let method = Method::decode(class_id, method_id, &mut r)?;
            Ok(Frame::Method { channel, method })
        }
        FRAME_HEADER => {
            let mut r = Reader::new(payload);
            let class_id = r.u16()?;
            let _weight = r.u16()?;
            let body_size = r.u64()?;
            let properties = BasicProperties::decode(&mut r)?;
            Ok(Frame::Header {
                channel,
                header: ContentHeader {
                    class_id,
                    body_size,
                    properties,
                },
            })
        }
        FRAME_BODY => Ok(Frame::Body { channel, payload }),
        _ => Ok(Frame::Heartbeat { channel }),
    }
}

/// Starts a frame; returns the offset of its size field.
#[inline]
fn begin(out: &mut BytesMut, kind: u8, channel: u16) -> usize {
    out.put_u8(kind);
    out.put_u16(channel);
    let at = out.len();
    out.put_u32(0);
    at
}

/// Patches the size and appends the frame end.
#[inline]
fn finish(out: &mut BytesMut, at: usize) {
    let size = u32::try_from(out.len() - at - 4).unwrap_or(u32::MAX);
    if let Some(slot) = out.get_mut(at..at + 4) {
        slot.copy_from_slice(&size.to_be_bytes());
    }
    out.put_u8(FRAME_END);
}

/// Appends a method frame.
pub fn encode_method(out: &mut BytesMut, channel: u16, method: &Method) {
    let at = begin(out, FRAME_METHOD, channel);
    out.put_u16(method.class_id());
    out.put_u16(method.method_id());
    method.encode_args(out);
    finish(out, at);
}

/// Appends a `basic.deliver` method frame without building a [`Method`]
/// (the delivery hot path: no allocation). Byte-identical to
/// `encode_method(Method::BasicDeliver(..))`, which the tests check.
pub fn encode_deliver(
    out: &mut BytesMut,
    channel: u16,
    consumer_tag: &ShortStr,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
) {
    let at = begin(out, FRAME_METHOD, channel);
    out.put_u16(60);
    out.put_u16(60);
    types::put_shortstr(out, consumer_tag);
    out.put_u64(delivery_tag);
    out.put_u8(u8::from(redelivered));
    put_str(out, exchange);
    put_str(out, routing_key);
    finish(out, at);
}

/// Appends a content header frame and the body frames, each body frame at
/// most `frame_max` bytes long in all.
pub fn encode_content(
    out: &mut BytesMut,
    channel: u16,
    properties: &BasicProperties,
    body: &[u8],
    frame_max: u32,
) {
    let at = begin(out, FRAME_HEADER, channel);
    out.put_u16(60);
    out.put_u16(0);
    out.put_u64(body.len() as u64);
    properties.encode(out);
    finish(out, at);
    encode_body(out, channel, body, frame_max);
}

/// Appends body frames for `body`, split by `frame_max`.
pub fn encode_body(out: &mut BytesMut, channel: u16, body: &[u8], frame_max: u32) {
    let chunk = frame_max.saturating_sub(FRAME_OVERHEAD).max(1) as usize;
    out.reserve(body.len() + (body.len() / chunk + 1) * FRAME_OVERHEAD as usize);
    for part in body.chunks(chunk) {
        let at = begin(out, FRAME_BODY, channel);
        out.put_slice(part);
        finish(out, at);
    }
}

/// Appends a heartbeat frame.
pub fn encode_heartbeat(out: &mut BytesMut) {
    let at = begin(out, FRAME_HEARTBEAT, 0);
    finish(out, at);
}

/// Appends any frame (body frames as given, not split).
pub fn encode_frame(out: &mut BytesMut, frame: &Frame) {
    match frame {
        Frame::ProtocolHeader => out.put_slice(&PROTOCOL_HEADER),
        Frame::Method { channel, method } => encode_method(out, *channel, method),
        Frame::Header { channel, header } => {
            let at = begin(out, FRAME_HEADER, *channel);
            out.put_u16(header.class_id);
            out.put_u16(0);
            out.put_u64(header.body_size);
            header.properties.encode(out);
            finish(out, at);
        }
        Frame::Body { channel, payload } => {
            let at = begin(out, FRAME_BODY, *channel);
            out.put_slice(payload);
            finish(out, at);
        }
        Frame::Heartbeat { channel } => {
            let at = begin(out, FRAME_HEARTBEAT, *channel);
            finish(out, at);
        }
    }
}

/// The `tokio_util` codec: the protocol header first, then frames. The
/// frame max starts at the spec's minimum (4096) and is raised once
/// `connection.tune-ok` has been received ([`AmqpCodec::set_frame_max`]).
#[derive(Debug, Clone)]
pub struct AmqpCodec {
    frame_max: u32,
    header_done: bool,
}

impl AmqpCodec {
    /// A server-side codec: expects the protocol header first.
    pub fn server() -> AmqpCodec {
        AmqpCodec {
            frame_max: FRAME_MIN_SIZE,
            header_done: false,
        }
    }

    /// A codec that expects frames only (a client's view, or tests).
    pub fn frames(frame_max: u32) -> AmqpCodec {
        AmqpCodec {
            frame_max,
            header_done: true,
        }
    }

    pub fn set_frame_max(&mut self, frame_max: u32) {
        self.frame_max = frame_max;
    }

    pub fn frame_max(&self) -> u32 {
        self.frame_max
    }
}

impl tokio_util::codec::Decoder for AmqpCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if !self.header_done {
            return match decode_protocol_header(src)? {
                Some(()) => {
                    self.header_done = true;
                    Ok(Some(Frame::ProtocolHeader))
                }
                None => Ok(None),
            };
        }
        Ok(decode_frame(src, self.frame_max)?)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        match self.decode(buf)? {
            Some(f) => Ok(Some(f)),
            None if buf.is_empty() => Ok(None),
            None => Err(CodecError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed inside a frame",
            ))),
        }
    }
}

impl tokio_util::codec::Encoder<&Frame> for AmqpCodec {
    type Error = CodecError;

    fn encode(&mut self, item: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_frame(dst, item);
        Ok(())
    }
}

/// A decoding or I/O error of the codec.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
