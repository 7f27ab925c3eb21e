//! The nemesis's membership changes: a node (the leader of a partition half the
//! time) is removed from every partition's group, then added back as a learner,
//! which the leaders promote once it has caught up (`raft.auto_promote`). Its
//! process keeps running throughout, with its data: it keeps its term and its
//! vote, so that being added back cannot let it vote twice in a term. Faults come
//! one at a time, so the other kinds hit a cluster whose groups are whole again,
//! unless adding back failed within its time (the cluster then goes on with two
//! voters until the healing adds it back for good).

use std::time::{Duration, Instant};

use ringlog::client::PartitionResult;
use ringlog::transport::{ChangeOp, PartitionMembers};

use super::{Nemesis, PARTITIONS};
use crate::cluster_support::members::patient_client;
use crate::cluster_support::on_executor;

impl Nemesis {
    /// Removes a node, holds a moment, and adds it back (waiting up to 30 s).
    pub(super) fn reconfigure(&mut self) {
        let k = self.leader_or_random_node();
        let node_id = k as u32 + 1;
        let addrs = self.cluster.client_addrs();
        let removed = on_executor(async move || {
            let client = patient_client(addrs);
            let outcomes = client.change_membership(ChangeOp::Remove { node_id }).await;
            outcomes.map_or(0, |o| o.iter().filter(|p| p.result.is_ok()).count())
        });
        self.record.counts.membership_changes += 1;
        self.record.counts.removals_committed += removed;
        self.sleep_between(200, 1_500);
        self.add_back(k, Duration::from_secs(30));
    }

    /// Adds node `k` back wherever it is missing, until every partition lists it
    /// as a voter or `limit` passes; whether it got there.
    pub(super) fn add_back(&self, k: usize, limit: Duration) -> bool {
        let node_id = k as u32 + 1;
        let addrs = self.cluster.client_addrs();
        // The others keep reaching it through their proxies: an address learned
        // from a configuration never replaces the one a node was configured with.
        let add = ChangeOp::AddLearner {
            node_id,
            peer_address: self.cluster.configs[k].listen.peer.to_string(),
            client_address: self.cluster.configs[k].listen.client.to_string(),
        };
        on_executor(async move || {
            let client = patient_client(addrs);
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                if let Ok(listing) = client.members().await {
                    if settled(&listing, node_id) {
                        return true;
                    }
                    if missing_somewhere(&listing, node_id) {
                        // Partitions that list it already refuse the change as made.
                        let _ = client.change_membership(add.clone()).await;
                    }
                }
                glommio::timer::sleep(Duration::from_millis(200)).await;
            }
            false
        })
    }
}

type Listing = [PartitionResult<PartitionMembers>];

/// Whether every partition lists `node_id` as a voter.
fn settled(listing: &Listing, node_id: u32) -> bool {
    listing.len() == PARTITIONS as usize
        && listing.iter().all(|p| {
            p.result.as_ref().is_ok_and(|members| {
                members
                    .members
                    .iter()
                    .any(|m| m.node_id == node_id && m.voter)
            })
        })
}

/// Whether a partition's leader does not list `node_id` at all.
fn missing_somewhere(listing: &Listing, node_id: u32) -> bool {
    listing.iter().any(|p| {
        p.result
            .as_ref()
            .is_ok_and(|members| !members.members.iter().any(|m| m.node_id == node_id))
    })
}
