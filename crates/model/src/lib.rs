//! The canonical message model every Switchyard protocol adapter maps into and
//! out of.
//!
//! * [`Message`]: one immutable message, shared by `Arc` across every queue it
//!   lands in. The body is a [`bytes::Bytes`], so fan-out copies a pointer.
//! * [`Properties`]: the slots every protocol has a place for (content type,
//!   correlation id, reply-to, priority, expiry, ...).
//! * [`Headers`]: ordered user headers with typed [`Value`]s.
//! * [`Address`] (a validated publish address: dot-separated, non-empty words,
//!   no wildcard) and [`AddressFilter`] (words plus `*` = exactly one word and
//!   `#` = zero or more words).
//! * [`RoutingType`] and id newtypes ([`MessageId`], [`ConnId`], ...).
//!
//! This crate does no I/O and depends on no runtime: it is shared by the core,
//! the router and every adapter.

mod address;
mod headers;
mod ids;
mod message;

pub use address::{Address, AddressError, AddressFilter, FilterWord, MAX_ADDRESS_LEN};
pub use headers::{Headers, Value};
pub use ids::{ConnId, ConsumerId, DeliveryTag, MessageId, QueueId};
pub use message::{DEFAULT_PRIORITY, Message, Namespace, Origin, Properties, Str, now_millis};

/// How an address delivers: to every matching subscription, or to exactly one
/// consumer of a named queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoutingType {
    /// Publish/subscribe: every subscription whose filter matches gets a copy.
    Multicast,
    /// Point-to-point: a named queue whose consumers compete.
    Anycast,
}
