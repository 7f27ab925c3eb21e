//! Appends from connections served on the shard's own executor. They skip what a
//! request crossing executors needs (a task awaiting it, a reply channel, a timer,
//! a lane with atomics): the connection's [`Answer`] travels with the records, the
//! shard encodes its answer straight into the connection's buffer, and the
//! connection keeps the deadline. Bounded in count and bytes like the client lane,
//! each bound separately.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

use bytes::Bytes;

use super::inbox::{INBOX_BYTES_MAX, INBOX_CAPACITY, Reply, shutting_down};
use crate::metrics::{AppendTally, RouterMetrics};
use crate::transport::answer::{Answer, Delivery};
use crate::transport::{AppendOk, ClientResponse, ServerError};

/// One append taken from a connection on the shard's executor.
pub struct LocalAppend {
    pub records: Vec<Bytes>,
    pub answer: LocalAnswer,
}

/// The records and payload bytes of an append, as its metrics count them.
pub fn append_size(records: &[Bytes]) -> (u64, u64) {
    let bytes = records.iter().map(|r| r.len() as u64).sum();
    (records.len() as u64, bytes)
}

/// Where a local append's answer goes, with what its metrics need.
pub struct LocalAnswer {
    /// Also holds when the request was received, the start of its latency.
    answer: Answer,
    partition: u32,
    /// (records, payload bytes).
    size: (u64, u64),
    metrics: Rc<RouterMetrics>,
}

impl LocalAnswer {
    pub fn new(
        answer: Answer,
        partition: u32,
        records: &[Bytes],
        metrics: Rc<RouterMetrics>,
    ) -> Self {
        LocalAnswer {
            answer,
            partition,
            size: append_size(records),
            metrics,
        }
    }

    /// Answers the client and counts the request as it was answered: an answer
    /// that came after the connection's Timeout counts as that Timeout.
    pub fn send(self, result: Result<AppendOk, ServerError>) {
        self.send_at(result, Instant::now(), &mut AppendTally::default());
    }

    /// [`LocalAnswer::send`] with the clock already read: a shard answering a
    /// turn's appends reads it once for all of them rather than once each, and
    /// counts the acknowledged ones in one `tally`.
    pub fn send_at(
        self,
        result: Result<AppendOk, ServerError>,
        now: Instant,
        tally: &mut AppendTally,
    ) {
        let elapsed = now.saturating_duration_since(self.answer.received());
        let answer = result.map(ClientResponse::Append);
        let error = match self.answer.send(&answer) {
            Delivery::TimedOut => Some(&ServerError::Timeout),
            Delivery::Queued | Delivery::Gone => answer.as_ref().err(),
        };
        match error {
            None => self
                .metrics
                .append_acknowledged(self.partition, self.size, elapsed, tally),
            Some(_) => self
                .metrics
                .append_answered(self.partition, self.size, error, elapsed),
        }
    }
}

/// Where an append's answer goes: through a reply channel to another executor's
/// task, or straight into a connection on this executor.
pub enum AppendReply {
    Routed(Reply<AppendOk>),
    Local(LocalAnswer),
}

impl AppendReply {
    pub fn send(self, result: Result<AppendOk, ServerError>) {
        self.send_at(result, Instant::now(), &mut AppendTally::default());
    }

    /// Answers with the clock read at `now` (for a local answer's latency),
    /// counting a local acknowledged answer in `tally`.
    pub fn send_at(
        self,
        result: Result<AppendOk, ServerError>,
        now: Instant,
        tally: &mut AppendTally,
    ) {
        match self {
            AppendReply::Routed(reply) => reply.send(result),
            AppendReply::Local(answer) => answer.send_at(result, now, tally),
        }
    }
}

/// The queue of local appends, shared by the executor's router (which pushes) and
/// its shard (which drains).
pub struct LocalInbox {
    queue: RefCell<VecDeque<LocalAppend>>,
    queued_bytes: Cell<usize>,
    /// The shard's loop, while it waits for work.
    waiter: RefCell<Option<Waker>>,
    /// Set when the shard stops, to the answer every later append gets.
    closed: RefCell<Option<ServerError>>,
}

/// Why the inbox did not take an append; the append comes back.
pub enum Refused {
    /// At its count or byte bound.
    Full(LocalAppend),
    /// The shard has stopped ([`LocalInbox::refusal`] says what to answer).
    Closed(LocalAppend),
}

impl LocalInbox {
    pub fn new() -> Rc<LocalInbox> {
        Rc::new(LocalInbox {
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            waiter: RefCell::new(None),
            closed: RefCell::new(None),
        })
    }

    /// Queues `append`, or gives it back when the queue is at a bound (a single
    /// append larger than the byte bound is taken when the queue is empty) or the
    /// shard has stopped.
    pub fn push(&self, append: LocalAppend) -> Result<(), Refused> {
        if self.closed.borrow().is_some() {
            return Err(Refused::Closed(append));
        }
        let bytes = append.answer.size.1 as usize;
        let mut queue = self.queue.borrow_mut();
        let queued = self.queued_bytes.get();
        if queue.len() >= INBOX_CAPACITY || (queued > 0 && queued + bytes > INBOX_BYTES_MAX) {
            return Err(Refused::Full(append));
        }
        queue.push_back(append);
        self.queued_bytes.set(queued + bytes);
        if let Some(waker) = self.waiter.borrow_mut().take() {
            waker.wake();
        }
        Ok(())
    }

    pub fn try_recv(&self) -> Option<LocalAppend> {
        let append = self.queue.borrow_mut().pop_front()?;
        self.queued_bytes
            .set(self.queued_bytes.get() - append.answer.size.1 as usize);
        Some(append)
    }

    /// Stops taking appends and answers those still queued, and those pushed
    /// later, with `refusal`: the engine never saw them, so a refusal the client
    /// may retry is the truth.
    pub fn close(&self, refusal: &ServerError) {
        *self.closed.borrow_mut() = Some(refusal.clone());
        while let Some(append) = self.try_recv() {
            append.answer.send(Err(refusal.clone()));
        }
    }

    /// The answer for an append the closed inbox refused.
    pub fn refusal(&self) -> ServerError {
        self.closed.borrow().clone().unwrap_or_else(shutting_down)
    }

    /// Completes once something is queued.
    pub async fn ready(&self) {
        poll_fn(|cx| {
            if self.queue.borrow().is_empty() {
                *self.waiter.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    pub fn len(&self) -> usize {
        self.queue.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.borrow().is_empty()
    }
}
