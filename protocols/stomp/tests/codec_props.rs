//! Codec properties: encode → decode is the identity in every version,
//! decoding does not depend on how the bytes are split, arbitrary bytes
//! never panic, and each limit and malformation is reported.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use switchyard_stomp::codec::{
    Command, DecodeError, Frame, FrameDecoder, Limits, Text, Version, encode_frame,
};

fn decoder(version: Option<Version>) -> FrameDecoder {
    let mut d = FrameDecoder::new(Limits::default());
    if let Some(v) = version {
        d.set_version(v);
    }
    d
}

/// Decodes every frame of `bytes` fed in one piece.
fn decode_all(version: Option<Version>, bytes: &[u8]) -> Result<Vec<Frame>, DecodeError> {
    let mut d = decoder(version);
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(f) = d.decode(&mut buf)? {
        out.push(f);
    }
    assert!(!d.in_frame(), "bytes left in a frame");
    Ok(out)
}

/// Decodes `bytes` fed in the given chunks.
fn decode_chunks(version: Option<Version>, chunks: &[&[u8]]) -> Result<Vec<Frame>, DecodeError> {
    let mut d = decoder(version);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for c in chunks {
        buf.extend_from_slice(c);
        while let Some(f) = d.decode(&mut buf)? {
            out.push(f);
        }
    }
    Ok(out)
}

/// Header text that every mode can carry: no line breaks, colons,
/// backslashes or NULs, no blank at either end.
fn plain_text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_./+=-]([a-zA-Z0-9 _./+=é€-]{0,10}[a-zA-Z0-9_./+=-])?"
}

/// Header text with every character escaping has to handle.
fn tricky_text(cr: bool) -> impl Strategy<Value = String> {
    let chars = if cr {
        prop_oneof![
            Just('\n'),
            Just('\r'),
            Just(':'),
            Just('\\'),
            Just(' '),
            Just('é'),
            Just('🦀'),
            proptest::char::range('a', 'z'),
        ]
        .boxed()
    } else {
        prop_oneof![
            Just('\n'),
            Just(':'),
            Just('\\'),
            Just(' '),
            Just('é'),
            proptest::char::range('a', 'z'),
        ]
        .boxed()
    };
    prop::collection::vec(chars, 0..12).prop_map(|c| c.into_iter().collect())
}

fn command() -> impl Strategy<Value = Command> {
    prop::sample::select(Command::ALL.to_vec())
}

fn version() -> impl Strategy<Value = Version> {
    prop::sample::select(Version::ALL.to_vec())
}

/// A frame representable under `version`, with a content-length header
/// whenever its body holds a NUL (and sometimes when it does not).
fn frame(version: Version) -> impl Strategy<Value = Frame> {
    (
        command(),
        prop::collection::vec(
            (0u8..3, plain_text(), tricky_text(version == Version::V1_2)),
            0..6,
        ),
        prop::collection::vec(any::<u8>(), 0..64),
        any::<bool>(),
    )
        .prop_map(move |(command, headers, body, with_length)| {
            let escaping = version != Version::V1_0 && !command.is_connect();
            let mut f = Frame::new(command);
            if with_length || body.contains(&0) {
                f = f.with("content-length", &body.len().to_string());
            }
            for (kind, plain, tricky) in headers {
                let (name, value) = match (escaping, kind) {
                    (true, 0) => (format!("n{tricky}"), plain),
                    (true, _) => (plain, tricky),
                    (false, _) => (plain.clone(), plain),
                };
                if name == "content-length" {
                    continue;
                }
                f.headers.push((Text::from(name), Text::from(value)));
            }
            f.with_body(body)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encode_then_decode_is_identity((v, f) in version().prop_flat_map(|v| (Just(v), frame(v)))) {
        let mut buf = BytesMut::new();
        encode_frame(&f, Some(v), &mut buf).unwrap();
        let got = decode_all(Some(v), &buf).unwrap();
        prop_assert_eq!(got, vec![f]);
    }

    #[test]
    fn split_anywhere_gives_the_same_frames(
        (v, frames) in version().prop_flat_map(|v| (Just(v), prop::collection::vec(frame(v), 1..4))),
        eols in prop::collection::vec(prop::sample::select(vec!["", "\n", "\r\n", "\n\n\r\n"]), 4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut buf = BytesMut::new();
        for (i, f) in frames.iter().enumerate() {
            buf.extend_from_slice(eols[i % eols.len()].as_bytes());
            encode_frame(f, Some(v), &mut buf).unwrap();
        }
        let at = cut.index(buf.len() + 1);
        let (a, b) = buf.split_at(at);
        prop_assert_eq!(decode_chunks(Some(v), &[a, b]).unwrap(), frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        chunk in 1usize..64,
        v in proptest::option::of(version()),
    ) {
        let chunks: Vec<&[u8]> = bytes.chunks(chunk).collect();
        let _ = decode_chunks(v, &chunks);
    }

    #[test]
    fn mutated_frames_never_panic(
        f in frame(Version::V1_2),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        chunk in 1usize..16,
    ) {
        let mut buf = BytesMut::new();
        encode_frame(&f, Some(Version::V1_2), &mut buf).unwrap();
        let mut bytes = buf.to_vec();
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let chunks: Vec<&[u8]> = bytes.chunks(chunk).collect();
        let _ = decode_chunks(Some(Version::V1_2), &chunks);
    }
}

fn sample_stream() -> Vec<u8> {
    let mut buf = BytesMut::new();
    let frames = [
        Frame::new(Command::Connect)
            .with("accept-version", "1.2")
            .with("host", "a:b\\c"),
        Frame::new(Command::Send)
            .with("destination", "/queue/a")
            .with("content-length", "5")
            .with("x", "line\nbreak:colon\\back\rcr")
            .with_body(&b"a\0b\0c"[..]),
        Frame::new(Command::Send)
            .with("destination", "/topic/x")
            .with_body(&b"no length"[..]),
        Frame::new(Command::Disconnect).with("receipt", "77"),
    ];
    for f in &frames {
        buf.extend_from_slice(b"\r\n\n");
        encode_frame(f, Some(Version::V1_2), &mut buf).unwrap();
    }
    buf.to_vec()
}

#[test]
fn every_split_point_and_byte_at_a_time_decode_the_same() {
    let bytes = sample_stream();
    let whole = decode_all(Some(Version::V1_2), &bytes).unwrap();
    assert_eq!(whole.len(), 4);
    assert_eq!(whole[1].header("x"), Some("line\nbreak:colon\\back\rcr"));
    assert_eq!(
        whole[0].header("host"),
        Some("a:b\\c"),
        "CONNECT is not escaped"
    );
    assert_eq!(&whole[1].body[..], b"a\0b\0c");
    for at in 0..=bytes.len() {
        let (a, b) = bytes.split_at(at);
        assert_eq!(
            decode_chunks(Some(Version::V1_2), &[a, b]).unwrap(),
            whole,
            "split at {at}"
        );
    }
    let singles: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(decode_chunks(Some(Version::V1_2), &singles).unwrap(), whole);
}

#[test]
fn large_body_byte_by_byte_is_scanned_once() {
    // 256 KiB without content-length, fed one byte at a time: a decoder that
    // rescanned from the start on every call would do ~3·10^10 steps here.
    let body = vec![b'x'; 256 * 1024];
    let mut d = decoder(Some(Version::V1_2));
    let mut buf = BytesMut::new();
    buf.extend_from_slice(b"SEND\ndestination:/queue/a\n\n");
    let mut frames = Vec::new();
    for b in body.iter().chain(std::iter::once(&0u8)) {
        buf.extend_from_slice(std::slice::from_ref(b));
        if let Some(f) = d.decode(&mut buf).unwrap() {
            frames.push(f);
        }
    }
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].body.len(), body.len());
}

#[test]
fn repeated_headers_keep_every_entry_and_the_first_counts() {
    let f = &decode_all(
        Some(Version::V1_2),
        b"MESSAGE\nfoo:World\nfoo:Hello\ncontent-length:1\ncontent-length:5\n\nx\0",
    )
    .unwrap()[0];
    assert_eq!(f.header("foo"), Some("World"));
    assert_eq!(f.headers.len(), 4);
    assert_eq!(&f.body[..], b"x", "the first content-length counts");
}

#[test]
fn crlf_eols_and_heart_beats_between_frames() {
    let frames = decode_all(
        Some(Version::V1_2),
        b"\n\r\nSEND\r\ndestination:/queue/a\r\n\r\nhi\0\r\n\n\nBEGIN\ntransaction:t\n\n\0\n",
    )
    .unwrap();
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].header("destination"), Some("/queue/a"));
    assert_eq!(&frames[0].body[..], b"hi");
    assert_eq!(frames[1].command, Command::Begin);
}

#[test]
fn stomp_1_0_trims_and_does_not_unescape() {
    let f = &decode_all(
        Some(Version::V1_0),
        b"SEND\ndestination: /queue/a \nx:a\\nb\n\n\0",
    )
    .unwrap()[0];
    assert_eq!(f.header("destination"), Some("/queue/a"));
    assert_eq!(f.header("x"), Some("a\\nb"));
}

#[test]
fn stomp_1_1_refuses_the_cr_escape_and_1_2_accepts_it() {
    let bytes = b"SEND\nx:a\\rb\n\n\0";
    assert_eq!(
        decode_all(Some(Version::V1_1), bytes),
        Err(DecodeError::BadEscape("\\r".into()))
    );
    let f = &decode_all(Some(Version::V1_2), bytes).unwrap()[0];
    assert_eq!(f.header("x"), Some("a\rb"));
}

#[test]
fn malformed_frames_are_reported() {
    let v = Some(Version::V1_2);
    let cases: Vec<(&[u8], DecodeError)> = vec![
        (b"FOO\n\n\0", DecodeError::UnknownCommand("FOO".into())),
        (b"send\n\n\0", DecodeError::UnknownCommand("send".into())),
        (
            b"SEND\ndestination\n\n\0",
            DecodeError::HeaderWithoutColon("destination".into()),
        ),
        (b"SEND\n:v\n\n\0", DecodeError::EmptyHeaderName),
        (b"SEND\nx:a\\tb\n\n\0", DecodeError::BadEscape("\\t".into())),
        (b"SEND\nx:a\\\n\n\0", DecodeError::BadEscape("\\".into())),
        (
            b"SEND\ncontent-length:abc\n\n\0",
            DecodeError::BadContentLength("abc".into()),
        ),
        (
            b"SEND\ncontent-length:-1\n\n\0",
            DecodeError::BadContentLength("-1".into()),
        ),
        (
            b"SEND\ncontent-length:2\n\nabc\0",
            DecodeError::MissingNul(2),
        ),
        (b"SEND\nx:\xff\n\n\0", DecodeError::InvalidUtf8),
        (b"SEND\nx:y\0\n\n", DecodeError::NulInHeaders),
        (b"CONNECT\0", DecodeError::NulInHeaders),
    ];
    for (bytes, want) in cases {
        assert_eq!(
            decode_all(v, bytes),
            Err(want),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn a_frame_without_its_nul_waits_and_is_unfinished() {
    let mut d = decoder(Some(Version::V1_2));
    let mut buf = BytesMut::from(&b"SEND\ndestination:/queue/a\n\nno end"[..]);
    assert_eq!(d.decode(&mut buf), Ok(None));
    assert!(d.in_frame());
    let mut buf = BytesMut::from(&b"SEND\ncontent-length:100\n\nshort\0"[..]);
    let mut d = decoder(Some(Version::V1_2));
    assert_eq!(d.decode(&mut buf), Ok(None));
    assert_eq!(d.needs(&buf), Some(100 + 1 - 6));
}

fn limited(l: Limits, bytes: &[u8]) -> Result<Vec<Frame>, DecodeError> {
    let mut d = FrameDecoder::new(l);
    d.set_version(Version::V1_2);
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(f) = d.decode(&mut buf)? {
        out.push(f);
    }
    Ok(out)
}

#[test]
fn limits_are_enforced_on_partial_input() {
    let l = Limits {
        max_line: 32,
        max_headers: 3,
        max_header_bytes: 64,
        max_body: 16,
    };
    // A long line with no LF yet is refused before it ends.
    let long = [b"SEND\nx:".as_slice(), &[b'a'; 40]].concat();
    assert_eq!(limited(l, &long), Err(DecodeError::LineTooLong { max: 32 }));
    let long_cmd = [b'S'; 40];
    assert_eq!(
        limited(l, &long_cmd),
        Err(DecodeError::LineTooLong { max: 32 })
    );
    assert_eq!(
        limited(l, b"SEND\na:1\nb:2\nc:3\nd:4\n\n\0"),
        Err(DecodeError::TooManyHeaders { max: 3 })
    );
    let many =
        b"SEND\naaaaaaaaaaaaaaaaaaaa:1\nbbbbbbbbbbbbbbbbbbbbbb:2\ncccccccccccccccccccccc:3\n";
    assert_eq!(
        limited(l, many),
        Err(DecodeError::HeadersTooLarge { max: 64 })
    );
    // A declared length over the limit is refused before any body arrives.
    assert_eq!(
        limited(l, b"SEND\ncontent-length:17\n\n"),
        Err(DecodeError::BodyTooLarge { size: 17, max: 16 })
    );
    // Without a length, the body is refused once it passes the limit.
    let unbounded = [b"SEND\n\n".as_slice(), &[b'x'; 17]].concat();
    assert_eq!(
        limited(l, &unbounded),
        Err(DecodeError::BodyTooLarge { size: 17, max: 16 })
    );
    let ok = [b"SEND\n\n".as_slice(), &[b'x'; 16], b"\0"].concat();
    assert_eq!(limited(l, &ok).unwrap().len(), 1);
}

#[test]
fn one_point_zero_cannot_encode_line_breaks() {
    let f = Frame::new(Command::Send).with("x", "a\nb");
    let mut buf = BytesMut::new();
    assert!(encode_frame(&f, Some(Version::V1_0), &mut buf).is_err());
    assert!(buf.is_empty());
    let f = Frame::new(Command::Connected).with("x", "a\nb");
    assert!(encode_frame(&f, Some(Version::V1_2), &mut buf).is_err());
}

#[test]
fn bodies_are_slices_of_the_read_buffer() {
    let mut d = decoder(Some(Version::V1_2));
    let mut buf = BytesMut::from(&b"SEND\ndestination:/queue/a\ncontent-length:3\n\nabc\0"[..]);
    let base = buf.as_ptr() as usize;
    let f = d.decode(&mut buf).unwrap().unwrap();
    let body_at = f.body.as_ptr() as usize;
    assert!(body_at >= base && body_at < base + 64, "body was copied");
    let _: Bytes = f.body;
}

/// Found by fuzzing: in 1.1 (no CR escape) a value ending in CR would come
/// back without it, so the encoder refuses it rather than change it.
#[test]
fn one_point_one_cannot_encode_a_trailing_cr() {
    let mut buf = BytesMut::new();
    let f = Frame::new(Command::Send).with("x", "(((\r");
    assert!(encode_frame(&f, Some(Version::V1_1), &mut buf).is_err());
    let f = Frame::new(Command::Send).with("x", "a\rb");
    encode_frame(&f, Some(Version::V1_1), &mut buf).unwrap();
    assert_eq!(decode_all(Some(Version::V1_1), &buf).unwrap(), vec![f]);
    let f = Frame::new(Command::Send).with("x", "(((\r");
    let mut buf = BytesMut::new();
    encode_frame(&f, Some(Version::V1_2), &mut buf).unwrap();
    assert_eq!(decode_all(Some(Version::V1_2), &buf).unwrap(), vec![f]);
}
