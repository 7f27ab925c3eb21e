//! Disk use as the tests measure it themselves (not through the node's metrics),
//! and a small filesystem made by a test for the low-disk checks.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bytes that the files under `dir` take, `du`-style but never below a file's
/// length: each file counts the larger of its allocated blocks and its apparent
/// size, so neither a preallocated nor a sparse segment escapes the count.
pub fn dir_bytes(dir: &Path) -> u64 {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    let mut total = 0;
    for entry in entries {
        let entry = entry.expect("a directory entry");
        // A file removed between the listing and the stat takes no space any more.
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len().max(meta.blocks() * 512)
        };
    }
    total
}

/// The bytes free for unprivileged writers on the filesystem holding `path`, as
/// `df` reports them.
pub fn free_bytes(path: &Path) -> u64 {
    let c_path = std::ffi::CString::new(path.to_str().expect("a UTF-8 path")).unwrap();
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    assert_eq!(rc, 0, "statvfs {}", path.display());
    stat.f_bavail * stat.f_frsize
}

/// Where a test's small filesystem is mounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MountedIn {
    /// In the test's own mount namespace (the test runs as root).
    Here,
    /// In the node's own user and mount namespace (`unshare --user
    /// --map-root-user --mount`), made as the node starts; the test reaches it
    /// through `/proc/PID/root`.
    NodeNamespace,
}

/// A tmpfs of a fixed size made for a test: mounted here and unmounted when
/// dropped (also when the test fails and unwinds), or, without the privilege to
/// mount here, mounted in the node's own namespace, which ends with the node.
/// `RINGLOG_TEST_TMPFS=userns` forces the second way.
pub struct SmallFilesystem {
    pub dir: PathBuf,
    size_bytes: u64,
    mounted_in: MountedIn,
    _parent: tempfile::TempDir,
}

impl SmallFilesystem {
    /// Makes a tmpfs of `size_bytes` at a fresh directory, or fails saying which
    /// privilege is missing (never skips).
    pub fn mount(size_bytes: u64) -> SmallFilesystem {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("small-fs");
        std::fs::create_dir(&dir).unwrap();
        let forced = std::env::var("RINGLOG_TEST_TMPFS").is_ok_and(|v| v == "userns");
        let here = if forced {
            Err("RINGLOG_TEST_TMPFS=userns".to_string())
        } else {
            run(Command::new("mount").args(tmpfs_args(size_bytes)).arg(&dir))
        };
        let mounted_in = match here {
            Ok(()) => MountedIn::Here,
            Err(why_not) => {
                let probe = run(Command::new("unshare")
                    .args(["--user", "--map-root-user", "--mount", "mount"])
                    .args(tmpfs_args(size_bytes))
                    .arg(&dir));
                if let Err(neither) = probe {
                    panic!(
                        "the low-disk test needs a {size_bytes}-byte tmpfs: mounting it needs root (CAP_SYS_ADMIN) or unprivileged user namespaces, and running as uid {} neither worked. mount: {why_not}; unshare --user --mount: {neither}",
                        unsafe { libc::getuid() }
                    );
                }
                MountedIn::NodeNamespace
            }
        };
        SmallFilesystem {
            dir,
            size_bytes,
            mounted_in,
            _parent: parent,
        }
    }

    /// Starts node `k` of `cluster` so that it sees the tmpfs at `dir`: nothing to
    /// do when it is mounted here, else through its own namespace.
    pub fn prepare_node(&self, cluster: &mut super::TestCluster, k: usize) {
        if self.mounted_in == MountedIn::NodeNamespace {
            let mut wrapper: Vec<String> = [
                "unshare",
                "--user",
                "--map-root-user",
                "--mount",
                "sh",
                "-c",
            ]
            .map(String::from)
            .to_vec();
            let args = tmpfs_args(self.size_bytes).join(" ");
            wrapper.push(format!("mount {args} \"$0\" && exec \"$@\""));
            wrapper.push(self.dir.to_str().expect("a UTF-8 path").to_string());
            cluster.set_wrapper(k, wrapper);
        }
    }

    /// The tmpfs as the test reaches it while process `pid` (the node) runs.
    pub fn seen_from_test(&self, pid: Option<u32>) -> PathBuf {
        match self.mounted_in {
            MountedIn::Here => self.dir.clone(),
            MountedIn::NodeNamespace => {
                let pid = pid.expect("the node holding the tmpfs runs");
                PathBuf::from(format!("/proc/{pid}/root")).join(self.dir.strip_prefix("/").unwrap())
            }
        }
    }
}

/// `mount` arguments before the mount point.
fn tmpfs_args(size_bytes: u64) -> [String; 5] {
    ["-t", "tmpfs", "-o", &format!("size={size_bytes}"), "tmpfs"].map(String::from)
}

/// Runs a command to its end: Ok, or its stderr (or why it could not start).
fn run(command: &mut Command) -> Result<(), String> {
    match command.output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        Err(e) => Err(e.to_string()),
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        if self.mounted_in == MountedIn::NodeNamespace {
            return;
        }
        // Lazy: a node process still holding a file open must not keep the mount.
        let status = Command::new("umount").arg("-l").arg(&self.dir).status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("could not unmount {}: {status:?}", self.dir.display());
        }
    }
}
