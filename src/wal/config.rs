//! The WAL's limits and knobs. Every bound the WAL keeps is named here.

/// How a fresh segment is prepared before the writer reaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preallocate {
    /// Write zeros over the whole segment (in the background, ahead of the writer) and
    /// sync them, so later appends overwrite already-written blocks and an fdatasync
    /// commits no file-system metadata (no unwritten-extent conversion).
    ZeroFill,
    /// Only `fallocate` the segment: cheaper to prepare, but every first write to a
    /// block converts an unwritten extent, which each fdatasync must then journal.
    Fallocate,
    /// Zero-fill the next segment while the log is written in small writes, and only
    /// fallocate it once the segment just filled was written in large ones (a mean
    /// of `zero_fill_write_bytes_max` or more). Zero-filling makes small durable
    /// writes about 1.5 times faster, but it writes every byte of the segment twice:
    /// when the writes are large the log is bandwidth-bound and the conversion of
    /// unwritten extents costs less than the second write (docs/performance.md).
    Auto,
}

/// Configuration of one WAL (one shard's log).
#[derive(Clone, Debug)]
pub struct WalConfig {
    /// Size of every segment file, header block included. A multiple of the block size.
    pub segment_size_bytes: u64,
    /// Largest payload one entry may carry.
    pub record_size_bytes_max: usize,
    /// Largest single write: buffered appends are cut into chunks of at most this many
    /// bytes, and each chunk is one write.
    pub flush_bytes_max: usize,
    /// Bytes of appends that may wait in memory for a flush; appends beyond it fail
    /// with `BufferFull` so the runtime must flush (backpressure, never unbounded).
    pub buffered_bytes_max: usize,
    /// Flushes (write + fdatasync) that may be in flight at once; a flush started
    /// beyond this waits for an earlier one to finish.
    pub flushes_in_flight_max: usize,
    /// Payload bytes of recent entries kept in memory to serve reads without I/O.
    pub cache_bytes_max: usize,
    /// How fresh segments are prepared.
    pub preallocate: Preallocate,
    /// With `Preallocate::Auto`: the mean write size from which the next segment is
    /// only fallocated.
    pub zero_fill_write_bytes_max: usize,
    /// Skip fdatasync (benchmarks only: nothing reported durable is then durable).
    pub fsync_disabled: bool,
    /// Recovery: truncate the log at a corruption instead of refusing to start. Only
    /// for a member that will catch up from peers without voting.
    pub truncate_corrupt_tail: bool,
    /// Segment files held open at once: the newest segment, plus a cache of sealed
    /// ones opened on demand for reads (least recently used closed first). At least 2.
    pub open_segments_max: usize,
}

/// Default segment size: 64 MiB.
pub const SEGMENT_SIZE_BYTES_DEFAULT: u64 = 64 << 20;
/// Default largest record payload: 1 MiB.
pub const RECORD_SIZE_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// Default largest single write: 1 MiB.
pub const FLUSH_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// Default bound on buffered, unflushed appends: 16 MiB.
pub const BUFFERED_BYTES_MAX_DEFAULT: usize = 16 << 20;
/// Default number of flushes in flight.
pub const FLUSHES_IN_FLIGHT_MAX_DEFAULT: usize = 2;
/// Default read cache: 8 MiB of payload.
pub const CACHE_BYTES_MAX_DEFAULT: usize = 8 << 20;
/// Default mean write size from which `Preallocate::Auto` stops zero-filling: 256 KiB,
/// where (measured on the development machine's virtio disk with O_DSYNC writes)
/// fallocated segments give more bandwidth (800 MB/s) than zero-filled ones whose
/// preparation halves it (1,265 / 2 MB/s), while below 64 KiB a write to a zero-filled
/// segment is about 1.5 times faster.
pub const ZERO_FILL_WRITE_BYTES_MAX_DEFAULT: usize = 256 << 10;
/// Default bound on open segment files: 16.
pub const OPEN_SEGMENTS_MAX_DEFAULT: usize = 16;
/// Zero-filling writes at least this many bytes per write. The log's own durable
/// writes queue behind them on the device, so small ones keep the tail short (with
/// 1 MiB writes the pipelined benchmark's p99 was 75 – 126 ms, with 128 KiB 38 – 50
/// ms, docs/performance.md).
pub const ZERO_FILL_CHUNK_BYTES_MIN: usize = 128 << 10;
/// Zero-filling writes at most this many bytes per write.
pub const ZERO_FILL_CHUNK_BYTES_MAX: usize = 512 << 10;
/// A zero-filling write is at most this many times the mean size of the log's writes
/// (rounded up to a power of two, within the bounds above).
pub const ZERO_FILL_CHUNK_WRITES: u64 = 4;

/// The size of the writes that zero-fill the next segment, given the mean size of
/// the log's writes into the segment just filled. Each zero-filling write is a
/// request of its own, handed to an io_uring worker because it allocates blocks, so
/// a log written in large writes, whose rate fills segments quickly, pays less CPU
/// per segment with larger ones (docs/performance.md, "Tenth look"); while a log
/// written in small writes, where latency counts, keeps them small, since one of its
/// writes may queue behind a zero-filling write.
pub fn zero_fill_chunk_bytes(mean_write_bytes: u64) -> usize {
    let scaled = mean_write_bytes
        .saturating_mul(ZERO_FILL_CHUNK_WRITES)
        .checked_next_power_of_two()
        .unwrap_or(u64::MAX);
    scaled.clamp(
        ZERO_FILL_CHUNK_BYTES_MIN as u64,
        ZERO_FILL_CHUNK_BYTES_MAX as u64,
    ) as usize
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            segment_size_bytes: SEGMENT_SIZE_BYTES_DEFAULT,
            record_size_bytes_max: RECORD_SIZE_BYTES_MAX_DEFAULT,
            flush_bytes_max: FLUSH_BYTES_MAX_DEFAULT,
            buffered_bytes_max: BUFFERED_BYTES_MAX_DEFAULT,
            flushes_in_flight_max: FLUSHES_IN_FLIGHT_MAX_DEFAULT,
            cache_bytes_max: CACHE_BYTES_MAX_DEFAULT,
            preallocate: Preallocate::Auto,
            zero_fill_write_bytes_max: ZERO_FILL_WRITE_BYTES_MAX_DEFAULT,
            fsync_disabled: false,
            truncate_corrupt_tail: false,
            open_segments_max: OPEN_SEGMENTS_MAX_DEFAULT,
        }
    }
}

/// The smallest segment that holds a record of `record_size_bytes_max` payload bytes
/// with blocks of `block_bytes`: the header block, then the record with its header,
/// a block of alignment slack and the final padding, so that every record fits in
/// one segment.
pub fn segment_size_bytes_min_for(record_size_bytes_max: u64, block_bytes: u64) -> u64 {
    record_size_bytes_max + super::format::RECORD_HEADER_BYTES as u64 + 3 * block_bytes
}

impl WalConfig {
    /// Checks that the limits fit together for block size `block_bytes`.
    pub fn validate(&self, block_bytes: usize) -> Result<(), String> {
        let block = block_bytes as u64;
        let record_max = (self.record_size_bytes_max + super::format::RECORD_HEADER_BYTES) as u64;
        if !self.segment_size_bytes.is_multiple_of(block)
            || self.segment_size_bytes > u32::MAX as u64
        {
            return Err("segment_size_bytes must be a block multiple below 4 GiB".into());
        }
        if segment_size_bytes_min_for(self.record_size_bytes_max as u64, block)
            > self.segment_size_bytes
        {
            return Err("record_size_bytes_max too large for segment_size_bytes".into());
        }
        if !self.flush_bytes_max.is_multiple_of(block_bytes)
            || self.flush_bytes_max < 2 * block_bytes
        {
            return Err("flush_bytes_max must be a block multiple of at least two blocks".into());
        }
        if self.buffered_bytes_max < self.flush_bytes_max
            || (self.buffered_bytes_max as u64) < record_max + 2 * block
        {
            return Err("buffered_bytes_max must hold a flush and the largest record".into());
        }
        if self.open_segments_max < 2 {
            return Err(
                "open_segments_max must be at least 2 (the newest segment and one other)".into(),
            );
        }
        if self.flushes_in_flight_max == 0 {
            return Err("flushes_in_flight_max must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_filling_writes_are_four_log_writes_rounded_up_within_bounds() {
        const KIB: u64 = 1 << 10;
        let cases = [
            // Before any write, and for writes of a few blocks: the least size.
            (0, ZERO_FILL_CHUNK_BYTES_MIN),
            (4 * KIB, ZERO_FILL_CHUNK_BYTES_MIN),
            (32 * KIB, 128 << 10),
            // Just above a power of two, four of them round up to the next one.
            (32 * KIB + 1, 256 << 10),
            (100 * KIB, 512 << 10),
            // Large writes, and a mean whose product would overflow: the most.
            (172 * KIB, ZERO_FILL_CHUNK_BYTES_MAX),
            (u64::MAX, ZERO_FILL_CHUNK_BYTES_MAX),
        ];
        for (mean_write_bytes, chunk_bytes) in cases {
            assert_eq!(
                zero_fill_chunk_bytes(mean_write_bytes),
                chunk_bytes,
                "mean write of {mean_write_bytes} bytes"
            );
        }
    }
}
