//! Leadership transfers on real processes, asked through the client library: to a
//! named follower (appends keep being acknowledged across it), to any other node,
//! to a node that is not a member, and through a follower that redirects.
//!
//! The leader balancer is off (`raft.leader_balance = false`) so that only the
//! tests move leaders, and elections are patient so that none happens on its own
//! while a loaded machine stalls a process.

mod cluster_support;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster_support::*;
use ringlog::client::{Client, ClientError};
use ringlog::engine::NodeId;
use ringlog::transport::{AppendRequest, ClientRequest, ClientResponse, ServerError};

const WAIT: Duration = Duration::from_secs(30);

/// The leader of `partition` as the node at `addr` knows it.
async fn leader_seen_by(client: &Client, addr: &str, partition: u32) -> Option<NodeId> {
    match client.call(addr, &ClientRequest::Metadata).await {
        Ok(Ok(ClientResponse::Metadata(meta))) => meta
            .partitions
            .iter()
            .find(|p| p.partition == partition)
            .and_then(|p| p.leader),
        _ => None,
    }
}

/// Waits until every node at `addrs` names `leader` as the leader of `partition`.
async fn await_leader_everywhere(
    client: &Client,
    addrs: &[String],
    partition: u32,
    leader: NodeId,
) {
    let deadline = Instant::now() + WAIT;
    for addr in addrs {
        while leader_seen_by(client, addr, partition).await != Some(leader) {
            assert!(
                Instant::now() < deadline,
                "{addr} does not name node {leader} as the leader of partition {partition}"
            );
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Node `id`'s client address (node ids are 1-based, addresses 0-based).
fn addr_of(addrs: &[String], id: NodeId) -> String {
    addrs[id as usize - 1].clone()
}

fn record(text: String) -> Vec<Bytes> {
    vec![Bytes::from(text)]
}

/// Appends to `partition` one record at a time until `stop`, each of which must be
/// acknowledged; `acked` counts them as they come. Returns (partition, index,
/// record) of each.
async fn append_until(
    client: Rc<Client>,
    partition: u32,
    stop: Rc<Cell<bool>>,
    acked: Rc<Cell<u64>>,
) -> Vec<(u32, u64, Bytes)> {
    let mut out = Vec::new();
    while !stop.get() {
        let text = format!("during-{}", acked.get());
        let ok = client
            .append(partition, record(text.clone()))
            .await
            .unwrap_or_else(|e| panic!("an append around the transfer failed: {e}"));
        out.push((partition, ok.first_index, Bytes::from(text)));
        acked.set(acked.get() + 1);
    }
    out
}

/// Waits until `count` reaches `at_least`.
async fn await_count(what: &str, count: &Cell<u64>, at_least: u64) {
    let deadline = Instant::now() + WAIT;
    while count.get() < at_least {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

#[test]
fn a_transfer_to_a_named_follower_moves_leadership_and_appends_go_on() {
    let cluster = TestCluster::start_steady(3, 2);
    let addrs = cluster.client_addrs();
    on_executor(async move || {
        let client = Rc::new(client(addrs.clone()));
        let meta = await_leaders(&client, 2, WAIT).await;
        let (old, old_term) = (meta.partitions[0].leader.unwrap(), meta.partitions[0].term);
        let to = (1..=3).find(|&n| n != old).unwrap();
        // A writer appends throughout: every one of its appends must be
        // acknowledged, those the old leader held during the hand-over included.
        let (stop, acked) = (Rc::new(Cell::new(false)), Rc::new(Cell::new(0)));
        let writer =
            glommio::spawn_local(append_until(client.clone(), 0, stop.clone(), acked.clone()));
        await_count("appends before the transfer", &acked, 3).await;
        let ok = client.transfer_leader(0, Some(to)).await.expect("transfer");
        assert_eq!(ok.leader, to, "{ok:?}");
        assert!(ok.term > old_term, "{ok:?} after term {old_term}");
        // An append sent right after is acknowledged (by the new leader, through a
        // redirect from the old one the client still knows).
        let after = client.append(0, record("right after".into())).await;
        after.expect("an append right after the transfer");
        // The old leader sends clients to the new one.
        let append = ClientRequest::Append(AppendRequest {
            partition: 0,
            records: record("at the old leader".into()),
        });
        match client.call(&addr_of(&addrs, old), &append).await {
            Ok(Err(ServerError::NotLeader { leader, .. })) => assert_eq!(leader, Some(to)),
            other => panic!("the old leader answered {other:?}"),
        }
        let at_transfer = acked.get();
        await_count("appends after the transfer", &acked, at_transfer + 3).await;
        stop.set(true);
        let written = writer.await;
        await_leader_everywhere(&client, &addrs, 0, to).await;
        // Partition 1 was not asked to move.
        assert_eq!(
            leader_seen_by(&client, &addrs[0], 1).await,
            meta.partitions[1].leader
        );
        check_everywhere(addrs, 1, &written).await;
    });
}

#[test]
fn a_transfer_to_any_node_moves_leadership_to_another() {
    let cluster = TestCluster::start_steady(3, 2);
    let addrs = cluster.client_addrs();
    on_executor(async move || {
        let client = client(addrs.clone());
        let meta = await_leaders(&client, 2, WAIT).await;
        let old = meta.partitions[1].leader.unwrap();
        let ok = client.transfer_leader(1, None).await.expect("transfer");
        assert_ne!(ok.leader, old, "{ok:?}");
        assert!(ok.term > meta.partitions[1].term, "{ok:?}");
        await_leader_everywhere(&client, &addrs, 1, ok.leader).await;
        client
            .append(1, record("after any".into()))
            .await
            .expect("an append after the transfer");
    });
}

#[test]
fn a_transfer_to_a_node_that_is_not_a_member_is_refused() {
    let cluster = TestCluster::start_steady(3, 1);
    let lone = TestCluster::start_steady(1, 1);
    let (addrs, lone_addrs) = (cluster.client_addrs(), lone.client_addrs());
    on_executor(async move || {
        let client = client(addrs);
        let meta = await_leaders(&client, 1, WAIT).await;
        let refusal = client.transfer_leader(0, Some(9)).await;
        assert_invalid(refusal, "node 9 is not a member");
        // Nothing moved.
        let now = await_leaders(&client, 1, WAIT).await;
        assert_eq!(now.partitions[0].leader, meta.partitions[0].leader);
        // A node alone has no one to hand leadership to.
        let lone = cluster_support::client(lone_addrs);
        await_leaders(&lone, 1, WAIT).await;
        assert_invalid(lone.transfer_leader(0, None).await, "no other member");
    });
}

fn assert_invalid(result: Result<ringlog::transport::TransferOk, ClientError>, says: &str) {
    match result {
        Err(ClientError::Server {
            source: ServerError::InvalidRequest { reason },
            ..
        }) => assert!(reason.contains(says), "{reason}"),
        other => panic!("expected InvalidRequest saying {says:?}, got {other:?}"),
    }
}

#[test]
fn a_follower_asked_redirects_and_the_transfer_still_happens() {
    let cluster = TestCluster::start_steady(3, 1);
    let addrs = cluster.client_addrs();
    on_executor(async move || {
        let meta = await_leaders(&client(addrs.clone()), 1, WAIT).await;
        let (old, old_term) = (meta.partitions[0].leader.unwrap(), meta.partitions[0].term);
        let followers: Vec<NodeId> = (1..=3).filter(|&n| n != old).collect();
        // A client that knows only a follower: its request is redirected.
        let via_follower = client(vec![addr_of(&addrs, followers[0])]);
        let ok = via_follower
            .transfer_leader(0, Some(followers[1]))
            .await
            .expect("transfer through a follower");
        assert_eq!(ok.leader, followers[1], "{ok:?}");
        await_leader_everywhere(&via_follower, &addrs, 0, followers[1]).await;
        // Asking again is harmless: the leader, asked to hand over to itself,
        // says it leads, in the same term.
        let via_old = client(vec![addr_of(&addrs, old)]);
        let again = via_old
            .transfer_leader(0, Some(followers[1]))
            .await
            .expect("the same transfer again");
        assert_eq!(again.leader, followers[1]);
        assert_eq!(again.term, ok.term);
        assert!(ok.term > old_term);
    });
}
