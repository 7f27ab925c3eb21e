//! The servers' CPU time, from `/proc`: of whole node processes, and of each of
//! their threads.

use super::threads::{ThreadCpu, ThreadSample};

/// The servers' CPU counters at one moment.
pub(super) struct CpuSample {
    seconds: Option<f64>,
    threads: Option<ThreadSample>,
}

/// What the servers used between two samples, where known.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct CpuUsed {
    /// All node processes together.
    pub(super) seconds: Option<f64>,
    /// Per node, by group of threads.
    pub(super) threads: Option<Vec<Vec<ThreadCpu>>>,
}

impl CpuSample {
    /// The counters of `pids` now (none without pids).
    pub(super) fn take(pids: &[u32]) -> CpuSample {
        CpuSample {
            seconds: cpu_seconds(pids),
            threads: ThreadSample::take(pids),
        }
    }

    /// What was used from `start` to this sample.
    pub(super) fn since(&self, start: &CpuSample) -> CpuUsed {
        let threads = (start.threads.as_ref())
            .zip(self.threads.as_ref())
            .map(|(start, end)| end.since(start, ticks_per_second()));
        CpuUsed {
            seconds: start
                .seconds
                .zip(self.seconds)
                .map(|(start, end)| end - start),
            threads,
        }
    }
}

/// The unit of the CPU times in `/proc`.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// User plus system CPU seconds used so far by `pids` (all their threads), from
/// `/proc/PID/stat`; None without pids or when one cannot be read.
fn cpu_seconds(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    let ticks_per_second = ticks_per_second();
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        ticks += process_cpu_ticks(&stat)?;
    }
    Some(ticks as f64 / ticks_per_second)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The command name
/// (field 2) is in parentheses and may hold spaces, so fields count from the last ')'.
pub(super) fn process_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name come state (field 3) onwards: utime is field 14, index 11 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_come_from_after_the_command_name() {
        let stat = "4242 (ringlog (x) y) S 1 4242 4242 0 -1 4194560 500 0 0 0 1234 567 0 0 20 0 3 0 100 0 0";
        assert_eq!(process_cpu_ticks(stat), Some(1234 + 567));
        assert_eq!(process_cpu_ticks("garbage"), None);
        let own = cpu_seconds(&[std::process::id()]).expect("this process has a stat");
        assert!(own >= 0.0);
        assert_eq!(cpu_seconds(&[]), None);
    }
}
