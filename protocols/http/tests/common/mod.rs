//! Helpers shared by the HTTP adapter's tests: a WHATWG Server-Sent Events
//! parser, an SSE reader over a reqwest response, a strict Prometheus text
//! parser, and broker configuration shortcuts.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    dead_code
)]

use base64::Engine as _;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::time::Duration;

pub const WAIT: Duration = Duration::from_secs(10);

/// One dispatched SSE event, as the WHATWG algorithm produces it, plus the
/// fields the algorithm ignores (kept here to check `meta` and `encoding`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Event {
    pub kind: String,
    pub data: String,
    pub id: String,
    pub other: HashMap<String, String>,
}

/// The WHATWG event-stream interpretation (HTML §9.2.6), fed in chunks.
#[derive(Default)]
pub struct SseParser {
    pending: Vec<u8>,
    data: String,
    kind: String,
    last_id: String,
    other: HashMap<String, String>,
    pub events: Vec<Event>,
    pub comments: Vec<String>,
}

impl SseParser {
    pub fn feed(&mut self, chunk: &[u8]) {
        self.pending.extend_from_slice(chunk);
        loop {
            let Some(pos) = self.pending.iter().position(|&b| b == b'\n' || b == b'\r') else {
                return;
            };
            // A CR at the end of the buffer may be the first half of CRLF.
            if self.pending[pos] == b'\r' && pos + 1 == self.pending.len() {
                return;
            }
            let line = String::from_utf8(self.pending[..pos].to_vec()).expect("UTF-8 stream");
            let skip = if self.pending[pos] == b'\r' && self.pending.get(pos + 1) == Some(&b'\n') {
                2
            } else {
                1
            };
            self.pending.drain(..pos + skip);
            self.line(&line);
        }
    }

    fn line(&mut self, line: &str) {
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if let Some(c) = line.strip_prefix(':') {
            self.comments.push(c.trim_start().to_owned());
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.kind = value.to_owned(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" => {
                if !value.contains('\0') {
                    self.last_id = value.to_owned();
                }
            }
            "retry" => {}
            other => {
                self.other.insert(other.to_owned(), value.to_owned());
            }
        }
    }

    fn dispatch(&mut self) {
        let other = std::mem::take(&mut self.other);
        if self.data.is_empty() {
            self.kind.clear();
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        let kind = std::mem::take(&mut self.kind);
        self.events.push(Event {
            kind: if kind.is_empty() {
                "message".into()
            } else {
                kind
            },
            data,
            id: self.last_id.clone(),
            other,
        });
    }
}

pub fn parse_whole(bytes: &[u8], chunk: usize) -> SseParser {
    let mut p = SseParser::default();
    for c in bytes.chunks(chunk.max(1)) {
        p.feed(c);
    }
    p
}

/// The body an SSE client recovers from an event.
pub fn body_of(e: &Event) -> Vec<u8> {
    match e.other.get("encoding").map(String::as_str) {
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(&e.data)
            .expect("valid base64"),
        None => e.data.clone().into_bytes(),
        Some(other) => panic!("unknown encoding {other}"),
    }
}

impl Event {
    /// The parsed `meta` field.
    pub fn meta(&self) -> serde_json::Value {
        serde_json::from_str(self.other.get("meta").expect("meta field")).expect("meta is JSON")
    }
}

/// Percent-encodes what a path segment cannot hold as is (`#`, `%`, `/`, `?`, space).
pub fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, &SEGMENT).to_string()
}

const SEGMENT: percent_encoding::AsciiSet = percent_encoding::CONTROLS
    .add(b' ')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'?')
    .add(b'"')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// A Server-Sent Events stream being read.
pub struct Sse {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    parser: SseParser,
    next: usize,
    pub ended: bool,
}

impl Sse {
    /// Opens `GET {base}/v1/topics/{filter}/events` and waits for the
    /// opening comment (the subscription exists from then on).
    pub async fn open(http: &reqwest::Client, base: &str, filter: &str) -> Sse {
        let r = http
            .get(format!("{base}/v1/topics/{}/events", segment(filter)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let mut s = Sse {
            body: Box::pin(r.bytes_stream()),
            parser: SseParser::default(),
            next: 0,
            ended: false,
        };
        while s.parser.comments.is_empty() {
            assert!(s.read(WAIT).await, "no opening comment");
        }
        assert!(s.parser.comments[0].starts_with("subscribed to "));
        s
    }

    /// Reads one chunk; false on timeout or end of stream.
    async fn read(&mut self, timeout: Duration) -> bool {
        match tokio::time::timeout(timeout, self.body.next()).await {
            Ok(Some(Ok(chunk))) => {
                self.parser.feed(&chunk);
                true
            }
            Ok(Some(Err(_)) | None) => {
                self.ended = true;
                false
            }
            Err(_) => false,
        }
    }

    /// The next event, or `None` after `timeout` or at the end.
    pub async fn event(&mut self, timeout: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.parser.events.get(self.next) {
                self.next += 1;
                return Some(e.clone());
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if self.ended || left.is_zero() || !self.read(left).await {
                return None;
            }
        }
    }

    /// Comments seen so far.
    pub fn comments(&self) -> &[String] {
        &self.parser.comments
    }
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses the Prometheus text format (version 0.0.4) strictly: HELP and
/// TYPE lines, metric and label names, escaped label values, float values;
/// every sample belongs to a family declared by a preceding TYPE line.
pub fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    fn name_ok(s: &str) -> bool {
        let mut c = s.chars();
        matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
    }
    let mut types: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !name_ok(name) {
                return Err(format!("line {n}: bad metric name in {line:?}"));
            }
            match kind {
                "HELP" => {}
                "TYPE" => {
                    let t = parts.next().unwrap_or("");
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                        return Err(format!("line {n}: bad type {t}"));
                    }
                    if types.insert(name.to_owned(), t.to_owned()).is_some() {
                        return Err(format!("line {n}: {name} declared twice"));
                    }
                }
                _ => return Err(format!("line {n}: unknown comment {line:?}")),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("line {n}: no value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().map_err(|_| format!("line {n}: bad value {v}"))?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .ok_or_else(|| format!("line {n}: unclosed labels"))?;
                let mut labels = Vec::new();
                let mut chars = body.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
                    if !name_ok(&key) {
                        return Err(format!("line {n}: bad label name {key:?}"));
                    }
                    if chars.next() != Some('"') {
                        return Err(format!("line {n}: label value not quoted"));
                    }
                    let mut v = String::new();
                    loop {
                        match chars.next() {
                            Some('\\') => match chars.next() {
                                Some('n') => v.push('\n'),
                                Some(c @ ('\\' | '"')) => v.push(c),
                                _ => return Err(format!("line {n}: bad escape")),
                            },
                            Some('"') => break,
                            Some(c) => v.push(c),
                            None => return Err(format!("line {n}: unterminated label value")),
                        }
                    }
                    labels.push((key, v));
                    match chars.next() {
                        Some(',') | None => {}
                        Some(c) => return Err(format!("line {n}: unexpected {c:?}")),
                    }
                }
                (name, labels)
            }
        };
        if !name_ok(name) {
            return Err(format!("line {n}: bad metric name {name:?}"));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
            .unwrap_or(name);
        if !types.contains_key(family) {
            return Err(format!("line {n}: {name} has no TYPE line"));
        }
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(out)
}

/// The value of `name` with exactly `labels`.
pub fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
        })
        .map(|s| s.value)
}

/// Sets `[listeners.http] key = value` in a test configuration.
pub fn http_option(
    config: &mut switchyard::Config,
    key: &str,
    value: impl Into<figment::value::Value>,
) {
    config
        .listener_mut("http")
        .expect("http listener")
        .options
        .insert(key.to_owned(), value.into());
}

/// Adds `[addresses."pattern"]` policies to a test configuration.
pub fn policies(config: &mut switchyard::Config, list: &[(&str, switchyard_core::AddressPolicy)]) {
    let map: std::collections::BTreeMap<String, switchyard_core::AddressPolicy> = list
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    config.core = config.core.clone().with_policies(&map).unwrap();
}
