//! Router benchmarks: a cache hit, and a cold trie match, with 100 000
//! subscriptions of mixed exact and wildcard filters.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use switchyard_model::AddressFilter;
use switchyard_router::{Router, Trie};

/// 100 000 filters shaped like a device fleet: 70% exact
/// (`site.S.dev.D.temp`), 20% with `*` (`site.S.*.D.temp`), 10% with `#`
/// (`site.S.dev.D.#`).
fn fleet() -> Vec<String> {
    (0..100_000u32)
        .map(|i| {
            let site = i % 100;
            let dev = i / 100;
            match i % 10 {
                0 => format!("site{site}.dev{dev}.#"),
                1 | 2 => format!("site{site}.*.dev{dev}.temp"),
                _ => format!("site{site}.room{}.dev{dev}.temp", i % 7),
            }
        })
        .collect()
}

fn bench_router(c: &mut Criterion) {
    let filters = fleet();
    let router: Router<u32> = Router::new();
    let mut trie: Trie<u32> = Trie::new();
    for (i, f) in filters.iter().enumerate() {
        let f = AddressFilter::new(f).unwrap();
        router.subscribe(&f, i as u32);
        trie.insert(&f, i as u32);
    }
    let hot = "site42.room3.dev500.temp";
    assert!(!router.route(hot).is_empty());

    c.bench_function("router/cache_hit_100k", |b| {
        b.iter(|| black_box(router.route(black_box(hot))))
    });

    let addresses: Vec<String> = (0..1000u32)
        .map(|i| format!("site{}.room{}.dev{}.temp", i % 100, i % 7, (i * 37) % 1000))
        .collect();
    let mut i = 0usize;
    c.bench_function("router/cold_trie_match_100k", |b| {
        b.iter(|| {
            i = (i + 1) % addresses.len();
            black_box(trie.matches(black_box(&addresses[i])))
        })
    });

    c.bench_function("router/miss_then_fill_100k", |b| {
        let router: Router<u32> = Router::with_cache_capacity(0);
        for (i, f) in filters.iter().take(100_000).enumerate() {
            router.subscribe(&AddressFilter::new(f).unwrap(), i as u32);
        }
        b.iter(|| {
            i = (i + 1) % addresses.len();
            black_box(router.route(black_box(&addresses[i])))
        })
    });
}

criterion_group!(benches, bench_router);
criterion_main!(benches);
