//! Prometheus text exposition of the broker's counters and gauges.
//!
//! Names follow `switchyard_<subsystem>_<what>_<unit>`. Labels are bounded:
//! protocol names (the binary's closed list), and queue names only for
//! queues a client named (the per-subscription `$sub.…` queues are summed,
//! never listed).

use crate::Ctx;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub(crate) fn render(ctx: &Ctx) -> String {
    let mut out = String::with_capacity(4096);
    let a = &ctx.admission;
    let mut protocols: Vec<_> = a.by_protocol.iter().collect();
    protocols.sort_by_key(|(p, _)| *p);

    family(
        &mut out,
        "switchyard_connections_active",
        "gauge",
        "Open client connections.",
    );
    for (p, c) in &protocols {
        let _ = writeln!(
            out,
            "switchyard_connections_active{{protocol=\"{p}\"}} {}",
            c.active.load(Ordering::Relaxed)
        );
    }
    family(
        &mut out,
        "switchyard_connections_total",
        "counter",
        "Client connections accepted.",
    );
    for (p, c) in &protocols {
        let _ = writeln!(
            out,
            "switchyard_connections_total{{protocol=\"{p}\"}} {}",
            c.total.load(Ordering::Relaxed)
        );
    }
    family(
        &mut out,
        "switchyard_connections_refused_total",
        "counter",
        "Connections refused by a connection limit.",
    );
    for (p, c) in &protocols {
        let _ = writeln!(
            out,
            "switchyard_connections_refused_total{{protocol=\"{p}\"}} {}",
            c.refused.load(Ordering::Relaxed)
        );
    }

    traffic(&mut out, ctx, &protocols);
    security(&mut out, ctx, &protocols);

    let s = ctx.broker.stats();
    let t = &s.queue_totals;
    let counters: [(&str, &str, u64); 11] = [
        (
            "switchyard_messages_published_total",
            "Messages published.",
            s.published,
        ),
        (
            "switchyard_messages_unroutable_total",
            "Published messages no queue took.",
            s.unroutable,
        ),
        (
            "switchyard_messages_enqueued_total",
            "Message copies enqueued (one per queue reached).",
            t.enqueued,
        ),
        (
            "switchyard_messages_delivered_total",
            "Deliveries to consumers.",
            t.delivered,
        ),
        (
            "switchyard_messages_redelivered_total",
            "Deliveries of messages delivered before.",
            t.redelivered,
        ),
        (
            "switchyard_messages_acked_total",
            "Deliveries acknowledged.",
            t.acked,
        ),
        (
            "switchyard_messages_expired_total",
            "Messages that expired in a queue.",
            t.expired,
        ),
        (
            "switchyard_messages_dead_lettered_total",
            "Messages sent to a dead-letter target.",
            t.dead_lettered,
        ),
        (
            "switchyard_messages_dropped_total",
            "Messages dropped by queue overflow.",
            t.dropped,
        ),
        (
            "switchyard_messages_rejected_total",
            "Publishes refused by reject-publish overflow.",
            t.rejected_publishes,
        ),
        (
            "switchyard_queue_blocked_total",
            "Times a queue with block overflow went past its limits and held its publishers back.",
            t.blocked,
        ),
    ];
    for (name, help, v) in counters {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {v}");
    }
    let gauges: [(&str, &str, u64); 5] = [
        (
            "switchyard_queues",
            "Queues, including one per live subscription.",
            s.queues,
        ),
        ("switchyard_exchanges", "Exchanges.", s.exchanges),
        ("switchyard_consumers", "Consumers.", s.consumers),
        (
            "switchyard_messages_ready",
            "Messages waiting in queues.",
            s.messages_ready,
        ),
        (
            "switchyard_messages_unacked",
            "Deliveries not yet acknowledged.",
            s.messages_unacked,
        ),
    ];
    for (name, help, v) in gauges {
        family(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {v}");
    }
    family(
        &mut out,
        "switchyard_route_cache_hits_total",
        "counter",
        "Route cache hits.",
    );
    let _ = writeln!(
        out,
        "switchyard_route_cache_hits_total {}",
        s.route_cache_hits
    );
    family(
        &mut out,
        "switchyard_route_cache_misses_total",
        "counter",
        "Route cache misses.",
    );
    let _ = writeln!(
        out,
        "switchyard_route_cache_misses_total {}",
        s.route_cache_misses
    );
    family(
        &mut out,
        "switchyard_route_cache_hit_ratio",
        "gauge",
        "Route cache hits / lookups since start (0 before any lookup).",
    );
    let lookups = s.route_cache_hits + s.route_cache_misses;
    let ratio = if lookups == 0 {
        0.0
    } else {
        s.route_cache_hits as f64 / lookups as f64
    };
    let _ = writeln!(out, "switchyard_route_cache_hit_ratio {ratio}");

    family(
        &mut out,
        "switchyard_publishers_blocked",
        "gauge",
        "1 while publishers are held back (memory or disk watermark).",
    );
    let _ = writeln!(
        out,
        "switchyard_publishers_blocked {}",
        u8::from(ctx.broker.flow().is_blocked())
    );

    if let Some(j) = ctx.broker.journal_stats() {
        let journal: [(&str, &str, &str, u64); 7] = [
            (
                "switchyard_store_records_appended_total",
                "counter",
                "Journal records appended.",
                j.records_appended,
            ),
            (
                "switchyard_store_bytes_appended_total",
                "counter",
                "Bytes appended to the journal.",
                j.bytes_appended,
            ),
            (
                "switchyard_store_batches_total",
                "counter",
                "Write batches (group commits) of the journal writer.",
                j.batches,
            ),
            (
                "switchyard_store_fsyncs_total",
                "counter",
                "fdatasync calls.",
                j.fsyncs,
            ),
            (
                "switchyard_store_fsync_seconds_total",
                "counter",
                "Time spent in fdatasync, microseconds / 1e6.",
                j.fsync_micros,
            ),
            (
                "switchyard_store_segments",
                "gauge",
                "Journal segment files.",
                j.segments,
            ),
            (
                "switchyard_store_live_records",
                "gauge",
                "Journal records still needed.",
                j.live_records,
            ),
        ];
        for (name, kind, help, v) in journal {
            family(&mut out, name, kind, help);
            if name == "switchyard_store_fsync_seconds_total" {
                let _ = writeln!(out, "{name} {}", v as f64 / 1e6);
            } else {
                let _ = writeln!(out, "{name} {v}");
            }
        }
    }

    let queues: Vec<_> = ctx
        .broker
        .queues()
        .into_iter()
        .filter(|q| !q.name.starts_with("$sub.") && !q.name.starts_with("amq.gen-"))
        .collect();
    for (name, help, f) in [
        (
            "switchyard_queue_messages",
            "Ready messages per named queue.",
            (|q: &switchyard_core::QueueInfo| q.messages) as fn(&switchyard_core::QueueInfo) -> u64,
        ),
        (
            "switchyard_queue_unacked",
            "Unacknowledged deliveries per named queue.",
            |q| q.unacked,
        ),
        (
            "switchyard_queue_consumers",
            "Consumers per named queue.",
            |q| q.consumers,
        ),
    ] {
        family(&mut out, name, "gauge", help);
        for q in &queues {
            let _ = writeln!(out, "{name}{{queue=\"{}\"}} {}", escape(&q.name), f(q));
        }
    }
    out
}

/// Messages and body bytes in and out, per protocol (see
/// `switchyard_core::traffic`: sessions add their counts in batches, so a
/// busy connection's last batch may not be in yet).
fn traffic(
    out: &mut String,
    ctx: &Ctx,
    protocols: &[(&&'static str, &crate::conns::ProtocolCounters)],
) {
    let stats = ctx.broker.traffic_stats();
    let of = |p: &str| {
        stats
            .iter()
            .find(|(name, _)| *name == p)
            .map(|(_, s)| *s)
            .unwrap_or_default()
    };
    type Pick = fn(&switchyard_core::TrafficStats) -> u64;
    let families: [(&str, &str, Pick); 4] = [
        (
            "switchyard_protocol_messages_received_total",
            "Messages clients published, by protocol.",
            |t| t.messages_in,
        ),
        (
            "switchyard_protocol_received_bytes_total",
            "Body bytes of the messages clients published, by protocol.",
            |t| t.bytes_in,
        ),
        (
            "switchyard_protocol_messages_sent_total",
            "Messages delivered to clients, by protocol.",
            |t| t.messages_out,
        ),
        (
            "switchyard_protocol_sent_bytes_total",
            "Body bytes of the messages delivered to clients, by protocol.",
            |t| t.bytes_out,
        ),
    ];
    for (name, help, pick) in families {
        family(out, name, "counter", help);
        for (p, _) in protocols {
            let _ = writeln!(out, "{name}{{protocol=\"{p}\"}} {}", pick(&of(p)));
        }
    }
}

/// ACL denials per protocol and verb, failed logins per protocol.
fn security(
    out: &mut String,
    ctx: &Ctx,
    protocols: &[(&&'static str, &crate::conns::ProtocolCounters)],
) {
    family(
        out,
        "switchyard_acl_denied_total",
        "counter",
        "Operations refused by the ACL, per protocol and verb.",
    );
    let denials = ctx.broker.acl_denials();
    for (p, _) in protocols {
        for verb in switchyard_core::Verb::ALL {
            let n = denials
                .iter()
                .find(|(dp, dv, _)| dp == *p && *dv == verb)
                .map_or(0, |d| d.2);
            let _ = writeln!(
                out,
                "switchyard_acl_denied_total{{protocol=\"{p}\",verb=\"{verb}\"}} {n}"
            );
        }
    }
    family(
        out,
        "switchyard_auth_failures_total",
        "counter",
        "Failed logins (bad credentials, or none when anonymous access is off).",
    );
    let failures = ctx.broker.auth_failures();
    for (p, _) in protocols {
        let n = failures.iter().find(|(fp, _)| fp == *p).map_or(0, |f| f.1);
        let _ = writeln!(
            out,
            "switchyard_auth_failures_total{{protocol=\"{p}\"}} {n}"
        );
    }
}
