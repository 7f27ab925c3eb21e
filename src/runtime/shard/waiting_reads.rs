//! Reads of committed records that the shard serves or parks until the commit
//! index reaches them.

use std::time::Instant;

use super::Shard;
use crate::runtime::inbox::Reply;
use crate::runtime::reads::LogBounds;
use crate::transport::{ReadOk, ReadRequest};

impl Shard {
    /// Where the log stands for reads now.
    fn log_bounds(&self) -> LogBounds {
        LogBounds {
            // A committed trim hides its records at once, even while their removal
            // waits for this member's disk to catch up.
            log_start: self.engine.read_start(),
            commit: self.commit,
        }
    }

    /// Serves a read of committed records, or parks it until the commit index
    /// reaches it (see [`crate::runtime::reads::Reads::serve_or_wait`]).
    pub(super) fn serve_or_wait(&mut self, request: ReadRequest, reply: Reply<ReadOk>) {
        let at = self.log_bounds();
        self.reads.serve_or_wait(at, request, reply);
    }

    pub(super) fn serve_waiting_reads(&mut self) {
        let at = self.log_bounds();
        self.reads.committed(at);
    }

    /// Ends waits past their deadline, and forgets the reads (waiting, or waiting
    /// for their read-index barrier) whose asker is gone, so that a client that
    /// disconnects frees its slots at once.
    pub(super) fn expire_waiting_reads(&mut self, now: Instant) {
        let at = self.log_bounds();
        self.reads.expire(at, now);
        self.barriers.retain(|_, (_, reply)| !reply.is_closed());
    }
}
