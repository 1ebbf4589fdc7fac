//! Exchanges: routing tables from a routing key (and headers) to queues and
//! other exchanges.
//!
//! * `direct`: exact key → destinations (a hash map).
//! * `fanout`: every destination, key ignored.
//! * `topic`: binding keys are address filters (`*`, `#`), matched by a
//!   [`switchyard_router::Router`] with its own cache. `amq.topic` is the
//!   multicast namespace every protocol's subscriptions bind to.
//! * `headers`: bindings match the message headers, `x-match` = `all`
//!   (default), `any`, `all-with-x` or `any-with-x` (RabbitMQ semantics).
//!
//! The anycast namespace (AMQP's default exchange `""`) is not a table: the
//! routing key names the queue.
//!
//! Each exchange keeps the list of its bindings beside the table so it can
//! unbind everything when it is deleted and answer `if-unused`.

use crate::queue::Queue;
use crate::{CoreError, CoreResult};
use parking_lot::RwLock;
use std::cmp::Ordering;
use std::sync::Arc;
use switchyard_model::{AddressFilter, Headers, Message, Str, Value};
use switchyard_router::Router;

/// The routing algorithm of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    /// Parses the AMQP type name.
    pub fn parse(s: &str) -> Option<ExchangeKind> {
        match s {
            "direct" => Some(ExchangeKind::Direct),
            "fanout" => Some(ExchangeKind::Fanout),
            "topic" => Some(ExchangeKind::Topic),
            "headers" => Some(ExchangeKind::Headers),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// How an exchange is declared.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExchangeOptions {
    pub durable: bool,
    /// Deleted when its last binding (as a source) is removed.
    pub auto_delete: bool,
    /// Clients cannot publish to it directly, only through
    /// exchange-to-exchange bindings.
    pub internal: bool,
    /// Declare arguments as given, compared on redeclare.
    pub arguments: Headers,
}

/// A snapshot of an exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeInfo {
    pub name: Str,
    pub kind: ExchangeKind,
    pub options: ExchangeOptions,
    pub builtin: bool,
    pub bindings: usize,
}

/// A queue as a routing destination, ordered and compared by queue id.
#[derive(Debug, Clone)]
pub(crate) struct QueueRef(pub(crate) Arc<Queue>);

/// A routing destination.
#[derive(Debug, Clone)]
pub(crate) enum Dest {
    Queue(QueueRef),
    Exchange(Arc<Exchange>),
}

impl Dest {
    fn key(&self) -> (u8, u64) {
        match self {
            Dest::Queue(q) => (0, q.0.id.0),
            Dest::Exchange(e) => (1, e.id),
        }
    }
}

impl PartialEq for Dest {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Dest {}
impl PartialOrd for Dest {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Dest {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// One binding as recorded on its destination queue (to unbind it when the
/// queue goes) and in its exchange's list.
#[derive(Debug, Clone)]
pub(crate) struct BindingKey {
    pub(crate) exchange: Arc<Exchange>,
    pub(crate) key: Str,
    pub(crate) arguments: Headers,
}

#[derive(Debug, Clone)]
struct Binding {
    dest: Dest,
    key: Str,
    arguments: Headers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum XMatch {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

#[derive(Debug, Default)]
struct Table {
    bindings: Vec<Binding>,
    direct: hashbrown::HashMap<Str, Vec<Dest>>,
    /// Bindings from other exchanges to this one (to remove them when this
    /// exchange is deleted).
    inbound: Vec<(Arc<Exchange>, Str, Headers)>,
}

/// An exchange.
pub(crate) struct Exchange {
    pub(crate) id: u64,
    pub(crate) name: Str,
    pub(crate) kind: ExchangeKind,
    pub(crate) options: ExchangeOptions,
    pub(crate) builtin: bool,
    table: RwLock<Table>,
    topic: Router<Dest>,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

fn parse_x_match(args: &Headers) -> CoreResult<XMatch> {
    match args.get("x-match") {
        None => Ok(XMatch::All),
        Some(v) => match v.as_str() {
            Some("all") => Ok(XMatch::All),
            Some("any") => Ok(XMatch::Any),
            Some("all-with-x") => Ok(XMatch::AllWithX),
            Some("any-with-x") => Ok(XMatch::AnyWithX),
            _ => Err(CoreError::PreconditionFailed(format!(
                "invalid x-match field value {v}; expected all, any, all-with-x, or any-with-x"
            ))),
        },
    }
}

fn values_match(want: &Value, have: &Value) -> bool {
    match want {
        // A void value in the binding matches on presence alone.
        Value::Null => true,
        _ => {
            want == have
                || ((matches!(want, Value::String(_)) || matches!(have, Value::String(_)))
                    && want.to_text() == have.to_text())
        }
    }
}

fn headers_match(args: &Headers, headers: &Headers) -> bool {
    let Ok(mode) = parse_x_match(args) else {
        return false;
    };
    let with_x = matches!(mode, XMatch::AllWithX | XMatch::AnyWithX);
    let mut considered = args
        .iter()
        .filter(|(k, _)| *k != "x-match" && (with_x || !k.starts_with("x-")))
        .peekable();
    match mode {
        XMatch::All | XMatch::AllWithX => {
            considered.all(|(k, want)| headers.get(k).is_some_and(|have| values_match(want, have)))
        }
        XMatch::Any | XMatch::AnyWithX => {
            considered.any(|(k, want)| headers.get(k).is_some_and(|have| values_match(want, have)))
        }
    }
}

impl Exchange {
    pub(crate) fn new(
        id: u64,
        name: Str,
        kind: ExchangeKind,
        options: ExchangeOptions,
        builtin: bool,
        cache_capacity: usize,
    ) -> Exchange {
        let cache = if kind == ExchangeKind::Topic {
            cache_capacity
        } else {
            0
        };
        Exchange {
            id,
            name,
            kind,
            options,
            builtin,
            table: RwLock::new(Table::default()),
            topic: Router::with_cache_capacity(cache),
        }
    }

    /// Adds a binding; false if the identical binding exists.
    pub(crate) fn bind(&self, dest: Dest, key: &str, arguments: &Headers) -> CoreResult<bool> {
        let mut t = self.table.write();
        if t.bindings
            .iter()
            .any(|b| b.dest == dest && &*b.key == key && b.arguments == *arguments)
        {
            return Ok(false);
        }
        match self.kind {
            ExchangeKind::Topic => {
                let filter = AddressFilter::new(key).map_err(|e| {
                    CoreError::InvalidArgument(format!("invalid binding key '{key}': {e}"))
                })?;
                self.topic.subscribe(&filter, dest.clone());
            }
            ExchangeKind::Direct => {
                let list = t.direct.entry(Str::from(key)).or_default();
                if !list.contains(&dest) {
                    list.push(dest.clone());
                }
            }
            ExchangeKind::Headers => {
                parse_x_match(arguments)?;
            }
            ExchangeKind::Fanout => {}
        }
        t.bindings.push(Binding {
            dest,
            key: Str::from(key),
            arguments: arguments.clone(),
        });
        Ok(true)
    }

    /// Removes a binding; false if it did not exist.
    pub(crate) fn unbind(&self, dest: &Dest, key: &str, arguments: &Headers) -> bool {
        let mut t = self.table.write();
        let Some(pos) = t
            .bindings
            .iter()
            .position(|b| b.dest == *dest && &*b.key == key && b.arguments == *arguments)
        else {
            return false;
        };
        t.bindings.remove(pos);
        // The same destination may still be bound with this key under other
        // arguments (headers exchanges); only drop table entries no binding
        // needs any more.
        let still = t.bindings.iter().any(|b| b.dest == *dest && &*b.key == key);
        if !still {
            match self.kind {
                ExchangeKind::Topic => {
                    if let Ok(filter) = AddressFilter::new(key) {
                        self.topic.unsubscribe(&filter, dest);
                    }
                }
                ExchangeKind::Direct => {
                    if let Some(list) = t.direct.get_mut(key) {
                        list.retain(|d| d != dest);
                        if list.is_empty() {
                            t.direct.remove(key);
                        }
                    }
                }
                ExchangeKind::Fanout | ExchangeKind::Headers => {}
            }
        }
        true
    }

    /// Drops every binding to and from this exchange, for a broker that is
    /// going: bindings hold their destination queues and exchanges, which
    /// hold them back (a queue's `BindingKey`s, an exchange's `inbound`),
    /// so the broker's exchanges and queues would otherwise keep one
    /// another alive after it is dropped.
    pub(crate) fn clear(&self) {
        let t = std::mem::take(&mut *self.table.write());
        if self.kind == ExchangeKind::Topic {
            for b in &t.bindings {
                if let Ok(filter) = AddressFilter::new(&b.key) {
                    self.topic.unsubscribe(&filter, &b.dest);
                }
            }
        }
    }

    /// Every binding of this exchange (destination, key, arguments).
    pub(crate) fn bindings(&self) -> Vec<(Dest, Str, Headers)> {
        self.table
            .read()
            .bindings
            .iter()
            .map(|b| (b.dest.clone(), b.key.clone(), b.arguments.clone()))
            .collect()
    }

    pub(crate) fn binding_count(&self) -> usize {
        self.table.read().bindings.len()
    }

    pub(crate) fn add_inbound(&self, source: Arc<Exchange>, key: Str, args: Headers) {
        self.table.write().inbound.push((source, key, args));
    }

    pub(crate) fn remove_inbound(&self, source: &Arc<Exchange>, key: &str, args: &Headers) {
        self.table
            .write()
            .inbound
            .retain(|(s, k, a)| !(Arc::ptr_eq(s, source) && &**k == key && a == args));
    }

    pub(crate) fn take_inbound(&self) -> Vec<(Arc<Exchange>, Str, Headers)> {
        std::mem::take(&mut self.table.write().inbound)
    }

    /// The topic router's result for `key` (topic exchanges only).
    pub(crate) fn route_topic(&self, key: &str) -> Arc<[Dest]> {
        self.topic.route(key)
    }

    /// The topic router's result for `key` with the generation it is valid
    /// for (see [`switchyard_router::Router::route_versioned`]).
    pub(crate) fn route_topic_versioned(&self, key: &str) -> (Arc<[Dest]>, u64) {
        self.topic.route_versioned(key)
    }

    /// The topic router's current generation.
    #[inline]
    pub(crate) fn topic_generation(&self) -> u64 {
        self.topic.generation()
    }

    /// Appends the destinations `msg` reaches through this exchange.
    pub(crate) fn route(&self, msg: &Message, out: &mut Vec<Dest>) {
        match self.kind {
            ExchangeKind::Topic => out.extend(self.topic.route(&msg.address).iter().cloned()),
            ExchangeKind::Direct => {
                if let Some(list) = self.table.read().direct.get(&*msg.address) {
                    out.extend(list.iter().cloned());
                }
            }
            ExchangeKind::Fanout => {
                let t = self.table.read();
                out.extend(t.bindings.iter().map(|b| b.dest.clone()));
            }
            ExchangeKind::Headers => {
                let t = self.table.read();
                out.extend(
                    t.bindings
                        .iter()
                        .filter(|b| headers_match(&b.arguments, &msg.headers))
                        .map(|b| b.dest.clone()),
                );
            }
        }
    }

    pub(crate) fn cache_stats(&self) -> switchyard_router::CacheStats {
        self.topic.cache_stats()
    }

    pub(crate) fn info(&self) -> ExchangeInfo {
        ExchangeInfo {
            name: self.name.clone(),
            kind: self.kind,
            options: self.options.clone(),
            builtin: self.builtin,
            bindings: self.binding_count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, Value)]) -> Headers {
        let mut out = Headers::new();
        for (k, v) in pairs {
            out.push(*k, v.clone());
        }
        out
    }

    #[test]
    fn headers_all_and_any() {
        let msg = h(&[("format", "pdf".into()), ("type", "report".into())]);
        let all = h(&[
            ("x-match", "all".into()),
            ("format", "pdf".into()),
            ("type", "report".into()),
        ]);
        let all_miss = h(&[("format", "pdf".into()), ("type", "log".into())]);
        let any = h(&[
            ("x-match", "any".into()),
            ("format", "zip".into()),
            ("type", "report".into()),
        ]);
        assert!(headers_match(&all, &msg));
        assert!(!headers_match(&all_miss, &msg));
        assert!(headers_match(&any, &msg));
        let presence = h(&[("format", Value::Null)]);
        assert!(headers_match(&presence, &msg));
    }

    #[test]
    fn headers_compare_typed_and_text_values() {
        let msg = h(&[("n", Value::I32(5))]);
        assert!(headers_match(&h(&[("n", Value::I32(5))]), &msg));
        assert!(headers_match(&h(&[("n", "5".into())]), &msg));
        assert!(!headers_match(&h(&[("n", Value::I64(6))]), &msg));
    }

    #[test]
    fn x_headers_are_ignored_unless_with_x() {
        let msg = h(&[("x-tag", "a".into())]);
        assert!(!headers_match(
            &h(&[("x-match", "any".into()), ("x-tag", "a".into())]),
            &msg
        ));
        assert!(headers_match(
            &h(&[("x-match", "any-with-x".into()), ("x-tag", "a".into())]),
            &msg
        ));
    }
}
