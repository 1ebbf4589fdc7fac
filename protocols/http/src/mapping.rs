//! HTTP requests ↔ canonical messages, and messages → JSON and Server-Sent
//! Events. Pure functions: no I/O, no broker.
//!
//! # In (publish)
//!
//! | HTTP | canonical |
//! | --- | --- |
//! | path `/v1/topics/{address}` | multicast address |
//! | path `/v1/queues/{queue}` | anycast queue name |
//! | body (raw bytes) | `body`, byte-identical |
//! | `Content-Type` | `content_type` (batch lines: `application/json`) |
//! | `Content-Encoding` | `content_encoding` |
//! | `x-correlation-id` | `correlation_id` (its UTF-8 bytes) |
//! | `x-reply-to` | `reply_to` (must be a valid address) |
//! | `x-message-id` | `message_id` |
//! | `x-msg-NAME: value` | header `NAME` = string `value` (names lowercase, as HTTP delivers them) |
//! | `?ttl=MS` | `expires_at` = now + MS |
//! | `?priority=N` (0–9) | `priority` |
//! | `?durable=true` | `durable` |
//!
//! # Out (SSE `meta`, long-poll messages)
//!
//! `headers` is the set of request headers that would publish the same
//! message again: `content-type`, `content-encoding`, `x-correlation-id`,
//! `x-reply-to`, `x-message-id` and `x-msg-NAME` per user header (typed
//! values as their canonical text; repeated names joined with `", "` as
//! RFC 9110 §5.3 combines field lines). Properties HTTP carries as query
//! parameters are members of their own: `priority`, `expires_at`,
//! `timestamp` (ms since the epoch), `durable`.

use crate::error::ApiError;
use axum::http::HeaderMap;
use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::Delivery;
use switchyard_model::{Address, Message, Value, now_millis};

/// Request header prefix of user headers.
pub const HEADER_PREFIX: &str = "x-msg-";
/// Longest queue name accepted (AMQP's short string).
pub const MAX_QUEUE_NAME: usize = 255;

/// Where encoded output goes (a `String`-like byte sink).
pub trait Out {
    fn put(&mut self, bytes: &[u8]);
}

impl Out for Vec<u8> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Out for BytesMut {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.put_slice(bytes);
    }
}

/// Appends `s` as a JSON string (quotes included).
pub fn put_json_str(out: &mut impl Out, s: &str) {
    out.put(b"\"");
    put_json_escaped(out, s);
    out.put(b"\"");
}

/// Appends the JSON escape of `s` (no quotes).
fn put_json_escaped(out: &mut impl Out, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.put(bytes.get(start..i).unwrap_or_default());
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let hex = |n: u8| HEX.get(usize::from(n & 0xf)).copied().unwrap_or(b'0');
            out.put(&[b'\\', b'u', b'0', b'0', hex(b >> 4), hex(b)]);
        } else {
            out.put(esc);
        }
        start = i + 1;
    }
    out.put(bytes.get(start..).unwrap_or_default());
}

/// [`put_json_str`] into a `String`.
pub fn push_json_str(out: &mut String, s: &str) {
    let mut v = std::mem::take(out).into_bytes();
    put_json_str(&mut v, s);
    // Only ASCII escapes were added to valid UTF-8.
    *out = String::from_utf8(v).unwrap_or_default();
}

fn put_u64(out: &mut impl Out, n: u64) {
    out.put(itoa::Buffer::new().format(n).as_bytes());
}

/// Decodes a percent-encoded path segment or query value (no allocation
/// when nothing is encoded).
pub fn decode(raw: &str) -> Result<Cow<'_, str>, ApiError> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::bad_request("invalid_path", "percent-encoded bytes are not UTF-8"))
}

thread_local! {
    /// Addresses recently published to from this thread, already validated:
    /// most publishers use a few addresses over and over, and this saves a
    /// validation and an allocation per request.
    static ADDRESSES: RefCell<hashbrown::HashMap<Box<str>, Address>> =
        RefCell::new(hashbrown::HashMap::new());
}
const ADDRESS_CACHE: usize = 256;

/// The publish address `s`, validated (400 `invalid_address` otherwise).
pub fn address(s: &str) -> Result<Address, ApiError> {
    if let Some(a) = ADDRESSES.with(|c| c.borrow().get(s).cloned()) {
        return Ok(a);
    }
    let a = Address::new(s).map_err(|e| ApiError::bad_request("invalid_address", e.to_string()))?;
    ADDRESSES.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= ADDRESS_CACHE {
            c.clear();
        }
        c.insert(s.into(), a.clone());
    });
    Ok(a)
}

/// Checks a queue name: 1–255 bytes, no control characters.
pub fn check_queue_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > MAX_QUEUE_NAME {
        return Err(ApiError::bad_request(
            "invalid_queue",
            format!(
                "a queue name is 1 to {MAX_QUEUE_NAME} bytes, this one is {}",
                name.len()
            ),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_queue",
            "a queue name may not contain control characters",
        ));
    }
    Ok(())
}

/// Query parameters of a publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishParams {
    /// Milliseconds to live.
    pub ttl: Option<u64>,
    pub priority: Option<u8>,
    pub durable: bool,
    pub batch: bool,
}

/// Query parameters of a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollParams {
    pub max: u32,
    pub wait: Duration,
    pub visibility: Duration,
}

/// Limits and defaults for [`poll_params`].
#[derive(Debug, Clone, Copy)]
pub struct PollLimits {
    pub max_messages: u32,
    pub max_wait: Duration,
    pub default_visibility: Duration,
    pub max_visibility: Duration,
}

fn pairs(query: Option<&str>) -> impl Iterator<Item = (&str, Option<&str>)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        })
}

fn bad_param(name: &str, detail: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_parameter", format!("{name}: {detail}"))
}

fn flag(name: &str, v: Option<&str>) -> Result<bool, ApiError> {
    match v.map(decode).transpose()?.as_deref() {
        None | Some("" | "true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(other) => Err(bad_param(name, format!("'{other}' is not true or false"))),
    }
}

fn number(name: &str, v: Option<&str>) -> Result<u64, ApiError> {
    let v = decode(v.unwrap_or(""))?;
    v.parse::<u64>()
        .map_err(|_| bad_param(name, format!("'{v}' is not a whole number")))
}

fn seconds(name: &str, v: Option<&str>, max: Duration) -> Result<Duration, ApiError> {
    let v = decode(v.unwrap_or(""))?;
    let secs: f64 = v
        .parse()
        .map_err(|_| bad_param(name, format!("'{v}' is not a number of seconds")))?;
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if d <= max => Ok(d),
        _ => Err(bad_param(
            name,
            format!(
                "must be between 0 and {} seconds",
                max.as_secs_f64().to_string().trim_end_matches(".0")
            ),
        )),
    }
}

/// Parses `ttl`, `priority`, `durable` and `batch`; anything else is 400.
pub fn publish_params(query: Option<&str>) -> Result<PublishParams, ApiError> {
    let mut p = PublishParams::default();
    for (k, v) in pairs(query) {
        match &*decode(k)? {
            "ttl" => p.ttl = Some(number("ttl", v)?),
            "priority" => {
                let n = number("priority", v)?;
                p.priority = Some(
                    u8::try_from(n)
                        .ok()
                        .filter(|n| *n <= 9)
                        .ok_or_else(|| bad_param("priority", "must be 0 to 9"))?,
                );
            }
            "durable" => p.durable = flag("durable", v)?,
            "batch" => p.batch = flag("batch", v)?,
            other => {
                return Err(bad_param(
                    other,
                    "unknown parameter (known: ttl, priority, durable, batch)",
                ));
            }
        }
    }
    Ok(p)
}

/// Parses `max`, `wait` and `visibility` (seconds, decimals allowed).
pub fn poll_params(query: Option<&str>, l: &PollLimits) -> Result<PollParams, ApiError> {
    let mut p = PollParams {
        max: 1,
        wait: Duration::ZERO,
        visibility: l.default_visibility,
    };
    for (k, v) in pairs(query) {
        match &*decode(k)? {
            "max" => {
                let n = number("max", v)?;
                p.max = u32::try_from(n)
                    .ok()
                    .filter(|n| (1..=l.max_messages).contains(n))
                    .ok_or_else(|| bad_param("max", format!("must be 1 to {}", l.max_messages)))?;
            }
            "wait" => p.wait = seconds("wait", v, l.max_wait)?,
            "visibility" => p.visibility = seconds("visibility", v, l.max_visibility)?,
            other => {
                return Err(bad_param(
                    other,
                    "unknown parameter (known: max, wait, visibility)",
                ));
            }
        }
    }
    Ok(p)
}

fn header_text<'a>(name: &str, v: &'a axum::http::HeaderValue) -> Result<&'a str, ApiError> {
    std::str::from_utf8(v.as_bytes()).map_err(|_| {
        ApiError::bad_request("invalid_header", format!("{name}: the value is not UTF-8"))
    })
}

/// Maps the request headers onto `msg` (see the module docs). With
/// `batch`, `Content-Type` describes the request, not the messages: each
/// line is an `application/json` message.
pub fn apply_headers(msg: &mut Message, headers: &HeaderMap, batch: bool) -> Result<(), ApiError> {
    for (name, value) in headers {
        let n = name.as_str();
        match n {
            "content-type" => {
                if !batch {
                    msg.properties.content_type = Some(Arc::from(header_text(n, value)?));
                }
            }
            "content-encoding" => {
                msg.properties.content_encoding = Some(Arc::from(header_text(n, value)?));
            }
            "x-correlation-id" => {
                msg.properties.correlation_id = Some(Bytes::copy_from_slice(value.as_bytes()));
            }
            "x-reply-to" => {
                let text = header_text(n, value)?;
                let to = Address::new(text).map_err(|e| {
                    ApiError::bad_request("invalid_header", format!("x-reply-to: {e}"))
                })?;
                msg.properties.reply_to = Some(to.as_arc().clone());
            }
            "x-message-id" => {
                msg.properties.message_id = Some(Arc::from(header_text(n, value)?));
            }
            _ => {
                if let Some(user) = n.strip_prefix(HEADER_PREFIX) {
                    if user.is_empty() {
                        return Err(ApiError::bad_request(
                            "invalid_header",
                            "x-msg-: a header name is needed after the prefix",
                        ));
                    }
                    msg.headers.push(user, header_text(n, value)?);
                }
            }
        }
    }
    if batch {
        msg.properties.content_type = Some(Arc::from("application/json"));
    }
    Ok(())
}

/// Applies the query parameters.
pub fn apply_params(msg: &mut Message, p: &PublishParams) {
    if let Some(ttl) = p.ttl {
        msg.properties.expires_at = Some(now_millis().saturating_add(ttl));
    }
    msg.properties.priority = p.priority;
    msg.properties.durable = p.durable;
}

/// How a body is written in JSON and SSE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyForm<'a> {
    /// As text.
    Text(&'a str),
    /// Base64 (RFC 4648 §4, padded), marked `encoding: base64`.
    Base64,
}

/// Text when the body is UTF-8 (and, for SSE, has no CR, which SSE would
/// read as a line break); base64 otherwise.
pub fn body_form(body: &[u8], sse: bool) -> BodyForm<'_> {
    match std::str::from_utf8(body) {
        Ok(s) if !(sse && memchr::memchr(b'\r', body).is_some()) => BodyForm::Text(s),
        _ => BodyForm::Base64,
    }
}

/// Writes `"name":"value"` (name from parts), with a comma unless first.
fn put_field(out: &mut impl Out, first: &mut bool, name: &[&str], value: &str) {
    out.put(if *first { b"\"" } else { b",\"" });
    *first = false;
    for part in name {
        put_json_escaped(out, part);
    }
    out.put(b"\":");
    put_json_str(out, value);
}

/// A header value as text, without allocating for strings.
fn value_text(v: &Value) -> Cow<'_, str> {
    match v.as_str() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(v.to_text()),
    }
}

/// Writes the `headers` object (see the module docs).
fn put_headers(out: &mut impl Out, msg: &Message) {
    out.put(b"{");
    let mut first = true;
    let p = &msg.properties;
    if let Some(ct) = &p.content_type {
        put_field(out, &mut first, &["content-type"], ct);
    }
    if let Some(ce) = &p.content_encoding {
        put_field(out, &mut first, &["content-encoding"], ce);
    }
    if let Some(c) = p.correlation_id.as_deref()
        && let Ok(c) = std::str::from_utf8(c)
    {
        put_field(out, &mut first, &["x-correlation-id"], c);
    }
    if let Some(r) = &p.reply_to {
        put_field(out, &mut first, &["x-reply-to"], r);
    }
    if let Some(m) = &p.message_id {
        put_field(out, &mut first, &["x-message-id"], m);
    }
    for (i, (name, value)) in msg.headers.iter().enumerate() {
        let mut same = msg.headers.iter().filter(|(n, _)| *n == name);
        if i > 0 && msg.headers.iter().take(i).any(|(n, _)| n == name) {
            continue;
        }
        let _ = same.next();
        let mut text = value_text(value);
        for (_, v) in same {
            let t = text.to_mut();
            t.push_str(", ");
            t.push_str(&value_text(v));
        }
        put_field(out, &mut first, &[HEADER_PREFIX, name], &text);
    }
    out.put(b"}");
}

/// Writes the members every message description shares:
/// `"address":…,"headers":{…}` and the optional properties.
fn put_common(out: &mut impl Out, msg: &Message) {
    out.put(b"\"address\":");
    put_json_str(out, &msg.address);
    out.put(b",\"headers\":");
    put_headers(out, msg);
    let p = &msg.properties;
    if let Some(pr) = p.priority {
        out.put(b",\"priority\":");
        put_u64(out, u64::from(pr));
    }
    if let Some(at) = p.expires_at {
        out.put(b",\"expires_at\":");
        put_u64(out, at);
    }
    if let Some(ts) = p.timestamp {
        out.put(b",\"timestamp\":");
        put_u64(out, ts);
    }
    if p.durable {
        out.put(b",\"durable\":true");
    }
}

/// The SSE `meta` JSON of a message.
pub fn put_meta(out: &mut impl Out, msg: &Message) {
    out.put(b"{");
    put_common(out, msg);
    out.put(b"}");
}

/// Appends one SSE `message` event:
///
/// ```text
/// event: message
/// id: 42
/// encoding: base64            (only when the body is not sent as text)
/// meta: {"address":"a.b","headers":{"x-msg-k":"v"}}
/// data: first line of the body
/// data: second line
///
/// ```
pub fn put_sse_message(out: &mut BytesMut, msg: &Message) {
    out.put_slice(b"event: message\nid: ");
    put_u64(out, msg.id.get());
    out.put_slice(b"\n");
    let form = body_form(&msg.body, true);
    if form == BodyForm::Base64 {
        out.put_slice(b"encoding: base64\n");
    }
    out.put_slice(b"meta: ");
    put_meta(out, msg);
    out.put_slice(b"\n");
    match form {
        BodyForm::Text(text) => {
            for line in text.split('\n') {
                out.put_slice(b"data: ");
                out.put_slice(line.as_bytes());
                out.put_slice(b"\n");
            }
        }
        BodyForm::Base64 => {
            out.put_slice(b"data: ");
            put_base64(out, &msg.body);
            out.put_slice(b"\n");
        }
    }
    out.put_slice(b"\n");
}

/// Appends `body` in base64 (RFC 4648 §4, padded).
fn put_base64(out: &mut impl Grow, body: &[u8]) {
    let start = out.length();
    let n = base64::encoded_len(body.len(), true).unwrap_or(0);
    out.grow_to(start + n);
    let written = out
        .tail(start)
        .and_then(|dst| {
            base64::engine::general_purpose::STANDARD
                .encode_slice(body, dst)
                .ok()
        })
        .unwrap_or(0);
    out.grow_to(start + written);
}

/// A byte buffer base64 can be written into in place.
trait Grow {
    fn length(&self) -> usize;
    fn grow_to(&mut self, n: usize);
    fn tail(&mut self, from: usize) -> Option<&mut [u8]>;
}

impl Grow for Vec<u8> {
    fn length(&self) -> usize {
        self.len()
    }
    fn grow_to(&mut self, n: usize) {
        self.resize(n, 0);
    }
    fn tail(&mut self, from: usize) -> Option<&mut [u8]> {
        self.get_mut(from..)
    }
}

impl Grow for BytesMut {
    fn length(&self) -> usize {
        self.len()
    }
    fn grow_to(&mut self, n: usize) {
        self.resize(n, 0);
    }
    fn tail(&mut self, from: usize) -> Option<&mut [u8]> {
        self.get_mut(from..)
    }
}

/// Appends an SSE comment (ignored by clients; keeps the stream alive).
pub fn put_sse_comment(out: &mut BytesMut, text: &str) {
    out.put_slice(b": ");
    out.put_slice(text.as_bytes());
    out.put_slice(b"\n\n");
}

/// Appends the last event of a stream: `event: close` with
/// `{"reason": …, "detail": …}`.
pub fn put_sse_close(out: &mut BytesMut, reason: &str, detail: &str) {
    out.put_slice(b"event: close\ndata: {\"reason\":");
    put_json_str(out, reason);
    out.put_slice(b",\"detail\":");
    put_json_str(out, detail);
    out.put_slice(b"}\n\n");
}

/// Appends one long-poll message object.
pub fn put_polled(out: &mut Vec<u8>, receipt: &str, d: &Delivery) {
    let msg = &d.message;
    out.extend_from_slice(b"{\"receipt\":\"");
    out.extend_from_slice(receipt.as_bytes());
    out.extend_from_slice(b"\",\"id\":");
    put_u64(out, msg.id.get());
    out.extend_from_slice(b",");
    put_common(out, msg);
    out.extend_from_slice(b",\"redelivered\":");
    out.extend_from_slice(if d.redelivered { b"true" } else { b"false" });
    out.extend_from_slice(b",\"delivery_count\":");
    put_u64(out, u64::from(d.delivery_count));
    match body_form(&msg.body, false) {
        BodyForm::Text(text) => {
            out.extend_from_slice(b",\"body\":");
            put_json_str(out, text);
        }
        BodyForm::Base64 => {
            out.extend_from_slice(b",\"encoding\":\"base64\",\"body\":\"");
            put_base64(out, &msg.body);
            out.extend_from_slice(b"\"");
        }
    }
    out.extend_from_slice(b"}");
}

/// Why an NDJSON batch was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// More lines than allowed (413).
    TooMany { max: usize },
    /// A line longer than a message may be (413). Lines count from 1.
    LineTooLong { line: usize, len: usize, max: usize },
    /// A line that is not one JSON text (415).
    BadLine { line: usize, error: String },
}

impl From<BatchError> for ApiError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::TooMany { max } => {
                ApiError::too_large(format!("a batch holds at most {max} messages"))
            }
            BatchError::LineTooLong { line, len, max } => ApiError::too_large(format!(
                "line {line} is {len} bytes, a message may be {max}"
            ))
            .with("line", line),
            BatchError::BadLine { line, error } => ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "bad_batch_line",
                format!("line {line} is not a JSON text: {error}"),
            )
            .with("line", line),
        }
    }
}

/// Splits an NDJSON body into its lines (zero-copy slices of `body`),
/// checking every line before returning any: each must be one JSON text of
/// at most `max_line` bytes, and there may be at most `max_lines`. A line
/// ends at LF; a CR before it is dropped; lines holding only whitespace are
/// skipped.
pub fn split_batch(
    body: &Bytes,
    max_lines: usize,
    max_line: usize,
) -> Result<Vec<Bytes>, BatchError> {
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut number = 0usize;
    let len = body.len();
    while start < len {
        let end =
            memchr::memchr(b'\n', body.get(start..).unwrap_or_default()).map_or(len, |i| start + i);
        number += 1;
        let mut line_end = end;
        if line_end > start && body.get(line_end - 1) == Some(&b'\r') {
            line_end -= 1;
        }
        let line = body.slice(start..line_end);
        start = end + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if line.len() > max_line {
            return Err(BatchError::LineTooLong {
                line: number,
                len: line.len(),
                max: max_line,
            });
        }
        // JSON text is UTF-8 (RFC 8259 §8.1); serde_json does not check
        // the strings it skips, so check first.
        let checked = std::str::from_utf8(&line)
            .map_err(|e| e.to_string())
            .and_then(|text| {
                serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| e.to_string())
            });
        if let Err(error) = checked {
            return Err(BatchError::BadLine {
                line: number,
                error,
            });
        }
        if out.len() == max_lines {
            return Err(BatchError::TooMany { max: max_lines });
        }
        out.push(line);
    }
    Ok(out)
}
