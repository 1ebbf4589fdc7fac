//! The STOMP frame codec: bytes ↔ [`Frame`]s, for STOMP 1.0, 1.1 and 1.2.
//!
//! # Byte layout
//!
//! ```text
//! frame   = command EOL *( header EOL ) EOL *OCTET NUL *( EOL )
//! EOL     = [CR] LF
//! header  = name ":" value        (the first ':' separates; later ones are part of the value)
//! ```
//!
//! The body ends at the first NUL, unless a `content-length` header gives its
//! length in octets, in which case exactly that many octets are read (NULs
//! included) and the next octet must be NUL. Between frames any number of
//! EOLs may appear; they are heart-beats.
//!
//! # Version rules
//!
//! * Header escaping (1.1: `\\`, `\n`, `\c`; 1.2 adds `\r`) applies to every
//!   frame except `CONNECT`, `STOMP` and `CONNECTED`, and not at all in 1.0.
//!   An undefined escape (`\t`, a trailing `\`) is a fatal error (1.2 §Value
//!   Encoding).
//! * In 1.0 header names and values are trimmed of spaces and tabs (the 1.0
//!   specification's own examples pad values: `destination: /queue/a`).
//! * A CR right before an LF is part of the EOL in every version (1.2 makes it
//!   so; for 1.0 and 1.1 this is a deliberate leniency that hand-typed frames
//!   need, see `docs/protocols/stomp.md`).
//! * Repeated headers: every entry is kept in order; [`Frame::header`]
//!   returns the first, which is the one that counts (1.2 §Repeated Header
//!   Entries) — also for `content-length`.
//!
//! # Limits
//!
//! [`Limits`] bounds the command/header line length, the number of headers,
//! the bytes of all header lines and the body. Each is checked on the partial
//! buffer as bytes arrive, and a declared `content-length` is checked before
//! any of the body is buffered.
//!
//! The decoder ([`FrameDecoder`]) is incremental: it remembers how far it has
//! scanned, so a frame that arrives one byte at a time is scanned once, not
//! once per byte. Complete frames are split off the read buffer and frozen;
//! header values and the body are slices of that one allocation (no copy)
//! unless a header had escapes to undo.

mod decode;
mod encode;

pub use decode::{CodecError, DecodeError, FrameDecoder, Limits};
pub use encode::{EncodeError, Escape, FrameWriter, encode_frame};

use bytes::Bytes;
use smallvec::SmallVec;
use std::fmt;

/// A negotiated protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V1_0,
    V1_1,
    V1_2,
}

impl Version {
    /// Every version this codec speaks, lowest first.
    pub const ALL: [Version; 3] = [Version::V1_0, Version::V1_1, Version::V1_2];

    /// The version as written in `accept-version` / `version` headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    /// Parses `1.0`, `1.1` or `1.2`.
    pub fn parse(s: &str) -> Option<Version> {
        match s.trim() {
            "1.0" => Some(Version::V1_0),
            "1.1" => Some(Version::V1_1),
            "1.2" => Some(Version::V1_2),
            _ => None,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A frame's command (client and server commands of every version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Connect,
    Stomp,
    Connected,
    Send,
    Subscribe,
    Unsubscribe,
    Ack,
    Nack,
    Begin,
    Commit,
    Abort,
    Disconnect,
    Message,
    Receipt,
    Error,
}

impl Command {
    /// Every command.
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Connected,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    /// The command's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Connected => "CONNECTED",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    /// Parses a command line (case-sensitive, as the specification says).
    pub fn parse(line: &[u8]) -> Option<Command> {
        Some(match line {
            b"CONNECT" => Command::Connect,
            b"STOMP" => Command::Stomp,
            b"CONNECTED" => Command::Connected,
            b"SEND" => Command::Send,
            b"SUBSCRIBE" => Command::Subscribe,
            b"UNSUBSCRIBE" => Command::Unsubscribe,
            b"ACK" => Command::Ack,
            b"NACK" => Command::Nack,
            b"BEGIN" => Command::Begin,
            b"COMMIT" => Command::Commit,
            b"ABORT" => Command::Abort,
            b"DISCONNECT" => Command::Disconnect,
            b"MESSAGE" => Command::Message,
            b"RECEIPT" => Command::Receipt,
            b"ERROR" => Command::Error,
            _ => return None,
        })
    }

    /// Frames whose headers are never escaped (kept compatible with 1.0).
    pub fn is_connect(self) -> bool {
        matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }

    /// Only `SEND`, `MESSAGE` and `ERROR` may carry a body (1.2 §Body).
    pub fn may_have_body(self) -> bool {
        matches!(self, Command::Send | Command::Message | Command::Error)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// UTF-8 text held in [`Bytes`]: a header name or value sliced out of the
/// frame it arrived in (no copy), or owned when it had escapes.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Text(Bytes);

impl Text {
    /// Copies `s`.
    pub fn new(s: &str) -> Text {
        Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// A static string, without copying.
    pub const fn from_static(s: &'static str) -> Text {
        Text(Bytes::from_static(s.as_bytes()))
    }

    /// Wraps bytes after checking they are UTF-8.
    pub fn from_utf8(b: Bytes) -> Result<Text, std::str::Utf8Error> {
        std::str::from_utf8(&b)?;
        Ok(Text(b))
    }

    /// The text. (Checked UTF-8 at construction; the check here is what
    /// lets this crate stay free of `unsafe`.)
    #[inline]
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The shared bytes behind the text (cloning them does not copy).
    #[inline]
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text::new(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text(Bytes::from(s.into_bytes()))
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

/// The headers of one frame, in wire order (repeats kept).
pub type HeaderList = SmallVec<[(Text, Text); 8]>;

/// One STOMP frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: Command,
    pub headers: HeaderList,
    pub body: Bytes,
}

impl Frame {
    /// A frame with no headers and no body.
    pub fn new(command: Command) -> Frame {
        Frame {
            command,
            headers: HeaderList::new(),
            body: Bytes::new(),
        }
    }

    /// Appends a header (builder style).
    pub fn with(mut self, name: &str, value: &str) -> Frame {
        self.headers.push((Text::new(name), Text::new(value)));
        self
    }

    /// Sets the body (builder style).
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = body.into();
        self
    }

    /// The first value of header `name` (the one that counts).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_text(name).map(Text::as_str)
    }

    /// The first value of header `name`, as shared text.
    pub fn header_text(&self, name: &str) -> Option<&Text> {
        self.headers
            .iter()
            .find(|(n, _)| n.as_bytes() == name.as_bytes())
            .map(|(_, v)| v)
    }
}
