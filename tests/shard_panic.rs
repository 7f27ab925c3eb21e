//! A panic in any shard ends the whole `ringlog` process (fail-stop), so that a
//! supervisor restarts it, instead of leaving a node that still answers for some
//! partitions while another is dead. Run with a real process: the panic is injected
//! through the `RINGLOG_FAILPOINT` environment variable.

mod cluster_support;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster_support::{TestCluster, await_leaders, client, on_executor};

#[test]
fn a_panic_in_a_shard_other_than_the_first_aborts_the_process() {
    let mut cluster = TestCluster::configure_routed(1, 2, |_, _, addr| addr);
    cluster.set_env(0, "RINGLOG_FAILPOINT", "shard-panic-on-append=1");
    cluster.spawn_all();
    let addrs = cluster.client_addrs();
    let (first, second) = on_executor(async move || {
        let client = client(addrs);
        await_leaders(&client, 2, Duration::from_secs(20)).await;
        let first = client.append(0, vec![Bytes::from_static(b"served")]).await;
        let second = client.append(1, vec![Bytes::from_static(b"panics")]).await;
        (
            first.map(|ok| ok.last_index),
            second.map(|ok| ok.last_index),
        )
    });
    assert!(first.is_ok(), "shard 0 should serve normally: {first:?}");
    assert!(second.is_err(), "shard 1 must not acknowledge: {second:?}");

    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = cluster.exited_by_itself(0) {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the node still runs 20 s after shard 1 panicked: half alive"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "the process should abort on the panic, not exit normally: {status:?}"
    );
}
