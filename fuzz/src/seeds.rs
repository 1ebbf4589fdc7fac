//! Writes the seed corpora: `fuzz/corpus/<target>/seed-*`, valid frames of
//! every codec (written out byte by byte here, so a seed does not depend on
//! the encoders under test) and journal records taken from a real broker's
//! journal. Run from the repository root:
//! `cargo run --manifest-path fuzz/Cargo.toml --bin seeds`.

use bytes::Bytes;
use std::path::Path;
use switchyard_core::journal::format::{self, Decoded};
use switchyard_core::journal::{Journal, JournalConfig};
use switchyard_core::{
    Broker, ConsumeOptions, CoreConfig, DeclareQueue, ExchangeKind, ExchangeOptions, QueueOptions,
};
use switchyard_model::{Headers, Message, Str};

type Res = Result<(), Box<dyn std::error::Error>>;

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) -> Res {
    let d = dir.join(target);
    std::fs::create_dir_all(&d)?;
    std::fs::write(d.join(format!("seed-{name}")), bytes)?;
    Ok(())
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn mqtt(dir: &Path) -> Res {
    let c311: &[u8] = b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x03abc";
    let c5: &[u8] = b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x03abc";
    let p311: &[u8] = b"\x32\x09\x00\x03a/b\x00\x01hi";
    let p5: &[u8] = b"\x32\x0d\x00\x03a/b\x00\x01\x03\x03\x00\x00hi"; // content-type ""
    let s311: &[u8] = b"\x82\x08\x00\x01\x00\x03a/#\x01";
    let s5: &[u8] = b"\x82\x09\x00\x01\x00\x00\x03a/#\x01";
    let ping: &[u8] = b"\xc0\x00";
    let disc: &[u8] = b"\xe0\x00";
    // mode byte: low bits pick the decoder (0 auto, 1 3.1.1, 2 5.0), high
    // bits the size limit (0x20: 1 MiB).
    write(dir, "mqtt", "auto-311", &cat(&[&[0x20], c311, p311, s311, ping, disc]))?;
    write(dir, "mqtt", "auto-5", &cat(&[&[0x20], c5, p5, s5, ping, disc]))?;
    write(dir, "mqtt", "v311", &cat(&[&[0x21], p311, s311, b"\x40\x02\x00\x01", ping]))?;
    write(dir, "mqtt", "v5", &cat(&[&[0x22], p5, s5, b"\x40\x02\x00\x01", disc]))?;
    Ok(())
}

fn amqp_frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(0xce);
    f
}

fn amqp_method(class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let mut p = class.to_be_bytes().to_vec();
    p.extend_from_slice(&method.to_be_bytes());
    p.extend_from_slice(args);
    p
}

fn shortstr(s: &str) -> Vec<u8> {
    let mut v = vec![s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

fn longstr(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

fn amqp(dir: &Path) -> Res {
    // A field table with one entry of each common type.
    let mut entries = Vec::new();
    entries.extend(shortstr("x-max-length"));
    entries.push(b'I');
    entries.extend(10i32.to_be_bytes());
    entries.extend(shortstr("s"));
    entries.push(b'S');
    entries.extend(longstr(b"text"));
    entries.extend(shortstr("b"));
    entries.push(b't');
    entries.push(1);
    entries.extend(shortstr("l"));
    entries.push(b'l');
    entries.extend(7i64.to_be_bytes());
    let table = longstr(&entries);
    let empty = 0u32.to_be_bytes().to_vec();

    let start_ok = amqp_method(
        10,
        11,
        &cat(&[&table, &shortstr("PLAIN"), &longstr(b"\0guest\0guest"), &shortstr("en_US")]),
    );
    let tune_ok = amqp_method(10, 31, &cat(&[&0u16.to_be_bytes(), &131_072u32.to_be_bytes(), &60u16.to_be_bytes()]));
    let open = amqp_method(10, 40, &cat(&[&shortstr("/"), &shortstr(""), &[0]]));
    let ch_open = amqp_method(20, 10, &shortstr(""));
    let declare = amqp_method(50, 10, &cat(&[&[0, 0], &shortstr("q"), &[0x02], &table]));
    let bind = amqp_method(50, 20, &cat(&[&[0, 0], &shortstr("q"), &shortstr("amq.topic"), &shortstr("a.#"), &[0], &empty]));
    let publish = amqp_method(60, 40, &cat(&[&[0, 0], &shortstr(""), &shortstr("q"), &[0]]));
    let mut header = 60u16.to_be_bytes().to_vec();
    header.extend(0u16.to_be_bytes());
    header.extend(2u64.to_be_bytes());
    header.extend(0xb000u16.to_be_bytes()); // content-type, headers, delivery-mode
    header.extend(shortstr("text/plain"));
    header.extend(&table);
    header.push(2);
    let consume = amqp_method(60, 20, &cat(&[&[0, 0], &shortstr("q"), &shortstr(""), &[0], &empty]));
    let ack = amqp_method(60, 80, &cat(&[&1u64.to_be_bytes(), &[0]]));
    let qos = amqp_method(60, 10, &cat(&[&0u32.to_be_bytes(), &10u16.to_be_bytes(), &[0]]));
    let close = amqp_method(10, 50, &cat(&[&200u16.to_be_bytes(), &shortstr("bye"), &[0, 0, 0, 0]]));
    let session = cat(&[
        b"AMQP\x00\x00\x09\x01",
        &amqp_frame(1, 0, &start_ok),
        &amqp_frame(1, 0, &tune_ok),
        &amqp_frame(1, 0, &open),
        &amqp_frame(1, 1, &ch_open),
        &amqp_frame(1, 1, &declare),
        &amqp_frame(1, 1, &bind),
        &amqp_frame(1, 1, &qos),
        &amqp_frame(1, 1, &publish),
        &amqp_frame(2, 1, &header),
        &amqp_frame(3, 1, b"hi"),
        &amqp_frame(1, 1, &consume),
        &amqp_frame(1, 1, &ack),
        &amqp_frame(8, 0, b""),
        &amqp_frame(1, 0, &close),
    ]);
    write(dir, "amqp", "session", &session)?;
    write(dir, "amqp", "publish", &cat(&[&amqp_frame(1, 1, &publish), &amqp_frame(2, 1, &header), &amqp_frame(3, 1, b"hi")]))?;
    Ok(())
}

fn stomp(dir: &Path) -> Res {
    let frames: &[u8] = b"CONNECT\naccept-version:1.0,1.1,1.2\nhost:/\nheart-beat:0,0\n\n\0\
SUBSCRIBE\nid:0\ndestination:/queue/a\nack:client-individual\n\n\0\
SEND\ndestination:/queue/a\ncontent-type:text/plain\ncontent-length:2\nx\\cy:a\\nb\n\nhi\0\n\
SEND\ndestination:/topic/t\n\nno length\0\
ACK\nid:1\n\n\0\
BEGIN\ntransaction:tx\n\n\0COMMIT\ntransaction:tx\n\n\0\
DISCONNECT\nreceipt:9\n\n\0";
    write(dir, "stomp", "v-any", &cat(&[&[0x00], frames]))?;
    write(dir, "stomp", "v12-chunked", &cat(&[&[0x0f], frames]))?;
    write(dir, "stomp", "v10", &cat(&[&[0x01], b"SEND\r\ndestination:/queue/a\r\n\r\nhi\0"]))?;
    Ok(())
}

fn nats(dir: &Path) -> Res {
    let ops: &[u8] = b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"user\":\"a\",\"pass\":\"b\"}\r\n\
PING\r\nPONG\r\nSUB a.b 1\r\nSUB a.* q 2\r\nPUB a.b 2\r\nhi\r\nPUB a.b reply.1 0\r\n\r\n\
HPUB a.b 18 20\r\nNATS/1.0\r\nA: b\r\n\r\nhi\r\nUNSUB 1 5\r\n";
    write(dir, "nats", "all", &cat(&[&[0xff], ops]))?;
    write(dir, "nats", "bytewise", &cat(&[&[0x00], ops]))?;
    Ok(())
}

fn http(dir: &Path) -> Res {
    write(
        dir,
        "http_headers",
        "all",
        b"ttl=1000&priority=5&durable=true\ncontent-type: text/plain\ncontent-encoding: gzip\n\
x-msg-foo: bar\nx-msg-n: 1\nx-reply-to: replies.a\nx-correlation-id: abc\nx-message-id: m1\n",
    )?;
    write(dir, "http_headers", "empty-prefix", b"\nx-msg-: x\n")?;
    Ok(())
}

async fn journal_records(data: &Path) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let mut jc = JournalConfig::new(data);
    jc.segment_size = 64 * 1024;
    let b = Broker::with_journal(CoreConfig::new(), Journal::open(jc)?);
    b.recover()?;
    b.declare_exchange(
        "events",
        ExchangeKind::Topic,
        ExchangeOptions {
            durable: true,
            ..Default::default()
        },
        false,
    )?;
    let mut s = b.session("seeds", b.next_conn_id());
    for q in ["orders", "gone"] {
        s.declare_queue(DeclareQueue {
            name: Some(Str::from(q)),
            options: QueueOptions {
                durable: true,
                ..Default::default()
            },
            passive: false,
        })?;
    }
    let none = Headers::new();
    s.bind_queue("orders", "events", "user.#", &none)?;
    for i in 0..3 {
        let mut m = Message::anycast("orders", Bytes::from(format!("m{i}")));
        m.properties.durable = true;
        m.properties.content_type = Some("text/plain".into());
        m.headers.push("k", "v");
        if let Some(c) = s.publish(m)?.completion {
            c.await?;
        }
    }
    let c = s.consume("orders", ConsumeOptions { manual_ack: true, prefetch: 0, exclusive: false })?;
    let mut d = s.deliveries();
    if let Some(first) = d.try_recv() {
        s.ack(c, first.tag, false)?;
    }
    s.delete_queue("gone", false, false)?;
    s.sync_for_tests().await;
    drop(d);
    drop(s);
    b.close_journal().await?;
    // Back to the fuzz input format: kind | len u16 LE | payload.
    let mut out = Vec::new();
    for e in std::fs::read_dir(data)? {
        let bytes = std::fs::read(e?.path())?;
        let mut at = bytes.get(format::HEADER_LEN as usize..).unwrap_or_default();
        while let Decoded::Record { kind, payload, size } = format::decode_record(at) {
            if let Ok(len) = u16::try_from(payload.len()) {
                out.push(kind);
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(payload);
            }
            at = at.get(size as usize..).unwrap_or_default();
        }
    }
    Ok(out)
}

fn main() -> Res {
    let dir = Path::new("fuzz/corpus");
    mqtt(dir)?;
    amqp(dir)?;
    stomp(dir)?;
    nats(dir)?;
    http(dir)?;
    let data = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let records = rt.block_on(journal_records(data.path()))?;
    write(dir, "journal", "broker", &records)?;
    let mut torn = records.clone();
    torn.truncate(records.len().saturating_sub(3));
    write(dir, "journal", "torn", &torn)?;
    println!("seed corpora written under {}", dir.display());
    Ok(())
}
