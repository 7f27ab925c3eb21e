//! `ringlog bench`: load a cluster with appends and report throughput and latency.
//!
//! Closed loop by default: C clients, each keeping `inflight` appends of `batch`
//! records outstanding. With `rate_records_per_sec` it is an open loop: sends are
//! scheduled at fixed times and latency is measured from the scheduled time, not
//! the actual one, so a stall is charged to every request it delayed (no
//! coordinated omission).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;

use crate::client::{Client, ClientConfig};

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub addrs: Vec<String>,
    /// Partitions to spread appends over; `None` means every partition the cluster has.
    pub partitions: Option<u32>,
    pub clients: u32,
    /// Appends each client keeps outstanding (pipelined on its connection).
    pub inflight: u32,
    pub record_bytes: usize,
    pub batch: u32,
    pub duration: Duration,
    pub warmup: Duration,
    /// Open loop at this many records per second, across all clients.
    pub rate_records_per_sec: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BenchReport {
    pub records: u64,
    pub errors: u64,
    pub seconds: f64,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    /// Microseconds per append request.
    pub latency_us: Percentiles,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl BenchReport {
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "records": self.records,
            "errors": self.errors,
            "seconds": self.seconds,
            "records_per_sec": self.records_per_sec,
            "mb_per_sec": self.mb_per_sec,
            "latency_us": {
                "p50": self.latency_us.p50,
                "p90": self.latency_us.p90,
                "p99": self.latency_us.p99,
                "p999": self.latency_us.p999,
                "max": self.latency_us.max,
            },
        })
        .to_string()
    }

    pub fn to_text(&self) -> String {
        let l = &self.latency_us;
        format!(
            "{} records in {:.1} s: {:.0} records/s, {:.1} MB/s, {} errors\nlatency per append (µs): p50 {} p90 {} p99 {} p99.9 {} max {}",
            self.records,
            self.seconds,
            self.records_per_sec,
            self.mb_per_sec,
            self.errors,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max
        )
    }
}

/// What the clients share while running.
struct Tally {
    measuring: Cell<bool>,
    records: Cell<u64>,
    errors: Cell<u64>,
    latency: RefCell<Histogram<u64>>,
}

/// Runs the benchmark on the current glommio executor.
pub async fn run(config: BenchConfig) -> Result<BenchReport, crate::client::ClientError> {
    let client = Rc::new(Client::new(ClientConfig::new(config.addrs.clone())));
    let partitions = match config.partitions {
        Some(p) => p.max(1),
        None => (client.metadata().await?.partitions.len() as u32).max(1),
    };
    let tally = Rc::new(Tally {
        measuring: Cell::new(false),
        records: Cell::new(0),
        errors: Cell::new(0),
        latency: RefCell::new(
            Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
        ),
    });
    let payload = Bytes::from(vec![b'x'; config.record_bytes]);
    let started = Instant::now();
    let end = started + config.warmup + config.duration;
    let senders = config.clients * config.inflight.max(1);
    let interval = config.rate_records_per_sec.map(|rate| {
        Duration::from_secs_f64(senders as f64 * config.batch.max(1) as f64 / rate.max(1) as f64)
    });
    let tasks: Vec<_> = (0..senders)
        .map(|sender| {
            let (client, tally, payload) = (client.clone(), tally.clone(), payload.clone());
            let batch = config.batch.max(1) as usize;
            let partition = sender % partitions;
            // Open-loop senders start staggered so that sends spread evenly.
            let offset = interval.map(|i| i.mul_f64(sender as f64 / senders as f64));
            glommio::spawn_local(async move {
                let mut scheduled = offset.map(|o| started + o);
                while Instant::now() < end {
                    if let (Some(at), Some(step)) = (scheduled, interval) {
                        let now = Instant::now();
                        if at > now {
                            glommio::timer::sleep(at - now).await;
                        }
                        scheduled = Some(at + step);
                    }
                    let sent = Instant::now();
                    let from = scheduled.map_or(sent, |next| next - interval.unwrap_or_default());
                    let outcome = client.append(partition, vec![payload.clone(); batch]).await;
                    if !tally.measuring.get() {
                        continue;
                    }
                    match outcome {
                        Ok(_) => {
                            tally.records.set(tally.records.get() + batch as u64);
                            let micros = from.elapsed().as_micros().max(1) as u64;
                            let _ = tally.latency.borrow_mut().record(micros.min(60_000_000));
                        }
                        Err(_) => tally.errors.set(tally.errors.get() + 1),
                    }
                }
            })
        })
        .collect();
    glommio::timer::sleep(config.warmup).await;
    tally.measuring.set(true);
    let measured_from = Instant::now();
    progress(&tally, measured_from, end).await;
    for task in tasks {
        task.await;
    }
    let seconds = measured_from.elapsed().as_secs_f64();
    let records = tally.records.get();
    let latency = tally.latency.borrow();
    Ok(BenchReport {
        records,
        errors: tally.errors.get(),
        seconds,
        records_per_sec: records as f64 / seconds,
        mb_per_sec: records as f64 * config.record_bytes as f64 / seconds / 1e6,
        latency_us: Percentiles {
            p50: latency.value_at_quantile(0.50),
            p90: latency.value_at_quantile(0.90),
            p99: latency.value_at_quantile(0.99),
            p999: latency.value_at_quantile(0.999),
            max: latency.max(),
        },
    })
}

/// One progress line a second on stderr while measuring.
async fn progress(tally: &Tally, from: Instant, end: Instant) {
    let mut last = 0;
    while Instant::now() + Duration::from_secs(1) <= end {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        let records = tally.records.get();
        eprintln!(
            "[{:>4.0} s] {:>9} records/s, {} errors",
            from.elapsed().as_secs_f64(),
            records - last,
            tally.errors.get()
        );
        last = records;
    }
    let rest = end.saturating_duration_since(Instant::now());
    glommio::timer::sleep(rest).await;
}
