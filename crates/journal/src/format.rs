//! On-disk format.
//!
//! ```text
//! segment file NNNNNNNN.seg:
//!   header (16 bytes): magic "SYJL" | version u32 LE | segment id u64 LE
//!   record*          : len u32 LE | crc32c u32 LE | type u8 | payload (len - 1 bytes)
//! ```
//!
//! `len` counts the type byte and the payload; the CRC32C covers the same
//! bytes. A record whose length runs past the end of the file, or whose CRC
//! does not match, ends the readable part of a segment: at the tail of the
//! last segment that is a torn write (cut off on recovery); anywhere else it
//! is corruption (reported as an error, the rest of that segment skipped).

/// `SYJL`.
pub const MAGIC: [u8; 4] = *b"SYJL";
/// Bumped on any incompatible change of the layout above.
pub const VERSION: u32 = 1;
pub const HEADER_LEN: u64 = 16;
/// Bytes before a record's type byte.
pub const RECORD_PREFIX: u64 = 8;
/// Largest record accepted (type + payload).
pub const MAX_RECORD: u32 = 256 * 1024 * 1024;

pub fn header(segment: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    let (magic, rest) = h.split_at_mut(4);
    magic.copy_from_slice(&MAGIC);
    let (version, id) = rest.split_at_mut(4);
    version.copy_from_slice(&VERSION.to_le_bytes());
    id.copy_from_slice(&u64::from(segment).to_le_bytes());
    h
}

/// Checks a segment header; returns the segment id it names.
pub fn parse_header(h: &[u8]) -> Option<u32> {
    if h.get(..4)? != MAGIC {
        return None;
    }
    let version = u32::from_le_bytes(h.get(4..8)?.try_into().ok()?);
    if version != VERSION {
        return None;
    }
    let id = u64::from_le_bytes(h.get(8..16)?.try_into().ok()?);
    u32::try_from(id).ok()
}

/// Appends one encoded record to `out`.
pub fn encode_record(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let len = u32::try_from(payload.len() + 1).unwrap_or(u32::MAX);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&[kind]), payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

/// Total bytes a record with `payload_len` bytes of payload takes.
pub fn record_len(payload_len: usize) -> u64 {
    RECORD_PREFIX + 1 + payload_len as u64
}

/// What decoding the bytes at a position found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, checked record: type, payload, and the bytes it took.
    Record {
        kind: u8,
        payload: &'a [u8],
        size: u64,
    },
    /// The data ends inside a record (or exactly at its end: `End`).
    Truncated,
    /// A CRC mismatch or an impossible length.
    Corrupt,
    End,
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

/// Decodes the record at the start of `data`.
pub fn decode_record(data: &[u8]) -> Decoded<'_> {
    if data.is_empty() {
        return Decoded::End;
    }
    let (Some(len), Some(crc)) = (u32_at(data, 0), u32_at(data, 4)) else {
        return Decoded::Truncated;
    };
    if len == 0 || len > MAX_RECORD {
        return Decoded::Corrupt;
    }
    let end = 8 + len as usize;
    let Some(body) = data.get(8..end) else {
        return Decoded::Truncated;
    };
    if crc32c::crc32c(body) != crc {
        return Decoded::Corrupt;
    }
    let Some((&kind, payload)) = body.split_first() else {
        return Decoded::Corrupt;
    };
    Decoded::Record {
        kind,
        payload,
        size: end as u64,
    }
}

pub fn segment_file_name(segment: u32) -> String {
    format!("{segment:08}.seg")
}

pub fn parse_segment_file_name(name: &str) -> Option<u32> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() != 8 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_crc() {
        let mut out = Vec::new();
        encode_record(&mut out, 7, b"hello");
        assert_eq!(out.len() as u64, record_len(5));
        assert_eq!(
            decode_record(&out),
            Decoded::Record {
                kind: 7,
                payload: b"hello",
                size: out.len() as u64
            }
        );
        let mut bad = out.clone();
        if let Some(b) = bad.last_mut() {
            *b ^= 1;
        }
        assert_eq!(decode_record(&bad), Decoded::Corrupt);
        for cut in 1..out.len() {
            assert_eq!(
                decode_record(out.get(..cut).unwrap()),
                Decoded::Truncated,
                "cut at {cut}"
            );
        }
        assert_eq!(decode_record(&[]), Decoded::End);
    }

    #[test]
    fn headers_and_names() {
        assert_eq!(parse_header(&header(42)), Some(42));
        assert_eq!(
            parse_header(b"XXXX\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"),
            None
        );
        assert_eq!(segment_file_name(3), "00000003.seg");
        assert_eq!(parse_segment_file_name("00000003.seg"), Some(3));
        assert_eq!(parse_segment_file_name("3.seg"), None);
    }
}
