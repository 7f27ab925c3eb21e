//! The membership operations of docs/operations.md on real processes, under load:
//! growing a cluster from three nodes to five and back, replacing a node whose
//! data directory is gone by a new node id, and removing the node that leads.
//! After each, every acknowledged record is on every remaining node, once and at
//! its acknowledged index.

mod cluster_support;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster_support::members::{self, patient_client, voters};
use cluster_support::*;
use ringlog::client::Client;
use ringlog::transport::{ChangeOp, PartitionMembers};

const PARTITIONS: u32 = 2;
/// Joining includes copying the log and a promotion; a loaded 2-core machine may
/// take a while.
const WAIT: Duration = Duration::from_secs(90);

type Acked = Rc<RefCell<Vec<(u32, u64, Bytes)>>>;

fn ids(p: &PartitionMembers) -> Vec<u32> {
    p.members.iter().map(|m| m.node_id).collect()
}

/// Every partition's listing once `check` holds for each.
async fn await_listing(
    client: &Client,
    what: &str,
    check: impl Fn(&PartitionMembers) -> bool,
) -> Vec<PartitionMembers> {
    eprintln!("awaiting: {what}");
    members::await_listing(client, PARTITIONS as usize, WAIT, check).await
}

/// Asks for `change` until every partition's listing satisfies `done`: an answer
/// lost to a leader change is asked again, and asking twice adds nothing twice
/// (the second ask is refused where the first committed).
async fn change_until(
    client: &Client,
    change: ChangeOp,
    done: impl Fn(&PartitionMembers) -> bool,
) -> Vec<PartitionMembers> {
    let deadline = Instant::now() + WAIT;
    loop {
        let _ = client.change_membership(change.clone()).await;
        if let Ok(listing) = client.members().await {
            let listed: Vec<PartitionMembers> =
                listing.into_iter().filter_map(|p| p.result.ok()).collect();
            if listed.len() == PARTITIONS as usize && listed.iter().all(&done) {
                return listed;
            }
        }
        assert!(Instant::now() < deadline, "{change:?} not done in {WAIT:?}");
        glommio::timer::sleep(Duration::from_millis(200)).await;
    }
}

/// Appends to every partition, one batch after another, until `stop` is set;
/// every acknowledged record goes into `acked`.
fn start_load(addrs: Vec<String>, stop: Rc<Cell<bool>>, acked: Acked) -> glommio::Task<u64> {
    glommio::spawn_local(async move {
        let client = client(addrs);
        let mut appends = 0;
        let mut seq = 0u64;
        while !stop.get() {
            let partition = (seq % PARTITIONS as u64) as u32;
            let records: Vec<Bytes> = (0..4)
                .map(|i| Bytes::from(format!("load-{seq}-{i}")))
                .collect();
            seq += 1;
            // An outcome lost to a leader change is not counted as acknowledged.
            if let Ok(ok) = client.append(partition, records.clone()).await {
                appends += 1;
                let indexes = ok.first_index..=ok.last_index;
                let mut acked = acked.borrow_mut();
                acked.extend(indexes.zip(records).map(|(i, r)| (partition, i, r)));
            }
        }
        appends
    })
}

/// Stops the load; returns every record it had acknowledged.
async fn finish_load(
    load: glommio::Task<u64>,
    stop: Rc<Cell<bool>>,
    acked: Acked,
) -> Vec<(u32, u64, Bytes)> {
    stop.set(true);
    let appends = load.await;
    assert!(appends > 0, "the load acknowledged nothing");
    acked.take()
}

fn acked_count(acked: &Acked) -> usize {
    acked.borrow().len()
}

/// Waits until the load has acknowledged `more` records beyond what it had.
async fn await_progress(acked: &Acked, more: usize, what: &str) {
    let target = acked_count(acked) + more;
    let deadline = Instant::now() + WAIT;
    while acked_count(acked) < target {
        assert!(Instant::now() < deadline, "no appends acknowledged {what}");
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn grow_from_three_nodes_to_five_and_back_under_load() {
    let mut cluster = TestCluster::configure_with_spares(3, 2, PARTITIONS);
    for k in 0..3 {
        cluster.spawn(k);
    }
    let founders: Vec<String> = cluster.client_addrs()[..3].to_vec();
    let all = cluster.client_addrs();
    on_executor(async move || {
        await_leaders(&client(founders.clone()), PARTITIONS as usize, WAIT).await;
        let (stop, acked): (Rc<Cell<bool>>, Acked) = Default::default();
        let load = start_load(founders.clone(), stop.clone(), acked.clone());
        await_progress(&acked, 100, "before growing").await;

        // Nodes 4 and 5 start empty and ask to join; the leaders promote them
        // once they have caught up (raft.auto_promote).
        cluster.spawn_joining(3, 0);
        cluster.spawn_joining(4, 1);
        let admin = patient_client(founders.clone());
        await_listing(&admin, "five voters", |p| {
            voters(p) == [1, 2, 3, 4, 5] && p.members.iter().all(|m| m.active)
        })
        .await;
        await_progress(&acked, 100, "with five voters").await;
        // The newcomers hold what was acknowledged so far.
        let so_far = acked.borrow().clone();
        check_everywhere(all.clone(), PARTITIONS, &so_far).await;

        for node_id in [4, 5] {
            change_until(&admin, ChangeOp::Remove { node_id }, |p| {
                !ids(p).contains(&node_id)
            })
            .await;
        }
        await_listing(&admin, "three voters", |p| ids(p) == [1, 2, 3]).await;
        cluster.stop(3);
        cluster.stop(4);
        await_progress(&acked, 100, "after shrinking").await;

        let acked = finish_load(load, stop, acked).await;
        check_everywhere(founders, PARTITIONS, &acked).await;
        drop(cluster);
    });
}

#[test]
fn replace_a_node_whose_data_directory_was_deleted() {
    let mut cluster = TestCluster::configure_with_spares(3, 1, PARTITIONS);
    for k in 0..3 {
        cluster.spawn(k);
    }
    let addrs = cluster.client_addrs();
    let remaining = vec![addrs[0].clone(), addrs[1].clone(), addrs[3].clone()];
    on_executor(async move || {
        await_leaders(&client(addrs[..3].to_vec()), PARTITIONS as usize, WAIT).await;
        let (stop, acked): (Rc<Cell<bool>>, Acked) = Default::default();
        let load = start_load(addrs[..2].to_vec(), stop.clone(), acked.clone());
        await_progress(&acked, 100, "before the disk died").await;

        // Node 3's disk dies: the process with it.
        cluster.kill(2);
        std::fs::remove_dir_all(&cluster.configs[2].data_dir).unwrap();
        await_progress(&acked, 100, "with node 3 down").await;

        // The procedure of docs/operations.md: a new node id joins, catches up
        // and is promoted; then the dead member is removed.
        cluster.spawn_joining(3, 0);
        let admin = patient_client(addrs[..2].to_vec());
        await_listing(&admin, "node 4 a voter", |p| voters(p) == [1, 2, 3, 4]).await;
        let removed = std::process::Command::new(env!("CARGO_BIN_EXE_ringlog"))
            .args(["members", "remove", "--addr", &addrs[0], "--node-id", "3"])
            .output()
            .expect("run ringlog members remove");
        let said = String::from_utf8_lossy(&removed.stdout);
        assert!(
            removed.status.success(),
            "members remove: {said}{}",
            String::from_utf8_lossy(&removed.stderr)
        );
        await_listing(&admin, "node 3 gone", |p| voters(p) == [1, 2, 4]).await;
        await_progress(&acked, 100, "after the replacement").await;

        let acked = finish_load(load, stop, acked).await;
        check_everywhere(remaining, PARTITIONS, &acked).await;
        drop(cluster);
    });
}

#[test]
fn remove_the_node_that_leads_under_load() {
    let mut cluster = TestCluster::start_steady(3, PARTITIONS);
    let addrs = cluster.client_addrs();
    on_executor(async move || {
        await_leaders(&client(addrs.clone()), PARTITIONS as usize, WAIT).await;
        let (stop, acked): (Rc<Cell<bool>>, Acked) = Default::default();
        let load = start_load(addrs.clone(), stop.clone(), acked.clone());
        await_progress(&acked, 100, "before the removal").await;

        let admin = patient_client(addrs.clone());
        let listing = await_listing(&admin, "three voters", |p| voters(p) == [1, 2, 3]).await;
        let leader = listing[0].leader;
        let others: Vec<u32> = [1, 2, 3].into_iter().filter(|&n| n != leader).collect();
        change_until(&admin, ChangeOp::Remove { node_id: leader }, |p| {
            voters(p) == others && p.leader != leader
        })
        .await;
        await_progress(&acked, 100, "after the leader was removed").await;

        let acked = finish_load(load, stop, acked).await;
        let remaining: Vec<String> = others
            .iter()
            .map(|&n| addrs[n as usize - 1].clone())
            .collect();
        check_everywhere(remaining, PARTITIONS, &acked).await;
        // The removed node no longer leads anything and stays out.
        let old = patient_client(vec![addrs[leader as usize - 1].clone()]);
        let metadata = old.metadata().await.expect("the removed node answers");
        assert!(
            metadata.partitions.iter().all(|p| p.leader != Some(leader)),
            "{metadata:?}"
        );
        cluster.stop(leader as usize - 1);
    });
}
