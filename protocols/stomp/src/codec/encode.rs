//! Writing frames: straight into the connection's write buffer, escaping
//! header names and values as the frame's command and the version require.
//!
//! [`FrameWriter`] is what the server uses (it writes `MESSAGE` frames from
//! the canonical message without building a [`Frame`] first);
//! [`encode_frame`] writes a whole [`Frame`] (tests, the test client).

use super::{Command, Frame, Version};
use bytes::{BufMut, BytesMut};

/// How header names and values are escaped in one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// No escaping: STOMP 1.0, and `CONNECT`/`STOMP`/`CONNECTED` in every
    /// version. A name with `:` or a line break, or a value with a line
    /// break, cannot be written.
    None,
    /// 1.1: `\` → `\\`, LF → `\n`, `:` → `\c` (CR is written as is; a
    /// value cannot end in one).
    V11,
    /// 1.2: as 1.1, and CR → `\r`.
    V12,
}

impl Escape {
    /// The rule for a frame with `command` under `version` (`None`: not yet
    /// negotiated, read as 1.2).
    pub fn for_frame(command: Command, version: Option<Version>) -> Escape {
        if command.is_connect() {
            return Escape::None;
        }
        match version {
            Some(Version::V1_0) => Escape::None,
            Some(Version::V1_1) => Escape::V11,
            Some(Version::V1_2) | None => Escape::V12,
        }
    }

    /// True when `b` holds a byte this mode escapes (a SIMD scan; most
    /// names and values hold none and are copied as they are).
    fn needs_escape(self, b: &[u8]) -> bool {
        match self {
            Escape::None => false,
            Escape::V11 => memchr::memchr3(b'\\', b'\n', b':', b).is_some(),
            Escape::V12 => {
                memchr::memchr3(b'\\', b'\n', b':', b).is_some()
                    || memchr::memchr(b'\r', b).is_some()
            }
        }
    }
}

/// A header that cannot be written in the frame's escaping mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("header '{0}' cannot be written without escaping (STOMP 1.0 or a CONNECT frame)")]
    Unrepresentable(String),
}

/// Whether a header can be written under `esc`: names must be non-empty;
/// without escaping neither may hold a line break (nor the name a `:`); in
/// 1.1, which has no escape for CR, a value may not end in one (a CR right
/// before the LF reads as part of the end of line, see the module docs of
/// `codec`).
fn representable(esc: Escape, name: &[u8], value: &[&[u8]]) -> bool {
    if name.is_empty() {
        return false;
    }
    match esc {
        Escape::None => {
            let breaks = |b: &u8| matches!(b, b'\n' | b'\r');
            !name.iter().any(|b| breaks(b) || *b == b':')
                && !value.iter().any(|v| v.iter().any(breaks))
        }
        Escape::V11 => {
            let last = value.iter().rev().find_map(|v| v.last());
            last != Some(&b'\r')
        }
        Escape::V12 => true,
    }
}

/// Writes one frame into a buffer: command, headers, then body and NUL.
#[derive(Debug)]
pub struct FrameWriter<'a> {
    out: &'a mut BytesMut,
    esc: Escape,
}

impl<'a> FrameWriter<'a> {
    /// Starts a frame (writes the command line).
    pub fn begin(out: &'a mut BytesMut, command: Command, version: Option<Version>) -> Self {
        out.put_slice(command.as_str().as_bytes());
        out.put_u8(b'\n');
        FrameWriter {
            out,
            esc: Escape::for_frame(command, version),
        }
    }

    pub fn escape(&self) -> Escape {
        self.esc
    }

    fn can_write(&self, name: &[u8], value: &[&[u8]]) -> bool {
        representable(self.esc, name, value)
    }

    fn put_escaped(&mut self, b: &[u8]) {
        if !self.esc.needs_escape(b) {
            self.out.put_slice(b);
            return;
        }
        for &c in b {
            match c {
                b'\\' => self.out.put_slice(b"\\\\"),
                b'\n' => self.out.put_slice(b"\\n"),
                b':' => self.out.put_slice(b"\\c"),
                b'\r' if self.esc == Escape::V12 => self.out.put_slice(b"\\r"),
                c => self.out.put_u8(c),
            }
        }
    }

    /// Writes `name:value`; false (nothing written) when the header cannot
    /// be represented in this frame (see [`Escape::None`]).
    pub fn header(&mut self, name: &str, value: &str) -> bool {
        self.header_parts(name, &[value])
    }

    /// Writes a header whose value is the concatenation of `parts`.
    pub fn header_parts(&mut self, name: &str, parts: &[&str]) -> bool {
        let bytes: smallvec::SmallVec<[&[u8]; 4]> = parts.iter().map(|p| p.as_bytes()).collect();
        if !self.can_write(name.as_bytes(), &bytes) {
            return false;
        }
        self.put_escaped(name.as_bytes());
        self.out.put_u8(b':');
        for p in bytes {
            self.put_escaped(p);
        }
        self.out.put_u8(b'\n');
        true
    }

    /// Writes `name:<decimal>`. `name` must need no escaping.
    pub fn header_u64(&mut self, name: &str, value: u64) {
        self.out.put_slice(name.as_bytes());
        self.out.put_u8(b':');
        self.out
            .put_slice(itoa::Buffer::new().format(value).as_bytes());
        self.out.put_u8(b'\n');
    }

    /// Writes `name:<a>-<b>` (message ids). `name` must need no escaping.
    pub fn header_pair(&mut self, name: &str, a: u64, b: u64) {
        self.header_numbers(name, a, b'-', b);
    }

    /// Writes `name:<a><sep><b>`. `name` must need no escaping.
    pub fn header_numbers(&mut self, name: &str, a: u64, sep: u8, b: u64) {
        let mut buf = itoa::Buffer::new();
        self.out.put_slice(name.as_bytes());
        self.out.put_u8(b':');
        self.out.put_slice(buf.format(a).as_bytes());
        self.out.put_u8(sep);
        self.out.put_slice(buf.format(b).as_bytes());
        self.out.put_u8(b'\n');
    }

    /// Ends the headers, writes the body and the NUL.
    pub fn finish(self, body: &[u8]) {
        self.out.reserve(body.len() + 2);
        self.out.put_u8(b'\n');
        self.out.put_slice(body);
        self.out.put_u8(0);
    }
}

/// Writes `frame` exactly as given (headers in order, no header added; a
/// body with NULs needs its own `content-length`). On error nothing is
/// written.
pub fn encode_frame(
    frame: &Frame,
    version: Option<Version>,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let esc = Escape::for_frame(frame.command, version);
    if let Some((name, _)) = frame
        .headers
        .iter()
        .find(|(n, v)| !representable(esc, n.as_bytes(), &[v.as_bytes()]))
    {
        return Err(EncodeError::Unrepresentable(name.as_str().to_owned()));
    }
    let mut w = FrameWriter::begin(out, frame.command, version);
    for (name, value) in &frame.headers {
        w.header(name, value);
    }
    w.finish(&frame.body);
    Ok(())
}

impl tokio_util::codec::Encoder<&Frame> for super::FrameDecoder {
    type Error = super::decode::CodecError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), Self::Error> {
        encode_frame(frame, self.version(), dst).map_err(|e| {
            super::decode::CodecError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        })
    }
}
