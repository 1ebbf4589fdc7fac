//! Ordered, typed user headers.
//!
//! The value types cover what the protocols carry: strings (STOMP, NATS, MQTT
//! 5 user properties, HTTP), and the AMQP 0-9-1 field-table types (integers of
//! each width, floats, decimals, timestamps, byte arrays, nested arrays and
//! tables). Keeping AMQP's widths lets an AMQP publisher's table reach an AMQP
//! consumer unchanged; text-only protocols receive [`Value::to_text`].

use bytes::Bytes;
use std::fmt::{self, Write as _};
use std::sync::Arc;

/// A header value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// AMQP void.
    Null,
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    /// AMQP decimal: `value / 10^scale`.
    Decimal {
        scale: u8,
        value: u32,
    },
    String(Arc<str>),
    Bytes(Bytes),
    /// Seconds since the Unix epoch (AMQP timestamp).
    Timestamp(u64),
    List(Arc<[Value]>),
    Map(Arc<Headers>),
}

impl Value {
    /// The value as a string, when it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an integer, for every integer width.
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            Value::I8(v) => v.into(),
            Value::U8(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I64(v) => v,
            _ => return None,
        })
    }

    /// The canonical text form used by protocols whose headers are strings
    /// (STOMP, NATS, MQTT 5 user properties, HTTP):
    ///
    /// | type | text |
    /// | --- | --- |
    /// | string | itself |
    /// | integers | decimal (`-42`) |
    /// | bool | `true` / `false` |
    /// | floats | Rust's shortest round-trip form (`1.5`, `NaN`, `inf`) |
    /// | decimal | `value` with `scale` digits after the point (`12.50`) |
    /// | timestamp | seconds since the epoch, decimal |
    /// | bytes | lowercase hex (`00ff10`) |
    /// | null | empty string |
    /// | list, map | JSON-like text |
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        self.write_text(&mut s);
        s
    }

    fn write_text(&self, out: &mut String) {
        // Writing into a String cannot fail.
        let _ = match self {
            Value::Null => Ok(()),
            Value::Bool(b) => write!(out, "{b}"),
            Value::I8(v) => write!(out, "{v}"),
            Value::U8(v) => write!(out, "{v}"),
            Value::I16(v) => write!(out, "{v}"),
            Value::U16(v) => write!(out, "{v}"),
            Value::I32(v) => write!(out, "{v}"),
            Value::U32(v) => write!(out, "{v}"),
            Value::I64(v) => write!(out, "{v}"),
            Value::F32(v) => write!(out, "{v}"),
            Value::F64(v) => write!(out, "{v}"),
            Value::Decimal { scale, value } => {
                let digits = value.to_string();
                let scale = usize::from(*scale);
                if scale == 0 {
                    out.push_str(&digits);
                } else if digits.len() > scale {
                    let (int, frac) = digits.split_at(digits.len() - scale);
                    out.push_str(int);
                    out.push('.');
                    out.push_str(frac);
                } else {
                    out.push_str("0.");
                    out.extend(std::iter::repeat_n('0', scale - digits.len()));
                    out.push_str(&digits);
                }
                Ok(())
            }
            Value::String(s) => {
                out.push_str(s);
                Ok(())
            }
            Value::Bytes(b) => {
                for byte in b.iter() {
                    let _ = write!(out, "{byte:02x}");
                }
                Ok(())
            }
            Value::Timestamp(t) => write!(out, "{t}"),
            Value::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write_text(out);
                }
                out.push(']');
                Ok(())
            }
            Value::Map(map) => {
                out.push('{');
                for (i, (k, v)) in map.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(k);
                    out.push(':');
                    v.write_text(out);
                }
                out.push('}');
                Ok(())
            }
        };
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(Arc::from(s))
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(Arc::from(s))
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::I64(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// Ordered user headers: name → value. Names may repeat only if an adapter
/// inserts them so; [`Headers::get`] returns the first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Headers(Vec<(Arc<str>, Value)>);

impl Headers {
    /// No headers (does not allocate).
    pub const fn new() -> Self {
        Headers(Vec::new())
    }

    /// Appends a header.
    pub fn push(&mut self, name: impl Into<Arc<str>>, value: impl Into<Value>) {
        self.0.push((name.into(), value.into()));
    }

    /// Sets a header, replacing the first one with this name.
    pub fn set(&mut self, name: &str, value: impl Into<Value>) {
        let value = value.into();
        if let Some(slot) = self.0.iter_mut().find(|(n, _)| &**n == name) {
            slot.1 = value;
        } else {
            self.0.push((Arc::from(name), value));
        }
    }

    /// The first value with this name.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(n, _)| &**n == name).map(|(_, v)| v)
    }

    /// Removes every header with this name; returns the first removed value.
    pub fn remove(&mut self, name: &str) -> Option<Value> {
        let mut first = None;
        self.0.retain(|(n, v)| {
            if &**n == name {
                if first.is_none() {
                    first = Some(v.clone());
                }
                false
            } else {
                true
            }
        });
        first
    }

    /// Headers in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> {
        self.0.iter().map(|(n, v)| (&**n, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Approximate bytes held, for memory accounting.
    pub fn approx_size(&self) -> usize {
        self.0
            .iter()
            .map(|(n, v)| n.len() + 16 + value_size(v))
            .sum()
    }
}

fn value_size(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Bytes(b) => b.len(),
        Value::List(l) => l.iter().map(value_size).sum::<usize>() + 16,
        Value::Map(m) => m.approx_size(),
        _ => 8,
    }
}

impl FromIterator<(Arc<str>, Value)> for Headers {
    fn from_iter<T: IntoIterator<Item = (Arc<str>, Value)>>(iter: T) -> Self {
        Headers(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms() {
        assert_eq!(Value::I32(-42).to_text(), "-42");
        assert_eq!(Value::Bool(true).to_text(), "true");
        assert_eq!(Value::F64(1.5).to_text(), "1.5");
        assert_eq!(
            Value::Decimal {
                scale: 2,
                value: 1250
            }
            .to_text(),
            "12.50"
        );
        assert_eq!(Value::Decimal { scale: 3, value: 5 }.to_text(), "0.005");
        assert_eq!(
            Value::Bytes(Bytes::from_static(&[0, 255, 16])).to_text(),
            "00ff10"
        );
        assert_eq!(Value::Null.to_text(), "");
        let list = Value::List(Arc::from(vec![Value::I8(1), Value::from("x")]));
        assert_eq!(list.to_text(), "[1,x]");
    }

    #[test]
    fn set_get_remove_keep_order() {
        let mut h = Headers::new();
        h.push("a", "1");
        h.push("b", 2i64);
        h.set("a", "3");
        assert_eq!(h.get("a").and_then(Value::as_str), Some("3"));
        assert_eq!(h.iter().map(|(n, _)| n).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(h.remove("a"), Some(Value::from("3")));
        assert_eq!(h.len(), 1);
        assert_eq!(h.get("b").and_then(Value::as_i64), Some(2));
    }
}
