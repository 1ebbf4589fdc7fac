//! The AMQP 0-9-1 connection state machine: frames in, frames out (into
//! [`Conn::out`]), calls into the core [`Session`]. No sockets, no timers:
//! the driver feeds it frames, deliveries, journal completions and events,
//! and writes what it produced.
//!
//! ```text
//!  AwaitHeader ─header─► AwaitStartOk ─start-ok─► AwaitTuneOk ─tune-ok─► AwaitOpen ─open─► Open
//!       │ (wrong header: answer AMQP 0-0-9-1, close)                                        │
//!       └──────────────── any hard error: connection.close(code) ──► Closing ◄───────────────┘
//!                                           close-ok / close / timeout ──► Closed
//! ```
//!
//! Channels: `open` → Open; a soft error sends `channel.close(code)` and the
//! channel ignores everything but `close`/`close-ok` until the client
//! confirms. Content (`basic.publish` + header + bodies) is assembled per
//! channel; a frame out of sequence is 505 UNEXPECTED_FRAME.
//!
//! One core [`Session`] serves the whole connection (exclusive queues belong
//! to the connection). Deliveries carry the core consumer id, mapped here to
//! (channel, consumer tag); each channel numbers its deliveries 1, 2, 3, …
//! and keeps the unacked ones in tag order, so `ack(multiple)` is a prefix.

use crate::auth;
use crate::codec::*;
use crate::mapping;
use bytes::{Bytes, BytesMut};
use hashbrown::HashMap;
use smallvec::SmallVec;
use std::collections::{BTreeSet, VecDeque};
use switchyard_core::{
    Completion, ConsumeOptions, CoreError, DeclareQueue, Deliveries, Delivery, ExchangeKind,
    ExchangeOptions, Pressure, Published, Session, SessionEvent, Transaction,
};
use switchyard_model::{
    Address, ConsumerId, DeliveryTag, Headers, Message, Namespace, Str, Value, now_millis,
};

/// Connection parameters from the listener config and the broker limits.
#[derive(Debug, Clone)]
pub struct Params {
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: u16,
    pub max_message_size: usize,
    pub product_version: &'static str,
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    AwaitHeader,
    AwaitStartOk,
    AwaitTuneOk,
    AwaitOpen,
    Open,
    /// We sent `connection.close`; waiting for `close-ok`.
    Closing,
    /// Done: the driver flushes and drops the socket.
    Closed,
}

/// A protocol error: a channel error closes the channel, a connection
/// error the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmqpError {
    Channel {
        code: u16,
        text: String,
        class_id: u16,
        method_id: u16,
    },
    Connection {
        code: u16,
        text: String,
        class_id: u16,
        method_id: u16,
    },
}

impl AmqpError {
    fn conn(code: u16, text: impl Into<String>) -> Self {
        AmqpError::Connection {
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
        }
    }

    fn conn_at(code: u16, text: impl Into<String>, m: &Method) -> Self {
        AmqpError::Connection {
            code,
            text: text.into(),
            class_id: m.class_id(),
            method_id: m.method_id(),
        }
    }

    fn chan(code: u16, text: impl Into<String>, ids: (u16, u16)) -> Self {
        AmqpError::Channel {
            code,
            text: text.into(),
            class_id: ids.0,
            method_id: ids.1,
        }
    }

    /// A core error, as a channel or connection error by its reply code.
    fn core(e: &CoreError, ids: (u16, u16)) -> Self {
        let code = e.amqp_reply_code();
        let text = match e {
            CoreError::NotFound { .. } => format!("{e} in vhost '/'"),
            _ => e.to_string(),
        };
        if is_hard_error(code) {
            AmqpError::Connection {
                code,
                text,
                class_id: ids.0,
                method_id: ids.1,
            }
        } else {
            AmqpError::chan(code, text, ids)
        }
    }

    /// The reply code.
    pub fn code(&self) -> u16 {
        match self {
            AmqpError::Channel { code, .. } | AmqpError::Connection { code, .. } => *code,
        }
    }
}

/// `NOT_FOUND - text`, as RabbitMQ words reply texts.
fn reply_text(code: u16, text: &str) -> ShortStr {
    let name = reply_name(code).unwrap_or("ERROR");
    ShortStr::copy(&format!("{name} - {text}"))
}

fn ids(m: &Method) -> (u16, u16) {
    (m.class_id(), m.method_id())
}

/// What the client said it understands (`client-properties.capabilities`).
#[derive(Debug, Clone, Copy, Default)]
struct Caps {
    consumer_cancel_notify: bool,
    connection_blocked: bool,
}

/// A consumer as the connection knows it.
#[derive(Debug)]
struct ConsumerRef {
    channel: u16,
    tag: ShortStr,
    no_ack: bool,
    /// Paused in the core (flow, channel window, or draining).
    paused: bool,
    /// Cancelled by the client while holding unacked deliveries: paused,
    /// cancelled in the core once they are all settled.
    draining: bool,
}

#[derive(Debug, Clone, Copy)]
struct Unacked {
    tag: u64,
    consumer: ConsumerId,
    core: DeliveryTag,
}

/// A publish waiting for its content.
#[derive(Debug)]
struct PendingPublish {
    exchange: ShortStr,
    routing_key: ShortStr,
    mandatory: bool,
}

/// Content being assembled (properties are kept inline: one per channel,
/// no allocation per publish).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Default)]
enum Content {
    #[default]
    Idle,
    Header(PendingPublish),
    Body {
        publish: PendingPublish,
        properties: BasicProperties,
        size: usize,
        parts: Option<Bytes>,
        buf: BytesMut,
    },
}

#[derive(Debug, Default)]
struct Confirms {
    next_seq: u64,
    /// Waiting for the journal.
    pending: BTreeSet<u64>,
    /// Settled this turn, to ack at the end of it.
    ready: Vec<u64>,
}

#[derive(Debug)]
enum TxAck {
    Ack {
        tag: u64,
        multiple: bool,
    },
    Nack {
        tag: u64,
        multiple: bool,
        requeue: bool,
    },
}

#[derive(Debug, Default)]
struct Tx {
    tx: Transaction,
    /// Per publish: the return to send if it turns out unroutable.
    returns: Vec<Option<(PendingPublish, BasicProperties, Bytes)>>,
    acks: Vec<TxAck>,
}

#[derive(Debug)]
struct Channel {
    epoch: u64,
    closing: bool,
    next_tag: u64,
    unacked: VecDeque<Unacked>,
    consumers: SmallVec<[ConsumerId; 2]>,
    /// Per-consumer prefetch for consumers started from now on (qos
    /// global=false); 0 = unlimited.
    prefetch: u16,
    /// Channel-wide limit on unacked deliveries (qos global=true).
    global_prefetch: u16,
    /// Deliveries not written yet: flow is off or the channel window is full.
    held: VecDeque<Delivery>,
    flow: bool,
    content: Content,
    confirms: Option<Confirms>,
    tx: Option<Tx>,
    last_queue: Option<Str>,
    ns_cache: Option<(ShortStr, Namespace)>,
    rk_cache: Option<(ShortStr, Str)>,
    /// The last `reply_to` queue bound to its multicast address (see
    /// [`Conn::bind_reply_queue`]): RPC clients repeat one reply queue.
    reply_bound: Option<Str>,
}

impl Channel {
    fn new(epoch: u64) -> Channel {
        Channel {
            epoch,
            closing: false,
            next_tag: 1,
            unacked: VecDeque::new(),
            consumers: SmallVec::new(),
            prefetch: 0,
            global_prefetch: 0,
            held: VecDeque::new(),
            flow: true,
            content: Content::Idle,
            confirms: None,
            tx: None,
            last_queue: None,
            ns_cache: None,
            rk_cache: None,
            reply_bound: None,
        }
    }

    fn window_full(&self) -> bool {
        self.global_prefetch != 0 && self.unacked.len() >= usize::from(self.global_prefetch)
    }

    /// Removes the unacked entries an ack names: one tag, or with
    /// `multiple` every tag up to it (`0` = all). RabbitMQ's rule: an
    /// unknown tag is PRECONDITION_FAILED.
    fn take(&mut self, tag: u64, multiple: bool) -> Result<SmallVec<[Unacked; 4]>, u64> {
        if multiple {
            let n = if tag == 0 {
                self.unacked.len()
            } else {
                self.unacked.partition_point(|u| u.tag <= tag)
            };
            if n == 0 && tag != 0 {
                return Err(tag);
            }
            Ok(self.unacked.drain(..n).collect())
        } else {
            let i = self
                .unacked
                .binary_search_by_key(&tag, |u| u.tag)
                .map_err(|_| tag)?;
            Ok(self.unacked.remove(i).into_iter().collect())
        }
    }
}

/// Groups settled deliveries into core calls: per consumer, the highest
/// core tag with `multiple` (a channel's deliveries of one consumer are in
/// core-tag order), or the single tag.
fn group(taken: &[Unacked], multiple: bool) -> SmallVec<[(ConsumerId, DeliveryTag, bool); 2]> {
    let mut out: SmallVec<[(ConsumerId, DeliveryTag, bool); 2]> = SmallVec::new();
    if !multiple {
        out.extend(taken.iter().map(|u| (u.consumer, u.core, false)));
        return out;
    }
    for u in taken {
        match out.iter_mut().find(|(c, _, _)| *c == u.consumer) {
            Some(e) => e.1 = DeliveryTag(e.1.0.max(u.core.0)),
            None => out.push((u.consumer, u.core, true)),
        }
    }
    out
}

/// A journal completion the driver awaits for a publisher confirm.
#[derive(Debug)]
pub struct PendingConfirm {
    pub channel: u16,
    pub epoch: u64,
    pub seq: u64,
    pub completion: Completion,
}

/// One AMQP connection's protocol state. See the module docs.
#[derive(Debug)]
pub struct Conn {
    session: Session,
    /// The session's one delivery stream (the driver reads it too).
    pub deliveries: Deliveries,
    params: Params,
    pub phase: Phase,
    /// Negotiated largest frame (starts at the spec's minimum).
    pub frame_max: u32,
    /// Negotiated heartbeat in seconds (0 = off).
    pub heartbeat: u16,
    channel_max: u16,
    caps: Caps,
    /// Boxed: a channel is a few hundred bytes and the table allocates
    /// several slots at once.
    channels: HashMap<u16, Box<Channel>>,
    consumers: HashMap<ConsumerId, ConsumerRef>,
    /// Bytes to write.
    pub out: BytesMut,
    confirms_waiting: Vec<PendingConfirm>,
    confirm_dirty: SmallVec<[u16; 4]>,
    next_epoch: u64,
    /// The authenticated user (for logs).
    pub user: Option<String>,
    /// The authenticator's answer for `connection.start-ok` (from the driver).
    login: Option<Result<switchyard_core::Principal, switchyard_core::AuthError>>,
    blocked: bool,
    /// The connection has published: it is held back while the broker
    /// blocks publishers.
    pub publisher: bool,
    /// A queue this connection published to is past its bound
    /// (`overflow = block`): the driver does not read the socket until it
    /// is relieved. No `connection.blocked` is sent for it (RabbitMQ keeps
    /// that for its memory/disk alarms; its per-queue flow is silent).
    pub pressure: Option<Pressure>,
}

impl Conn {
    pub fn new(session: Session, params: Params) -> Conn {
        let deliveries = session.deliveries();
        Conn {
            session,
            deliveries,
            channel_max: params.channel_max,
            params,
            phase: Phase::AwaitHeader,
            frame_max: FRAME_MIN_SIZE,
            heartbeat: 0,
            caps: Caps::default(),
            channels: HashMap::new(),
            consumers: HashMap::new(),
            out: BytesMut::new(),
            confirms_waiting: Vec::new(),
            confirm_dirty: SmallVec::new(),
            next_epoch: 0,
            user: None,
            login: None,
            blocked: false,
            publisher: false,
            pressure: None,
        }
    }

    /// The core session (deliveries, events).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Journal completions to await (taken by the driver after each turn).
    pub fn take_pending_confirms(&mut self) -> Vec<PendingConfirm> {
        std::mem::take(&mut self.confirms_waiting)
    }

    fn send(&mut self, channel: u16, m: impl Into<Method>) {
        encode_method(&mut self.out, channel, &m.into());
    }

    /// Answers a wrong protocol header (spec 4.2.2): our header, then close.
    pub fn on_bad_header(&mut self) {
        self.out.extend_from_slice(&PROTOCOL_HEADER);
        self.phase = Phase::Closed;
    }

    /// A decoding error: the connection is closed with its reply code.
    pub fn on_decode_error(&mut self, e: &DecodeError) {
        if let DecodeError::BadProtocolHeader(_) = e {
            self.on_bad_header();
            return;
        }
        let text = match e {
            DecodeError::FrameTooLarge { size, max } => format!(
                "frame size {size} exceeds the negotiated maximum of {} bytes of payload",
                max.saturating_sub(FRAME_OVERHEAD)
            ),
            DecodeError::UnknownMethod {
                class_id,
                method_id,
            } => format!("unknown method: class {class_id}, method {method_id}"),
            other => other.to_string(),
        };
        let (class_id, method_id) = match e {
            DecodeError::UnknownMethod {
                class_id,
                method_id,
            } => (*class_id, *method_id),
            _ => (0, 0),
        };
        let code = e.reply_code();
        self.close_connection(code, &text, class_id, method_id);
    }

    /// Sends `connection.close` and waits for `close-ok`.
    pub fn close_connection(&mut self, code: u16, text: &str, class_id: u16, method_id: u16) {
        if matches!(self.phase, Phase::Closing | Phase::Closed) {
            return;
        }
        tracing::debug!(code, text, "closing connection");
        self.send(
            0,
            ConnectionClose {
                reply_code: code,
                reply_text: reply_text(code, text),
                class_id,
                method_id,
            },
        );
        self.phase = if matches!(self.phase, Phase::AwaitHeader) {
            Phase::Closed
        } else {
            Phase::Closing
        };
    }

    /// Server shutdown: 320 CONNECTION_FORCED.
    pub fn shutdown(&mut self) {
        self.close_connection(
            CONNECTION_FORCED,
            "broker forced connection closure with reason 'shutdown'",
            0,
            0,
        );
    }

    /// Tells the client the broker applies back-pressure (or no longer
    /// does), when it advertised the `connection.blocked` capability.
    pub fn set_blocked(&mut self, blocked: bool, reason: &str) {
        if self.blocked == blocked || self.phase != Phase::Open || !self.caps.connection_blocked {
            return;
        }
        self.blocked = blocked;
        if blocked {
            self.send(
                0,
                ConnectionBlocked {
                    reason: ShortStr::copy(reason),
                },
            );
        } else {
            self.send(0, ConnectionUnblocked {});
        }
    }

    fn error(&mut self, channel: u16, e: AmqpError) {
        match e {
            AmqpError::Connection {
                code,
                text,
                class_id,
                method_id,
            } => self.close_connection(code, &text, class_id, method_id),
            AmqpError::Channel {
                code,
                text,
                class_id,
                method_id,
            } => {
                tracing::debug!(channel, code, %text, "closing channel");
                self.release_channel(channel);
                if let Some(ch) = self.channels.get_mut(&channel) {
                    ch.closing = true;
                    ch.content = Content::Idle;
                }
                self.send(
                    channel,
                    ChannelClose {
                        reply_code: code,
                        reply_text: reply_text(code, &text),
                        class_id,
                        method_id,
                    },
                );
            }
        }
    }

    /// One frame from the client.
    /// The credentials of a `connection.start-ok` awaiting the
    /// authenticator (the driver authenticates, then calls [`Self::set_login`]
    /// and [`Self::on_frame`]); `None` for any other frame.
    pub fn login_credentials(
        &self,
        frame: &Frame,
        peer: Option<std::net::IpAddr>,
        tls_identity: Option<&str>,
    ) -> Option<switchyard_core::Credentials> {
        if self.phase != Phase::AwaitStartOk {
            return None;
        }
        let Frame::Method {
            channel: 0,
            method: Method::ConnectionStartOk(m),
        } = frame
        else {
            return None;
        };
        let (user, pass) = auth::parse(m.mechanism.to_str().unwrap_or(""), &m.response).ok()?;
        Some(switchyard_core::Credentials {
            protocol: "amqp",
            user: Some(user),
            password: Some(pass.into_bytes()),
            token: None,
            tls_identity: tls_identity.map(str::to_owned),
            peer,
        })
    }

    /// The authenticator's answer for the coming `connection.start-ok`.
    pub fn set_login(
        &mut self,
        login: Result<switchyard_core::Principal, switchyard_core::AuthError>,
    ) {
        self.login = Some(login);
    }

    pub fn on_frame(&mut self, frame: Frame) {
        let channel = frame.channel();
        if let Err(e) = self.dispatch(frame) {
            self.error(channel, e);
        }
    }

    fn dispatch(&mut self, frame: Frame) -> Result<(), AmqpError> {
        match self.phase {
            Phase::Closed => Ok(()),
            Phase::Closing => {
                if let Frame::Method { method, .. } = frame {
                    match method {
                        Method::ConnectionCloseOk(_) => self.phase = Phase::Closed,
                        Method::ConnectionClose(_) => {
                            self.send(0, ConnectionCloseOk {});
                            self.phase = Phase::Closed;
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
            Phase::AwaitHeader => match frame {
                Frame::ProtocolHeader => {
                    self.send_start();
                    self.phase = Phase::AwaitStartOk;
                    Ok(())
                }
                _ => {
                    self.on_bad_header();
                    Ok(())
                }
            },
            Phase::AwaitStartOk | Phase::AwaitTuneOk | Phase::AwaitOpen => self.handshake(frame),
            Phase::Open => self.open_frame(frame),
        }
    }

    fn send_start(&mut self) {
        let mut caps = Headers::new();
        for c in [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "authentication_failure_close",
            "per_consumer_qos",
        ] {
            caps.push(c, Value::Bool(true));
        }
        let mut props = Headers::new();
        props.push("capabilities", Value::Map(std::sync::Arc::new(caps)));
        props.push("product", "Switchyard");
        props.push("version", self.params.product_version);
        props.push("platform", "Rust");
        props.push("cluster_name", "switchyard");
        props.push("information", "Switchyard multi-protocol broker");
        self.send(
            0,
            ConnectionStart {
                version_major: 0,
                version_minor: 9,
                server_properties: props,
                mechanisms: Bytes::from_static(auth::MECHANISMS.as_bytes()),
                locales: Bytes::from_static(b"en_US"),
            },
        );
    }

    fn handshake(&mut self, frame: Frame) -> Result<(), AmqpError> {
        let Frame::Method { channel: 0, method } = frame else {
            if let Frame::Heartbeat { channel: 0 } = frame {
                return Ok(());
            }
            return Err(AmqpError::conn(
                COMMAND_INVALID,
                "expected a connection method on channel 0 during the handshake",
            ));
        };
        match (self.phase, method) {
            (Phase::AwaitStartOk, Method::ConnectionStartOk(m)) => {
                if let Some(Value::Map(c)) = m.client_properties.get("capabilities") {
                    let on = |k: &str| matches!(c.get(k), Some(Value::Bool(true)));
                    self.caps = Caps {
                        consumer_cancel_notify: on("consumer_cancel_notify"),
                        connection_blocked: on("connection.blocked"),
                    };
                }
                let mechanism = m.mechanism.to_str().unwrap_or("");
                match auth::authenticate(mechanism, &m.response) {
                    Ok(user) => {
                        let answer = self.login.take().unwrap_or_else(|| {
                            if self.session.broker().anonymous_allowed() {
                                Ok(switchyard_core::Principal::anonymous())
                            } else {
                                Err(switchyard_core::AuthError::Required)
                            }
                        });
                        match answer {
                            Ok(p) => self.session.set_principal(&p),
                            Err(_) => {
                                return Err(AmqpError::conn(
                                    ACCESS_REFUSED,
                                    format!(
                                        "ACCESS_REFUSED - Login was refused using authentication mechanism {mechanism}"
                                    ),
                                ));
                            }
                        }
                        self.user = Some(user);
                    }
                    Err(auth::AuthError::UnknownMechanism(x)) => {
                        return Err(AmqpError::conn(
                            COMMAND_INVALID,
                            format!("unknown authentication mechanism '{x}'"),
                        ));
                    }
                    Err(auth::AuthError::Refused(t)) => {
                        return Err(AmqpError::conn(ACCESS_REFUSED, t));
                    }
                }
                self.send(
                    0,
                    ConnectionTune {
                        channel_max: self.params.channel_max,
                        frame_max: self.params.frame_max,
                        heartbeat: self.params.heartbeat,
                    },
                );
                self.phase = Phase::AwaitTuneOk;
                Ok(())
            }
            (Phase::AwaitStartOk, Method::ConnectionSecureOk(_)) => Ok(()),
            (Phase::AwaitTuneOk, Method::ConnectionTuneOk(m)) => {
                let fm = if m.frame_max == 0 {
                    self.params.frame_max
                } else {
                    m.frame_max
                };
                if fm < FRAME_MIN_SIZE || fm > self.params.frame_max {
                    return Err(AmqpError::conn(
                        NOT_ALLOWED,
                        format!(
                            "frame_max={fm} outside the range {FRAME_MIN_SIZE}..={}",
                            self.params.frame_max
                        ),
                    ));
                }
                self.frame_max = fm;
                self.channel_max = match m.channel_max {
                    0 => self.params.channel_max,
                    n => n.min(self.params.channel_max),
                };
                self.heartbeat = m.heartbeat;
                self.phase = Phase::AwaitOpen;
                Ok(())
            }
            (Phase::AwaitOpen, Method::ConnectionOpen(m)) => {
                let vhost = m.virtual_host.to_str().unwrap_or("");
                if !matches!(vhost, "/" | "") {
                    return Err(AmqpError::conn(
                        NOT_ALLOWED,
                        format!("vhost '{vhost}' not found (only '/' is served)"),
                    ));
                }
                self.send(
                    0,
                    ConnectionOpenOk {
                        known_hosts: ShortStr::default(),
                    },
                );
                self.phase = Phase::Open;
                Ok(())
            }
            (_, Method::ConnectionClose(_)) => {
                self.send(0, ConnectionCloseOk {});
                self.phase = Phase::Closed;
                Ok(())
            }
            (_, m) => Err(AmqpError::conn_at(
                COMMAND_INVALID,
                format!("unexpected method {} during the handshake", m.name()),
                &m,
            )),
        }
    }

    fn open_frame(&mut self, frame: Frame) -> Result<(), AmqpError> {
        match frame {
            Frame::ProtocolHeader => Err(AmqpError::conn(
                FRAME_ERROR,
                "protocol header inside the connection",
            )),
            Frame::Heartbeat { channel: 0 } => Ok(()),
            Frame::Heartbeat { .. } => Err(AmqpError::conn(
                UNEXPECTED_FRAME,
                "heartbeat frame on a channel other than 0",
            )),
            Frame::Method { channel: 0, method } => self.connection_method(method),
            Frame::Method { channel, method } => {
                self.channel_frame(channel, Frame::Method { channel, method })
            }
            Frame::Header { channel: 0, .. } | Frame::Body { channel: 0, .. } => Err(
                AmqpError::conn(UNEXPECTED_FRAME, "content frame on channel 0"),
            ),
            other => {
                let channel = other.channel();
                self.channel_frame(channel, other)
            }
        }
    }

    fn connection_method(&mut self, method: Method) -> Result<(), AmqpError> {
        match method {
            Method::ConnectionClose(_) => {
                self.send(0, ConnectionCloseOk {});
                self.phase = Phase::Closed;
                Ok(())
            }
            Method::ConnectionCloseOk(_) => Ok(()),
            Method::ConnectionUpdateSecret(_) => {
                self.send(0, ConnectionUpdateSecretOk {});
                Ok(())
            }
            Method::ConnectionBlocked(_) | Method::ConnectionUnblocked(_) => Ok(()),
            m if m.class_id() == 10 => Err(AmqpError::conn_at(
                COMMAND_INVALID,
                format!("unexpected method {} on an open connection", m.name()),
                &m,
            )),
            m => Err(AmqpError::conn_at(
                CHANNEL_ERROR,
                "unexpected method in connection state running",
                &m,
            )),
        }
    }

    fn channel_frame(&mut self, channel: u16, frame: Frame) -> Result<(), AmqpError> {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return match frame {
                Frame::Method {
                    method: Method::ChannelOpen(_),
                    ..
                } => {
                    if channel > self.channel_max {
                        return Err(AmqpError::conn_at(
                            NOT_ALLOWED,
                            format!(
                                "channel number {channel} exceeds the negotiated channel_max {}",
                                self.channel_max
                            ),
                            &Method::ChannelOpen(ChannelOpen::default()),
                        ));
                    }
                    self.next_epoch += 1;
                    self.channels
                        .insert(channel, Box::new(Channel::new(self.next_epoch)));
                    self.send(
                        channel,
                        ChannelOpenOk {
                            channel_id: Bytes::new(),
                        },
                    );
                    Ok(())
                }
                Frame::Method { method, .. } => Err(AmqpError::conn_at(
                    CHANNEL_ERROR,
                    "expected 'channel.open'",
                    &method,
                )),
                _ => Err(AmqpError::conn(CHANNEL_ERROR, "expected 'channel.open'")),
            };
        };
        if ch.closing {
            if let Frame::Method { method, .. } = frame {
                match method {
                    Method::ChannelCloseOk(_) => {
                        self.channels.remove(&channel);
                    }
                    Method::ChannelClose(_) => {
                        self.channels.remove(&channel);
                        self.send(channel, ChannelCloseOk {});
                    }
                    _ => {}
                }
            }
            return Ok(());
        }
        match frame {
            Frame::Method { method, .. } => {
                if !matches!(ch.content, Content::Idle) {
                    let what = if matches!(ch.content, Content::Header(_)) {
                        "expected content header for class 60, got non content header frame instead"
                    } else {
                        "expected content body, got non content body frame instead"
                    };
                    return Err(AmqpError::conn_at(UNEXPECTED_FRAME, what, &method));
                }
                self.channel_method(channel, method)
            }
            Frame::Header { header, .. } => self.on_header(channel, header),
            Frame::Body { payload, .. } => self.on_body(channel, payload),
            Frame::ProtocolHeader | Frame::Heartbeat { .. } => Ok(()),
        }
    }

    fn chan(&mut self, channel: u16) -> Result<&mut Channel, AmqpError> {
        self.channels
            .get_mut(&channel)
            .map(|c| &mut **c)
            .ok_or_else(|| AmqpError::conn(CHANNEL_ERROR, "expected 'channel.open'"))
    }

    /// `queue` or, when empty, the channel's last declared queue (spec:
    /// queue.bind, basic.consume, basic.get, queue.purge, queue.delete).
    fn queue_name(&mut self, channel: u16, q: &ShortStr, at: (u16, u16)) -> Result<Str, AmqpError> {
        if q.is_empty() {
            return self
                .chan(channel)?
                .last_queue
                .clone()
                .ok_or_else(|| AmqpError::chan(NOT_FOUND, "no previously declared queue", at));
        }
        name(q, at)
    }

    fn channel_method(&mut self, channel: u16, method: Method) -> Result<(), AmqpError> {
        let at = ids(&method);
        let core = |e: CoreError| AmqpError::core(&e, at);
        match method {
            Method::ChannelOpen(_) => Err(AmqpError::conn_at(
                CHANNEL_ERROR,
                "second 'channel.open' seen",
                &method,
            )),
            Method::ChannelClose(_) => {
                self.release_channel(channel);
                self.channels.remove(&channel);
                self.send(channel, ChannelCloseOk {});
                Ok(())
            }
            Method::ChannelCloseOk(_) | Method::ChannelFlowOk(_) => Ok(()),
            Method::ChannelFlow(m) => {
                self.chan(channel)?.flow = m.active;
                self.sync_pause(channel);
                self.release_held(channel);
                self.send(channel, ChannelFlowOk { active: m.active });
                Ok(())
            }
            Method::AccessRequest(_) => {
                self.send(channel, AccessRequestOk { ticket: 1 });
                Ok(())
            }
            Method::ExchangeDeclare(m) => {
                let ex = name(&m.exchange, at)?;
                let kind = match m.kind.to_str().ok().and_then(ExchangeKind::parse) {
                    Some(k) => k,
                    None if m.passive => ExchangeKind::Direct,
                    None => {
                        return Err(AmqpError::conn_at(
                            COMMAND_INVALID,
                            format!("unknown exchange type '{:?}'", m.kind).replace('"', ""),
                            &Method::ExchangeDeclare(m),
                        ));
                    }
                };
                self.session
                    .broker()
                    .declare_exchange(
                        &ex,
                        kind,
                        ExchangeOptions {
                            durable: m.durable,
                            auto_delete: m.auto_delete,
                            internal: m.internal,
                            arguments: m.arguments,
                        },
                        m.passive,
                    )
                    .map_err(core)?;
                if !m.nowait {
                    self.send(channel, ExchangeDeclareOk {});
                }
                Ok(())
            }
            Method::ExchangeDelete(m) => {
                let ex = name(&m.exchange, at)?;
                match self.session.broker().delete_exchange(&ex, m.if_unused) {
                    Ok(()) | Err(CoreError::NotFound { .. }) => {}
                    Err(e) => return Err(core(e)),
                }
                if !m.nowait {
                    self.send(channel, ExchangeDeleteOk {});
                }
                Ok(())
            }
            Method::ExchangeBind(m) => {
                let (d, s, k) = (
                    name(&m.destination, at)?,
                    name(&m.source, at)?,
                    name(&m.routing_key, at)?,
                );
                self.session
                    .broker()
                    .bind_exchange(&d, &s, &k, &m.arguments)
                    .map_err(core)?;
                if !m.nowait {
                    self.send(channel, ExchangeBindOk {});
                }
                Ok(())
            }
            Method::ExchangeUnbind(m) => {
                let (d, s, k) = (
                    name(&m.destination, at)?,
                    name(&m.source, at)?,
                    name(&m.routing_key, at)?,
                );
                match self
                    .session
                    .broker()
                    .unbind_exchange(&d, &s, &k, &m.arguments)
                {
                    Ok(()) | Err(CoreError::NotFound { .. }) => {}
                    Err(e) => return Err(core(e)),
                }
                if !m.nowait {
                    self.send(channel, ExchangeUnbindOk {});
                }
                Ok(())
            }
            Method::QueueDeclare(m) => {
                let q = name(&m.queue, at)?;
                let options =
                    mapping::queue_options(&q, m.durable, m.exclusive, m.auto_delete, m.arguments)
                        .map_err(|t| AmqpError::chan(PRECONDITION_FAILED, t, at))?;
                let req = DeclareQueue {
                    name: (!q.is_empty()).then_some(q),
                    options,
                    passive: m.passive,
                };
                let d = self.session.declare_queue(req).map_err(core)?;
                self.chan(channel)?.last_queue = Some(d.name.clone());
                if !m.nowait {
                    self.send(
                        channel,
                        QueueDeclareOk {
                            queue: ShortStr::copy(&d.name),
                            message_count: u32::try_from(d.messages).unwrap_or(u32::MAX),
                            consumer_count: u32::try_from(d.consumers).unwrap_or(u32::MAX),
                        },
                    );
                }
                Ok(())
            }
            Method::QueueBind(m) => {
                let q = self.queue_name(channel, &m.queue, at)?;
                let (x, k) = (name(&m.exchange, at)?, name(&m.routing_key, at)?);
                self.session
                    .bind_queue(&q, &x, &k, &m.arguments)
                    .map_err(core)?;
                if !m.nowait {
                    self.send(channel, QueueBindOk {});
                }
                Ok(())
            }
            Method::QueueUnbind(m) => {
                let q = self.queue_name(channel, &m.queue, at)?;
                let (x, k) = (name(&m.exchange, at)?, name(&m.routing_key, at)?);
                self.session
                    .unbind_queue(&q, &x, &k, &m.arguments)
                    .map_err(core)?;
                self.send(channel, QueueUnbindOk {});
                Ok(())
            }
            Method::QueuePurge(m) => {
                let q = self.queue_name(channel, &m.queue, at)?;
                let n = self.session.purge_queue(&q).map_err(core)?;
                if !m.nowait {
                    self.send(
                        channel,
                        QueuePurgeOk {
                            message_count: u32::try_from(n).unwrap_or(u32::MAX),
                        },
                    );
                }
                Ok(())
            }
            Method::QueueDelete(m) => {
                let q = self.queue_name(channel, &m.queue, at)?;
                let n = match self.session.delete_queue(&q, m.if_unused, m.if_empty) {
                    Ok(n) => n,
                    Err(CoreError::NotFound { .. }) => 0,
                    Err(e) => return Err(core(e)),
                };
                if !m.nowait {
                    self.send(
                        channel,
                        QueueDeleteOk {
                            message_count: u32::try_from(n).unwrap_or(u32::MAX),
                        },
                    );
                }
                Ok(())
            }
            Method::BasicQos(m) => {
                if m.prefetch_size != 0 {
                    return Err(AmqpError::conn_at(
                        NOT_IMPLEMENTED,
                        format!("prefetch_size!=0 ({})", m.prefetch_size),
                        &Method::BasicQos(m),
                    ));
                }
                let ch = self.chan(channel)?;
                if m.global {
                    ch.global_prefetch = m.prefetch_count;
                    self.sync_pause(channel);
                    self.release_held(channel);
                } else {
                    ch.prefetch = m.prefetch_count;
                }
                self.send(channel, BasicQosOk {});
                Ok(())
            }
            Method::BasicConsume(m) => self.consume(channel, m, at),
            Method::BasicCancel(m) => {
                self.cancel(channel, &m.consumer_tag);
                if !m.nowait {
                    self.send(
                        channel,
                        BasicCancelOk {
                            consumer_tag: m.consumer_tag,
                        },
                    );
                }
                Ok(())
            }
            Method::BasicPublish(m) => {
                self.publisher = true;
                if m.immediate {
                    return Err(AmqpError::conn_at(
                        NOT_IMPLEMENTED,
                        "immediate=true",
                        &Method::BasicPublish(m),
                    ));
                }
                self.chan(channel)?.content = Content::Header(PendingPublish {
                    exchange: m.exchange,
                    routing_key: m.routing_key,
                    mandatory: m.mandatory,
                });
                Ok(())
            }
            Method::BasicGet(m) => {
                let q = self.queue_name(channel, &m.queue, at)?;
                match self.session.get(&q, !m.no_ack).map_err(core)? {
                    None => self.send(
                        channel,
                        BasicGetEmpty {
                            cluster_id: ShortStr::default(),
                        },
                    ),
                    Some((d, left)) => {
                        let ch = self.chan(channel)?;
                        let tag = ch.next_tag;
                        ch.next_tag += 1;
                        if !m.no_ack {
                            ch.unacked.push_back(Unacked {
                                tag,
                                consumer: d.consumer,
                                core: d.tag,
                            });
                        }
                        self.send(
                            channel,
                            BasicGetOk {
                                delivery_tag: tag,
                                redelivered: d.redelivered,
                                exchange: ShortStr::copy(d.message.namespace.exchange_name()),
                                routing_key: ShortStr::copy(&d.message.address),
                                message_count: u32::try_from(left).unwrap_or(u32::MAX),
                            },
                        );
                        self.write_content(channel, &d.message);
                    }
                }
                Ok(())
            }
            Method::BasicAck(m) => self.settle(channel, m.delivery_tag, m.multiple, None, at),
            Method::BasicReject(m) => {
                self.settle(channel, m.delivery_tag, false, Some(m.requeue), at)
            }
            Method::BasicNack(m) => {
                self.settle(channel, m.delivery_tag, m.multiple, Some(m.requeue), at)
            }
            Method::BasicRecoverAsync(_) => {
                self.recover(channel);
                Ok(())
            }
            Method::BasicRecover(_) => {
                self.recover(channel);
                self.send(channel, BasicRecoverOk {});
                Ok(())
            }
            Method::ConfirmSelect(m) => {
                let ch = self.chan(channel)?;
                if ch.tx.is_some() {
                    return Err(AmqpError::chan(
                        PRECONDITION_FAILED,
                        "cannot switch from tx to confirm mode",
                        at,
                    ));
                }
                if ch.confirms.is_none() {
                    ch.confirms = Some(Confirms {
                        next_seq: 1,
                        ..Default::default()
                    });
                }
                if !m.nowait {
                    self.send(channel, ConfirmSelectOk {});
                }
                Ok(())
            }
            Method::TxSelect(_) => {
                let ch = self.chan(channel)?;
                if ch.confirms.is_some() {
                    return Err(AmqpError::chan(
                        PRECONDITION_FAILED,
                        "cannot switch from confirm to tx mode",
                        at,
                    ));
                }
                if ch.tx.is_none() {
                    ch.tx = Some(Tx::default());
                }
                self.send(channel, TxSelectOk {});
                Ok(())
            }
            Method::TxCommit(_) => self.commit(channel, at),
            Method::TxRollback(_) => {
                let ch = self.chan(channel)?;
                let Some(tx) = ch.tx.as_mut() else {
                    return Err(AmqpError::chan(
                        PRECONDITION_FAILED,
                        "channel is not transactional",
                        at,
                    ));
                };
                *tx = Tx::default();
                self.send(channel, TxRollbackOk {});
                Ok(())
            }
            m => Err(AmqpError::conn_at(
                COMMAND_INVALID,
                "unimplemented method",
                &m,
            )),
        }
    }

    fn consume(&mut self, channel: u16, m: BasicConsume, at: (u16, u16)) -> Result<(), AmqpError> {
        let q = self.queue_name(channel, &m.queue, at)?;
        let tag = if m.consumer_tag.is_empty() {
            ShortStr::copy(&format!("amq.ctag-{}", generated_suffix()))
        } else {
            m.consumer_tag.clone()
        };
        let (prefetch, flow) = {
            let ch = self.chan(channel)?;
            (ch.prefetch, ch.flow)
        };
        let dup = self
            .consumers
            .values()
            .any(|c| c.channel == channel && c.tag == tag && !c.draining);
        if dup {
            return Err(AmqpError::conn_at(
                NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{tag:?}'").replace('"', ""),
                &Method::BasicConsume(m),
            ));
        }
        let id = self
            .session
            .consume(
                &q,
                ConsumeOptions {
                    manual_ack: !m.no_ack,
                    prefetch: u32::from(prefetch),
                    exclusive: m.exclusive,
                },
            )
            .map_err(|e| AmqpError::core(&e, at))?;
        self.consumers.insert(
            id,
            ConsumerRef {
                channel,
                tag: tag.clone(),
                no_ack: m.no_ack,
                paused: false,
                draining: false,
            },
        );
        if let Some(ch) = self.channels.get_mut(&channel) {
            ch.consumers.push(id);
        }
        if !flow {
            self.sync_pause(channel);
        }
        if !m.nowait {
            self.send(channel, BasicConsumeOk { consumer_tag: tag });
        }
        Ok(())
    }

    /// basic.cancel from the client. Deliveries already on their way are
    /// written first (they precede `cancel-ok`, as in RabbitMQ). A manual-ack
    /// consumer holding unacked deliveries is paused and cancelled in the
    /// core once they are settled, so the client can still ack them.
    fn cancel(&mut self, channel: u16, tag: &ShortStr) {
        let Some(id) = self
            .consumers
            .iter()
            .find(|(_, c)| c.channel == channel && c.tag == *tag && !c.draining)
            .map(|(id, _)| *id)
        else {
            return;
        };
        let no_ack = self.consumers.get(&id).is_some_and(|c| c.no_ack);
        if no_ack {
            let _ = self.session.cancel(id);
        } else {
            let _ = self.session.set_paused(id, true);
        }
        while let Some(d) = self.deliveries.try_recv() {
            self.on_delivery(d);
        }
        if no_ack {
            self.forget_consumer(id);
        } else {
            if let Some(c) = self.consumers.get_mut(&id) {
                c.draining = true;
                c.paused = true;
            }
            self.finish_drain(id);
        }
    }

    /// Cancels a draining consumer in the core once nothing it delivered on
    /// its channel is unacked.
    fn finish_drain(&mut self, id: ConsumerId) {
        let Some(c) = self.consumers.get(&id) else {
            return;
        };
        if !c.draining {
            return;
        }
        let holds = self
            .channels
            .get(&c.channel)
            .is_some_and(|ch| ch.unacked.iter().any(|u| u.consumer == id));
        if !holds {
            let _ = self.session.cancel(id);
            self.forget_consumer(id);
        }
    }

    fn forget_consumer(&mut self, id: ConsumerId) {
        if let Some(c) = self.consumers.remove(&id)
            && let Some(ch) = self.channels.get_mut(&c.channel)
        {
            ch.consumers.retain(|x| *x != id);
        }
    }

    /// Cancels a channel's consumers (their unacked deliveries return to
    /// their queues) and requeues its `basic.get` deliveries.
    fn release_channel(&mut self, channel: u16) {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return;
        };
        let consumers = std::mem::take(&mut ch.consumers);
        let unacked = std::mem::take(&mut ch.unacked);
        ch.held.clear();
        for id in &consumers {
            self.consumers.remove(id);
            let _ = self.session.cancel(*id);
        }
        for u in unacked {
            if !consumers.contains(&u.consumer) {
                let _ = self.session.nack(u.consumer, u.core, false, true);
            }
        }
    }

    /// basic.recover: every unacked delivery of the channel goes back to
    /// its queue (requeue=false is treated as true).
    fn recover(&mut self, channel: u16) {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return;
        };
        let unacked = std::mem::take(&mut ch.unacked);
        let mut seen: SmallVec<[ConsumerId; 4]> = SmallVec::new();
        for u in &unacked {
            if self.consumers.contains_key(&u.consumer) {
                if !seen.contains(&u.consumer) {
                    seen.push(u.consumer);
                    let _ = self.session.recover(u.consumer);
                }
            } else {
                let _ = self.session.nack(u.consumer, u.core, false, true);
            }
        }
        for id in seen {
            self.finish_drain(id);
        }
        self.sync_pause(channel);
        self.release_held(channel);
    }

    /// ack / nack / reject.
    fn settle(
        &mut self,
        channel: u16,
        tag: u64,
        multiple: bool,
        requeue: Option<bool>,
        at: (u16, u16),
    ) -> Result<(), AmqpError> {
        let ch = self.chan(channel)?;
        if let Some(tx) = ch.tx.as_mut() {
            tx.acks.push(match requeue {
                None => TxAck::Ack { tag, multiple },
                Some(requeue) => TxAck::Nack {
                    tag,
                    multiple,
                    requeue,
                },
            });
            return Ok(());
        }
        let taken = ch.take(tag, multiple).map_err(|t| {
            AmqpError::chan(PRECONDITION_FAILED, format!("unknown delivery tag {t}"), at)
        })?;
        for (consumer, core, mult) in group(&taken, multiple) {
            // A consumer gone with its queue has nothing left to settle.
            let _ = match requeue {
                None => self.session.ack(consumer, core, mult),
                Some(r) => self.session.nack(consumer, core, mult, r),
            };
        }
        self.after_settle(channel, &taken);
        Ok(())
    }

    fn after_settle(&mut self, channel: u16, taken: &[Unacked]) {
        let mut drained: SmallVec<[ConsumerId; 2]> = SmallVec::new();
        for u in taken {
            if self.consumers.get(&u.consumer).is_some_and(|c| c.draining)
                && !drained.contains(&u.consumer)
            {
                drained.push(u.consumer);
            }
        }
        for id in drained {
            self.finish_drain(id);
        }
        if self
            .channels
            .get(&channel)
            .is_some_and(|c| c.global_prefetch != 0)
        {
            self.release_held(channel);
            self.sync_pause(channel);
        }
    }

    fn commit(&mut self, channel: u16, at: (u16, u16)) -> Result<(), AmqpError> {
        let ch = self.chan(channel)?;
        let Some(tx) = ch.tx.take() else {
            return Err(AmqpError::chan(
                PRECONDITION_FAILED,
                "channel is not transactional",
                at,
            ));
        };
        ch.tx = Some(Tx::default());
        let Tx {
            tx: mut core_tx,
            returns,
            acks,
        } = tx;
        let saved = ch.unacked.clone();
        let mut settled: Vec<Unacked> = Vec::new();
        for op in &acks {
            let (tag, multiple) = match *op {
                TxAck::Ack { tag, multiple } | TxAck::Nack { tag, multiple, .. } => (tag, multiple),
            };
            let taken = match ch.take(tag, multiple) {
                Ok(t) => t,
                Err(t) => {
                    ch.unacked = saved;
                    return Err(AmqpError::chan(
                        PRECONDITION_FAILED,
                        format!("unknown delivery tag {t}"),
                        at,
                    ));
                }
            };
            for (consumer, core, mult) in group(&taken, multiple) {
                match *op {
                    TxAck::Ack { .. } => core_tx.ack(consumer, core, mult),
                    TxAck::Nack { requeue, .. } => core_tx.nack(consumer, core, mult, requeue),
                }
            }
            settled.extend(taken);
        }
        let mut published = match self.session.commit(core_tx) {
            Ok(p) => p,
            Err(e) => {
                if let Some(ch) = self.channels.get_mut(&channel) {
                    ch.unacked = saved;
                }
                return Err(AmqpError::core(&e, at));
            }
        };
        for p in &mut published {
            Pressure::keep(&mut self.pressure, p.pressure.take());
        }
        for (p, ret) in published.iter().zip(returns) {
            if let Some((publish, props, body)) = ret
                && p.is_unroutable()
            {
                self.send_return(channel, &publish, &props, &body);
            }
        }
        self.after_settle(channel, &settled);
        self.send(channel, TxCommitOk {});
        Ok(())
    }

    fn on_header(&mut self, channel: u16, header: ContentHeader) -> Result<(), AmqpError> {
        let max = self.params.max_message_size;
        let ch = self.chan(channel)?;
        let Content::Header(publish) = std::mem::take(&mut ch.content) else {
            let what = match ch.content {
                Content::Idle => "expected method frame, got non method frame instead",
                _ => "expected content body, got non content body frame instead",
            };
            return Err(AmqpError::conn(UNEXPECTED_FRAME, what));
        };
        if header.class_id != 60 {
            return Err(AmqpError::conn(
                UNEXPECTED_FRAME,
                format!(
                    "content header for class {} after basic.publish",
                    header.class_id
                ),
            ));
        }
        let size = usize::try_from(header.body_size).unwrap_or(usize::MAX);
        if size > max {
            return Err(AmqpError::chan(
                PRECONDITION_FAILED,
                format!("message size {size} is larger than configured max size {max}"),
                (60, 40),
            ));
        }
        if size == 0 {
            return self.publish(channel, publish, header.properties, Bytes::new());
        }
        ch.content = Content::Body {
            publish,
            properties: header.properties,
            size,
            parts: None,
            buf: BytesMut::new(),
        };
        Ok(())
    }

    fn on_body(&mut self, channel: u16, payload: Bytes) -> Result<(), AmqpError> {
        let ch = self.chan(channel)?;
        let Content::Body {
            size, parts, buf, ..
        } = &mut ch.content
        else {
            let what = match ch.content {
                Content::Idle => "expected method frame, got non method frame instead",
                _ => "expected content header for class 60, got non content header frame instead",
            };
            return Err(AmqpError::conn(UNEXPECTED_FRAME, what));
        };
        let have = parts.as_ref().map_or(0, Bytes::len) + buf.len();
        if have + payload.len() > *size {
            return Err(AmqpError::conn(
                FRAME_ERROR,
                format!("content body exceeds the declared size of {size} bytes"),
            ));
        }
        // One frame: keep the slice of the read buffer (zero copy). More:
        // gather them in one buffer of the declared size.
        match parts.take() {
            None if buf.is_empty() => *parts = Some(payload),
            None => buf.extend_from_slice(&payload),
            Some(first) => {
                buf.reserve(*size);
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&payload);
            }
        }
        let have = parts.as_ref().map_or(0, Bytes::len) + buf.len();
        if have < *size {
            return Ok(());
        }
        let Content::Body {
            publish,
            properties,
            parts,
            buf,
            ..
        } = std::mem::take(&mut ch.content)
        else {
            return Ok(());
        };
        let body = parts.unwrap_or_else(|| buf.freeze());
        self.publish(channel, publish, properties, body)
    }

    fn publish(
        &mut self,
        channel: u16,
        publish: PendingPublish,
        properties: BasicProperties,
        body: Bytes,
    ) -> Result<(), AmqpError> {
        let at = (60, 40);
        let Some(ch) = self.channels.get_mut(&channel) else {
            return Err(AmqpError::conn(CHANNEL_ERROR, "expected 'channel.open'"));
        };
        let namespace = match &ch.ns_cache {
            Some((k, ns)) if *k == publish.exchange => ns.clone(),
            _ => {
                let ns = Namespace::from_exchange(&name(&publish.exchange, at)?);
                ch.ns_cache = Some((publish.exchange.clone(), ns.clone()));
                ns
            }
        };
        let address = match &ch.rk_cache {
            Some((k, s)) if *k == publish.routing_key => s.clone(),
            _ => {
                let s = name(&publish.routing_key, at)?;
                ch.rk_cache = Some((publish.routing_key.clone(), s.clone()));
                s
            }
        };
        let keep = publish
            .mandatory
            .then(|| (properties.clone(), body.clone()));
        // The reply path of a request from a protocol without queues (NATS,
        // MQTT 5, STOMP /topic/, HTTP): an RPC server answers on the default
        // exchange with the request's reply_to as routing key, and that names
        // a multicast address, not a queue. A default-exchange publish whose
        // routing key names no queue goes to the multicast address of the same
        // name (RabbitMQ would drop it); one that names a queue is unchanged.
        let namespace = if namespace == Namespace::Anycast
            && !self.session.broker().queue_exists(&address)
            && Address::new(&address).is_ok()
        {
            Namespace::Multicast
        } else {
            namespace
        };
        let msg = mapping::to_message(namespace, address, body, properties, now_millis())
            .map_err(|t| AmqpError::chan(PRECONDITION_FAILED, t, at))?;
        if let Some(reply_to) = &msg.properties.reply_to {
            self.bind_reply_queue(channel, reply_to);
        }
        let Some(ch) = self.channels.get_mut(&channel) else {
            return Err(AmqpError::conn(CHANNEL_ERROR, "expected 'channel.open'"));
        };
        if let Some(tx) = ch.tx.as_mut() {
            if let Namespace::Exchange(x) = &msg.namespace
                && !self.session.broker().exchange_exists(x)
            {
                return Err(AmqpError::chan(
                    NOT_FOUND,
                    format!("no exchange '{x}' in vhost '/'"),
                    at,
                ));
            }
            tx.tx.publish(msg);
            tx.returns.push(keep.map(|(p, b)| (publish, p, b)));
            return Ok(());
        }
        let mut result = self
            .session
            .publish(msg)
            .map_err(|e| AmqpError::core(&e, at))?;
        Pressure::keep(&mut self.pressure, result.pressure.take());
        if let Some((props, body)) = keep
            && result.is_unroutable()
        {
            self.send_return(channel, &publish, &props, &body);
        }
        self.confirm(channel, result);
        Ok(())
    }

    /// The other half of cross-protocol RPC: an AMQP client names its reply
    /// queue in `reply_to`, but a NATS, MQTT, STOMP or HTTP responder
    /// publishes its answer to the multicast address `reply_to`. When
    /// `reply_to` names a queue this connection may bind (it exists, and is
    /// not another connection's exclusive queue) and is a valid address, the
    /// queue is bound to `amq.topic` with `reply_to` as its key, once per
    /// channel and reply queue. Failures are ignored: the request still goes
    /// out, and AMQP responders (which answer through the default exchange)
    /// reach the queue either way.
    fn bind_reply_queue(&mut self, channel: u16, reply_to: &Str) {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return;
        };
        if ch.reply_bound.as_ref() == Some(reply_to) {
            return;
        }
        ch.reply_bound = Some(reply_to.clone());
        if !self.session.broker().queue_exists(reply_to) || Address::new(reply_to).is_err() {
            return;
        }
        let _ = self.session.bind_queue(
            reply_to,
            Namespace::MULTICAST_EXCHANGE,
            reply_to,
            &Headers::new(),
        );
    }

    fn confirm(&mut self, channel: u16, result: Published) {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return;
        };
        let epoch = ch.epoch;
        let Some(c) = ch.confirms.as_mut() else {
            return;
        };
        let seq = c.next_seq;
        c.next_seq += 1;
        if result.rejected > 0 {
            self.send(
                channel,
                BasicNack {
                    delivery_tag: seq,
                    multiple: false,
                    requeue: false,
                },
            );
            return;
        }
        match result.completion {
            Some(completion) => {
                c.pending.insert(seq);
                self.confirms_waiting.push(PendingConfirm {
                    channel,
                    epoch,
                    seq,
                    completion,
                });
            }
            None => {
                c.ready.push(seq);
                if !self.confirm_dirty.contains(&channel) {
                    self.confirm_dirty.push(channel);
                }
            }
        }
    }

    /// A journal completion resolved.
    pub fn on_confirm_done(&mut self, channel: u16, epoch: u64, seq: u64, ok: bool) {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return;
        };
        if ch.epoch != epoch {
            return;
        }
        let Some(c) = ch.confirms.as_mut() else {
            return;
        };
        c.pending.remove(&seq);
        if ok {
            c.ready.push(seq);
            if !self.confirm_dirty.contains(&channel) {
                self.confirm_dirty.push(channel);
            }
        } else {
            self.send(
                channel,
                BasicNack {
                    delivery_tag: seq,
                    multiple: false,
                    requeue: false,
                },
            );
        }
    }

    /// End of a turn: sends the acks of every confirm settled in it, as one
    /// `basic.ack(multiple)` per channel when nothing older is pending.
    pub fn flush_confirms(&mut self) {
        for channel in std::mem::take(&mut self.confirm_dirty) {
            let Some(c) = self
                .channels
                .get_mut(&channel)
                .and_then(|ch| ch.confirms.as_mut())
            else {
                continue;
            };
            let mut ready = std::mem::take(&mut c.ready);
            let Some(max) = ready.iter().copied().max() else {
                continue;
            };
            if c.pending.first().is_none_or(|p| *p > max) {
                self.send(
                    channel,
                    BasicAck {
                        delivery_tag: max,
                        multiple: true,
                    },
                );
            } else {
                ready.sort_unstable();
                for seq in ready {
                    self.send(
                        channel,
                        BasicAck {
                            delivery_tag: seq,
                            multiple: false,
                        },
                    );
                }
            }
        }
    }

    fn send_return(
        &mut self,
        channel: u16,
        p: &PendingPublish,
        props: &BasicProperties,
        body: &[u8],
    ) {
        self.send(
            channel,
            BasicReturn {
                reply_code: NO_ROUTE,
                reply_text: ShortStr::from_static("NO_ROUTE"),
                exchange: p.exchange.clone(),
                routing_key: p.routing_key.clone(),
            },
        );
        encode_content(&mut self.out, channel, props, body, self.frame_max);
    }

    fn write_content(&mut self, channel: u16, m: &Message) {
        let at = {
            let out = &mut self.out;
            out.extend_from_slice(&[FRAME_HEADER]);
            out.extend_from_slice(&channel.to_be_bytes());
            let at = out.len();
            out.extend_from_slice(&[0, 0, 0, 0]);
            out.extend_from_slice(&60u16.to_be_bytes());
            out.extend_from_slice(&0u16.to_be_bytes());
            out.extend_from_slice(&(m.body.len() as u64).to_be_bytes());
            mapping::encode_properties(out, m, now_millis);
            at
        };
        let size = u32::try_from(self.out.len() - at - 4).unwrap_or(u32::MAX);
        if let Some(slot) = self.out.get_mut(at..at + 4) {
            slot.copy_from_slice(&size.to_be_bytes());
        }
        self.out.extend_from_slice(&[FRAME_END]);
        encode_body(&mut self.out, channel, &m.body, self.frame_max);
    }

    /// A delivery from the core: written at once, or held while the
    /// channel's flow is off or its window (qos global) is full.
    pub fn on_delivery(&mut self, d: Delivery) {
        let Some(c) = self.consumers.get(&d.consumer) else {
            // A cancelled consumer: the core requeued what it held.
            return;
        };
        let channel = c.channel;
        let Some(ch) = self.channels.get_mut(&channel) else {
            return;
        };
        if !ch.flow || (!c.no_ack && ch.window_full()) || !ch.held.is_empty() {
            ch.held.push_back(d);
            if !c.no_ack && ch.window_full() {
                self.sync_pause(channel);
            }
            return;
        }
        self.write_delivery(channel, d);
    }

    fn write_delivery(&mut self, channel: u16, d: Delivery) {
        let Some(c) = self.consumers.get(&d.consumer) else {
            return;
        };
        let Some(ch) = self.channels.get_mut(&channel) else {
            return;
        };
        let tag = ch.next_tag;
        ch.next_tag += 1;
        if !c.no_ack {
            ch.unacked.push_back(Unacked {
                tag,
                consumer: d.consumer,
                core: d.tag,
            });
        }
        let m = &d.message;
        encode_deliver(
            &mut self.out,
            channel,
            &c.tag,
            tag,
            d.redelivered,
            m.namespace.exchange_name(),
            &m.address,
        );
        self.write_content(channel, m);
    }

    /// Writes held deliveries while the channel lets them through.
    fn release_held(&mut self, channel: u16) {
        loop {
            let Some(ch) = self.channels.get_mut(&channel) else {
                return;
            };
            if !ch.flow {
                return;
            }
            let Some(d) = ch.held.front() else {
                return;
            };
            let no_ack = self.consumers.get(&d.consumer).is_none_or(|c| c.no_ack);
            if !no_ack && ch.window_full() {
                return;
            }
            if let Some(d) = ch.held.pop_front() {
                self.write_delivery(channel, d);
            }
        }
    }

    /// Pauses or resumes the channel's consumers in the core to match its
    /// flow and window.
    fn sync_pause(&mut self, channel: u16) {
        let Some(ch) = self.channels.get(&channel) else {
            return;
        };
        let full = ch.window_full();
        let flow = ch.flow;
        for id in ch.consumers.iter() {
            let Some(c) = self.consumers.get_mut(id) else {
                continue;
            };
            let want = c.draining || !flow || (full && !c.no_ack);
            if want != c.paused {
                c.paused = want;
                let _ = self.session.set_paused(*id, want);
            }
        }
    }

    /// Events from the broker: a consumer's queue was deleted.
    pub fn on_event(&mut self, e: SessionEvent) {
        if let SessionEvent::ConsumerCancelled(id) = e {
            let _ = self.session.cancel(id);
            let Some(c) = self.consumers.get(&id) else {
                return;
            };
            let (channel, tag, draining) = (c.channel, c.tag.clone(), c.draining);
            if let Some(ch) = self.channels.get_mut(&channel) {
                ch.unacked.retain(|u| u.consumer != id);
                ch.held.retain(|d| d.consumer != id);
            }
            self.forget_consumer(id);
            if self.caps.consumer_cancel_notify && !draining {
                self.send(
                    channel,
                    BasicCancel {
                        consumer_tag: tag,
                        nowait: true,
                    },
                );
            }
            self.release_held(channel);
        }
    }
}

/// A shortstr that names something, as text.
fn name(s: &ShortStr, at: (u16, u16)) -> Result<Str, AmqpError> {
    s.to_str()
        .map(Str::from)
        .map_err(|_| AmqpError::chan(PRECONDITION_FAILED, "name is not valid UTF-8", at))
}

/// 32 hex digits, unique enough for consumer tags.
fn generated_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
    let a = h.finish();
    h.write_u64(a);
    format!("{a:016x}{:016x}", h.finish())
}
