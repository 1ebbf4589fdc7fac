//! The STOMP session: what each frame does, without I/O.
//!
//! ```text
//!            CONNECT / STOMP (version, heart-beat, login)
//!   Awaiting ──────────────────────────────────────────► Connected ──┐
//!      │  any other frame: ERROR, close                     │  ▲      │ SEND SUBSCRIBE UNSUBSCRIBE
//!      ▼                                                    │  └──────┘ ACK NACK BEGIN COMMIT ABORT
//!   closed ◄──── ERROR (any violation) ─────────────────────┤
//!   closed ◄──── DISCONNECT (RECEIPT after earlier receipts) ┘
//! ```
//!
//! [`StompSession::on_frame`] applies one frame to the core's
//! [`Session`] (which is synchronous: the core never awaits a client) and
//! writes the answer — CONNECTED, RECEIPT, ERROR — into [`Output`]. A receipt
//! that must wait for the journal (a persistent message, a commit) is queued
//! in [`Output::pending`] with its completions, and every later receipt
//! queues behind it, so receipts keep the order of the frames that asked
//! for them. [`StompSession::on_delivery`] writes a MESSAGE frame.
//!
//! Every violation returns a [`StompError`], which becomes an ERROR frame
//! (with `message`, `receipt-id` when the frame asked for a receipt, and an
//! explanatory body); the driver then closes the connection, as the
//! specification requires (1.2 §ERROR).

use crate::auth::{self, Principal};
use crate::codec::{Command, DecodeError, Frame, FrameWriter, Text, Version};
use crate::config::StompConfig;
use crate::mapping::{self, Destination};
use bytes::BytesMut;
use hashbrown::{HashMap, HashSet};
use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::{
    Completion, ConsumeOptions, CoreError, DeclareQueue, Delivery, Pressure, QueueOptions, Session,
    Subscribe, SubscriptionKind, Transaction,
};
use switchyard_model::{
    Address, AddressFilter, ConnId, ConsumerId, DeliveryTag, Headers, Namespace, Str,
};

/// The protocol's name in logs, metrics and message origins.
pub const PROTOCOL: &str = "stomp";

/// The `server` header of CONNECTED.
pub const SERVER: &str = concat!("switchyard/", env!("CARGO_PKG_VERSION"));

/// Prefix of the queues behind durable topic subscriptions:
/// `$stomp.durable.<client-id>.<subscription name>`, both parts with `%`
/// and `.` percent-encoded. Other protocols' generated queues start with
/// `$sub.`, `$share.` or `amq.gen-`, so these cannot collide with them.
pub const DURABLE_PREFIX: &str = "$stomp.durable.";

/// At most this many queue names are remembered as known to exist.
const KNOWN_QUEUES: usize = 1024;

/// What an ACK or NACK held in a transaction counts against
/// `max_transaction_size`.
const TX_OP_SIZE: usize = 64;

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A protocol violation or a refused operation: becomes an ERROR frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StompError {
    /// The `message` header: a short description.
    pub message: Cow<'static, str>,
    /// The body: what was wrong and, where it helps, what to do.
    pub detail: String,
    /// One extra header (the `version` header of a failed negotiation).
    pub extra: Option<(&'static str, &'static str)>,
}

impl StompError {
    pub fn new(message: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        StompError {
            message: message.into(),
            detail: detail.into(),
            extra: None,
        }
    }

    fn missing(command: Command, header: &str) -> Self {
        StompError::new(
            format!("missing {header} header"),
            format!("a {command} frame must have a '{header}' header"),
        )
    }

    fn core(what: impl std::fmt::Display, e: &CoreError) -> Self {
        StompError::new(e.to_string(), format!("{what}: {e}"))
    }
}

impl From<&DecodeError> for StompError {
    fn from(e: &DecodeError) -> Self {
        let message = match e {
            DecodeError::UnknownCommand(_) => "unknown command",
            DecodeError::LineTooLong { .. }
            | DecodeError::TooManyHeaders { .. }
            | DecodeError::HeadersTooLarge { .. }
            | DecodeError::BodyTooLarge { .. } => "frame too large",
            DecodeError::MissingNul(_) => "frame not terminated by NUL",
            DecodeError::BadEscape(_) => "invalid header escape",
            DecodeError::BadContentLength(_) => "invalid content-length",
            _ => "malformed frame",
        };
        StompError::new(message, e.to_string())
    }
}

/// A receipt that waits for durable writes (and every receipt after it).
#[derive(Debug)]
pub struct Pending {
    /// The `receipt-id` to send once `wait` is empty.
    pub receipt: Text,
    /// Completions still outstanding (resolved ones are removed).
    pub wait: Vec<Completion>,
}

/// What the session writes: bytes for the socket, and receipts in waiting.
#[derive(Debug, Default)]
pub struct Output {
    pub buf: BytesMut,
    pub pending: VecDeque<Pending>,
}

/// What the driver does after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Continue,
    /// An ERROR was written: flush it and close.
    Close,
    /// DISCONNECT: stop reading; once the pending receipts are out (its own
    /// included), flush and close.
    Disconnect,
}

/// A subscription's acknowledgement mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    Auto,
    /// Cumulative: an ACK covers every earlier message of the subscription.
    Client,
    ClientIndividual,
}

impl AckMode {
    fn parse(s: Option<&str>) -> Option<AckMode> {
        match s {
            None | Some("auto") => Some(AckMode::Auto),
            Some("client") => Some(AckMode::Client),
            Some("client-individual") => Some(AckMode::ClientIndividual),
            Some(_) => None,
        }
    }
}

#[derive(Debug)]
struct Subscription {
    id: Text,
    ack: AckMode,
    /// The queue of a durable subscription (deleted by an UNSUBSCRIBE that
    /// says so).
    durable_queue: Option<Str>,
}

#[derive(Debug)]
struct OpenTx {
    tx: Transaction,
    bytes: usize,
}

/// Negotiated heart-beating.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeartBeat {
    /// The server sends an EOL when it has written nothing for this long.
    pub send: Option<Duration>,
    /// The client is dropped after this long without sending anything.
    pub silence: Option<Duration>,
}

/// One connection's STOMP state. See the module docs.
#[derive(Debug)]
pub struct StompSession {
    config: Arc<StompConfig>,
    conn: ConnId,
    version: Option<Version>,
    heart_beat: HeartBeat,
    client_id: Option<String>,
    principal: Option<Principal>,
    /// The authenticator's answer for the coming CONNECT (set by the driver).
    login: Option<auth::Login>,
    subs: Map<ConsumerId, Subscription>,
    sub_ids: Map<Text, ConsumerId>,
    txs: Map<Text, OpenTx>,
    tx_bytes: usize,
    known_queues: HashSet<Str, foldhash::fast::RandomState>,
    /// The connection has sent a SEND: it is held back while the broker
    /// blocks publishers.
    publisher: bool,
    /// A queue a SEND went into is past its bound (`overflow = block`):
    /// the driver does not read the socket until it is relieved.
    pressure: Option<Pressure>,
}

fn truthy(frame: &Frame, name: &str) -> bool {
    frame
        .header(name)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Percent-encodes `%` and `.` so a name part cannot fake a separator.
fn encode_part(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '.']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '.' => out.push_str("%2E"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The queue name of the durable subscription `name` of client `client_id`.
pub fn durable_queue_name(client_id: &str, name: &str) -> String {
    format!(
        "{DURABLE_PREFIX}{}.{}",
        encode_part(client_id),
        encode_part(name)
    )
}

/// Replaces line breaks, so a text fits a header of any version.
fn one_line(s: &str) -> Cow<'_, str> {
    if s.contains(['\n', '\r']) {
        Cow::Owned(s.replace(['\n', '\r'], " "))
    } else {
        Cow::Borrowed(s)
    }
}

impl StompSession {
    pub fn new(config: Arc<StompConfig>, conn: ConnId) -> Self {
        StompSession {
            config,
            conn,
            version: None,
            heart_beat: HeartBeat::default(),
            client_id: None,
            principal: None,
            login: None,
            subs: Map::default(),
            sub_ids: Map::default(),
            txs: Map::default(),
            tx_bytes: 0,
            known_queues: HashSet::default(),
            publisher: false,
            pressure: None,
        }
    }

    /// The back-pressure the connection is under, if any: a queue a SEND
    /// went into is past its bound with `overflow = block`. Forgotten once
    /// relieved.
    pub fn pressure(&mut self) -> Option<&Pressure> {
        if self.pressure.as_ref().is_some_and(Pressure::is_relieved) {
            self.pressure = None;
        }
        self.pressure.as_ref()
    }

    /// True once the client has sent a SEND.
    pub fn is_publisher(&self) -> bool {
        self.publisher
    }

    /// The negotiated version, once CONNECTED has been sent.
    pub fn version(&self) -> Option<Version> {
        self.version
    }

    pub fn is_connected(&self) -> bool {
        self.version.is_some()
    }

    pub fn heart_beat(&self) -> HeartBeat {
        self.heart_beat
    }

    /// The authenticated principal (after CONNECT).
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// Gives the authenticator's answer for the CONNECT about to be applied.
    pub fn set_login(&mut self, login: auth::Login) {
        self.login = Some(login);
    }

    /// Applies one frame. On a violation the ERROR is already in `out`.
    pub fn on_frame(&mut self, frame: Frame, core: &mut Session, out: &mut Output) -> Step {
        let receipt = match frame.command {
            Command::Connect | Command::Stomp => None,
            _ => frame.header_text("receipt").cloned(),
        };
        let result = if self.version.is_none() {
            match frame.command {
                Command::Connect | Command::Stomp => self.connect(&frame, core, out),
                other => Err(StompError::new(
                    "not connected",
                    format!("expected a CONNECT or STOMP frame first, got {other}"),
                )),
            }
        } else {
            self.connected_frame(frame, core, out, receipt.as_ref())
        };
        match result {
            Ok(step) => step,
            Err(e) => {
                self.write_error(&mut out.buf, &e, receipt.as_ref());
                Step::Close
            }
        }
    }

    fn connected_frame(
        &mut self,
        frame: Frame,
        core: &mut Session,
        out: &mut Output,
        receipt: Option<&Text>,
    ) -> Result<Step, StompError> {
        let wait = match frame.command {
            Command::Send => self.send(&frame, core, receipt.is_some())?,
            Command::Subscribe => {
                self.subscribe(&frame, core)?;
                Vec::new()
            }
            Command::Unsubscribe => {
                self.unsubscribe(&frame, core)?;
                Vec::new()
            }
            Command::Ack | Command::Nack => {
                self.ack(&frame, core)?;
                // A receipt for an acknowledgement comes once it is on
                // disk: the message cannot come back after a crash.
                match receipt {
                    Some(_) => core.synced().into_iter().collect(),
                    None => Vec::new(),
                }
            }
            Command::Begin => {
                self.begin(&frame)?;
                Vec::new()
            }
            Command::Commit => self.commit(&frame, core)?,
            Command::Abort => {
                self.abort(&frame)?;
                Vec::new()
            }
            Command::Disconnect => {
                if let Some(r) = receipt {
                    self.receipt(out, r, Vec::new());
                }
                return Ok(Step::Disconnect);
            }
            Command::Connect | Command::Stomp => {
                return Err(StompError::new(
                    "already connected",
                    "a second CONNECT/STOMP frame on a connected session",
                ));
            }
            Command::Connected | Command::Message | Command::Receipt | Command::Error => {
                return Err(StompError::new(
                    "unknown command",
                    format!(
                        "{} is a server frame; a client may not send it",
                        frame.command
                    ),
                ));
            }
        };
        if let Some(r) = receipt {
            self.receipt(out, r, wait);
        }
        Ok(Step::Continue)
    }

    /// Writes (or queues behind earlier ones) the RECEIPT for `receipt`.
    pub(crate) fn receipt(&self, out: &mut Output, receipt: &Text, wait: Vec<Completion>) {
        if wait.is_empty() && out.pending.is_empty() {
            self.write_receipt(&mut out.buf, receipt);
        } else {
            out.pending.push_back(Pending {
                receipt: receipt.clone(),
                wait,
            });
        }
    }

    /// Writes a RECEIPT frame.
    pub fn write_receipt(&self, buf: &mut BytesMut, receipt: &Text) {
        let mut w = FrameWriter::begin(buf, Command::Receipt, self.version);
        w.header("receipt-id", receipt);
        w.finish(b"");
    }

    /// Writes an ERROR frame.
    pub fn write_error(&self, buf: &mut BytesMut, e: &StompError, receipt: Option<&Text>) {
        // Before negotiation the client's escaping rules are unknown: write
        // as 1.0 (no escapes) with line breaks replaced.
        let version = self.version.or(Some(Version::V1_0));
        let mut w = FrameWriter::begin(buf, Command::Error, version);
        w.header("message", &one_line(&e.message));
        if let Some(r) = receipt {
            w.header("receipt-id", r);
        }
        if let Some((name, value)) = e.extra {
            w.header(name, value);
        }
        w.header("content-type", "text/plain");
        let mut body = e.detail.clone();
        body.push('\n');
        w.header_u64("content-length", body.len() as u64);
        w.finish(body.as_bytes());
    }

    /// Writes the ERROR for undecodable input.
    pub fn write_decode_error(&self, buf: &mut BytesMut, e: &DecodeError) {
        self.write_error(buf, &StompError::from(e), None);
    }

    fn connect(
        &mut self,
        frame: &Frame,
        core: &mut Session,
        out: &mut Output,
    ) -> Result<Step, StompError> {
        let version = match frame.header("accept-version") {
            None => Version::V1_0,
            Some(list) => list
                .split(',')
                .filter_map(Version::parse)
                .max()
                .ok_or_else(|| StompError {
                    message: "unsupported protocol version".into(),
                    detail: format!(
                        "the client accepts versions '{list}'; supported protocol versions are 1.0 1.1 1.2"
                    ),
                    extra: Some(("version", "1.0,1.1,1.2")),
                })?,
        };
        let (cx, cy) = if version >= Version::V1_1 {
            match frame.header("heart-beat") {
                None => (0, 0),
                Some(hb) => parse_heart_beat(hb).ok_or_else(|| {
                    StompError::new(
                        "invalid heart-beat header",
                        format!("heart-beat:{hb} is not two numbers of milliseconds, as 'heart-beat:10000,10000'"),
                    )
                })?,
            }
        } else {
            (0, 0)
        };
        let principal = auth::authenticate(core.broker(), frame.header("login"), self.login.take())
            .map_err(|e| StompError::new("access refused", format!("login refused: {e}")))?;
        core.set_principal(&principal.user);
        let sx = millis(self.config.heart_beat_send.get());
        let sy = millis(self.config.heart_beat_receive.get());
        self.heart_beat = HeartBeat {
            send: (sx > 0 && cy > 0).then(|| Duration::from_millis(sx.max(cy))),
            silence: (cx > 0 && sy > 0).then(|| {
                self.config
                    .silence_allowed(Duration::from_millis(cx.max(sy)))
            }),
        };
        self.client_id = frame.header("client-id").map(str::to_owned);
        if let Some(who) = self.client_id.as_deref().or(principal.login.as_deref()) {
            tracing::Span::current().record("client_id", who);
        }
        self.principal = Some(principal);
        self.version = Some(version);
        let mut w = FrameWriter::begin(&mut out.buf, Command::Connected, Some(version));
        w.header("version", version.as_str());
        w.header("server", SERVER);
        w.header_u64("session", self.conn.get());
        if version >= Version::V1_1 {
            w.header_numbers("heart-beat", sx, b',', sy);
        }
        w.finish(b"");
        Ok(Step::Continue)
    }

    fn require<'f>(frame: &'f Frame, name: &str) -> Result<&'f str, StompError> {
        frame
            .header(name)
            .ok_or_else(|| StompError::missing(frame.command, name))
    }

    /// The open transaction the frame names, with `size` more bytes
    /// accounted to it (`max_transaction_size` bounds them all together).
    fn reserve_tx(&mut self, frame: &Frame, size: usize) -> Result<&mut OpenTx, StompError> {
        let max = self.config.max_transaction_size.as_usize();
        let total = self.tx_bytes.saturating_add(size);
        let name = frame
            .header_text("transaction")
            .ok_or_else(|| StompError::missing(frame.command, "transaction"))?;
        let Some(open) = self.txs.get_mut(name) else {
            return Err(StompError::new(
                "unknown transaction",
                format!(
                    "{} names transaction '{name}', which is not open (BEGIN it first)",
                    frame.command
                ),
            ));
        };
        if total > max {
            return Err(StompError::new(
                "transaction too large",
                format!("open transactions may hold at most {max} bytes (max_transaction_size)"),
            ));
        }
        open.bytes += size;
        self.tx_bytes = total;
        Ok(open)
    }

    /// Makes sure queue `name` exists, creating it (durable) when `create`
    /// and the address policy allow.
    fn ensure_queue(
        &mut self,
        core: &mut Session,
        name: &str,
        create: bool,
    ) -> Result<(), StompError> {
        if self.known_queues.contains(name) {
            return Ok(());
        }
        let passive = |core: &mut Session| {
            core.declare_queue(DeclareQueue {
                name: Some(Str::from(name)),
                options: QueueOptions::default(),
                passive: true,
            })
        };
        match passive(core) {
            Ok(_) => {}
            Err(CoreError::NotFound { .. }) => {
                let allowed = core
                    .broker()
                    .config()
                    .policy_for(name)
                    .and_then(|p| p.auto_create_queues)
                    .unwrap_or(true);
                if !create || !allowed {
                    return Err(StompError::new(
                        format!("no queue '{name}'"),
                        if create {
                            format!(
                                "queue '{name}' does not exist and the address policy does not allow creating it on first use"
                            )
                        } else {
                            format!(
                                "queue '{name}' does not exist (/amq/queue/ destinations name existing queues)"
                            )
                        },
                    ));
                }
                let declared = core.declare_queue(DeclareQueue {
                    name: Some(Str::from(name)),
                    options: QueueOptions {
                        durable: true,
                        ..QueueOptions::default()
                    },
                    passive: false,
                });
                match declared {
                    Ok(_) => {}
                    // Created meanwhile by someone else with other options.
                    Err(CoreError::PreconditionFailed(_)) if passive(core).is_ok() => {}
                    Err(e) => return Err(StompError::core(format!("creating queue '{name}'"), &e)),
                }
            }
            Err(e) => return Err(StompError::core(format!("queue '{name}'"), &e)),
        }
        if self.known_queues.len() >= KNOWN_QUEUES {
            self.known_queues.clear();
        }
        self.known_queues.insert(Str::from(name));
        Ok(())
    }

    /// SEND: returns what its receipt waits for.
    fn send(
        &mut self,
        frame: &Frame,
        core: &mut Session,
        wants_receipt: bool,
    ) -> Result<Vec<Completion>, StompError> {
        self.publisher = true;
        let dest = Self::require(frame, "destination")?;
        let (namespace, address) = match Destination::parse(dest, self.config.default_destination)?
        {
            Destination::Topic(t) => {
                let a = Address::new(t).map_err(|e| {
                    StompError::new(
                        "invalid destination",
                        format!("cannot send to '{dest}': {e} (a SEND names one topic; wildcards are for SUBSCRIBE)"),
                    )
                })?;
                (Namespace::Multicast, a.as_arc().clone())
            }
            Destination::Queue(q) => {
                self.ensure_queue(core, q, true)?;
                (Namespace::Anycast, Str::from(q))
            }
            Destination::AmqQueue(q) => {
                self.ensure_queue(core, q, false)?;
                (Namespace::Anycast, Str::from(q))
            }
            Destination::Exchange { name, key } => {
                if !core.broker().exchange_exists(name) {
                    return Err(StompError::new(
                        format!("no exchange '{name}'"),
                        format!("cannot send to '{dest}': exchange '{name}' does not exist"),
                    ));
                }
                (Namespace::Exchange(Str::from(name)), Str::from(key))
            }
        };
        let msg = mapping::message_from_send(namespace, address, frame)?;
        if frame.header("transaction").is_some() {
            let size = msg.approx_size();
            let open = self.reserve_tx(frame, size)?;
            open.tx.publish(msg);
            return Ok(Vec::new());
        }
        let anycast = match &msg.namespace {
            Namespace::Anycast => Some(msg.address.clone()),
            _ => None,
        };
        let mut published = core
            .publish(msg)
            .map_err(|e| StompError::core(format!("cannot send to '{dest}'"), &e))?;
        Pressure::keep(&mut self.pressure, published.pressure.take());
        if let Some(q) = anycast
            && published.is_unroutable()
        {
            // The queue was deleted since it was checked: check again next time.
            self.known_queues.remove(&q);
        }
        if published.rejected > 0 && wants_receipt {
            return Err(StompError::new(
                "message rejected",
                format!(
                    "the message sent to '{dest}' was refused: a queue it was routed to is full (overflow = reject-publish)"
                ),
            ));
        }
        Ok(published.completion.into_iter().collect())
    }

    fn subscribe(&mut self, frame: &Frame, core: &mut Session) -> Result<(), StompError> {
        let dest = Self::require(frame, "destination")?;
        let id = match frame.header_text("id") {
            Some(id) => id.clone(),
            // STOMP 1.0 makes the id optional; the destination stands in.
            None if self.version == Some(Version::V1_0) => Text::new(dest),
            None => return Err(StompError::missing(Command::Subscribe, "id")),
        };
        if self.sub_ids.contains_key(&id) {
            return Err(StompError::new(
                "duplicate subscription id",
                format!("subscription id '{id}' is already in use on this connection"),
            ));
        }
        let ack = AckMode::parse(frame.header("ack")).ok_or_else(|| {
            StompError::new(
                "invalid ack mode",
                format!(
                    "ack:{} is not one of auto, client, client-individual",
                    frame.header("ack").unwrap_or_default()
                ),
            )
        })?;
        let prefetch = match frame
            .header("prefetch-count")
            .or_else(|| frame.header("activemq.prefetchSize"))
        {
            None => 0,
            Some(p) => p.trim().parse::<u32>().map_err(|_| {
                StompError::new(
                    "invalid prefetch-count",
                    format!("prefetch-count:{p} is not a number of messages"),
                )
            })?,
        };
        if let Some(sel) = frame.header("selector")
            && !sel.trim().is_empty()
        {
            return Err(StompError::new(
                "selectors are not supported",
                format!(
                    "SUBSCRIBE with selector '{sel}': message selectors are not supported; \
                     subscribe to a narrower destination (wildcards: /topic/a.*.c, /topic/a.#)"
                ),
            ));
        }
        let consume = ConsumeOptions {
            manual_ack: ack != AckMode::Auto,
            prefetch,
            exclusive: false,
        };
        let what = || format!("cannot subscribe to '{dest}'");
        let mut durable_queue = None;
        let consumer = match Destination::parse(dest, self.config.default_destination)? {
            Destination::Topic(t) => {
                let filter = AddressFilter::new(t).map_err(|e| {
                    StompError::new("invalid destination", format!("{}: {e}", what()))
                })?;
                let kind = match self.durable_name(frame) {
                    Some((name, generated)) => {
                        if generated {
                            self.rebind_durable(core, &name, filter.as_str());
                        }
                        durable_queue = Some(name.clone());
                        SubscriptionKind::Durable(name)
                    }
                    None => SubscriptionKind::Temporary,
                };
                let durable = matches!(kind, SubscriptionKind::Durable(_));
                core.subscribe(Subscribe {
                    filter,
                    kind,
                    queue: QueueOptions {
                        durable,
                        ..QueueOptions::default()
                    },
                    consume,
                })
                .map_err(|e| StompError::core(what(), &e))?
            }
            Destination::Queue(q) => {
                self.ensure_queue(core, q, true)?;
                core.consume(q, consume)
                    .map_err(|e| StompError::core(what(), &e))?
            }
            Destination::AmqQueue(q) => {
                self.ensure_queue(core, q, false)?;
                core.consume(q, consume)
                    .map_err(|e| StompError::core(what(), &e))?
            }
            Destination::Exchange { name, key } => {
                let declared = core
                    .declare_queue(DeclareQueue {
                        name: None,
                        options: QueueOptions {
                            exclusive: true,
                            auto_delete: true,
                            ..QueueOptions::default()
                        },
                        passive: false,
                    })
                    .map_err(|e| StompError::core(what(), &e))?;
                let attached = core
                    .bind_queue(&declared.name, name, key, &Headers::new())
                    .and_then(|()| core.consume(&declared.name, consume));
                match attached {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = core.delete_queue(&declared.name, false, false);
                        return Err(StompError::core(what(), &e));
                    }
                }
            }
        };
        self.sub_ids.insert(id.clone(), consumer);
        self.subs.insert(
            consumer,
            Subscription {
                id,
                ack,
                durable_queue,
            },
        );
        Ok(())
    }

    /// The queue of a durable subscription, if the frame asks for one, and
    /// whether its name was generated (`$stomp.durable.…`) rather than
    /// given (`x-queue-name`).
    ///
    /// Accepted: ActiveMQ/Artemis `activemq.subscriptionName`,
    /// `durable-subscription-name`, `durable-subscriber-name` (with the
    /// CONNECT or SUBSCRIBE `client-id`), and RabbitMQ's `durable:true` /
    /// `persistent:true` (the subscription `id` names it, or `x-queue-name`
    /// names the queue outright).
    fn durable_name(&self, frame: &Frame) -> Option<(Str, bool)> {
        let named = [
            "durable-subscriber-name",
            "durable-subscription-name",
            "activemq.subscriptionName",
        ]
        .iter()
        .find_map(|h| frame.header(h));
        let flagged = truthy(frame, "durable") || truthy(frame, "persistent");
        if !flagged && named.is_none() {
            return None;
        }
        if let Some(q) = frame.header("x-queue-name")
            && !q.is_empty()
        {
            return Some((Str::from(q), false));
        }
        let name = named.or_else(|| frame.header("id"))?;
        let client = frame
            .header("client-id")
            .or(self.client_id.as_deref())
            .unwrap_or_default();
        Some((Str::from(durable_queue_name(client, name).as_str()), true))
    }

    /// A durable subscription that comes back with another topic follows
    /// it: bindings to other filters are removed (its messages stay).
    fn rebind_durable(&self, core: &mut Session, queue: &str, filter: &str) {
        let bindings = core.broker().queue_bindings(queue);
        for (exchange, key) in bindings {
            if &*exchange == Namespace::MULTICAST_EXCHANGE && &*key != filter {
                let _ = core.unbind_queue(queue, &exchange, &key, &Headers::new());
            }
        }
    }

    fn unsubscribe(&mut self, frame: &Frame, core: &mut Session) -> Result<(), StompError> {
        let id = match frame.header_text("id") {
            Some(id) => id,
            None if self.version == Some(Version::V1_0) => frame
                .header_text("destination")
                .ok_or_else(|| StompError::missing(Command::Unsubscribe, "id"))?,
            None => return Err(StompError::missing(Command::Unsubscribe, "id")),
        };
        let Some(consumer) = self.sub_ids.remove(id) else {
            return Err(StompError::new(
                "unknown subscription",
                format!("UNSUBSCRIBE names subscription id '{id}', which does not exist"),
            ));
        };
        let sub = self.subs.remove(&consumer);
        let _ = core.cancel(consumer);
        let remove_durable = truthy(frame, "durable")
            || truthy(frame, "persistent")
            || [
                "durable-subscriber-name",
                "durable-subscription-name",
                "activemq.subscriptionName",
            ]
            .iter()
            .any(|h| frame.header(h).is_some());
        if remove_durable && let Some(q) = sub.and_then(|s| s.durable_queue) {
            // Another connection may still use it; then it stays.
            let _ = core.delete_queue(&q, true, false);
        }
        Ok(())
    }

    fn ack(&mut self, frame: &Frame, core: &mut Session) -> Result<(), StompError> {
        let nack = frame.command == Command::Nack;
        let (first, second) = if self.version >= Some(Version::V1_2) {
            ("id", "message-id")
        } else {
            ("message-id", "id")
        };
        let id = frame
            .header(first)
            .or_else(|| frame.header(second))
            .ok_or_else(|| StompError::missing(frame.command, first))?;
        let unknown = || {
            StompError::new(
                "unknown message id",
                format!(
                    "{} names '{id}', which is not a message delivered on this connection awaiting acknowledgement",
                    frame.command
                ),
            )
        };
        let (c, t) = mapping::parse_ack_id(id).ok_or_else(unknown)?;
        let (consumer, tag) = (ConsumerId(c), DeliveryTag(t));
        let sub = self.subs.get(&consumer).ok_or_else(unknown)?;
        if let Some(s) = frame.header("subscription")
            && sub.id != s
        {
            return Err(StompError::new(
                "subscription mismatch",
                format!(
                    "{} names message '{id}' of subscription '{}', not '{s}'",
                    frame.command, sub.id
                ),
            ));
        }
        let multiple = match sub.ack {
            AckMode::Auto => {
                return Err(StompError::new(
                    "nothing to acknowledge",
                    format!(
                        "{} for '{id}': subscription '{}' uses ack:auto",
                        frame.command, sub.id
                    ),
                ));
            }
            AckMode::Client => true,
            AckMode::ClientIndividual => false,
        };
        // RabbitMQ's `requeue` header: false dead-letters (or drops) at once.
        let requeue = !frame
            .header("requeue")
            .is_some_and(|v| v.eq_ignore_ascii_case("false"));
        if frame.header("transaction").is_some() {
            let open = self.reserve_tx(frame, TX_OP_SIZE)?;
            if nack {
                open.tx.nack(consumer, tag, multiple, requeue);
            } else {
                open.tx.ack(consumer, tag, multiple);
            }
            return Ok(());
        }
        let r = if nack {
            core.nack(consumer, tag, multiple, requeue)
        } else {
            core.ack(consumer, tag, multiple)
        };
        match r {
            Ok(_) => Ok(()),
            Err(CoreError::UnknownDeliveryTag(_) | CoreError::UnknownConsumer) => Err(unknown()),
            Err(e) => Err(StompError::core(frame.command, &e)),
        }
    }

    fn begin(&mut self, frame: &Frame) -> Result<(), StompError> {
        let name = frame
            .header_text("transaction")
            .ok_or_else(|| StompError::missing(Command::Begin, "transaction"))?;
        if self.txs.contains_key(name) {
            return Err(StompError::new(
                "transaction already open",
                format!("transaction '{name}' is already open"),
            ));
        }
        if self.txs.len() >= self.config.max_transactions {
            return Err(StompError::new(
                "too many transactions",
                format!(
                    "a connection may have at most {} open transactions (max_transactions)",
                    self.config.max_transactions
                ),
            ));
        }
        self.txs.insert(
            name.clone(),
            OpenTx {
                tx: Transaction::new(),
                bytes: 0,
            },
        );
        Ok(())
    }

    fn take_tx(&mut self, frame: &Frame) -> Result<OpenTx, StompError> {
        let name = frame
            .header_text("transaction")
            .ok_or_else(|| StompError::missing(frame.command, "transaction"))?;
        let open = self.txs.remove(name).ok_or_else(|| {
            StompError::new(
                "unknown transaction",
                format!(
                    "{} names transaction '{name}', which is not open",
                    frame.command
                ),
            )
        })?;
        self.tx_bytes = self.tx_bytes.saturating_sub(open.bytes);
        Ok(open)
    }

    fn commit(&mut self, frame: &Frame, core: &mut Session) -> Result<Vec<Completion>, StompError> {
        let open = self.take_tx(frame)?;
        let mut published = core.commit(open.tx).map_err(|e| match e {
            CoreError::UnknownDeliveryTag(_) => StompError::new(
                "unknown message id",
                "the transaction acknowledges a message that is not awaiting acknowledgement; nothing was applied",
            ),
            e => StompError::core("COMMIT failed; nothing was applied", &e),
        })?;
        for p in &mut published {
            Pressure::keep(&mut self.pressure, p.pressure.take());
        }
        Ok(published.into_iter().filter_map(|p| p.completion).collect())
    }

    fn abort(&mut self, frame: &Frame) -> Result<(), StompError> {
        self.take_tx(frame).map(drop)
    }

    /// Writes the MESSAGE frame of a delivery (dropped if its subscription
    /// is gone: UNSUBSCRIBE raced with it, and the core has requeued it).
    pub fn on_delivery(&self, d: &Delivery, buf: &mut BytesMut) {
        let (Some(version), Some(sub)) = (self.version, self.subs.get(&d.consumer)) else {
            return;
        };
        mapping::write_message(buf, version, &sub.id, sub.ack != AckMode::Auto, d);
    }

    /// The ERROR for a subscription the broker cancelled (its queue was
    /// deleted); `None` if it is not one of ours any more.
    pub fn cancelled(&mut self, consumer: ConsumerId) -> Option<StompError> {
        let sub = self.subs.remove(&consumer)?;
        self.sub_ids.remove(&sub.id);
        Some(StompError::new(
            "subscription cancelled",
            format!(
                "subscription '{}' was cancelled by the broker: its queue was deleted",
                sub.id
            ),
        ))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn parse_heart_beat(v: &str) -> Option<(u64, u64)> {
    let (a, b) = v.split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}
