//! The incremental frame decoder.
//!
//! [`FrameDecoder::decode`] is called with the connection's read buffer each
//! time bytes arrive. It remembers where it stopped (the state and how far it
//! has scanned), so every byte is looked at once however the frame is split.
//! Offsets are relative to the start of the buffer, which only moves when a
//! whole frame (or heart-beat EOLs between frames) is consumed.

use super::{Command, Frame, HeaderList, Text, Version};
use crate::codec::encode::Escape;
use bytes::{Buf, Bytes, BytesMut};

/// Bounds on what one frame may hold. Each is checked before the bytes it
/// would take are buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest command or header line, in bytes (escapes included, EOL not).
    pub max_line: usize,
    /// Most header entries in one frame (repeats count).
    pub max_headers: usize,
    /// Most bytes of all header lines of one frame together.
    pub max_header_bytes: usize,
    /// Largest body.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: 16 * 1024,
            max_headers: 128,
            max_header_bytes: 64 * 1024,
            max_body: 16 * 1024 * 1024,
        }
    }
}

/// Why bytes are not a valid frame. Every one is fatal for the connection
/// (the server answers with an `ERROR` frame and closes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("a command or header line is longer than the limit of {max} bytes")]
    LineTooLong { max: usize },
    #[error("the frame has more than the limit of {max} headers")]
    TooManyHeaders { max: usize },
    #[error("the frame's headers take more than the limit of {max} bytes")]
    HeadersTooLarge { max: usize },
    #[error("the frame body of {size} bytes or more exceeds the limit of {max} bytes")]
    BodyTooLarge { size: usize, max: usize },
    #[error("unknown command '{0}'")]
    UnknownCommand(String),
    #[error("header line without a ':' separator: '{0}'")]
    HeaderWithoutColon(String),
    #[error("header line with an empty name")]
    EmptyHeaderName,
    #[error(
        "undefined escape sequence '{0}' in a header (only \\\\, \\n, \\c and, in 1.2, \\r are defined)"
    )]
    BadEscape(String),
    #[error("the command or a header is not valid UTF-8")]
    InvalidUtf8,
    #[error(
        "NUL octet inside the command or headers (is the blank line after the headers missing?)"
    )]
    NulInHeaders,
    #[error("content-length '{0}' is not a number of octets")]
    BadContentLength(String),
    #[error("the body of content-length {0} is not followed by the NUL octet that ends a frame")]
    MissingNul(usize),
}

/// Errors of the `tokio_util` [`Decoder`](tokio_util::codec::Decoder) wrapper.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames, skipping heart-beat EOLs.
    Idle,
    /// In the command line; the first `scanned` bytes hold no LF.
    Command { scanned: usize },
    /// In the header line that starts at `line`; no LF before `scanned`.
    Headers { line: usize, scanned: usize },
    /// In the body that starts at `start`; no NUL before `scanned`.
    Body { start: usize, scanned: usize },
}

#[derive(Debug, Clone, Copy)]
struct Span {
    name: (usize, usize),
    value: (usize, usize),
    name_escaped: bool,
    value_escaped: bool,
}

/// The incremental decoder (see the module docs).
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    limits: Limits,
    version: Option<Version>,
    state: State,
    command: Command,
    headers_start: usize,
    content_length: Option<usize>,
    /// Header spans of the frame in progress; reused from frame to frame.
    spans: Vec<Span>,
}

fn lossy(b: &[u8]) -> String {
    let cut = b.get(..64).unwrap_or(b);
    String::from_utf8_lossy(cut).into_owned()
}

/// The slice `a..b` of `frame` (empty if out of range, which the decoder's
/// own bookkeeping rules out).
fn slice(frame: &Bytes, a: usize, b: usize) -> Bytes {
    if a <= b && b <= frame.len() {
        frame.slice(a..b)
    } else {
        Bytes::new()
    }
}

/// Checks the escapes of a header name or value; true when it has any.
fn check_escapes(b: &[u8], esc: Escape) -> Result<bool, DecodeError> {
    if esc == Escape::None || memchr::memchr(b'\\', b).is_none() {
        return Ok(false);
    }
    let mut it = b.iter();
    while let Some(&c) = it.next() {
        if c != b'\\' {
            continue;
        }
        match it.next() {
            Some(b'n' | b'c' | b'\\') => {}
            Some(b'r') if esc == Escape::V12 => {}
            Some(&other) => {
                return Err(DecodeError::BadEscape(format!(
                    "\\{}",
                    lossy(std::slice::from_ref(&other))
                )));
            }
            None => return Err(DecodeError::BadEscape("\\".to_owned())),
        }
    }
    Ok(true)
}

/// Undoes escapes already checked by [`check_escapes`].
fn unescape(b: &[u8]) -> Text {
    let mut out = Vec::with_capacity(b.len());
    let mut it = b.iter();
    while let Some(&c) = it.next() {
        if c == b'\\' {
            match it.next() {
                Some(b'n') => out.push(b'\n'),
                Some(b'r') => out.push(b'\r'),
                Some(b'c') => out.push(b':'),
                Some(&o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    // Unescaping valid UTF-8 at ASCII positions keeps it valid.
    Text::from_utf8(Bytes::from(out)).unwrap_or_default()
}

fn parse_length(v: &[u8]) -> Option<usize> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0usize, |n, d| {
        n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
    })
}

impl FrameDecoder {
    pub fn new(limits: Limits) -> Self {
        FrameDecoder {
            limits,
            version: None,
            state: State::Idle,
            command: Command::Connect,
            headers_start: 0,
            content_length: None,
            spans: Vec::new(),
        }
    }

    /// Sets the negotiated version; frames decoded from now on follow its
    /// rules (escaping, trimming). Before this, frames are read with the 1.2
    /// rules (the first frame is `CONNECT`, which has no escapes anyway).
    pub fn set_version(&mut self, version: Version) {
        self.version = Some(version);
    }

    pub fn version(&self) -> Option<Version> {
        self.version
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// True when part of a frame has been read (at end of stream, an error).
    pub fn in_frame(&self) -> bool {
        self.state != State::Idle
    }

    /// Bytes still missing from a frame whose body length is known, so the
    /// reader can reserve them at once.
    pub fn needs(&self, buf: &BytesMut) -> Option<usize> {
        match (self.state, self.content_length) {
            (State::Body { start, .. }, Some(n)) => Some(
                start
                    .saturating_add(n)
                    .saturating_add(1)
                    .saturating_sub(buf.len()),
            ),
            _ => None,
        }
    }

    /// Decodes the next frame from `buf`, consuming it. `Ok(None)`: more
    /// bytes are needed (what has been scanned is remembered).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        loop {
            match self.state {
                State::Idle => {
                    let mut skip = 0;
                    let more = loop {
                        match (buf.get(skip), buf.get(skip + 1)) {
                            (Some(b'\n'), _) => skip += 1,
                            (Some(b'\r'), Some(b'\n')) => skip += 2,
                            (Some(b'\r'), None) | (None, _) => break true,
                            _ => break false,
                        }
                    };
                    buf.advance(skip);
                    if more {
                        return Ok(None);
                    }
                    self.state = State::Command { scanned: 0 };
                }
                State::Command { scanned } => {
                    let Some(pos) = self.find_eol(buf, scanned)? else {
                        if buf.len() > self.limits.max_line.saturating_add(1) {
                            return Err(DecodeError::LineTooLong {
                                max: self.limits.max_line,
                            });
                        }
                        self.state = State::Command { scanned: buf.len() };
                        return Ok(None);
                    };
                    let end = strip_cr(buf, 0, pos);
                    if end > self.limits.max_line {
                        return Err(DecodeError::LineTooLong {
                            max: self.limits.max_line,
                        });
                    }
                    let line = buf.get(..end).unwrap_or_default();
                    self.command = Command::parse(line)
                        .ok_or_else(|| DecodeError::UnknownCommand(lossy(line)))?;
                    self.spans.clear();
                    self.content_length = None;
                    self.headers_start = pos + 1;
                    self.state = State::Headers {
                        line: pos + 1,
                        scanned: pos + 1,
                    };
                }
                State::Headers { line, scanned } => {
                    let Some(pos) = self.find_eol(buf, scanned)? else {
                        if buf.len().saturating_sub(line) > self.limits.max_line.saturating_add(1) {
                            return Err(DecodeError::LineTooLong {
                                max: self.limits.max_line,
                            });
                        }
                        if buf.len().saturating_sub(self.headers_start)
                            > self.limits.max_header_bytes
                        {
                            return Err(DecodeError::HeadersTooLarge {
                                max: self.limits.max_header_bytes,
                            });
                        }
                        self.state = State::Headers {
                            line,
                            scanned: buf.len(),
                        };
                        return Ok(None);
                    };
                    let end = strip_cr(buf, line, pos);
                    if end == line {
                        self.state = State::Body {
                            start: pos + 1,
                            scanned: pos + 1,
                        };
                        continue;
                    }
                    if end.saturating_sub(line) > self.limits.max_line {
                        return Err(DecodeError::LineTooLong {
                            max: self.limits.max_line,
                        });
                    }
                    if (pos + 1).saturating_sub(self.headers_start) > self.limits.max_header_bytes {
                        return Err(DecodeError::HeadersTooLarge {
                            max: self.limits.max_header_bytes,
                        });
                    }
                    if self.spans.len() >= self.limits.max_headers {
                        return Err(DecodeError::TooManyHeaders {
                            max: self.limits.max_headers,
                        });
                    }
                    self.header(buf, line, end)?;
                    self.state = State::Headers {
                        line: pos + 1,
                        scanned: pos + 1,
                    };
                }
                State::Body { start, scanned } => {
                    return match self.content_length {
                        Some(n) => {
                            let end = start.saturating_add(n);
                            if buf.len() <= end {
                                return Ok(None);
                            }
                            if buf.get(end) != Some(&0) {
                                return Err(DecodeError::MissingNul(n));
                            }
                            Ok(Some(self.finish(buf, start, end)))
                        }
                        None => {
                            let rest = buf.get(scanned..).unwrap_or_default();
                            match memchr::memchr(0, rest) {
                                Some(i) => {
                                    let end = scanned + i;
                                    if end.saturating_sub(start) > self.limits.max_body {
                                        return Err(DecodeError::BodyTooLarge {
                                            size: end.saturating_sub(start),
                                            max: self.limits.max_body,
                                        });
                                    }
                                    Ok(Some(self.finish(buf, start, end)))
                                }
                                None => {
                                    if buf.len().saturating_sub(start) > self.limits.max_body {
                                        return Err(DecodeError::BodyTooLarge {
                                            size: buf.len().saturating_sub(start),
                                            max: self.limits.max_body,
                                        });
                                    }
                                    self.state = State::Body {
                                        start,
                                        scanned: buf.len(),
                                    };
                                    Ok(None)
                                }
                            }
                        }
                    };
                }
            }
        }
    }

    /// The position of the next LF at or after `from`; a NUL before it is an
    /// error (NUL only ends bodies).
    fn find_eol(&self, buf: &[u8], from: usize) -> Result<Option<usize>, DecodeError> {
        let rest = buf.get(from..).unwrap_or_default();
        match memchr::memchr2(b'\n', 0, rest) {
            None => Ok(None),
            Some(i) => match rest.get(i) {
                Some(b'\n') => Ok(Some(from + i)),
                _ => Err(DecodeError::NulInHeaders),
            },
        }
    }

    fn escape(&self) -> Escape {
        Escape::for_frame(self.command, self.version.or(Some(Version::V1_2)))
    }

    /// Parses the header line `line..end` into a span.
    fn header(&mut self, buf: &[u8], line: usize, end: usize) -> Result<(), DecodeError> {
        let bytes = buf.get(line..end).unwrap_or_default();
        if std::str::from_utf8(bytes).is_err() {
            return Err(DecodeError::InvalidUtf8);
        }
        let colon = memchr::memchr(b':', bytes)
            .ok_or_else(|| DecodeError::HeaderWithoutColon(lossy(bytes)))?;
        let (mut ns, mut ne) = (line, line + colon);
        let (mut vs, mut ve) = (line + colon + 1, end);
        if self.version == Some(Version::V1_0) {
            let blank = |i: usize| matches!(buf.get(i), Some(b' ' | b'\t'));
            while ns < ne && blank(ns) {
                ns += 1;
            }
            while ne > ns && blank(ne - 1) {
                ne -= 1;
            }
            while vs < ve && blank(vs) {
                vs += 1;
            }
            while ve > vs && blank(ve - 1) {
                ve -= 1;
            }
        }
        if ns == ne {
            return Err(DecodeError::EmptyHeaderName);
        }
        let esc = self.escape();
        let name = buf.get(ns..ne).unwrap_or_default();
        let value = buf.get(vs..ve).unwrap_or_default();
        let name_escaped = check_escapes(name, esc)?;
        let value_escaped = check_escapes(value, esc)?;
        if name == b"content-length" && self.content_length.is_none() {
            let n =
                parse_length(value).ok_or_else(|| DecodeError::BadContentLength(lossy(value)))?;
            if n > self.limits.max_body {
                return Err(DecodeError::BodyTooLarge {
                    size: n,
                    max: self.limits.max_body,
                });
            }
            self.content_length = Some(n);
        }
        self.spans.push(Span {
            name: (ns, ne),
            value: (vs, ve),
            name_escaped,
            value_escaped,
        });
        Ok(())
    }

    /// Splits the finished frame (body `start..end`, then its NUL) off `buf`.
    fn finish(&mut self, buf: &mut BytesMut, start: usize, end: usize) -> Frame {
        let frame = buf.split_to((end + 1).min(buf.len())).freeze();
        let text = |(a, b): (usize, usize), escaped: bool| {
            if escaped {
                unescape(frame.get(a..b).unwrap_or_default())
            } else {
                Text(slice(&frame, a, b))
            }
        };
        let headers: HeaderList = self
            .spans
            .iter()
            .map(|s| (text(s.name, s.name_escaped), text(s.value, s.value_escaped)))
            .collect();
        self.spans.clear();
        self.state = State::Idle;
        self.content_length = None;
        Frame {
            command: self.command,
            headers,
            body: slice(&frame, start, end),
        }
    }
}

fn strip_cr(buf: &[u8], start: usize, pos: usize) -> usize {
    if pos > start && buf.get(pos - 1) == Some(&b'\r') {
        pos - 1
    } else {
        pos
    }
}

impl tokio_util::codec::Decoder for FrameDecoder {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if let Some(n) = self.needs(src) {
            src.reserve(n);
        }
        Ok(FrameDecoder::decode(self, src)?)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        match FrameDecoder::decode(self, src)? {
            Some(f) => Ok(Some(f)),
            None if self.in_frame() => Err(CodecError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "stream ended in the middle of a STOMP frame",
            ))),
            None => Ok(None),
        }
    }
}
