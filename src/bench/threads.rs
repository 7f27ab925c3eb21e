//! The servers' CPU time per thread, from `/proc/PID/task/*/stat`: how a node's
//! CPU divides between its executor threads (`shard-N`) and everything else, which
//! shows whether one core does the work of all.

use std::collections::BTreeMap;

use super::cpu::process_cpu_ticks;

/// What one group of a node's threads used in the measured window.
#[derive(Clone, Debug, PartialEq)]
pub struct ThreadCpu {
    /// An executor thread's name (`shard-N`), or `other` for all the node's other
    /// threads together.
    pub thread: String,
    /// User plus system CPU seconds.
    pub cpu_seconds: f64,
    /// Of the node's CPU time in the window (the sum over its threads), 0 to 1.
    pub share: f64,
}

/// One thread's name and CPU ticks so far.
#[derive(Clone, Debug, PartialEq)]
struct ThreadStat {
    name: String,
    ticks: u64,
}

/// The threads of each node process at one moment, by thread id.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct ThreadSample(Vec<BTreeMap<u32, ThreadStat>>);

impl ThreadSample {
    /// The threads of each of `pids`; None without pids or when a process's thread
    /// list cannot be read.
    pub(super) fn take(pids: &[u32]) -> Option<ThreadSample> {
        if pids.is_empty() {
            return None;
        }
        let nodes: Option<Vec<_>> = pids.iter().map(|&pid| node_threads(pid)).collect();
        Some(ThreadSample(nodes?))
    }

    /// Per node (in the order of the pids), what each group of its threads used
    /// since `start`.
    pub(super) fn since(&self, start: &ThreadSample, ticks_per_second: f64) -> Vec<Vec<ThreadCpu>> {
        let empty = BTreeMap::new();
        self.0
            .iter()
            .enumerate()
            .map(|(node, end)| {
                let before = start.0.get(node).unwrap_or(&empty);
                split(before, end, ticks_per_second)
            })
            .collect()
    }
}

/// The threads of process `pid` now; None when its thread list cannot be read.
fn node_threads(pid: u32) -> Option<BTreeMap<u32, ThreadStat>> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut threads = BTreeMap::new();
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // A thread that ended since the listing has no stat any more: its time is
        // lost with it, like that of any thread that ends within the window.
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        if let Some(thread) = thread_stat(&stat) {
            threads.insert(tid, thread);
        }
    }
    Some(threads)
}

/// The name (field 2) and utime + stime of a `/proc/PID/task/TID/stat` line. The
/// name is in parentheses and may itself hold spaces and parentheses, so it runs
/// from the first '(' to the last ')'.
fn thread_stat(stat: &str) -> Option<ThreadStat> {
    let name = stat.get(stat.find('(')? + 1..stat.rfind(')')?)?;
    Some(ThreadStat {
        name: name.to_string(),
        ticks: process_cpu_ticks(stat)?,
    })
}

/// Where a thread's CPU time is reported: executor threads on their own, ordered
/// by shard, all others together after them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Group {
    Shard(u32),
    Other,
}

impl Group {
    fn of(name: &str) -> Group {
        match name.strip_prefix("shard-").map(str::parse) {
            Some(Ok(shard)) => Group::Shard(shard),
            _ => Group::Other,
        }
    }

    fn name(self) -> String {
        match self {
            Group::Shard(shard) => format!("shard-{shard}"),
            Group::Other => "other".to_string(),
        }
    }
}

/// What the groups of one node's threads used from `start` to `end`. A thread that
/// started in the window used all its ticks in it.
fn split(
    start: &BTreeMap<u32, ThreadStat>,
    end: &BTreeMap<u32, ThreadStat>,
    ticks_per_second: f64,
) -> Vec<ThreadCpu> {
    let mut groups: BTreeMap<Group, u64> = BTreeMap::new();
    for (tid, thread) in end {
        let before = start.get(tid).map_or(0, |s| s.ticks);
        *groups.entry(Group::of(&thread.name)).or_default() += thread.ticks.saturating_sub(before);
    }
    let total: u64 = groups.values().sum();
    groups
        .into_iter()
        .map(|(group, ticks)| ThreadCpu {
            thread: group.name(),
            cpu_seconds: ticks as f64 / ticks_per_second,
            share: if total > 0 {
                ticks as f64 / total as f64
            } else {
                0.0
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stat line of thread `tid` named `name` with these user and system ticks.
    fn stat_line(tid: u32, name: &str, utime: u64, stime: u64) -> String {
        format!(
            "{tid} ({name}) S 1 42 42 0 -1 4194368 90 0 0 0 {utime} {stime} 0 0 20 0 4 0 77 0 0"
        )
    }

    fn threads(list: &[(u32, &str, u64)]) -> BTreeMap<u32, ThreadStat> {
        list.iter()
            .map(|&(tid, name, ticks)| {
                let thread = thread_stat(&stat_line(tid, name, ticks, 0)).unwrap();
                (tid, thread)
            })
            .collect()
    }

    #[test]
    fn a_thread_name_may_hold_spaces_and_parentheses() {
        let parsed = thread_stat(&stat_line(7, "shard-1", 30, 12)).unwrap();
        assert_eq!((parsed.name.as_str(), parsed.ticks), ("shard-1", 42));
        let odd = thread_stat(&stat_line(8, "a) (b c)", 5, 6)).unwrap();
        assert_eq!((odd.name.as_str(), odd.ticks), ("a) (b c)", 11));
        for bad in ["", "garbage", "7 )shard-1( S", "7 (shard-1) S 1 2"] {
            assert_eq!(thread_stat(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn executor_threads_stand_alone_and_the_rest_is_other() {
        assert_eq!(Group::of("shard-0"), Group::Shard(0));
        assert_eq!(Group::of("shard-12"), Group::Shard(12));
        for other in ["ringlog", "shard-", "shard-x", "shard-1 (x)", "my-shard-1"] {
            assert_eq!(Group::of(other), Group::Other, "{other}");
        }
        // Shards in numeric order, then the rest.
        let mut groups = [Group::Other, Group::Shard(10), Group::Shard(2)];
        groups.sort();
        let names: Vec<String> = groups.iter().map(|g| g.name()).collect();
        assert_eq!(names, ["shard-2", "shard-10", "other"]);
    }

    #[test]
    fn the_split_counts_the_window_and_shares_add_up() {
        let start = threads(&[(1, "ringlog", 100), (2, "shard-0", 50), (3, "shard-1", 10)]);
        let end = threads(&[
            (1, "ringlog", 100),
            (2, "shard-0", 98),
            (3, "shard-1", 55),
            // Started within the window: all its ticks are the window's.
            (4, "blocking", 7),
        ]);
        let split = split(&start, &end, 100.0);
        let shown: Vec<(&str, f64, f64)> = split
            .iter()
            .map(|t| (t.thread.as_str(), t.cpu_seconds, t.share))
            .collect();
        assert_eq!(
            shown,
            [
                ("shard-0", 0.48, 0.48),
                ("shard-1", 0.45, 0.45),
                ("other", 0.07, 0.07)
            ]
        );
        // A node that used nothing has no shares to give.
        let idle = super::split(&start, &start, 100.0);
        assert!(idle.iter().all(|t| t.cpu_seconds == 0.0 && t.share == 0.0));
        assert_eq!(idle.len(), 3);
    }

    #[test]
    fn this_process_has_threads_to_sample() {
        let pid = std::process::id();
        let start = ThreadSample::take(&[pid]).expect("this process has a task list");
        assert!(!start.0[0].is_empty());
        let end = ThreadSample::take(&[pid]).unwrap();
        let split = end.since(&start, 100.0);
        assert_eq!(split.len(), 1);
        assert!(split[0].iter().all(|t| t.cpu_seconds >= 0.0));
        assert_eq!(ThreadSample::take(&[]), None);
    }
}
