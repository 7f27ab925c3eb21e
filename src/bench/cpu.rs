//! The servers' CPU time, from `/proc`: of whole node processes, and of each of
//! their threads.

/// User plus system CPU seconds used so far by `pids` (all their threads), from
/// `/proc/PID/stat`; None without pids or when one cannot be read.
pub(super) fn cpu_seconds(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        ticks += process_cpu_ticks(&stat)?;
    }
    Some(ticks as f64 / ticks_per_second)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The command name
/// (field 2) is in parentheses and may hold spaces, so fields count from the last ')'.
fn process_cpu_ticks(stat: &str) -> Option<u64> {
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
