//! The leader balancer with real processes: three nodes of three partitions each
//! end up leading one partition each after start-up, and again after a node that
//! was killed (so that the others took over its partitions) returns.

mod cluster_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cluster_support::*;
use ringlog::transport::Metadata;

const NODES: u32 = 3;
const PARTITIONS: u32 = 3;

#[test]
fn leaders_spread_over_the_nodes_after_start_up_and_after_a_node_returns() {
    let mut cluster = TestCluster::start(NODES, PARTITIONS);
    let addrs = cluster.client_addrs();
    let spread = await_balanced(addrs.clone(), "after start-up");
    println!("after start-up, leaders per node: {spread:?}");

    // Kill the node leading partition 0: its partitions go to the other two.
    let leader = leaders(&addrs)[0].expect("balanced partitions have leaders");
    let k = leader as usize - 1;
    cluster.kill(k);
    let others: Vec<String> = addrs
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != k)
        .map(|(_, a)| a.clone())
        .collect();
    await_condition(
        "the survivors lead every partition",
        Duration::from_secs(30),
        || {
            leaders(&others)
                .iter()
                .all(|l| l.is_some_and(|l| l != leader))
        },
    );

    cluster.spawn(k);
    let spread = await_balanced(addrs, "after the node returned");
    println!("after node {leader} returned, leaders per node: {spread:?}");
    assert!(
        spread.get(&leader).is_some_and(|&n| n == 1),
        "node {leader} leads its share again: {spread:?}"
    );
}

/// Waits until every partition has a leader that every answering node agrees on
/// and each node leads one partition; the count of each node.
fn await_balanced(addrs: Vec<String>, when: &str) -> BTreeMap<u32, usize> {
    let limit = Duration::from_secs(60);
    let deadline = Instant::now() + limit;
    loop {
        let led = leaders(&addrs);
        let mut spread: BTreeMap<u32, usize> = (1..=NODES).map(|n| (n, 0)).collect();
        for leader in led.iter().flatten() {
            *spread.entry(*leader).or_default() += 1;
        }
        if led.iter().all(Option::is_some) && spread.values().all(|&n| n == 1) {
            return spread;
        }
        assert!(
            Instant::now() < deadline,
            "leaders not spread within {limit:?} {when}: {led:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Each partition's leader, if every node that answers names the same one.
fn leaders(addrs: &[String]) -> Vec<Option<u32>> {
    let addrs = addrs.to_vec();
    on_executor(async move || {
        let client = client(addrs.clone());
        let mut views: Vec<Metadata> = Vec::new();
        for addr in &addrs {
            let answer = client
                .call(addr, &ringlog::transport::ClientRequest::Metadata)
                .await;
            if let Ok(Ok(ringlog::transport::ClientResponse::Metadata(m))) = answer {
                views.push(m);
            }
        }
        (0..PARTITIONS as usize)
            .map(|p| {
                let named: Vec<Option<u32>> = views
                    .iter()
                    .map(|m| m.partitions.get(p).and_then(|i| i.leader))
                    .collect();
                let first = *named.first()?;
                named.iter().all(|&l| l == first).then_some(first).flatten()
            })
            .collect()
    })
}
