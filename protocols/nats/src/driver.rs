//! The connection driver: one task, one `select!` loop per connection.
//!
//! Order of the loop (biased): shutdown, deliveries (drained and coalesced
//! into one write), broker events (slow consumer, cancelled consumers), the
//! PING timer, the CONNECT deadline, then reading. Reading is done only
//! between writes, so a client that does not read its socket is cut off by
//! the write deadline instead of growing memory.
//!
//! A publishing connection is not read while the broker blocks publishers
//! (memory/disk watermark) nor while a queue it published to is past its
//! bound with `overflow = block` (until relieved, at most the core's
//! `BLOCK_TIMEOUT`), as nats-server stalls a producer of a slow consumer;
//! deliveries and PINGs still go out, uncounted while its PONGs cannot be
//! read.
//!
//! The state is split in two so a parsed operation (which borrows the
//! parser's copy of the control line) can be handled by `&mut State`:
//! [`Reader`] (read buffer + parser) and [`State`] (everything else).

use crate::NatsConfig;
use crate::codec::{self, ClientOp, Parser};
use crate::mapping;
use bytes::{Bytes, BytesMut};
use hashbrown::HashMap;
use serde::Deserialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use switchyard_core::spi::{AdapterError, Connection, ProtocolAdapter, StartTls, Stream};
use switchyard_core::{
    Broker, ConsumeOptions, CoreError, Deliveries, Delivery, Events, Overflow, Pressure,
    QueueOptions, RouteMemo, Session, SessionEvent, Subscribe, SubscriptionKind, WakeBatch,
};
use switchyard_model::{
    AddressFilter, ConsumerId, Headers, Message, MessageId, Namespace, Origin, Properties, Str,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The NATS protocol adapter.
#[derive(Debug)]
pub struct NatsAdapter {
    config: NatsConfig,
    server_id: String,
    /// Deliveries dropped because their address is not a NATS subject.
    dropped_unwritable: AtomicU64,
}

impl NatsAdapter {
    pub fn new(config: NatsConfig) -> Self {
        NatsAdapter {
            config,
            server_id: server_id(),
            dropped_unwritable: AtomicU64::new(0),
        }
    }

    /// Deliveries dropped because their address cannot be written as a
    /// NATS subject.
    pub fn dropped_unwritable(&self) -> u64 {
        self.dropped_unwritable.load(Ordering::Relaxed)
    }
}

fn server_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    let a = h.finish();
    h.write_u64(a);
    format!("SY{a:016X}{:016X}", h.finish())
}

#[async_trait::async_trait]
impl ProtocolAdapter for NatsAdapter {
    fn name(&self) -> &'static str {
        "nats"
    }

    async fn serve(&self, conn: Connection, broker: Broker) -> Result<(), AdapterError> {
        let limits = broker.config().limits.clone();
        let max_payload = self
            .config
            .max_payload
            .as_usize()
            .min(limits.max_message_size.as_usize());
        let session = broker.session("nats", conn.id);
        let deliveries = session.deliveries();
        let mut st = State {
            adapter: self,
            session,
            wbuf: BytesMut::new(),
            refs: Vec::new(),
            ref_bytes: 0,
            vectored: false,
            scratch: BytesMut::new(),
            subs: HashMap::new(),
            sids: HashMap::new(),
            addresses: HashMap::new(),
            last_address: None,
            route: RouteMemo::default(),
            opts: ConnectOptions::default(),
            connected: false,
            pings_out: 0,
            active: false,
            expired: Vec::new(),
            wire_ok: None,
            publisher: false,
            pressure: None,
            peer: conn.peer.map(|p| p.ip()),
            tls_identity: conn.tls_identity.clone(),
        };
        let info = st.info_json(&conn, max_payload);
        codec::encode_info(&mut st.wbuf, info.as_bytes());
        let reader = Reader {
            parser: Parser::new(self.config.max_control_line.as_usize(), max_payload),
            rbuf: BytesMut::new(),
        };
        Conn {
            reader,
            st,
            deliveries,
        }
        .run(conn, limits.handshake_timeout.get())
        .await
    }
}

/// `CONNECT` options (unknown fields are ignored, as nats-server does).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct ConnectOptions {
    verbose: bool,
    pedantic: bool,
    echo: bool,
    headers: bool,
    no_responders: bool,
    protocol: u32,
    name: Option<String>,
    lang: Option<String>,
    version: Option<String>,
    user: Option<String>,
    pass: Option<String>,
    auth_token: Option<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            verbose: false,
            pedantic: false,
            echo: true,
            headers: false,
            no_responders: false,
            protocol: 0,
            name: None,
            lang: None,
            version: None,
            user: None,
            pass: None,
            auth_token: None,
        }
    }
}

/// What CONNECT presented, for the broker's authenticator: `user`/`pass`,
/// `auth_token`, or a verified client certificate.
fn credentials(opts: &ConnectOptions, st: &State<'_>) -> switchyard_core::Credentials {
    switchyard_core::Credentials {
        protocol: "nats",
        user: opts.user.clone(),
        password: opts.pass.as_ref().map(|p| p.as_bytes().to_vec()),
        token: opts.auth_token.clone(),
        tls_identity: st.tls_identity.clone(),
        peer: st.peer,
    }
}

#[derive(Debug)]
struct Sub {
    sid: Box<[u8]>,
    filter: AddressFilter,
    max: Option<u64>,
    delivered: u64,
    /// `MSG <subject> <sid> <size>\r\n` for the address last delivered
    /// without reply subject or headers (most subscriptions see one subject
    /// over and over).
    head: codec::MsgHead,
    head_for: Option<Str>,
}

/// How a turn of the loop ended for the connection.
enum Flow {
    Continue,
    /// Close after flushing what is written (an `-ERR` usually).
    Close(AdapterError),
    /// The peer closed.
    Eof,
    /// A CONNECT to authenticate before reading on.
    Authenticate(Box<ConnectOptions>),
}

/// The read side: buffer and parser.
struct Reader {
    parser: Parser,
    rbuf: BytesMut,
}

/// Everything else a connection holds.
struct State<'a> {
    adapter: &'a NatsAdapter,
    session: Session,
    wbuf: BytesMut,
    /// Bodies written by reference: `(offset in wbuf, body)`, offsets
    /// ascending; each goes out after the buffer's bytes up to its offset.
    refs: Vec<(usize, Bytes)>,
    /// Their total size.
    ref_bytes: usize,
    /// The stream takes vectored writes (set once the stream is final).
    vectored: bool,
    scratch: BytesMut,
    subs: HashMap<ConsumerId, Sub>,
    sids: HashMap<Box<[u8]>, ConsumerId>,
    /// Recently published subjects, already validated (most publishers use
    /// a few subjects over and over).
    addresses: HashMap<Box<[u8]>, Str>,
    /// The subject last published to and its address (most publishers
    /// send run after run to one subject): checked before `addresses`.
    last_address: Option<(Box<[u8]>, Str)>,
    /// Where the last published subject routed to (see
    /// [`Session::publish_memo`]).
    route: RouteMemo,
    opts: ConnectOptions,
    connected: bool,
    pings_out: u32,
    /// Something was read since the last PING tick: the client is alive,
    /// the tick neither sends a PING nor counts one (as nats-server delays
    /// its PING on client activity). A paced publisher's PONG can wait
    /// behind megabytes of its own messages.
    active: bool,
    /// Subscriptions that reached their `UNSUB` max during this turn.
    expired: Vec<ConsumerId>,
    /// The address last found to be a valid NATS subject on delivery (the
    /// check is skipped for the same address again).
    wire_ok: Option<Str>,
    /// This connection has published: it is held back while the broker
    /// blocks publishers (memory or disk watermark).
    publisher: bool,
    /// A queue this connection published to is past its bound
    /// (`overflow = block`): it is not read until this is relieved.
    pressure: Option<Pressure>,
    peer: Option<std::net::IpAddr>,
    /// The verified client-certificate name (mutual TLS): from the
    /// connection, or from the TLS upgrade after INFO. Authentication
    /// takes it as the user name.
    tls_identity: Option<String>,
}

struct Conn<'a> {
    reader: Reader,
    st: State<'a>,
    deliveries: Deliveries,
}

/// Largest read buffer kept while idle; bigger ones are released.
const IDLE_BUFFER: usize = 16 * 1024;
/// Coalesce at most this many bytes of deliveries into one write.
const WRITE_BATCH: usize = 256 * 1024;
/// Bodies at least this large are written by reference (a vectored write
/// of the write buffer's pieces and the bodies) instead of being copied
/// into the write buffer, on streams with vectored writes.
const BY_REF: usize = 1024;
/// Most bodies written by reference in one turn (then copied again).
const MAX_REFS: usize = 256;
/// Most pieces handed to one vectored write (Linux allows 1024).
const MAX_IOV: usize = 2 * MAX_REFS + 1;
/// Most subjects remembered per connection.
const ADDRESS_CACHE: usize = 256;

impl Conn<'_> {
    async fn run(mut self, conn: Connection, handshake: Duration) -> Result<(), AdapterError> {
        let Connection {
            mut stream,
            shutdown,
            start_tls,
            ..
        } = conn;
        let events = self.deliveries.events();
        let mut flow = self.st.session.broker().flow();
        let period = self
            .st
            .cfg()
            .ping_interval
            .get()
            .max(Duration::from_millis(10));
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let connect_deadline = tokio::time::sleep(handshake);
        tokio::pin!(connect_deadline);
        let write_deadline = self.st.cfg().write_deadline.get();

        self.st.flush(&mut stream, write_deadline).await?;
        if let Some(start) = start_tls {
            stream = self.start_tls(start, stream, handshake).await?;
        }
        self.st.vectored = stream.is_write_vectored();
        loop {
            // A publishing connection is not read while publishers are held
            // back (memory or disk watermark), nor while a queue it
            // published to is past its bound (`overflow = block`): TCP
            // back-pressure reaches the client. Its PONGs cannot be read
            // meanwhile, so PINGs go out uncounted.
            let hold = self.st.publisher && flow.is_blocked();
            if self.st.pressure.as_ref().is_some_and(Pressure::is_relieved) {
                self.st.pressure = None;
            }
            let pressed = self.st.pressure.is_some();
            let held = hold || pressed;
            let turn = tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    // Clients reconnect on their own; nats-server simply closes.
                    let _ = self.st.flush(&mut stream, Duration::from_millis(200)).await;
                    return Ok(());
                }
                Some(d) = self.deliveries.recv() => {
                    self.st.deliver(d);
                    drain_ready(&mut self.st, &mut self.deliveries);
                    Flow::Continue
                }
                () = events.ready() => self.st.on_events(&events),
                _ = ping.tick() => {
                    if std::mem::take(&mut self.st.active) {
                        Flow::Continue
                    } else if held {
                        // Its PONGs are not read while it is held: nothing
                        // to judge it by. The count starts again after the
                        // hold (else counted PINGs at ticks between holds
                        // add up while the PONGs wait behind its messages).
                        self.st.pings_out = 0;
                        self.st.wbuf.extend_from_slice(codec::PING);
                        Flow::Continue
                    } else if self.st.pings_out >= self.st.cfg().max_pings_out {
                        codec::encode_err(&mut self.st.wbuf, "Stale Connection");
                        Flow::Close(AdapterError::Timeout("stale connection"))
                    } else {
                        self.st.pings_out += 1;
                        self.st.wbuf.extend_from_slice(codec::PING);
                        Flow::Continue
                    }
                }
                () = &mut connect_deadline, if !self.st.connected => {
                    codec::encode_err(&mut self.st.wbuf, "Authentication Timeout");
                    Flow::Close(AdapterError::Timeout("no CONNECT"))
                }
                // Re-evaluate `hold` when publishers are (un)blocked.
                () = flow.turn(hold), if self.st.publisher => Flow::Continue,
                () = switchyard_core::Pressure::relieved_or_never(self.st.pressure.as_ref()), if pressed => Flow::Continue,
                r = read_some(&mut stream, &mut self.reader.rbuf), if !held => match r {
                    Ok(0) => Flow::Eof,
                    Ok(_) => {
                        self.st.active = true;
                        self.on_read()
                    }
                    Err(e) => Flow::Close(AdapterError::Io(e)),
                },
            };
            let mut turn = turn;
            while let Flow::Authenticate(opts) = turn {
                // Nothing after the CONNECT is read until it is answered.
                let creds = credentials(&opts, &self.st);
                let result = Box::pin(self.st.session.broker().authenticate(creds)).await;
                turn = match self.st.connected_as(*opts, result) {
                    Flow::Continue => self.on_read(),
                    other => other,
                };
            }
            match turn {
                Flow::Continue => self.st.flush(&mut stream, write_deadline).await?,
                Flow::Eof => return Ok(()),
                Flow::Close(e) => {
                    let _ = self.st.flush(&mut stream, Duration::from_millis(500)).await;
                    let _ = stream.shutdown().await;
                    return Err(e);
                }
                Flow::Authenticate(_) => {}
            }
            let rbuf = &mut self.reader.rbuf;
            if rbuf.is_empty() && rbuf.capacity() > IDLE_BUFFER {
                *rbuf = BytesMut::new();
            }
        }
    }

    /// TLS after INFO, as nats-server does: a client that saw
    /// `tls_required` starts the handshake; with `tls_available` (TLS
    /// optional) the first byte tells: a TLS record (0x16, handshake) is
    /// upgraded, anything else is the client's CONNECT in clear.
    async fn start_tls(
        &mut self,
        start: StartTls,
        mut stream: Box<dyn Stream>,
        handshake: Duration,
    ) -> Result<Box<dyn Stream>, AdapterError> {
        let mut first = [0u8; 1];
        let n = match tokio::time::timeout(handshake, stream.read(&mut first)).await {
            Ok(r) => r?,
            Err(_) => return Err(AdapterError::Timeout("no TLS handshake")),
        };
        if n == 0 {
            return Err(AdapterError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        if first != [TLS_HANDSHAKE_RECORD] {
            if start.required() {
                codec::encode_err(&mut self.st.wbuf, "Secure Connection - TLS Required");
                let _ = self.st.flush(&mut stream, Duration::from_millis(500)).await;
                let _ = stream.shutdown().await;
                return Err(AdapterError::Protocol("TLS required".to_owned()));
            }
            self.reader.rbuf.extend_from_slice(&first);
            return Ok(stream);
        }
        let stream: Box<dyn Stream> = Box::new(Prefixed {
            first: Some(TLS_HANDSHAKE_RECORD),
            inner: stream,
        });
        let up = start.upgrade(stream).await?;
        self.st.tls_identity = up.tls_identity;
        Ok(up.stream)
    }

    /// Handles every complete operation in the read buffer. Wake-ups of
    /// receiving connections are deferred to the end of the buffer, so each
    /// is woken once per read rather than once per message.
    fn on_read(&mut self) -> Flow {
        let _batch = WakeBatch::new();
        loop {
            match self.reader.parser.parse(&mut self.reader.rbuf) {
                Ok(Some(ClientOp::Ping)) => {
                    // Messages this connection's own publishes produced for
                    // its own subscriptions are already waiting: write them
                    // before the PONG, as nats-server does, so a PING/PONG
                    // round trip is a barrier for them too.
                    drain_ready(&mut self.st, &mut self.deliveries);
                    self.st.wbuf.extend_from_slice(codec::PONG);
                }
                Ok(Some(op)) => match self.st.on_op(op) {
                    Flow::Continue => {}
                    other => return other,
                },
                Ok(None) => return Flow::Continue,
                Err(e) => {
                    codec::encode_err(&mut self.st.wbuf, e.err_text());
                    return Flow::Close(AdapterError::Protocol(e.to_string()));
                }
            }
        }
    }
}

/// Encodes every delivery that is ready now (up to one write's worth).
fn drain_ready(st: &mut State<'_>, deliveries: &mut Deliveries) {
    while st.wbuf.len() + st.ref_bytes < WRITE_BATCH {
        match deliveries.try_recv() {
            Some(d) => st.deliver(d),
            None => break,
        }
    }
    st.cancel_expired();
}

impl State<'_> {
    fn cfg(&self) -> &NatsConfig {
        &self.adapter.config
    }

    fn info_json(&self, conn: &Connection, max_payload: usize) -> String {
        let local = conn.local;
        serde_json::json!({
            "server_id": self.adapter.server_id,
            "server_name": self.cfg().server_name,
            "version": env!("CARGO_PKG_VERSION"),
            "proto": 1,
            "go": "switchyard",
            "host": local.map_or_else(|| "0.0.0.0".to_owned(), |a| a.ip().to_string()),
            "port": local.map_or(4222, |a| a.port()),
            "headers": true,
            "max_payload": max_payload,
            "client_id": conn.id.get(),
            "client_ip": conn.peer.map(|p| p.ip().to_string()),
            "auth_required": !self.session.broker().anonymous_allowed(),
            "tls_required": conn.start_tls.as_ref().is_some_and(|t| t.required()),
            "tls_available": conn.start_tls.as_ref().is_some_and(|t| !t.required()),
        })
        .to_string()
    }

    async fn flush(
        &mut self,
        stream: &mut Box<dyn Stream>,
        deadline: Duration,
    ) -> Result<(), AdapterError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let (wbuf, refs) = (&self.wbuf, &self.refs);
        let write = async {
            if refs.is_empty() {
                stream.write_all(wbuf).await?;
            } else {
                switchyard_core::spi::write_chain::<MAX_IOV>(stream, wbuf, refs).await?;
            }
            stream.flush().await
        };
        let r = tokio::time::timeout(deadline, write).await;
        self.refs.clear();
        self.ref_bytes = 0;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(AdapterError::Io(e)),
            Err(_) => {
                tracing::info!("slow consumer: write deadline exceeded");
                return Err(AdapterError::Timeout("slow consumer (write deadline)"));
            }
        }
        if self.wbuf.capacity() > WRITE_BATCH * 2 {
            self.wbuf = BytesMut::new();
        } else {
            self.wbuf.clear();
        }
        Ok(())
    }

    fn on_events(&mut self, events: &Events) -> Flow {
        for event in events.take() {
            match event {
                SessionEvent::Overflowed(_) => {
                    tracing::info!("slow consumer: pending limit exceeded");
                    codec::encode_err(&mut self.wbuf, "Slow Consumer");
                    return Flow::Close(AdapterError::Protocol("slow consumer".into()));
                }
                SessionEvent::ConsumerCancelled(id) => {
                    if let Some(sub) = self.subs.remove(&id) {
                        self.sids.remove(&sub.sid);
                    }
                }
            }
        }
        Flow::Continue
    }

    fn ok(&mut self) {
        if self.opts.verbose {
            self.wbuf.extend_from_slice(codec::OK);
        }
    }

    fn close_with(&mut self, err: &str) -> Flow {
        codec::encode_err(&mut self.wbuf, err);
        Flow::Close(AdapterError::Protocol(err.to_owned()))
    }

    fn on_op(&mut self, op: ClientOp<'_>) -> Flow {
        match op {
            ClientOp::Ping => {
                self.wbuf.extend_from_slice(codec::PONG);
                Flow::Continue
            }
            ClientOp::Pong => {
                self.pings_out = 0;
                Flow::Continue
            }
            ClientOp::Connect(json) => self.on_connect(json),
            ClientOp::Pub {
                subject,
                reply,
                header_len,
                payload,
            } => self.on_pub(subject, reply, header_len, payload),
            ClientOp::Sub {
                subject,
                queue,
                sid,
            } => self.on_sub(subject, queue, sid),
            ClientOp::Unsub { sid, max } => {
                if let Some(&id) = self.sids.get(sid) {
                    let done = match (max, self.subs.get_mut(&id)) {
                        (Some(m), Some(sub)) => {
                            sub.max = Some(m);
                            sub.delivered >= m
                        }
                        _ => true,
                    };
                    if done {
                        self.unsubscribe(id);
                    }
                }
                self.ok();
                Flow::Continue
            }
        }
    }

    fn on_connect(&mut self, json: &[u8]) -> Flow {
        let opts: ConnectOptions = match serde_json::from_slice(json) {
            Ok(o) => o,
            Err(_) => return self.close_with("Unknown Protocol Operation"),
        };
        if opts.protocol > 1 {
            return self.close_with("invalid client protocol");
        }
        if opts.no_responders && !opts.headers {
            return self.close_with("no responders requires headers support");
        }
        Flow::Authenticate(Box::new(opts))
    }

    /// After the authenticator answered a CONNECT.
    fn connected_as(
        &mut self,
        opts: ConnectOptions,
        result: Result<switchyard_core::Principal, switchyard_core::AuthError>,
    ) -> Flow {
        match result {
            Ok(p) => self.session.set_principal(&p),
            Err(_) => return self.close_with("Authorization Violation"),
        }
        if let Some(name) = &opts.name {
            tracing::Span::current().record("client_id", name.as_str());
        }
        tracing::debug!(lang = ?opts.lang, version = ?opts.version, "CONNECT");
        self.opts = opts;
        self.connected = true;
        self.ok();
        Flow::Continue
    }

    /// The address for a publish subject, from the connection's cache.
    fn address(&mut self, subject: &[u8]) -> Option<Str> {
        if let Some((last, a)) = &self.last_address
            && **last == *subject
        {
            return Some(a.clone());
        }
        if let Some(a) = self.addresses.get(subject) {
            let a = a.clone();
            self.last_address = Some((subject.into(), a.clone()));
            return Some(a);
        }
        let a = mapping::subject_to_address(subject).ok()?;
        if self.addresses.len() >= ADDRESS_CACHE {
            self.addresses.clear();
        }
        let a: Str = a.as_arc().clone();
        self.addresses.insert(subject.into(), a.clone());
        self.last_address = Some((subject.into(), a.clone()));
        Some(a)
    }

    fn on_pub(
        &mut self,
        subject: &[u8],
        reply: Option<&[u8]>,
        header_len: usize,
        payload: Bytes,
    ) -> Flow {
        self.publisher = true;
        let Some(address) = self.address(subject) else {
            if self.opts.pedantic {
                codec::encode_err(&mut self.wbuf, "Invalid Publish Subject");
            }
            return Flow::Continue;
        };
        let reply_to = match reply {
            Some(r) => match std::str::from_utf8(r) {
                Ok(s) if mapping::is_wire_subject(s) => Some(Arc::<str>::from(s)),
                _ => {
                    if self.opts.pedantic {
                        codec::encode_err(&mut self.wbuf, "Invalid Publish Subject");
                    }
                    return Flow::Continue;
                }
            },
            None => None,
        };
        let mut properties = Properties::default();
        let mut headers = Headers::new();
        let body = if header_len > 0 {
            if let Some(block) = payload.get(..header_len) {
                mapping::read_headers(block, &mut headers, &mut properties);
            }
            payload.slice(header_len.min(payload.len())..)
        } else {
            payload
        };
        properties.reply_to = reply_to.clone();
        // Built once in its shared allocation, the address moved in.
        let msg = Arc::new(Message {
            id: MessageId::default(),
            namespace: Namespace::Multicast,
            address,
            body,
            properties,
            headers,
            origin: Origin::INTERNAL,
        });
        match self.session.publish_memo(msg, &mut self.route) {
            Ok(mut published) => {
                Pressure::keep(&mut self.pressure, published.pressure.take());
                if let Some(reply) = reply_to
                    && self.opts.no_responders
                    && published.routed == 0
                {
                    self.no_responders(&reply);
                }
                self.ok();
                Flow::Continue
            }
            Err(CoreError::MessageTooLarge { .. }) => self.close_with("Maximum Payload Violation"),
            Err(CoreError::AccessRefused(_)) => {
                // The address is the subject's text.
                let text = format!(
                    "Permissions Violation for Publish to \"{}\"",
                    String::from_utf8_lossy(subject)
                );
                codec::encode_err(&mut self.wbuf, &text);
                Flow::Continue
            }
            Err(e) => {
                tracing::debug!(error = %e, "publish failed");
                Flow::Continue
            }
        }
    }

    /// Tells the requester nobody is listening: a 503 status message on the
    /// requester's own subscription that matches the reply subject.
    fn no_responders(&mut self, reply: &str) {
        if let Some(sub) = self.subs.values().find(|s| s.filter.matches(reply)) {
            codec::encode_msg(
                &mut self.wbuf,
                reply.as_bytes(),
                &sub.sid,
                None,
                mapping::NO_RESPONDERS,
                b"",
            );
        }
    }

    fn on_sub(&mut self, subject: &[u8], queue: Option<&[u8]>, sid: &[u8]) -> Flow {
        let Ok(filter) = mapping::subject_to_filter(subject) else {
            return self.close_with("Invalid Subject");
        };
        if self.sids.contains_key(sid) {
            // nats-server keeps the existing subscription for a repeated sid.
            self.ok();
            return Flow::Continue;
        }
        let kind = match queue {
            Some(q) => match std::str::from_utf8(q) {
                Ok(name) if mapping::valid_queue_group(q) => {
                    SubscriptionKind::Shared(Arc::from(name))
                }
                _ => return self.close_with("Invalid Queue Group"),
            },
            None => SubscriptionKind::Temporary,
        };
        let sub = Subscribe {
            filter: filter.clone(),
            queue: QueueOptions {
                no_local: !self.opts.echo && queue.is_none(),
                max_bytes: Some(self.cfg().max_pending.bytes()),
                overflow: Overflow::DropHead,
                notify_overflow: true,
                ..QueueOptions::default()
            },
            kind,
            consume: ConsumeOptions::default(),
        };
        match self.session.subscribe(sub) {
            Ok(id) => {
                self.sids.insert(sid.into(), id);
                self.subs.insert(
                    id,
                    Sub {
                        sid: sid.into(),
                        filter,
                        max: None,
                        delivered: 0,
                        head: codec::MsgHead::default(),
                        head_for: None,
                    },
                );
                self.ok();
                Flow::Continue
            }
            Err(CoreError::ResourceLimit(_)) => self.close_with("Maximum Subscriptions Exceeded"),
            Err(CoreError::AccessRefused(_)) => {
                let text = format!(
                    "Permissions Violation for Subscription to \"{}\"",
                    String::from_utf8_lossy(subject)
                );
                codec::encode_err(&mut self.wbuf, &text);
                Flow::Continue
            }
            Err(e) => {
                tracing::debug!(error = %e, "subscribe failed");
                self.close_with("Invalid Subject")
            }
        }
    }

    fn unsubscribe(&mut self, id: ConsumerId) {
        if let Some(sub) = self.subs.remove(&id) {
            self.sids.remove(&sub.sid);
        }
        let _ = self.session.cancel(id);
    }

    fn cancel_expired(&mut self) {
        while let Some(id) = self.expired.pop() {
            self.unsubscribe(id);
        }
    }

    fn deliver(&mut self, d: Delivery) {
        let Some(sub) = self.subs.get_mut(&d.consumer) else {
            return;
        };
        if sub.max.is_some_and(|m| sub.delivered >= m) {
            return;
        }
        let msg = &d.message;
        if !wire_subject_cached(&mut self.wire_ok, &msg.address) {
            self.adapter
                .dropped_unwritable
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(address = %msg.address, "address is not a NATS subject; delivery dropped");
            return;
        }
        sub.delivered += 1;
        if sub.max.is_some_and(|m| sub.delivered >= m) {
            self.expired.push(d.consumer);
        }
        let reply = msg
            .properties
            .reply_to
            .as_deref()
            .filter(|r| mapping::is_wire_subject(r))
            .map(str::as_bytes);
        if self.opts.headers {
            mapping::write_headers(msg, &mut self.scratch);
        } else {
            self.scratch.clear();
        }
        if reply.is_none() && self.scratch.is_empty() {
            // The common case: the same `MSG <subject> <sid> ` start as the
            // previous delivery of this subscription.
            if !sub
                .head_for
                .as_ref()
                .is_some_and(|a| Arc::ptr_eq(a, &msg.address))
            {
                sub.head
                    .set(msg.address.as_bytes(), &sub.sid, msg.body.len());
                sub.head_for = Some(msg.address.clone());
            }
            let head = sub.head.for_size(msg.body.len());
            if msg.body.len() >= BY_REF && self.vectored && self.refs.len() < MAX_REFS {
                self.wbuf.extend_from_slice(head);
                self.refs.push((self.wbuf.len(), msg.body.clone()));
                self.ref_bytes += msg.body.len();
                self.wbuf.extend_from_slice(b"\r\n");
            } else {
                codec::encode_msg_with_head(&mut self.wbuf, head, &msg.body);
            }
            return;
        }
        codec::encode_msg(
            &mut self.wbuf,
            msg.address.as_bytes(),
            &sub.sid,
            reply,
            &self.scratch,
            &msg.body,
        );
    }
}

/// [`mapping::is_wire_subject`], skipped when `address` is the one last
/// found valid (`last`).
fn wire_subject_cached(last: &mut Option<Str>, address: &Str) -> bool {
    if last.as_ref().is_some_and(|a| Arc::ptr_eq(a, address)) {
        return true;
    }
    let ok = mapping::is_wire_subject(address);
    if ok {
        *last = Some(address.clone());
    }
    ok
}

/// Reads into `buf`, growing it in steps while data flows (and keeping it
/// small on idle connections).
async fn read_some(stream: &mut Box<dyn Stream>, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < 1024 {
        let grow = if buf.capacity() == 0 {
            4096
        } else {
            buf.capacity().clamp(4096, 64 * 1024)
        };
        buf.reserve(grow);
    }
    stream.read_buf(buf).await
}

/// The first byte of a TLS record carrying a handshake message (ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// A stream with one byte already read from it put back in front.
struct Prefixed {
    first: Option<u8>,
    inner: Box<dyn Stream>,
}

impl tokio::io::AsyncRead for Prefixed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if buf.remaining() > 0
            && let Some(b) = self.first.take()
        {
            buf.put_slice(&[b]);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Prefixed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
