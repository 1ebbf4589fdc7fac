//! HTTP request → message mapping: request headers (`x-msg-*` → message
//! headers, content-type, x-reply-to, ...) and the publish query string.
//! Input: the query on the first line, then one `name: value` header a line.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use switchyard_http::mapping;
use switchyard_model::Message;

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let query = lines.next().and_then(|q| std::str::from_utf8(q).ok());
    let mut headers = http::HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        let value = value.get(1..).unwrap_or_default();
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
    let mut msg = Message::anycast("fuzz", Bytes::new());
    for batch in [false, true] {
        let _ = mapping::apply_headers(&mut msg, &headers, batch);
    }
    if let Ok(p) = mapping::publish_params(query) {
        mapping::apply_params(&mut msg, &p);
    }
});
