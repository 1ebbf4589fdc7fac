//! Connection admission and counting: the total and per-IP caps from
//! `[limits]`, and the per-protocol gauges `/metrics` reports.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// IP addresses whose connection rate is tracked at once.
const MAX_RATE_ENTRIES: usize = 100_000;

#[derive(Debug, Default)]
pub(crate) struct ProtocolCounters {
    pub(crate) active: AtomicU64,
    pub(crate) total: AtomicU64,
    pub(crate) refused: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Admission {
    max_total: u64,
    max_per_ip: u64,
    total: AtomicU64,
    per_ip: Mutex<HashMap<IpAddr, u64>>,
    /// New connections per second per IP (0: unlimited), the bucket's
    /// size (the burst), and each IP's token bucket: (tokens, last refill).
    rate_per_ip: u32,
    burst_per_ip: u32,
    rates: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    pub(crate) by_protocol: HashMap<&'static str, ProtocolCounters>,
}

impl Admission {
    pub(crate) fn new(max_total: u64, max_per_ip: u64, protocols: &[&'static str]) -> Self {
        Admission {
            max_total,
            max_per_ip,
            total: AtomicU64::new(0),
            per_ip: Mutex::new(HashMap::new()),
            rate_per_ip: 0,
            burst_per_ip: 0,
            rates: Mutex::new(HashMap::new()),
            by_protocol: protocols
                .iter()
                .map(|p| (*p, ProtocolCounters::default()))
                .collect(),
        }
    }

    /// Limits new connections per second from one IP address (0: none),
    /// allowing bursts of `burst` (0: `rate`).
    pub(crate) fn with_rate_per_ip(mut self, rate: u32, burst: u32) -> Self {
        self.rate_per_ip = rate;
        self.burst_per_ip = if burst == 0 { rate } else { burst };
        self
    }

    /// Takes a token from `ip`'s bucket; false when it is empty.
    fn rate_ok(&self, ip: IpAddr) -> bool {
        if self.rate_per_ip == 0 {
            return true;
        }
        let rate = f64::from(self.rate_per_ip);
        let burst = f64::from(self.burst_per_ip);
        let now = Instant::now();
        let mut rates = self.rates.lock();
        if rates.len() >= MAX_RATE_ENTRIES && !rates.contains_key(&ip) {
            // Buckets idle for burst/rate seconds are full again: forget them.
            let refill = Duration::from_secs_f64(burst / rate);
            rates.retain(|_, (_, at)| now.duration_since(*at) < refill);
        }
        let (tokens, at) = rates.entry(ip).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Admits a connection, or refuses it when a cap is reached. The guard
    /// releases the slot when dropped.
    pub(crate) fn admit(self: &Arc<Self>, protocol: &'static str, ip: IpAddr) -> Option<Admitted> {
        let counters = self.by_protocol.get(protocol);
        if !self.rate_ok(ip) {
            if let Some(c) = counters {
                c.refused.fetch_add(1, Ordering::Relaxed);
            }
            return None;
        }
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            if let Some(c) = counters {
                c.refused.fetch_add(1, Ordering::Relaxed);
            }
            return None;
        }
        {
            let mut per_ip = self.per_ip.lock();
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                drop(per_ip);
                self.total.fetch_sub(1, Ordering::AcqRel);
                if let Some(c) = counters {
                    c.refused.fetch_add(1, Ordering::Relaxed);
                }
                return None;
            }
            *n += 1;
        }
        if let Some(c) = counters {
            c.active.fetch_add(1, Ordering::Relaxed);
            c.total.fetch_add(1, Ordering::Relaxed);
        }
        Some(Admitted {
            admission: self.clone(),
            protocol,
            ip: Some(ip),
        })
    }

    /// Counts a connection of `protocol` carried inside a connection that
    /// already holds a slot (a WebSocket on the HTTP listener): the
    /// protocol's gauges move, the caps are not charged twice.
    pub(crate) fn track(self: &Arc<Self>, protocol: &'static str) -> Admitted {
        if let Some(c) = self.by_protocol.get(protocol) {
            c.active.fetch_add(1, Ordering::Relaxed);
            c.total.fetch_add(1, Ordering::Relaxed);
        }
        Admitted {
            admission: self.clone(),
            protocol,
            ip: None,
        }
    }

    pub(crate) fn active(&self) -> u64 {
        self.total.load(Ordering::Acquire)
    }
}

/// A held connection slot.
#[derive(Debug)]
pub(crate) struct Admitted {
    admission: Arc<Admission>,
    protocol: &'static str,
    /// `None` for a tracked (uncharged) connection.
    ip: Option<IpAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let a = &self.admission;
        if let Some(ip) = self.ip {
            a.total.fetch_sub(1, Ordering::AcqRel);
            let mut per_ip = a.per_ip.lock();
            if let Some(n) = per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
        if let Some(c) = a.by_protocol.get(self.protocol) {
            c.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_rate_per_ip() {
        let a = Arc::new(Admission::new(1000, 1000, &["x"]).with_rate_per_ip(3, 0));
        let ip1: IpAddr = "10.0.0.1".parse().unwrap();
        let ip2: IpAddr = "10.0.0.2".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| a.admit("x", ip1).unwrap()).collect();
        assert!(a.admit("x", ip1).is_none(), "burst spent");
        assert!(a.admit("x", ip2).is_some(), "another IP has its own bucket");
        std::thread::sleep(Duration::from_millis(400));
        assert!(a.admit("x", ip1).is_some(), "refilled");
        drop(held);
    }

    #[test]
    fn a_burst_larger_than_the_rate_then_the_rate() {
        let a = Arc::new(Admission::new(1000, 1000, &["x"]).with_rate_per_ip(10, 50));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..50).map(|_| a.admit("x", ip).unwrap()).collect();
        assert!(a.admit("x", ip).is_none(), "burst of 50 spent");
        std::thread::sleep(Duration::from_millis(350));
        let more = (0..10).filter_map(|_| a.admit("x", ip)).count();
        assert!(
            (2..=5).contains(&more),
            "refilled at 10/s, not to the burst: {more}"
        );
        drop(held);
    }

    #[test]
    fn caps_total_and_per_ip() {
        let a = Arc::new(Admission::new(3, 2, &["x"]));
        let ip1: IpAddr = "10.0.0.1".parse().unwrap();
        let ip2: IpAddr = "10.0.0.2".parse().unwrap();
        let g1 = a.admit("x", ip1).unwrap();
        let _g2 = a.admit("x", ip1).unwrap();
        assert!(a.admit("x", ip1).is_none(), "per-IP cap");
        let _g3 = a.admit("x", ip2).unwrap();
        assert!(a.admit("x", ip2).is_none(), "total cap");
        drop(g1);
        assert!(a.admit("x", ip1).is_some());
        assert_eq!(a.by_protocol["x"].refused.load(Ordering::Relaxed), 2);
        let before = a.active();
        let t = a.track("x");
        assert_eq!(a.active(), before, "tracking does not take a slot");
        assert_eq!(a.by_protocol["x"].active.load(Ordering::Relaxed), 3);
        drop(t);
        assert_eq!(a.by_protocol["x"].active.load(Ordering::Relaxed), 2);
    }
}
