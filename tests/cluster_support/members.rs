//! Listing and changing a cluster's membership from the tests.

use std::time::{Duration, Instant};

use ringlog::client::{Client, ClientConfig};
use ringlog::transport::PartitionMembers;

/// A client that waits longer than the server's membership deadline (4 s), so
/// that it hears each partition's outcome.
pub fn patient_client(addrs: Vec<String>) -> Client {
    let mut config = ClientConfig::new(addrs);
    config.tls = super::tls::client_tls();
    config.request_timeout_ms = 8_000;
    config.retry_backoff_max_ms = 200;
    Client::new(config)
}

/// The voters of a partition's listing, by id.
pub fn voters(p: &PartitionMembers) -> Vec<u32> {
    p.members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.node_id)
        .collect()
}

/// Every `partitions` partition's listing, once `check` holds for each; panics
/// with the last listing seen after `limit`.
pub async fn await_listing(
    client: &Client,
    partitions: usize,
    limit: Duration,
    check: impl Fn(&PartitionMembers) -> bool,
) -> Vec<PartitionMembers> {
    let deadline = Instant::now() + limit;
    let mut last = Vec::new();
    loop {
        if let Ok(listing) = client.members().await {
            let listed: Vec<PartitionMembers> =
                listing.into_iter().filter_map(|p| p.result.ok()).collect();
            if listed.len() == partitions && listed.iter().all(&check) {
                return listed;
            }
            last = listed;
        }
        assert!(
            Instant::now() < deadline,
            "no listing as expected within {limit:?}; the last: {last:?}"
        );
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
}
