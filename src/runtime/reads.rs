//! Serving reads on a shard: the server's limits on what a read may ask, answers
//! that keep to `max_bytes`, `max_records` and the client frame limit, and the
//! reads that wait (long-poll) for the commit index to reach them.

use glommio::sync::Semaphore;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::config::ReadSettings;
use super::inbox::Reply;
use crate::engine::{Entry, EntryKind, Index};
use crate::transport::{ReadOk, ReadRequest, Record, ServerError};
use crate::wal::error::{WalError, WalResult};
use crate::wal::log::Wal;
use crate::wal::storage::DmaStorage;

/// Bytes of a ReadOk body before its records: commit index, log start, record
/// count and a reserved word (see `client_msg::encode_response`).
pub const READ_ANSWER_HEADER_BYTES: usize = 24;
/// Bytes each record adds to a ReadOk body besides its payload: index and length.
pub const READ_RECORD_OVERHEAD_BYTES: usize = 12;

/// What the server allows a read, whatever the request asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLimits {
    pub wait_ms_max: u32,
    pub bytes_max: u32,
    pub records_max: u32,
    pub waiting_max: usize,
    /// The client frame limit: an answer's encoded body never exceeds it.
    pub frame_body_bytes_max: u32,
}

impl ReadLimits {
    pub fn new(settings: &ReadSettings, frame_body_bytes_max: u32) -> ReadLimits {
        ReadLimits {
            wait_ms_max: settings.wait_ms_max,
            bytes_max: settings.bytes_max,
            records_max: settings.records_max,
            waiting_max: settings.waiting_max as usize,
            frame_body_bytes_max,
        }
    }

    /// Refuses a request asking to wait longer than `reads.wait_ms_max`.
    pub fn check(&self, request: &ReadRequest) -> Result<(), ServerError> {
        if request.wait_timeout_ms > self.wait_ms_max {
            return Err(ServerError::InvalidRequest {
                reason: format!(
                    "wait_timeout_ms {} is more than this server's reads.wait_ms_max ({})",
                    request.wait_timeout_ms, self.wait_ms_max
                ),
            });
        }
        Ok(())
    }

    /// What one answer to `request` may hold.
    fn budget(&self, request: &ReadRequest) -> Budget {
        Budget {
            payload_bytes_max: request.max_bytes.min(self.bytes_max) as usize,
            records_max: request.max_records.min(self.records_max) as usize,
            body_bytes_max: self.frame_body_bytes_max as usize,
        }
    }
}

/// The bounds of one answer.
#[derive(Clone, Copy, Debug)]
struct Budget {
    payload_bytes_max: usize,
    records_max: usize,
    body_bytes_max: usize,
}

impl Budget {
    /// KiB a read within this budget may hold at most: the answer's payload (the
    /// frame limit caps it) and one more record, which may pass `payload_bytes_max`
    /// as an answer's first record (and which the frame limit also caps), with
    /// their copy in the WAL's read buffer counted by the same margin.
    fn memory_kib(&self) -> u64 {
        let answer = self.payload_bytes_max.min(self.body_bytes_max) as u64;
        let units = (answer + self.body_bytes_max as u64).div_ceil(1024);
        units.min(READ_MEMORY_BYTES_MAX >> 10)
    }
}

/// An answer being filled, record by record, within its budget.
struct Answer {
    budget: Budget,
    records: Vec<Record>,
    payload_bytes: usize,
    body_bytes: usize,
    /// The next record did not fit, or the count is reached: the answer is done.
    full: bool,
}

impl Answer {
    fn new(budget: Budget) -> Answer {
        Answer {
            budget,
            records: Vec::new(),
            payload_bytes: 0,
            body_bytes: READ_ANSWER_HEADER_BYTES,
            full: budget.records_max == 0,
        }
    }

    /// Adds `record` unless it would pass a bound. The first record always goes in,
    /// so that a reader makes progress whatever it asked (a record alone never
    /// exceeds the frame limit: the node's configuration refuses a
    /// `wal.record_size_bytes_max` that a read answer could not carry).
    fn offer(&mut self, record: Record) {
        if self.full {
            return;
        }
        let payload = record.payload.len();
        let body = self.body_bytes + READ_RECORD_OVERHEAD_BYTES + payload;
        let fits = self.payload_bytes + payload <= self.budget.payload_bytes_max
            && body <= self.budget.body_bytes_max;
        if !fits && !self.records.is_empty() {
            self.full = true;
            return;
        }
        self.records.push(record);
        (self.payload_bytes, self.body_bytes) = (self.payload_bytes + payload, body);
        self.full = self.records.len() >= self.budget.records_max;
    }

    /// Payload bytes the next WAL read may bring (at least one entry comes anyway).
    fn room_bytes(&self) -> usize {
        let payload =
            self.budget.payload_bytes_max - self.payload_bytes.min(self.budget.payload_bytes_max);
        let body = self.budget.body_bytes_max.saturating_sub(self.body_bytes);
        payload.min(body)
    }
}

/// Client records from `from` up to `to` (exclusive), as many as `budget` allows.
/// WAL reads may stop early (at a segment or cache boundary, or counting record
/// headers), so reading goes on until the answer is full or `to` is reached: an
/// answer with no records then means nothing but no-ops up to the commit index.
async fn read_records(
    wal: &Wal<DmaStorage>,
    mut from: Index,
    to: Index,
    budget: Budget,
) -> WalResult<Vec<Record>> {
    let mut answer = Answer::new(budget);
    while !answer.full && from < to {
        let entries = wal.read(from, to, answer.room_bytes()).await?;
        let Some(last) = entries.last() else { break };
        from = last.index + 1;
        for record in records_of(entries) {
            answer.offer(record);
            if answer.full {
                break;
            }
        }
    }
    Ok(answer.records)
}

/// The refusal of a read below the start of what may be read.
fn out_of_range(at: LogBounds) -> ServerError {
    ServerError::OutOfRange {
        log_start: at.log_start,
        log_end: at.commit,
    }
}

/// Client records of `entries`; leader no-ops leave gaps that reads skip.
fn records_of(entries: Vec<Entry>) -> impl Iterator<Item = Record> {
    let records = entries.into_iter().filter(|e| e.kind == EntryKind::Record);
    records.map(|e| Record {
        index: e.index,
        payload: e.payload,
    })
}

/// A read waiting for the commit index to reach `request.from_index`.
struct WaitingRead {
    deadline: Instant,
    request: ReadRequest,
    reply: Reply<ReadOk>,
}

/// Where the shard's log stands, for answering reads.
#[derive(Clone, Copy, Debug)]
pub struct LogBounds {
    pub log_start: Index,
    pub commit: Index,
}

/// A shard's read serving: its limits, its WAL and the reads that wait.
pub struct Reads {
    limits: ReadLimits,
    wal: Rc<Wal<DmaStorage>>,
    waiting: Vec<WaitingRead>,
    /// KiB that reads being served may hold at once (see [`READ_MEMORY_BYTES_MAX`]).
    memory: Rc<Semaphore>,
}

/// Bytes of memory the reads a shard serves at once may hold: the WAL's read
/// buffers and the records copied out of them. Without it, every pipelined read of
/// every connection ran at once, and 512 pipelined one-record reads of 256-KiB
/// records grew a node by 500 MiB (tests/hostile_client_flood.rs); reads beyond it
/// wait their turn, bounded in number by the connections' own limits.
pub const READ_MEMORY_BYTES_MAX: u64 = 64 << 20;

impl Reads {
    pub fn new(limits: ReadLimits, wal: Rc<Wal<DmaStorage>>) -> Reads {
        Reads {
            limits,
            wal,
            waiting: Vec::new(),
            memory: Rc::new(Semaphore::new(READ_MEMORY_BYTES_MAX >> 10)),
        }
    }

    pub fn limits(&self) -> &ReadLimits {
        &self.limits
    }

    /// Reads waiting now (those whose asker is gone included until the next sweep).
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Serves a read of committed records, or parks it until the commit index
    /// reaches it (a long poll). A read below the start is at or below the commit
    /// index (the start is at most commit + 1), so it goes to `serve`, which
    /// refuses it.
    pub fn serve_or_wait(&mut self, at: LogBounds, request: ReadRequest, reply: Reply<ReadOk>) {
        // Past the commit index (a follower may lag the leader by a heartbeat, and
        // a `--follow` reader asks for what comes next): wait, or answer with no
        // records and the commit index, so the client knows where things stand.
        if request.from_index <= at.commit || request.wait_timeout_ms == 0 {
            return self.serve(at, request, reply);
        }
        // Slots held by askers that went away are freed before counting, so a
        // client that opens long polls and disconnects cannot hold them.
        self.drop_abandoned();
        if self.waiting.len() >= self.limits.waiting_max {
            reply.send(Err(ServerError::Overloaded));
            return;
        }
        let wait = Duration::from_millis(u64::from(request.wait_timeout_ms));
        self.waiting.push(WaitingRead {
            deadline: Instant::now() + wait,
            request,
            reply,
        });
    }

    /// Answers `request` from the committed log, in the background. The start is
    /// checked here again, not only when the read arrived: a long poll parked above
    /// the commit index may be released by the very commit that applied a trim
    /// past it, and the WAL (which removes whole segments) may still hold those
    /// records.
    pub fn serve(&self, at: LogBounds, request: ReadRequest, reply: Reply<ReadOk>) {
        if request.from_index < at.log_start {
            return reply.send(Err(out_of_range(at)));
        }
        let (wal, budget) = (self.wal.clone(), self.limits.budget(&request));
        let memory = self.memory.clone();
        glommio::spawn_local(async move {
            let empty = ReadOk {
                records: Vec::new(),
                commit_index: at.commit,
                log_start: at.log_start,
            };
            if request.from_index > at.commit || budget.records_max == 0 {
                reply.send(Ok(empty));
                return;
            }
            // The semaphore is never closed, so acquiring only waits.
            let _held = memory.acquire_permit(budget.memory_kib()).await;
            let read = read_records(&wal, request.from_index, at.commit + 1, budget).await;
            let answer = match read {
                Ok(records) => Ok(ReadOk { records, ..empty }),
                Err(WalError::OutOfRange { .. }) => Err(out_of_range(at)),
                Err(e) => Err(ServerError::Unavailable {
                    reason: e.to_string(),
                }),
            };
            reply.send(answer);
        })
        .detach();
    }

    /// The commit index moved: serves the waiting reads it reached.
    pub fn committed(&mut self, at: LogBounds) {
        let (ready, waiting): (Vec<_>, Vec<_>) = self
            .waiting
            .drain(..)
            .partition(|w| w.request.from_index <= at.commit);
        self.waiting = waiting;
        for read in ready {
            self.serve(at, read.request, read.reply);
        }
    }

    /// Ends the waits whose deadline passed (a long poll that saw nothing new ends
    /// with no records, which is not an error) and drops those no one waits for.
    pub fn expire(&mut self, at: LogBounds, now: Instant) {
        self.drop_abandoned();
        let (expired, waiting): (Vec<_>, Vec<_>) =
            self.waiting.drain(..).partition(|w| w.deadline <= now);
        self.waiting = waiting;
        for read in expired {
            self.serve(at, read.request, read.reply);
        }
    }

    fn drop_abandoned(&mut self) {
        self.waiting.retain(|w| !w.reply.is_closed());
    }

    /// Answers every waiting read with `refusal`.
    pub fn refuse_all(&mut self, refusal: &ServerError) {
        for read in self.waiting.drain(..) {
            read.reply.send(Err(refusal.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn budget(payload_bytes_max: usize, records_max: usize, body_bytes_max: usize) -> Budget {
        Budget {
            payload_bytes_max,
            records_max,
            body_bytes_max,
        }
    }

    fn record(index: Index, bytes: usize) -> Record {
        Record {
            index,
            payload: Bytes::from(vec![7u8; bytes]),
        }
    }

    fn fill(budget: Budget, sizes: &[usize]) -> Vec<Index> {
        let mut answer = Answer::new(budget);
        for (k, &bytes) in sizes.iter().enumerate() {
            answer.offer(record(k as Index + 1, bytes));
            if answer.full {
                break;
            }
        }
        answer.records.iter().map(|r| r.index).collect()
    }

    #[test]
    fn max_bytes_is_a_cap_except_for_the_first_record() {
        // 40 + 60 = 100 fits exactly; the third would pass it.
        assert_eq!(fill(budget(100, 99, 1 << 20), &[40, 60, 1]), vec![1, 2]);
        assert_eq!(fill(budget(100, 99, 1 << 20), &[40, 61]), vec![1]);
        // A first record larger than the cap comes alone.
        assert_eq!(fill(budget(10, 99, 1 << 20), &[500, 1]), vec![1]);
        assert_eq!(fill(budget(0, 99, 1 << 20), &[0, 0]), vec![1, 2]);
    }

    #[test]
    fn answers_stop_at_the_record_count_and_the_frame_limit() {
        assert_eq!(fill(budget(1000, 2, 1 << 20), &[1, 1, 1]), vec![1, 2]);
        assert!(fill(budget(1000, 0, 1 << 20), &[1]).is_empty());
        // Header 24, then 12 + 10 per record: three fit in 90 bytes, not four.
        let body = READ_ANSWER_HEADER_BYTES + 3 * (READ_RECORD_OVERHEAD_BYTES + 10);
        assert_eq!(fill(budget(1000, 99, body), &[10; 5]), vec![1, 2, 3]);
        assert_eq!(fill(budget(1000, 99, body - 1), &[10; 5]), vec![1, 2]);
    }

    #[test]
    fn a_wait_over_the_maximum_is_refused_naming_the_setting() {
        let limits = ReadLimits::new(&ReadSettings::default(), 1 << 20);
        let mut request = ReadRequest {
            partition: 0,
            from_index: 1,
            max_records: 1,
            max_bytes: 1,
            wait_timeout_ms: limits.wait_ms_max,
            any_replica: false,
        };
        assert_eq!(limits.check(&request), Ok(()));
        request.wait_timeout_ms += 1;
        let refusal = limits.check(&request).unwrap_err();
        assert!(
            refusal.to_string().contains("reads.wait_ms_max"),
            "{refusal}"
        );
    }
}
