//! Membership changes on real processes, through the client library: the
//! listing, a removal committed on every partition, refusals, and a learner added
//! whose process does not exist (the leader replicates into the void; learners do
//! not count for commits).

mod cluster_support;

use std::time::Duration;

use bytes::Bytes;
use cluster_support::members::{await_listing, patient_client, voters};
use cluster_support::*;
use ringlog::client::{ClientError, PartitionResult};
use ringlog::transport::{ChangeOp, PartitionMembers, ServerError};

const WAIT: Duration = Duration::from_secs(30);

fn committed_everywhere(outcomes: Vec<PartitionResult<u64>>, partitions: usize) {
    assert_eq!(outcomes.len(), partitions, "{outcomes:?}");
    for o in outcomes {
        assert!(
            o.result.is_ok(),
            "partition {}: {:?}",
            o.partition,
            o.result
        );
    }
}

fn refused_everywhere(outcomes: Vec<PartitionResult<u64>>, says: &str) {
    assert!(!outcomes.is_empty());
    for o in outcomes {
        match o.result {
            Err(ClientError::Server {
                source: ServerError::InvalidRequest { reason },
                ..
            }) => assert!(reason.contains(says), "{reason}"),
            other => panic!("expected InvalidRequest saying {says:?}, got {other:?}"),
        }
    }
}

/// Node 4 as a learner, at addresses where nothing listens.
fn learner_4() -> ChangeOp {
    ChangeOp::AddLearner {
        node_id: 4,
        peer_address: "127.0.0.1:1".into(),
        client_address: "127.0.0.1:2".into(),
    }
}

#[test]
fn remove_add_and_refusals_on_every_partition() {
    let cluster = TestCluster::start_steady(3, 2);
    let addrs = cluster.client_addrs();
    on_executor(async move || {
        await_leaders(&client(addrs.clone()), 2, WAIT).await;
        // Asked through node 3 alone: for each partition it does not lead, the
        // client follows the redirect to that partition's leader.
        let client = patient_client(vec![addrs[2].clone()]);
        let listing = await_listing(&client, 2, WAIT, |p| voters(p) == [1, 2, 3]).await;
        for p in &listing {
            assert_eq!(p.members.iter().filter(|m| m.leader).count(), 1, "{p:?}");
            assert!(p.members.iter().any(|m| m.node_id == p.leader && m.leader));
        }

        let removed = client
            .change_membership(ChangeOp::Remove { node_id: 3 })
            .await;
        committed_everywhere(removed.expect("remove node 3"), 2);
        let client = patient_client(addrs[..2].to_vec());
        // A partition node 3 led has a new leader once its entries commit and
        // both voters hold them: only then is an append sure to be answered in
        // time (one sent just after the step-down went unanswered for 8 s).
        let settled = |p: &PartitionMembers| {
            voters(p) == [1, 2]
                && p.commit_index == p.last_index
                && p.members.iter().all(|m| p.lag(m) == 0)
        };
        await_listing(&client, 2, WAIT, settled).await;
        for partition in 0..2 {
            client
                .append(partition, vec![Bytes::from("after the removal")])
                .await
                .expect("an append with two voters");
        }

        let unknown = client
            .change_membership(ChangeOp::Remove { node_id: 9 })
            .await;
        refused_everywhere(unknown.expect("answers"), "node 9 is not a member");

        // A learner whose process does not exist: commit does not need it.
        let added = client.change_membership(learner_4()).await;
        committed_everywhere(added.expect("add learner 4"), 2);
        let learner_lag = |p: &PartitionMembers| {
            let m = p.members.iter().find(|m| m.node_id == 4)?;
            (!m.voter).then(|| p.lag(m))
        };
        let before = await_listing(&client, 2, WAIT, |p| learner_lag(p).is_some()).await;
        for partition in 0..2 {
            client
                .append(partition, vec![Bytes::from("the learner misses this")])
                .await
                .expect("an append with a silent learner");
        }
        let after = await_listing(&client, 2, WAIT, |p| learner_lag(p).is_some()).await;
        for (b, a) in before.iter().zip(&after) {
            assert!(learner_lag(a) > learner_lag(b), "{b:?} then {a:?}");
        }
        let again = client.change_membership(learner_4()).await;
        refused_everywhere(again.expect("answers"), "node 4 is already a member");
    });
}

#[test]
fn the_last_voter_cannot_be_removed() {
    let cluster = TestCluster::start_steady(1, 2);
    let addrs = cluster.client_addrs();
    on_executor(async move || {
        await_leaders(&client(addrs.clone()), 2, WAIT).await;
        let client = patient_client(addrs);
        await_listing(&client, 2, WAIT, |p| voters(p) == [1]).await;
        let last = client
            .change_membership(ChangeOp::Remove { node_id: 1 })
            .await;
        refused_everywhere(last.expect("answers"), "node 1 is the last voter");
        await_listing(&client, 2, WAIT, |p| voters(p) == [1]).await;
    });
}
