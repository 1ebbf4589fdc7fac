//! Addresses and address filters.
//!
//! An address is a dot-separated list of words: `sensors.room1.temp`. Rules
//! (checked by [`Address::new`]):
//!
//! * at most [`MAX_ADDRESS_LEN`] bytes;
//! * every word is non-empty (`a..b`, `.a` and `a.` are invalid);
//! * no word is a wildcard (`*` or `#`) — a publish names one address;
//! * no NUL character (MQTT forbids U+0000 in topics, and it terminates STOMP
//!   frames).
//!
//! A filter uses the same words plus the wildcards `*` (exactly one word) and
//! `#` (zero or more words), which must stand as whole words (`a*` is the
//! literal word `a*`). As MQTT requires (`[MQTT-4.7.2-1]`), a filter that starts
//! with a wildcard does not match an address whose first word starts with `$`
//! (`$SYS.broker.load` is only matched by filters that spell out `$SYS`). The
//! rule is applied to every protocol so they all see the same set.

use std::fmt;
use std::sync::Arc;

/// Longest address or filter, in bytes (UTF-8).
///
/// Long enough for real MQTT topic trees and NATS subjects; short enough that
/// the router's cache stays bounded in bytes.
pub const MAX_ADDRESS_LEN: usize = 1024;

/// Why a string is not a valid address or filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address is empty")]
    Empty,
    #[error("address is {len} bytes long, the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("word {index} of the address is empty")]
    EmptyWord { index: usize },
    #[error("word {index} is a wildcard ('*' or '#'), which a publish address may not contain")]
    Wildcard { index: usize },
    #[error("address contains a NUL character")]
    Nul,
}

fn check_common(s: &str) -> Result<(), AddressError> {
    if s.is_empty() {
        return Err(AddressError::Empty);
    }
    if s.len() > MAX_ADDRESS_LEN {
        return Err(AddressError::TooLong {
            len: s.len(),
            max: MAX_ADDRESS_LEN,
        });
    }
    if s.as_bytes().contains(&0) {
        return Err(AddressError::Nul);
    }
    for (index, word) in s.split('.').enumerate() {
        if word.is_empty() {
            return Err(AddressError::EmptyWord { index });
        }
    }
    Ok(())
}

/// A validated publish address. Cheap to clone (an `Arc<str>`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(Arc<str>);

impl Address {
    /// Validates `s` as a publish address (see the module docs for the rules).
    /// One pass over the bytes: this runs for every publish.
    pub fn new(s: &str) -> Result<Self, AddressError> {
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        if s.len() > MAX_ADDRESS_LEN {
            return Err(AddressError::TooLong {
                len: s.len(),
                max: MAX_ADDRESS_LEN,
            });
        }
        let b = s.as_bytes();
        let (mut index, mut start) = (0usize, 0usize);
        for i in 0..=b.len() {
            let c = b.get(i).copied();
            if c == Some(0) {
                return Err(AddressError::Nul);
            }
            if c.is_none() || c == Some(b'.') {
                match b.get(start..i) {
                    Some([]) | None => return Err(AddressError::EmptyWord { index }),
                    Some([b'*' | b'#']) => return Err(AddressError::Wildcard { index }),
                    Some(_) => {}
                }
                index += 1;
                start = i + 1;
            }
        }
        Ok(Address(Arc::from(s)))
    }

    /// The address as text.
    #[inline]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared string behind the address.
    #[inline]
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }

    /// The words of the address, in order.
    pub fn words(&self) -> std::str::Split<'_, char> {
        self.0.split('.')
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({:?})", &*self.0)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Address {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Address::new(s)
    }
}

/// One word of a filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FilterWord {
    /// Matches exactly this word.
    Literal(Box<str>),
    /// `*`: exactly one word.
    Star,
    /// `#`: zero or more words.
    Hash,
}

/// A validated subscription filter, e.g. `sensors.*.temp` or `sensors.#`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AddressFilter {
    text: Arc<str>,
    words: Arc<[FilterWord]>,
}

impl AddressFilter {
    /// Validates `s` as a filter (see the module docs for the rules).
    pub fn new(s: &str) -> Result<Self, AddressError> {
        check_common(s)?;
        let words = s
            .split('.')
            .map(|w| match w {
                "*" => FilterWord::Star,
                "#" => FilterWord::Hash,
                lit => FilterWord::Literal(lit.into()),
            })
            .collect();
        Ok(AddressFilter {
            text: Arc::from(s),
            words,
        })
    }

    /// The filter that matches exactly `address`.
    pub fn exact(address: &Address) -> Self {
        AddressFilter {
            text: address.as_arc().clone(),
            words: address
                .words()
                .map(|w| FilterWord::Literal(w.into()))
                .collect(),
        }
    }

    /// The filter as text.
    #[inline]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed words.
    #[inline]
    pub fn words(&self) -> &[FilterWord] {
        &self.words
    }

    /// True when the filter has no wildcard word (it names one address).
    pub fn is_literal(&self) -> bool {
        self.words
            .iter()
            .all(|w| matches!(w, FilterWord::Literal(_)))
    }

    /// Does this filter match `address` (a dot-separated address string)?
    ///
    /// Runs in O(filter words × address words) whatever the wildcards, so a
    /// hostile filter such as `#.a.#.a.#` cannot make it exponential.
    pub fn matches(&self, address: &str) -> bool {
        let addr: Vec<&str> = address.split('.').collect();
        if let (Some(first), Some(FilterWord::Star | FilterWord::Hash)) =
            (addr.first(), self.words.first())
            && first.starts_with('$')
        {
            return false;
        }
        // reach[j]: the filter words seen so far match the first j address words.
        let n = addr.len();
        let mut reach = vec![false; n + 1];
        let mut next = vec![false; n + 1];
        if let Some(r) = reach.first_mut() {
            *r = true;
        }
        for word in self.words.iter() {
            match word {
                FilterWord::Hash => {
                    let mut any = false;
                    for j in 0..=n {
                        any |= reach.get(j).copied().unwrap_or(false);
                        if let Some(x) = next.get_mut(j) {
                            *x = any;
                        }
                    }
                }
                FilterWord::Star | FilterWord::Literal(_) => {
                    if let Some(x) = next.first_mut() {
                        *x = false;
                    }
                    for j in 1..=n {
                        let prev = reach.get(j - 1).copied().unwrap_or(false);
                        let word_ok = match word {
                            FilterWord::Literal(lit) => addr.get(j - 1) == Some(&&**lit),
                            _ => true,
                        };
                        if let Some(x) = next.get_mut(j) {
                            *x = prev && word_ok;
                        }
                    }
                }
            }
            std::mem::swap(&mut reach, &mut next);
            if !reach.iter().any(|&b| b) {
                return false;
            }
        }
        reach.get(n).copied().unwrap_or(false)
    }
}

impl fmt::Debug for AddressFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AddressFilter({:?})", &*self.text)
    }
}

impl fmt::Display for AddressFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for AddressFilter {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AddressFilter::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(filter: &str, address: &str) -> bool {
        AddressFilter::new(filter).unwrap().matches(address)
    }

    #[test]
    fn address_rejects_bad_words() {
        assert_eq!(Address::new(""), Err(AddressError::Empty));
        assert_eq!(
            Address::new("a..b"),
            Err(AddressError::EmptyWord { index: 1 })
        );
        assert_eq!(
            Address::new(".a"),
            Err(AddressError::EmptyWord { index: 0 })
        );
        assert_eq!(
            Address::new("a."),
            Err(AddressError::EmptyWord { index: 1 })
        );
        assert_eq!(
            Address::new("a.*"),
            Err(AddressError::Wildcard { index: 1 })
        );
        assert_eq!(Address::new("#"), Err(AddressError::Wildcard { index: 0 }));
        assert_eq!(Address::new("a\0b"), Err(AddressError::Nul));
        let long = "a".repeat(MAX_ADDRESS_LEN + 1);
        assert!(matches!(
            Address::new(&long),
            Err(AddressError::TooLong { .. })
        ));
        assert!(Address::new(&"a".repeat(MAX_ADDRESS_LEN)).is_ok());
        assert!(
            Address::new("a*.b#.c").is_ok(),
            "wildcards only as whole words"
        );
    }

    #[test]
    fn star_matches_exactly_one_word() {
        assert!(m("a.*.c", "a.b.c"));
        assert!(!m("a.*.c", "a.c"));
        assert!(!m("a.*.c", "a.b.b.c"));
        assert!(m("*", "a"));
        assert!(!m("*", "a.b"));
    }

    #[test]
    fn hash_matches_zero_or_more_words() {
        assert!(m("a.#", "a"));
        assert!(m("a.#", "a.b"));
        assert!(m("a.#", "a.b.c"));
        assert!(m("#", "a.b.c"));
        assert!(m("a.#.c", "a.c"));
        assert!(m("a.#.c", "a.b.x.c"));
        assert!(!m("a.#.c", "a.b.x"));
        assert!(m("#.c", "c"));
        assert!(m("#.#", "a"));
        assert!(!m("a.#", "b"));
    }

    #[test]
    fn leading_wildcard_does_not_match_dollar_words() {
        assert!(!m("#", "$SYS.load"));
        assert!(!m("*.load", "$SYS.load"));
        assert!(m("$SYS.#", "$SYS.load"));
        assert!(m("a.#", "a.$x"));
    }

    #[test]
    fn pathological_filter_is_polynomial() {
        let filter = "#.a.".repeat(100) + "b";
        let address = vec!["a"; 500].join(".");
        assert!(!m(&filter, &address));
    }

    #[test]
    fn literal_filters() {
        assert!(AddressFilter::new("a.b").unwrap().is_literal());
        assert!(!AddressFilter::new("a.*").unwrap().is_literal());
        let addr = Address::new("x.y").unwrap();
        assert!(AddressFilter::exact(&addr).matches("x.y"));
    }
}
