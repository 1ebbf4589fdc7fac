//! The router against a naive reference matcher, over random filters,
//! addresses and subscribe/unsubscribe sequences (which also exercises the
//! cache's invalidation).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use proptest::prelude::*;
use std::collections::BTreeSet;
use switchyard_model::AddressFilter;
use switchyard_router::Router;

/// Backtracking matcher, written straight from the definition: `*` is exactly
/// one word, `#` is zero or more, and a leading wildcard skips `$` words.
fn reference_match(filter: &[&str], address: &[&str]) -> bool {
    fn go(f: &[&str], a: &[&str]) -> bool {
        match (f.first(), a.first()) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some(&"#"), _) => (0..=a.len()).any(|k| go(&f[1..], &a[k..])),
            (Some(_), None) => false,
            (Some(&"*"), Some(_)) => go(&f[1..], &a[1..]),
            (Some(w), Some(x)) => w == x && go(&f[1..], &a[1..]),
        }
    }
    if let (Some(first_f), Some(first_a)) = (filter.first(), address.first())
        && (*first_f == "*" || *first_f == "#")
        && first_a.starts_with('$')
    {
        return false;
    }
    go(filter, address)
}

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("c".to_string()),
        Just("$s".to_string()),
        Just("long-word".to_string()),
    ]
}

fn filter_word() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => word(),
        2 => Just("*".to_string()),
        2 => Just("#".to_string()),
    ]
}

fn address() -> impl Strategy<Value = String> {
    prop::collection::vec(word(), 1..6).prop_map(|w| w.join("."))
}

fn filter() -> impl Strategy<Value = String> {
    prop::collection::vec(filter_word(), 1..6).prop_map(|w| w.join("."))
}

#[derive(Debug, Clone)]
enum Op {
    Subscribe(String, u32),
    Unsubscribe(usize),
    Route(String),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (filter(), 0u32..20).prop_map(|(f, v)| Op::Subscribe(f, v)),
        1 => any::<usize>().prop_map(Op::Unsubscribe),
        4 => address().prop_map(Op::Route),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn router_agrees_with_reference(ops in prop::collection::vec(op(), 1..80)) {
        let router = Router::with_cache_capacity(64);
        let mut model: Vec<(String, u32)> = Vec::new();
        for op in ops {
            match op {
                Op::Subscribe(f, v) => {
                    let parsed = AddressFilter::new(&f).unwrap();
                    let fresh = !model.iter().any(|(mf, mv)| *mf == f && *mv == v);
                    prop_assert_eq!(router.subscribe(&parsed, v), fresh);
                    if fresh {
                        model.push((f, v));
                    }
                }
                Op::Unsubscribe(i) => {
                    if !model.is_empty() {
                        let (f, v) = model.remove(i % model.len());
                        let parsed = AddressFilter::new(&f).unwrap();
                        prop_assert!(router.unsubscribe(&parsed, &v));
                    }
                }
                Op::Route(a) => {
                    let words: Vec<&str> = a.split('.').collect();
                    let expected: BTreeSet<u32> = model
                        .iter()
                        .filter(|(f, _)| {
                            let fw: Vec<&str> = f.split('.').collect();
                            reference_match(&fw, &words)
                        })
                        .map(|(_, v)| *v)
                        .collect();
                    let got: Vec<u32> = router.route(&a).to_vec();
                    let got_set: BTreeSet<u32> = got.iter().copied().collect();
                    prop_assert_eq!(got.len(), got_set.len(), "duplicates in {:?}", got);
                    prop_assert_eq!(&got_set, &expected, "address {}", a);
                    // The model crate's matcher agrees too.
                    for (f, _) in &model {
                        let fw: Vec<&str> = f.split('.').collect();
                        let m = AddressFilter::new(f).unwrap().matches(&a);
                        prop_assert_eq!(m, reference_match(&fw, &words), "filter {} address {}", f, a);
                    }
                }
            }
        }
    }

    #[test]
    fn filter_matches_agrees_with_reference(f in filter(), a in address()) {
        let fw: Vec<&str> = f.split('.').collect();
        let aw: Vec<&str> = a.split('.').collect();
        prop_assert_eq!(AddressFilter::new(&f).unwrap().matches(&a), reference_match(&fw, &aw));
    }
}

#[test]
fn hash_matches_zero_words_and_star_never_matches_empty() {
    let r = Router::new();
    r.subscribe(&AddressFilter::new("a.#").unwrap(), 1);
    r.subscribe(&AddressFilter::new("a.*").unwrap(), 2);
    assert_eq!(&*r.route("a"), &[1]);
    assert_eq!(&*r.route("a.b"), &[1, 2]);
}
