//! NATS subjects and headers ↔ the canonical message.
//!
//! # Subjects
//!
//! A subject is an address: `.`-separated tokens, the same words. In
//! subscriptions `*` is `*` and a trailing `>` is `#`. Rules that differ
//! from nats-server, because the canonical model reserves them:
//!
//! * a token `#` is refused (it would be a wildcard in the canonical model):
//!   `SUB` gets `-ERR 'Invalid Subject'`; a publish is not routed;
//! * a publish subject with a wildcard token (`*`, `>`) or an empty token is
//!   not routed (with `pedantic` the client is told `Invalid Publish
//!   Subject`, as nats-server does).
//!
//! On the way out, an address that is not a valid NATS subject (it came from
//! another protocol and contains whitespace) cannot be written in a `MSG`
//! line: the delivery is dropped and counted.
//!
//! # Headers
//!
//! `HPUB` header blocks (`NATS/1.0\r\nKey: Value\r\n…\r\n`) become canonical
//! string headers, in order, repeats kept. Well-known names fill canonical
//! slots instead (matched case-insensitively, and written back with this
//! spelling): `Content-Type`, `Content-Encoding`, `Nats-Msg-Id` (the
//! publisher's message id), `Correlation-Id`. On the way out every canonical
//! header is written as text ([`switchyard_model::Value::to_text`]); a name
//! or value that cannot be written in a NATS header line (CR, LF, or a `:` /
//! whitespace in the name) is left out.

use bytes::{BufMut, Bytes, BytesMut};
use std::sync::Arc;
use switchyard_model::{Address, AddressFilter, Headers, Message, Properties, Value};

/// Why a subject cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectError {
    Invalid,
}

fn token_ok(t: &[u8]) -> bool {
    !t.is_empty()
        && !t
            .iter()
            .any(|&b| b == b' ' || b == b'\t' || b == b'\r' || b == b'\n' || b == 0)
}

/// A publish subject as a canonical address.
pub fn subject_to_address(subject: &[u8]) -> Result<Address, SubjectError> {
    let s = std::str::from_utf8(subject).map_err(|_| SubjectError::Invalid)?;
    if s.split('.')
        .any(|t| !token_ok(t.as_bytes()) || t == "*" || t == ">" || t == "#")
    {
        return Err(SubjectError::Invalid);
    }
    Address::new(s).map_err(|_| SubjectError::Invalid)
}

/// A subscription subject as a canonical filter (`>` → `#`).
pub fn subject_to_filter(subject: &[u8]) -> Result<AddressFilter, SubjectError> {
    let s = std::str::from_utf8(subject).map_err(|_| SubjectError::Invalid)?;
    let tokens: Vec<&str> = s.split('.').collect();
    let last = tokens.len().saturating_sub(1);
    let mut words = Vec::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        if !token_ok(t.as_bytes()) || *t == "#" {
            return Err(SubjectError::Invalid);
        }
        if *t == ">" {
            if i != last {
                return Err(SubjectError::Invalid);
            }
            words.push("#");
        } else {
            words.push(t);
        }
    }
    AddressFilter::new(&words.join(".")).map_err(|_| SubjectError::Invalid)
}

/// True when `s` can be written as a subject (or reply subject) in a `MSG`:
/// non-empty tokens without whitespace. Runs for every delivery, so it is
/// one pass over the bytes.
pub fn is_wire_subject(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.first() != Some(&b'.')
        && b.last() != Some(&b'.')
        && !b.windows(2).any(|w| w == b"..")
        && !b
            .iter()
            .any(|&c| c == b' ' || c == b'\t' || c == b'\r' || c == b'\n' || c == 0)
}

/// A queue group name: one token without whitespace.
pub fn valid_queue_group(q: &[u8]) -> bool {
    token_ok(q)
}

/// The header block a no-responders status message carries.
pub const NO_RESPONDERS: &[u8] = b"NATS/1.0 503\r\n\r\n";

const CONTENT_TYPE: &str = "Content-Type";
const CONTENT_ENCODING: &str = "Content-Encoding";
const MSG_ID: &str = "Nats-Msg-Id";
const CORRELATION_ID: &str = "Correlation-Id";

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    b.get(start..end).unwrap_or_default()
}

/// Reads a `NATS/1.0` header block into canonical headers and property
/// slots. Lines without a `:` (and the status line) are skipped; names and
/// values that are not UTF-8 are kept lossily.
pub fn read_headers(block: &[u8], headers: &mut Headers, props: &mut Properties) {
    let mut lines = block.split(|&b| b == b'\n');
    // The version/status line.
    let _ = lines.next();
    for line in lines {
        let line = trim(line);
        if line.is_empty() {
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        let name = String::from_utf8_lossy(trim(name));
        let value = String::from_utf8_lossy(trim(value.get(1..).unwrap_or_default()));
        if name.is_empty() {
            continue;
        }
        if name.eq_ignore_ascii_case(CONTENT_TYPE) {
            props.content_type = Some(Arc::from(&*value));
        } else if name.eq_ignore_ascii_case(CONTENT_ENCODING) {
            props.content_encoding = Some(Arc::from(&*value));
        } else if name.eq_ignore_ascii_case(MSG_ID) {
            props.message_id = Some(Arc::from(&*value));
        } else if name.eq_ignore_ascii_case(CORRELATION_ID) {
            props.correlation_id = Some(Bytes::copy_from_slice(value.as_bytes()));
        } else {
            headers.push(Arc::from(&*name), Value::String(Arc::from(&*value)));
        }
    }
}

fn header_line_ok(name: &str, value: &str) -> bool {
    !name.is_empty()
        && !name
            .bytes()
            .any(|b| b == b':' || b.is_ascii_whitespace() || b.is_ascii_control())
        && !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

fn put_header(out: &mut BytesMut, name: &str, value: &str) -> bool {
    if !header_line_ok(name, value) {
        return false;
    }
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    out.put_slice(value.as_bytes());
    out.put_slice(b"\r\n");
    true
}

/// Writes the header block for `msg` into `out` (cleared first). Leaves
/// `out` empty when the message has nothing to carry in headers. Returns the
/// number of headers left out because they cannot be written.
pub fn write_headers(msg: &Message, out: &mut BytesMut) -> usize {
    out.clear();
    let p = &msg.properties;
    let has_props = p.content_type.is_some()
        || p.content_encoding.is_some()
        || p.message_id.is_some()
        || p.correlation_id.is_some();
    if !has_props && msg.headers.is_empty() {
        return 0;
    }
    out.put_slice(b"NATS/1.0\r\n");
    let mut written = 0;
    let mut wanted = 0;
    let slots = [
        (CONTENT_TYPE, p.content_type.as_deref()),
        (CONTENT_ENCODING, p.content_encoding.as_deref()),
        (MSG_ID, p.message_id.as_deref()),
    ];
    for (name, value) in slots {
        if let Some(v) = value {
            wanted += 1;
            written += usize::from(put_header(out, name, v));
        }
    }
    if let Some(v) = &p.correlation_id {
        // Binary correlation data (MQTT) that is not UTF-8 cannot be a header value.
        wanted += 1;
        if let Ok(text) = std::str::from_utf8(v) {
            written += usize::from(put_header(out, CORRELATION_ID, text));
        }
    }
    for (name, value) in msg.headers.iter() {
        wanted += 1;
        let ok = match value {
            Value::String(s) => put_header(out, name, s),
            other => put_header(out, name, &other.to_text()),
        };
        written += usize::from(ok);
    }
    out.put_slice(b"\r\n");
    wanted - written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_map_to_addresses_and_filters() {
        assert_eq!(subject_to_address(b"a.b").unwrap().as_str(), "a.b");
        assert!(subject_to_address(b"a.*").is_err());
        assert!(subject_to_address(b"a.>").is_err());
        assert!(subject_to_address(b"a..b").is_err());
        assert!(subject_to_address(b"a.#").is_err());
        assert_eq!(subject_to_filter(b"a.*.c").unwrap().as_str(), "a.*.c");
        assert_eq!(subject_to_filter(b"a.>").unwrap().as_str(), "a.#");
        assert_eq!(subject_to_filter(b">").unwrap().as_str(), "#");
        assert!(subject_to_filter(b"a.>.b").is_err());
        assert!(subject_to_filter(b"a.#").is_err());
        assert!(subject_to_filter(b"a..b").is_err());
        assert!(subject_to_filter(b"").is_err());
        assert!(is_wire_subject("a.b"));
        assert!(!is_wire_subject("a b.c"));
        assert!(!is_wire_subject("a..b"));
        assert!(!is_wire_subject(".a"));
        assert!(!is_wire_subject("a."));
        assert!(!is_wire_subject(""));
        assert!(!is_wire_subject("a\tb"));
    }

    #[test]
    fn headers_round_trip_with_well_known_slots() {
        let block = b"NATS/1.0\r\nContent-Type: application/json\r\nX-Trace: abc\r\nX-Trace: def\r\nnats-msg-id: m1\r\n\r\n";
        let mut h = Headers::new();
        let mut p = Properties::default();
        read_headers(block, &mut h, &mut p);
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
        assert_eq!(p.message_id.as_deref(), Some("m1"));
        assert_eq!(h.len(), 2);
        let mut m = Message::anycast("q", Bytes::new());
        m.headers = h;
        m.properties = p;
        m.headers.push("n", Value::I32(5));
        m.headers.push("bad\nname", "x");
        let mut out = BytesMut::new();
        assert_eq!(write_headers(&m, &mut out), 1);
        assert_eq!(
            &out[..],
            &b"NATS/1.0\r\nContent-Type: application/json\r\nNats-Msg-Id: m1\r\nX-Trace: abc\r\nX-Trace: def\r\nn: 5\r\n\r\n"[..]
        );
    }

    #[test]
    fn no_headers_means_no_block() {
        let m = Message::anycast("q", Bytes::new());
        let mut out = BytesMut::from(&b"junk"[..]);
        write_headers(&m, &mut out);
        assert!(out.is_empty());
    }
}
