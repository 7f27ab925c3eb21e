//! An in-memory [`Storage`] that records every operation, injects write and sync
//! failures, and builds the disk image a crash would leave at any point of the
//! recording. Used by the crash-consistency and fault tests.
//!
//! Crash model: a write may reach the disk from the moment it is submitted, in any
//! subset of its blocks, and one block may be torn (its first half new, the rest old);
//! it is durable once a sync of its file completed that was issued after the write
//! completed (or, on write-through storage, once the write itself completed).
//! Directory operations since the last directory sync survive as a prefix, the way a
//! journaling file system orders them.

use super::storage::{Storage, StorageFile};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

/// One recorded operation.
#[derive(Clone, Debug)]
pub enum SimEvent {
    /// A write was submitted: from here on any of its blocks may be on the disk.
    Write {
        id: u64,
        ino: usize,
        pos: u64,
        data: Vec<u8>,
    },
    /// Write `id` completed; with `durable` (write-through storage) it is on the disk.
    WriteDone {
        id: u64,
        durable: bool,
    },
    /// An fdatasync of `ino` was issued: it covers the writes completed before this.
    SyncStart {
        id: u64,
        ino: usize,
    },
    /// Sync `id` completed.
    Sync {
        id: u64,
    },
    /// The file was allocated to at least `len` bytes. Allocation only grows a file
    /// with zeros and the WAL syncs the file before naming it, so the model treats
    /// it as durable at once: crash images keep the size.
    Allocate {
        ino: usize,
        len: u64,
    },
    Create {
        name: String,
        ino: usize,
    },
    Rename {
        from: String,
        to: String,
    },
    Remove {
        name: String,
    },
    SyncDir,
    /// A note from the test driver: everything through `op` was reported durable.
    Durable {
        op: u64,
    },
}

#[derive(Default)]
struct SimState {
    files: Vec<Vec<u8>>,
    names: BTreeMap<String, usize>,
    events: Vec<SimEvent>,
    writes: u64,
    syncs: u64,
    /// Identifies writes and syncs in the recording.
    next_event_id: u64,
    fail_write_number: Option<u64>,
    fail_sync_number: Option<u64>,
    /// Open handles per inode, to count the segment files held open.
    open_handles: BTreeMap<usize, usize>,
    /// The most segment files (named `*.wal`) ever open at once.
    open_segments_max_seen: usize,
}

impl SimState {
    /// Open files currently named as segments.
    fn open_segments(&self) -> usize {
        self.names
            .iter()
            .filter(|(name, ino)| name.ends_with(".wal") && self.open_handles.contains_key(ino))
            .count()
    }

    fn note_open_segments(&mut self) {
        self.open_segments_max_seen = self.open_segments_max_seen.max(self.open_segments());
    }
}

/// A simulated directory. Clones share the same state.
#[derive(Clone)]
pub struct SimStorage {
    state: Rc<RefCell<SimState>>,
    block_bytes: usize,
    write_through: bool,
}

/// One open simulated file.
pub struct SimFile {
    state: Rc<RefCell<SimState>>,
    ino: usize,
    write_through: bool,
}

/// Completes on its second poll, so that every simulated I/O lets other tasks run
/// the way a real submission would, and flushes really overlap in tests.
pub struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// Lets other tasks on the executor run once.
pub fn yield_now() -> YieldNow {
    YieldNow(false)
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} failure (EIO)"))
}

impl SimStorage {
    pub fn new(block_bytes: usize) -> SimStorage {
        SimStorage {
            state: Rc::new(RefCell::new(SimState::default())),
            block_bytes,
            write_through: false,
        }
    }

    /// A simulated directory whose files behave as if opened with O_DSYNC: each write
    /// is durable once it completes, so a crash while it is in flight may keep any
    /// subset of its blocks, and one after keeps them all.
    pub fn new_write_through(block_bytes: usize) -> SimStorage {
        SimStorage {
            write_through: true,
            ..SimStorage::new(block_bytes)
        }
    }

    /// The recording so far.
    pub fn events(&self) -> Vec<SimEvent> {
        self.state.borrow().events.clone()
    }

    pub fn event_count(&self) -> usize {
        self.state.borrow().events.len()
    }

    /// Records that the WAL reported everything through `op` durable.
    pub fn note_durable(&self, op: u64) {
        self.state
            .borrow_mut()
            .events
            .push(SimEvent::Durable { op });
    }

    /// Makes the `n`th write from now (0 = the next one) and every later one fail.
    pub fn fail_write_after(&self, n: u64) {
        let mut s = self.state.borrow_mut();
        s.fail_write_number = Some(s.writes + n);
    }

    /// Makes the `n`th sync from now (0 = the next one) and every later one fail.
    pub fn fail_sync_after(&self, n: u64) {
        let mut s = self.state.borrow_mut();
        s.fail_sync_number = Some(s.syncs + n);
    }

    /// The current contents of file `name`, if it exists.
    pub fn file_contents(&self, name: &str) -> Option<Vec<u8>> {
        let s = self.state.borrow();
        s.names.get(name).map(|ino| s.files[*ino].clone())
    }

    /// Replaces the contents of file `name` (for corruption tests).
    pub fn set_file_contents(&self, name: &str, data: Vec<u8>) {
        let mut s = self.state.borrow_mut();
        let ino = s.names[name];
        s.files[ino] = data;
    }

    async fn open_with(
        &self,
        name: &str,
        create: bool,
        write_through: bool,
    ) -> io::Result<SimFile> {
        yield_now().await;
        let mut s = self.state.borrow_mut();
        let ino = match s.names.get(name) {
            Some(ino) => *ino,
            None if create => {
                let ino = s.files.len();
                s.files.push(Vec::new());
                s.names.insert(name.to_string(), ino);
                s.events.push(SimEvent::Create {
                    name: name.to_string(),
                    ino,
                });
                ino
            }
            None => return Err(not_found(name)),
        };
        *s.open_handles.entry(ino).or_insert(0) += 1;
        s.note_open_segments();
        Ok(SimFile {
            state: self.state.clone(),
            ino,
            write_through,
        })
    }

    /// Segment files (named `*.wal`) open now, and the most ever open at once.
    pub fn open_segment_files(&self) -> (usize, usize) {
        let s = self.state.borrow();
        (s.open_segments(), s.open_segments_max_seen)
    }

    pub fn names(&self) -> Vec<String> {
        self.state.borrow().names.keys().cloned().collect()
    }

    /// The number of unsynced write blocks at cut `cut` of the recording: the units a
    /// [`CrashChoice`] chooses among.
    pub fn unsynced_blocks_at(&self, cut: usize) -> usize {
        self.replay(cut).unsynced.len()
    }

    /// The number of directory operations not yet made durable at cut `cut`.
    pub fn unsynced_dir_ops_at(&self, cut: usize) -> usize {
        self.replay(cut).ns_ops.len()
    }

    /// The highest op noted durable before cut `cut`.
    pub fn durable_op_at(&self, cut: usize) -> Option<u64> {
        self.state.borrow().events[..cut]
            .iter()
            .filter_map(|e| match e {
                SimEvent::Durable { op } => Some(*op),
                _ => None,
            })
            .max()
    }

    fn replay(&self, cut: usize) -> Replay {
        let s = self.state.borrow();
        let mut r = Replay {
            durable: vec![Vec::new(); s.files.len()],
            names: BTreeMap::new(),
            ns_ops: Vec::new(),
            unsynced: Vec::new(),
        };
        // Writes not yet durable, in submission order.
        let mut pending: Vec<PendingWrite> = Vec::new();
        // The writes each sync in flight covers.
        let mut covers: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for event in &s.events[..cut] {
            match event {
                SimEvent::Write { id, ino, pos, data } => pending.push(PendingWrite {
                    id: *id,
                    ino: *ino,
                    pos: *pos,
                    data,
                    completed: false,
                }),
                SimEvent::WriteDone { id, durable } => {
                    if *durable {
                        make_durable(&mut r.durable, &mut pending, &[*id]);
                    } else if let Some(w) = pending.iter_mut().find(|w| w.id == *id) {
                        w.completed = true;
                    }
                }
                SimEvent::SyncStart { id, ino } => {
                    let done = pending.iter().filter(|w| w.ino == *ino && w.completed);
                    covers.insert(*id, done.map(|w| w.id).collect());
                }
                SimEvent::Sync { id } => {
                    let ids = covers.remove(id).unwrap_or_default();
                    make_durable(&mut r.durable, &mut pending, &ids);
                }
                SimEvent::Allocate { ino, len } => {
                    let file = &mut r.durable[*ino];
                    if (file.len() as u64) < *len {
                        file.resize(*len as usize, 0);
                    }
                }
                SimEvent::Create { .. } | SimEvent::Rename { .. } | SimEvent::Remove { .. } => {
                    r.ns_ops.push(event.clone());
                }
                SimEvent::SyncDir => {
                    for op in std::mem::take(&mut r.ns_ops) {
                        apply_ns(&mut r.names, &op);
                    }
                }
                SimEvent::Durable { .. } => {}
            }
        }
        for w in pending {
            for (i, block) in w.data.chunks(self.block_bytes).enumerate() {
                r.unsynced
                    .push((w.ino, w.pos + (i * self.block_bytes) as u64, block.to_vec()));
            }
        }
        r
    }

    /// The storage a crash at event `cut` would leave, with `choice` deciding which
    /// unsynced blocks and directory operations survived.
    pub fn crash_image(&self, cut: usize, choice: &CrashChoice) -> SimStorage {
        let mut r = self.replay(cut);
        let ns_keep = match choice.dir_ops {
            DirOps::None => 0,
            DirOps::All => r.ns_ops.len(),
            DirOps::Prefix(n) => n.min(r.ns_ops.len()),
        };
        for op in &r.ns_ops[..ns_keep] {
            apply_ns(&mut r.names, op);
        }
        let mut files = r.durable;
        for (unit, (ino, pos, block)) in r.unsynced.iter().enumerate() {
            match choice.block(unit) {
                BlockFate::Lost => {}
                BlockFate::Written => apply(&mut files[*ino], *pos, block),
                BlockFate::Torn => apply(&mut files[*ino], *pos, &block[..block.len() / 2]),
            }
        }
        SimStorage {
            state: Rc::new(RefCell::new(SimState {
                files,
                names: r.names,
                ..SimState::default()
            })),
            block_bytes: self.block_bytes,
            write_through: self.write_through,
        }
    }
}

/// A write of the recording that is not durable yet.
struct PendingWrite<'a> {
    id: u64,
    ino: usize,
    pos: u64,
    data: &'a [u8],
    /// Completed: a sync issued from now on covers it.
    completed: bool,
}

/// Moves the writes `ids` from `pending` onto the durable file images.
fn make_durable(durable: &mut [Vec<u8>], pending: &mut Vec<PendingWrite>, ids: &[u64]) {
    pending.retain(|w| {
        let hit = ids.contains(&w.id);
        if hit {
            apply(&mut durable[w.ino], w.pos, w.data);
        }
        !hit
    });
}

struct Replay {
    durable: Vec<Vec<u8>>,
    names: BTreeMap<String, usize>,
    ns_ops: Vec<SimEvent>,
    unsynced: Vec<(usize, u64, Vec<u8>)>,
}

/// Which directory operations since the last directory sync survive a crash.
#[derive(Clone, Copy, Debug)]
pub enum DirOps {
    None,
    All,
    /// The first `n` of them.
    Prefix(usize),
}

/// What became of one unsynced block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockFate {
    Lost,
    Written,
    Torn,
}

/// Which unsynced state survives a simulated crash.
#[derive(Clone, Debug)]
pub struct CrashChoice {
    pub dir_ops: DirOps,
    /// Fate of unsynced block `i` (in write order); blocks past the end are lost.
    pub blocks: Vec<BlockFate>,
}

impl CrashChoice {
    fn block(&self, unit: usize) -> BlockFate {
        self.blocks.get(unit).copied().unwrap_or(BlockFate::Lost)
    }
}

fn apply(file: &mut Vec<u8>, pos: u64, data: &[u8]) {
    let end = pos as usize + data.len();
    if file.len() < end {
        file.resize(end, 0);
    }
    file[pos as usize..end].copy_from_slice(data);
}

fn apply_ns(names: &mut BTreeMap<String, usize>, op: &SimEvent) {
    match op {
        SimEvent::Create { name, ino } => {
            names.insert(name.clone(), *ino);
        }
        SimEvent::Rename { from, to } => {
            if let Some(ino) = names.remove(from) {
                names.insert(to.clone(), ino);
            }
        }
        SimEvent::Remove { name } => {
            names.remove(name);
        }
        _ => {}
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no file {name}"))
}

impl Storage for SimStorage {
    type File = SimFile;

    fn block_bytes(&self) -> usize {
        self.block_bytes
    }

    fn writes_durable(&self) -> bool {
        self.write_through
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.names())
    }

    async fn open(&self, name: &str, create: bool) -> io::Result<SimFile> {
        self.open_with(name, create, self.write_through).await
    }

    async fn open_for_preparation(&self, name: &str, create: bool) -> io::Result<SimFile> {
        self.open_with(name, create, false).await
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        yield_now().await;
        let mut s = self.state.borrow_mut();
        let ino = s.names.remove(from).ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_string(), ino);
        s.note_open_segments();
        s.events.push(SimEvent::Rename {
            from: from.to_string(),
            to: to.to_string(),
        });
        Ok(())
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        yield_now().await;
        let mut s = self.state.borrow_mut();
        s.names.remove(name).ok_or_else(|| not_found(name))?;
        s.events.push(SimEvent::Remove {
            name: name.to_string(),
        });
        Ok(())
    }

    async fn sync_dir(&self) -> io::Result<()> {
        yield_now().await;
        let mut s = self.state.borrow_mut();
        s.syncs += 1;
        if s.fail_sync_number.is_some_and(|n| s.syncs > n) {
            return Err(injected("directory sync"));
        }
        s.events.push(SimEvent::SyncDir);
        Ok(())
    }
}

impl SimFile {
    /// Records the start of a write or sync under a new id, which its completion
    /// event names.
    fn record_start(&self, event: impl FnOnce(u64) -> SimEvent) -> u64 {
        let mut s = self.state.borrow_mut();
        let id = s.next_event_id;
        s.next_event_id += 1;
        s.events.push(event(id));
        id
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        let mut s = self.state.borrow_mut();
        if let Some(n) = s.open_handles.get_mut(&self.ino) {
            *n -= 1;
            if *n == 0 {
                s.open_handles.remove(&self.ino);
            }
        }
    }
}

impl StorageFile for SimFile {
    type Read = Vec<u8>;
    type Buf = Vec<u8>;

    fn new_buf(capacity_bytes: usize) -> Vec<u8> {
        Vec::with_capacity(capacity_bytes)
    }

    async fn write_buf(&self, pos: u64, buf: Vec<u8>) -> io::Result<()> {
        self.write_at(pos, &buf).await
    }

    async fn write_at(&self, pos: u64, data: &[u8]) -> io::Result<()> {
        let id = self.record_start(|id| SimEvent::Write {
            id,
            ino: self.ino,
            pos,
            data: data.to_vec(),
        });
        yield_now().await;
        let mut s = self.state.borrow_mut();
        s.writes += 1;
        if s.fail_write_number.is_some_and(|n| s.writes > n) {
            // A failed write may still have reached the disk in part: it stays
            // pending (never durable) in the recording.
            return Err(injected("write"));
        }
        apply(&mut s.files[self.ino], pos, data);
        s.events.push(SimEvent::WriteDone {
            id,
            durable: self.write_through,
        });
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        yield_now().await;
        let s = self.state.borrow();
        let file = &s.files[self.ino];
        let start = (pos as usize).min(file.len());
        let end = (start + len).min(file.len());
        Ok(file[start..end].to_vec())
    }

    async fn sync(&self) -> io::Result<()> {
        let id = self.record_start(|id| SimEvent::SyncStart { id, ino: self.ino });
        yield_now().await;
        let mut s = self.state.borrow_mut();
        s.syncs += 1;
        if s.fail_sync_number.is_some_and(|n| s.syncs > n) {
            return Err(injected("fdatasync"));
        }
        s.events.push(SimEvent::Sync { id });
        Ok(())
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        // Allocation only grows the file with zeros; the model treats it as durable at
        // once, which is what a later fdatasync guarantees anyway.
        let mut s = self.state.borrow_mut();
        let file = &mut s.files[self.ino];
        if (file.len() as u64) < len {
            file.resize(len as usize, 0);
        }
        s.events.push(SimEvent::Allocate { ino: self.ino, len });
        Ok(())
    }

    async fn size(&self) -> io::Result<u64> {
        Ok(self.state.borrow().files[self.ino].len() as u64)
    }
}
