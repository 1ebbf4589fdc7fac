//! The methods, content properties and constants of AMQP 0-9-1, generated
//! by `build.rs` from RabbitMQ's `amqp-rabbitmq-0.9.1.json` (one struct per
//! method, fields in wire order with the spec's names in snake case; the
//! field `type` of `exchange.declare` is called `kind`).

#![allow(clippy::all, missing_docs)]

use super::types::{DecodeError, Reader, ShortStr, put_longstr, put_shortstr, put_table};
use bytes::{BufMut, Bytes, BytesMut};
use switchyard_model::Headers;

include!(concat!(env!("OUT_DIR"), "/generated.rs"));
