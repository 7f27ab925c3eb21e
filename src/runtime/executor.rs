//! How a shard's glommio executor is built, and why every setting other than its
//! placement, name and I/O memory stays at glommio's default.
//!
//! Issue 16 asked whether glommio's configuration could remove the cost of an
//! executor going to sleep and being woken each round. It cannot, and these notes
//! record why, so that the settings below are not retried blindly. The figures are
//! from `ringlog bench --local` on the 2-core development VM (shared, noisy; medians
//! of 3 runs alternating the variants), counting syscalls of the node processes with
//! `perf stat -e syscalls:sys_enter_*`.
//!
//! - A park costs one `membarrier(PRIVATE_EXPEDITED)`, one io_uring submission (a
//!   poll linking the rings) and one waiting `io_uring_enter`; every pass of the
//!   executor's loop, parked or not, also cancels and re-arms its preemption timers
//!   in three `io_uring_enter` calls. With 64 clients × 1 append on 3 nodes that is
//!   about 6 parks and 54 `io_uring_enter` calls per round of 64 records, and the
//!   membarriers are under 1 % of node CPU (perf profile). glommio 0.9 has no setting
//!   to skip the membarrier. A build of glommio with a SeqCst fence in its place
//!   removed every membarrier and, while every pass still re-armed its timers,
//!   changed server CPU per record by less than the noise (18.2 → 17.8 µs at 1
//!   shard, 36.4 → 36.0 µs at 2 shards); once those re-arms were patched away
//!   (below), the membarrier was a visible part of what was left, so the fence is
//!   now part of the patch.
//! - `spin_before_park` is not set: on two cores shared by three nodes and the
//!   client, spinning takes the core from the thread that would answer, so rounds get
//!   longer and parks do not go away. At 64 clients it raised server CPU per record
//!   from 19.6 to 25.3 µs (50 µs of spin) and 43.0 µs (200 µs), and lowered the rate
//!   from 24,184 to 21,046 and 11,247 records/s. glommio also ignores the setting for
//!   an executor placed `Unbound` (an unpinned shard), so it only ever acts on pinned
//!   shards.
//! - `preempt_timer` stays at its default (100 ms): upstream re-armed the timers on
//!   every pass whatever their duration, and 1 ms, 100 ms and 1 s gave the same
//!   syscalls per record (0.79 – 0.88 `io_uring_enter`). With the patch below, the
//!   duration also sets how often an idle executor wakes to arm its latency timer
//!   again: ten times a second.
//! - What configuration could not do, a patch does: glommio is used from
//!   `vendor/glommio` (see `vendor/README.md`), whose executor keeps its preemption
//!   timers, the timer that ends a sleep and the poll that links its rings armed
//!   until they fire, instead of cancelling and re-arming them on every pass. That
//!   took a request from 17 to about 3 `io_uring_enter` calls on an idle node
//!   (docs/performance.md, "Sixth look" and "Seventh look"). It also parks with a
//!   fence instead of a membarrier, paired with a fence on the side that wakes a
//!   sleeping executor ("Eighth look"); the test below checks that no wake-up is
//!   lost to that.

use glommio::{LocalExecutorBuilder, Placement};

/// The builder of shard `shard`'s executor, registering `io_memory_bytes` of I/O
/// buffers with io_uring.
pub fn shard_executor(
    shard: u32,
    placement: Placement,
    io_memory_bytes: usize,
) -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(placement)
        .name(&format!("shard-{shard}"))
        .io_memory(io_memory_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Round trips between two executors, each asleep whenever the other holds the
    /// message: every one of them wakes a sleeping executor from another thread.
    const ROUND_TRIPS: u32 = 20_000;

    /// glommio is patched to park with a fence instead of a membarrier (see
    /// `vendor/README.md`); a wake-up lost to that would leave an executor asleep
    /// until its preemption timer fires. The timer is set far beyond the test's
    /// deadline, so a lost wake-up fails the test instead of slowing it down.
    #[test]
    fn no_wake_up_between_executors_is_lost() {
        let (ping_tx, ping_rx) = flume::bounded::<u32>(1);
        let (pong_tx, pong_rx) = flume::bounded::<u32>(1);
        let (done_tx, done_rx) = mpsc::channel();
        let builder = |shard| {
            shard_executor(shard, Placement::Unbound, 1 << 20)
                .preempt_timer(Duration::from_secs(600))
        };
        let echo = builder(0)
            .spawn(move || async move {
                while let Ok(n) = ping_rx.recv_async().await {
                    pong_tx.send_async(n).await.expect("pinger gone");
                }
            })
            .expect("echo executor");
        let pinger = builder(1)
            .spawn(move || async move {
                for n in 0..ROUND_TRIPS {
                    ping_tx.send_async(n).await.expect("echo gone");
                    assert_eq!(pong_rx.recv_async().await, Ok(n));
                }
                done_tx.send(()).expect("test gone");
            })
            .expect("pinger executor");
        // Healthy, this takes about a second; a lost wake-up stalls for 600 s. A
        // pinger that ended without finishing says why when it is joined below.
        if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(Duration::from_secs(120))
        {
            panic!("a wake-up between executors was lost");
        }
        pinger.join().expect("pinger");
        echo.join().expect("echo");
    }
}
