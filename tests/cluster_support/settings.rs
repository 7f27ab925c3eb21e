//! Node configurations for the multi-process tests, built as TOML and parsed by the
//! node's own parser, so that settings the test does not name keep the node's
//! defaults (a struct literal here would have to follow every field added to
//! `NodeConfig`). Tests override any setting by its dotted key through the same
//! code as `ringlog dev --set KEY=VALUE`.

use std::path::Path;

use ringlog::runtime::config::{Listen, Member, NodeConfig};
use ringlog::runtime::overrides::{self, Setting};

use super::TestCluster;

/// The settings every test cluster starts from: small segments and flushes, and
/// Raft timing fast enough for tests on loopback.
const BASE: &str = r#"
[wal]
segment_size_bytes = 4194304
flush_bytes_max = 1048576

[raft]
tick_ms = 10
election_timeout_min_ms = 150
election_timeout_max_ms = 300
heartbeat_interval_ms = 30
"#;

/// Node `node_id`'s configuration with the test defaults above.
pub fn node_config(
    node_id: u32,
    data_dir: &Path,
    shards: u32,
    listen: &Listen,
    members: &[Member],
) -> NodeConfig {
    let mut table: toml::Table = toml::from_str(BASE).expect("the base settings parse");
    let mut put = |key: &str, value: toml::Value| {
        table.insert(key.to_string(), value);
    };
    put("node_id", toml::Value::Integer(node_id.into()));
    put("cluster_id", toml::Value::Integer(42));
    put(
        "data_dir",
        toml::Value::String(data_dir.to_str().expect("a UTF-8 path").to_string()),
    );
    put("shards", toml::Value::Integer(shards.into()));
    put("pin", toml::Value::Boolean(false));
    put(
        "listen",
        toml::Value::try_from(listen).expect("listen serializes"),
    );
    put(
        "nodes",
        toml::Value::try_from(members).expect("members serialize"),
    );
    parse(&table)
}

/// Parses a table as the node would, panicking with the node's own error.
fn parse(table: &toml::Table) -> NodeConfig {
    let text = toml::to_string(table).expect("a table serializes");
    NodeConfig::from_toml(&text, "test cluster config")
        .unwrap_or_else(|e| panic!("the node refuses the test's settings: {e}\n{text}"))
}

/// `config` with each `(dotted key, value)` set, exactly as `ringlog dev --set
/// KEY=VALUE` sets them.
pub fn with_settings(config: &NodeConfig, settings: &[(&str, &str)]) -> NodeConfig {
    let parsed: Vec<Setting> = settings
        .iter()
        .map(|(key, value)| Setting::parse(&format!("{key}={value}")).expect("a KEY=VALUE"))
        .collect();
    overrides::apply(config, &parsed)
        .unwrap_or_else(|e| panic!("the node refuses the test's settings {settings:?}: {e}"))
}

impl TestCluster {
    /// Sets `(dotted key, value)` pairs in every node's config for its next start,
    /// all at once (some settings are only valid together, such as
    /// `retention.max_bytes` and `wal.segment_size_bytes`).
    pub fn set_all(&mut self, settings: &[(&str, &str)]) {
        for k in 0..self.configs.len() {
            self.set_node(k, settings);
        }
    }

    /// Like `set_all`, for node `k` only.
    pub fn set_node(&mut self, k: usize, settings: &[(&str, &str)]) {
        self.configs[k] = with_settings(&self.configs[k], settings);
        self.write_config(k);
    }

    /// Node `k`'s WAL directory for `partition` (one shard serves one partition).
    pub fn wal_dir(&self, k: usize, partition: u32) -> std::path::PathBuf {
        self.configs[k].data_dir.join(format!("shard-{partition}"))
    }

    /// Node `k`'s metrics and `/health` address.
    pub fn metrics_addr(&self, k: usize) -> std::net::SocketAddr {
        self.configs[k].listen.metrics
    }
}
