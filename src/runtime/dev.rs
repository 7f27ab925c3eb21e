//! `ringlog dev`: a local cluster of real node processes on 127.0.0.1, on the
//! predictable ports of the design (node i: client B+10i, peer B+10i+1, metrics
//! B+10i+2), each with its own config file and data directory under one folder.
//! It restarts nothing behind the user's back and stops every node on Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::config::{
    ClientSettings, FsyncPolicy, Listen, Member, NodeConfig, RaftSettings, WalSettings,
};
use crate::engine::NodeId;
use crate::tls::certs::{DEV_PRINCIPAL, DevPki, write_dev_pki};
use crate::tls::{Role, TlsSettings};

#[derive(Debug, Error)]
pub enum DevError {
    #[error("a dev cluster needs 1 to 9 nodes, not {0}")]
    NodeCount(u32),
    #[error(
        "base port {base} leaves no room for {nodes} nodes (each takes 10 ports, the last must fit under 65536)"
    )]
    Ports { base: u16, nodes: u32 },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("cannot start node {node} ({exe}): {reason}")]
    Spawn {
        node: NodeId,
        exe: String,
        reason: String,
    },
    #[error("cannot watch for Ctrl-C: {0}")]
    Signal(String),
}

/// How many consecutive ports from the base port a dev cluster of `nodes` nodes
/// spans: node i listens on BASE+10i (clients), BASE+10i+1 (peers) and BASE+10i+2
/// (metrics).
pub fn ports_spanned(nodes: u32) -> u16 {
    (10 * nodes.clamp(1, 9) - 7) as u16
}

/// The configs of a dev cluster of `nodes` nodes under `dir`.
pub fn configs(
    nodes: u32,
    base_port: u16,
    dir: &Path,
    shards: u32,
) -> Result<Vec<NodeConfig>, DevError> {
    if !(1..=9).contains(&nodes) {
        return Err(DevError::NodeCount(nodes));
    }
    if base_port as u32 + 10 * nodes + 2 > u16::MAX as u32 {
        return Err(DevError::Ports {
            base: base_port,
            nodes,
        });
    }
    let port = |node: u32, offset: u32| (base_port as u32 + 10 * node + offset) as u16;
    let address = |node: u32, offset: u32| SocketAddr::from(([127, 0, 0, 1], port(node, offset)));
    let members: Vec<Member> = (0..nodes)
        .map(|i| Member {
            node_id: i + 1,
            peer_address: address(i, 1).to_string(),
            client_address: address(i, 0).to_string(),
        })
        .collect();
    let config = |i: u32| NodeConfig {
        node_id: i + 1,
        // The base port names the cluster, so a second dev cluster on other ports
        // can never adopt this one's data directories.
        cluster_id: base_port as u64,
        data_dir: node_dir(dir, i + 1).join("data"),
        shards,
        pin: false,
        insecure_plaintext: false,
        listen: Listen {
            client: address(i, 0),
            peer: address(i, 1),
            metrics: address(i, 2),
        },
        nodes: members.clone(),
        wal: WalSettings {
            fsync: FsyncPolicy::Always,
            ..WalSettings::default()
        },
        raft: RaftSettings::default(),
        reads: Default::default(),
        clients: ClientSettings::default(),
        retention: Default::default(),
        tls: None,
    };
    Ok((0..nodes).map(config).collect())
}

/// Makes a CA and certificates under `dir/tls` and turns TLS on in every config:
/// the dev client certificate's principal gets every role.
pub fn enable_tls(dir: &Path, configs: &mut [NodeConfig]) -> Result<DevPki, DevError> {
    let ids: Vec<NodeId> = configs.iter().map(|c| c.node_id).collect();
    let cluster_id = configs.first().map_or(0, |c| c.cluster_id);
    let tls_dir = dir.join("tls");
    let pki = write_dev_pki(&tls_dir, cluster_id, &ids).map_err(|reason| DevError::Write {
        path: tls_dir.clone(),
        reason,
    })?;
    for (config, (_, cert_file, key_file)) in configs.iter_mut().zip(&pki.nodes) {
        let principals = [(
            DEV_PRINCIPAL.to_string(),
            vec![Role::Append, Role::Read, Role::Admin],
        )];
        config.tls = Some(TlsSettings {
            ca_file: pki.ca_file.clone(),
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            principals: principals.into_iter().collect(),
        });
    }
    Ok(pki)
}

fn node_dir(dir: &Path, node: NodeId) -> PathBuf {
    dir.join(format!("node-{node}"))
}

/// Writes each node's config as TOML next to its data directory; returns the paths.
pub fn write_configs(dir: &Path, configs: &[NodeConfig]) -> Result<Vec<PathBuf>, DevError> {
    configs
        .iter()
        .map(|config| {
            let node_dir = node_dir(dir, config.node_id);
            let path = node_dir.join("node.toml");
            let fail = |e: std::io::Error| DevError::Write {
                path: path.clone(),
                reason: e.to_string(),
            };
            crate::wal::dir::create_dir_durably(&node_dir).map_err(fail)?;
            std::fs::write(&path, config.to_toml()).map_err(fail)?;
            Ok(path)
        })
        .collect()
}

/// Running node processes; dropping it stops them.
pub struct DevCluster {
    children: Vec<(NodeId, Child)>,
}

impl DevCluster {
    /// The process ids of the running nodes.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(_, child)| child.id()).collect()
    }

    /// Starts `exe serve --config PATH` for each config path.
    pub fn start(exe: &Path, paths: &[PathBuf]) -> Result<DevCluster, DevError> {
        DevCluster::start_with_log_filter(exe, paths, None)
    }

    /// Like [`DevCluster::start`], with the nodes' `RUST_LOG` set to `filter`.
    pub fn start_with_log_filter(
        exe: &Path,
        paths: &[PathBuf],
        filter: Option<&str>,
    ) -> Result<DevCluster, DevError> {
        let mut cluster = DevCluster {
            children: Vec::new(),
        };
        for (k, path) in paths.iter().enumerate() {
            let node = k as NodeId + 1;
            let mut command = Command::new(exe);
            command
                .arg("serve")
                .arg("--config")
                .arg(path)
                .stdin(Stdio::null());
            if let Some(filter) = filter {
                command.env("RUST_LOG", filter);
            }
            let child = command.spawn().map_err(|e| DevError::Spawn {
                node,
                exe: exe.display().to_string(),
                reason: e.to_string(),
            })?;
            cluster.children.push((node, child));
        }
        Ok(cluster)
    }

    /// Blocks until Ctrl-C or SIGTERM, or until a node exits by itself (which is
    /// reported, not hidden by a restart). Returns the node that exited, if one did.
    pub fn wait(&mut self) -> Result<Option<(NodeId, std::process::ExitStatus)>, DevError> {
        let stop = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(signal, Arc::clone(&stop))
                .map_err(|e| DevError::Signal(e.to_string()))?;
        }
        while !stop.load(Ordering::Relaxed) {
            for (node, child) in &mut self.children {
                if let Ok(Some(status)) = child.try_wait() {
                    return Ok(Some((*node, status)));
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(None)
    }

    /// Asks every node to shut down (SIGTERM), waits up to `grace`, then kills the
    /// rest. Returns each node's exit status.
    pub fn stop(&mut self, grace: Duration) -> Vec<(NodeId, Option<std::process::ExitStatus>)> {
        for (_, child) in &self.children {
            // SAFETY: kill with a child's pid and a valid signal number has no
            // memory-safety preconditions; a child that already exited is harmless.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + grace;
        let mut statuses = Vec::new();
        for (node, child) in &mut self.children {
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Some(status),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        break child.wait().ok();
                    }
                }
            };
            statuses.push((*node, status));
        }
        self.children.clear();
        statuses
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        if !self.children.is_empty() {
            self.stop(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_follow_the_design_and_configs_are_valid() {
        let dir = Path::new("/tmp/ringlog-dev-test");
        let configs = configs(3, 7400, dir, 2).unwrap();
        let third = &configs[2];
        assert_eq!(third.node_id, 3);
        assert_eq!(third.listen.client.port(), 7420);
        assert_eq!(third.listen.peer.port(), 7421);
        assert_eq!(third.listen.metrics.port(), 7422);
        assert_eq!(third.data_dir, dir.join("node-3/data"));
        assert_eq!(
            third.bootstrap_membership().ids().collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        for config in &configs {
            config.validate().expect("generated config is valid");
            let reparsed = NodeConfig::from_toml(&config.to_toml(), "generated").unwrap();
            assert_eq!(&reparsed, config, "TOML round trip");
        }
    }

    #[test]
    fn impossible_clusters_are_refused() {
        assert!(matches!(
            configs(0, 7400, Path::new("x"), 1),
            Err(DevError::NodeCount(0))
        ));
        assert!(matches!(
            configs(3, 65530, Path::new("x"), 1),
            Err(DevError::Ports { .. })
        ));
    }

    #[test]
    fn configs_are_written_per_node() {
        let dir = tempfile::tempdir().unwrap();
        let configs = configs(2, 7400, dir.path(), 1).unwrap();
        let paths = write_configs(dir.path(), &configs).unwrap();
        assert_eq!(paths[1], dir.path().join("node-2/node.toml"));
        let text = std::fs::read_to_string(&paths[1]).unwrap();
        assert_eq!(NodeConfig::from_toml(&text, "written").unwrap(), configs[1]);
    }
}
