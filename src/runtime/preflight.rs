//! Start-up checks that turn the usual ways a node cannot start into one clear
//! sentence each, instead of a panic deep inside an executor.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::engine::NodeId;

#[derive(Debug, Error)]
pub enum PreflightError {
    #[error(
        "the locked-memory limit (ulimit -l) is {current_kib} KiB, but io_uring needs {needed_kib} KiB for this node; \
         raise it for this shell with `ulimit -l unlimited` (as root), for a user with \
         `USER - memlock unlimited` in /etc/security/limits.conf (then log in again), \
         or under systemd with LimitMEMLOCK=infinity"
    )]
    MemlockTooLow { current_kib: u64, needed_kib: u64 },
    #[error(
        "io_uring is not available ({reason}); ringlog needs Linux 5.8 or newer with io_uring enabled \
         (/proc/sys/kernel/io_uring_disabled absent or 0, and not blocked by a seccomp profile)"
    )]
    IoUringUnavailable { reason: String },
    #[error("data directory {path} is not usable: {reason}")]
    DataDirUnusable { path: PathBuf, reason: String },
    #[error(
        "data directory {path} belongs to cluster {found_cluster} node {found_node}, but this node is \
         cluster {cluster} node {node}: point data_dir elsewhere, or remove the directory if its data is not needed"
    )]
    DataDirForeign {
        path: PathBuf,
        found_cluster: u64,
        found_node: NodeId,
        cluster: u64,
        node: NodeId,
    },
    #[error("cannot listen on {what} address {address}: {reason} (is another process using it?)")]
    AddressUnavailable {
        what: &'static str,
        address: SocketAddr,
        reason: String,
    },
}

/// Fails when the locked-memory limit is below `needed_bytes`, unless the process
/// may lock memory regardless (root has CAP_IPC_LOCK).
pub fn check_memlock(needed_bytes: u64) -> Result<(), PreflightError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let current = memlock_limit_bytes();
    if current >= needed_bytes {
        return Ok(());
    }
    Err(PreflightError::MemlockTooLow {
        current_kib: current / 1024,
        needed_kib: needed_bytes.div_ceil(1024),
    })
}

/// The soft RLIMIT_MEMLOCK in bytes (`u64::MAX` when unlimited).
pub fn memlock_limit_bytes() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for getrlimit to fill.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if rc != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return u64::MAX;
    }
    limit.rlim_cur
}

/// Asks the kernel for a tiny io_uring and closes it again.
pub fn check_io_uring() -> Result<(), PreflightError> {
    // io_uring_params is 120 bytes; zeroed means "no flags, kernel picks sizes".
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes only the 120-byte params buffer.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        let error = std::io::Error::last_os_error();
        let reason = match error.raw_os_error() {
            Some(libc::ENOSYS) => "the kernel has no io_uring".to_string(),
            Some(libc::EPERM) => {
                "io_uring is disabled for this process (io_uring_disabled sysctl or seccomp)"
                    .to_string()
            }
            Some(libc::ENOMEM) => {
                "the kernel refused memory for a ring; check ulimit -l".to_string()
            }
            _ => error.to_string(),
        };
        return Err(PreflightError::IoUringUnavailable { reason });
    }
    // SAFETY: `fd` is a file descriptor this function just obtained and owns.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// The file in a data directory that says whose data it holds.
pub const IDENTITY_FILE: &str = "ringlog-node-id";

/// Creates `dir` if needed, proves it writable, and checks (or, the first time,
/// records durably) that it belongs to this cluster and node.
pub fn check_data_dir(dir: &Path, cluster: u64, node: NodeId) -> Result<(), PreflightError> {
    let unusable = |reason: String| PreflightError::DataDirUnusable {
        path: dir.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| unusable(format!("cannot create it: {e}")))?;
    let identity_path = dir.join(IDENTITY_FILE);
    match std::fs::read_to_string(&identity_path) {
        Ok(text) => {
            let (found_cluster, found_node) = parse_identity(&text)
                .ok_or_else(|| unusable(format!("{IDENTITY_FILE} is damaged: {text:?}")))?;
            if (found_cluster, found_node) != (cluster, node) {
                return Err(PreflightError::DataDirForeign {
                    path: dir.to_path_buf(),
                    found_cluster,
                    found_node,
                    cluster,
                    node,
                });
            }
            probe_writable(dir).map_err(|e| unusable(format!("not writable: {e}")))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_identity(dir, cluster, node)
            .map_err(|e| unusable(format!("cannot write {IDENTITY_FILE}: {e}"))),
        Err(e) => Err(unusable(format!("cannot read {IDENTITY_FILE}: {e}"))),
    }
}

fn parse_identity(text: &str) -> Option<(u64, NodeId)> {
    let mut cluster = None;
    let mut node = None;
    for line in text.lines() {
        match line.split_once('=') {
            Some(("cluster_id", value)) => cluster = value.trim().parse().ok(),
            Some(("node_id", value)) => node = value.trim().parse().ok(),
            _ => {}
        }
    }
    Some((cluster?, node?))
}

/// Written to a temporary name, synced, renamed, and the directory synced, so that
/// a crash leaves either no identity or a whole one.
fn write_identity(dir: &Path, cluster: u64, node: NodeId) -> std::io::Result<()> {
    let temporary = dir.join(format!("{IDENTITY_FILE}.tmp"));
    let mut file = std::fs::File::create(&temporary)?;
    writeln!(file, "cluster_id={cluster}\nnode_id={node}")?;
    file.sync_all()?;
    std::fs::rename(&temporary, dir.join(IDENTITY_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(".ringlog-write-probe");
    std::fs::write(&probe, b"ok")?;
    std::fs::remove_file(probe)
}

/// Fails early, with the address named, when a listen address is taken.
pub fn check_address_free(what: &'static str, address: SocketAddr) -> Result<(), PreflightError> {
    TcpListener::bind(address)
        .map(drop)
        .map_err(|e| PreflightError::AddressUnavailable {
            what,
            address,
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_uring_is_available_here() {
        check_io_uring().expect("the test machine has io_uring");
    }

    #[test]
    fn memlock_message_says_how_to_raise_it() {
        let error = PreflightError::MemlockTooLow {
            current_kib: 8192,
            needed_kib: 65536,
        };
        let text = error.to_string();
        assert!(
            text.contains("8192 KiB")
                && text.contains("ulimit -l unlimited")
                && text.contains("LimitMEMLOCK")
        );
        assert!(memlock_limit_bytes() > 0);
    }

    #[test]
    fn data_dir_is_claimed_once_and_refused_to_others() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        check_data_dir(&data, 7, 1).expect("fresh directory is claimed");
        check_data_dir(&data, 7, 1).expect("same node again");
        let foreign = check_data_dir(&data, 7, 2).unwrap_err();
        assert!(
            foreign.to_string().contains("belongs to cluster 7 node 1"),
            "{foreign}"
        );
        let other_cluster = check_data_dir(&data, 8, 1).unwrap_err();
        assert!(matches!(
            other_cluster,
            PreflightError::DataDirForeign {
                found_cluster: 7,
                ..
            }
        ));
    }

    #[test]
    fn data_dir_that_is_a_file_is_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let error = check_data_dir(&file, 1, 1).unwrap_err();
        assert!(
            matches!(error, PreflightError::DataDirUnusable { .. }),
            "{error}"
        );
    }

    #[test]
    fn taken_port_is_named() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap();
        let error = check_address_free("client", address).unwrap_err();
        assert!(error.to_string().contains(&address.to_string()), "{error}");
        drop(taken);
        check_address_free("client", address).expect("free again");
    }
}
