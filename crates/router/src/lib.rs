//! The subscription router: which subscriptions does a published address
//! reach?
//!
//! Two layers, the shape of nats-server's `sublist.go`:
//!
//! * [`Trie`]: a token trie over filter words. Each node has literal children
//!   (a hash map), a `*` child and a `#` child; a filter's values sit at the
//!   node where its last word ends. `#` may stand anywhere in a filter (AMQP
//!   topic exchanges allow `a.#.b`); matching memoises `(node, position)`
//!   pairs below a `#`, so no filter can make a lookup exponential.
//! * [`Router`]: the trie behind a `RwLock`, plus a bounded cache of
//!   address → matching values, split into shards each behind its own mutex.
//!   A cache hit costs one hash, one uncontended lock and one `Arc` clone.
//!
//! # Cache invariant
//!
//! A cache entry is never older than the trie. Subscribe/unsubscribe take the
//! trie's write lock, bump a generation number, then drop every cache entry
//! the changed filter matches (for a literal filter that is one key). A miss
//! computes its result under the read lock, remembers the generation it read,
//! and stores the result only if the generation is unchanged when it holds the
//! shard lock. A writer bumps the generation before touching any shard, so a
//! result computed from the old trie is either refused or removed by the
//! writer's sweep.
//!
//! Leading wildcards do not match an address whose first word starts with `$`
//! (see [`switchyard_model::AddressFilter`]).

use hashbrown::{HashMap, HashSet};
use parking_lot::{Mutex, RwLock};
use smallvec::SmallVec;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use switchyard_model::{AddressFilter, FilterWord};

/// A node of the trie.
#[derive(Debug)]
struct Node<V> {
    literal: HashMap<Box<str>, Node<V>>,
    star: Option<Box<Node<V>>>,
    hash: Option<Box<Node<V>>>,
    values: Vec<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            literal: HashMap::new(),
            star: None,
            hash: None,
            values: Vec::new(),
        }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.values.is_empty()
            && self.literal.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
    }
}

/// A wildcard trie mapping filters to values. Not synchronised: see
/// [`Router`] for the concurrent, cached wrapper.
#[derive(Debug)]
pub struct Trie<V> {
    root: Node<V>,
    len: usize,
}

impl<V> Default for Trie<V> {
    fn default() -> Self {
        Trie {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<V: Clone + Ord> Trie<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (filter, value) pairs.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `value` under `filter`. Returns false if that exact pair was
    /// already present.
    pub fn insert(&mut self, filter: &AddressFilter, value: V) -> bool {
        let mut node = &mut self.root;
        for word in filter.words() {
            node = match word {
                FilterWord::Literal(w) => node.literal.entry(w.clone()).or_default(),
                FilterWord::Star => node.star.get_or_insert_with(Box::default),
                FilterWord::Hash => node.hash.get_or_insert_with(Box::default),
            };
        }
        if node.values.contains(&value) {
            return false;
        }
        node.values.push(value);
        self.len += 1;
        true
    }

    /// Removes `value` from `filter`. Returns false if it was not there.
    /// Nodes left empty are pruned.
    pub fn remove(&mut self, filter: &AddressFilter, value: &V) -> bool {
        let removed = remove_rec(&mut self.root, filter.words(), value);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Every value whose filter matches `address`, each once, sorted.
    pub fn matches(&self, address: &str) -> Vec<V> {
        let words: SmallVec<[&str; 16]> = address.split('.').collect();
        let mut out = Vec::new();
        let mut memo = HashSet::new();
        let dollar = words.first().is_some_and(|w| w.starts_with('$'));
        collect(&self.root, &words, 0, dollar, &mut out, &mut memo, false);
        if out.len() > 1 {
            out.sort_unstable();
            out.dedup();
        }
        out
    }
}

fn remove_rec<V: PartialEq>(node: &mut Node<V>, words: &[FilterWord], value: &V) -> bool {
    let Some((first, rest)) = words.split_first() else {
        let before = node.values.len();
        node.values.retain(|v| v != value);
        return node.values.len() != before;
    };
    match first {
        FilterWord::Literal(w) => {
            let Some(child) = node.literal.get_mut(&**w) else {
                return false;
            };
            let removed = remove_rec(child, rest, value);
            if removed && child.is_empty() {
                node.literal.remove(&**w);
            }
            removed
        }
        FilterWord::Star | FilterWord::Hash => {
            let slot = if matches!(first, FilterWord::Star) {
                &mut node.star
            } else {
                &mut node.hash
            };
            let Some(child) = slot.as_deref_mut() else {
                return false;
            };
            let removed = remove_rec(child, rest, value);
            if removed && child.is_empty() {
                *slot = None;
            }
            removed
        }
    }
}

/// Collects the values of every filter under `node` that matches
/// `words[idx..]`. `memoise` is set below a `#`, where the same
/// `(node, idx)` can be reached along many paths.
fn collect<V: Clone>(
    node: &Node<V>,
    words: &[&str],
    idx: usize,
    dollar: bool,
    out: &mut Vec<V>,
    memo: &mut HashSet<(usize, usize)>,
    memoise: bool,
) {
    if memoise && !memo.insert((std::ptr::from_ref(node) as usize, idx)) {
        return;
    }
    let at_root_of_dollar = dollar && idx == 0;
    let Some(word) = words.get(idx) else {
        out.extend(node.values.iter().cloned());
        // `#` also matches zero words at the end.
        if let Some(hash) = node.hash.as_deref() {
            collect(hash, words, idx, dollar, out, memo, true);
        }
        return;
    };
    if let Some(child) = node.literal.get(*word) {
        collect(child, words, idx + 1, dollar, out, memo, memoise);
    }
    if at_root_of_dollar {
        return;
    }
    if let Some(star) = node.star.as_deref() {
        collect(star, words, idx + 1, dollar, out, memo, memoise);
    }
    if let Some(hash) = node.hash.as_deref() {
        if hash.literal.is_empty() && hash.star.is_none() && hash.hash.is_none() {
            // A trailing `#` matches whatever remains: no need to try each split.
            out.extend(hash.values.iter().cloned());
        } else {
            for k in idx..=words.len() {
                collect(hash, words, k, dollar, out, memo, true);
            }
        }
    }
}

/// Default number of cached addresses (across all shards).
pub const DEFAULT_CACHE_CAPACITY: usize = 4096;
const SHARDS: usize = 16;

#[derive(Debug)]
struct Shard<V> {
    map: HashMap<Box<str>, Arc<[V]>>,
    hits: u64,
    misses: u64,
}

/// Cache statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
}

/// A concurrent router: [`Trie`] + bounded, sharded match cache.
#[derive(Debug)]
pub struct Router<V> {
    trie: RwLock<Trie<V>>,
    generation: AtomicU64,
    shards: [Mutex<Shard<V>>; SHARDS],
    shard_capacity: usize,
    hasher: foldhash::fast::RandomState,
}

impl<V: Clone + Ord> Default for Router<V> {
    fn default() -> Self {
        Self::with_cache_capacity(DEFAULT_CACHE_CAPACITY)
    }
}

impl<V: Clone + Ord> Router<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// A router caching at most about `capacity` addresses (0 disables the cache).
    pub fn with_cache_capacity(capacity: usize) -> Self {
        let shards = std::array::from_fn(|_| {
            Mutex::new(Shard {
                map: HashMap::new(),
                hits: 0,
                misses: 0,
            })
        });
        Router {
            trie: RwLock::new(Trie::new()),
            generation: AtomicU64::new(0),
            shards,
            shard_capacity: capacity.div_ceil(SHARDS),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// Number of (filter, value) subscriptions.
    pub fn len(&self) -> usize {
        self.trie.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a subscription. Returns false if the exact pair existed.
    pub fn subscribe(&self, filter: &AddressFilter, value: V) -> bool {
        let mut trie = self.trie.write();
        let added = trie.insert(filter, value);
        if added {
            self.generation.fetch_add(1, Ordering::AcqRel);
            self.invalidate(filter);
        }
        added
    }

    /// Removes a subscription. Returns false if it was not there.
    pub fn unsubscribe(&self, filter: &AddressFilter, value: &V) -> bool {
        let mut trie = self.trie.write();
        let removed = trie.remove(filter, value);
        if removed {
            self.generation.fetch_add(1, Ordering::AcqRel);
            self.invalidate(filter);
        }
        removed
    }

    fn shard_for(&self, address: &str) -> &Mutex<Shard<V>> {
        let i = (self.hasher.hash_one(address) as usize) % SHARDS;
        // In bounds: `i < SHARDS`, the array's length.
        #[allow(clippy::indexing_slicing)]
        &self.shards[i]
    }

    /// Called with the trie's write lock held.
    fn invalidate(&self, filter: &AddressFilter) {
        if filter.is_literal() {
            self.shard_for(filter.as_str())
                .lock()
                .map
                .remove(filter.as_str());
        } else {
            for shard in self.shards.iter() {
                shard.lock().map.retain(|addr, _| !filter.matches(addr));
            }
        }
    }

    /// The values whose filters match `address`, sorted and deduplicated.
    pub fn route(&self, address: &str) -> Arc<[V]> {
        let shard = self.shard_for(address);
        {
            let mut s = shard.lock();
            if let Some(hit) = s.map.get(address) {
                let hit = hit.clone();
                s.hits += 1;
                return hit;
            }
            s.misses += 1;
        }
        let (result, generation): (Arc<[V]>, u64) = {
            let trie = self.trie.read();
            (
                trie.matches(address).into(),
                self.generation.load(Ordering::Acquire),
            )
        };
        if self.shard_capacity > 0 {
            let mut s = shard.lock();
            if self.generation.load(Ordering::Acquire) == generation {
                if s.map.len() >= self.shard_capacity {
                    // Evict an arbitrary quarter; misses re-fill what is hot.
                    let mut evict = (self.shard_capacity / 4).max(1);
                    s.map.retain(|_, _| {
                        if evict > 0 {
                            evict -= 1;
                            false
                        } else {
                            true
                        }
                    });
                }
                s.map.insert(address.into(), result.clone());
            }
        }
        result
    }

    /// The subscription set's version: it changes whenever a subscription
    /// is added or removed (see [`Router::route_versioned`]).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The match set for `address` and the [`Router::generation`] it
    /// belongs to, both read under the trie's read lock (writers change the
    /// trie and the generation under the write lock, so the two agree).
    /// A caller may keep the result and use it for `address` for as long
    /// as `generation()` still returns that number. Bypasses the cache,
    /// whose entries may lag a concurrent writer by one lookup.
    pub fn route_versioned(&self, address: &str) -> (Arc<[V]>, u64) {
        let trie = self.trie.read();
        (
            trie.matches(address).into(),
            self.generation.load(Ordering::Acquire),
        )
    }

    /// Matches `address` against the trie, bypassing the cache.
    pub fn route_uncached(&self, address: &str) -> Vec<V> {
        self.trie.read().matches(address)
    }

    /// Hit/miss counters and current size of the cache.
    pub fn cache_stats(&self) -> CacheStats {
        let mut stats = CacheStats::default();
        for shard in self.shards.iter() {
            let s = shard.lock();
            stats.hits += s.hits;
            stats.misses += s.misses;
            stats.entries += s.map.len();
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> AddressFilter {
        AddressFilter::new(s).unwrap()
    }

    #[test]
    fn literal_star_and_hash() {
        let r = Router::new();
        r.subscribe(&f("a.b.c"), 1);
        r.subscribe(&f("a.*.c"), 2);
        r.subscribe(&f("a.#"), 3);
        r.subscribe(&f("#"), 4);
        r.subscribe(&f("a.#.c"), 5);
        assert_eq!(&*r.route("a.b.c"), &[1, 2, 3, 4, 5]);
        assert_eq!(&*r.route("a"), &[3, 4]);
        assert_eq!(&*r.route("a.c"), &[3, 4, 5]);
        assert_eq!(&*r.route("b"), &[4]);
    }

    #[test]
    fn dollar_words_need_explicit_filters() {
        let r = Router::new();
        r.subscribe(&f("#"), 1);
        r.subscribe(&f("*.x"), 2);
        r.subscribe(&f("$SYS.#"), 3);
        assert_eq!(&*r.route("$SYS.x"), &[3]);
        assert_eq!(&*r.route("a.x"), &[1, 2]);
    }

    #[test]
    fn a_versioned_result_is_current_while_the_generation_stands() {
        let r = Router::new();
        r.subscribe(&f("a.b"), 1);
        let (hit, g) = r.route_versioned("a.b");
        assert_eq!(&*hit, &[1]);
        assert_eq!(r.generation(), g);
        // A repeated subscription changes nothing, so nor the generation.
        assert!(!r.subscribe(&f("a.b"), 1));
        assert_eq!(r.generation(), g);
        r.subscribe(&f("a.*"), 2);
        assert_ne!(r.generation(), g);
        let (hit, g2) = r.route_versioned("a.b");
        assert_eq!(&*hit, &[1, 2]);
        r.unsubscribe(&f("a.b"), &1);
        assert_ne!(r.generation(), g2);
        assert_eq!(&*r.route_versioned("a.b").0, &[2]);
    }

    #[test]
    fn cache_is_invalidated_by_subscribe_and_unsubscribe() {
        let r = Router::new();
        r.subscribe(&f("a.b"), 1);
        assert_eq!(&*r.route("a.b"), &[1]);
        assert_eq!(&*r.route("a.b"), &[1]);
        assert_eq!(r.cache_stats().hits, 1);
        r.subscribe(&f("a.*"), 2);
        assert_eq!(&*r.route("a.b"), &[1, 2]);
        r.subscribe(&f("a.b"), 3);
        assert_eq!(&*r.route("a.b"), &[1, 2, 3]);
        assert!(r.unsubscribe(&f("a.*"), &2));
        assert_eq!(&*r.route("a.b"), &[1, 3]);
        assert!(!r.unsubscribe(&f("a.*"), &2));
        assert!(r.unsubscribe(&f("a.b"), &1));
        assert!(r.unsubscribe(&f("a.b"), &3));
        assert!(r.route("a.b").is_empty());
        assert!(r.is_empty());
    }

    #[test]
    fn same_value_under_two_filters_is_returned_once() {
        let r = Router::new();
        r.subscribe(&f("a.*"), 7);
        r.subscribe(&f("*.b"), 7);
        r.subscribe(&f("#.#"), 7);
        assert_eq!(&*r.route("a.b"), &[7]);
    }

    #[test]
    fn duplicate_pair_is_refused() {
        let mut t = Trie::new();
        assert!(t.insert(&f("a"), 1));
        assert!(!t.insert(&f("a"), 1));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn hostile_hash_filters_stay_fast() {
        let r = Router::new();
        let filter = "#.a.".repeat(60) + "b";
        r.subscribe(&f(&filter), 1);
        let address = vec!["a"; 300].join(".");
        // Polynomial with memoisation; an exponential search would not finish.
        assert!(r.route(&address).is_empty());
        r.subscribe(&f("#.#.#.#.#.#.#.#.#.#.#.#.b"), 2);
        assert!(r.route(&address).is_empty());
        assert_eq!(&*r.route(&(address + ".b")), &[1, 2]);
    }

    #[test]
    fn small_cache_evicts_without_losing_correctness() {
        let r = Router::with_cache_capacity(16);
        r.subscribe(&f("x.*"), 1);
        for i in 0..1000 {
            assert_eq!(&*r.route(&format!("x.{i}")), &[1]);
        }
        assert!(r.cache_stats().entries <= 16 + SHARDS);
    }
}
