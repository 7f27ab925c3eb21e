//! A node's configuration: read from TOML, overridden by flags, validated as a whole.
//! Every key is documented in `docs/configuration.md`; `examples/node.toml` shows one.
//! Errors name the key and the reason, so an operator never has to guess.
//!
//! By concern: `wal` (`[wal]`), `raft` (`[raft]` and the engine's settings),
//! `clients` (`[reads]` and `[clients]`), and `sizes` (what a record and a
//! message must fit in, across sections); the node's own keys and `[[nodes]]` here.

mod clients;
mod raft;
mod sizes;
#[cfg(test)]
mod test_support;
mod wal;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use clients::{
    CLIENT_FRAME_BODY_BYTES_MIN, ClientSettings, READ_BYTES_MAX_DEFAULT, ReadSettings,
};
pub use raft::RaftSettings;
pub use sizes::RECEIVED_ENTRIES_BYTES_MAX;
pub use wal::{SEGMENT_SIZE_BYTES_MAX, SEGMENT_SIZE_BYTES_MIN, WAL_BUFFER_BYTES, WalSettings};

use super::retention::RetentionSettings;
use super::router::nodes_in_words;
use crate::engine::NodeId;
use crate::tls::TlsSettings;
use wal::BLOCK_BYTES;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("config file {path} is not valid: {reason}")]
    Syntax { path: String, reason: String },
    #[error("invalid setting `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

pub(super) fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Whether an acknowledged record must be on disk.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// fdatasync before acknowledging: the durability promise holds.
    #[default]
    Always,
    /// Never sync: for benchmarks only; a crash can lose acknowledged records.
    Never,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub cluster_id: u64,
    pub data_dir: PathBuf,
    /// Shards (partitions) per node; 0 means one per available core.
    #[serde(default)]
    pub shards: u32,
    /// Pin each shard's executor to its own core.
    #[serde(default)]
    pub pin: bool,
    /// Serve plaintext on addresses other machines can reach. Without `[tls]` a
    /// node refuses to listen beyond loopback unless this is set.
    #[serde(default)]
    pub insecure_plaintext: bool,
    pub listen: Listen,
    /// Every member of the cluster, this node included.
    pub nodes: Vec<Member>,
    #[serde(default)]
    pub wal: WalSettings,
    #[serde(default)]
    pub raft: RaftSettings,
    #[serde(default)]
    pub reads: ReadSettings,
    #[serde(default)]
    pub clients: ClientSettings,
    /// When a partition's oldest segments are removed (`retention.rs`).
    #[serde(default)]
    pub retention: RetentionSettings,
    /// TLS on every port and the roles of client principals (`docs/security.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSettings>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub client: SocketAddr,
    pub peer: SocketAddr,
    pub metrics: SocketAddr,
}

/// How other nodes and clients reach a member.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub node_id: NodeId,
    pub peer_address: String,
    pub client_address: String,
}

/// The most shards a node may run: more would exceed any machine's cores and make
/// per-partition memory (windows, buffers) add up past reason.
pub const SHARDS_MAX: u32 = 256;

impl NodeConfig {
    pub fn from_file(path: &std::path::Path) -> Result<NodeConfig, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        NodeConfig::from_toml(&text, &shown)
    }

    /// Parses and validates; `origin` names the source in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<NodeConfig, ConfigError> {
        let config: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_string(),
            reason: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_members()?;
        self.validate_security()?;
        if self.shards > SHARDS_MAX {
            return Err(invalid(
                "shards",
                format!("{} is more than {SHARDS_MAX}", self.shards),
            ));
        }
        self.validate_wal()?;
        self.retention.validate(self.wal.segment_size_bytes)?;
        self.reads.validate()?;
        self.clients.validate()?;
        let frame = self.clients.frame_body_bytes_max;
        if self.reads.bytes_max > frame {
            let reason = format!(
                "{} is more than clients.frame_body_bytes_max ({frame} bytes), the largest answer a client takes; lower it with the frame limit",
                self.reads.bytes_max
            );
            return Err(invalid("reads.bytes_max", reason));
        }
        self.validate_record_size()?;
        self.engine_config()?;
        self.validate_messages()?;
        // Every rule of the WAL is checked above under the name of its setting; this
        // is a net for a rule added to the WAL and not here, so that it still stops
        // the node now rather than when a shard opens its log.
        self.wal_config()
            .validate(BLOCK_BYTES as usize)
            .map_err(|reason| invalid("wal", reason))
    }

    fn validate_members(&self) -> Result<(), ConfigError> {
        let ids: Vec<NodeId> = self.nodes.iter().map(|m| m.node_id).collect();
        if !ids.contains(&self.node_id) {
            let reason = format!(
                "{} is not among the members in [[nodes]] ({})",
                self.node_id,
                nodes_in_words(&ids)
            );
            return Err(invalid("node_id", reason));
        }
        for (k, id) in ids.iter().enumerate() {
            if ids[..k].contains(id) {
                return Err(invalid("nodes", format!("node id {id} appears twice")));
            }
        }
        for member in &self.nodes {
            for (key, address) in [
                ("peer_address", &member.peer_address),
                ("client_address", &member.client_address),
            ] {
                if !address.contains(':')
                    || address
                        .rsplit(':')
                        .next()
                        .is_none_or(|p| p.parse::<u16>().is_err())
                {
                    let reason = format!("{address:?} of node {} is not HOST:PORT", member.node_id);
                    return Err(invalid(&format!("nodes.{key}"), reason));
                }
            }
        }
        Ok(())
    }

    /// Secure by default: plaintext only where no other machine can connect, or
    /// when the operator says so by name.
    fn validate_security(&self) -> Result<(), ConfigError> {
        if let Some(tls) = &self.tls {
            return tls
                .validate()
                .map_err(|(key, reason)| invalid(&key, reason));
        }
        if self.insecure_plaintext {
            return Ok(());
        }
        let exposed = [
            ("listen.client", self.listen.client),
            ("listen.peer", self.listen.peer),
            ("listen.metrics", self.listen.metrics),
        ]
        .into_iter()
        .find(|(_, address)| !address.ip().is_loopback());
        match exposed {
            Some((key, address)) => Err(invalid(
                "insecure_plaintext",
                format!(
                    "{key} = {address} is reachable from other machines and [tls] is not set: \
                     anyone who can connect could append, read or pose as a cluster member. \
                     Set [tls] (see docs/security.md) or, on a trusted network, \
                     insecure_plaintext = true"
                ),
            )),
            None => Ok(()),
        }
    }

    /// The config as TOML that [`NodeConfig::from_toml`] reads back unchanged.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a node config always serializes")
    }

    /// The membership `[[nodes]]` bootstraps a new cluster with: every node a voter.
    pub fn bootstrap_membership(&self) -> crate::engine::Membership {
        crate::engine::Membership::new(
            self.nodes
                .iter()
                .map(|m| crate::engine::Member {
                    id: m.node_id,
                    voter: true,
                    peer_address: m.peer_address.clone(),
                    client_address: m.client_address.clone(),
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::config::test_support::*;

    #[test]
    fn example_file_is_valid_and_converts_to_ticks() {
        let config =
            NodeConfig::from_toml(EXAMPLE, "examples/node.toml").expect("example is valid");
        assert_eq!(
            config.bootstrap_membership().ids().collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let engine = config.engine_config().unwrap();
        assert_eq!(engine.heartbeat_interval_ticks, 5);
        assert_eq!(engine.election_timeout_min_ticks, 30);
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(
            key_of(with("node_id = 1", "node_id = 9").unwrap_err()),
            "node_id"
        );
        assert_eq!(
            key_of(with("heartbeat_interval_ms = 50", "heartbeat_interval_ms = 300").unwrap_err()),
            "raft.election_timeout_min_ms"
        );
        assert_eq!(
            key_of(with("heartbeat_interval_ms = 50", "heartbeat_interval_ms = 55").unwrap_err()),
            "raft.heartbeat_interval_ms"
        );
        assert_eq!(
            key_of(with("segment_size_bytes = 67108864", "segment_size_bytes = 1000").unwrap_err()),
            "wal.segment_size_bytes"
        );
        assert_eq!(
            key_of(with("shards = 2", "shards = 1000").unwrap_err()),
            "shards"
        );
        assert_eq!(
            key_of(
                with(
                    "client_address = \"127.0.0.1:7400\"",
                    "client_address = \"nowhere\""
                )
                .unwrap_err()
            ),
            "nodes.client_address"
        );
    }

    #[test]
    fn plaintext_beyond_loopback_must_be_asked_for_by_name() {
        let plaintext = without_section(EXAMPLE, "[tls.principals]");
        let plaintext = without_section(&plaintext, "[tls]");
        let refused = NodeConfig::from_toml(&plaintext, "test.toml").unwrap_err();
        assert!(
            refused.to_string().contains("listen.client = 0.0.0.0:7400"),
            "{refused}"
        );
        assert_eq!(key_of(refused), "insecure_plaintext");
        let asked = plaintext.replacen("pin = false", "insecure_plaintext = true\npin = false", 1);
        assert!(NodeConfig::from_toml(&asked, "test.toml").is_ok());
        let local = plaintext.replace("0.0.0.0", "127.0.0.1");
        assert!(NodeConfig::from_toml(&local, "test.toml").is_ok());
        // With [tls] (the example), any address will do; a bad principal is named.
        let (key, _) = refusal(&[("producer = [", "\"not a name\" = [")]);
        assert_eq!(key, "tls.principals");
    }

    #[test]
    fn the_node_id_error_lists_members_in_words() {
        let (key, reason) = refusal(&[("node_id = 1", "node_id = 9")]);
        assert_eq!(key, "node_id");
        assert!(reason.ends_with("(nodes 1, 2 and 3)"), "{reason}");
    }

    #[test]
    fn syntax_errors_and_unknown_keys_are_refused() {
        assert!(matches!(
            with("shards = 2", "shards = \"two\""),
            Err(ConfigError::Syntax { .. })
        ));
        assert!(matches!(
            with("shards = 2", "shards = 2\nshardz = 3"),
            Err(ConfigError::Syntax { .. })
        ));
        assert!(matches!(
            with("fsync = \"always\"", "fsync = \"sometimes\""),
            Err(ConfigError::Syntax { .. })
        ));
        assert!(matches!(
            with("waiting_max = 4096", "waiting_max = 4096\nwait_max = 5"),
            Err(ConfigError::Syntax { .. })
        ));
        let missing = NodeConfig::from_toml("node_id = 1", "x.toml").unwrap_err();
        assert!(missing.to_string().contains("missing field"), "{missing}");
    }
}
