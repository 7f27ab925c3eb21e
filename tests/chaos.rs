//! Chaos on real processes: a 3-node cluster whose peer links all pass through
//! fault proxies, under continuous appends and reads, while a nemesis kills
//! leaders (kill -9, then restart), pauses nodes (SIGSTOP/SIGCONT), partitions
//! them (symmetric and one-way), restarts leaders gracefully and removes nodes
//! from the groups and adds them back. Afterwards everything heals, the nodes
//! converge, every node's log is read back, and the history checker compares what clients
//! were told with what the logs hold. Retention (1 MiB segments, a few MiB per
//! partition) and periodic client trims remove most of each log during the run: an
//! acknowledged record is excused from a node's final log only when its index is
//! below the log start that node named when the final read asked for it.
//!
//! The default run is sized for CI (at least 10 faults of each kind, about two
//! minutes). `RINGLOG_CHAOS_MINUTES=N` runs the nemesis for N minutes instead;
//! `RINGLOG_CHAOS_TLS=1` turns TLS on every port of every node, the clients' and the
//! metric scrapes' included (docs/security.md).

mod chaos_support;
mod cluster_support;

use std::time::Duration;

use chaos_support::{ChaosPlan, NODES, run_chaos};

#[test]
fn chaos_nothing_acknowledged_is_lost() {
    let plan = match std::env::var("RINGLOG_CHAOS_MINUTES") {
        Ok(minutes) => {
            let minutes: u64 = minutes
                .parse()
                .expect("RINGLOG_CHAOS_MINUTES is a whole number of minutes");
            ChaosPlan::timed(Duration::from_secs(60 * minutes))
        }
        Err(_) => ChaosPlan::ci(),
    };
    let outcome = run_chaos(&plan);
    println!("{}", outcome.summary());
    assert!(outcome.report.is_clean(), "{:#?}", outcome.report);
    assert!(
        outcome.report.acked_records > 1_000,
        "too little was acknowledged to prove anything: {}",
        outcome.summary()
    );
    // Retention and trims remove most of the log during a run; what stays above
    // the log starts must still be enough to prove something.
    let copies_checked =
        outcome.report.acked_records * NODES as u64 - outcome.report.removed_records;
    assert!(
        copies_checked > 3_000,
        "too few acknowledged records left above the log starts to check: {}",
        outcome.summary()
    );
    assert!(
        outcome.trims.acked > 0 && outcome.segments_removed > 0,
        "the run must both trim and remove segments by retention: {}",
        outcome.summary()
    );
    for (kind, count) in outcome.faults.counts() {
        assert!(
            count >= plan.faults_min_each,
            "only {count} faults of kind {kind}: {}",
            outcome.summary()
        );
    }
}
