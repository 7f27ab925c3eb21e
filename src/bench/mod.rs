//! `ringlog bench`: load a cluster with appends and report throughput and latency.
//!
//! Closed loop by default: C clients, each keeping `inflight` appends of `batch`
//! records outstanding. With `rate_records_per_sec` it is an open loop: sends are
//! scheduled at fixed times and latency is measured from the scheduled time, not
//! the actual one, so a stall is charged to every request it delayed (no
//! coordinated omission).
//!
//! What is measured: an append is *measured* when its turn comes (closed loop: when
//! it is sent; open loop: its scheduled time) after the warmup has ended. Appends of
//! the warmup, even those still in flight or sent late after it, are neither
//! counted nor timed. The
//! measurement stops on a [`Limit`]:
//! - [`Limit::Duration`]: no append is measured whose turn comes after the duration;
//!   the ones in flight then are awaited and counted. `seconds` runs from the end of
//!   the warmup to the later of the duration's end and the last measured answer.
//! - [`Limit::Records`] (`--count N`): measured appends are taken from a budget of N
//!   records, a whole batch at a time, before they are sent, so ⌈N / batch⌉
//!   appends are measured in all, whatever the number of clients and appends in
//!   flight. When none fails, `records` is ⌈N / batch⌉ × batch: exactly N when the
//!   batch divides N, otherwise fewer than one batch more. A failed append is
//!   counted in `errors`, its records are not acknowledged and not counted, and it
//!   is not retried, so `records` is then below N. `seconds` runs from the end of
//!   the warmup to the last measured answer.
//!
//! The parts: `load` runs the clients and tallies what they measure, `cpu`
//! reads the servers' CPU time from `/proc` and `threads` splits it by thread,
//! `machine` reads what the benchmark's machine does with idle CPUs, `report`
//! says what was measured (text and JSON), and `progress` shows it on stderr while
//! the benchmark runs.

mod cpu;
mod load;
mod machine;
mod progress;
mod report;
mod threads;

use std::time::Duration;

pub use load::run;
pub use machine::Machine;
pub use report::{BenchReport, Percentiles};
pub use threads::ThreadCpu;

#[derive(Clone, Debug, PartialEq)]
pub struct BenchConfig {
    pub addrs: Vec<String>,
    /// TLS to every node; None connects in plaintext.
    pub tls: Option<BenchTls>,
    /// Partitions to spread appends over; `None` means every partition the cluster has.
    pub partitions: Option<u32>,
    pub clients: u32,
    /// Appends each client keeps outstanding (pipelined on its connection).
    pub inflight: u32,
    /// Connections (one `Client` each) the clients share round robin; at most `clients`.
    pub connections: u32,
    pub record_bytes: usize,
    pub batch: u32,
    /// When the measurement stops.
    pub limit: Limit,
    pub warmup: Duration,
    /// Open loop at this many records per second, across all clients.
    pub rate_records_per_sec: Option<u64>,
    /// How progress is shown on stderr while the benchmark runs.
    pub progress: ProgressStyle,
    /// Server processes on this machine whose CPU time (user + system, from
    /// `/proc`) is charged to the measured records and split by thread (`bench
    /// --local` sets them, node 1 first).
    pub server_pids: Vec<u32>,
}

/// The benchmark clients' TLS; equal when it is the same configuration.
#[derive(Clone, Debug)]
pub struct BenchTls(pub std::sync::Arc<rustls::ClientConfig>);

impl PartialEq for BenchTls {
    fn eq(&self, other: &BenchTls) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl BenchConfig {
    /// The connections the clients actually share: at least one, at most one per client.
    pub fn connections_used(&self) -> u32 {
        self.connections.clamp(1, self.clients.max(1))
    }
}

/// When a benchmark stops measuring (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Measure appends whose turn comes within this long after the warmup.
    Duration(Duration),
    /// Measure ⌈N / batch⌉ appends: N records, rounded up to whole batches.
    Records(u64),
}

/// Progress on stderr while the benchmark runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressStyle {
    /// One line rewritten in place (for a terminal), cleared at the end.
    Live,
    /// One plain line per second while measuring (for logs and pipes).
    Lines,
    Off,
}

impl ProgressStyle {
    /// `Live` when stderr is a terminal, `Lines` otherwise.
    pub fn for_stderr() -> ProgressStyle {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            ProgressStyle::Live
        } else {
            ProgressStyle::Lines
        }
    }
}
