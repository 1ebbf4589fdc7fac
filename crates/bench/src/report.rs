//! What a scenario run measured, printed as a table row or a JSON line.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub samples: u64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(Latency {
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            samples: h.len(),
        })
    }
}

/// One run of one scenario against one broker.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub broker: String,
    pub scenario: String,
    pub publish_protocol: String,
    pub subscribe_protocol: String,
    pub size: usize,
    pub publishers: usize,
    pub subscribers: usize,
    /// Messages published.
    pub sent: u64,
    /// Messages received over all subscribers.
    pub delivered: u64,
    /// Deliveries the scenario expected.
    pub expected: u64,
    pub seconds: f64,
    /// Deliveries per second over all subscribers.
    pub rate: f64,
    /// Publish → subscriber latency.
    pub latency_us: Option<Latency>,
    /// Publish → confirmation (PUBACK, publisher confirm, RECEIPT) latency.
    pub confirm_us: Option<Latency>,
    /// Broker CPU seconds during the run.
    pub broker_cpu_s: f64,
    /// Broker CPU seconds per million deliveries.
    pub broker_cpu_s_per_million: f64,
    /// Load generator CPU seconds during the run.
    pub generator_cpu_s: f64,
    pub broker_rss_kib: Option<u64>,
    /// The subscribing driver's mode (QoS, acks, persistence).
    pub mode: String,
    /// The store's figures during the run (Switchyard's `/metrics`).
    pub store: Option<StoreFigures>,
    /// The machine's hypervisor steal during the run, % of all CPU time
    /// (set by `compare`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steal_pct: Option<f64>,
}

/// What the durable store did during a run.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct StoreFigures {
    pub fsyncs: u64,
    pub fsyncs_per_s: f64,
    pub batches: u64,
    pub records: u64,
    /// Records appended per write batch.
    pub records_per_batch: f64,
}

impl Report {
    pub fn table_header() -> &'static str {
        "broker        scenario              size  pub  sub     delivered   rate(msg/s)  p50(us)  p99(us)  p999(us)  cpu-s/M  gen-cpu-s"
    }

    pub fn table_row(&self) -> String {
        let lat = |f: fn(&Latency) -> f64| {
            self.latency_us
                .as_ref()
                .map_or_else(|| "-".to_owned(), |l| format!("{:.0}", f(l)))
        };
        format!(
            "{:<13} {:<20} {:>5} {:>4} {:>4} {:>13} {:>13.0} {:>8} {:>8} {:>9} {:>8.2} {:>10.2}",
            self.broker,
            self.scenario,
            self.size,
            self.publishers,
            self.subscribers,
            format!("{}/{}", self.delivered, self.expected),
            self.rate,
            lat(|l| l.p50),
            lat(|l| l.p99),
            lat(|l| l.p999),
            self.broker_cpu_s_per_million,
            self.generator_cpu_s,
        )
    }
}
