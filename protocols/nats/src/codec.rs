//! The NATS client protocol on the wire: an incremental parser for what
//! clients send, and encoders for what the server sends.
//!
//! # Byte layout (client → server)
//!
//! ```text
//! CONNECT <json>\r\n
//! PUB <subject> [reply-to] <#bytes>\r\n<payload>\r\n
//! HPUB <subject> [reply-to] <#header bytes> <#total bytes>\r\n<headers><payload>\r\n
//! SUB <subject> [queue group] <sid>\r\n
//! UNSUB <sid> [max_msgs]\r\n
//! PING\r\n | PONG\r\n
//! ```
//!
//! Verbs are case-insensitive; arguments are separated by spaces or tabs; a
//! bare `\n` ends a line as well as `\r\n` (as nats-server accepts).
//!
//! # Limits (checked before memory is committed)
//!
//! * A control line longer than `max_control_line` is an error as soon as
//!   that many bytes are buffered without a newline (nats-server: `Maximum
//!   Control Line Exceeded`).
//! * A `PUB`/`HPUB` whose declared size exceeds `max_payload` is an error
//!   when its control line is read, before any payload is buffered
//!   (`Maximum Payload Violation`).
//!
//! The parser keeps its scan position between calls, so a control line that
//! arrives a byte at a time is scanned once. Payloads are sliced out of the
//! read buffer without copying (`split_to(n).freeze()`).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// One operation a client sent. Arguments borrow the parser's copy of the
/// control line (valid until the next `parse`); payloads are slices of the
/// read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOp<'a> {
    /// `CONNECT` and its JSON options (unparsed).
    Connect(&'a [u8]),
    /// `PUB` (`header_len == 0`) or `HPUB`. `payload` holds the header block
    /// followed by the body.
    Pub {
        subject: &'a [u8],
        reply: Option<&'a [u8]>,
        header_len: usize,
        payload: Bytes,
    },
    Sub {
        subject: &'a [u8],
        queue: Option<&'a [u8]>,
        sid: &'a [u8],
    },
    Unsub {
        sid: &'a [u8],
        max: Option<u64>,
    },
    Ping,
    Pong,
}

/// Why the byte stream is not the NATS protocol. Every one closes the
/// connection after the `-ERR` [`ParseError::err_text`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown protocol operation")]
    UnknownOp,
    #[error("control line longer than {limit} bytes")]
    MaxControlLine { limit: usize },
    #[error("payload of {size} bytes exceeds the maximum of {limit}")]
    MaxPayload { size: u64, limit: usize },
    #[error("bad arguments: {0}")]
    BadArgs(&'static str),
    #[error("payload not followed by CRLF")]
    BadTerminator,
}

impl ParseError {
    /// The text nats-server sends in `-ERR '…'` for this error.
    pub fn err_text(&self) -> &'static str {
        match self {
            ParseError::MaxControlLine { .. } => "Maximum Control Line Exceeded",
            ParseError::MaxPayload { .. } => "Maximum Payload Violation",
            ParseError::UnknownOp | ParseError::BadArgs(_) | ParseError::BadTerminator => {
                "Unknown Protocol Operation"
            }
        }
    }
}

type Span = std::ops::Range<usize>;

/// A parsed control line, as ranges into the parser's line copy.
#[derive(Debug, Clone)]
enum Parsed {
    Connect(Span),
    Sub {
        subject: Span,
        queue: Option<Span>,
        sid: Span,
    },
    Unsub {
        sid: Span,
        max: Option<u64>,
    },
    Ping,
    Pong,
}

#[derive(Debug, Clone)]
struct PendingPub {
    subject: Span,
    reply: Option<Span>,
    header_len: usize,
    size: usize,
}

/// Incremental parser. Feed it the connection's read buffer; it consumes
/// whole operations from the front.
#[derive(Debug)]
pub struct Parser {
    max_control_line: usize,
    max_payload: usize,
    /// Bytes of the buffer already searched for a newline.
    scanned: usize,
    /// A copy of the current control line.
    line: Vec<u8>,
    /// A `PUB`/`HPUB` whose control line is consumed, waiting for its payload.
    pending: Option<PendingPub>,
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// The whitespace-separated arguments of a control line, scanned in
/// place from left to right (no argument array is built).
struct Args<'a> {
    line: &'a [u8],
    pos: usize,
}

impl<'a> Args<'a> {
    #[inline]
    fn new(line: &'a [u8], from: usize) -> Self {
        Args { line, pos: from }
    }

    /// The next argument, or `None` at the end of the line.
    #[inline]
    fn next_arg(&mut self) -> Option<Span> {
        let rest = self.line.get(self.pos..)?;
        let Some(skip) = rest.iter().position(|&b| !is_space(b)) else {
            self.pos = self.line.len();
            return None;
        };
        let start = self.pos + skip;
        let tail = self.line.get(start..).unwrap_or_default();
        let end = start + tail.iter().position(|&b| is_space(b)).unwrap_or(tail.len());
        self.pos = end;
        Some(start..end)
    }

    /// True when no argument is left.
    #[inline]
    fn done(&mut self) -> bool {
        self.next_arg().is_none()
    }
}

fn parse_size(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(n)
}

/// `PUB <subject> [reply] <size>` as clients write it — upper-case verb,
/// one separator between arguments, none at the end — split in a single
/// pass over the line. `None` for anything else (other verbs, runs of
/// separators, a bad size, the wrong number of arguments): the general
/// scan then parses it, with the same result for the lines this accepts.
#[inline]
fn pub_fast(line: &[u8]) -> Option<(Span, Option<Span>, u64)> {
    const START: usize = 4;
    if line.get(..START)? != b"PUB " {
        return None;
    }
    let mut ends = [0usize; 3];
    let mut n = 0;
    let mut start = START;
    for (i, &b) in line.iter().enumerate().skip(START) {
        if is_space(b) {
            if i == start || n == 2 {
                return None;
            }
            *ends.get_mut(n)? = i;
            n += 1;
            start = i + 1;
        }
    }
    if start == line.len() {
        return None;
    }
    let size = parse_size(line.get(start..)?)?;
    match n {
        1 => Some((START..ends[0], None, size)),
        2 => Some((START..ends[0], Some(ends[0] + 1..ends[1]), size)),
        _ => None,
    }
}

fn arg<'a>(line: &'a [u8], span: &Span) -> &'a [u8] {
    line.get(span.clone()).unwrap_or_default()
}

impl Parser {
    pub fn new(max_control_line: usize, max_payload: usize) -> Self {
        Parser {
            max_control_line,
            max_payload,
            scanned: 0,
            line: Vec::new(),
            pending: None,
        }
    }

    /// The largest payload accepted (`max_payload` in `INFO`).
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Parses the next operation from the front of `buf`. `Ok(None)` means
    /// more bytes are needed (the buffer is reserved for a known shortfall).
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<ClientOp<'_>>, ParseError> {
        loop {
            if let Some(p) = &self.pending {
                let need = p.size + 2;
                if buf.len() < need {
                    buf.reserve(need - buf.len());
                    return Ok(None);
                }
                let p = self.pending.take().ok_or(ParseError::UnknownOp)?;
                let payload = buf.split_to(p.size).freeze();
                if buf.get(..2) != Some(b"\r\n") {
                    return Err(ParseError::BadTerminator);
                }
                buf.advance(2);
                return Ok(Some(ClientOp::Pub {
                    subject: arg(&self.line, &p.subject),
                    reply: p.reply.as_ref().map(|r| arg(&self.line, r)),
                    header_len: p.header_len,
                    payload,
                }));
            }
            let from = self.scanned.min(buf.len());
            let Some(nl) = buf.get(from..).and_then(|rest| memchr::memchr(b'\n', rest)) else {
                if buf.len() > self.max_control_line {
                    return Err(ParseError::MaxControlLine {
                        limit: self.max_control_line,
                    });
                }
                self.scanned = buf.len();
                return Ok(None);
            };
            let end = from + nl;
            self.scanned = 0;
            let mut len = end;
            if len > 0 && buf.get(len - 1) == Some(&b'\r') {
                len -= 1;
            }
            if len > self.max_control_line {
                return Err(ParseError::MaxControlLine {
                    limit: self.max_control_line,
                });
            }
            self.line.clear();
            self.line
                .extend_from_slice(buf.get(..len).unwrap_or_default());
            buf.advance(end + 1);
            if self.line.capacity() > 4 * self.max_control_line.max(1024) && self.line.len() < 1024
            {
                self.line.shrink_to(1024);
            }
            if let Some(parsed) = self.control_line()? {
                let l = &self.line;
                return Ok(Some(match parsed {
                    Parsed::Connect(j) => ClientOp::Connect(arg(l, &j)),
                    Parsed::Sub {
                        subject,
                        queue,
                        sid,
                    } => ClientOp::Sub {
                        subject: arg(l, &subject),
                        queue: queue.as_ref().map(|q| arg(l, q)),
                        sid: arg(l, &sid),
                    },
                    Parsed::Unsub { sid, max } => ClientOp::Unsub {
                        sid: arg(l, &sid),
                        max,
                    },
                    Parsed::Ping => ClientOp::Ping,
                    Parsed::Pong => ClientOp::Pong,
                }));
            }
        }
    }

    /// Parses the control line in `self.line`. `Ok(None)` when it was a
    /// `PUB`/`HPUB` whose payload is still to come (it is then pending).
    fn control_line(&mut self) -> Result<Option<Parsed>, ParseError> {
        if let Some((subject, reply, size)) = pub_fast(&self.line) {
            self.start_payload(subject, reply, 0, size)?;
            return Ok(None);
        }
        let line = &self.line;
        let verb_end = line.iter().position(|&b| is_space(b)).unwrap_or(line.len());
        let verb = line.get(..verb_end).ok_or(ParseError::UnknownOp)?;
        let is = |want: &[u8]| verb.eq_ignore_ascii_case(want);
        let rest_blank = || {
            line.get(verb_end..)
                .is_none_or(|r| r.iter().all(|&b| is_space(b)))
        };
        if is(b"PUB") {
            const E: ParseError = ParseError::BadArgs("PUB takes 2 or 3 arguments");
            let mut args = Args::new(line, verb_end);
            let (Some(x), Some(y)) = (args.next_arg(), args.next_arg()) else {
                return Err(E);
            };
            let (subject, reply, size) = match args.next_arg() {
                None => (x, None, y),
                Some(z) if args.done() => (x, Some(y), z),
                Some(_) => return Err(E),
            };
            let size = parse_size(arg(line, &size)).ok_or(ParseError::BadArgs("PUB size"))?;
            self.start_payload(subject, reply, 0, size)?;
            Ok(None)
        } else if is(b"HPUB") {
            const E: ParseError = ParseError::BadArgs("HPUB takes 3 or 4 arguments");
            let mut args = Args::new(line, verb_end);
            let (Some(w), Some(x), Some(y)) = (args.next_arg(), args.next_arg(), args.next_arg())
            else {
                return Err(E);
            };
            let (subject, reply, hdr, total) = match args.next_arg() {
                None => (w, None, x, y),
                Some(z) if args.done() => (w, Some(x), y, z),
                Some(_) => return Err(E),
            };
            let hdr = parse_size(arg(line, &hdr)).ok_or(ParseError::BadArgs("HPUB header size"))?;
            let total =
                parse_size(arg(line, &total)).ok_or(ParseError::BadArgs("HPUB total size"))?;
            if hdr > total {
                return Err(ParseError::BadArgs(
                    "HPUB header size larger than total size",
                ));
            }
            let hdr = usize::try_from(hdr).map_err(|_| ParseError::BadArgs("HPUB header size"))?;
            self.start_payload(subject, reply, hdr, total)?;
            Ok(None)
        } else if is(b"SUB") {
            const E: ParseError = ParseError::BadArgs("SUB takes 2 or 3 arguments");
            let mut args = Args::new(line, verb_end);
            let (Some(x), Some(y)) = (args.next_arg(), args.next_arg()) else {
                return Err(E);
            };
            Ok(Some(match args.next_arg() {
                None => Parsed::Sub {
                    subject: x,
                    queue: None,
                    sid: y,
                },
                Some(z) if args.done() => Parsed::Sub {
                    subject: x,
                    queue: Some(y),
                    sid: z,
                },
                Some(_) => return Err(E),
            }))
        } else if is(b"UNSUB") {
            const E: ParseError = ParseError::BadArgs("UNSUB takes 1 or 2 arguments");
            let mut args = Args::new(line, verb_end);
            let Some(x) = args.next_arg() else {
                return Err(E);
            };
            Ok(Some(match args.next_arg() {
                None => Parsed::Unsub { sid: x, max: None },
                Some(y) if args.done() => Parsed::Unsub {
                    sid: x,
                    max: Some(parse_size(arg(line, &y)).ok_or(ParseError::BadArgs("UNSUB max"))?),
                },
                Some(_) => return Err(E),
            }))
        } else if is(b"PING") && rest_blank() {
            Ok(Some(Parsed::Ping))
        } else if is(b"PONG") && rest_blank() {
            Ok(Some(Parsed::Pong))
        } else if is(b"CONNECT") {
            let start = line
                .iter()
                .enumerate()
                .skip(verb_end)
                .find(|(_, b)| !is_space(**b))
                .map_or(line.len(), |(i, _)| i);
            Ok(Some(Parsed::Connect(start..line.len())))
        } else {
            Err(ParseError::UnknownOp)
        }
    }

    fn start_payload(
        &mut self,
        subject: Span,
        reply: Option<Span>,
        header_len: usize,
        size: u64,
    ) -> Result<(), ParseError> {
        if size > self.max_payload as u64 {
            return Err(ParseError::MaxPayload {
                size,
                limit: self.max_payload,
            });
        }
        let size = usize::try_from(size).map_err(|_| ParseError::BadArgs("size"))?;
        self.pending = Some(PendingPub {
            subject,
            reply,
            header_len,
            size,
        });
        Ok(())
    }
}

/// Appends `MSG`/`HMSG` for one delivery. `headers` is a complete
/// `NATS/1.0` header block (ending in `\r\n\r\n`) or empty.
pub fn encode_msg(
    out: &mut BytesMut,
    subject: &[u8],
    sid: &[u8],
    reply: Option<&[u8]>,
    headers: &[u8],
    body: &[u8],
) {
    let mut num = itoa::Buffer::new();
    out.reserve(
        subject.len() + sid.len() + reply.map_or(0, <[u8]>::len) + headers.len() + body.len() + 40,
    );
    if headers.is_empty() {
        out.put_slice(b"MSG ");
    } else {
        out.put_slice(b"HMSG ");
    }
    out.put_slice(subject);
    out.put_u8(b' ');
    out.put_slice(sid);
    out.put_u8(b' ');
    if let Some(r) = reply {
        out.put_slice(r);
        out.put_u8(b' ');
    }
    if !headers.is_empty() {
        out.put_slice(num.format(headers.len()).as_bytes());
        out.put_u8(b' ');
    }
    out.put_slice(num.format(headers.len() + body.len()).as_bytes());
    out.put_slice(b"\r\n");
    out.put_slice(headers);
    out.put_slice(body);
    out.put_slice(b"\r\n");
}

/// The start of every `MSG` without reply subject or headers for one
/// subscription: `MSG <subject> <sid> <size>\r\n`, kept by the connection
/// for the subject and size it last wrote, so a run of deliveries of one
/// subject and size (the common case) copies it whole. Written with
/// [`encode_msg_with_head`]: the same bytes as [`encode_msg`] writes.
#[derive(Debug, Default)]
pub struct MsgHead {
    bytes: Vec<u8>,
    /// Length of `MSG <subject> <sid> ` in `bytes`.
    prefix: usize,
    /// The body size `bytes` ends with.
    size: usize,
}

impl MsgHead {
    /// Sets the head for `subject` and `sid` (and a body of `size` bytes).
    pub fn set(&mut self, subject: &[u8], sid: &[u8], size: usize) {
        self.bytes.clear();
        self.bytes.reserve(subject.len() + sid.len() + 28);
        self.bytes.extend_from_slice(b"MSG ");
        self.bytes.extend_from_slice(subject);
        self.bytes.push(b' ');
        self.bytes.extend_from_slice(sid);
        self.bytes.push(b' ');
        self.prefix = self.bytes.len();
        self.set_size(size);
    }

    /// The head for a body of `size` bytes (same subject and sid).
    #[inline]
    pub fn for_size(&mut self, size: usize) -> &[u8] {
        if size != self.size || self.bytes.len() <= self.prefix {
            self.set_size(size);
        }
        &self.bytes
    }

    fn set_size(&mut self, size: usize) {
        self.bytes.truncate(self.prefix);
        self.bytes
            .extend_from_slice(itoa::Buffer::new().format(size).as_bytes());
        self.bytes.extend_from_slice(b"\r\n");
        self.size = size;
    }
}

/// Appends a `MSG` (no reply subject, no headers) whose head
/// ([`MsgHead::for_size`] for this body's size) is `head`.
#[inline]
pub fn encode_msg_with_head(out: &mut BytesMut, head: &[u8], body: &[u8]) {
    out.reserve(head.len() + body.len() + 2);
    out.extend_from_slice(head);
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

/// Appends `-ERR '<text>'`.
pub fn encode_err(out: &mut BytesMut, text: &str) {
    out.put_slice(b"-ERR '");
    out.put_slice(text.as_bytes());
    out.put_slice(b"'\r\n");
}

/// Appends `INFO <json>`.
pub fn encode_info(out: &mut BytesMut, json: &[u8]) {
    out.put_slice(b"INFO ");
    out.put_slice(json);
    out.put_slice(b"\r\n");
}

pub const PING: &[u8] = b"PING\r\n";
pub const PONG: &[u8] = b"PONG\r\n";
pub const OK: &[u8] = b"+OK\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    /// An owned copy of an op, for comparisons.
    #[derive(Debug, PartialEq, Eq)]
    enum Op {
        Connect(Vec<u8>),
        Pub(Vec<u8>, Option<Vec<u8>>, usize, Vec<u8>),
        Sub(Vec<u8>, Option<Vec<u8>>, Vec<u8>),
        Unsub(Vec<u8>, Option<u64>),
        Ping,
        Pong,
    }

    fn own(op: ClientOp<'_>) -> Op {
        match op {
            ClientOp::Connect(j) => Op::Connect(j.to_vec()),
            ClientOp::Pub {
                subject,
                reply,
                header_len,
                payload,
            } => Op::Pub(
                subject.to_vec(),
                reply.map(<[u8]>::to_vec),
                header_len,
                payload.to_vec(),
            ),
            ClientOp::Sub {
                subject,
                queue,
                sid,
            } => Op::Sub(subject.to_vec(), queue.map(<[u8]>::to_vec), sid.to_vec()),
            ClientOp::Unsub { sid, max } => Op::Unsub(sid.to_vec(), max),
            ClientOp::Ping => Op::Ping,
            ClientOp::Pong => Op::Pong,
        }
    }

    fn parse_all(input: &[u8]) -> Result<Vec<Op>, ParseError> {
        let mut p = Parser::new(4096, 1024 * 1024);
        let mut buf = BytesMut::from(input);
        let mut ops = Vec::new();
        while let Some(op) = p.parse(&mut buf)? {
            ops.push(own(op));
        }
        Ok(ops)
    }

    #[test]
    fn parses_every_op() {
        let ops = parse_all(
            b"CONNECT {\"verbose\":false}\r\nPUB a.b 5\r\nhello\r\npub a.b r.1 0\r\n\r\nHPUB x 12 14\r\nNATS/1.0\r\n\r\nhi\r\nSUB a.* 1\r\nsub a.> q 2\r\nUNSUB 1\r\nunsub 2 10\r\nPING\r\npong\n",
        )
        .unwrap();
        assert_eq!(ops.len(), 10);
        assert_eq!(ops[0], Op::Connect(b"{\"verbose\":false}".to_vec()));
        assert_eq!(ops[1], Op::Pub(b"a.b".to_vec(), None, 0, b"hello".to_vec()));
        assert_eq!(
            ops[2],
            Op::Pub(b"a.b".to_vec(), Some(b"r.1".to_vec()), 0, vec![])
        );
        assert_eq!(
            ops[3],
            Op::Pub(b"x".to_vec(), None, 12, b"NATS/1.0\r\n\r\nhi".to_vec())
        );
        assert_eq!(
            ops[5],
            Op::Sub(b"a.>".to_vec(), Some(b"q".to_vec()), b"2".to_vec())
        );
        assert_eq!(ops[7], Op::Unsub(b"2".to_vec(), Some(10)));
        assert_eq!(ops[8], Op::Ping);
        assert_eq!(ops[9], Op::Pong);
    }

    #[test]
    fn the_pub_fast_path_agrees_with_the_general_scan() {
        // Lines the fast path takes, and near misses it leaves to the
        // general scan: same operations either way.
        let want = |reply: Option<&[u8]>| {
            Op::Pub(
                b"a.b".to_vec(),
                reply.map(<[u8]>::to_vec),
                0,
                b"hi".to_vec(),
            )
        };
        for (line, reply) in [
            (&b"PUB a.b 2"[..], None),
            (b"PUB a.b r 2", Some(&b"r"[..])),
            (b"PUB a.b\t2", None),
            (b"PUB a.b  2", None),
            (b"PUB a.b 2 ", None),
            (b"PUB  a.b r 2", Some(b"r")),
            (b"pub a.b r\t 2", Some(b"r")),
            (b"PUB a.b r 002", Some(b"r")),
        ] {
            let wire = [line, b"\r\nhi\r\n"].concat();
            assert_eq!(parse_all(&wire).unwrap(), vec![want(reply)], "{line:?}");
            assert_eq!(
                pub_fast(line).is_some(),
                !line.starts_with(b"pub")
                    && !line.windows(2).any(|w| w.iter().all(|&b| is_space(b)))
                    && !line.ends_with(b" ")
            );
        }
        for bad in [
            &b"PUB a.b"[..],
            b"PUB a.b r s 2",
            b"PUB a.b x",
            b"PUB a.b -2",
            b"PUB ",
        ] {
            assert!(pub_fast(bad).is_none());
            assert!(matches!(
                parse_all(&[bad, b"\r\n"].concat()),
                Err(ParseError::BadArgs(_))
            ));
        }
    }

    #[test]
    fn tabs_and_extra_spaces_separate_arguments() {
        let ops = parse_all(b"PUB \t a.b \t 2\r\nhi\r\n").unwrap();
        assert_eq!(ops[0], Op::Pub(b"a.b".to_vec(), None, 0, b"hi".to_vec()));
    }

    #[test]
    fn errors_match_nats_server() {
        assert_eq!(parse_all(b"FOO\r\n"), Err(ParseError::UnknownOp));
        assert_eq!(
            parse_all(b"PUB a 5\r\nhelloXX"),
            Err(ParseError::BadTerminator)
        );
        assert!(matches!(
            parse_all(b"PUB a 2000000\r\n"),
            Err(ParseError::MaxPayload { .. })
        ));
        assert!(matches!(
            parse_all(&[b'x'; 5000]),
            Err(ParseError::MaxControlLine { .. })
        ));
        assert!(matches!(
            parse_all(b"PUB a\r\n"),
            Err(ParseError::BadArgs(_))
        ));
        assert!(matches!(
            parse_all(b"PUB a b c d\r\n"),
            Err(ParseError::BadArgs(_))
        ));
        assert!(matches!(
            parse_all(b"PUB a -1\r\n"),
            Err(ParseError::BadArgs(_))
        ));
        assert!(matches!(
            parse_all(b"HPUB a 10 5\r\n"),
            Err(ParseError::BadArgs(_))
        ));
        assert!(matches!(
            parse_all(b"SUB a\r\n"),
            Err(ParseError::BadArgs(_))
        ));
        assert_eq!(
            ParseError::UnknownOp.err_text(),
            "Unknown Protocol Operation"
        );
    }

    #[test]
    fn max_payload_is_checked_before_the_payload_arrives() {
        let mut p = Parser::new(4096, 10);
        let mut buf = BytesMut::from(&b"PUB a 11\r\n"[..]);
        assert!(matches!(
            p.parse(&mut buf),
            Err(ParseError::MaxPayload {
                size: 11,
                limit: 10
            })
        ));
    }

    #[test]
    fn encodes_msg_and_hmsg() {
        let mut out = BytesMut::new();
        encode_msg(&mut out, b"a.b", b"7", None, b"", b"hi");
        encode_msg(
            &mut out,
            b"a.b",
            b"7",
            Some(b"r"),
            b"NATS/1.0\r\n\r\n",
            b"hi",
        );
        assert_eq!(
            &out[..],
            b"MSG a.b 7 2\r\nhi\r\nHMSG a.b 7 r 12 14\r\nNATS/1.0\r\n\r\nhi\r\n"
        );
    }

    #[test]
    fn a_msg_from_its_head_is_the_same_bytes_as_encode_msg() {
        let mut head = MsgHead::default();
        for (subject, sid, body) in [
            (&b"a.b"[..], &b"7"[..], &b"hi"[..]),
            (b"a.b", b"7", b"hello"),
            (b"x", b"1234567890", b""),
            (b"foo.bar.baz", b"s", &[0u8; 1000][..]),
            (b"foo.bar.baz", b"s", &[1u8; 1000][..]),
            (b"foo.bar.baz", b"s", b"ab"),
        ] {
            let mut want = BytesMut::new();
            encode_msg(&mut want, subject, sid, None, b"", body);
            if !head.bytes.starts_with(b"MSG ")
                || head.bytes[4..head.prefix - 1] != [subject, b" ", sid].concat()
            {
                head.set(subject, sid, body.len());
            }
            let mut got = BytesMut::from(&b"PONG\r\n"[..]);
            encode_msg_with_head(&mut got, head.for_size(body.len()), body);
            assert_eq!(&got[6..], &want[..]);
        }
    }
}
