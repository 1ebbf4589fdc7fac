//! AMQP 0-9-1 domain types on the wire: integers (big-endian), packed bits,
//! `shortstr` (length octet + bytes), `longstr` (length long + bytes) and
//! field tables (length long + `shortstr name, type octet, value`*).
//!
//! Field-table value types are RabbitMQ's (the 0-9-1 errata, which every
//! client follows): `t` bool, `b` i8, `B` u8, `s` i16, `u` u16, `I` i32,
//! `i` u32, `l` i64, `f` f32, `d` f64, `D` decimal, `S` long string, `x`
//! byte array, `T` timestamp, `A` array, `F` table, `V` void. They map 1:1
//! to [`switchyard_model::Value`]; a long string that is not UTF-8 becomes
//! `Value::Bytes` (and goes out as `x`). `U` (i16) and `L` (i64), which some
//! old clients send, are read too.
//!
//! Reading never copies: strings and byte arrays are slices of the frame's
//! `Bytes`; only table names and string values become `Arc<str>`.

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;
use std::sync::Arc;
use switchyard_model::{Headers, Value};

/// Deepest nesting of tables and arrays accepted (a hostile frame could
/// otherwise recurse once per 5 bytes).
pub const MAX_TABLE_DEPTH: usize = 32;

/// Why bytes could not be decoded. Each variant says which AMQP reply code
/// the connection is closed with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The 8-byte protocol header is not `AMQP 0 0 9 1`. The server answers
    /// with its own header and closes (spec 4.2.2).
    #[error("bad protocol header {0:?}")]
    BadProtocolHeader([u8; 8]),
    /// The frame declares a payload larger than the negotiated frame max.
    #[error("frame of {size} bytes exceeds the negotiated maximum of {max}")]
    FrameTooLarge { size: u64, max: u32 },
    /// The frame-end octet is not 0xCE.
    #[error("frame end octet is {0:#04x}, not 0xce")]
    BadFrameEnd(u8),
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    /// A method the spec does not define.
    #[error("unknown method: class {class_id}, method {method_id}")]
    UnknownMethod { class_id: u16, method_id: u16 },
    /// A field is cut short, has an unknown type, or is otherwise invalid.
    #[error("malformed {0}")]
    Malformed(&'static str),
}

impl DecodeError {
    /// The reply code of the `connection.close` this error is answered with.
    pub fn reply_code(&self) -> u16 {
        match self {
            DecodeError::BadProtocolHeader(_) => 0,
            DecodeError::FrameTooLarge { .. }
            | DecodeError::BadFrameEnd(_)
            | DecodeError::UnknownFrameType(_)
            // RabbitMQ answers undecodable arguments with FRAME_ERROR
            // ("cannot decode"), not SYNTAX_ERROR.
            | DecodeError::Malformed(_) => super::FRAME_ERROR,
            // RabbitMQ 3.10 drops the TCP connection without a close; we
            // close cleanly with the spec's NOT_IMPLEMENTED.
            DecodeError::UnknownMethod { .. } => super::NOT_IMPLEMENTED,
        }
    }
}

/// An AMQP `shortstr`: at most 255 bytes, kept as a slice of the frame.
/// Names (exchanges, queues, routing keys, consumer tags) are shortstrs.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ShortStr(Bytes);

impl ShortStr {
    pub const MAX: usize = 255;

    /// A static string (must be at most 255 bytes; longer is cut).
    pub fn from_static(s: &'static str) -> ShortStr {
        let b = Bytes::from_static(s.as_bytes());
        ShortStr(b.slice(..s.len().min(Self::MAX)))
    }

    /// Wraps bytes; `None` when longer than 255.
    pub fn new(b: Bytes) -> Option<ShortStr> {
        (b.len() <= Self::MAX).then_some(ShortStr(b))
    }

    /// Copies `s`, cut to 255 bytes at a character boundary.
    pub fn copy(s: &str) -> ShortStr {
        let mut end = s.len().min(Self::MAX);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        ShortStr(Bytes::copy_from_slice(
            s.as_bytes().get(..end).unwrap_or_default(),
        ))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The string, when it is UTF-8.
    pub fn to_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.0)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

impl From<&'static str> for ShortStr {
    fn from(s: &'static str) -> Self {
        ShortStr::from_static(s)
    }
}

/// A cursor over a frame payload.
#[derive(Debug)]
pub struct Reader {
    buf: Bytes,
    pos: usize,
}

macro_rules! read_int {
    ($name:ident, $t:ty) => {
        #[inline]
        pub fn $name(&mut self) -> Result<$t, DecodeError> {
            const N: usize = std::mem::size_of::<$t>();
            let end = self.pos + N;
            let arr: [u8; N] = self
                .buf
                .get(self.pos..end)
                .and_then(|s| s.try_into().ok())
                .ok_or(DecodeError::Malformed("field: payload cut short"))?;
            self.pos = end;
            Ok(<$t>::from_be_bytes(arr))
        }
    };
}

impl Reader {
    pub fn new(buf: Bytes) -> Reader {
        Reader { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    read_int!(u8, u8);
    read_int!(u16, u16);
    read_int!(u32, u32);
    read_int!(u64, u64);
    read_int!(i8, i8);
    read_int!(i16, i16);
    read_int!(i32, i32);
    read_int!(i64, i64);

    #[inline]
    fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Malformed("field: payload cut short"));
        }
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    /// The rest of the payload.
    pub fn rest(&mut self) -> Bytes {
        let b = self.buf.slice(self.pos.min(self.buf.len())..);
        self.pos = self.buf.len();
        b
    }

    pub fn shortstr(&mut self) -> Result<ShortStr, DecodeError> {
        let n = usize::from(self.u8()?);
        Ok(ShortStr(self.take(n)?))
    }

    pub fn longstr(&mut self) -> Result<Bytes, DecodeError> {
        let n = usize::try_from(self.u32()?).map_err(|_| DecodeError::Malformed("longstr"))?;
        self.take(n)
    }

    /// A field table.
    pub fn table(&mut self) -> Result<Headers, DecodeError> {
        self.table_at(0)
    }

    fn table_at(&mut self, depth: usize) -> Result<Headers, DecodeError> {
        if depth > MAX_TABLE_DEPTH {
            return Err(DecodeError::Malformed("field table: nested too deep"));
        }
        let body = self.longstr()?;
        let mut r = Reader::new(body);
        let mut out = Vec::new();
        while r.remaining() > 0 {
            let name = r.shortstr()?;
            let name: Arc<str> = match name.to_str() {
                Ok(s) => Arc::from(s),
                Err(_) => Arc::from(String::from_utf8_lossy(name.as_bytes()).as_ref()),
            };
            let v = r.value(depth)?;
            out.push((name, v));
        }
        Ok(out.into_iter().collect())
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        Ok(match self.u8()? {
            b't' => Value::Bool(self.u8()? != 0),
            b'b' => Value::I8(self.i8()?),
            b'B' => Value::U8(self.u8()?),
            b's' | b'U' => Value::I16(self.i16()?),
            b'u' => Value::U16(self.u16()?),
            b'I' => Value::I32(self.i32()?),
            b'i' => Value::U32(self.u32()?),
            b'l' | b'L' => Value::I64(self.i64()?),
            b'f' => Value::F32(f32::from_bits(self.u32()?)),
            b'd' => Value::F64(f64::from_bits(self.u64()?)),
            b'D' => {
                let scale = self.u8()?;
                let value = self.u32()?;
                Value::Decimal { scale, value }
            }
            b'S' => {
                let b = self.longstr()?;
                match std::str::from_utf8(&b) {
                    Ok(s) => Value::String(Arc::from(s)),
                    Err(_) => Value::Bytes(b),
                }
            }
            b'x' => Value::Bytes(self.longstr()?),
            b'T' => Value::Timestamp(self.u64()?),
            b'V' => Value::Null,
            b'F' => Value::Map(Arc::new(self.table_at(depth + 1)?)),
            b'A' => {
                if depth >= MAX_TABLE_DEPTH {
                    return Err(DecodeError::Malformed("field array: nested too deep"));
                }
                let body = self.longstr()?;
                let mut r = Reader::new(body);
                let mut items = Vec::new();
                while r.remaining() > 0 {
                    items.push(r.value(depth + 1)?);
                }
                Value::List(Arc::from(items))
            }
            _ => return Err(DecodeError::Malformed("field table: unknown value type")),
        })
    }

    /// Content-header property flags for `count` properties: property `i`
    /// is bit `63 - i` of the result. Flag words continue while bit 0 is set.
    pub fn property_flags(&mut self, count: usize) -> Result<u64, DecodeError> {
        let mut flags = 0u64;
        for word in 0..4usize {
            let w = self.u16()?;
            for b in (1..16u32).rev() {
                if w & (1 << b) != 0 {
                    let index = word * 15 + (15 - b as usize);
                    if index >= count {
                        return Err(DecodeError::Malformed("content header: unknown property"));
                    }
                    flags |= 1u64 << (63 - index);
                }
            }
            if w & 1 == 0 {
                return Ok(flags);
            }
        }
        Err(DecodeError::Malformed(
            "content header: too many flag words",
        ))
    }
}

/// Appends a shortstr.
#[inline]
pub fn put_shortstr(w: &mut BytesMut, s: &ShortStr) {
    // ShortStr holds at most 255 bytes.
    w.put_u8(s.len() as u8);
    w.put_slice(s.as_bytes());
}

/// Appends a shortstr from text, cut to 255 bytes.
#[inline]
pub fn put_str(w: &mut BytesMut, s: &str) {
    let b = s.as_bytes();
    let b = b.get(..b.len().min(ShortStr::MAX)).unwrap_or_default();
    w.put_u8(b.len() as u8);
    w.put_slice(b);
}

/// Appends a longstr.
#[inline]
pub fn put_longstr(w: &mut BytesMut, b: &[u8]) {
    w.put_u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
    w.put_slice(b.get(..b.len().min(u32::MAX as usize)).unwrap_or_default());
}

/// Writes a length-prefixed block: reserves 4 bytes, runs `f`, patches the
/// length in.
fn with_length(w: &mut BytesMut, f: impl FnOnce(&mut BytesMut)) {
    let at = w.len();
    w.put_u32(0);
    f(w);
    let len = u32::try_from(w.len() - at - 4).unwrap_or(u32::MAX);
    if let Some(slot) = w.get_mut(at..at + 4) {
        slot.copy_from_slice(&len.to_be_bytes());
    }
}

/// Appends a field table.
pub fn put_table(w: &mut BytesMut, t: &Headers) {
    with_length(w, |w| {
        for (k, v) in t.iter() {
            put_str(w, k);
            put_value(w, v);
        }
    });
}

/// Appends one typed field value.
pub fn put_value(w: &mut BytesMut, v: &Value) {
    match v {
        Value::Null => w.put_u8(b'V'),
        Value::Bool(b) => {
            w.put_u8(b't');
            w.put_u8(u8::from(*b));
        }
        Value::I8(x) => {
            w.put_u8(b'b');
            w.put_i8(*x);
        }
        Value::U8(x) => {
            w.put_u8(b'B');
            w.put_u8(*x);
        }
        Value::I16(x) => {
            w.put_u8(b's');
            w.put_i16(*x);
        }
        Value::U16(x) => {
            w.put_u8(b'u');
            w.put_u16(*x);
        }
        Value::I32(x) => {
            w.put_u8(b'I');
            w.put_i32(*x);
        }
        Value::U32(x) => {
            w.put_u8(b'i');
            w.put_u32(*x);
        }
        Value::I64(x) => {
            w.put_u8(b'l');
            w.put_i64(*x);
        }
        Value::F32(x) => {
            w.put_u8(b'f');
            w.put_u32(x.to_bits());
        }
        Value::F64(x) => {
            w.put_u8(b'd');
            w.put_u64(x.to_bits());
        }
        Value::Decimal { scale, value } => {
            w.put_u8(b'D');
            w.put_u8(*scale);
            w.put_u32(*value);
        }
        Value::String(s) => {
            w.put_u8(b'S');
            put_longstr(w, s.as_bytes());
        }
        Value::Bytes(b) => {
            w.put_u8(b'x');
            put_longstr(w, b);
        }
        Value::Timestamp(t) => {
            w.put_u8(b'T');
            w.put_u64(*t);
        }
        Value::List(items) => {
            w.put_u8(b'A');
            with_length(w, |w| {
                for item in items.iter() {
                    put_value(w, item);
                }
            });
        }
        Value::Map(m) => {
            w.put_u8(b'F');
            put_table(w, m);
        }
    }
}
