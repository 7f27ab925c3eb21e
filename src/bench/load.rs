//! The load: clients that keep appends outstanding (closed loop) or send them on a
//! schedule (open loop), and the tally of what the measured ones took.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;

use super::cpu::{CpuSample, CpuUsed};
use super::progress::{Progress, Snapshot, write_stderr};
use super::{BenchConfig, BenchReport, Limit, Percentiles};
use crate::client::{Client, ClientConfig};

/// Whether an append about to be sent is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Turn {
    Warmup,
    Measured,
    Stop,
}

/// What the clients share while running.
struct Tally {
    limit: Limit,
    /// When the warmup ended; `None` while it lasts.
    measuring_since: Cell<Option<Instant>>,
    /// Records taken from the budget of [`Limit::Records`].
    claimed: Cell<u64>,
    records: Cell<u64>,
    errors: Cell<u64>,
    /// When the last measured append was answered.
    last_answer: Cell<Option<Instant>>,
    latency: RefCell<Histogram<u64>>,
}

impl Tally {
    fn new(limit: Limit) -> Tally {
        Tally {
            limit,
            measuring_since: Cell::new(None),
            claimed: Cell::new(0),
            records: Cell::new(0),
            errors: Cell::new(0),
            last_answer: Cell::new(None),
            latency: RefCell::new(
                Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
            ),
        }
    }

    /// Decides about an append of `batch` records whose turn is `at`; a measured
    /// append of a record budget takes its records from the budget.
    fn turn(&self, at: Instant, batch: u64) -> Turn {
        let Some(since) = self.measuring_since.get().filter(|since| at >= *since) else {
            return Turn::Warmup;
        };
        match self.limit {
            Limit::Duration(d) if at >= since + d => Turn::Stop,
            Limit::Duration(_) => Turn::Measured,
            Limit::Records(n) if self.claimed.get() >= n => Turn::Stop,
            Limit::Records(_) => {
                self.claimed.set(self.claimed.get() + batch);
                Turn::Measured
            }
        }
    }

    fn answered(&self, ok: bool, batch: u64, latency: Duration) {
        self.last_answer.set(Some(Instant::now()));
        if ok {
            self.records.set(self.records.get() + batch);
            let micros = (latency.as_micros() as u64).clamp(1, 60_000_000);
            let _ = self.latency.borrow_mut().record(micros);
        } else {
            self.errors.set(self.errors.get() + 1);
        }
    }

    /// The measured time: from the end of the warmup to the last measured answer,
    /// and at least the whole duration of a [`Limit::Duration`].
    fn seconds(&self, now: Instant) -> f64 {
        let Some(since) = self.measuring_since.get() else {
            return 0.0;
        };
        let last = self.last_answer.get().unwrap_or(now);
        let until = match self.limit {
            Limit::Duration(d) => last.max(since + d),
            Limit::Records(_) => last,
        };
        until.saturating_duration_since(since).as_secs_f64()
    }
}

/// Runs the benchmark on the current glommio executor.
pub async fn run(config: BenchConfig) -> Result<BenchReport, crate::client::ClientError> {
    let clients = connect(&config);
    let partitions = match config.partitions {
        Some(p) => p.max(1),
        None => (clients[0].metadata().await?.partitions.len() as u32).max(1),
    };
    let tally = Rc::new(Tally::new(config.limit));
    let started = Instant::now();
    let tasks = spawn_senders(&config, &clients, partitions, &tally, started);
    let cpu_at_start = Cell::new(None);
    let measure = async {
        glommio::timer::sleep(config.warmup).await;
        tally.measuring_since.set(Some(Instant::now()));
        cpu_at_start.set(Some(CpuSample::take(&config.server_pids)));
        for task in tasks {
            task.await;
        }
    };
    let mut progress = Progress::new(config.progress, config.limit, config.warmup);
    futures_lite::future::or(measure, show_progress(&mut progress, &tally, started)).await;
    if let Some(text) = progress.finish() {
        write_stderr(&text);
    }
    let seconds = tally.seconds(Instant::now());
    let cpu_at_end = CpuSample::take(&config.server_pids);
    let cpu = (cpu_at_start.take()).map_or_else(CpuUsed::default, |start| cpu_at_end.since(&start));
    Ok(report(config, partitions, &tally, seconds, cpu))
}

/// The connections the clients share round robin (etcd's benchmark has the same
/// split); every sender of a connection may be outstanding on it, so that the
/// benchmark's own client is not what limits the load.
fn connect(config: &BenchConfig) -> Vec<Rc<Client>> {
    let connections = config.connections_used();
    let mut client_config = ClientConfig::new(config.addrs.clone());
    client_config.tls = config.tls.as_ref().map(|t| t.0.clone());
    // Client i uses connection i mod N, so the busiest connection carries
    // ⌈C / N⌉ clients' senders.
    let senders_per_connection = config.clients.div_ceil(connections) * config.inflight.max(1);
    client_config.inflight_requests_max = client_config
        .inflight_requests_max
        .max(senders_per_connection as usize);
    (0..connections)
        .map(|_| Rc::new(Client::new(client_config.clone())))
        .collect()
}

/// Starts one task per append kept outstanding: `inflight` for each client.
fn spawn_senders(
    config: &BenchConfig,
    clients: &[Rc<Client>],
    partitions: u32,
    tally: &Rc<Tally>,
    started: Instant,
) -> Vec<glommio::Task<()>> {
    let senders = config.clients * config.inflight.max(1);
    let connections = config.connections_used();
    let payload = Bytes::from(vec![b'x'; config.record_bytes]);
    let batch = config.batch.max(1);
    let interval = config
        .rate_records_per_sec
        .map(|rate| Duration::from_secs_f64(senders as f64 * batch as f64 / rate.max(1) as f64));
    (0..senders)
        .map(|sender| {
            let client = clients[(sender % config.clients % connections) as usize].clone();
            let (tally, payload) = (tally.clone(), payload.clone());
            let partition = sender % partitions;
            // Open-loop senders start staggered so that sends spread evenly.
            let scheduled = interval.map(|i| started + i.mul_f64(sender as f64 / senders as f64));
            let sender = Sender {
                client,
                tally,
                payload,
                partition,
                batch,
                scheduled,
                interval,
            };
            glommio::spawn_local(sender.run())
        })
        .collect()
}

/// One append kept outstanding: sends, awaits the answer, and sends again (closed
/// loop), or sends at its scheduled times (open loop), until the tally says stop.
struct Sender {
    client: Rc<Client>,
    tally: Rc<Tally>,
    payload: Bytes,
    partition: u32,
    batch: u32,
    /// The next send's time in an open loop.
    scheduled: Option<Instant>,
    /// The time between one sender's sends in an open loop.
    interval: Option<Duration>,
}

impl Sender {
    async fn run(mut self) {
        let batch = self.batch;
        loop {
            let at = match (self.scheduled, self.interval) {
                (Some(at), Some(step)) => {
                    let now = Instant::now();
                    if at > now {
                        glommio::timer::sleep(at - now).await;
                    }
                    self.scheduled = Some(at + step);
                    at
                }
                _ => Instant::now(),
            };
            let turn = self.tally.turn(at, u64::from(batch));
            if turn == Turn::Stop {
                break;
            }
            let records = vec![self.payload.clone(); batch as usize];
            let outcome = self.client.append(self.partition, records).await;
            if turn == Turn::Measured {
                self.tally
                    .answered(outcome.is_ok(), u64::from(batch), at.elapsed());
            }
        }
    }
}

/// Shows progress on stderr every tick, until the measurement ends (it never does
/// by itself).
async fn show_progress(progress: &mut Progress, tally: &Tally, started: Instant) {
    let tick = progress.tick_every();
    loop {
        glommio::timer::sleep(tick).await;
        let now = Instant::now();
        let snapshot = Snapshot {
            warmup_elapsed: now.saturating_duration_since(started),
            measuring: tally
                .measuring_since
                .get()
                .map(|since| now.saturating_duration_since(since)),
            records: tally.records.get(),
            errors: tally.errors.get(),
        };
        if let Some(text) = progress.update(&snapshot) {
            write_stderr(&text);
        }
    }
}

/// The report of a finished run.
fn report(
    config: BenchConfig,
    partitions: u32,
    tally: &Tally,
    seconds: f64,
    cpu: CpuUsed,
) -> BenchReport {
    let records = tally.records.get();
    let latency = tally.latency.borrow();
    let per_second = |amount: f64| if seconds > 0.0 { amount / seconds } else { 0.0 };
    BenchReport {
        partitions,
        records,
        errors: tally.errors.get(),
        seconds,
        records_per_sec: per_second(records as f64),
        mb_per_sec: per_second(records as f64 * config.record_bytes as f64 / 1e6),
        latency_us: Percentiles {
            p50: latency.value_at_quantile(0.50),
            p90: latency.value_at_quantile(0.90),
            p99: latency.value_at_quantile(0.99),
            p999: latency.value_at_quantile(0.999),
            max: latency.max(),
        },
        server_cpu_seconds: cpu.seconds,
        server_cpu_threads: cpu.threads,
        machine: super::Machine::read(),
        config,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Claims turns from many interleaved senders until each is told to stop.
    fn measured_appends(tally: &Tally, senders: usize, batch: u64) -> u64 {
        let mut running = vec![true; senders];
        let mut appends = 0;
        while running.iter().any(|r| *r) {
            for r in running.iter_mut().filter(|r| **r) {
                match tally.turn(Instant::now(), batch) {
                    Turn::Measured => appends += 1,
                    Turn::Stop => *r = false,
                    Turn::Warmup => unreachable!("measuring started"),
                }
            }
        }
        appends
    }

    #[test]
    fn a_record_budget_measures_whole_batches_up_to_the_first_past_n() {
        for (n, batch, appends) in [(2000, 1, 2000), (2000, 4, 500), (2000, 3, 667), (1, 64, 1)] {
            let tally = Tally::new(Limit::Records(n));
            assert_eq!(tally.turn(Instant::now(), batch), Turn::Warmup);
            tally.measuring_since.set(Some(Instant::now()));
            // However many senders ask, the budget alone decides.
            assert_eq!(
                measured_appends(&tally, 7, batch),
                appends,
                "n {n} batch {batch}"
            );
            assert_eq!(tally.claimed.get(), appends * batch);
            assert!(appends * batch >= n && appends * batch < n + batch);
        }
    }

    #[test]
    fn records_count_acknowledged_batches_and_failures_count_as_errors() {
        let tally = Tally::new(Limit::Records(10));
        tally.measuring_since.set(Some(Instant::now()));
        tally.answered(true, 4, Duration::from_micros(300));
        tally.answered(false, 4, Duration::from_micros(900));
        tally.answered(true, 4, Duration::from_micros(500));
        assert_eq!((tally.records.get(), tally.errors.get()), (8, 1));
        // Only successful appends are timed.
        assert_eq!(tally.latency.borrow().len(), 2);
        assert!(tally.latency.borrow().max() < 900);
    }

    #[test]
    fn a_duration_stops_turns_after_it_and_counts_at_least_its_length() {
        let tally = Tally::new(Limit::Duration(Duration::from_secs(5)));
        let since = Instant::now();
        assert_eq!(tally.turn(since, 1), Turn::Warmup);
        assert_eq!(tally.seconds(since), 0.0);
        tally.measuring_since.set(Some(since));
        // An open-loop send scheduled in the warmup stays unmeasured when it is late.
        let before = since - Duration::from_millis(1);
        assert_eq!(tally.turn(before, 1), Turn::Warmup);
        assert_eq!(
            tally.turn(since + Duration::from_secs(4), 1),
            Turn::Measured
        );
        assert_eq!(tally.turn(since + Duration::from_secs(5), 1), Turn::Stop);
        tally.last_answer.set(Some(since + Duration::from_secs(1)));
        assert_eq!(tally.seconds(since + Duration::from_secs(6)), 5.0);
        tally
            .last_answer
            .set(Some(since + Duration::from_millis(5_250)));
        assert_eq!(tally.seconds(since + Duration::from_secs(6)), 5.25);
        // A record budget's time ends with its last answer.
        let counted = Tally::new(Limit::Records(10));
        counted.measuring_since.set(Some(since));
        counted
            .last_answer
            .set(Some(since + Duration::from_millis(1_500)));
        assert_eq!(counted.seconds(since + Duration::from_secs(9)), 1.5);
    }
}
