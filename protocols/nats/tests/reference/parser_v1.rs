//! The NATS parser as it was before the in-place argument scan (commit
//! 5b4f3f0), kept verbatim as the reference for `codec_differential.rs`:
//! the current parser must give the same operations and the same errors
//! on any input.
#![allow(dead_code)]

use bytes::{Buf, Bytes, BytesMut};

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

/// Splits `line[from..]` into at most `N` whitespace-separated arguments;
/// `None` when there are more.
fn split_args<const N: usize>(line: &[u8], from: usize) -> Option<([Span; N], usize)> {
    let mut out: [Span; N] = std::array::from_fn(|_| 0..0);
    let mut n = 0;
    let mut start: Option<usize> = None;
    for (i, &b) in line.iter().enumerate().skip(from) {
        if is_space(b) {
            if let Some(s) = start.take() {
                *out.get_mut(n)? = s..i;
                n += 1;
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        *out.get_mut(n)? = s..line.len();
        n += 1;
    }
    Some((out, n))
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
        let line = &self.line;
        let verb_end = line.iter().position(|&b| is_space(b)).unwrap_or(line.len());
        let verb = line.get(..verb_end).ok_or(ParseError::UnknownOp)?;
        let is = |want: &[u8]| verb.eq_ignore_ascii_case(want);
        let rest_blank = || {
            line.get(verb_end..)
                .is_none_or(|r| r.iter().all(|&b| is_space(b)))
        };
        if is(b"PUB") {
            let ([x, y, z], n) = split_args::<3>(line, verb_end)
                .ok_or(ParseError::BadArgs("PUB takes 2 or 3 arguments"))?;
            let (subject, reply, size) = match n {
                2 => (x, None, y),
                3 => (x, Some(y), z),
                _ => return Err(ParseError::BadArgs("PUB takes 2 or 3 arguments")),
            };
            let size = parse_size(arg(line, &size)).ok_or(ParseError::BadArgs("PUB size"))?;
            self.start_payload(subject, reply, 0, size)?;
            Ok(None)
        } else if is(b"HPUB") {
            let ([w, x, y, z], n) = split_args::<4>(line, verb_end)
                .ok_or(ParseError::BadArgs("HPUB takes 3 or 4 arguments"))?;
            let (subject, reply, hdr, total) = match n {
                3 => (w, None, x, y),
                4 => (w, Some(x), y, z),
                _ => return Err(ParseError::BadArgs("HPUB takes 3 or 4 arguments")),
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
            let ([x, y, z], n) = split_args::<3>(line, verb_end)
                .ok_or(ParseError::BadArgs("SUB takes 2 or 3 arguments"))?;
            Ok(Some(match n {
                2 => Parsed::Sub {
                    subject: x,
                    queue: None,
                    sid: y,
                },
                3 => Parsed::Sub {
                    subject: x,
                    queue: Some(y),
                    sid: z,
                },
                _ => return Err(ParseError::BadArgs("SUB takes 2 or 3 arguments")),
            }))
        } else if is(b"UNSUB") {
            let ([x, y], n) = split_args::<2>(line, verb_end)
                .ok_or(ParseError::BadArgs("UNSUB takes 1 or 2 arguments"))?;
            Ok(Some(match n {
                1 => Parsed::Unsub { sid: x, max: None },
                2 => Parsed::Unsub {
                    sid: x,
                    max: Some(parse_size(arg(line, &y)).ok_or(ParseError::BadArgs("UNSUB max"))?),
                },
                _ => return Err(ParseError::BadArgs("UNSUB takes 1 or 2 arguments")),
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
