//! Free loopback ports for tests and for local clusters (`ringlog bench --local`).
//!
//! Every caller in a process draws from one allocator, so that two threads (tests
//! run in parallel threads of one binary) never get the same port before either
//! binds it. The allocator:
//! - picks its starting point once per process from the pid and the clock, so that
//!   test binaries running side by side start in different places, and goes on
//!   from there in order;
//! - remembers every port it has handed out and never hands one out twice;
//! - hands out only ports it could bind at that moment;
//! - stays in [`PORT_MIN`, `PORT_END`), below the kernel's ephemeral range (32768 and
//!   up by default), so that no outgoing connection can take a port while the node
//!   that owns it is down for a restart. Binding port 0 would not give that promise.
//!
//! What it cannot prevent is another process binding a port between our check and
//! our use; the per-process salt only makes that unlikely.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Mutex, OnceLock};

use thiserror::Error;

/// The lowest port handed out.
pub const PORT_MIN: u16 = 20_000;
/// One past the highest port handed out; below the default ephemeral range.
pub const PORT_END: u16 = 32_000;

const PORT_SPAN: u32 = (PORT_END - PORT_MIN) as u32;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PortError {
    #[error(
        "no {len} consecutive free loopback ports left in {PORT_MIN}..{PORT_END} ({handed_out} already handed out by this process)"
    )]
    Exhausted { len: u16, handed_out: usize },
}

struct Allocator {
    /// Offset into the range where the search for the next port starts. Ports go out
    /// in order from there, so that what is left stays in long runs for
    /// `free_port_run`; processes start at different offsets.
    next: u32,
    handed_out: HashSet<u16>,
}

impl Allocator {
    /// The first port of a run of `len` ports that are neither handed out before
    /// nor bound by anyone now; marks them all handed out.
    fn take_run(&mut self, len: u16) -> Result<u16, PortError> {
        let len_u32 = u32::from(len);
        if len == 0 || len_u32 > PORT_SPAN {
            return Err(self.exhausted(len));
        }
        for step in 0..PORT_SPAN {
            let offset = (self.next + step) % PORT_SPAN;
            if offset + len_u32 > PORT_SPAN {
                continue;
            }
            let base = PORT_MIN + offset as u16;
            let ports = base..base + len;
            if ports.clone().any(|p| self.handed_out.contains(&p)) {
                continue;
            }
            if ports.clone().all(can_bind) {
                self.handed_out.extend(ports);
                self.next = (offset + len_u32) % PORT_SPAN;
                return Ok(base);
            }
        }
        Err(self.exhausted(len))
    }

    fn exhausted(&self, len: u16) -> PortError {
        PortError::Exhausted {
            len,
            handed_out: self.handed_out.len(),
        }
    }
}

fn can_bind(port: u16) -> bool {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_ok()
}

fn allocator() -> &'static Mutex<Allocator> {
    static ALLOCATOR: OnceLock<Mutex<Allocator>> = OnceLock::new();
    ALLOCATOR.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let salt = u64::from(std::process::id()) * 7919 + u64::from(nanos);
        Mutex::new(Allocator {
            next: (salt % u64::from(PORT_SPAN)) as u32,
            handed_out: HashSet::new(),
        })
    })
}

/// A loopback port that was free just now and that this process has not handed out
/// before.
pub fn free_port() -> Result<u16, PortError> {
    free_port_run(1)
}

/// The first of `len` consecutive loopback ports, all free just now and none handed
/// out before by this process: for layouts like `ringlog dev`'s, where node i uses
/// BASE+10i, BASE+10i+1 and BASE+10i+2.
pub fn free_port_run(len: u16) -> Result<u16, PortError> {
    // A panic while holding the lock leaves the set intact, so a poisoned lock is
    // still safe to use.
    let mut allocator = allocator()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    allocator.take_run(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_inside_the_range_and_never_overlaps_single_ports() {
        let singles: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        let base = free_port_run(23).unwrap();
        assert!(base >= PORT_MIN && base + 23 <= PORT_END, "{base}");
        for p in singles {
            assert!(
                !(base..base + 23).contains(&p),
                "{p} is in the run at {base}"
            );
        }
    }

    #[test]
    fn impossible_runs_are_errors() {
        assert!(free_port_run(0).is_err());
        assert!(free_port_run(u16::MAX).is_err());
    }
}
