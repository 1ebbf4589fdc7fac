//! The connection driver: the only code that touches the socket and the
//! core's [`Session`].
//!
//! One task per connection, one `select!` loop (`biased`): shutdown first
//! (which also brings eviction by a takeover and the keep-alive sweep's
//! verdict, see [`crate::keepalive`]), then core events, deliveries (only
//! while the in-flight window has room), and reading. After every turn
//! everything written is flushed at once (one write), with a write timeout.
//!
//! Memory of an idle connection is kept small: the read buffer is dropped
//! when it is empty after a small read, and the next read goes through a
//! stack buffer; the write buffer is dropped after a small flush. A
//! connection without a receiving side that has not published runs a lean
//! loop that holds no futures for deliveries, events and the broker's flow
//! state (a connection with one, or a publisher, switches to the full loop,
//! boxed, once); no keep-alive timer either (one sweep per adapter checks
//! every connection's); a flush that the socket takes at once holds no
//! future; the publishing state is allocated at the first
//! PUBLISH; the client-id claim is evicted through the shutdown token, so
//! one wait (and no token of its own) covers both.

use crate::auth::{self, Credentials};
use crate::codec::{
    self, Ack, ConnAck, DecodeError, Decoder, Disconnect, Packet, Properties, Publish, QoS, SubAck,
    SubOptions, Subscribe, UnsubAck, Unsubscribe, Version, kind, reason,
};
use crate::config::MqttConfig;
use crate::keepalive::{Beat, KeepAlive};
use crate::mapping::{self, Alias, Outgoing};
use crate::persist::{self, Dir, QOS2_SCOPE, Qos2Entry, SESSION_SCOPE, SessionRecord, StoredWill};
use crate::session::{
    InFlight, InboundAliases, OutState, Outbound, OutboundAliases, Parked, Qos2Ids, SessionState,
    SubEntry, stored_subs,
};
use crate::topic::{self, TopicError};
use bytes::BytesMut;
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use switchyard_core::spi::{AdapterError, Connection, Stream};
use switchyard_core::{
    Broker, Claim, ConsumeOptions, CoreError, DeclareQueue, Delivery, Overflow, ParkTicket,
    QueueOptions, Session, SessionEvent, Subscribe as CoreSubscribe, SubscriptionKind, Verb,
};
use switchyard_model::{ConnId, ConsumerId, Headers, Message, Origin, Str, now_millis};
use tokio::io::{AsyncWriteExt, ReadBuf};

/// The registry scope of MQTT client ids.
pub const SCOPE: &str = "mqtt";
/// Prefix of a persistent session's queue: `$mqtt.session.<client id>`.
pub const SESSION_QUEUE_PREFIX: &str = "$mqtt.session.";
/// Reads smaller than this leave the read buffer to be dropped when empty.
const SMALL_IO: usize = 1024;
/// The stack buffer of a read while no read buffer is held.
const PROBE: usize = 512;
/// Flush when this much is written in one turn.
const FLUSH_AT: usize = 256 * 1024;

type Hasher = foldhash::fast::RandomState;

/// Most PUBACK/PUBREC answers waiting for the journal before the
/// connection stops reading more PUBLISHes.
const MAX_PENDING_ACKS: usize = 4096;

/// A PUBACK or PUBREC held back until the journal has the message (or
/// queued behind one that is: answers keep the order of the PUBLISHes,
/// [MQTT-4.6.0-2]).
struct PendingAck {
    kind: u8,
    packet_id: u16,
    reason: u8,
    wait: Option<switchyard_core::Completion>,
}

/// Resolves when the answer at the front of `acks` may go out: `Ok` once
/// its message is on disk (at once when it waits for nothing).
fn front_ack(
    pubs: Option<&mut Publishing>,
) -> impl std::future::Future<Output = Result<(), String>> + '_ {
    let mut acks = pubs.map(|p| &mut p.acks);
    std::future::poll_fn(
        move |cx| match acks.as_deref_mut().and_then(VecDeque::front_mut) {
            None => Poll::Pending,
            Some(PendingAck { wait: None, .. }) => Poll::Ready(Ok(())),
            Some(PendingAck { wait: Some(c), .. }) => {
                Pin::new(c).poll(cx).map(|r| r.map_err(|e| e.to_string()))
            }
        },
    )
}

/// How a connection ends.
#[derive(Debug)]
enum Close {
    /// DISCONNECT from the client (reason code).
    Client(u8),
    /// The peer closed the socket, or it failed.
    Gone(Option<io::Error>),
    /// The server closes: reason code (5.0 DISCONNECT) and why.
    Server(u8, String),
    /// A CONNECT for the same client id elsewhere.
    TakenOver,
    /// The broker is shutting down.
    Shutdown,
}

impl Close {
    fn protocol(code: u8, why: impl Into<String>) -> Close {
        Close::Server(code, why.into())
    }
}

impl From<DecodeError> for Close {
    fn from(e: DecodeError) -> Close {
        Close::Server(e.reason_code(), e.to_string())
    }
}

/// What all the connections of one adapter share: its options (what
/// `cfg.x` reads) and the keep-alive sweep.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) config: MqttConfig,
    pub(crate) keep_alive: KeepAlive,
}

impl std::ops::Deref for Shared {
    type Target = MqttConfig;
    fn deref(&self) -> &MqttConfig {
        &self.config
    }
}

/// The socket and its buffers.
struct Io {
    stream: Box<dyn Stream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    last_read: usize,
    write_timeout: Duration,
}

impl Io {
    /// Reads what is available (cancel-safe: nothing is consumed unless the
    /// future completes).
    async fn read(&mut self, want: usize) -> io::Result<usize> {
        let Io { stream, rbuf, .. } = self;
        std::future::poll_fn(|cx| poll_read(stream, rbuf, want, cx)).await
    }

    /// Writes as much of the write buffer as the stream takes without
    /// waiting, and flushes it: `true` when all of it is written and
    /// flushed (the buffer is then released or cleared as by
    /// [`Io::flush`]), `false` when the rest needs [`Io::flush`].
    fn write_now(&mut self, cx: &mut Context<'_>) -> Result<bool, Close> {
        let n = self.wbuf.len();
        while !self.wbuf.is_empty() {
            match Pin::new(&mut *self.stream).poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) => {
                    return Err(Close::Gone(Some(io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Ok(w)) => bytes::Buf::advance(&mut self.wbuf, w),
                Poll::Ready(Err(e)) => return Err(Close::Gone(Some(e))),
                Poll::Pending => return Ok(false),
            }
        }
        match Pin::new(&mut *self.stream).poll_flush(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Err(Close::Gone(Some(e))),
            Poll::Pending => return Ok(false),
        }
        if n < SMALL_IO {
            self.wbuf = BytesMut::new();
        } else {
            self.wbuf.clear();
        }
        Ok(true)
    }

    /// Writes the write buffer and the payloads sent by reference (`refs`,
    /// see [`Refs`]) with as few writes as the stream allows, then flushes.
    async fn flush(&mut self, refs: Option<&mut Refs>) -> Result<(), Close> {
        let refs = refs.filter(|r| !r.is_empty());
        if self.wbuf.is_empty() && refs.is_none() {
            return Ok(());
        }
        let n = self.wbuf.len();
        let stream = &mut self.stream;
        let buf = &self.wbuf;
        let r = tokio::time::timeout(self.write_timeout, async {
            match refs.as_deref() {
                None => stream.write_all(buf).await?,
                // Boxed: only turns with large payloads pay for its state.
                Some(r) => {
                    Box::pin(switchyard_core::spi::write_chain::<MAX_IOV>(stream, buf, r)).await?
                }
            }
            stream.flush().await
        })
        .await;
        if let Some(r) = refs {
            r.clear();
        }
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Close::Gone(Some(e))),
            Err(_) => {
                return Err(Close::Gone(Some(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "write timed out",
                ))));
            }
        }
        if n < SMALL_IO {
            self.wbuf = BytesMut::new();
        } else {
            self.wbuf.clear();
        }
        Ok(())
    }
}

/// Payloads written by reference after the write buffer's bytes up to an
/// offset: `(offset, body)`, offsets ascending. A large payload goes to the
/// socket straight from the message (a vectored write of the buffer's
/// pieces and the bodies) instead of being copied into the write buffer.
type Refs = Vec<(usize, bytes::Bytes)>;

/// Payloads at least this large are written by reference (on streams with
/// vectored writes): below it, copying into the buffer costs less than an
/// extra iovec.
pub(crate) const BY_REF: usize = 8 * 1024;

/// Most payloads written by reference in one turn.
const MAX_REFS: usize = 64;

/// Most pieces handed to one vectored write.
const MAX_IOV: usize = 64;

fn poll_read(
    stream: &mut Box<dyn Stream>,
    rbuf: &mut BytesMut,
    want: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if rbuf.capacity() == 0 {
        let mut tmp = [0u8; PROBE];
        let mut rb = ReadBuf::new(&mut tmp);
        match Pin::new(&mut **stream).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let filled = rb.filled();
                rbuf.extend_from_slice(filled);
                Poll::Ready(Ok(filled.len()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    } else {
        if rbuf.capacity() - rbuf.len() < SMALL_IO {
            rbuf.reserve(want);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut **stream), cx, rbuf)
    }
}

/// A QoS 1/2 delivery waiting for room in the in-flight window.
#[derive(Debug)]
struct Waiting {
    msg: Arc<Message>,
    qos: QoS,
    retain: bool,
    dup: bool,
    source: Option<(ConsumerId, switchyard_model::DeliveryTag)>,
    sub_ids: SmallVec<[u32; 2]>,
}

/// The receiving side of a connection: the core session, subscriptions and
/// the outgoing in-flight window.
struct Subscriber {
    session: Session,
    /// The session's delivery stream (taken out for each turn of the loop).
    deliveries: Option<switchyard_core::Deliveries>,
    events: switchyard_core::Events,
    /// The persistent session's queue, when the session is persistent.
    queue: Option<Str>,
    queue_consumer: Option<ConsumerId>,
    /// Subscriptions by MQTT filter.
    subs: hashbrown::HashMap<Box<str>, SubEntry, Hasher>,
    /// Consumer → its subscription's filter (temporary and shared ones).
    by_consumer: hashbrown::HashMap<ConsumerId, Box<str>, Hasher>,
    out: Outbound,
    waiting: VecDeque<Waiting>,
    out_aliases: OutboundAliases,
    /// Payloads of this turn's PUBLISHes written by reference.
    refs: Refs,
}

impl Subscriber {
    fn ref_bytes(&self) -> usize {
        self.refs.iter().map(|(_, b)| b.len()).sum()
    }

    fn new(session: Session, out_alias_max: u16) -> Box<Subscriber> {
        let deliveries = session.deliveries();
        let events = deliveries.events();
        Box::new(Subscriber {
            deliveries: Some(deliveries),
            events,
            session,
            queue: None,
            queue_consumer: None,
            subs: Default::default(),
            by_consumer: Default::default(),
            out: Outbound::default(),
            waiting: VecDeque::new(),
            out_aliases: OutboundAliases::new(out_alias_max),
            refs: Vec::new(),
        })
    }

    fn ack(&self, source: Option<(ConsumerId, switchyard_model::DeliveryTag)>) {
        if let Some((consumer, tag)) = source {
            let _ = self.session.ack(consumer, tag, false);
        }
    }
}

/// Everything one connection holds after CONNECT.
struct Conn {
    cfg: Arc<Shared>,
    broker: Broker,
    conn_id: ConnId,
    version: Version,
    v5: bool,
    io: Io,
    decoder: Decoder,
    /// The receiving side, allocated when first needed (a subscription or
    /// a persistent session): a connection that only publishes, or idles,
    /// holds none.
    sub: Option<Box<Subscriber>>,
    client_id: Str,
    session_expiry: u32,
    /// The keep-alive state the adapter's sweep checks (`None`: keep
    /// alive 0, no limit).
    beat: Option<Arc<Beat>>,
    /// The client has published: it is held back while the broker blocks
    /// publishers.
    publisher: bool,
    will: Option<Box<codec::Will>>,
    /// The outgoing in-flight window (at most 65535).
    window: u16,
    /// What only a publishing client needs, allocated at its first
    /// PUBLISH (or with a resumed session's QoS 2 identifiers): an idle
    /// connection holds none.
    pubs: Option<Box<Publishing>>,
    /// Topic aliases the client accepts (5.0).
    out_alias_max: u16,
    /// The client's Maximum Packet Size.
    client_max_packet: u32,
    /// A subscription this client publishes to is past its
    /// `max_queued_*` bound: the client is not read until it drains.
    pressure: Option<switchyard_core::Pressure>,
    /// A persistent session on a broker with a journal: its state is
    /// written to the state store (see [`crate::persist`]).
    journaled: bool,
    /// What the ACL lets the client do, and who it logged in as (for the
    /// receiving side's session); `None` when no ACL is configured.
    acl: Option<Box<(switchyard_core::Authorizer, switchyard_core::Principal)>>,
}

/// The publishing side of a connection.
#[derive(Default)]
struct Publishing {
    /// QoS 2 packet ids received and not yet released by PUBREL.
    qos2: Qos2Ids,
    in_aliases: InboundAliases,
    /// Last topic published and its address (publishers repeat topics).
    last_topic: Option<(bytes::Bytes, Str)>,
    /// PUBACK/PUBREC answers waiting for the journal's fsync: a publisher
    /// is told a QoS 1/2 message is safe only once it is on disk.
    acks: VecDeque<PendingAck>,
}

/// Serves one connection from its first byte to its end.
///
/// The handshake and the end run in futures of their own, boxed, so the
/// memory they need while awaiting is not held for the connection's life.
///
/// The arguments come in one box (`Start`): the future keeps its arguments
/// for its whole life, so they take 8 bytes of it rather than 24.
pub(crate) async fn serve(start: Box<Start>) -> Result<(), AdapterError> {
    let Some((mut c, shutdown, claim)) = Box::pin(open(start)).await? else {
        return Ok(());
    };
    let lean = c.run::<Lean>(&shutdown, &claim).await;
    let end = match lean {
        Some(end) => end,
        // The connection has a receiving side now, or has published: the
        // loop that also waits for deliveries, events and the broker's flow
        // state takes over, boxed, so that an idle connection does not hold
        // the futures for them.
        None => {
            drop(lean);
            Box::pin(c.run::<Full>(&shutdown, &claim))
                .await
                .unwrap_or(Close::Gone(None))
        }
    };
    Box::pin(c.finish(end, claim)).await
}

/// What [`serve`] is started with.
pub(crate) type Start = (Connection, Broker, Arc<Shared>);

/// What the connection's loop waits for besides the socket and the
/// shutdown token: [`Lean`] (a connection that neither receives nor has
/// published: its futures take no space) or [`Full`].
trait Side {
    /// The loop of a connection without a receiving side that has not
    /// published: it hands over to [`Full`] as soon as either changes.
    const LEAN: bool;
    /// The broker's flow state (publishers held back), for a publisher.
    type Flow: Send;
    fn flow(broker: &Broker) -> Self::Flow;
    fn is_blocked(flow: &Self::Flow) -> bool;
    fn held<'a>(
        flow: &'a mut Self::Flow,
        hold: bool,
        pressure: Option<&'a switchyard_core::Pressure>,
    ) -> impl std::future::Future<Output = ()> + Send + 'a;
    /// What a turn of the loop takes out of the receiving side to wait
    /// on (the handlers need `&mut self`), and puts back after it.
    type Recv: Send;
    type Events: Send;
    fn take(sub: Option<&mut Subscriber>) -> (Self::Events, Self::Recv);
    fn put_back(recv: Self::Recv, sub: Option<&mut Subscriber>);
    fn events(
        events: &Self::Events,
    ) -> impl std::future::Future<Output = Option<Vec<SessionEvent>>> + Send + '_;
    fn delivery(
        recv: &mut Self::Recv,
    ) -> impl std::future::Future<Output = Option<(Delivery, &mut switchyard_core::Deliveries)>>
    + Send
    + '_;
}

/// The receiving side's part of a turn of the [`Full`] loop.
struct FullRecv {
    /// The subscriber the delivery stream was taken from.
    owner: Option<usize>,
    deliveries: Option<switchyard_core::Deliveries>,
}

/// The loop of a connection without a receiving side that has not
/// published (an idle one).
struct Lean;

/// The loop of a connection with one, or of a publisher.
struct Full;

impl Side for Lean {
    const LEAN: bool = true;
    type Flow = ();
    fn flow(_: &Broker) {}
    fn is_blocked(_: &()) -> bool {
        false
    }
    fn held<'a>(
        _: &'a mut (),
        _: bool,
        _: Option<&'a switchyard_core::Pressure>,
    ) -> impl std::future::Future<Output = ()> + Send + 'a {
        std::future::pending()
    }
    type Recv = ();
    type Events = ();
    fn take(_: Option<&mut Subscriber>) -> ((), ()) {
        ((), ())
    }
    fn put_back(_: (), _: Option<&mut Subscriber>) {}
    fn events((): &()) -> impl std::future::Future<Output = Option<Vec<SessionEvent>>> + Send + '_ {
        std::future::pending()
    }
    fn delivery(
        _: &mut (),
    ) -> impl std::future::Future<Output = Option<(Delivery, &mut switchyard_core::Deliveries)>>
    + Send
    + '_ {
        std::future::pending()
    }
}

impl Side for Full {
    const LEAN: bool = false;
    type Flow = switchyard_core::Flow;
    fn flow(broker: &Broker) -> switchyard_core::Flow {
        broker.flow()
    }
    fn is_blocked(flow: &switchyard_core::Flow) -> bool {
        flow.is_blocked()
    }
    fn held<'a>(
        flow: &'a mut switchyard_core::Flow,
        hold: bool,
        pressure: Option<&'a switchyard_core::Pressure>,
    ) -> impl std::future::Future<Output = ()> + Send + 'a {
        held(flow, hold, pressure)
    }
    type Recv = FullRecv;
    type Events = Option<switchyard_core::Events>;
    fn take(sub: Option<&mut Subscriber>) -> (Self::Events, FullRecv) {
        match sub {
            Some(s) => (
                Some(s.events.clone()),
                FullRecv {
                    owner: Some(std::ptr::from_ref(&*s) as usize),
                    deliveries: s.deliveries.take(),
                },
            ),
            None => (
                None,
                FullRecv {
                    owner: None,
                    deliveries: None,
                },
            ),
        }
    }
    fn put_back(recv: FullRecv, sub: Option<&mut Subscriber>) {
        if let Some(s) = sub
            && recv.owner == Some(std::ptr::from_ref(&*s) as usize)
            && s.deliveries.is_none()
        {
            s.deliveries = recv.deliveries;
        }
    }
    fn events(
        events: &Self::Events,
    ) -> impl std::future::Future<Output = Option<Vec<SessionEvent>>> + Send + '_ {
        events_ready(events.as_ref())
    }
    fn delivery(
        recv: &mut FullRecv,
    ) -> impl std::future::Future<Output = Option<(Delivery, &mut switchyard_core::Deliveries)>>
    + Send
    + '_ {
        next_delivery(recv.deliveries.as_mut())
    }
}

type Opened = (Box<Conn>, tokio_util::sync::CancellationToken, Claim);

/// CONNECT to CONNACK: authentication, the client id, the session.
async fn open(start: Box<Start>) -> Result<Option<Opened>, AdapterError> {
    let (conn, broker, cfg) = *start;
    let Connection {
        id: conn_id,
        stream,
        shutdown,
        peer,
        tls_identity,
        ..
    } = conn;
    let mut io = Io {
        stream,
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        last_read: 0,
        write_timeout: cfg.write_timeout.get(),
    };
    let mut decoder = Decoder::new(cfg.max_packet_size.as_usize());
    let handshake = broker.config().limits.handshake_timeout.get();

    // CONNECT, within the handshake timeout [MQTT-3.1.0-1].
    let first = tokio::select! {
        biased;
        () = shutdown.cancelled() => return Ok(None),
        r = tokio::time::timeout(handshake, read_packet(&mut io, &mut decoder)) => match r {
            Err(_) => return Err(AdapterError::Timeout("no CONNECT within the handshake timeout")),
            Ok(r) => r,
        },
    };
    let connect = match first {
        Ok(Some(Packet::Connect(c))) => c,
        Ok(Some(_)) | Ok(None) => return Ok(None),
        Err(DecodeError::UnsupportedVersion(level)) => {
            // [MQTT-3.1.2-2]: CONNACK 0x01 (3.1.1 form), then close.
            let code = if level == 5 {
                reason::UNSUPPORTED_PROTOCOL_VERSION
            } else {
                reason::v3::UNACCEPTABLE_PROTOCOL_VERSION
            };
            connack_and_close(&mut io, Version::V311, code).await;
            return Err(AdapterError::Protocol(format!(
                "unsupported protocol level {level}"
            )));
        }
        Err(e) => {
            return Err(AdapterError::Protocol(e.to_string()));
        }
    };
    let version = connect.version();
    let v5 = version.is_v5();
    tracing::Span::current().record("client_id", connect.client_id.as_str());

    // Refusals before any session state exists.
    let refuse = |v3: u8, v5c: u8| if v5 { v5c } else { v3 };
    if v5 && connect.properties.authentication_method.is_some() {
        connack_and_close(&mut io, version, reason::BAD_AUTHENTICATION_METHOD).await;
        return Err(AdapterError::Protocol(
            "enhanced authentication is not supported".into(),
        ));
    }
    let principal = match auth::authenticate(
        &broker,
        &Credentials {
            client_id: &connect.client_id,
            username: connect.username.as_deref(),
            password: connect.password.as_deref(),
            peer,
            tls_identity: tls_identity.as_deref(),
        },
    )
    .await
    {
        Ok(p) => p,
        Err(code) => {
            connack_and_close(&mut io, version, refuse(code.v3, code.v5)).await;
            return Err(AdapterError::Protocol("authentication failed".into()));
        }
    };
    // A will is a publication too: its topic must be allowed (as Mosquitto
    // refuses the CONNECT otherwise).
    if let Some(will) = &connect.will
        && let Ok(address) = topic::topic_to_address(&will.topic)
        && broker
            .authorizer("mqtt", &principal)
            .check(Verb::Publish, &address)
            .is_err()
    {
        let code = auth::NOT_AUTHORIZED;
        connack_and_close(&mut io, version, refuse(code.v3, code.v5)).await;
        return Err(AdapterError::Protocol("will topic not authorized".into()));
    }
    if connect.client_id.len() > cfg.max_client_id_len {
        connack_and_close(
            &mut io,
            version,
            refuse(reason::v3::IDENTIFIER_REJECTED, reason::CLIENT_ID_NOT_VALID),
        )
        .await;
        return Err(AdapterError::Protocol("client id too long".into()));
    }
    // The session expiry granted (seconds; 0 = ends with the connection).
    let max_expiry = u32::try_from(cfg.max_session_expiry.get().as_secs()).unwrap_or(u32::MAX);
    let asked_expiry = if v5 {
        connect.properties.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        u32::MAX
    };
    let session_expiry = asked_expiry.min(max_expiry);
    let mut assigned = None;
    let client_id: Str = if connect.client_id.is_empty() {
        if !v5 && !connect.clean_start {
            // [MQTT-3.1.3-8]
            connack_and_close(&mut io, version, reason::v3::IDENTIFIER_REJECTED).await;
            return Err(AdapterError::Protocol(
                "empty client id with clean session 0".into(),
            ));
        }
        let id = generated_client_id(conn_id);
        assigned = Some(id.clone());
        Str::from(id)
    } else {
        Str::from(connect.client_id.as_str())
    };

    // Take the client id; a connection holding it is told to leave
    // [MQTT-3.1.4-2], and its session state is handed over.
    // The claim is evicted through the connection's own shutdown token:
    // one wait in the loop covers both (`Claim::is_evicted` tells which).
    let claim = broker
        .clients()
        .claim_with(SCOPE, client_id.clone(), shutdown.clone());
    if claim.took_over()
        && tokio::time::timeout(Duration::from_secs(10), claim.previous_released())
            .await
            .is_err()
    {
        tracing::warn!("the connection taken over did not leave within 10s");
    }
    let queue_name = Str::from(format!("{SESSION_QUEUE_PREFIX}{client_id}"));
    // Session state outlives the process only with a journal; without one
    // nothing is written (the parked state in memory is all there is).
    // Asked only when a persistent session is in play.
    let journal = || broker.journal_stats().is_some();
    let parked = claim
        .take_parked()
        .and_then(|p| p.downcast::<SessionState>().ok());
    let mut resumed: Option<Parked> = None;
    if let Some(state) = parked {
        let mut p = state.inner.lock();
        p.resumed = true;
        if !p.expired {
            let taken = std::mem::take(&mut *p);
            drop(p);
            if connect.clean_start {
                // The old session ends now: its will goes out [MQTT-3.1.2-8].
                if let Some(w) = taken.will {
                    publish_will(&broker, w);
                }
                let _ = broker.delete_queue(&taken.queue, false, false, None);
                if journal() {
                    forget(&broker, &client_id);
                }
            } else {
                resumed = Some(taken);
            }
        }
    } else if connect.clean_start {
        // A session left by an earlier run of the broker (durable queue).
        if broker.delete_queue(&queue_name, false, false, None).is_ok() && journal() {
            forget(&broker, &client_id);
        }
    }

    let mut sub: Option<Box<Subscriber>> = None;
    let out_alias_max = if v5 {
        connect
            .properties
            .topic_alias_maximum
            .unwrap_or(0)
            .min(cfg.max_outbound_topic_aliases)
    } else {
        0
    };
    // A resumed session is used even when this connection asks for expiry
    // 0: it ends when this connection does.
    let persistent = session_expiry > 0 || resumed.is_some();
    let mut session_present = false;
    let client_window = if v5 {
        connect.properties.receive_maximum.unwrap_or(u16::MAX)
    } else {
        u16::MAX
    };
    let window = usize::from(client_window.min(cfg.max_inflight));
    let mut qos2 = Qos2Ids::default();
    let mut pubrel = Vec::new();
    if persistent {
        let existed = broker.queue_info(&queue_name).is_some();
        let s = sub.insert(Subscriber::new(
            broker.session("mqtt", conn_id),
            out_alias_max,
        ));
        s.queue = Some(queue_name.clone());
        let session = &mut s.session;
        let declared = session.declare_queue(DeclareQueue {
            name: Some(queue_name.clone()),
            options: QueueOptions {
                durable: true,
                ..QueueOptions::default()
            },
            passive: false,
        });
        let consumed = declared.and_then(|_| {
            session.consume(
                &queue_name,
                ConsumeOptions {
                    manual_ack: true,
                    prefetch: u32::try_from(window).unwrap_or(u32::MAX),
                    exclusive: true,
                },
            )
        });
        // The session queue is the connection's own bookkeeping: declared
        // and consumed before the ACL applies; its bindings are checked.
        session.set_principal(&principal);
        match consumed {
            Ok(c) => s.queue_consumer = Some(c),
            Err(e) => {
                tracing::warn!(error = %e, queue = %queue_name, "cannot open the session queue");
                connack_and_close(
                    &mut io,
                    version,
                    refuse(reason::v3::SERVER_UNAVAILABLE, reason::SERVER_UNAVAILABLE),
                )
                .await;
                return Err(AdapterError::Core(e));
            }
        }
        if let Some(p) = resumed {
            session_present = true;
            s.subs.extend(p.subs);
            qos2.extend(p.qos2);
            s.out.reuse.extend(p.reuse);
            pubrel = p.pubrel;
        } else if existed && !connect.clean_start {
            // Only the queue survived (no usable saved state): its
            // bindings are the subscriptions, with default options.
            session_present = true;
            s.subs.extend(subs_from_bindings(&broker, &queue_name));
        }
    }

    // Keep alive, capped by the server's maximum (5.0 tells the client).
    let max_ka = u16::try_from(cfg.max_keep_alive.get().as_secs()).unwrap_or(u16::MAX);
    let mut server_keep_alive = None;
    let mut keep_alive = connect.keep_alive;
    if v5 && (keep_alive > max_ka || (keep_alive == 0 && max_ka < u16::MAX)) {
        keep_alive = max_ka;
        server_keep_alive = Some(max_ka);
    }

    let mut props = Properties::default();
    if v5 {
        props.receive_maximum = Some(cfg.receive_maximum);
        props.maximum_packet_size =
            Some(u32::try_from(cfg.max_packet_size.bytes()).unwrap_or(u32::MAX));
        props.topic_alias_maximum = Some(cfg.topic_alias_maximum);
        props.assigned_client_identifier = assigned;
        props.server_keep_alive = server_keep_alive;
        if asked_expiry != session_expiry {
            props.session_expiry_interval = Some(session_expiry);
        }
    }
    codec::encode(
        &Packet::ConnAck(ConnAck {
            session_present,
            code: reason::SUCCESS,
            properties: props,
        }),
        version,
        &mut io.wbuf,
    );
    let client_max_packet = if v5 {
        connect.properties.maximum_packet_size.unwrap_or(u32::MAX)
    } else {
        u32::MAX
    };
    let mut c = Box::new(Conn {
        cfg: cfg.clone(),
        broker: broker.clone(),
        conn_id,
        version,
        v5,
        io,
        decoder,
        sub,
        client_id: client_id.clone(),
        session_expiry,
        beat: (keep_alive > 0).then(|| {
            let ka = Duration::from_secs(u64::from(keep_alive));
            cfg.keep_alive.register(ka + ka / 2, shutdown.clone())
        }),
        publisher: false,
        will: connect.will.clone().map(Box::new),
        window: u16::try_from(window.max(1)).unwrap_or(u16::MAX),
        pubs: (!qos2.is_empty()).then(|| {
            Box::new(Publishing {
                qos2,
                ..Publishing::default()
            })
        }),
        out_alias_max,
        client_max_packet,
        pressure: None,
        journaled: persistent && journal(),
        acl: {
            let a = broker.authorizer("mqtt", &principal);
            a.is_active().then(|| Box::new((a, principal)))
        },
    });
    if c.journaled {
        c.save_session();
    }
    // [MQTT-4.4.0-1]: PUBRELs of the resumed session go out again.
    for id in pubrel {
        let Some(s) = c.sub.as_deref_mut() else {
            break;
        };
        s.out.inflight.insert(
            id,
            InFlight {
                state: OutState::AwaitPubComp,
                source: None,
                message: switchyard_model::MessageId(0),
            },
        );
        c.write(&Packet::PubRel(Ack::new(id, 0)));
    }
    drop(connect);
    Ok(Some((c, shutdown, claim)))
}

/// The session's next delivery (never, without a session), with the
/// handle to take more.
/// A publishing connection's wait: while pressed by a full subscription
/// (`max_queued_*`), until it is relieved; otherwise the broker's flow
/// state (see [`switchyard_core::Flow::turn`]). One `select!` branch for
/// both, and the pressure's wait boxed (made only while pressed), so the
/// connection's `select!` state does not grow.
async fn held(
    flow: &mut switchyard_core::Flow,
    hold: bool,
    pressure: Option<&switchyard_core::Pressure>,
) {
    match pressure {
        Some(p) => Box::pin(p.relieved()).await,
        None => flow.turn(hold).await,
    }
}

async fn next_delivery(
    d: Option<&mut switchyard_core::Deliveries>,
) -> Option<(Delivery, &mut switchyard_core::Deliveries)> {
    match d {
        Some(d) => d.recv().await.map(|x| (x, d)),
        None => std::future::pending().await,
    }
}

/// The session's events once some are waiting (never, without a session).
async fn events_ready(e: Option<&switchyard_core::Events>) -> Option<Vec<SessionEvent>> {
    match e {
        Some(e) => {
            e.ready().await;
            Some(e.take())
        }
        None => std::future::pending().await,
    }
}

/// Reads until one packet is decoded (the CONNECT).
async fn read_packet(io: &mut Io, decoder: &mut Decoder) -> Result<Option<Packet>, DecodeError> {
    loop {
        if let Some(p) = decoder.decode(&mut io.rbuf)? {
            return Ok(Some(p));
        }
        let want = decoder
            .shortfall(&io.rbuf)
            .map_or(8192, |s| s.clamp(SMALL_IO, 256 * 1024));
        match io.read(want).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

async fn connack_and_close(io: &mut Io, version: Version, code: u8) {
    codec::encode(
        &Packet::ConnAck(ConnAck {
            session_present: false,
            code,
            properties: Properties::default(),
        }),
        version,
        &mut io.wbuf,
    );
    let _ = io.flush(None).await;
    let _ = io.stream.shutdown().await;
}

fn generated_client_id(conn: ConnId) -> String {
    use std::hash::{BuildHasher, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(conn.get());
    h.write_u64(now_millis());
    format!("switchyard-{:x}-{:016x}", conn.get(), h.finish())
}

/// Publishes a will (and retains it when it asks to be).
pub(crate) fn publish_will(broker: &Broker, msg: Message) {
    if mapping::published_retained(&msg)
        && let Ok(addr) = switchyard_model::Address::new(&msg.address)
    {
        let keep = (!msg.body.is_empty()).then(|| mapping::for_retain(&msg));
        broker.retain(&addr, keep);
    }
    if let Err(e) = broker.publish(msg) {
        tracing::debug!(error = %e, "will message not published");
    }
}

/// Writes (`Some`) or removes (`None`) the state of one QoS 2 packet
/// identifier of `client`.
pub(crate) fn save_qos2(broker: &Broker, client: &str, dir: Dir, id: u16, e: Option<Qos2Entry>) {
    let key = persist::qos2_key(client, dir, id);
    match e {
        Some(e) => broker.save_state(QOS2_SCOPE, &key, &persist::encode_qos2(e)),
        None => broker.delete_state(QOS2_SCOPE, &key),
    }
}

/// Removes everything the state store keeps of `client`'s session (its
/// record and its QoS 2 identifiers): the session ended.
pub(crate) fn forget(broker: &Broker, client: &str) {
    broker.delete_state(SESSION_SCOPE, client);
    let prefix = format!("{client}\u{0}");
    for key in broker.state_keys(QOS2_SCOPE) {
        if key.starts_with(&prefix) {
            broker.delete_state(QOS2_SCOPE, &key);
        }
    }
}

/// The subscriptions a session queue's bindings stand for, with default
/// options (granted QoS 2): what is known without a saved record.
pub(crate) fn subs_from_bindings(broker: &Broker, queue: &str) -> Vec<(Box<str>, SubEntry)> {
    let mut subs = Vec::new();
    for (exchange, key) in broker.queue_bindings(queue) {
        if &*exchange != "amq.topic" {
            continue;
        }
        if let Ok(filter) = switchyard_model::AddressFilter::new(&key) {
            subs.push((
                topic::address_to_topic(&key).into_boxed_str(),
                SubEntry {
                    filter,
                    options: SubOptions {
                        qos: QoS::ExactlyOnce,
                        ..SubOptions::default()
                    },
                    id: None,
                    shared: false,
                    consumer: None,
                },
            ));
        }
    }
    subs
}

/// The timers of a parked persistent session.
pub(crate) struct Timers {
    pub broker: Broker,
    pub client_id: Str,
    pub state: Arc<SessionState>,
    /// Proof of the parked state, to unpark it at expiry.
    pub ticket: Option<ParkTicket>,
    /// Time left before the session expires (`None`: never).
    pub expiry: Option<Duration>,
    /// Time left before the delayed will goes out (`None`: no will, or it
    /// waits for the session's end).
    pub will: Option<Duration>,
    /// Write the changes to the state store.
    pub persist: bool,
}

/// Arms the will and expiry timers of a parked session: the will waits
/// for its delay or the session's end [MQTT-3.1.3-9]; at expiry the queue
/// is deleted, the will (if still waiting) goes out, the saved state is
/// removed. A session taken up again by a connection is left alone.
pub(crate) fn arm(t: Timers) {
    let Timers {
        broker,
        client_id,
        state,
        ticket,
        expiry,
        will,
        persist,
    } = t;
    if let Some(delay) = will {
        let st = state.clone();
        let b = broker.clone();
        let client = client_id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let will = {
                let mut p = st.inner.lock();
                if p.resumed || p.expired {
                    None
                } else {
                    let w = p.will.take();
                    if persist && w.is_some() {
                        // Under the lock: a connection resuming the session
                        // writes its record after this one.
                        p.stored_will = None;
                        b.save_state(
                            SESSION_SCOPE,
                            &client,
                            &persist::encode_session(&p.record()),
                        );
                    }
                    w
                }
            };
            if let Some(m) = will {
                publish_will(&b, m);
            }
        });
    }
    if let (Some(after), Some(ticket)) = (expiry, ticket) {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let will = {
                let mut p = state.inner.lock();
                if p.resumed {
                    return;
                }
                p.expired = true;
                let _ = broker.delete_queue(&p.queue, false, false, None);
                if persist {
                    forget(&broker, &client_id);
                }
                p.will.take()
            };
            if let Some(m) = will {
                publish_will(&broker, m);
            }
            broker.clients().unpark(SCOPE, &client_id, ticket);
        });
    }
}

impl Conn {
    /// Writes this connection's session record (subscriptions and expiry;
    /// "held by a connection").
    fn save_session(&self) {
        let Some(sub) = self.sub.as_deref() else {
            return;
        };
        let rec = SessionRecord {
            expiry: self.session_expiry,
            left_at: 0,
            subs: stored_subs(sub.subs.iter().map(|(f, e)| (&**f, e))),
            reuse: sub.out.reuse.iter().map(|(m, p)| (*m, *p)).collect(),
            will: None,
        };
        self.broker.save_state(
            SESSION_SCOPE,
            &self.client_id,
            &persist::encode_session(&rec),
        );
    }

    /// Writes out everything written this turn.
    ///
    /// Most turns write a few packets that the socket takes at once: they
    /// are written without the future that waits for the socket (with its
    /// write timeout), which is boxed and made only when the socket is full
    /// or payloads go by reference. So the loop's state does not hold it.
    async fn flush(&mut self) -> Result<(), Close> {
        let Conn { io, sub, .. } = self;
        let refs = sub.as_deref_mut().map(|s| &mut s.refs);
        if refs.as_ref().is_none_or(|r| r.is_empty()) {
            if io.wbuf.is_empty() {
                return Ok(());
            }
            if std::future::poll_fn(|cx| Poll::Ready(io.write_now(cx))).await? {
                return Ok(());
            }
        }
        Box::pin(io.flush(refs)).await
    }

    /// Bytes written this turn and not yet flushed.
    fn pending(&self) -> usize {
        self.io.wbuf.len() + self.sub.as_deref().map_or(0, |s| s.ref_bytes())
    }

    fn write(&mut self, p: &Packet) {
        codec::encode(p, self.version, &mut self.io.wbuf);
    }

    fn ack_packet(&mut self, ack_kind: u8, packet_id: u16, reason: u8) {
        codec::encode_ack(&mut self.io.wbuf, ack_kind, packet_id, reason, self.version);
    }

    /// A 5.0 DISCONNECT with a reason code and, as a Reason String, why
    /// (allowed on DISCONNECT whatever Request Problem Information says; it
    /// also lets clients that only read the reason code when properties
    /// follow, such as paho-mqtt, see it).
    fn disconnect(&mut self, code: u8, why: &str) {
        if self.v5 {
            self.write(&Packet::Disconnect(Disconnect {
                reason: code,
                properties: Properties {
                    reason_string: Some(why.chars().take(200).collect()),
                    ..Properties::default()
                },
            }));
        }
    }

    /// The connection's loop. [`Lean`] returns `None` as soon as the
    /// connection has a receiving side or has published, for [`Full`] to
    /// go on.
    ///
    /// Not an `async fn`: its arguments would be kept twice in its state.
    #[allow(clippy::manual_async_fn)]
    fn run<'a, S: Side>(
        &'a mut self,
        shutdown: &'a tokio_util::sync::CancellationToken,
        claim: &'a Claim,
    ) -> impl std::future::Future<Output = Option<Close>> + 'a {
        async move {
            let mut flow = S::flow(&self.broker);
            // The first turn of the lean loop reads no socket: it handles the
            // bytes that came with the CONNECT.
            let mut connect_bytes = S::LEAN;
            // One `.await` for the turn, one for the flush after it (the
            // turn's futures and the flush's never take room at once).
            loop {
                let turn = if connect_bytes {
                    connect_bytes = false;
                    self.on_bytes()
                } else {
                    self.turn::<S>(&mut flow, shutdown, claim).await?
                };
                let end = match turn {
                    Ok(()) => None,
                    Err(close) => {
                        if let Close::Server(code, why) = &close {
                            let (code, why) = (*code, why.clone());
                            self.disconnect(code, &why);
                        }
                        Some(close)
                    }
                };
                let flushed = self.flush().await;
                if let Some(close) = end {
                    return Some(close);
                }
                if let Err(e) = flushed {
                    return Some(e);
                }
                if self.io.rbuf.is_empty()
                    && self.io.last_read < SMALL_IO
                    && self.io.rbuf.capacity() > 0
                {
                    self.io.rbuf = BytesMut::new();
                }
            }
        }
    }

    /// One turn of the loop: waits for what comes first and handles it.
    /// `None` when the lean loop hands over to the full one.
    ///
    /// Not an `async fn`: its arguments would be kept twice in its state.
    #[allow(clippy::manual_async_fn)]
    fn turn<'a, S: Side>(
        &'a mut self,
        flow: &'a mut S::Flow,
        shutdown: &'a tokio_util::sync::CancellationToken,
        claim: &'a Claim,
    ) -> impl std::future::Future<Output = Option<Result<(), Close>>> + 'a {
        async move {
            if S::LEAN && (self.sub.is_some() || self.publisher) {
                return None;
            }
            // The delivery stream is taken out of the subscriber for this
            // turn (the handlers need `&mut self`) and put back after it.
            let (events, mut recv) = S::take(self.sub.as_deref_mut());
            let room = self.sub.as_ref().is_none_or(|s| s.waiting.is_empty());
            // A client that publishes is not read while publishers are
            // blocked (memory/disk watermark); its keep-alive is not held
            // against it meanwhile.
            let hold = self.publisher && S::is_blocked(flow);
            // Held back by a slow subscriber's full queue (see
            // `max_queued_messages`), likewise.
            if self.pressure.as_ref().is_some_and(|p| p.is_relieved()) {
                self.pressure = None;
            }
            let pressed = self.pressure.is_some();
            if let Some(beat) = self.beat.as_deref() {
                if hold || pressed {
                    beat.pause();
                } else {
                    beat.resume(&self.cfg.keep_alive);
                }
            }
            let pending_acks = self.pubs.as_ref().map_or(0, |p| p.acks.len());
            let can_read = !hold && !pressed && pending_acks < MAX_PENDING_ACKS;
            let want = self.read_want();
            let turn: Result<(), Close> = tokio::select! {
                biased;
                () = shutdown.cancelled() => Err(if claim.is_evicted() {
                    self.disconnect(reason::SESSION_TAKEN_OVER, "session taken over");
                    Close::TakenOver
                } else if self.beat.as_deref().is_some_and(Beat::is_expired) {
                    // [MQTT-3.1.2-24]: 1.5 × keep alive without a packet
                    // (checked by the adapter's keep-alive sweep).
                    Close::protocol(reason::KEEP_ALIVE_TIMEOUT, "keep alive timeout")
                } else {
                    self.disconnect(reason::SERVER_SHUTTING_DOWN, "server shutting down");
                    Close::Shutdown
                }),
                Some(events) = S::events(&events) => {
                    self.on_events(events);
                    Ok(())
                }
                d = S::delivery(&mut recv), if room => match d {
                    None => Err(Close::protocol(reason::UNSPECIFIED, "session closed")),
                    Some((d, all)) => {
                        let mut r = self.on_delivery(d);
                        while r.is_ok()
                            && self.sub.as_ref().is_none_or(|s| s.waiting.is_empty())
                            && self.pending() < FLUSH_AT
                            && self.sub.as_ref().is_none_or(|s| s.refs.len() < MAX_REFS)
                        {
                            let Some(d) = all.try_recv() else { break };
                            r = self.on_delivery(d);
                        }
                        r
                    }
                },
                r = front_ack(self.pubs.as_deref_mut()), if pending_acks > 0 => match r {
                    Ok(()) => {
                        self.release_acks();
                        Ok(())
                    }
                    Err(e) => Err(Close::protocol(
                        reason::UNSPECIFIED,
                        format!("a message could not be stored: {e}"),
                    )),
                },
                () = S::held(flow, hold, self.pressure.as_ref()), if self.publisher => Ok(()),
                r = self.io.read(want), if can_read => match r {
                    Ok(0) => Err(Close::Gone(None)),
                    Err(e) => Err(Close::Gone(Some(e))),
                    Ok(n) => {
                        self.io.last_read = n;
                        if let Some(beat) = self.beat.as_deref() {
                            self.cfg.keep_alive.touch(beat);
                        }
                        self.on_bytes()
                    }
                },
            };
            S::put_back(recv, self.sub.as_deref_mut());
            Some(turn)
        }
    }

    fn read_want(&self) -> usize {
        self.decoder
            .shortfall(&self.io.rbuf)
            .map_or(8192, |s| s.clamp(SMALL_IO, 256 * 1024))
    }

    fn on_bytes(&mut self) -> Result<(), Close> {
        // Publishes from one read wake each receiving connection once, at the end.
        let _batch = switchyard_core::WakeBatch::new();
        while let Some(p) = self.decoder.decode(&mut self.io.rbuf)? {
            self.on_packet(p)?;
        }
        Ok(())
    }

    fn on_packet(&mut self, p: Packet) -> Result<(), Close> {
        match p {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(a) => {
                if let Some(s) = self.sub.as_deref_mut()
                    && let Some(f) = s.out.inflight.get(&a.packet_id)
                    && f.state == OutState::AwaitPubAck
                {
                    let f = *f;
                    s.out.inflight.remove(&a.packet_id);
                    s.ack(f.source);
                    self.drain_waiting();
                }
                Ok(())
            }
            Packet::PubRec(a) => {
                let state = self
                    .sub
                    .as_deref_mut()
                    .and_then(|s| s.out.inflight.get_mut(&a.packet_id));
                match state {
                    Some(f) if f.state == OutState::AwaitPubRec => {
                        let source = f.source.take();
                        if a.reason >= 0x80 {
                            if let Some(s) = self.sub.as_deref_mut() {
                                s.out.inflight.remove(&a.packet_id);
                            }
                        } else {
                            f.state = OutState::AwaitPubComp;
                            self.ack_packet(kind::PUBREL, a.packet_id, 0);
                            if self.journaled {
                                save_qos2(
                                    &self.broker,
                                    &self.client_id,
                                    Dir::Out,
                                    a.packet_id,
                                    Some(Qos2Entry::AwaitPubComp),
                                );
                            }
                        }
                        self.ack_source(source);
                        self.drain_waiting();
                    }
                    Some(f) if f.state == OutState::AwaitPubComp => {
                        self.ack_packet(kind::PUBREL, a.packet_id, 0);
                    }
                    _ => {
                        let code = if self.v5 {
                            reason::PACKET_ID_NOT_FOUND
                        } else {
                            0
                        };
                        self.ack_packet(kind::PUBREL, a.packet_id, code);
                    }
                }
                Ok(())
            }
            Packet::PubComp(a) => {
                if let Some(s) = self.sub.as_deref_mut()
                    && s.out
                        .inflight
                        .get(&a.packet_id)
                        .is_some_and(|f| f.state == OutState::AwaitPubComp)
                {
                    s.out.inflight.remove(&a.packet_id);
                    if self.journaled {
                        save_qos2(&self.broker, &self.client_id, Dir::Out, a.packet_id, None);
                    }
                    self.drain_waiting();
                }
                Ok(())
            }
            Packet::PubRel(a) => {
                let known = self
                    .pubs
                    .as_deref_mut()
                    .is_some_and(|p| p.qos2.remove(&a.packet_id));
                if known && self.journaled {
                    save_qos2(&self.broker, &self.client_id, Dir::In, a.packet_id, None);
                }
                let code = if known || !self.v5 {
                    0
                } else {
                    reason::PACKET_ID_NOT_FOUND
                };
                self.ack_packet(kind::PUBCOMP, a.packet_id, code);
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u),
            Packet::PingReq => {
                self.write(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => {
                if self.v5
                    && let Some(e) = d.properties.session_expiry_interval
                {
                    if self.session_expiry == 0 && e != 0 {
                        // [MQTT-3.14.2-2]
                        return Err(Close::protocol(
                            reason::PROTOCOL_ERROR,
                            "session expiry set on DISCONNECT after 0 on CONNECT",
                        ));
                    }
                    let max = u32::try_from(self.cfg.max_session_expiry.get().as_secs())
                        .unwrap_or(u32::MAX);
                    self.session_expiry = e.min(max);
                }
                Err(Close::Client(d.reason))
            }
            Packet::Connect(_) => Err(Close::protocol(
                reason::PROTOCOL_ERROR,
                "second CONNECT [MQTT-3.1.0-2]",
            )),
            Packet::Auth(_) => Err(Close::protocol(
                reason::PROTOCOL_ERROR,
                "AUTH without an authentication method",
            )),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => Err(
                Close::protocol(reason::PROTOCOL_ERROR, "a packet only a server sends"),
            ),
        }
    }

    fn ack_source(&self, source: Option<(ConsumerId, switchyard_model::DeliveryTag)>) {
        if let Some(s) = &self.sub {
            s.ack(source);
        }
    }

    /// The receiving side, opened on first use.
    fn sub(&mut self) -> &mut Subscriber {
        let (broker, id, aliases) = (&self.broker, self.conn_id, self.out_alias_max);
        let principal = self.acl.as_deref().map(|a| &a.1);
        self.sub.get_or_insert_with(|| {
            let mut session = broker.session("mqtt", id);
            if let Some(p) = principal {
                session.set_principal(p);
            }
            Subscriber::new(session, aliases)
        })
    }

    /// The answer to a QoS 1/2 publication that is not routed.
    fn refuse_publish(&mut self, p: &Publish, code: u8) {
        self.answer_publish(p, code, None);
    }

    /// PUBACK (QoS 1) or PUBREC (QoS 2) for `p`; when `wait` is given, or
    /// an earlier answer still waits, it goes out once the journal has
    /// synced (in order).
    fn answer_publish(&mut self, p: &Publish, code: u8, wait: Option<switchyard_core::Completion>) {
        let code = if self.v5 { code } else { 0 };
        let kind = match p.qos {
            QoS::AtMostOnce => return,
            QoS::AtLeastOnce => kind::PUBACK,
            QoS::ExactlyOnce => {
                if code < 0x80 && self.pubs().qos2.insert(p.packet_id) && self.journaled {
                    // Kept until PUBREL, across a restart: a PUBLISH sent
                    // again with this identifier is not routed twice.
                    save_qos2(
                        &self.broker,
                        &self.client_id,
                        Dir::In,
                        p.packet_id,
                        Some(Qos2Entry::Incoming),
                    );
                }
                kind::PUBREC
            }
        };
        self.answer(kind, p.packet_id, code, wait);
    }

    /// Writes a publish answer now, or queues it behind those waiting.
    fn answer(
        &mut self,
        kind: u8,
        packet_id: u16,
        reason: u8,
        wait: Option<switchyard_core::Completion>,
    ) {
        if wait.is_none() && self.pubs.as_ref().is_none_or(|p| p.acks.is_empty()) {
            self.ack_packet(kind, packet_id, reason);
        } else {
            self.pubs().acks.push_back(PendingAck {
                kind,
                packet_id,
                reason,
                wait,
            });
        }
    }

    /// After the front answer's wait resolved: writes it and every answer
    /// behind it that waits for nothing more.
    fn release_acks(&mut self) {
        let Some(pubs) = self.pubs.as_deref_mut() else {
            return;
        };
        if let Some(front) = pubs.acks.front_mut() {
            front.wait = None;
        }
        while let Some(a) = pubs.acks.front() {
            if a.wait.is_some() {
                break;
            }
            let (kind, id, reason) = (a.kind, a.packet_id, a.reason);
            pubs.acks.pop_front();
            codec::encode_ack(&mut self.io.wbuf, kind, id, reason, self.version);
        }
        if pubs.acks.is_empty() && pubs.acks.capacity() > 0 {
            pubs.acks = VecDeque::new();
        }
    }

    /// The publishing side, allocated when first needed.
    fn pubs(&mut self) -> &mut Publishing {
        self.pubs.get_or_insert_with(Box::default)
    }

    fn on_publish(&mut self, p: Publish) -> Result<(), Close> {
        self.publisher = true;
        let max_qos2 = usize::from(self.cfg.receive_maximum);
        let qos2 = &self.pubs().qos2;
        let (again, too_many) = (qos2.contains(&p.packet_id), qos2.len() >= max_qos2);
        if p.qos == QoS::ExactlyOnce && again {
            // Sent again before PUBREL: routed already, never twice.
            self.answer(kind::PUBREC, p.packet_id, 0, None);
            return Ok(());
        }
        if p.qos == QoS::ExactlyOnce && too_many {
            return Err(Close::protocol(
                reason::RECEIVE_MAXIMUM_EXCEEDED,
                "more QoS 2 publications in flight than Receive Maximum",
            ));
        }
        let address = match self.resolve_topic(&p)? {
            Ok(a) => a,
            Err(code) => {
                self.refuse_publish(&p, code);
                return Ok(());
            }
        };
        // `$SYS` is the broker's, `$share` is a filter form: clients may not
        // publish there. Other `$` topics are open.
        if address.starts_with('$')
            && (address.starts_with("$SYS") || address.starts_with("$share"))
        {
            let first = address.split('.').next().unwrap_or("");
            if first == "$SYS" || first == "$share" {
                self.refuse_publish(&p, reason::NOT_AUTHORIZED);
                return Ok(());
            }
        }
        if let Some(acl) = &self.acl
            && acl.0.check(Verb::Publish, &address).is_err()
        {
            // Checked before anything, the retained store included.
            // MQTT 3.1.1 has no way to refuse one publication: the
            // connection is closed (as Mosquitto does). 5.0 answers 0x87
            // (QoS 1/2) or disconnects with 0x87 (QoS 0) [MQTT-3.3.5].
            if !self.v5 || p.qos == QoS::AtMostOnce {
                return Err(Close::protocol(
                    reason::NOT_AUTHORIZED,
                    "publication not authorized",
                ));
            }
            self.refuse_publish(&p, reason::NOT_AUTHORIZED);
            return Ok(());
        }
        let msg = match mapping::to_message(address.clone(), &p, self.v5, now_millis()) {
            Ok(m) => m,
            Err(code) => {
                self.refuse_publish(&p, code);
                return Ok(());
            }
        };
        let mut code = reason::SUCCESS;
        let mut wait = None;
        if p.retain {
            // [MQTT-3.3.1-5..7]: keep the last, an empty payload clears.
            if let Ok(addr) = switchyard_model::Address::new(&address) {
                if p.payload.is_empty() {
                    self.broker.retain(&addr, None);
                } else if self.broker.retained_stats().0 < self.cfg.max_retained_messages {
                    self.broker.retain(&addr, Some(mapping::for_retain(&msg)));
                } else {
                    code = reason::QUOTA_EXCEEDED;
                }
            }
        }
        let mut msg = msg;
        msg.origin = Origin {
            protocol: "mqtt",
            conn: self.conn_id,
        };
        match self.broker.publish(msg) {
            Ok(published) => {
                // A message journaled (persistent, into a durable queue such
                // as a persistent session's) is acknowledged after the
                // fsync that covers it.
                if code == reason::SUCCESS && published.is_unroutable() {
                    code = reason::NO_MATCHING_SUBSCRIBERS;
                }
                wait = published.completion;
                switchyard_core::Pressure::keep(&mut self.pressure, published.pressure);
            }
            Err(CoreError::MessageTooLarge { .. }) => code = reason::PACKET_TOO_LARGE,
            Err(CoreError::AccessRefused(_)) => code = reason::NOT_AUTHORIZED,
            Err(CoreError::ResourceLimit(_)) => code = reason::QUOTA_EXCEEDED,
            Err(e) => {
                tracing::debug!(error = %e, "publish failed");
                code = reason::UNSPECIFIED;
            }
        }
        self.answer_publish(&p, code, wait);
        Ok(())
    }

    /// The address of a PUBLISH's topic (or alias). The outer error closes
    /// the connection; the inner one refuses just this publication.
    fn resolve_topic(&mut self, p: &Publish) -> Result<Result<Str, u8>, Close> {
        let alias = if self.v5 {
            p.properties.topic_alias
        } else {
            None
        };
        if let Some(a) = alias
            && (a == 0 || a > self.cfg.topic_alias_maximum)
        {
            return Err(Close::protocol(
                reason::TOPIC_ALIAS_INVALID,
                "topic alias out of range [MQTT-3.3.2-9]",
            ));
        }
        if p.topic.is_empty() {
            return match alias.and_then(|a| self.pubs().in_aliases.get(a)) {
                Some(addr) => Ok(Ok(addr.clone())),
                None => Err(Close::protocol(
                    reason::PROTOCOL_ERROR,
                    "empty topic without a known topic alias",
                )),
            };
        }
        let addr = match &self.pubs().last_topic {
            Some((t, a)) if *t == p.topic => a.clone(),
            _ => match topic::topic_to_address(p.topic_str()) {
                Ok(a) => {
                    let a = Str::from(a);
                    self.pubs().last_topic = Some((p.topic.clone(), a.clone()));
                    a
                }
                Err(TopicError::Wildcard) => {
                    return Err(Close::protocol(
                        reason::TOPIC_NAME_INVALID,
                        "PUBLISH topic with a wildcard [MQTT-3.3.2-2]",
                    ));
                }
                Err(_) => return Ok(Err(reason::TOPIC_NAME_INVALID)),
            },
        };
        if let Some(a) = alias {
            self.pubs().in_aliases.set(a, addr.clone());
        }
        Ok(Ok(addr))
    }

    fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Close> {
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained: Vec<(switchyard_model::AddressFilter, QoS, Option<u32>)> = Vec::new();
        let mut changed = false;
        for (filter, opts) in &s.filters {
            let code = self.subscribe_one(filter, *opts, sub_id, &mut retained)?;
            changed |= code < 0x80 && !filter.starts_with("$share/");
            codes.push(if self.v5 || code < 0x80 {
                code
            } else {
                reason::v3::SUBACK_FAILURE
            });
        }
        if changed && self.journaled {
            self.save_session();
        }
        self.write(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: Properties::default(),
            codes,
        }));
        // Retained messages follow the SUBACK [MQTT-3.3.1-9], flagged RETAIN.
        for (filter, granted, id) in retained {
            for msg in self.broker.retained(&filter) {
                let qos = mapping::message_qos(&msg).min(granted);
                let ids: SmallVec<[u32; 2]> = id.into_iter().collect();
                self.send(msg, qos, true, false, None, ids);
            }
        }
        Ok(())
    }

    fn subscribe_one(
        &mut self,
        mqtt_filter: &str,
        opts: SubOptions,
        sub_id: Option<u32>,
        retained: &mut Vec<(switchyard_model::AddressFilter, QoS, Option<u32>)>,
    ) -> Result<u8, Close> {
        let shared = match topic::parse_shared(mqtt_filter) {
            Ok(s) => s,
            Err(_) => return Ok(reason::TOPIC_FILTER_INVALID),
        };
        if shared.is_some() && opts.no_local {
            return Err(Close::protocol(
                reason::PROTOCOL_ERROR,
                "no local on a shared subscription [MQTT-3.8.3-4]",
            ));
        }
        let plain = shared.map_or(mqtt_filter, |(_, f)| f);
        let filter = match topic::topic_filter(plain) {
            Ok(f) => f,
            Err(_) => return Ok(reason::TOPIC_FILTER_INVALID),
        };
        let granted = opts.qos.bits();
        let max_queued_messages = self.cfg.max_queued_messages;
        let max_queued_bytes = self.cfg.max_queued_bytes.bytes();
        let sub = self.sub();
        if let Some(existing) = sub.subs.get_mut(mqtt_filter) {
            // [MQTT-3.8.4-3]: replace the options, keep the subscription.
            existing.options = opts;
            existing.id = sub_id;
            if shared.is_none() && opts.retain_handling == 0 {
                retained.push((filter, opts.qos, sub_id));
            }
            return Ok(granted);
        }
        let consumer = if let Some((group, _)) = shared {
            sub.session
                .subscribe(CoreSubscribe {
                    filter: filter.clone(),
                    kind: SubscriptionKind::Shared(Str::from(group)),
                    queue: QueueOptions::default(),
                    consume: ConsumeOptions::default(),
                })
                .map(Some)
        } else if let Some(q) = &sub.queue {
            sub.session
                .bind_queue(q, "amq.topic", filter.as_str(), &Headers::new())
                .map(|()| None)
        } else {
            sub.session
                .subscribe(CoreSubscribe {
                    filter: filter.clone(),
                    kind: SubscriptionKind::Temporary,
                    queue: QueueOptions {
                        no_local: opts.no_local,
                        max_length: Some(max_queued_messages).filter(|&n| n > 0),
                        max_bytes: Some(max_queued_bytes).filter(|&n| n > 0),
                        overflow: Overflow::Block,
                        ..QueueOptions::default()
                    },
                    consume: ConsumeOptions::default(),
                })
                .map(Some)
        };
        let consumer = match consumer {
            Ok(c) => c,
            Err(CoreError::ResourceLimit(e)) => {
                tracing::debug!(error = %e, "subscription refused");
                return Ok(reason::QUOTA_EXCEEDED);
            }
            Err(CoreError::AccessRefused(e)) => {
                tracing::debug!(error = %e, "subscription not authorized");
                return Ok(reason::NOT_AUTHORIZED);
            }
            Err(e) => {
                tracing::debug!(error = %e, "subscription failed");
                return Ok(reason::UNSPECIFIED);
            }
        };
        let key: Box<str> = mqtt_filter.into();
        if let Some(c) = consumer {
            sub.by_consumer.insert(c, key.clone());
        }
        // Shared subscriptions get no retained messages (section 4.8.2).
        if shared.is_none() && opts.retain_handling < 2 {
            retained.push((filter.clone(), opts.qos, sub_id));
        }
        sub.subs.insert(
            key,
            SubEntry {
                filter,
                options: opts,
                id: sub_id,
                shared: shared.is_some(),
                consumer,
            },
        );
        Ok(granted)
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), Close> {
        let mut codes = Vec::with_capacity(u.filters.len());
        let mut changed = false;
        for f in &u.filters {
            let removed = self
                .sub
                .as_deref_mut()
                .and_then(|sub| sub.subs.remove(f.as_str()).map(|s| (sub, s)));
            let code = match removed {
                None => reason::NO_SUBSCRIPTION_EXISTED,
                Some((sub, s)) => {
                    match s.consumer {
                        Some(c) => {
                            sub.by_consumer.remove(&c);
                            let _ = sub.session.cancel(c);
                        }
                        None => {
                            changed = true;
                            if let Some(q) = &sub.queue {
                                let _ = sub.session.unbind_queue(
                                    q,
                                    "amq.topic",
                                    s.filter.as_str(),
                                    &Headers::new(),
                                );
                            }
                        }
                    }
                    reason::SUCCESS
                }
            };
            codes.push(code);
        }
        if changed && self.journaled {
            self.save_session();
        }
        self.write(&Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            properties: Properties::default(),
            codes,
        }));
        Ok(())
    }

    fn on_events(&mut self, events: Vec<SessionEvent>) {
        let Some(sub) = self.sub.as_deref_mut() else {
            return;
        };
        for e in events {
            match e {
                SessionEvent::ConsumerCancelled(c) => {
                    if let Some(f) = sub.by_consumer.remove(&c) {
                        sub.subs.remove(&f);
                    }
                    if sub.queue_consumer == Some(c) {
                        tracing::warn!("the session queue was deleted");
                        sub.queue_consumer = None;
                    }
                }
                SessionEvent::Overflowed(_) => {}
            }
        }
    }

    fn on_delivery(&mut self, d: Delivery) -> Result<(), Close> {
        let Some(sub) = self.sub.as_deref() else {
            return Ok(());
        };
        let source = (d.consumer, d.tag);
        let manual = Some(d.consumer) == sub.queue_consumer;
        let mut ids: SmallVec<[u32; 2]> = SmallVec::new();
        let granted;
        let rap;
        if manual {
            // The persistent session's queue: which subscriptions match?
            let own = d.message.origin.conn == self.conn_id;
            let mut best: Option<QoS> = None;
            let mut r = false;
            for s in sub.subs.values() {
                if s.shared || !topic::matches(&s.filter, &d.message.address) {
                    continue;
                }
                if own && s.options.no_local {
                    continue;
                }
                best = Some(best.map_or(s.options.qos, |b| b.max(s.options.qos)));
                r |= s.options.retain_as_published;
                if let Some(i) = s.id {
                    ids.push(i);
                }
            }
            let Some(b) = best else {
                sub.ack(Some(source));
                return Ok(());
            };
            granted = b;
            rap = r;
        } else {
            let Some(s) = sub
                .by_consumer
                .get(&d.consumer)
                .and_then(|f| sub.subs.get(f))
            else {
                return Ok(());
            };
            granted = s.options.qos;
            rap = s.options.retain_as_published;
            if let Some(i) = s.id {
                ids.push(i);
            }
        }
        let retain = rap && self.v5 && mapping::published_retained(&d.message);
        let qos = mapping::message_qos(&d.message).min(granted);
        self.send(
            d.message,
            qos,
            retain,
            d.redelivered,
            manual.then_some(source),
            ids,
        );
        Ok(())
    }

    /// Sends (or queues behind the window) one outgoing PUBLISH.
    fn send(
        &mut self,
        msg: Arc<Message>,
        qos: QoS,
        retain: bool,
        dup: bool,
        source: Option<(ConsumerId, switchyard_model::DeliveryTag)>,
        sub_ids: SmallVec<[u32; 2]>,
    ) {
        let window = usize::from(self.window);
        let Some(sub) = self.sub.as_deref_mut() else {
            return;
        };
        if qos != QoS::AtMostOnce && (sub.out.len() >= window || !sub.waiting.is_empty()) {
            sub.waiting.push_back(Waiting {
                msg,
                qos,
                retain,
                dup,
                source,
                sub_ids,
            });
            return;
        }
        self.send_now(msg, qos, retain, dup, source, &sub_ids);
    }

    fn send_now(
        &mut self,
        msg: Arc<Message>,
        qos: QoS,
        retain: bool,
        dup: bool,
        source: Option<(ConsumerId, switchyard_model::DeliveryTag)>,
        sub_ids: &[u32],
    ) {
        let Conn {
            sub,
            io,
            v5,
            client_max_packet,
            ..
        } = self;
        let Some(sub) = sub.as_deref_mut() else {
            return;
        };
        let now = now_millis();
        // Expired, or an address (from another protocol) that is no valid
        // MQTT topic name: `%` (the empty topic) or `+`/`#` in a word.
        if msg.is_expired(now) || &*msg.address == "%" || msg.address.contains(['+', '#']) {
            sub.ack(source);
            return;
        }
        let packet_id = if qos == QoS::AtMostOnce {
            0
        } else {
            match sub.out.allocate(msg.id) {
                Some(id) => id,
                None => {
                    sub.ack(source);
                    return;
                }
            }
        };
        let alias = match sub.out_aliases.lookup(&msg.address) {
            None => Alias::None,
            Some((a, true)) => Alias::Use(a),
            Some((a, false)) => Alias::Set(a),
        };
        let mut o = Outgoing {
            msg: &msg,
            qos,
            packet_id,
            dup,
            retain,
            alias,
            sub_ids,
            now,
        };
        let max = usize::try_from(*client_max_packet).unwrap_or(usize::MAX);
        if mapping::publish_len(&o, *v5).2 > max {
            // [MQTT-3.1.2-25]: too large for the client; dropped as if sent.
            o.alias = Alias::None;
            if mapping::publish_len(&o, *v5).2 > max {
                tracing::debug!(
                    size = msg.body.len(),
                    "message larger than the client accepts; dropped"
                );
                sub.ack(source);
                return;
            }
        }
        if msg.body.len() >= BY_REF && io.stream.is_write_vectored() {
            mapping::write_publish_head(&mut io.wbuf, &o, *v5);
            sub.refs.push((io.wbuf.len(), msg.body.clone()));
        } else {
            mapping::write_publish(&mut io.wbuf, &o, *v5);
        }
        if qos == QoS::AtMostOnce {
            sub.ack(source);
        } else {
            sub.out.inflight.insert(
                packet_id,
                InFlight {
                    state: if qos == QoS::AtLeastOnce {
                        OutState::AwaitPubAck
                    } else {
                        OutState::AwaitPubRec
                    },
                    source,
                    message: msg.id,
                },
            );
        }
    }

    fn drain_waiting(&mut self) {
        loop {
            let window = usize::from(self.window);
            let Some(sub) = self.sub.as_deref_mut() else {
                return;
            };
            if sub.out.len() >= window {
                return;
            }
            let Some(w) = sub.waiting.pop_front() else {
                return;
            };
            self.send_now(w.msg, w.qos, w.retain, w.dup, w.source, &w.sub_ids);
        }
    }

    /// After the loop: the will, the session's fate, the claim.
    async fn finish(mut self: Box<Self>, end: Close, claim: Claim) -> Result<(), AdapterError> {
        let _ = self.io.stream.shutdown().await;
        let (send_will, result) = match &end {
            // Only DISCONNECT 0x00 deletes the will [MQTT-3.1.2-10]; 0x04
            // asks for it, any other reason is not a normal disconnection.
            Close::Client(code) => (*code != reason::SUCCESS, Ok(())),
            Close::Shutdown => (false, Ok(())),
            Close::TakenOver => (true, Ok(())),
            Close::Gone(None) => (true, Ok(())),
            Close::Gone(Some(e)) => (
                true,
                Err(AdapterError::Io(io::Error::new(e.kind(), e.to_string()))),
            ),
            Close::Server(_, why) => (true, Err(AdapterError::Protocol(why.clone()))),
        };
        let now = now_millis();
        let v5 = self.v5;
        let will = if send_will {
            self.will.take().and_then(|w| {
                let addr = topic::topic_to_address(&w.topic).ok()?;
                let delay = w.properties.will_delay_interval.unwrap_or(0);
                mapping::will_message(Str::from(addr), &w, v5, now)
                    .ok()
                    .map(|m| (m, delay, w))
            })
        } else {
            None
        };
        // Unacknowledged deliveries go back to their queues now.
        let this = *self;
        let Conn {
            broker,
            sub,
            pubs,
            client_id,
            session_expiry,
            journaled,
            ..
        } = this;
        let (queue, subs, out) = match sub {
            Some(s) => {
                let Subscriber {
                    session,
                    queue,
                    subs,
                    out,
                    ..
                } = *s;
                drop(session);
                (queue, subs, out)
            }
            None => (None, Default::default(), Outbound::default()),
        };
        let queue = match queue {
            Some(q) if session_expiry > 0 => q,
            other => {
                if let Some((m, _, _)) = will {
                    publish_will(&broker, m);
                }
                if let Some(q) = other {
                    let _ = broker.delete_queue(&q, false, false, None);
                    if journaled {
                        forget(&broker, &client_id);
                    }
                }
                drop(claim);
                return result;
            }
        };
        let mut delayed = None;
        if let Some((m, delay, w)) = will {
            if delay == 0 {
                publish_will(&broker, m);
            } else {
                delayed = Some((m, delay, w));
            }
        }
        let mut reuse = Vec::new();
        let mut pubrel = Vec::new();
        for (id, f) in &out.inflight {
            match f.state {
                OutState::AwaitPubComp => pubrel.push(*id),
                _ if f.source.is_some() => reuse.push((f.message, *id)),
                _ => {}
            }
        }
        let will_delay = delayed.as_ref().map(|(_, d, _)| *d);
        let (will, stored_will) = match delayed {
            Some((m, _, w)) => (Some(m), Some(StoredWill { will: *w, v5 })),
            None => (None, None),
        };
        let parked = Parked {
            resumed: false,
            expired: false,
            queue: queue.clone(),
            subs: subs.into_iter().filter(|(_, s)| !s.shared).collect(),
            qos2: pubs
                .map(|p| p.qos2)
                .unwrap_or_default()
                .into_iter()
                .collect(),
            reuse,
            pubrel,
            will,
            stored_will,
            expiry: session_expiry,
            left_at: now,
        };
        if journaled {
            // Before the claim is released: a connection taking the session
            // up writes its record after this one.
            broker.save_state(
                SESSION_SCOPE,
                &client_id,
                &persist::encode_session(&parked.record()),
            );
        }
        let state = SessionState::new(parked);
        let ticket = claim.release(Some(state.clone()));
        arm(Timers {
            broker,
            client_id,
            state,
            ticket,
            expiry: (session_expiry != u32::MAX)
                .then(|| Duration::from_secs(u64::from(session_expiry))),
            will: will_delay
                .filter(|d| *d < session_expiry)
                .map(|d| Duration::from_secs(u64::from(d))),
            persist: journaled,
        });
        result
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// The connection's task holds the serve future for its whole life:
    /// the handshake, the end, the full loop (of a connection that
    /// receives or publishes) and a flush that has to wait are boxed so
    /// they do not inflate it.
    #[tokio::test]
    async fn an_idle_connection_holds_little_state() {
        let broker = Broker::new(switchyard_core::CoreConfig::new());
        let (a, _b) = tokio::io::duplex(64);
        let conn = Connection {
            id: ConnId(1),
            listener: "mqtt".into(),
            peer: None,
            local: None,
            transport: switchyard_core::spi::Transport::Tcp,
            tls_identity: None,
            start_tls: None,
            stream: Box::new(a),
            shutdown: tokio_util::sync::CancellationToken::new(),
        };
        let (a2, _b2) = tokio::io::duplex(64);
        let conn2 = Connection {
            id: ConnId(3),
            listener: "mqtt".into(),
            peer: None,
            local: None,
            transport: switchyard_core::spi::Transport::Tcp,
            tls_identity: None,
            start_tls: None,
            stream: Box::new(a2),
            shutdown: tokio_util::sync::CancellationToken::new(),
        };
        let o = open(Box::new((
            conn2,
            broker.clone(),
            Arc::new(Shared::default()),
        )));
        assert!(
            std::mem::size_of_val(&o) <= 4096,
            "boxed, freed after CONNACK"
        );
        let f = serve(Box::new((
            conn,
            broker.clone(),
            Arc::new(Shared::default()),
        )));
        let future = std::mem::size_of_val(&f);
        let conn = std::mem::size_of::<Conn>();
        // 384 and 224 are size classes of the allocator (mimalloc); this
        // was 856 (a 896-byte block) with a keep-alive timer per
        // connection, the flow-control wait and the flush's write timeout.
        assert!(future <= 384, "serve future is {future} bytes");
        assert!(conn <= 224, "Conn is {conn} bytes");
    }
}
