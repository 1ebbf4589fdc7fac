//! The criterion micro-benchmarks' figures, written into
//! `docs/benchmarks.md` between two markers so that `compare` (which
//! regenerates the rest of the file) keeps them.
//!
//! `bench/micro.sh` runs the benchmarks (`cargo bench`), then
//! `switchyard-bench micro` reads criterion's `new/estimates.json` and
//! `new/benchmark.json` under `target/criterion` and writes the section.

use anyhow::{Context, Result};
use serde::Deserialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Where the section starts; everything up to [`END`] belongs to `micro`.
pub const BEGIN: &str = "<!-- micro-benchmarks: written by bench/micro.sh -->";
/// Where the section ends.
pub const END: &str = "<!-- /micro-benchmarks -->";

/// One benchmark's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// `group/function[/parameter]`, as criterion names it.
    pub id: String,
    /// Median time per iteration, nanoseconds.
    pub median_ns: f64,
    /// The 95 % confidence interval of the median, nanoseconds.
    pub low_ns: f64,
    pub high_ns: f64,
    /// Elements per iteration when the benchmark declared a throughput.
    pub elements: Option<u64>,
}

#[derive(Deserialize)]
struct Interval {
    lower_bound: f64,
    upper_bound: f64,
}

#[derive(Deserialize)]
struct Statistic {
    point_estimate: f64,
    confidence_interval: Interval,
}

#[derive(Deserialize)]
struct Estimates {
    median: Statistic,
}

#[derive(Deserialize)]
struct BenchmarkId {
    full_id: String,
    #[serde(default)]
    throughput: Option<Throughput>,
}

#[derive(Deserialize)]
enum Throughput {
    Elements(u64),
    #[serde(other)]
    Other,
}

/// Every benchmark criterion has a `new` result for under `dir`
/// (normally `target/criterion`), sorted by id.
pub fn collect(dir: &Path) -> Result<Vec<Estimate>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).with_context(|| format!("read {}", d.display()))?;
        for entry in entries {
            let path = entry?.path();
            if !path.is_dir() {
                continue;
            }
            if path.file_name().is_some_and(|n| n == "new") {
                if let Some(e) = read_one(&path)? {
                    found.push(e);
                }
            } else if path
                .file_name()
                .is_some_and(|n| n != "report" && n != "base")
            {
                stack.push(path);
            }
        }
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}

fn read_one(new: &Path) -> Result<Option<Estimate>> {
    let est: PathBuf = new.join("estimates.json");
    let id: PathBuf = new.join("benchmark.json");
    if !est.exists() || !id.exists() {
        return Ok(None);
    }
    let e: Estimates = serde_json::from_slice(&std::fs::read(&est)?)
        .with_context(|| format!("parse {}", est.display()))?;
    let b: BenchmarkId = serde_json::from_slice(&std::fs::read(&id)?)
        .with_context(|| format!("parse {}", id.display()))?;
    Ok(Some(Estimate {
        id: b.full_id,
        median_ns: e.median.point_estimate,
        low_ns: e.median.confidence_interval.lower_bound,
        high_ns: e.median.confidence_interval.upper_bound,
        elements: match b.throughput {
            Some(Throughput::Elements(n)) => Some(n),
            _ => None,
        },
    }))
}

/// A target from issue 2 and how a figure is judged against it.
struct Target {
    id: &'static str,
    what: &'static str,
    limit_ns: f64,
}

const TARGETS: &[Target] = &[
    Target {
        id: "router/cache_hit_100k",
        what: "route-cache hit, 100 000 subscriptions",
        limit_ns: 100.0,
    },
    Target {
        id: "router/cold_trie_match_100k",
        what: "cold trie match, 100 000 filters",
        limit_ns: 2_000.0,
    },
];

fn fmt_ns(ns: f64) -> String {
    if ns >= 1_000_000.0 {
        format!("{:.2} ms", ns / 1_000_000.0)
    } else if ns >= 1_000.0 {
        format!("{:.2} µs", ns / 1_000.0)
    } else {
        format!("{ns:.1} ns")
    }
}

/// The Markdown section (markers included).
pub fn section(estimates: &[Estimate], machine: &[(String, String)], command: &str) -> String {
    let mut d = String::new();
    let _ = writeln!(d, "{BEGIN}");
    let _ = writeln!(d, "## Core micro-benchmarks (issue 2)\n");
    let _ = writeln!(
        d,
        "Written by `{command}` (criterion, in-process, no network): the median time per \
         iteration with its 95 % confidence interval. criterion measures wall-clock time: \
         when other processes compete for the cores the figures inflate (several times over \
         on this shared machine), so run it when the machine is otherwise idle or give it \
         priority. `compare` keeps this section when it regenerates the rest of the file.\n"
    );
    let _ = writeln!(d, "| | |\n| --- | --- |");
    for (k, v) in machine {
        let _ = writeln!(d, "| {k} | {v} |");
    }
    let _ = writeln!(d);
    let _ = writeln!(d, "| target | benchmark | median | result |");
    let _ = writeln!(d, "| --- | --- | ---: | --- |");
    for t in TARGETS {
        match estimates.iter().find(|e| e.id == t.id) {
            Some(e) => {
                let met = e.high_ns < t.limit_ns;
                let _ = writeln!(
                    d,
                    "| {} under {} | `{}` | {} | {} |",
                    t.what,
                    fmt_ns(t.limit_ns),
                    e.id,
                    fmt_ns(e.median_ns),
                    if met { "met" } else { "**NOT met**" }
                );
            }
            None => {
                let _ = writeln!(
                    d,
                    "| {} under {} | `{}` | not run | **NOT met** |",
                    t.what,
                    fmt_ns(t.limit_ns),
                    t.id
                );
            }
        }
    }
    let _ = writeln!(
        d,
        "| fan-out to 1000 subscribers without copying the body | \
         `publish_fanout/1000` | see below | met: `multicast_fanout_shares_one_message_allocation` \
         (crates/core/tests/queues.rs) checks that all 1000 deliveries share one `Message` and \
         the publisher's body bytes |\n"
    );
    let _ = writeln!(
        d,
        "A target counts as met when the upper end of the confidence interval is under it.\n"
    );
    let _ = writeln!(
        d,
        "| benchmark | median | 95 % interval | per element |\n| --- | ---: | ---: | ---: |"
    );
    for e in estimates {
        let per = e.elements.filter(|n| *n > 1).map_or(String::new(), |n| {
            format!("{} × {n}", fmt_ns(e.median_ns / n as f64))
        });
        let _ = writeln!(
            d,
            "| `{}` | {} | {} – {} | {per} |",
            e.id,
            fmt_ns(e.median_ns),
            fmt_ns(e.low_ns),
            fmt_ns(e.high_ns)
        );
    }
    let _ = writeln!(d, "{END}");
    d
}

/// The section of `doc` between the markers (markers included), if any.
pub fn extract(doc: &str) -> Option<&str> {
    let start = doc.find(BEGIN)?;
    let end = doc[start..].find(END)? + start + END.len();
    doc.get(start..end)
}

/// `doc` with its section replaced by `section`, or with `section`
/// appended when it has none.
pub fn splice(doc: &str, section: &str) -> String {
    let section = section.trim_end();
    match (doc.find(BEGIN), extract(doc)) {
        (Some(start), Some(old)) => {
            let mut out = String::with_capacity(doc.len() + section.len());
            out.push_str(&doc[..start]);
            out.push_str(section);
            out.push_str(&doc[start + old.len()..]);
            out
        }
        _ => {
            let mut out = doc.trim_end().to_owned();
            if !out.is_empty() {
                out.push_str("\n\n");
            }
            out.push_str(section);
            out.push('\n');
            out
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn est(id: &str, ns: f64) -> Estimate {
        Estimate {
            id: id.into(),
            median_ns: ns,
            low_ns: ns * 0.9,
            high_ns: ns * 1.1,
            elements: None,
        }
    }

    #[test]
    fn targets_are_judged_on_the_upper_bound() {
        let s = section(
            &[
                est("router/cache_hit_100k", 95.0),
                est("router/cold_trie_match_100k", 800.0),
            ],
            &[],
            "x",
        );
        assert!(
            s.contains("| `router/cache_hit_100k` | 95.0 ns | **NOT met** |"),
            "{s}"
        );
        assert!(
            s.contains("| `router/cold_trie_match_100k` | 800.0 ns | met |"),
            "{s}"
        );
        let s = section(&[], &[], "x");
        assert!(
            s.contains("| `router/cache_hit_100k` | not run | **NOT met** |"),
            "{s}"
        );
    }

    #[test]
    fn splice_replaces_or_appends_and_extract_finds_it() {
        let a = section(&[est("a/b", 1.0)], &[], "x");
        let b = section(&[est("a/b", 2.0)], &[], "x");
        let doc = "# T\n\nbody\n";
        let once = splice(doc, &a);
        assert!(once.starts_with("# T\n\nbody\n\n<!-- micro"));
        assert_eq!(extract(&once), Some(a.trim_end()));
        let twice = splice(&once, &b);
        assert_eq!(twice.matches(BEGIN).count(), 1);
        assert_eq!(extract(&twice), Some(b.trim_end()));
        assert!(twice.starts_with("# T\n\nbody\n\n"));
        assert_eq!(extract(doc), None);
    }

    #[test]
    fn collect_reads_criterion_layout() {
        let dir = std::env::temp_dir().join(format!("sy-micro-{}", std::process::id()));
        let new = dir.join("publish_fanout").join("10").join("new");
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(
            new.join("estimates.json"),
            r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":3.0},"point_estimate":2.0,"standard_error":0.1},
               "median":{"confidence_interval":{"confidence_level":0.95,"lower_bound":190.0,"upper_bound":210.0},"point_estimate":200.0,"standard_error":0.1}}"#,
        )
        .unwrap();
        std::fs::write(
            new.join("benchmark.json"),
            r#"{"group_id":"publish_fanout","function_id":null,"value_str":"10","throughput":{"Elements":10},"full_id":"publish_fanout/10","directory_name":"publish_fanout/10","title":"publish_fanout/10"}"#,
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("publish_fanout").join("report")).unwrap();
        let got = collect(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            got,
            vec![Estimate {
                id: "publish_fanout/10".into(),
                median_ns: 200.0,
                low_ns: 190.0,
                high_ns: 210.0,
                elements: Some(10),
            }]
        );
        let s = section(&got, &[], "x");
        assert!(
            s.contains("| `publish_fanout/10` | 200.0 ns | 190.0 ns – 210.0 ns | 20.0 ns × 10 |"),
            "{s}"
        );
    }
}
