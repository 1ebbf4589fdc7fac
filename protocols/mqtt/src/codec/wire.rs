//! The data representations of section 1.5: big-endian integers, variable
//! byte integers, length-prefixed UTF-8 strings and binary data, read from a
//! packet body without copying.

use super::DecodeError;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest value a variable byte integer holds (four bytes).
pub const MAX_VARINT: usize = 268_435_455;

/// A cursor over one packet's body. Every read checks the length first;
/// running past the end is a Malformed Packet.
#[derive(Debug)]
pub(crate) struct Reader {
    b: Bytes,
}

const EARLY: DecodeError = DecodeError::Malformed("packet ends before its fields do");

impl Reader {
    pub(crate) fn new(b: Bytes) -> Self {
        Reader { b }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.b.is_empty()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.b.is_empty() {
            return Err(EARLY);
        }
        Ok(self.b.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.b.len() < 2 {
            return Err(EARLY);
        }
        Ok(self.b.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.b.len() < 4 {
            return Err(EARLY);
        }
        Ok(self.b.get_u32())
    }

    /// A variable byte integer (1.5.5): at most four bytes.
    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut value: u32 = 0;
        for i in 0..4 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::Malformed(
            "variable byte integer longer than 4 bytes",
        ))
    }

    /// The next `n` bytes as a reader of their own.
    pub(crate) fn sub(&mut self, n: usize) -> Result<Reader, DecodeError> {
        if self.b.len() < n {
            return Err(EARLY);
        }
        Ok(Reader {
            b: self.b.split_to(n),
        })
    }

    /// Binary data: a two-byte length, then the bytes (shared, not copied).
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = usize::from(self.u16()?);
        if self.b.len() < n {
            return Err(EARLY);
        }
        Ok(self.b.split_to(n))
    }

    /// A UTF-8 encoded string (1.5.4), checked, as shared bytes.
    pub(crate) fn utf8(&mut self) -> Result<Bytes, DecodeError> {
        let b = self.binary()?;
        check_utf8(&b)?;
        Ok(b)
    }

    /// A UTF-8 encoded string (1.5.4), checked.
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let b = self.binary()?;
        check_utf8(&b)?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }

    /// Whatever is left.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.b)
    }
}

/// The rules of 1.5.4 for UTF-8 strings: well-formed UTF-8, no surrogates
/// (`[MQTT-1.5.4-1]`, which Rust's UTF-8 check enforces) and no U+0000
/// (`[MQTT-1.5.4-2]`). Both are Malformed Packets. Non-characters and
/// control characters other than U+0000 are accepted, as `[MQTT-1.5.4-3]`
/// requires of a receiver.
pub fn check_utf8(b: &[u8]) -> Result<(), DecodeError> {
    if std::str::from_utf8(b).is_err() {
        return Err(DecodeError::Malformed("string is not well-formed UTF-8"));
    }
    if b.contains(&0) {
        return Err(DecodeError::Malformed("string contains U+0000"));
    }
    Ok(())
}

/// Bytes a variable byte integer of `v` takes.
#[inline]
pub fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes a variable byte integer (`v` ≤ [`MAX_VARINT`]).
#[inline]
pub fn put_varint(out: &mut BytesMut, v: usize) {
    let mut v = v.min(MAX_VARINT);
    loop {
        let mut byte = (v & 0x7F) as u8;
        v >>= 7;
        if v > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if v == 0 {
            break;
        }
    }
}

/// Writes a length-prefixed string (callers keep strings ≤ 65 535 bytes).
#[inline]
pub fn put_str(out: &mut BytesMut, s: &str) {
    put_binary(out, s.as_bytes());
}

/// Writes length-prefixed binary data (truncated at 65 535 bytes).
#[inline]
pub fn put_binary(out: &mut BytesMut, b: &[u8]) {
    let n = b.len().min(usize::from(u16::MAX));
    out.put_u16(n as u16);
    out.put_slice(b.get(..n).unwrap_or_default());
}
