//! What a client connection owes its client: the answers to the requests it took,
//! encoded into one output buffer that the connection's writer drains, and the
//! limits on what those requests hold while they are handled.
//!
//! Each request taken is an [`Answer`]: whoever handles the request answers through
//! it, and dropping it gives back what the request counted against the connection's
//! limits. A request is handled in one of two ways:
//! - in a task of its own, which awaits the [`super::server::RequestHandler`] and
//!   answers (requests that may wait, or that cross to another executor);
//! - by the handler taking the [`Answer`] along with the request
//!   ([`super::server::RequestHandler::take`]): the shard on this executor answers
//!   it directly when it decides, without a task, a timer or a channel per request.
//!   The connection then keeps the request's deadline and answers Timeout itself
//!   if the answer is late, sweeping all such deadlines with one timer; the
//!   request's share of the connection's limits is given back then, so that a
//!   client whose appends wait on a stalled shard can still be served.
//!
//! When the connection ends, answers not yet encoded are dropped: requests in
//! tasks are cancelled, and answers a shard still holds find the connection gone.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::client_msg::{ClientResponse, ServerError, encode_response};
use super::frame::FRAME_HEADER_BYTES;
use super::signal::{Cancel, Notify};

/// State shared by one connection's reader, writer and the answers it owes.
pub(super) struct Shared {
    /// Encoded answers waiting for the writer.
    pub(super) out: RefCell<BytesMut>,
    /// Bytes the writer has taken from `out` and not finished writing.
    pub(super) writing_bytes: Cell<usize>,
    pub(super) inflight: Cell<usize>,
    pub(super) inflight_bytes: Cell<usize>,
    pub(super) waiting_reads: Cell<usize>,
    /// Set when the connection is ending: answers from then on are dropped.
    pub(super) closing: Cell<bool>,
    /// Set when the connection must end without writing what is still unwritten.
    pub(super) abort: Cell<bool>,
    /// Cancelled when the connection ends: drops the requests still being handled
    /// in tasks of their own.
    pub(super) requests: Cancel,
    pub(super) writer_wake: Notify,
    pub(super) reader_wake: Notify,
    /// Deadlines of the answers taken by a handler (see [`Answer::time_out`]).
    deadlines: RefCell<Deadlines>,
    /// Wakes the deadline sweep when the first deadline arrives.
    deadline_wake: Notify,
    /// How long a taken answer may take before the client hears Timeout.
    answer_timeout: Duration,
    /// The client's frame limit, which every answer must fit.
    body_bytes_max: u32,
}

impl Shared {
    pub(super) fn new(answer_timeout: Duration, body_bytes_max: u32) -> Shared {
        Shared {
            out: RefCell::new(BytesMut::new()),
            writing_bytes: Cell::new(0),
            inflight: Cell::new(0),
            inflight_bytes: Cell::new(0),
            waiting_reads: Cell::new(0),
            closing: Cell::new(false),
            abort: Cell::new(false),
            requests: Cancel::default(),
            writer_wake: Notify::default(),
            reader_wake: Notify::default(),
            deadlines: RefCell::new(Deadlines::default()),
            deadline_wake: Notify::default(),
            answer_timeout,
            body_bytes_max,
        }
    }

    pub(super) fn unwritten_bytes(&self) -> usize {
        self.out.borrow().len() + self.writing_bytes.get()
    }

    /// Deadlines kept, answered ones behind an unanswered one included: the reader
    /// stops taking requests at `max` so that this bookkeeping stays bounded even
    /// if one answer never comes.
    pub(super) fn deadlines_kept(&self) -> usize {
        self.deadlines.borrow().entries.len()
    }

    /// Queues an answer and wakes the writer.
    pub(super) fn answer(&self, request_id: u64, answer: &Result<ClientResponse, ServerError>) {
        encode_bounded(
            &mut self.out.borrow_mut(),
            request_id,
            answer,
            self.body_bytes_max,
        );
        self.writer_wake.notify();
    }

    /// Waits until `ready` holds; `false` if the connection started closing first.
    pub(super) async fn wait_for(&self, ready: impl Fn(&Shared) -> bool) -> bool {
        loop {
            if self.closing.get() {
                return false;
            }
            if ready(self) {
                return true;
            }
            self.reader_wake.notified().await;
        }
    }

    /// Frees the output buffer once the connection has ended: answers still owed
    /// (their handlers hold this state until they answer) must not keep it. The
    /// deadlines stay, bounded by the reader's limit, so that a late answer still
    /// learns that its request timed out.
    pub(super) fn release(&self) {
        *self.out.borrow_mut() = BytesMut::new();
    }

    /// Gives back what one request counted against the connection's limits.
    fn give_back(&self, cost_bytes: usize, waits: bool) {
        self.inflight.set(self.inflight.get() - 1);
        self.inflight_bytes
            .set(self.inflight_bytes.get() - cost_bytes);
        if waits {
            self.waiting_reads.set(self.waiting_reads.get() - 1);
        }
        self.writer_wake.notify();
        self.reader_wake.notify();
    }

    /// Answers Timeout to every taken request past its deadline, until the
    /// connection ends. One timer serves all of them: it sleeps until the earliest
    /// deadline, and not at all while none is kept.
    pub(super) async fn sweep_deadlines(&self) {
        let mut expired = Vec::new();
        loop {
            let next = self.deadlines.borrow().next();
            match next {
                None => self.deadline_wake.notified().await,
                Some(at) => {
                    glommio::timer::sleep(at.saturating_duration_since(Instant::now())).await
                }
            }
            self.deadlines
                .borrow_mut()
                .expire(Instant::now(), &mut expired);
            for owed in expired.drain(..) {
                // The handler still holds the answer, but the client has its answer
                // and may send more: what the request counted is given back now.
                self.give_back(owed.cost_bytes, owed.waits);
                if !self.closing.get() {
                    self.answer(owed.request_id, &Err(ServerError::Timeout));
                }
            }
        }
    }
}

/// One answer still owed by its deadline, and what its request counts against the
/// connection's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Owed {
    at: Instant,
    request_id: u64,
    cost_bytes: usize,
    waits: bool,
}

/// The deadlines of the answers a handler took, in the order it took them. Every
/// one is `answer_timeout` after its request was taken, so they grow with their
/// sequence number and the earliest is always at the front.
#[derive(Default)]
struct Deadlines {
    /// Sequence number of the front entry.
    first_seq: u64,
    /// Each answer still owed; None once answered or expired.
    /// Invariant: the front entry, if any, is Some.
    entries: VecDeque<Option<Owed>>,
}

impl Deadlines {
    fn push(&mut self, owed: Owed) -> u64 {
        let seq = self.first_seq + self.entries.len() as u64;
        self.entries.push_back(Some(owed));
        seq
    }

    /// Marks `seq` answered: `false` if it already was, by the sweep's Timeout.
    fn finish(&mut self, seq: u64) -> bool {
        let Some(entry) = seq
            .checked_sub(self.first_seq)
            .and_then(|i| self.entries.get_mut(i as usize))
        else {
            return false;
        };
        let owed = entry.take().is_some();
        self.drop_answered_front();
        owed
    }

    fn drop_answered_front(&mut self) {
        while let Some(None) = self.entries.front() {
            self.entries.pop_front();
            self.first_seq += 1;
        }
    }

    fn next(&self) -> Option<Instant> {
        self.entries.front().copied().flatten().map(|owed| owed.at)
    }

    /// Takes out the answers past their deadline at `now` into `expired`.
    fn expire(&mut self, now: Instant, expired: &mut Vec<Owed>) {
        while let Some(Some(owed)) = self.entries.front().copied() {
            if owed.at > now {
                break;
            }
            self.entries.pop_front();
            self.first_seq += 1;
            expired.push(owed);
            self.drop_answered_front();
        }
    }
}

/// What became of an answer sent through an [`Answer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for the client.
    Queued,
    /// Dropped: the client already heard Timeout for this request.
    TimedOut,
    /// Dropped: the connection has ended.
    Gone,
}

/// The answer one request is owed on its connection, and what the request counts
/// against the connection's limits until this is dropped or its deadline passes.
pub struct Answer {
    shared: Rc<Shared>,
    request_id: u64,
    cost_bytes: usize,
    waits: bool,
    /// The request's place among the connection's deadlines, once timed and until
    /// settled (sent, or found expired).
    deadline_seq: Option<u64>,
    /// Whether the request still counts against the connection's limits: the
    /// deadline sweep gives its share back when it answers Timeout.
    counted: bool,
    /// When the request's last bytes were received.
    received: Instant,
}

impl Answer {
    /// Counts a request, whose last bytes were received at `received`, against the
    /// connection's limits until the answer is dropped.
    pub(super) fn new(
        shared: Rc<Shared>,
        request_id: u64,
        cost_bytes: usize,
        waits: bool,
        received: Instant,
    ) -> Self {
        shared.inflight.set(shared.inflight.get() + 1);
        shared
            .inflight_bytes
            .set(shared.inflight_bytes.get() + cost_bytes);
        if waits {
            shared.waiting_reads.set(shared.waiting_reads.get() + 1);
        }
        Answer {
            shared,
            request_id,
            cost_bytes,
            waits,
            deadline_seq: None,
            counted: true,
            received,
        }
    }

    /// When the request's last bytes were received (read once per read of the
    /// connection, not per request).
    pub fn received(&self) -> Instant {
        self.received
    }

    /// Gives the request the connection's answer deadline: if no answer is sent
    /// within it, the connection answers Timeout itself (the outcome of an append
    /// is then open, as with every Timeout), gives back what the request counts
    /// against its limits, and drops the late answer. A handler that takes an
    /// answer without a task of its own calls this, since nothing else would time
    /// the request out.
    pub fn time_out(&mut self) {
        self.time_out_from(Instant::now());
    }

    /// [`Answer::time_out`] counting from `arrived` (such as
    /// [`Answer::received`]) rather than from now.
    pub fn time_out_from(&mut self, arrived: Instant) {
        if self.deadline_seq.is_some() {
            return;
        }
        let shared = &self.shared;
        let mut deadlines = shared.deadlines.borrow_mut();
        let first = deadlines.entries.is_empty();
        self.deadline_seq = Some(deadlines.push(Owed {
            at: arrived + shared.answer_timeout,
            request_id: self.request_id,
            cost_bytes: self.cost_bytes,
            waits: self.waits,
        }));
        if first {
            shared.deadline_wake.notify();
        }
    }

    /// Settles the deadline, if the request has one: `false` if the sweep already
    /// answered Timeout (and gave back the request's share of the limits).
    fn settle(&mut self) -> bool {
        let Some(seq) = self.deadline_seq.take() else {
            return true;
        };
        let owed = self.shared.deadlines.borrow_mut().finish(seq);
        if !owed {
            self.counted = false;
        }
        owed
    }

    /// Encodes `answer` for the client (see [`Delivery`]).
    pub fn send(mut self, answer: &Result<ClientResponse, ServerError>) -> Delivery {
        if !self.settle() {
            return Delivery::TimedOut;
        }
        if self.shared.closing.get() {
            return Delivery::Gone;
        }
        self.shared.answer(self.request_id, answer);
        Delivery::Queued
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        // A timed answer dropped unsent (its shard stopped mid-request) is owed
        // Timeout now rather than at its deadline: an append may have been applied,
        // so the outcome is open, never a refusal.
        let timed = self.deadline_seq.is_some();
        if timed && self.settle() && !self.shared.closing.get() {
            self.shared
                .answer(self.request_id, &Err(ServerError::Timeout));
        }
        if self.counted {
            self.shared.give_back(self.cost_bytes, self.waits);
        }
    }
}

/// Encodes an answer; one larger than the frame limit would be refused by a client
/// with the same limit and cost it its connection, so it is replaced by an error the
/// client can act on.
fn encode_bounded(
    out: &mut BytesMut,
    request_id: u64,
    answer: &Result<ClientResponse, ServerError>,
    body_bytes_max: u32,
) {
    let start = out.len();
    encode_response(out, request_id, answer);
    let body_bytes = out.len() - start - FRAME_HEADER_BYTES;
    if body_bytes > body_bytes_max as usize {
        out.truncate(start);
        let reason = format!(
            "answer of {body_bytes} bytes exceeds the {body_bytes_max}-byte frame limit; ask for fewer bytes"
        );
        encode_response(
            out,
            request_id,
            &Err(ServerError::InvalidRequest { reason }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    fn owed(at: Instant, request_id: u64) -> Owed {
        Owed {
            at,
            request_id,
            cost_bytes: 64,
            waits: false,
        }
    }

    #[test]
    fn answered_deadlines_leave_from_the_front_only() {
        let (start, mut d) = (Instant::now(), Deadlines::default());
        let seqs: Vec<u64> = (0..3)
            .map(|i| d.push(owed(at(start, 10 + i), 100 + i)))
            .collect();
        assert_eq!(seqs, [0, 1, 2]);
        assert!(d.finish(1), "the middle one is owed");
        assert_eq!(d.entries.len(), 3, "kept behind the unanswered front");
        assert!(!d.finish(1), "answered once only");
        assert!(d.finish(0));
        assert_eq!((d.first_seq, d.entries.len()), (2, 1));
        assert_eq!(d.next(), Some(at(start, 12)));
        assert!(d.finish(2));
        assert_eq!(d.next(), None);
        assert!(!d.finish(7), "a sequence number never given is not owed");
    }

    #[test]
    fn expiry_takes_only_what_is_due_and_skips_answered_ones() {
        let (start, mut d) = (Instant::now(), Deadlines::default());
        for i in 0..4 {
            d.push(owed(at(start, 10 * (i + 1)), 100 + i));
        }
        assert!(d.finish(1));
        let mut expired = Vec::new();
        d.expire(at(start, 5), &mut expired);
        assert!(expired.is_empty());
        d.expire(at(start, 30), &mut expired);
        let ids: Vec<u64> = expired.iter().map(|o| o.request_id).collect();
        assert_eq!(ids, [100, 102], "the answered 101 is not expired");
        assert!(!d.finish(2), "an expired answer is no longer owed");
        assert!(d.finish(3));
        assert!(d.entries.is_empty());
    }
}
