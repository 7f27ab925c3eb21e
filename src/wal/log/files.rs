//! Files a flush creates and removes: a new segment made from the prepared spare,
//! superseded and purged segments (one kept for recycling), summaries of sealed
//! segments, and the hard-state file. Each change of the directory is synced on its
//! own, which keeps the changes in order on disk (see docs/wal-format.md).

use super::*;

impl<S: Storage> Wal<S> {
    /// Removes purged segment `name`, or keeps it to become a later spare when no
    /// purged segment waits for that yet: renamed, which takes its name away as
    /// atomically as a removal, then the directory synced.
    pub(super) async fn recycle_or_remove(&self, name: &str) -> WalResult<()> {
        let shared = &self.shared;
        if shared.inner.borrow().recycle_present {
            return self.remove_file(name).await;
        }
        shared
            .storage
            .rename(name, RECYCLE_FILE_NAME)
            .await
            .map_err(io_err(format!("renaming {name} for recycling")))?;
        shared.inner.borrow_mut().recycle_present = true;
        shared
            .storage
            .sync_dir()
            .await
            .map_err(io_err("syncing the WAL directory"))
    }

    /// Removes `name` (if it exists) and syncs the directory.
    pub(super) async fn remove_file(&self, name: &str) -> WalResult<()> {
        let shared = &self.shared;
        match shared.storage.remove(name).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(format!("removing {name}"))(e)),
        }
        // One directory sync per removal keeps the removals in order on disk,
        // which recovery relies on (see docs/wal-format.md).
        shared
            .storage
            .sync_dir()
            .await
            .map_err(io_err("syncing the WAL directory"))
    }

    /// Writes the summary of sealed segment `name`, then lets go of its file handle:
    /// reads of it go through the cache of open files from now on.
    pub(super) async fn store_summary(&self, name: &str, summary: &Summary) -> WalResult<()> {
        let shared = &self.shared;
        let bytes = write_summary(&*shared.storage, name, summary).await?;
        let mut inner = shared.inner.borrow_mut();
        let inner = &mut *inner;
        if let Some(k) = inner.segments.iter().position(|s| s.name == name) {
            inner.segments[k].summary_bytes = bytes;
            inner.slots[k] = Rc::new(OnceCell::new());
        }
        Ok(())
    }

    /// Writes `state` to the hard-state file and syncs it.
    pub(super) async fn write_hard_state(&self, state: &HardState) -> WalResult<()> {
        let shared = &self.shared;
        let mut file = shared
            .hard_state_file
            .borrow_mut()
            .take()
            .ok_or_else(|| WalError::Failed("hard-state file in use".into()))?;
        let result = file.write(state).await;
        shared.inner.borrow_mut().stats.syncs += 1;
        *shared.hard_state_file.borrow_mut() = Some(file);
        result
    }

    /// Turns the prepared spare file into segment `name`: header written and synced
    /// first, then renamed and the directory synced, so a named segment always has a
    /// valid header.
    pub(super) async fn create_segment(
        &self,
        info: &SegmentInfo,
        name: &str,
    ) -> WalResult<S::File> {
        let shared = &self.shared;
        let spare = shared.inner.borrow_mut().spare.take();
        let (file, recycled) = match spare {
            Some(task) => task.await.map_err(io_err("preparing a segment"))?,
            None => prepare_spare(
                shared.storage.clone(),
                info.segment_size_bytes,
                self.zero_fill_chunk_next(),
                false,
            )
            .await
            .map_err(io_err("preparing a segment"))?,
        };
        // Whether the file is recycled is known only now; the header says so, since
        // recovery reads the bytes this segment has not written differently then.
        let info = &SegmentInfo { recycled, ..*info };
        if let Some(seg) = shared
            .inner
            .borrow_mut()
            .segments
            .iter_mut()
            .find(|s| s.info.segment_seq == info.segment_seq)
        {
            seg.info.recycled = recycled;
        }
        let mut block = vec![0u8; shared.block_bytes];
        encode_segment_header(&mut block, info, shared.block_bytes);
        assert!(SEGMENT_HEADER_BYTES <= shared.block_bytes);
        file.write_at(0, &block)
            .await
            .map_err(io_err("writing a segment header"))?;
        file.sync()
            .await
            .map_err(io_err("syncing a segment header"))?;
        shared
            .storage
            .rename(SPARE_FILE_NAME, name)
            .await
            .map_err(io_err(format!("renaming the spare segment to {name}")))?;
        shared
            .storage
            .sync_dir()
            .await
            .map_err(io_err("syncing the WAL directory"))?;
        self.start_spare();
        Ok(file)
    }
}

/// Creates the spare segment file and prepares all of it: a recycled segment when
/// `recycle` (renamed, its blocks already written), else zero-filled in writes of
/// `zero_fill_chunk` bytes and synced, or, without it, only allocated. Returns
/// whether the file is recycled.
pub(super) async fn prepare_spare<S: Storage>(
    storage: Rc<S>,
    size: u64,
    zero_fill_chunk: Option<usize>,
    recycle: bool,
) -> io::Result<(S::File, bool)> {
    if recycle {
        match storage.rename(RECYCLE_FILE_NAME, SPARE_FILE_NAME).await {
            Ok(()) => {
                // A segment of another size grows to this one; a larger one keeps its
                // length (its header will say how much of it is the segment).
                let file = storage.open(SPARE_FILE_NAME, false).await?;
                file.allocate(size).await?;
                file.sync().await?;
                return Ok((file, true));
            }
            // A later purge replaced the file this spare was to take and the name was
            // taken already: prepare a fresh one.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    prepare_fresh(storage, size, zero_fill_chunk)
        .await
        .map(|f| (f, false))
}

async fn prepare_fresh<S: Storage>(
    storage: Rc<S>,
    size: u64,
    zero_fill_chunk: Option<usize>,
) -> io::Result<S::File> {
    if let Some(chunk_bytes) = zero_fill_chunk {
        // Written through a plain handle and synced once: on write-through storage
        // every 1 MiB of zeros would otherwise carry a device cache flush, and the
        // log's own writes would queue behind them.
        let file = storage.open_for_preparation(SPARE_FILE_NAME, true).await?;
        file.write_zeros(0, size, chunk_bytes).await?;
        file.sync().await?;
        drop(file);
        // The segment's own writes go through a handle opened the normal way.
        storage.open(SPARE_FILE_NAME, false).await
    } else {
        let file = storage.open(SPARE_FILE_NAME, true).await?;
        file.allocate(size).await?;
        file.sync().await?;
        Ok(file)
    }
}
