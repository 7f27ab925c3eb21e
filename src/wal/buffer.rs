//! Buffers of encoded records. Records are encoded straight into memory the storage
//! can write as it is: for direct I/O that is glommio's DMA memory ([`DmaVec`]), so
//! a flush hands its buffers to the device without copying them (the copy into a
//! fresh DMA buffer was about a tenth of a follower's CPU, docs/performance.md).

use glommio::io::DmaBuffer;

use super::storage::DMA_BLOCK_BYTES;

/// A growable byte buffer that records are encoded into.
pub trait RecordBuf: Default {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn as_slice(&self) -> &[u8];
    fn as_mut_slice(&mut self) -> &mut [u8];
    /// Appends `bytes`, growing when needed.
    fn extend_from_slice(&mut self, bytes: &[u8]);
    /// Appends `count` zero bytes.
    fn extend_zeroed(&mut self, count: usize);
}

impl RecordBuf for Vec<u8> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn as_slice(&self) -> &[u8] {
        self
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        self
    }
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        Vec::extend_from_slice(self, bytes)
    }
    fn extend_zeroed(&mut self, count: usize) {
        self.resize(Vec::len(self) + count, 0)
    }
}

/// The least a [`DmaVec`] allocates: a turn's records rarely take less.
pub const DMA_VEC_MIN_BYTES: usize = 64 * 1024;

/// A growable buffer in DMA memory (block-aligned, from the executor's registered
/// pool while it has room). Growing copies what it holds into a buffer twice as
/// large, as a `Vec` does; the WAL sizes new buffers from the last one, so a
/// steady load rarely grows them. Allocated on first use: glommio hands out DMA
/// memory only on an executor.
#[derive(Default)]
pub struct DmaVec {
    buf: Option<DmaBuffer>,
    /// Invariant: `len <= capacity()`.
    len: usize,
}

impl DmaVec {
    /// An empty buffer with room for at least `capacity_bytes`.
    pub fn with_capacity(capacity_bytes: usize) -> DmaVec {
        let mut v = DmaVec::default();
        v.reserve(capacity_bytes);
        v
    }

    pub fn capacity(&self) -> usize {
        self.buf.as_ref().map_or(0, DmaBuffer::len)
    }

    /// The DMA buffer holding exactly the bytes written (None when empty), for a
    /// write that takes it.
    pub fn into_dma_buffer(self) -> Option<DmaBuffer> {
        let len = self.len;
        self.buf.filter(|_| len > 0).map(|mut buf| {
            buf.trim_to_size(len);
            buf
        })
    }

    /// Makes room for `additional` more bytes.
    fn reserve(&mut self, additional: usize) {
        let needed = self.len + additional;
        if needed <= self.capacity() {
            return;
        }
        let capacity = needed
            .max(2 * self.capacity())
            .max(DMA_VEC_MIN_BYTES)
            .next_multiple_of(DMA_BLOCK_BYTES);
        let mut grown = glommio::allocate_dma_buffer(capacity);
        if let Some(old) = &self.buf {
            grown.as_bytes_mut()[..self.len].copy_from_slice(&old.as_bytes()[..self.len]);
        }
        self.buf = Some(grown);
    }

    /// The `count` bytes after the current end, made room for and counted.
    fn extend_by(&mut self, count: usize) -> &mut [u8] {
        self.reserve(count);
        let start = self.len;
        self.len += count;
        let buf = self.buf.as_mut().expect("reserved above");
        &mut buf.as_bytes_mut()[start..start + count]
    }
}

impl RecordBuf for DmaVec {
    fn len(&self) -> usize {
        self.len
    }
    fn as_slice(&self) -> &[u8] {
        match &self.buf {
            Some(buf) => &buf.as_bytes()[..self.len],
            None => &[],
        }
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        match &mut self.buf {
            Some(buf) => &mut buf.as_bytes_mut()[..self.len],
            None => &mut [],
        }
    }
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.extend_by(bytes.len()).copy_from_slice(bytes);
    }
    fn extend_zeroed(&mut self, count: usize) {
        // DMA memory is reused: it holds whatever an earlier buffer left there.
        self.extend_by(count).fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_executor(f: impl FnOnce() + Send + 'static) {
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move { f() })
            .expect("executor")
            .join()
            .expect("test body");
    }

    #[test]
    fn a_dma_vec_grows_keeping_its_bytes_and_zeroes_what_it_is_told_to() {
        on_executor(|| {
            // Dirty DMA memory, which the next buffer likely reuses.
            let mut dirty = DmaVec::with_capacity(16);
            dirty.extend_from_slice(&[0xAB; 64]);
            drop(dirty);
            let mut v = DmaVec::default();
            assert_eq!((v.len(), v.capacity()), (0, 0));
            assert!(v.as_slice().is_empty());
            v.extend_from_slice(b"abc");
            assert_eq!(v.capacity(), DMA_VEC_MIN_BYTES);
            v.extend_zeroed(5);
            assert_eq!(v.as_slice(), b"abc\0\0\0\0\0");
            let big: Vec<u8> = (0..3 * DMA_VEC_MIN_BYTES).map(|i| i as u8).collect();
            v.extend_from_slice(&big);
            assert_eq!(v.len(), 8 + big.len());
            assert_eq!(&v.as_slice()[..8], b"abc\0\0\0\0\0");
            assert_eq!(&v.as_slice()[8..], &big[..]);
            assert_eq!(v.capacity() % DMA_BLOCK_BYTES, 0);
            v.as_mut_slice()[0] = b'x';
            let buf = v.into_dma_buffer().expect("not empty");
            assert_eq!(buf.len(), 8 + big.len());
            assert_eq!(&buf.as_bytes()[..3], b"xbc");
            assert!(DmaVec::default().into_dma_buffer().is_none());
        });
    }
}
