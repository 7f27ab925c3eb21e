//! Prometheus metrics of one node, recorded through the `metrics` facade.
//!
//! Each node owns its recorder (not the process-global one), so that several nodes
//! in one test process keep separate figures. Every series is registered once, at
//! start, and kept as a handle: the hot paths touch an atomic, never a map, a string
//! or an allocation. Label values are bounded by construction: partitions by the
//! shard count, peers by the member list, operations and results by enums.
//!
//! The names, units and help texts are in [`catalog`]; the served text format and
//! `/health` are in [`http`].

pub mod catalog;
pub mod handles;
pub mod health;
pub mod histogram;
pub mod http;
pub mod lifecycle;
pub mod transfers;

use std::fmt::Write;
use std::sync::Arc;

use metrics::{Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

pub use handles::{AppendTally, RouterMetrics, ShardMetrics};
pub use histogram::LocalHistogram;

use crate::engine::NodeId;
use catalog::{Kind, METRICS};

/// Upper bounds of the latency buckets: 10 µs to 10 s, about three per decade.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds of the batch-size buckets in entries: powers of four up to 64 Ki.
pub const COUNT_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0,
];
/// Upper bounds of the batch-size buckets in bytes: powers of four, 256 B to 64 MiB.
pub const BYTES_BUCKETS: &[f64] = &[
    256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0,
];

/// One node's registry and the renderer of its `/metrics` page: counters and
/// gauges in the exporter's recorder, histograms in [`histogram`]'s own.
pub struct NodeMetrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    histograms: histogram::HistogramRegistry,
    node_id: NodeId,
}

impl NodeMetrics {
    pub fn new(node_id: NodeId) -> Arc<NodeMetrics> {
        let recorder = PrometheusBuilder::new()
            .add_global_label("node", node_id.to_string())
            .build_recorder();
        for def in METRICS {
            let (name, help) = (KeyName::from(def.name), SharedString::from(def.help));
            match def.kind {
                Kind::Counter => recorder.describe_counter(name, def.unit, help),
                Kind::Gauge => recorder.describe_gauge(name, def.unit, help),
                // Rendered by `histograms`, which takes the help from the catalog.
                Kind::Histogram => {}
            }
        }
        let handle = recorder.handle();
        let metrics = NodeMetrics {
            recorder,
            handle,
            histograms: histogram::HistogramRegistry::default(),
            node_id,
        };
        metrics
            .gauge(
                catalog::BUILD_INFO,
                &[("version", env!("CARGO_PKG_VERSION"))],
            )
            .set(1.0);
        Arc::new(metrics)
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The text exposition format (version 0.0.4) of every series.
    pub fn render(&self) -> String {
        let mut text = self.handle.render();
        for def in METRICS.iter().filter(|d| d.kind == Kind::Histogram) {
            self.histograms.render(def.name, def.help, &mut text);
        }
        text
    }

    fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
        let def = catalog::find(name);
        let names: Vec<&str> = labels.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names, def.labels,
            "labels of {name} differ from its catalog entry"
        );
        let labels: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new(*k, v.to_string()))
            .collect();
        Key::from_parts(name, labels)
    }

    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> metrics::Counter {
        assert_eq!(catalog::find(name).kind, Kind::Counter, "{name}");
        self.recorder
            .register_counter(&Self::key(name, labels), &METADATA)
    }

    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> metrics::Gauge {
        assert_eq!(catalog::find(name).kind, Kind::Gauge, "{name}");
        self.recorder
            .register_gauge(&Self::key(name, labels), &METADATA)
    }

    /// A histogram handle for the calling thread only (see [`LocalHistogram`]),
    /// with buckets by the metric's unit.
    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> LocalHistogram {
        let def = catalog::find(name);
        assert_eq!(def.kind, Kind::Histogram, "{name}");
        let bounds = match def.unit {
            Some(Unit::Seconds) => SECONDS_BUCKETS,
            Some(Unit::Bytes) => BYTES_BUCKETS,
            _ => COUNT_BUCKETS,
        };
        // The same labels, in the same order, as the exporter gives its series.
        let key = Self::key(name, labels);
        let mut rendered = format!("node=\"{}\"", self.node_id);
        for label in key.labels() {
            let value = escape_label_value(label.value());
            let _ = write!(rendered, ",{}=\"{value}\"", label.key());
        }
        self.histograms.register(name, rendered, bounds)
    }
}

/// A label value as the text format quotes it.
fn escape_label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every catalog entry is registered by the router or a shard, so a scrape
    /// shows each one (with HELP and TYPE) from the start, not only once it moves.
    #[test]
    fn every_catalog_metric_is_exported() {
        let node = NodeMetrics::new(1);
        let _router = RouterMetrics::new(&node, 2, &[2, 3]);
        let _shards: Vec<_> = (0..2)
            .map(|p| ShardMetrics::new(&node, p, &[2, 3]))
            .collect();
        let _lifecycles: Vec<_> = (0..2)
            .map(|p| lifecycle::LifecycleMetrics::new(&node, p))
            .collect();
        let _transfers: Vec<_> = (0..2)
            .map(|p| transfers::TransferMetrics::new(&node, p))
            .collect();
        let text = node.render();
        for def in METRICS {
            let kind = match def.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            assert!(
                text.contains(&format!("# HELP {} {}\n", def.name, def.help)),
                "{} has no HELP line",
                def.name
            );
            assert!(
                text.contains(&format!("# TYPE {} {kind}\n", def.name)),
                "{} has no TYPE line",
                def.name
            );
        }
        assert!(text.contains("ringlog_build_info{node=\"1\",version=\""));
    }

    #[test]
    fn a_tally_adds_acknowledged_appends_when_dropped() {
        let node = NodeMetrics::new(1);
        let router = std::rc::Rc::new(RouterMetrics::new(&node, 2, &[2]));
        let mut tally = AppendTally::default();
        let elapsed = std::time::Duration::from_micros(500);
        router.append_acknowledged(1, (3, 30), elapsed, &mut tally);
        router.append_acknowledged(1, (2, 20), elapsed, &mut tally);
        let records = "ringlog_append_records_total{node=\"1\",partition=\"1\"}";
        let latencies = "ringlog_commit_latency_seconds_count{node=\"1\",partition=\"1\"} 2";
        let text = node.render();
        assert!(
            text.contains(latencies),
            "latencies are recorded at once: {text}"
        );
        assert!(text.contains(&format!("{records} 0")), "{text}");
        drop(tally);
        let text = node.render();
        assert!(text.contains(&format!("{records} 5")), "{text}");
        let bytes = "ringlog_append_bytes_total{node=\"1\",partition=\"1\"} 50";
        assert!(text.contains(bytes), "{text}");
        let ok = "ringlog_client_requests_total{node=\"1\",op=\"append\",result=\"ok\"} 2";
        assert!(text.contains(ok), "{text}");
    }

    #[test]
    fn histograms_have_buckets_not_quantiles() {
        let node = NodeMetrics::new(1);
        let shard = ShardMetrics::new(&node, 0, &[2]);
        shard.fsync_seconds.record(0.000_3);
        shard.batch_records.record(10.0);
        let text = node.render();
        assert!(text.contains(
            "ringlog_wal_fsync_duration_seconds_bucket{node=\"1\",partition=\"0\",le=\"0.0005\"} 1"
        ));
        assert!(
            text.contains(
                "ringlog_wal_batch_records_bucket{node=\"1\",partition=\"0\",le=\"16\"} 1"
            )
        );
        assert!(!text.contains("quantile="), "no summaries: {text}");
    }

    #[test]
    #[should_panic(expected = "labels of ringlog_raft_term differ")]
    fn labels_must_match_the_catalog() {
        let _ = NodeMetrics::new(1).gauge(catalog::RAFT_TERM, &[("peer", "2")]);
    }
}
