//! The routes and their handlers.
//!
//! Handlers take the whole request and read what they need from its parts
//! (the path segment, the raw query, the header map) without copying them;
//! a publish allocates the message, its `Arc`, and the response.

use crate::config::HttpConfig;
use crate::consume::{Consumers, Settle, Settled};
use crate::error::ApiError;
use crate::mapping::{self, PollLimits, PublishParams};
use crate::sse::SseStream;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use switchyard_core::{
    Broker, DeclareQueue, Flow, Overflow, Pressure, Published, QueueOptions, Subscribe,
    SubscriptionKind, Traffic, Verb, WakeBatch,
};
use switchyard_model::{AddressFilter, Message, Origin, Str};
use tokio_util::sync::{CancellationToken, DropGuard};

/// The OpenAPI document, `docs/openapi.json`, served as is.
pub const OPENAPI: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docs/openapi.json"
));

/// State shared by the handlers of one listener.
#[derive(Debug)]
pub(crate) struct Api {
    broker: Broker,
    config: HttpConfig,
    /// Message and byte totals of the `http` protocol.
    traffic: Arc<Traffic>,
    /// The origin of REST publishes: the listener itself.
    origin: Origin,
    stop: CancellationToken,
    consumers: Arc<Consumers>,
    max_body: usize,
    poll: PollLimits,
    /// Set by [`HttpApi::open`] once the broker has recovered its store;
    /// until then every route but the OpenAPI document answers 503.
    open: AtomicBool,
    /// The broker's flow state: publishes answer 503 `blocked` while
    /// publishers are held back (memory or disk watermark).
    flow: Flow,
    /// Stops the visibility reaper when the listener's API is dropped.
    _reaper: DropGuard,
}

/// The REST and SSE routes of one HTTP listener.
#[derive(Debug, Clone)]
pub struct HttpApi {
    api: Arc<Api>,
}

impl HttpApi {
    /// The API of one listener. `stop` is the listener's stop signal: open
    /// Server-Sent Events streams and long polls end when it is cancelled.
    /// Must be called inside a Tokio runtime (it starts the visibility
    /// timer task). The routes answer 503 `starting` until [`HttpApi::open`].
    pub fn new(config: HttpConfig, broker: Broker, stop: CancellationToken) -> HttpApi {
        let reaper = stop.child_token();
        let consumers = Consumers::start(broker.clone(), config.max_unacked, reaper.clone());
        let max_body = config
            .max_body
            .as_usize()
            .min(broker.config().limits.max_message_size.as_usize());
        let poll = PollLimits {
            max_messages: config.max_messages,
            max_wait: config.max_wait.get(),
            default_visibility: config.default_visibility.get(),
            max_visibility: config.max_visibility.get(),
        };
        HttpApi {
            api: Arc::new(Api {
                traffic: broker.traffic("http"),
                flow: broker.flow(),
                origin: Origin {
                    protocol: "http",
                    conn: broker.next_conn_id(),
                },
                broker,
                config,
                stop,
                consumers,
                max_body,
                poll,
                open: AtomicBool::new(false),
                _reaper: reaper.drop_guard(),
            }),
        }
    }

    /// The routes, to merge into the listener's router. Unknown paths and
    /// methods are answered with a JSON error.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/topics/{address}", post(publish_topic))
            .route("/v1/topics/{filter}/events", get(events))
            .route("/v1/queues/{queue}", post(publish_queue))
            .route("/v1/queues/{queue}/messages", get(poll))
            .route("/v1/queues/{queue}/ack", post(ack))
            .route("/v1/queues/{queue}/nack", post(nack))
            .route("/v1/openapi.json", get(openapi))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .with_state(self.api.clone())
    }

    /// Starts serving: the broker has recovered its store (call once
    /// `Broker::recover` is done; before, publishing would race recovery).
    pub fn open(&self) {
        self.api.open.store(true, Ordering::Release);
    }

    /// The listener's options.
    pub fn config(&self) -> &HttpConfig {
        &self.api.config
    }

    /// Messages received by long-poll consumers and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.api.consumers.unacked()
    }
}

type St = State<Arc<Api>>;

impl Api {
    /// 503 `starting` until the broker has recovered.
    #[inline]
    fn check_open(&self) -> Result<(), ApiError> {
        if self.open.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(ApiError::unavailable(
                "starting",
                "the broker is recovering its store; try again shortly",
            ))
        }
    }

    /// 503 `blocked` while the broker holds publishers back; HTTP has no
    /// way to slow a client down other than refusing, so it is told to
    /// retry (`Retry-After`).
    #[inline]
    fn check_flow(&self) -> Result<(), ApiError> {
        match self.flow.reason() {
            None => Ok(()),
            Some(reason) => Err(ApiError::unavailable(
                "blocked",
                format!("publishers are held back: {reason}"),
            )),
        }
    }
}

/// The `{name}` segment after `prefix` (and before `suffix`), decoded.
fn segment<'a>(
    path: &'a str,
    prefix: &str,
    suffix: &str,
) -> Result<std::borrow::Cow<'a, str>, ApiError> {
    let raw = path
        .strip_prefix(prefix)
        .and_then(|p| p.strip_suffix(suffix))
        .unwrap_or("");
    mapping::decode(raw)
}

fn json(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

async fn openapi() -> Response {
    json(StatusCode::OK, Body::from(OPENAPI))
}

/// Reads a body of at most `limit` bytes: the declared length is checked
/// before anything is read, the received length while reading.
async fn read_body(
    headers: &axum::http::HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared
        && n > limit as u64
    {
        return Err(ApiError::too_large(format!(
            "the body is {n} bytes, the limit is {limit}"
        )));
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let length_limit = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if length_limit {
            ApiError::too_large(format!("the body is over the limit of {limit} bytes"))
        } else {
            ApiError::bad_request("bad_body", format!("the body could not be read: {e}"))
        }
    })
}

async fn publish_topic(State(api): St, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let result = async {
        api.check_open()?;
        api.check_flow()?;
        let who = crate::auth::login(&api.broker, &parts).await?;
        let address = segment(parts.uri.path(), "/v1/topics/", "")?;
        let address = mapping::address(&address)?;
        api.broker
            .authorizer("http", &who)
            .check(Verb::Publish, address.as_str())?;
        let params = mapping::publish_params(parts.uri.query())?;
        let template = Message::multicast(&address, Bytes::new());
        api.publish(template, params, &parts.headers, body).await
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn publish_queue(State(api): St, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let result = async {
        api.check_open()?;
        api.check_flow()?;
        let who = crate::auth::login(&api.broker, &parts).await?;
        let name = segment(parts.uri.path(), "/v1/queues/", "")?;
        mapping::check_queue_name(&name)?;
        let params = mapping::publish_params(parts.uri.query())?;
        let acl = api.broker.authorizer("http", &who);
        acl.check(Verb::Publish, &name)?;
        if acl.is_active() && !api.broker.queue_exists(&name) {
            // Creating the queue on first use is managing it.
            acl.check(Verb::Manage, &name)?;
        }
        api.ensure_queue(&name)?;
        let template = Message::anycast(&name, Bytes::new());
        api.publish(template, params, &parts.headers, body).await
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// The answer to a publish the broker refused in part: 503.
fn rejected(p: &Published) -> ApiError {
    ApiError::unavailable(
        "queue_full",
        format!(
            "{} of the queues the message reached are full and refused it",
            p.rejected
        ),
    )
    .with("id", p.id.get())
    .with("routed", p.routed)
    .with("rejected", p.rejected)
}

impl Api {
    /// Creates queue `name` on first use when its address policy allows
    /// (`auto_create_queues`, default true); 404 otherwise.
    fn ensure_queue(&self, name: &str) -> Result<(), ApiError> {
        if self.broker.queue_exists(name) {
            return Ok(());
        }
        let allowed = self
            .broker
            .config()
            .policy_for(name)
            .and_then(|p| p.auto_create_queues)
            .unwrap_or(true);
        if !allowed {
            return Err(ApiError::no_queue(name));
        }
        let declared = self.broker.declare_queue(
            DeclareQueue {
                name: Some(Str::from(name)),
                options: QueueOptions {
                    durable: true,
                    ..QueueOptions::default()
                },
                passive: false,
            },
            None,
        );
        match declared {
            // Declared meanwhile with other options: it exists, use it.
            Ok(_) | Err(switchyard_core::CoreError::PreconditionFailed(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn publish(
        &self,
        mut template: Message,
        params: PublishParams,
        headers: &axum::http::HeaderMap,
        body: Body,
    ) -> Result<Response, ApiError> {
        template.origin = self.origin;
        mapping::apply_headers(&mut template, headers, params.batch)?;
        mapping::apply_params(&mut template, &params);
        if params.batch {
            return self.publish_batch(template, headers, body).await;
        }
        let body = read_body(headers, body, self.max_body).await?;
        let bytes = body.len() as u64;
        template.body = body;
        let anycast = matches!(template.namespace, switchyard_model::Namespace::Anycast);
        let published = self.broker.publish(template)?;
        self.traffic.add_in(1, bytes);
        if published.rejected > 0 {
            return Err(rejected(&published));
        }
        if anycast && published.is_unroutable() {
            // The queue was deleted between the check and the publish.
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "queue_not_found",
                "the queue was deleted",
            ));
        }
        if let Some(c) = published.completion {
            c.await.map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store_failed",
                    e.to_string(),
                )
            })?;
        }
        // A queue the message reached is past its bound (`overflow =
        // block`): the answer waits until it drains (at most the core's
        // BLOCK_TIMEOUT), so a client that waits for it is paced.
        if let Some(p) = &published.pressure {
            p.relieved().await;
        }
        let mut out = String::with_capacity(40);
        out.push_str("{\"id\":");
        out.push_str(itoa::Buffer::new().format(published.id.get()));
        out.push_str(",\"routed\":");
        out.push_str(itoa::Buffer::new().format(published.routed));
        out.push('}');
        Ok(json(StatusCode::ACCEPTED, out))
    }

    async fn publish_batch(
        &self,
        template: Message,
        headers: &axum::http::HeaderMap,
        body: Body,
    ) -> Result<Response, ApiError> {
        let ndjson = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-ndjson"));
        if !ndjson {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "a batch (?batch=true) is sent as Content-Type: application/x-ndjson",
            ));
        }
        let body = read_body(headers, body, self.config.max_batch_body.as_usize()).await?;
        let lines = mapping::split_batch(&body, self.config.max_batch_messages, self.max_body)?;
        let anycast = matches!(template.namespace, switchyard_model::Namespace::Anycast);
        let (mut routed, mut first, mut last, mut bytes) = (0u64, 0u64, 0u64, 0u64);
        let mut completions = Vec::new();
        let mut refused = None;
        let mut published_n = 0usize;
        let mut pressure = None;
        {
            let _batch = WakeBatch::new();
            for line in lines.iter() {
                let mut m = template.clone();
                bytes += line.len() as u64;
                m.body = line.clone();
                let mut p = self.broker.publish(m)?;
                Pressure::keep(&mut pressure, p.pressure.take());
                published_n += 1;
                if first == 0 {
                    first = p.id.get();
                }
                last = p.id.get();
                routed += u64::from(p.routed);
                if p.rejected > 0 || (anycast && p.is_unroutable()) {
                    refused = Some(p);
                    break;
                }
                if let Some(c) = p.completion {
                    completions.push(c);
                }
            }
        }
        self.traffic.add_in(published_n as u64, bytes);
        if let Some(p) = refused {
            let e = if p.rejected > 0 {
                rejected(&p)
            } else {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "queue_not_found",
                    "the queue was deleted",
                )
            };
            return Err(e.with("published", published_n.saturating_sub(1)));
        }
        for c in completions {
            c.await.map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store_failed",
                    e.to_string(),
                )
            })?;
        }
        // As for one message: answered once the queue past its bound drained.
        if let Some(p) = &pressure {
            p.relieved().await;
        }
        let mut out = String::with_capacity(80);
        out.push_str("{\"count\":");
        out.push_str(itoa::Buffer::new().format(published_n));
        out.push_str(",\"routed\":");
        out.push_str(itoa::Buffer::new().format(routed));
        if published_n > 0 {
            out.push_str(",\"first_id\":");
            out.push_str(itoa::Buffer::new().format(first));
            out.push_str(",\"last_id\":");
            out.push_str(itoa::Buffer::new().format(last));
        }
        out.push('}');
        Ok(json(StatusCode::ACCEPTED, out))
    }
}

async fn events(State(api): St, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let who = match crate::auth::login(&api.broker, &parts).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let req = Request::from_parts(parts, Body::empty());
    let result = (|| {
        api.check_open()?;
        let filter = segment(req.uri().path(), "/v1/topics/", "/events")?;
        let filter = AddressFilter::new(&filter)
            .map_err(|e| ApiError::bad_request("invalid_filter", e.to_string()))?;
        if req.uri().query().is_some_and(|q| !q.is_empty()) {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                "this endpoint takes no parameters",
            ));
        }
        let mut session = api.broker.session("http", api.broker.next_conn_id());
        session.set_principal(&who);
        let pending = api.config.sse_max_pending.bytes();
        session.subscribe(Subscribe {
            filter: filter.clone(),
            kind: SubscriptionKind::Temporary,
            queue: QueueOptions {
                max_bytes: Some(pending),
                max_length: Some(api.config.sse_max_pending_messages),
                overflow: Overflow::DropHead,
                notify_overflow: true,
                ..QueueOptions::default()
            },
            consume: switchyard_core::ConsumeOptions::default(),
        })?;
        let mut first = bytes::BytesMut::new();
        mapping::put_sse_comment(&mut first, &format!("subscribed to {}", filter.as_str()));
        let stream = SseStream::new(
            session,
            api.stop.clone(),
            api.config.sse_keepalive.get(),
            first.freeze(),
        );
        let mut r = Response::new(Body::from_stream(stream.into_stream()));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        Ok(r)
    })();
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn poll(State(api): St, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let result = async {
        api.check_open()?;
        let who = crate::auth::login(&api.broker, &parts).await?;
        let name = segment(parts.uri.path(), "/v1/queues/", "/messages")?;
        mapping::check_queue_name(&name)?;
        api.broker
            .authorizer("http", &who)
            .check(Verb::Consume, &name)?;
        let p = mapping::poll_params(parts.uri.query(), &api.poll)?;
        let got = api.consumers.poll(&name, p, &api.stop).await?;
        let mut out = Vec::with_capacity(64 + got.len() * 256);
        out.extend_from_slice(b"{\"messages\":[");
        for (i, (receipt, d)) in got.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            mapping::put_polled(&mut out, receipt, d);
        }
        out.extend_from_slice(b"]}");
        Ok::<_, ApiError>(json(StatusCode::OK, out))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SettleBody<'a> {
    #[serde(borrow)]
    receipts: Vec<std::borrow::Cow<'a, str>>,
    #[serde(default = "yes")]
    requeue: bool,
}

fn yes() -> bool {
    true
}

async fn ack(state: St, req: Request) -> Response {
    settle(state, req, false).await
}

async fn nack(state: St, req: Request) -> Response {
    settle(state, req, true).await
}

async fn settle(State(api): St, req: Request, negative: bool) -> Response {
    let (parts, body) = req.into_parts();
    let result = async {
        api.check_open()?;
        let suffix = if negative { "/nack" } else { "/ack" };
        let who = crate::auth::login(&api.broker, &parts).await?;
        let name = segment(parts.uri.path(), "/v1/queues/", suffix)?;
        mapping::check_queue_name(&name)?;
        api.broker
            .authorizer("http", &who)
            .check(Verb::Consume, &name)?;
        if !api.broker.queue_exists(&name) {
            return Err(ApiError::no_queue(&name));
        }
        let body = read_body(&parts.headers, body, api.config.max_ack_body.as_usize()).await?;
        let req: SettleBody<'_> = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "invalid_body",
                format!("expected {{\"receipts\": [\"...\"]}}: {e}"),
            )
        })?;
        if !negative && !req.requeue {
            return Err(ApiError::bad_request(
                "invalid_body",
                "requeue is a nack option",
            ));
        }
        let how = if negative {
            Settle::Nack {
                requeue: req.requeue,
            }
        } else {
            Settle::Ack
        };
        let receipts: Vec<&str> = req.receipts.iter().map(|r| &**r).collect();
        let results = api.consumers.settle(&name, &receipts, how);
        let mut out = Vec::with_capacity(32);
        let done = results.iter().filter(|r| **r == Settled::Done).count();
        out.extend_from_slice(if negative {
            b"{\"nacked\":"
        } else {
            b"{\"acked\":"
        });
        out.extend_from_slice(itoa::Buffer::new().format(done).as_bytes());
        out.extend_from_slice(b",\"failed\":[");
        let mut first = true;
        for (r, s) in receipts.iter().zip(&results) {
            if *s == Settled::Done {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(b"{\"receipt\":");
            mapping::put_json_str(&mut out, r);
            out.extend_from_slice(b",\"error\":\"");
            out.extend_from_slice(s.code().as_bytes());
            out.extend_from_slice(b"\"}");
        }
        out.extend_from_slice(b"]}");
        Ok(json(StatusCode::OK, out))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}
