//! The storage the WAL runs on: a directory of files with positioned, block-aligned
//! writes, syncs and directory operations. [`DmaStorage`] is the real one (glommio DMA
//! files, O_DIRECT); `sim::SimStorage` records every operation so that tests can
//! build the disk image of a crash at any point.
//!
//! The traits use `async fn` without `Send` bounds on purpose: a WAL lives on one
//! thread-per-core executor and its futures never move between threads.
#![allow(async_fn_in_trait)]

use super::buffer::{DmaVec, RecordBuf};
use super::dir::{DirSyncer, create_dir_durably_with, sync_dir};
use super::error::{WalResult, io_err};
use glommio::io::{Directory, DmaBuffer, DmaFile, OpenOptions};
use std::cell::Cell;
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Removes file `name` and syncs the directory, so that the removal is durable
/// before anything that relies on it.
pub async fn remove_durably<S: Storage>(storage: &S, name: &str) -> WalResult<()> {
    storage
        .remove(name)
        .await
        .map_err(io_err(format!("removing {name}")))?;
    storage
        .sync_dir()
        .await
        .map_err(io_err("syncing the WAL directory"))
}

/// A directory of files.
pub trait Storage: 'static {
    type File: StorageFile + 'static;
    /// The block size: every write position and length is a multiple of it.
    fn block_bytes(&self) -> usize;
    /// Whether every write is durable when it completes (files opened with O_DSYNC),
    /// so that the WAL need not fdatasync the records it wrote.
    fn writes_durable(&self) -> bool {
        false
    }
    /// Names of the files in the directory.
    async fn list(&self) -> io::Result<Vec<String>>;
    /// Opens `name` for reading and writing, creating it (empty) when `create`.
    async fn open(&self, name: &str, create: bool) -> io::Result<Self::File>;
    /// Opens `name` like `open`, but never write-through: for preparing a file with
    /// many writes that one sync at the end makes durable.
    async fn open_for_preparation(&self, name: &str, create: bool) -> io::Result<Self::File> {
        self.open(name, create).await
    }
    async fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    async fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    async fn sync_dir(&self) -> io::Result<()>;
}

/// One open file.
pub trait StorageFile {
    type Read: Deref<Target = [u8]>;
    /// What records are encoded into: memory `write_buf` writes without a copy.
    type Buf: RecordBuf;
    /// An empty buffer with room for about `capacity_bytes`.
    fn new_buf(capacity_bytes: usize) -> Self::Buf;
    /// Writes all of `data` (block-aligned position and length) at `pos`.
    async fn write_at(&self, pos: u64, data: &[u8]) -> io::Result<()>;
    /// Writes all of `buf` (block-aligned position and length) at `pos`, taking it.
    async fn write_buf(&self, pos: u64, buf: Self::Buf) -> io::Result<()>;
    /// Writes zeros over `len` bytes at `pos` (both block-aligned), at most
    /// `chunk_bytes` per write.
    async fn write_zeros(&self, pos: u64, len: u64, chunk_bytes: usize) -> io::Result<()> {
        let chunk = (chunk_bytes as u64).min(len) as usize;
        let zeros = vec![0u8; chunk];
        let mut done = 0u64;
        while done < len {
            let n = ((len - done) as usize).min(chunk);
            self.write_at(pos + done, &zeros[..n]).await?;
            done += n as u64;
        }
        Ok(())
    }
    /// Reads up to `len` bytes at `pos` (any alignment); shorter at the end of file.
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Self::Read>;
    /// fdatasync.
    async fn sync(&self) -> io::Result<()>;
    /// Reserves `len` bytes (fallocate), extending the file size to at least `len`.
    async fn allocate(&self, len: u64) -> io::Result<()>;
    async fn size(&self) -> io::Result<u64>;
}

/// The real storage: one directory on a local file system, files opened with
/// O_DIRECT through glommio.
pub struct DmaStorage {
    dir: PathBuf,
    block_bytes: usize,
    probed: Cell<bool>,
    write_through: bool,
}

/// Name of the one-block file used to probe polled-I/O support.
const PROBE_FILE_NAME: &str = ".iopoll-probe";

/// The block size used for direct I/O. 4 KiB is the logical block size of current
/// NVMe and SATA drives and a multiple of every smaller one.
pub const DMA_BLOCK_BYTES: usize = 4096;

impl DmaStorage {
    /// Uses directory `dir`, creating it (and its missing ancestors) durably if
    /// needed: segments synced into a directory whose own entry is lost would vanish
    /// with it.
    pub fn new(dir: impl AsRef<Path>) -> io::Result<DmaStorage> {
        DmaStorage::new_with(dir.as_ref(), &mut sync_dir)
    }

    /// `new` with the directory syncs going to `sync`.
    pub(crate) fn new_with(dir: &Path, sync: DirSyncer) -> io::Result<DmaStorage> {
        create_dir_durably_with(dir, sync)?;
        // glommio opens paths relative to no directory (fd -1), so a relative path
        // fails with EBADF: keep the absolute one.
        Ok(DmaStorage {
            dir: std::fs::canonicalize(dir)?,
            block_bytes: DMA_BLOCK_BYTES,
            probed: Cell::new(false),
            write_through: false,
        })
    }

    /// Opens every file with O_DSYNC, so that each write is durable when it
    /// completes: on a device with FUA it is one write with forced unit access; on
    /// one without, the kernel flushes the device cache when the write is done, in the
    /// same request. Either way no separate fdatasync (an io_uring worker hand-off, a
    /// wake-up and a round through the executor) follows each flush. See
    /// docs/performance.md for the measured difference.
    pub fn write_through(mut self, on: bool) -> DmaStorage {
        self.write_through = on;
        self
    }

    /// glommio decides once per thread and device whether files go to its polled
    /// (IOPOLL) ring, by reading the first block of the first file opened. When that
    /// file is empty the read succeeds trivially, the device is wrongly taken as
    /// pollable, and later reads fail with EOPNOTSUPP on devices without poll queues.
    /// Opening a file with one written block first makes the probe honest.
    async fn probe_iopoll(&self) -> io::Result<()> {
        if self.probed.replace(true) {
            return Ok(());
        }
        let path = self.dir.join(PROBE_FILE_NAME);
        std::fs::write(&path, vec![0u8; self.block_bytes])?;
        let file = OpenOptions::new().read(true).dma_open(&path).await?;
        file.close().await?;
        std::fs::remove_file(&path)
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    async fn open_with(&self, name: &str, create: bool, dsync: bool) -> io::Result<DmaStorageFile> {
        self.probe_iopoll().await?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .custom_flags(if dsync { libc::O_DSYNC } else { 0 })
            .dma_open(self.dir.join(name))
            .await?;
        Ok(DmaStorageFile { file })
    }
}

impl Storage for DmaStorage {
    type File = DmaStorageFile;

    fn block_bytes(&self) -> usize {
        self.block_bytes
    }

    fn writes_durable(&self) -> bool {
        self.write_through
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        // Listing happens once at open; a blocking readdir is acceptable there.
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    async fn open(&self, name: &str, create: bool) -> io::Result<DmaStorageFile> {
        self.open_with(name, create, self.write_through).await
    }

    async fn open_for_preparation(&self, name: &str, create: bool) -> io::Result<DmaStorageFile> {
        self.open_with(name, create, false).await
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        // Renames happen once per segment; the blocking syscall is short.
        std::fs::rename(self.dir.join(from), self.dir.join(to))
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.dir.join(name))
    }

    async fn sync_dir(&self) -> io::Result<()> {
        let dir = Directory::open(&self.dir).await?;
        dir.sync().await?;
        dir.close().await?;
        Ok(())
    }
}

/// A glommio DMA file.
pub struct DmaStorageFile {
    file: DmaFile,
}

impl DmaStorageFile {
    async fn write_dma(&self, pos: u64, buf: DmaBuffer) -> io::Result<()> {
        let len = buf.len();
        whole_write(self.file.write_at(buf, pos).await?, len)
    }
}

/// A write of `len` bytes that wrote `written`: a short one is an error.
fn whole_write(written: usize, len: usize) -> io::Result<()> {
    if written != len {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write: {written} of {len} bytes"),
        ));
    }
    Ok(())
}

impl StorageFile for DmaStorageFile {
    type Read = glommio::io::ReadResult;
    type Buf = DmaVec;

    fn new_buf(capacity_bytes: usize) -> DmaVec {
        DmaVec::with_capacity(capacity_bytes)
    }

    async fn write_at(&self, pos: u64, data: &[u8]) -> io::Result<()> {
        let mut buf = self.file.alloc_dma_buffer(data.len());
        buf.as_bytes_mut().copy_from_slice(data);
        self.write_dma(pos, buf).await
    }

    async fn write_buf(&self, pos: u64, buf: DmaVec) -> io::Result<()> {
        match buf.into_dma_buffer() {
            Some(buf) => self.write_dma(pos, buf).await,
            None => Ok(()),
        }
    }

    /// One buffer of zeros, zeroed once and written again and again (a copy of
    /// zeros into a fresh buffer per write cost a new segment's preparation as
    /// much CPU as the records it would hold, docs/performance.md).
    async fn write_zeros(&self, pos: u64, len: u64, chunk_bytes: usize) -> io::Result<()> {
        let chunk = (chunk_bytes as u64).min(len) as usize;
        let mut zeros = self.file.alloc_dma_buffer(chunk);
        zeros.as_bytes_mut().fill(0);
        let zeros = Rc::new(zeros);
        let mut done = 0u64;
        while done < len {
            let n = ((len - done) as usize).min(chunk);
            if n == chunk {
                whole_write(self.file.write_rc_at(zeros.clone(), pos + done).await?, n)?;
            } else {
                let mut rest = self.file.alloc_dma_buffer(n);
                rest.as_bytes_mut().fill(0);
                self.write_dma(pos + done, rest).await?;
            }
            done += n as u64;
        }
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Self::Read> {
        Ok(self.file.read_at(pos, len).await?)
    }

    async fn sync(&self) -> io::Result<()> {
        Ok(self.file.fdatasync().await?)
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        Ok(self.file.pre_allocate(len, false).await?)
    }

    async fn size(&self) -> io::Result<u64> {
        Ok(self.file.file_size().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::dir::tests::recording;

    #[test]
    fn record_buffers_and_zeros_reach_the_file_as_written() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("wal");
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let storage = DmaStorage::new(&dir).expect("storage");
                let file = storage.open("f", true).await.expect("open");
                let block = DMA_BLOCK_BYTES;
                let mut ones = DmaStorageFile::new_buf(0);
                ones.extend_from_slice(&vec![1u8; 5 * block]);
                file.write_buf(0, ones).await.expect("write");
                // One whole chunk of zeros and a shorter one, over the ones.
                let zeros = 3 * block as u64;
                file.write_zeros(block as u64, zeros, 2 * block)
                    .await
                    .expect("zeros");
                let read = file.read_at(0, 5 * block).await.expect("read");
                assert!(read[..block].iter().all(|b| *b == 1));
                assert!(read[block..4 * block].iter().all(|b| *b == 0));
                assert!(read[4 * block..].iter().all(|b| *b == 1));
            })
            .expect("executor")
            .join()
            .expect("test body");
    }

    #[test]
    fn a_fresh_wal_directory_is_synced_into_its_parent() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        let shard = data.join("shard-0");
        let mut synced = Vec::new();
        DmaStorage::new_with(&shard, &mut recording(&mut synced)).expect("storage");
        assert!(shard.is_dir());
        assert_eq!(synced, [tmp.path().to_path_buf(), data, shard]);
    }
}
