//! `serve --join ADDR`: a node asks a running cluster to add it as a learner on
//! every partition while it starts serving. Each partition's leader then sends it
//! the membership and the log; `raft.auto_promote` (or `ringlog members promote`)
//! makes it a voter once it has caught up.
//!
//! Before it starts, the node lists the cluster's members: until a configuration
//! reaches it, its groups have no members, and it answers the leaders over links
//! to the addresses that listing gave. Asking is idempotent: the node lists the
//! members and asks only while a partition does not name it, so a restart that
//! asks again, or an answer lost on the way, adds nothing twice.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{CliError, with_client};
use crate::engine::NodeId;
use crate::runtime::config::{Member, NodeConfig};
use crate::runtime::identity::{IDENTITY_FILE, LEGACY_IDENTITY_FILE, decode_identity};
use crate::transport::{ChangeOp, MemberInfo, PartitionMembers};

/// How long a node keeps asking before it gives up.
pub const JOIN_DEADLINE: Duration = Duration::from_secs(120);
/// How long one request may take, redirects and retries included.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// The pause between two rounds of asking.
const ROUND_PAUSE: Duration = Duration::from_millis(500);

/// The change that adds the node `config` describes, at the addresses its own
/// `[[nodes]]` entry gives.
pub fn add_me(config: &NodeConfig) -> Result<ChangeOp, CliError> {
    let me = config
        .nodes
        .iter()
        .find(|m| m.node_id == config.node_id)
        .ok_or_else(|| {
            CliError::Usage(format!(
                "--join needs an entry for node {} in [[nodes]] with its peer and client addresses",
                config.node_id
            ))
        })?;
    Ok(ChangeOp::AddLearner {
        node_id: config.node_id,
        peer_address: me.peer_address.clone(),
        client_address: me.client_address.clone(),
    })
}

/// Lists the members of the cluster at `addr` (every partition's, by node id)
/// and adds those `config` does not name to its `[[nodes]]`, the address book a
/// joining node's links use. A new node (`fresh`) whose id is taken is refused.
pub fn discover(config: &mut NodeConfig, addr: &str, fresh: bool) -> Result<(), CliError> {
    let deadline = Instant::now() + JOIN_DEADLINE;
    let listed: Vec<PartitionMembers> = with_client(addr, REQUEST_DEADLINE, async |client| {
        loop {
            let problem = match client.members().await {
                Ok(listing) => match listing.into_iter().map(|p| p.result).collect() {
                    Ok(partitions) => return Ok(partitions),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(CliError::Usage(format!(
                    "cannot list the members of the cluster at {addr}: {problem}"
                )));
            }
            glommio::timer::sleep(ROUND_PAUSE).await;
        }
    })?;
    let members: Vec<&MemberInfo> = listed.iter().flat_map(|p| &p.members).collect();
    if fresh && members.iter().any(|m| m.node_id == config.node_id) {
        return Err(CliError::Usage(format!(
            "node id {} is already a member of the cluster at {addr}; a new node needs an id of its own",
            config.node_id
        )));
    }
    for m in members {
        if !config.nodes.iter().any(|n| n.node_id == m.node_id) {
            config.nodes.push(Member {
                node_id: m.node_id,
                peer_address: m.peer_address.clone(),
                client_address: m.client_address.clone(),
            });
        }
    }
    Ok(())
}

/// Whose data a data directory holds, as far as `--join` cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirIdentity {
    /// No identity yet: a new node.
    None,
    /// A node that joined a running cluster.
    Joined,
    /// A founding member's, or one `serve` cannot read (its start says why).
    Founding,
}

pub fn data_dir_identity(data_dir: &Path) -> DirIdentity {
    let identity = data_dir.join(IDENTITY_FILE);
    if !identity.exists() && !data_dir.join(LEGACY_IDENTITY_FILE).exists() {
        return DirIdentity::None;
    }
    match std::fs::read(identity).map(|bytes| decode_identity(&bytes)) {
        Ok(Ok(found)) if found.joined => DirIdentity::Joined,
        _ => DirIdentity::Founding,
    }
}

/// Asks the cluster at `addr` to add the node (`add`) until every partition has
/// listed it, `stop` is set, or [`JOIN_DEADLINE`] passes.
///
/// A partition counts once it has listed the node, even if a later listing does
/// not: an operator may remove the node right after it joined, and asking again
/// would add it back behind their back.
pub fn join(addr: &str, add: ChangeOp, stop: &AtomicBool) -> Result<(), CliError> {
    let id = add.node_id();
    let deadline = Instant::now() + JOIN_DEADLINE;
    let mut listed = BTreeSet::new();
    with_client(addr, REQUEST_DEADLINE, async |client| {
        loop {
            let problem = match partitions_without(client, id, &mut listed).await {
                Ok(0) => {
                    log::info!(
                        "joined: every partition lists node {id}; it becomes a voter once caught up"
                    );
                    return Ok(());
                }
                Ok(missing) => format!("{missing} partition(s) do not list node {id} yet"),
                Err(e) => e,
            };
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CliError::Usage(format!(
                    "could not join the cluster at {addr} within {} s: {problem}",
                    JOIN_DEADLINE.as_secs()
                )));
            }
            // Partitions that already list the node refuse the change as made;
            // what matters is the next listing.
            if let Err(e) = client.change_membership(add.clone()).await {
                log::info!("asking to join: {e}");
            }
            glommio::timer::sleep(ROUND_PAUSE).await;
        }
    })
}

/// How many partitions have never listed node `id` (`listed`: those that have,
/// updated here); an error when no listing could be had.
async fn partitions_without(
    client: &crate::client::Client,
    id: NodeId,
    listed: &mut BTreeSet<u32>,
) -> Result<usize, String> {
    let listing = client.members().await.map_err(|e| e.to_string())?;
    let mut missing = 0;
    let mut problem = None;
    for p in &listing {
        match &p.result {
            Ok(members) if members.members.iter().any(|m| m.node_id == id) => {
                listed.insert(p.partition);
            }
            Ok(_) => {}
            Err(e) => problem = Some(format!("partition {}: {e}", p.partition)),
        }
        if !listed.contains(&p.partition) {
            missing += 1;
        }
    }
    match problem {
        Some(problem) if missing > 0 => Err(problem),
        _ => Ok(missing),
    }
}

/// Runs [`join`] on a thread of its own. A failed first join stops the node (it
/// would sit outside the cluster, serving nothing); a failed check on a later
/// start only warns, since the node may well be a member already.
pub fn spawn_join(
    addr: String,
    add: ChangeOp,
    stop: Arc<AtomicBool>,
    first_start: bool,
) -> std::thread::JoinHandle<Result<(), CliError>> {
    std::thread::Builder::new()
        .name("join".into())
        .spawn(move || {
            let result = join(&addr, add, &stop);
            match result {
                Err(e) if first_start => {
                    stop.store(true, Ordering::Relaxed);
                    Err(e)
                }
                Err(e) => {
                    log::warn!("{e}");
                    Ok(())
                }
                Ok(()) => Ok(()),
            }
        })
        .expect("spawning the join thread")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::identity::{Identity, encode_identity};

    #[test]
    fn join_tells_new_joined_and_founding_directories_apart() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        assert_eq!(data_dir_identity(&data), DirIdentity::None);
        std::fs::create_dir(&data).unwrap();
        assert_eq!(data_dir_identity(&data), DirIdentity::None);
        let mut identity = Identity {
            cluster_id: 1,
            node_id: 4,
            shards: 2,
            joined: true,
        };
        std::fs::write(data.join(IDENTITY_FILE), encode_identity(&identity)).unwrap();
        assert_eq!(data_dir_identity(&data), DirIdentity::Joined);
        identity.joined = false;
        std::fs::write(data.join(IDENTITY_FILE), encode_identity(&identity)).unwrap();
        assert_eq!(data_dir_identity(&data), DirIdentity::Founding);
        // A directory from before the identity file held a founding member's data.
        std::fs::remove_file(data.join(IDENTITY_FILE)).unwrap();
        std::fs::write(data.join(LEGACY_IDENTITY_FILE), "cluster_id=1\nnode_id=4\n").unwrap();
        assert_eq!(data_dir_identity(&data), DirIdentity::Founding);
    }
}
