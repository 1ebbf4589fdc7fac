//! Switchyard's HTTP adapter: anything that can make an HTTP request — a
//! shell script with curl, a webhook, a serverless function, a browser —
//! publishes into Switchyard and follows an address without a client
//! library.
//!
//! | route | what |
//! | --- | --- |
//! | `POST /v1/topics/{address}` | publish the raw body to a multicast address (`?batch=true`: NDJSON, one message per line) |
//! | `POST /v1/queues/{queue}` | enqueue the raw body point-to-point (the queue is created on first use when its policy allows) |
//! | `GET /v1/topics/{filter}/events` | Server-Sent Events stream of the messages matching a filter (`*`, `#`, URL-encoded) |
//! | `GET /v1/queues/{queue}/messages` | long-poll up to `max` messages, each with a receipt (`wait`, `visibility`) |
//! | `POST /v1/queues/{queue}/ack`, `…/nack` | settle received messages by receipt |
//! | `GET /v1/openapi.json` | the OpenAPI 3 document of these routes (`docs/openapi.json`) |
//!
//! The server (`crates/server`) owns the listener (axum, port 8080) with
//! `/healthz`, `/readyz`, `/metrics` and the WebSocket paths of the stream
//! protocols, and merges [`HttpApi::router`] into it.
//!
//! Layout: [`mapping`] (requests ↔ canonical messages, JSON and SSE
//! encoding; pure), [`consume`] (long-poll consumers: receipts, visibility
//! timer), [`sse`] (the event stream), `api` (routes and handlers), [`error`]
//! (JSON errors). The full contract is in `docs/protocols/http.md`.

mod api;
pub mod auth;
mod config;
pub mod consume;
pub mod error;
pub mod mapping;
pub mod sse;

pub use api::{HttpApi, OPENAPI};
pub use config::HttpConfig;
