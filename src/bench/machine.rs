//! Facts about the machine the benchmark runs on that change what its latencies
//! mean, read from `/sys` and reported with the results.
//!
//! On a virtual machine whose guest kernel halts an idle CPU at once (the haltpoll
//! cpuidle driver with its polling set to 0), every thread woken on an idle CPU
//! waits until the host resumes that CPU. On the development VM that made the
//! loopback round trip 3 – 5 times as long and one client's p50 about 1.4 times
//! (docs/operations.md, docs/performance.md "Eighth look"), so a figure compares
//! only with others taken with the same setting.

/// The cpuidle driver the kernel uses.
const CPUIDLE_DRIVER_PATH: &str = "/sys/devices/system/cpu/cpuidle/current_driver";
/// With the haltpoll driver: how long an idle CPU polls before it halts.
const HALT_POLL_NS_PATH: &str = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Machine {
    /// CPUs this process may run on.
    pub cpus: usize,
    /// The cpuidle driver, when the kernel says.
    pub cpuidle_driver: Option<String>,
    /// The haltpoll driver's polling time, when it is loaded.
    pub guest_halt_poll_ns: Option<u64>,
}

impl Machine {
    /// The facts of the machine this runs on; what cannot be read is None.
    pub fn read() -> Machine {
        let read = |path| std::fs::read_to_string(path).ok();
        Machine::from_files(
            std::thread::available_parallelism().map_or(0, usize::from),
            read(CPUIDLE_DRIVER_PATH),
            read(HALT_POLL_NS_PATH),
        )
    }

    fn from_files(cpus: usize, driver: Option<String>, halt_poll_ns: Option<String>) -> Machine {
        Machine {
            cpus,
            cpuidle_driver: driver
                .map(|d| d.trim().to_string())
                .filter(|d| !d.is_empty()),
            guest_halt_poll_ns: halt_poll_ns.and_then(|n| n.trim().parse().ok()),
        }
    }

    /// Whether idle CPUs halt without polling first, under the haltpoll driver.
    pub fn halts_idle_cpus_at_once(&self) -> bool {
        self.cpuidle_driver.as_deref() == Some("haltpoll") && self.guest_halt_poll_ns == Some(0)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "cpus": self.cpus,
            "cpuidle_driver": self.cpuidle_driver,
            "guest_halt_poll_ns": self.guest_halt_poll_ns,
        })
    }

    /// One line for the text report.
    pub fn to_text(&self) -> String {
        let driver = self.cpuidle_driver.as_deref().unwrap_or("unknown");
        let polling = match self.guest_halt_poll_ns {
            _ if self.halts_idle_cpus_at_once() => {
                ", guest halt polling off: a thread woken on an idle CPU waits for the host \
                 (docs/operations.md)"
                    .to_string()
            }
            Some(ns) => format!(", guest halt polling {} µs", ns / 1000),
            None => String::new(),
        };
        format!("\nmachine: {} CPUs, cpuidle {driver}{polling}", self.cpus)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(driver: Option<&str>, ns: Option<&str>) -> Machine {
        Machine::from_files(2, driver.map(String::from), ns.map(String::from))
    }

    #[test]
    fn a_vm_that_halts_at_once_is_told_apart() {
        let off = files(Some("haltpoll\n"), Some("0\n"));
        assert_eq!(off.cpuidle_driver.as_deref(), Some("haltpoll"));
        assert_eq!(off.guest_halt_poll_ns, Some(0));
        assert!(off.halts_idle_cpus_at_once());
        assert!(
            off.to_text().contains("guest halt polling off"),
            "{}",
            off.to_text()
        );
        let on = files(Some("haltpoll\n"), Some("200000\n"));
        assert!(!on.halts_idle_cpus_at_once());
        assert_eq!(
            on.to_text(),
            "\nmachine: 2 CPUs, cpuidle haltpoll, guest halt polling 200 µs"
        );
        // Another driver ignores the haltpoll module's setting.
        assert!(!files(Some("intel_idle"), Some("0")).halts_idle_cpus_at_once());
    }

    #[test]
    fn what_cannot_be_read_is_unknown() {
        let unknown = files(None, Some("not a number"));
        assert_eq!(unknown.cpuidle_driver, None);
        assert_eq!(unknown.guest_halt_poll_ns, None);
        assert!(!unknown.halts_idle_cpus_at_once());
        assert_eq!(unknown.to_text(), "\nmachine: 2 CPUs, cpuidle unknown");
        let v = unknown.to_json();
        assert_eq!(v["cpus"], 2);
        assert!(v["cpuidle_driver"].is_null() && v["guest_halt_poll_ns"].is_null());
        assert_eq!(files(Some(" \n"), None).cpuidle_driver, None);
        // This machine's own facts read without failing.
        assert!(Machine::read().cpus >= 1);
    }
}
