//! Start-up checks that turn the usual ways a node cannot start into one clear
//! sentence each, instead of a panic deep inside an executor.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::identity::{Identity, check_identity};
use crate::wal::dir::{DirSyncer, create_dir_durably_with, sync_dir};

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
        "{path} says this data directory belongs to node {} of cluster {} with {} shards, \
         but this node is configured as node {} of cluster {} with {} shards: point data_dir \
         elsewhere, or fix {fix} in the configuration",
        found.node_id, found.cluster_id, found.shards,
        configured.node_id, configured.cluster_id, configured.shards
    )]
    DataDirForeign {
        /// The identity file.
        path: PathBuf,
        found: Identity,
        configured: Identity,
        /// The settings that differ.
        fix: String,
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

/// Creates `dir` if needed, proves it writable, and checks (or, the first time,
/// records durably) that it belongs to this cluster, node and shard count.
/// Returns the directory's identity (see [`check_identity`]).
pub fn check_data_dir(dir: &Path, identity: &Identity) -> Result<Identity, PreflightError> {
    check_data_dir_with(dir, identity, &mut sync_dir)
}

/// `check_data_dir` with the syncs of the directory's creation going to `sync`.
fn check_data_dir_with(
    dir: &Path,
    identity: &Identity,
    sync: DirSyncer,
) -> Result<Identity, PreflightError> {
    let unusable = |reason: String| PreflightError::DataDirUnusable {
        path: dir.to_path_buf(),
        reason,
    };
    // The identity file and every shard's WAL live below: the directory's own
    // entry must survive a power loss as surely as they do.
    create_dir_durably_with(dir, sync).map_err(|e| unusable(format!("cannot create it: {e}")))?;
    let identity = check_identity(dir, identity)?;
    probe_writable(dir).map_err(|e| unusable(format!("not writable: {e}")))?;
    Ok(identity)
}

fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(".ringlog-write-probe");
    std::fs::write(&probe, b"ok")?;
    std::fs::remove_file(probe)
}

/// Fails early, with the address named, when a listen address is taken. A port
/// the previous run of this node just released can stay unbindable for a moment
/// after a kill, so the check tries again for up to `ADDRESS_WAIT_MS`.
pub fn check_address_free(what: &'static str, address: SocketAddr) -> Result<(), PreflightError> {
    let deadline = Instant::now() + Duration::from_millis(ADDRESS_WAIT_MS);
    loop {
        // Listeners bind with SO_REUSEADDR alone (`transport::conn::listen_exclusive`),
        // as std does here: this fails when the real bind would.
        match TcpListener::bind(address) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => {
                return Err(PreflightError::AddressUnavailable {
                    what,
                    address,
                    reason: e.to_string(),
                });
            }
        }
    }
}

/// How long start-up waits for a listen address that is in use to come free.
const ADDRESS_WAIT_MS: u64 = 5_000;

/// Holds an exclusive lock on the data directory for as long as the returned file
/// lives, so that two processes can never write one node's log.
pub fn lock_data_dir(dir: &Path) -> Result<std::fs::File, PreflightError> {
    let unusable = |reason: String| PreflightError::DataDirUnusable {
        path: dir.to_path_buf(),
        reason,
    };
    let file = std::fs::File::create(dir.join(LOCK_FILE))
        .map_err(|e| unusable(format!("cannot create {LOCK_FILE}: {e}")))?;
    // SAFETY: flock on a valid, open file descriptor.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if rc != 0 {
        return Err(unusable(
            "another ringlog process is using it (it holds the lock)".into(),
        ));
    }
    Ok(file)
}

/// The lock file in a data directory.
pub const LOCK_FILE: &str = "ringlog.lock";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::dir::tests::recording;

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

    fn identity(cluster_id: u64, node_id: u32) -> Identity {
        Identity {
            cluster_id,
            node_id,
            shards: 2,
            joined: false,
        }
    }

    #[test]
    fn data_dir_is_claimed_once_and_refused_to_others() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        check_data_dir(&data, &identity(7, 1)).expect("fresh directory is claimed");
        check_data_dir(&data, &identity(7, 1)).expect("same node again");
        let foreign = check_data_dir(&data, &identity(7, 2)).unwrap_err();
        assert!(
            foreign
                .to_string()
                .contains("belongs to node 1 of cluster 7 with 2 shards"),
            "{foreign}"
        );
        let other_cluster = check_data_dir(&data, &identity(8, 1)).unwrap_err();
        assert!(matches!(
            other_cluster,
            PreflightError::DataDirForeign { found, .. } if found.cluster_id == 7
        ));
    }

    #[test]
    fn a_fresh_data_dir_is_synced_into_its_parent() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut synced = Vec::new();
        check_data_dir_with(&data, &identity(7, 1), &mut recording(&mut synced)).expect("claimed");
        assert_eq!(synced, [dir.path().to_path_buf(), data]);
    }

    #[test]
    fn data_dir_that_is_a_file_is_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let error = check_data_dir(&file, &identity(1, 1)).unwrap_err();
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

    #[test]
    fn data_dir_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_data_dir(dir.path()).expect("first lock");
        let second = lock_data_dir(dir.path()).unwrap_err();
        assert!(
            second.to_string().contains("another ringlog process"),
            "{second}"
        );
        drop(held);
        lock_data_dir(dir.path()).expect("free once released");
    }
}
