//! The smoke test (CI): every scenario of every protocol, briefly, against
//! Switchyard alone; fails if anything is not delivered.

use crate::brokers;
use crate::driver::{BAD_BODIES, VERIFY_SIZE};
use crate::report::Report;
use crate::scenario::{self, Shape, Target};
use crate::suite::{self, Kind};
use anyhow::{Result, bail};
use std::path::Path;
use std::sync::atomic::Ordering;

/// Runs every scenario of every section against `target` with tiny counts.
pub async fn smoke(target: &Target) -> Result<Vec<Report>> {
    let mut reports = Vec::new();
    println!("{}", Report::table_header());
    for case in suite::all(0.001, 0.25, 20) {
        let mut s = case.scenario.clone();
        match &case.kind {
            Kind::Conns { n } => {
                let r = scenario::conns(target, case.sub_driver.clone(), *n, 1, 8).await?;
                println!(
                    "{:<13} {} idle {} connections: {:.2} KiB each",
                    r.broker, r.connections, r.protocol, r.kib_per_connection
                );
                continue;
            }
            Kind::RelativeRate { .. } => {
                s.rate = Some(1000.0);
                s.count = 250;
            }
            Kind::FixedRate => s.count = s.count.min(500),
            Kind::Throughput => s.count = s.count.max(200),
        }
        // Check every delivered body (length and content), not only the count.
        let verify = !matches!(s.shape, Shape::ReqRep { .. });
        VERIFY_SIZE.store(if verify { s.size } else { 0 }, Ordering::Relaxed);
        let bad_before = BAD_BODIES.load(Ordering::Relaxed);
        let r = scenario::run(
            &s,
            target,
            case.pub_driver.as_ref(),
            case.sub_driver.as_ref(),
        )
        .await;
        VERIFY_SIZE.store(0, Ordering::Relaxed);
        let r = r.map_err(|e| e.context(format!("{}: {}", case.section, s.name)))?;
        println!("{}", r.table_row());
        let bad = BAD_BODIES.load(Ordering::Relaxed) - bad_before;
        if bad > 0 {
            bail!(
                "{}: {}: {bad} bodies differ from what was sent",
                case.section,
                s.name
            );
        }
        if r.delivered < r.expected || r.sent < s.count {
            bail!(
                "{}: {}: {} sent of {}, {} delivered of {}",
                case.section,
                s.name,
                r.sent,
                s.count,
                r.delivered,
                r.expected
            );
        }
        // Persistent publishers wait for confirmations (AMQP confirms,
        // STOMP receipts, MQTT PUBACKs after the journal has the message).
        if case.persistent && r.confirm_us.is_none() {
            bail!("{}: {}: no confirmations recorded", case.section, s.name);
        }
        reports.push(r);
    }
    Ok(reports)
}

/// Starts `bin` (a debug or release Switchyard) and runs [`smoke`].
pub async fn smoke_binary(bin: &Path) -> Result<()> {
    let sy = brokers::start_switchyard(bin).await?;
    let n = smoke(&sy.target).await?.len();
    println!("smoke: {n} scenarios passed");
    Ok(())
}
