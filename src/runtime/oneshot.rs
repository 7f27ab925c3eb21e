//! A one-answer channel between executors: a shard answers a routed request through
//! it. It replaces a `flume::bounded(1)` per request, which cost three allocations (the
//! channel, its queue and the waiting receiver's hook) and a queue's bookkeeping for
//! one value; this costs one allocation and one uncontended lock on each side.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

struct Slot<T> {
    value: Option<T>,
    /// The receiver's task, once it has waited.
    waker: Option<Waker>,
    /// The sender was dropped; with no value, no answer will come.
    sender_gone: bool,
    /// The receiver was dropped: no one waits for the answer any more.
    receiver_gone: bool,
}

/// Sends the one answer.
pub struct Sender<T>(Arc<Mutex<Slot<T>>>);

/// Waits for the answer: `Err(Canceled)` when the sender was dropped without one.
pub struct Receiver<T>(Arc<Mutex<Slot<T>>>);

/// The sender went away without answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Canceled;

pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let slot = Arc::new(Mutex::new(Slot {
        value: None,
        waker: None,
        sender_gone: false,
        receiver_gone: false,
    }));
    (Sender(slot.clone()), Receiver(slot))
}

/// Every update under the lock is a single assignment, so a panic elsewhere while it
/// was held cannot have left the slot half-updated: a poisoned lock is still usable.
fn lock<T>(slot: &Mutex<Slot<T>>) -> MutexGuard<'_, Slot<T>> {
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<T> Sender<T> {
    /// Whether the receiver is gone (its asker gave up or its connection closed), so
    /// that whoever holds this sender can drop the work it stands for.
    pub fn is_closed(&self) -> bool {
        lock(&self.0).receiver_gone
    }

    /// Delivers `value`; it is dropped when the receiver is already gone (the asker
    /// timed out or went away), which the answering side has no use in knowing.
    pub fn send(self, value: T) {
        let waker = {
            let mut slot = lock(&self.0);
            slot.value = Some(value);
            slot.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut slot = lock(&self.0);
            slot.sender_gone = true;
            slot.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Future for Receiver<T> {
    type Output = Result<T, Canceled>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = lock(&self.0);
        if let Some(value) = slot.value.take() {
            return Poll::Ready(Ok(value));
        }
        if slot.sender_gone {
            return Poll::Ready(Err(Canceled));
        }
        match &slot.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<T> Drop for Receiver<T> {
    /// An asker that gave up (its deadline passed) takes its waker back, so that a late
    /// answer neither keeps the asking task's memory alive nor wakes it for nothing.
    fn drop(&mut self) {
        let waker = {
            let mut slot = lock(&self.0);
            slot.receiver_gone = true;
            slot.waker.take()
        };
        drop(waker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

    #[test]
    fn an_answer_sent_before_the_wait_is_received() {
        let (tx, rx) = channel();
        tx.send(7);
        assert_eq!(block_on(rx), Ok(7));
    }

    #[test]
    fn a_sender_dropped_without_answering_cancels() {
        let (tx, rx) = channel::<u32>();
        drop(tx);
        assert_eq!(block_on(rx), Err(Canceled));
    }

    #[test]
    fn an_answer_from_another_thread_wakes_the_waiting_receiver() {
        let (tx, rx) = channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let answering = std::thread::spawn(move || {
            // Answer only once the receiver has had a chance to wait.
            ready_rx.recv().expect("ready");
            tx.send("done");
        });
        let waiting = async {
            let mut rx = rx;
            let first = futures_lite::future::poll_once(&mut rx).await;
            assert!(first.is_none(), "nothing was sent yet");
            ready_tx.send(()).expect("answering thread alive");
            rx.await
        };
        assert_eq!(block_on(waiting), Ok("done"));
        answering.join().expect("answering thread");
    }

    #[test]
    fn a_sender_knows_when_its_receiver_is_gone() {
        let (tx, rx) = channel::<u32>();
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
    }

    #[test]
    fn sending_to_a_receiver_that_is_gone_does_nothing() {
        let (tx, rx) = channel();
        drop(rx);
        tx.send(vec![1u8; 16]);
    }
}
