//! MQTT topic names and filters ⇄ canonical addresses and filters.
//!
//! The mapping (pinned in ARCHITECTURE.md and `docs/protocols/mqtt.md`):
//!
//! * levels ⇄ words: `/` and `.` are swapped character by character, so
//!   topic `a/b/c` is address `a.b.c`, and a `.` inside a level becomes a
//!   `/` inside the word (`a.b/c` ⇄ `a/b.c`);
//! * MQTT levels may be empty (`/a`, `a//b`, `a/`), canonical words may
//!   not. Per level: an empty level ⇄ the word `%`; a level made only of
//!   `%` characters gets one more `%` (`%` ⇄ `%%`, `%%` ⇄ `%%%`); every
//!   other level is unchanged. This is a bijection: no other level maps to
//!   a word made only of `%`;
//! * filters likewise, with `+` ⇄ `*` and `#` ⇄ `#` (a wildcard level is
//!   never escaped);
//! * a level that is exactly `*` has no canonical form (the word `*` is the
//!   wildcard), and is refused as Topic Name invalid / Topic Filter invalid;
//!   the one-word address `%` has no topic (it would be the empty topic).
//!
//! The `$` rule (`[MQTT-4.7.2-1]`: leading wildcards skip `$` topics) is the
//! router's own: it needs nothing here.

use bytes::{BufMut, BytesMut};
use switchyard_model::{Address, AddressFilter, FilterWord, MAX_ADDRESS_LEN};

/// Why a topic name or filter is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic name contains a wildcard [MQTT-3.3.2-2]")]
    Wildcard,
    #[error("'#' must be the last level of a filter, alone [MQTT-4.7.1-1]")]
    BadHash,
    #[error("'+' must occupy a whole level [MQTT-4.7.1-2]")]
    BadPlus,
    #[error("topic has no canonical form (a level '*', or longer than 1024 bytes)")]
    Unmappable,
    #[error("invalid shared subscription")]
    BadShare,
}

fn push_level(level: &str, out: &mut String) {
    if level.is_empty() {
        out.push('%');
    } else if level.bytes().all(|b| b == b'%') {
        out.push_str(level);
        out.push('%');
    } else {
        out.extend(level.chars().map(|c| if c == '.' { '/' } else { c }));
    }
}

fn push_word(word: &str, out: &mut String) {
    if word.bytes().all(|b| b == b'%') {
        // `%` is the empty level; `%%…` loses one `%`.
        out.push_str(word.get(1..).unwrap_or(""));
    } else {
        out.extend(word.chars().map(|c| if c == '/' { '.' } else { c }));
    }
}

/// A topic name (no wildcards) as an address string.
pub fn topic_to_address(topic: &str) -> Result<String, TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.contains(['+', '#']) {
        return Err(TopicError::Wildcard);
    }
    let mut out = String::with_capacity(topic.len() + 2);
    for (i, level) in topic.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        if level == "*" {
            return Err(TopicError::Unmappable);
        }
        push_level(level, &mut out);
    }
    if out.len() > MAX_ADDRESS_LEN {
        return Err(TopicError::Unmappable);
    }
    Ok(out)
}

/// A topic name as a validated [`Address`].
pub fn topic_address(topic: &str) -> Result<Address, TopicError> {
    Address::new(&topic_to_address(topic)?).map_err(|_| TopicError::Unmappable)
}

/// Checks an MQTT topic filter's wildcard rules (section 4.7.1).
pub fn check_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::BadHash);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::BadPlus);
        }
    }
    Ok(())
}

/// A topic filter (after any `$share/group/` prefix) as a canonical filter
/// string.
pub fn filter_to_canonical(filter: &str) -> Result<String, TopicError> {
    check_filter(filter)?;
    let mut out = String::with_capacity(filter.len() + 2);
    for (i, level) in filter.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        match level {
            "+" => out.push('*'),
            "#" => out.push('#'),
            "*" => return Err(TopicError::Unmappable),
            _ => push_level(level, &mut out),
        }
    }
    if out.len() > MAX_ADDRESS_LEN {
        return Err(TopicError::Unmappable);
    }
    Ok(out)
}

/// A topic filter as a validated [`AddressFilter`].
pub fn topic_filter(filter: &str) -> Result<AddressFilter, TopicError> {
    AddressFilter::new(&filter_to_canonical(filter)?).map_err(|_| TopicError::Unmappable)
}

/// An address (or canonical filter) as an MQTT topic (or filter).
pub fn address_to_topic(address: &str) -> String {
    let mut out = String::with_capacity(address.len());
    for (i, word) in address.split('.').enumerate() {
        if i > 0 {
            out.push('/');
        }
        match word {
            "*" => out.push('+'),
            "#" => out.push('#'),
            _ => push_word(word, &mut out),
        }
    }
    out
}

/// Bytes of the topic [`write_topic`] writes for `address`.
pub fn topic_len(address: &str) -> usize {
    let mut n = 0;
    for (i, word) in address.split('.').enumerate() {
        if i > 0 {
            n += 1;
        }
        n += if word.bytes().all(|b| b == b'%') {
            word.len().saturating_sub(1)
        } else {
            word.len()
        };
    }
    n
}

/// Writes the topic of `address` into `out` without allocating (the
/// outgoing PUBLISH path).
pub fn write_topic(address: &str, out: &mut BytesMut) {
    for (i, word) in address.split('.').enumerate() {
        if i > 0 {
            out.put_u8(b'/');
        }
        if word.bytes().all(|b| b == b'%') {
            out.put_slice(word.as_bytes().get(1..).unwrap_or_default());
        } else if word.contains('/') {
            for b in word.bytes() {
                out.put_u8(if b == b'/' { b'.' } else { b });
            }
        } else {
            out.put_slice(word.as_bytes());
        }
    }
}

/// Splits `$share/{group}/{filter}` into `(group, filter)`; `Ok(None)` for
/// an ordinary filter. The group must be non-empty without `/`, `+`, `#`
/// and the filter non-empty (section 4.8.2).
pub fn parse_shared(filter: &str) -> Result<Option<(&str, &str)>, TopicError> {
    let Some(rest) = filter.strip_prefix("$share/") else {
        if filter == "$share" {
            return Err(TopicError::BadShare);
        }
        return Ok(None);
    };
    let Some((group, f)) = rest.split_once('/') else {
        return Err(TopicError::BadShare);
    };
    if group.is_empty() || group.contains(['+', '#']) || f.is_empty() {
        return Err(TopicError::BadShare);
    }
    Ok(Some((group, f)))
}

/// Does canonical `filter` match `address`? Without allocating; the filter
/// comes from an MQTT filter, so `#` is only ever its last word. Leading
/// wildcards do not match `$` addresses (`[MQTT-4.7.2-1]`).
pub fn matches(filter: &AddressFilter, address: &str) -> bool {
    let mut words = address.split('.');
    let mut first = true;
    for fw in filter.words() {
        match fw {
            FilterWord::Hash => {
                return !(first && address.starts_with('$'));
            }
            FilterWord::Star => {
                let Some(w) = words.next() else { return false };
                if first && w.starts_with('$') {
                    return false;
                }
            }
            FilterWord::Literal(l) => {
                if words.next() != Some(&**l) {
                    return false;
                }
            }
        }
        first = false;
    }
    words.next().is_none()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn levels_and_dots_swap() {
        assert_eq!(topic_to_address("a/b/c").unwrap(), "a.b.c");
        assert_eq!(topic_to_address("a.b/c").unwrap(), "a/b.c");
        assert_eq!(address_to_topic("a/b.c"), "a.b/c");
        assert_eq!(address_to_topic("a.b.c"), "a/b/c");
    }

    #[test]
    fn empty_and_percent_levels_escape() {
        assert_eq!(topic_to_address("/devices/x").unwrap(), "%.devices.x");
        assert_eq!(topic_to_address("a//b").unwrap(), "a.%.b");
        assert_eq!(topic_to_address("a/").unwrap(), "a.%");
        assert_eq!(topic_to_address("/").unwrap(), "%.%");
        assert_eq!(topic_to_address("%").unwrap(), "%%");
        assert_eq!(topic_to_address("%%/x").unwrap(), "%%%.x");
        assert_eq!(topic_to_address("%a/a%").unwrap(), "%a.a%");
        assert_eq!(address_to_topic("%.devices.x"), "/devices/x");
        assert_eq!(address_to_topic("%%"), "%");
        assert_eq!(address_to_topic("%%%.x"), "%%/x");
    }

    #[test]
    fn filters_map_wildcards_and_escape_literals() {
        assert_eq!(filter_to_canonical("a/+/c").unwrap(), "a.*.c");
        assert_eq!(filter_to_canonical("a/#").unwrap(), "a.#");
        assert_eq!(filter_to_canonical("#").unwrap(), "#");
        assert_eq!(filter_to_canonical("/+/%/#").unwrap(), "%.*.%%.#");
        assert_eq!(filter_to_canonical("a.b/+").unwrap(), "a/b.*");
        assert_eq!(address_to_topic("%.*.%%.#"), "/+/%/#");
    }

    #[test]
    fn invalid_topics_and_filters_are_refused() {
        assert_eq!(topic_to_address(""), Err(TopicError::Empty));
        assert_eq!(topic_to_address("a/+"), Err(TopicError::Wildcard));
        assert_eq!(topic_to_address("a/#"), Err(TopicError::Wildcard));
        assert_eq!(topic_to_address("a/*/b"), Err(TopicError::Unmappable));
        assert_eq!(
            topic_to_address(&"x".repeat(2000)),
            Err(TopicError::Unmappable)
        );
        assert_eq!(filter_to_canonical(""), Err(TopicError::Empty));
        assert_eq!(filter_to_canonical("a/#/b"), Err(TopicError::BadHash));
        assert_eq!(filter_to_canonical("a#"), Err(TopicError::BadHash));
        assert_eq!(filter_to_canonical("a+/b"), Err(TopicError::BadPlus));
        assert_eq!(filter_to_canonical("*"), Err(TopicError::Unmappable));
        assert!(topic_address("a/b").is_ok());
    }

    #[test]
    fn shared_subscriptions_parse() {
        assert_eq!(parse_shared("a/b").unwrap(), None);
        assert_eq!(parse_shared("$share/g/a/#").unwrap(), Some(("g", "a/#")));
        assert_eq!(parse_shared("$share/g"), Err(TopicError::BadShare));
        assert_eq!(parse_shared("$share//a"), Err(TopicError::BadShare));
        assert_eq!(parse_shared("$share/g+/a"), Err(TopicError::BadShare));
        assert_eq!(parse_shared("$share/g/"), Err(TopicError::BadShare));
        assert_eq!(parse_shared("$share"), Err(TopicError::BadShare));
        assert_eq!(parse_shared("$shared/x").unwrap(), None);
    }

    #[test]
    fn written_topics_match_address_to_topic() {
        for a in ["a.b.c", "%.x.%", "%%.a/b.%%%", "$SYS.x", "w"] {
            let mut out = BytesMut::new();
            write_topic(a, &mut out);
            assert_eq!(&out[..], address_to_topic(a).as_bytes(), "{a}");
            assert_eq!(topic_len(a), out.len(), "{a}");
        }
    }

    #[test]
    fn matching_without_allocation_agrees_with_the_router_rule() {
        let f = |s: &str| topic_filter(s).unwrap();
        for (filter, topic, want) in [
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("+", "a/b", false),
            ("/+", "/x", true),
        ] {
            let addr = topic_to_address(topic).unwrap();
            let filter = f(filter);
            assert_eq!(matches(&filter, &addr), want, "{filter:?} {topic}");
            assert_eq!(filter.matches(&addr), want, "router: {filter:?} {topic}");
        }
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn level() -> impl Strategy<Value = String> {
            prop_oneof![
                Just(String::new()),
                Just("%".to_owned()),
                Just("%%".to_owned()),
                Just("a.b".to_owned()),
                "[a-z%./$]{1,6}",
            ]
        }

        proptest! {
            #[test]
            fn topics_round_trip(levels in prop::collection::vec(level(), 1..6)) {
                let topic = levels.join("/");
                prop_assume!(!topic.is_empty());
                let addr = topic_to_address(&topic).unwrap();
                prop_assert!(Address::new(&addr).is_ok(), "{} -> {}", topic, addr);
                prop_assert_eq!(address_to_topic(&addr), topic);
            }

            #[test]
            fn addresses_round_trip(words in prop::collection::vec("[a-z%/$]{1,6}", 1..6)) {
                let addr = words.join(".");
                prop_assume!(Address::new(&addr).is_ok());
                // The one address without a topic: `%` is the empty topic.
                prop_assume!(addr != "%");
                let topic = address_to_topic(&addr);
                prop_assert_eq!(topic_to_address(&topic).unwrap(), addr);
            }

            #[test]
            fn filters_round_trip(levels in prop::collection::vec(
                prop_oneof![4 => level(), 1 => Just("+".to_owned())], 1..5), hash in any::<bool>()) {
                let mut filter = levels.join("/");
                if hash { filter.push_str("/#"); }
                prop_assume!(!filter.is_empty());
                let canonical = filter_to_canonical(&filter).unwrap();
                prop_assert!(AddressFilter::new(&canonical).is_ok());
                prop_assert_eq!(address_to_topic(&canonical), filter);
            }
        }
    }
}
