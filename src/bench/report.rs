//! What a benchmark measured, as text for people and JSON for scripts.

use super::machine::Machine;
use super::threads::ThreadCpu;
use super::{BenchConfig, Limit};

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
    /// Per node (node 1 first), how its CPU time while measuring divides between
    /// its executor threads and the rest, when known.
    pub server_cpu_threads: Option<Vec<Vec<ThreadCpu>>>,
    /// The machine the benchmark ran on (with `--local`, the servers' too).
    pub machine: Machine,
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
            "server_cpu_threads": self.threads_json(),
            "machine": self.machine.to_json(),
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
            + &self.threads_text()
            + &self.machine.to_text()
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

    /// `server_cpu_threads` in JSON: per node, its number and its threads.
    fn threads_json(&self) -> serde_json::Value {
        let Some(nodes) = &self.server_cpu_threads else {
            return serde_json::Value::Null;
        };
        let thread = |t: &ThreadCpu| {
            serde_json::json!({
                "thread": t.thread,
                "cpu_seconds": t.cpu_seconds,
                "share": t.share,
            })
        };
        (nodes.iter().enumerate())
            .map(|(k, threads)| {
                let threads: Vec<_> = threads.iter().map(thread).collect();
                serde_json::json!({ "node": k + 1, "threads": threads })
            })
            .collect()
    }

    /// A line per node: how its CPU time divides between its threads.
    fn threads_text(&self) -> String {
        let Some(nodes) = &self.server_cpu_threads else {
            return String::new();
        };
        (nodes.iter().enumerate())
            .map(|(k, threads)| {
                let split: Vec<String> = (threads.iter())
                    .map(|t| {
                        let percent = t.share * 100.0;
                        format!("{} {percent:.0}% ({:.2} s)", t.thread, t.cpu_seconds)
                    })
                    .collect();
                format!(
                    "\nserver CPU by thread, node {}: {}",
                    k + 1,
                    split.join(", ")
                )
            })
            .collect()
    }

    fn mode(&self) -> &'static str {
        match self.config.rate_records_per_sec {
            Some(_) => "open",
            None => "closed",
        }
    }
}

/// 1234567 as "1,234,567".
pub(super) fn group(n: u64) -> String {
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
    use std::time::Duration;

    use super::*;
    use crate::bench::{Percentiles, ProgressStyle};

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
            tls: None,
        }
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        let cases = [(0, "0"), (999, "999"), (1000, "1,000"), (123456, "123,456")];
        for (n, text) in cases {
            assert_eq!(group(n), text);
        }
        assert_eq!(group(u64::MAX), "18,446,744,073,709,551,615");
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
            server_cpu_threads: None,
            machine: Machine {
                cpus: 2,
                cpuidle_driver: Some("haltpoll".into()),
                guest_halt_poll_ns: Some(200_000),
            },
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
        assert_eq!(v["machine"]["guest_halt_poll_ns"], 200_000);
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
            text.ends_with(
                "p50 400 p90 600 p99 900 p99.9 1500 max 2000\n\
                 machine: 2 CPUs, cpuidle haltpoll, guest halt polling 200 µs"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_cpu_split_by_thread_is_reported_per_node() {
        let thread = |name: &str, cpu_seconds: f64, share: f64| ThreadCpu {
            thread: name.to_string(),
            cpu_seconds,
            share,
        };
        let measured = BenchReport {
            server_cpu_seconds: Some(6.0),
            server_cpu_threads: Some(vec![
                vec![
                    thread("shard-0", 0.96, 0.48),
                    thread("shard-1", 0.9, 0.45),
                    thread("other", 0.14, 0.07),
                ],
                vec![thread("shard-0", 3.5, 0.875), thread("other", 0.5, 0.125)],
            ]),
            ..report(Limit::Records(6000), None)
        };
        let text = measured.to_text();
        assert!(
            text.ends_with(
                "\nserver CPU (all nodes, user + system): 6.00 s, 1000.0 µs per record\n\
                 server CPU by thread, node 1: shard-0 48% (0.96 s), shard-1 45% (0.90 s), other 7% (0.14 s)\n\
                 server CPU by thread, node 2: shard-0 88% (3.50 s), other 12% (0.50 s)\n\
                 machine: 2 CPUs, cpuidle haltpoll, guest halt polling 200 µs"
            ),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&measured.to_json()).unwrap();
        let nodes = v["server_cpu_threads"].as_array().unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1]["node"], 2);
        let first = &nodes[0]["threads"][0];
        assert_eq!(first["thread"], "shard-0");
        assert_eq!(first["cpu_seconds"], 0.96);
        assert_eq!(first["share"], 0.48);
        assert_eq!(nodes[0]["threads"][2]["thread"], "other");
        // Without server processes to read, the field is null and the text silent.
        let unknown = report(Limit::Records(6000), None);
        let v: serde_json::Value = serde_json::from_str(&unknown.to_json()).unwrap();
        assert!(v["server_cpu_threads"].is_null());
        assert!(!unknown.to_text().contains("by thread"));
    }
}
