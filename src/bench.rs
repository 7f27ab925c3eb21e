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

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;

use crate::client::{Client, ClientConfig};

#[derive(Clone, Debug, PartialEq)]
pub struct BenchConfig {
    pub addrs: Vec<String>,
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
    /// `/proc`) is charged to the measured records (`bench --local` sets them).
    pub server_pids: Vec<u32>,
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

#[derive(Clone, Debug, PartialEq)]
pub struct BenchReport {
    /// The configuration the benchmark ran with.
    pub config: BenchConfig,
    /// Partitions appended to (the cluster's count when the config left it open).
    pub partitions: u32,
    /// Records acknowledged by measured appends.
    pub records: u64,
    /// Measured appends that failed (requests, not records).
    pub errors: u64,
    pub seconds: f64,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    /// Microseconds per successful measured append.
    pub latency_us: Percentiles,
    /// CPU seconds the server processes used while measuring, when known.
    pub server_cpu_seconds: Option<f64>,
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
        let c = &self.config;
        let (duration_s, count) = match c.limit {
            Limit::Duration(d) => (Some(d.as_secs_f64()), None),
            Limit::Records(n) => (None, Some(n)),
        };
        serde_json::json!({
            "mode": self.mode(),
            "clients": c.clients,
            "inflight": c.inflight,
            "connections": c.connections_used(),
            "record_size": c.record_bytes,
            "batch": c.batch,
            "partitions": self.partitions,
            "rate": c.rate_records_per_sec,
            "duration_s": duration_s,
            "count": count,
            "warmup_s": c.warmup.as_secs_f64(),
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
            "server_cpu_seconds": self.server_cpu_seconds,
            "server_cpu_us_per_record": self.server_cpu_us_per_record(),
        })
        .to_string()
    }

    /// Server CPU time per acknowledged record, in microseconds, when known.
    pub fn server_cpu_us_per_record(&self) -> Option<f64> {
        let seconds = self.server_cpu_seconds?;
        (self.records > 0).then(|| seconds * 1e6 / self.records as f64)
    }

    pub fn to_text(&self) -> String {
        let c = &self.config;
        let l = &self.latency_us;
        let rate = c
            .rate_records_per_sec
            .map_or(String::new(), |r| format!(" at {} records/s", group(r)));
        let connections = c.connections_used();
        let limit = match c.limit {
            Limit::Duration(d) => format!("{:.1} s", d.as_secs_f64()),
            Limit::Records(n) => format!("{} records", group(n)),
        };
        format!(
            "{} loop{rate}: {} clients x {} in flight on {} connection{}, {} partition{}, {}-byte records, {} per append, {limit} after {:.1} s warmup\n\
             {} records in {:.1} s: {:.0} records/s, {:.1} MB/s, {} errors\n\
             latency per append (µs): p50 {} p90 {} p99 {} p99.9 {} max {}",
            self.mode(),
            c.clients,
            c.inflight,
            connections,
            if connections == 1 { "" } else { "s" },
            self.partitions,
            if self.partitions == 1 { "" } else { "s" },
            c.record_bytes,
            c.batch,
            c.warmup.as_secs_f64(),
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
        ) + &self.cpu_text()
    }

    /// The server CPU line, when the servers' CPU time is known.
    fn cpu_text(&self) -> String {
        match (self.server_cpu_seconds, self.server_cpu_us_per_record()) {
            (Some(seconds), Some(per_record)) => format!(
                "\nserver CPU (all nodes, user + system): {seconds:.2} s, {per_record:.1} µs per record"
            ),
            _ => String::new(),
        }
    }

    fn mode(&self) -> &'static str {
        match self.config.rate_records_per_sec {
            Some(_) => "open",
            None => "closed",
        }
    }
}

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
    // The clients share `connections` `Client`s round robin (etcd's benchmark has the
    // same split); every sender of a connection may be outstanding on it, so that the
    // benchmark's own client is not what limits the load.
    let senders = config.clients * config.inflight.max(1);
    let connections = config.connections_used();
    let mut client_config = ClientConfig::new(config.addrs.clone());
    // Client i uses connection i mod N, so the busiest connection carries
    // ⌈C / N⌉ clients' senders.
    let senders_per_connection = config.clients.div_ceil(connections) * config.inflight.max(1);
    client_config.inflight_requests_max = client_config
        .inflight_requests_max
        .max(senders_per_connection as usize);
    let clients: Vec<Rc<Client>> = (0..connections)
        .map(|_| Rc::new(Client::new(client_config.clone())))
        .collect();
    let partitions = match config.partitions {
        Some(p) => p.max(1),
        None => (clients[0].metadata().await?.partitions.len() as u32).max(1),
    };
    let tally = Rc::new(Tally::new(config.limit));
    let payload = Bytes::from(vec![b'x'; config.record_bytes]);
    let started = Instant::now();
    let batch = config.batch.max(1);
    let interval = config
        .rate_records_per_sec
        .map(|rate| Duration::from_secs_f64(senders as f64 * batch as f64 / rate.max(1) as f64));
    let tasks: Vec<_> = (0..senders)
        .map(|sender| {
            let client = clients[(sender % config.clients % connections) as usize].clone();
            let (tally, payload) = (tally.clone(), payload.clone());
            let partition = sender % partitions;
            // Open-loop senders start staggered so that sends spread evenly.
            let mut scheduled =
                interval.map(|i| started + i.mul_f64(sender as f64 / senders as f64));
            glommio::spawn_local(async move {
                loop {
                    let at = match (scheduled, interval) {
                        (Some(at), Some(step)) => {
                            let now = Instant::now();
                            if at > now {
                                glommio::timer::sleep(at - now).await;
                            }
                            scheduled = Some(at + step);
                            at
                        }
                        _ => Instant::now(),
                    };
                    let turn = tally.turn(at, u64::from(batch));
                    if turn == Turn::Stop {
                        break;
                    }
                    let records = vec![payload.clone(); batch as usize];
                    let outcome = client.append(partition, records).await;
                    if turn == Turn::Measured {
                        tally.answered(outcome.is_ok(), u64::from(batch), at.elapsed());
                    }
                }
            })
        })
        .collect();
    let cpu_at_start = Cell::new(None);
    let measure = async {
        glommio::timer::sleep(config.warmup).await;
        tally.measuring_since.set(Some(Instant::now()));
        cpu_at_start.set(cpu_seconds(&config.server_pids));
        for task in tasks {
            task.await;
        }
    };
    let mut progress = Progress::new(config.progress, config.limit, config.warmup);
    let tick = progress.tick_every();
    let show = async {
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
    };
    futures_lite::future::or(measure, show).await;
    if let Some(text) = progress.finish() {
        write_stderr(&text);
    }
    let seconds = tally.seconds(Instant::now());
    let server_cpu_seconds = cpu_at_start
        .get()
        .zip(cpu_seconds(&config.server_pids))
        .map(|(start, end)| end - start);
    let records = tally.records.get();
    let latency = tally.latency.borrow();
    let per_second = |amount: f64| if seconds > 0.0 { amount / seconds } else { 0.0 };
    Ok(BenchReport {
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
        server_cpu_seconds,
        config,
    })
}

/// User plus system CPU seconds used so far by `pids` (all their threads), from
/// `/proc/PID/stat`; None without pids or when one cannot be read.
fn cpu_seconds(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        ticks += process_cpu_ticks(&stat)?;
    }
    Some(ticks as f64 / ticks_per_second)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The command name
/// (field 2) is in parentheses and may hold spaces, so fields count from the last ')'.
fn process_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name come state (field 3) onwards: utime is field 14, index 11 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn write_stderr(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}

/// The state progress is drawn from.
#[derive(Clone, Copy, Debug)]
struct Snapshot {
    /// Since the benchmark started (warmup included).
    warmup_elapsed: Duration,
    /// Since the warmup ended; `None` during the warmup.
    measuring: Option<Duration>,
    records: u64,
    errors: u64,
}

/// Turns snapshots into what to write on stderr, in the chosen style.
struct Progress {
    style: ProgressStyle,
    limit: Limit,
    warmup: Duration,
    /// Characters of the live line now on screen.
    shown: usize,
    /// Records and measuring time at the last plain line.
    last: (u64, Duration),
}

impl Progress {
    fn new(style: ProgressStyle, limit: Limit, warmup: Duration) -> Progress {
        Progress {
            style,
            limit,
            warmup,
            shown: 0,
            last: (0, Duration::ZERO),
        }
    }

    fn tick_every(&self) -> Duration {
        match self.style {
            ProgressStyle::Live => Duration::from_millis(200),
            ProgressStyle::Lines | ProgressStyle::Off => Duration::from_secs(1),
        }
    }

    fn update(&mut self, s: &Snapshot) -> Option<String> {
        match self.style {
            ProgressStyle::Off => None,
            ProgressStyle::Lines => {
                let elapsed = s.measuring?;
                let (records, at) = self.last;
                let span = elapsed.saturating_sub(at).as_secs_f64();
                // A tick just after the warmup ended would report a rate over nothing.
                if span < 0.1 {
                    return None;
                }
                self.last = (s.records, elapsed);
                let rate = (s.records - records) as f64 / span;
                let target = match self.limit {
                    Limit::Records(n) => format!(", {}/{} records", s.records, n),
                    Limit::Duration(_) => String::new(),
                };
                Some(format!(
                    "[{:>6.1} s] {:>9.0} records/s, {} errors{target}\n",
                    elapsed.as_secs_f64(),
                    rate,
                    s.errors
                ))
            }
            ProgressStyle::Live => {
                let line = live_line(s, self.limit, self.warmup);
                let text = redraw(self.shown, &line);
                self.shown = line.chars().count();
                Some(text)
            }
        }
    }

    /// Clears the live line, if one is shown.
    fn finish(&mut self) -> Option<String> {
        if self.shown == 0 {
            return None;
        }
        let text = redraw(self.shown, "");
        self.shown = 0;
        Some(text)
    }
}

/// The live line: the warmup, or the measured records so far, their mean rate,
/// elapsed time and errors.
fn live_line(s: &Snapshot, limit: Limit, warmup: Duration) -> String {
    let Some(elapsed) = s.measuring else {
        return format!(
            "warming up {:.1} of {} s",
            s.warmup_elapsed.as_secs_f64(),
            warmup.as_secs_f64()
        );
    };
    let seconds = elapsed.as_secs_f64();
    // A rate over the first few milliseconds says nothing yet.
    let rate = if seconds >= 0.1 {
        group((s.records as f64 / seconds).round() as u64)
    } else {
        "-".to_string()
    };
    let (records, of) = match limit {
        Limit::Records(n) => (format!("{}/{}", group(s.records), group(n)), String::new()),
        Limit::Duration(d) => (group(s.records), format!(" of {}", d.as_secs_f64())),
    };
    format!(
        "{seconds:.1}{of} s: {records} records, {rate} records/s, {} errors",
        s.errors
    )
}

/// Text that replaces a line of `shown` characters (cursor at its end) with `line`,
/// leaving the cursor at the end of `line`: with an empty `line`, clears it.
fn redraw(shown: usize, line: &str) -> String {
    let len = line.chars().count();
    let pad = shown.saturating_sub(len);
    let mut text = format!("\r{line}{}", " ".repeat(pad));
    if pad > 0 {
        // Back over the blanks so that the cursor ends where the line does.
        text.push('\r');
        text.push_str(line);
    }
    text
}

/// 1234567 as "1,234,567".
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (k, c) in digits.chars().enumerate() {
        if k > 0 && (digits.len() - k).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(limit: Limit) -> BenchConfig {
        BenchConfig {
            addrs: vec!["127.0.0.1:7400".into()],
            partitions: None,
            clients: 4,
            inflight: 2,
            connections: 1,
            record_bytes: 128,
            batch: 3,
            limit,
            warmup: Duration::from_millis(500),
            rate_records_per_sec: None,
            progress: ProgressStyle::Off,
            server_pids: Vec::new(),
        }
    }

    #[test]
    fn cpu_ticks_come_from_after_the_command_name() {
        let stat = "4242 (ringlog (x) y) S 1 4242 4242 0 -1 4194560 500 0 0 0 1234 567 0 0 20 0 3 0 100 0 0";
        assert_eq!(process_cpu_ticks(stat), Some(1234 + 567));
        assert_eq!(process_cpu_ticks("garbage"), None);
        let own = cpu_seconds(&[std::process::id()]).expect("this process has a stat");
        assert!(own >= 0.0);
        assert_eq!(cpu_seconds(&[]), None);
    }

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

    #[test]
    fn numbers_are_grouped_by_thousands() {
        let cases = [(0, "0"), (999, "999"), (1000, "1,000"), (123456, "123,456")];
        for (n, text) in cases {
            assert_eq!(group(n), text);
        }
        assert_eq!(group(u64::MAX), "18,446,744,073,709,551,615");
    }

    const HALF: Duration = Duration::from_millis(500);

    fn snapshot(measuring_ms: Option<u64>, records: u64, errors: u64) -> Snapshot {
        Snapshot {
            warmup_elapsed: Duration::from_millis(400),
            measuring: measuring_ms.map(Duration::from_millis),
            records,
            errors,
        }
    }

    #[test]
    fn the_live_line_is_rewritten_in_place_and_cleared() {
        let ten = Limit::Duration(Duration::from_secs(10));
        let mut p = Progress::new(ProgressStyle::Live, ten, HALF);
        assert_eq!(p.finish(), None, "nothing to clear yet");
        let warming = "warming up 0.4 of 0.5 s";
        assert_eq!(
            p.update(&snapshot(None, 0, 0)).unwrap(),
            format!("\r{warming}")
        );
        let start = p.update(&snapshot(Some(40), 400, 0)).unwrap();
        assert!(start.starts_with("\r0.0 of 10 s: 400 records, - records/s, 0 errors"));
        let long = p.update(&snapshot(Some(2_000), 16_000, 1)).unwrap();
        assert_eq!(
            long,
            "\r2.0 of 10 s: 16,000 records, 8,000 records/s, 1 errors"
        );
        assert!(!long.contains('\n'));
        // A shorter line blanks what is left of the longer one.
        let mut counted = Progress::new(ProgressStyle::Live, Limit::Records(2000), HALF);
        let wide = counted.update(&snapshot(Some(1_500), 1_500, 0)).unwrap();
        assert_eq!(
            wide,
            "\r1.5 s: 1,500/2,000 records, 1,000 records/s, 0 errors"
        );
        let narrow = counted.update(&snapshot(None, 0, 0)).unwrap();
        let blanks = " ".repeat(wide.len() - 1 - warming.len());
        assert_eq!(narrow, format!("\r{warming}{blanks}\r{warming}"));
        let cleared = format!("\r{}\r", " ".repeat(warming.len()));
        assert_eq!(counted.finish().unwrap(), cleared);
        assert_eq!(counted.finish(), None);
    }

    #[test]
    fn plain_lines_give_the_rate_of_the_last_interval_while_measuring() {
        let mut p = Progress::new(ProgressStyle::Lines, Limit::Records(5000), HALF);
        assert_eq!(
            p.update(&snapshot(None, 0, 0)),
            None,
            "silent in the warmup"
        );
        let early = p.update(&snapshot(Some(5), 10, 0));
        assert_eq!(early, None, "too early for a rate");
        let first = p.update(&snapshot(Some(500), 1_000, 0)).unwrap();
        assert_eq!(
            first,
            "[   0.5 s]      2000 records/s, 0 errors, 1000/5000 records\n"
        );
        let second = p.update(&snapshot(Some(1_500), 4_000, 2)).unwrap();
        assert_eq!(
            second,
            "[   1.5 s]      3000 records/s, 2 errors, 4000/5000 records\n"
        );
        assert_eq!(p.finish(), None);
        let mut off = Progress::new(ProgressStyle::Off, Limit::Records(1), HALF);
        assert_eq!(off.update(&snapshot(Some(500), 1, 0)), None);
    }

    fn report(limit: Limit, rate: Option<u64>) -> BenchReport {
        BenchReport {
            config: BenchConfig {
                rate_records_per_sec: rate,
                ..config(limit)
            },
            partitions: 2,
            records: 6000,
            errors: 0,
            seconds: 2.0,
            records_per_sec: 3000.0,
            mb_per_sec: 0.384,
            latency_us: Percentiles {
                p50: 400,
                p90: 600,
                p99: 900,
                p999: 1500,
                max: 2000,
            },
            server_cpu_seconds: None,
        }
    }

    #[test]
    fn json_has_the_results_and_echoes_the_configuration() {
        let closed = report(Limit::Duration(Duration::from_secs(2)), None);
        let v: serde_json::Value = serde_json::from_str(&closed.to_json()).unwrap();
        assert_eq!(v["mode"], "closed");
        assert_eq!(v["records"], 6000);
        assert_eq!(v["errors"], 0);
        assert_eq!(v["records_per_sec"], 3000.0);
        assert_eq!(v["mb_per_sec"], 0.384);
        assert_eq!(v["latency_us"]["p999"], 1500);
        assert_eq!(v["latency_us"]["max"], 2000);
        for (field, value) in [("clients", 4), ("inflight", 2), ("record_size", 128)] {
            assert_eq!(v[field], value, "{field}");
        }
        assert_eq!(
            (v["batch"].as_u64(), v["partitions"].as_u64()),
            (Some(3), Some(2))
        );
        assert_eq!(
            (v["duration_s"].as_f64(), v["warmup_s"].as_f64()),
            (Some(2.0), Some(0.5))
        );
        assert!(v["rate"].is_null() && v["count"].is_null());
        let open = report(Limit::Records(6000), Some(5000));
        let v: serde_json::Value = serde_json::from_str(&open.to_json()).unwrap();
        assert_eq!(v["mode"], "open");
        assert_eq!(
            (v["rate"].as_u64(), v["count"].as_u64()),
            (Some(5000), Some(6000))
        );
        assert!(v["duration_s"].is_null());
    }

    #[test]
    fn text_says_how_it_ran_and_what_it_measured() {
        let text = report(Limit::Records(6000), Some(5000)).to_text();
        assert!(
            text.starts_with("open loop at 5,000 records/s: 4 clients x 2 in flight on 1 connection, 2 partitions, 128-byte records, 3 per append, 6,000 records after 0.5 s warmup\n"),
            "{text}"
        );
        assert!(
            text.contains("6000 records in 2.0 s: 3000 records/s"),
            "{text}"
        );
        assert!(
            text.ends_with("p50 400 p90 600 p99 900 p99.9 1500 max 2000"),
            "{text}"
        );
    }
}
