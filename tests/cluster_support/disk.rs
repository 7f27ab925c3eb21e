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

/// A tmpfs of a fixed size mounted by the test, unmounted when dropped (also when
/// the test fails and unwinds).
pub struct SmallFilesystem {
    pub dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl SmallFilesystem {
    /// Mounts a tmpfs of `size_bytes` at a fresh directory. Needs root (or
    /// CAP_SYS_ADMIN): the test says so instead of skipping.
    pub fn mount(size_bytes: u64) -> SmallFilesystem {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("small-fs");
        std::fs::create_dir(&dir).unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_bytes}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("run mount(8)");
        assert!(
            output.status.success(),
            "the low-disk test mounts a {size_bytes}-byte tmpfs and needs root (CAP_SYS_ADMIN) for it; running as uid {}, mount said: {}",
            unsafe { libc::getuid() },
            String::from_utf8_lossy(&output.stderr).trim()
        );
        SmallFilesystem {
            dir,
            _parent: parent,
        }
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        // Lazy: a node process still holding a file open must not keep the mount.
        let status = Command::new("umount").arg("-l").arg(&self.dir).status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("could not unmount {}: {status:?}", self.dir.display());
        }
    }
}
