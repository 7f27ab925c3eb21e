//! Tiny single-threaded synchronisation helpers for connections: everything here
//! runs on one glommio executor, so nothing needs to be `Send`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// Wakes one waiting task. A notification given while nobody waits is remembered, so
/// the check-then-wait pattern cannot miss a wake-up on a single thread.
#[derive(Default)]
pub struct Notify {
    notified: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    pub fn notify(&self) {
        self.notified.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    pub async fn notified(&self) {
        poll_fn(|cx| {
            if self.notified.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// Cancels every task of a group at once, such as the requests of one connection when
/// it ends. Each task races its work against [`Cancel::cancelled`]; `cancel` wakes
/// them all, and a task that finishes first leaves no waker behind.
#[derive(Default)]
pub struct Cancel {
    cancelled: Cell<bool>,
    waiters: RefCell<HashMap<u64, Waker>>,
    next_waiter: Cell<u64>,
}

impl Cancel {
    pub fn cancel(&self) {
        self.cancelled.set(true);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for waker in waiters.into_values() {
            waker.wake();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.get()
    }

    /// Completes once [`Cancel::cancel`] has been called.
    pub async fn cancelled(&self) {
        let id = self.next_waiter.get();
        self.next_waiter.set(id + 1);
        // Removes this waiter's waker when the race is decided either way.
        struct Forget<'a>(&'a Cancel, u64);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0.waiters.borrow_mut().remove(&self.1);
            }
        }
        let _forget = Forget(self, id);
        poll_fn(|cx| {
            if self.cancelled.get() {
                Poll::Ready(())
            } else {
                self.waiters.borrow_mut().insert(id, cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// A single-threaded one-shot slot: one side fills it, the other awaits it.
pub struct OneShot<T> {
    value: RefCell<Option<T>>,
    ready: Notify,
}

impl<T> OneShot<T> {
    pub fn new() -> Rc<OneShot<T>> {
        Rc::new(OneShot {
            value: RefCell::new(None),
            ready: Notify::default(),
        })
    }

    /// Fills the slot; a second fill is ignored (the first answer wins).
    pub fn fill(&self, value: T) {
        let mut slot = self.value.borrow_mut();
        if slot.is_none() {
            *slot = Some(value);
            drop(slot);
            self.ready.notify();
        }
    }

    pub async fn wait(&self) -> T {
        loop {
            if let Some(v) = self.value.borrow_mut().take() {
                return v;
            }
            self.ready.notified().await;
        }
    }
}
