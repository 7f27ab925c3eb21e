//! The port allocator shared by every test and by `ringlog bench --local`. This
//! binary is its only user, so the draws below see the whole of its range.

use std::collections::HashSet;

use ringlog::ports::{PORT_END, PORT_MIN, free_port, free_port_run};

/// Tests in one binary run in parallel threads; a port handed to one of them must
/// never be handed to another, whatever other processes do with their ports.
#[test]
fn ports_drawn_from_many_threads_at_once_are_all_distinct() {
    let threads = 8;
    let per_thread = 250;
    let start = std::sync::Barrier::new(threads);
    let drawn: Vec<u16> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    (0..per_thread)
                        .map(|_| free_port().expect("a free port"))
                        .collect::<Vec<u16>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let distinct: HashSet<u16> = drawn.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        drawn.len(),
        "{} of {} ports were handed out twice",
        drawn.len() - distinct.len(),
        drawn.len()
    );
    // Below the ephemeral range, so no outgoing connection can take one.
    assert!(drawn.iter().all(|p| (PORT_MIN..PORT_END).contains(p)));
    // Runs for local clusters come from the same allocator and so overlap nothing.
    let base = free_port_run(23).expect("a run of free ports");
    assert!((base..base + 23).all(|p| !distinct.contains(&p)));
}
