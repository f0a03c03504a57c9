//! Run queues: the bounded ring of a P (Go's `runq`, 256 entries) and its locked wrapper.
//!
//! Go's `runq` is lock-free (single producer, many stealing consumers). Here the ring sits behind
//! a mutex that only its owner M and, rarely, a thief take: the same shape, no unsafe code, and a
//! critical section that also lets the probes fire while the task is provably not yet visible to
//! any other M (see `sched`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::lock;

/// Capacity of a P's local run queue.
pub(crate) const LOCAL_QUEUE_CAP: usize = 256;

/// A bounded FIFO ring.
pub(crate) struct Ring<T> {
    slots: Box<[Option<T>]>,
    head: usize,
    len: usize,
}

impl<T> Ring<T> {
    pub(crate) fn with_capacity(cap: usize) -> Self {
        assert!(cap > 0, "a ring needs room for one entry");
        Self { slots: (0..cap).map(|_| None).collect(), head: 0, len: 0 }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_full(&self) -> bool {
        self.len == self.slots.len()
    }

    /// Appends at the tail; gives the value back when the ring is full.
    pub(crate) fn push_back(&mut self, v: T) -> Result<(), T> {
        if self.is_full() {
            return Err(v);
        }
        let i = (self.head + self.len) % self.slots.len();
        self.slots[i] = Some(v);
        self.len += 1;
        Ok(())
    }

    pub(crate) fn pop_front(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let v = self.slots[self.head].take();
        self.head = (self.head + 1) % self.slots.len();
        self.len -= 1;
        v
    }

    /// Removes the `n` oldest entries (fewer if the ring holds fewer).
    pub(crate) fn take_front(&mut self, n: usize) -> Vec<T> {
        let n = n.min(self.len);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.extend(self.pop_front());
        }
        out
    }

    /// What a thief takes: the older half, rounded up (Go's `runqgrab`: `n - n/2`).
    pub(crate) fn steal_half(&mut self) -> Vec<T> {
        let n = self.len - self.len / 2;
        self.take_front(n)
    }
}

/// A P's local run queue: the ring behind a mutex, with its length readable without the lock.
pub(crate) struct LocalQueue<T> {
    ring: Mutex<Ring<T>>,
    len: AtomicUsize,
    max_len: AtomicUsize,
}

impl<T> LocalQueue<T> {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            ring: Mutex::new(Ring::with_capacity(cap)),
            len: AtomicUsize::new(0),
            max_len: AtomicUsize::new(0),
        }
    }

    /// Length as last published (exact for the owner, a hint for everyone else).
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Most entries the queue has held.
    pub(crate) fn max_len(&self) -> usize {
        self.max_len.load(Ordering::Relaxed)
    }

    /// Appends `v` and calls `queued` while still holding the lock, so that whatever `queued`
    /// records happens before any other thread can take `v`. When the ring is full it instead
    /// removes the older half, returns it with `v` appended (Go's `runqputslow`: the caller moves
    /// the batch to the global queue) and gives `queued` back uncalled.
    pub(crate) fn push<F: FnOnce()>(&self, v: T, queued: F) -> Result<(), (Vec<T>, F)> {
        let mut ring = lock(&self.ring);
        match ring.push_back(v) {
            Ok(()) => {
                self.publish(&ring);
                queued();
                Ok(())
            }
            Err(v) => {
                let half = ring.capacity() / 2;
                let mut batch = ring.take_front(half);
                batch.push(v);
                self.publish(&ring);
                Err((batch, queued))
            }
        }
    }

    pub(crate) fn pop(&self) -> Option<T> {
        if self.len() == 0 {
            return None;
        }
        let mut ring = lock(&self.ring);
        let v = ring.pop_front();
        self.publish(&ring);
        v
    }

    /// Takes the older half (rounded up), for a thief.
    pub(crate) fn steal_half(&self) -> Vec<T> {
        if self.len() == 0 {
            return Vec::new();
        }
        let mut ring = lock(&self.ring);
        let batch = ring.steal_half();
        self.publish(&ring);
        batch
    }

    pub(crate) fn drain(&self) -> Vec<T> {
        let mut ring = lock(&self.ring);
        let n = ring.len();
        let all = ring.take_front(n);
        self.publish(&ring);
        all
    }

    fn publish(&self, ring: &Ring<T>) {
        self.len.store(ring.len(), Ordering::Release);
        self.max_len.fetch_max(ring.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_bounded_fifo_and_wraps() {
        let mut r = Ring::with_capacity(4);
        for i in 0..4 {
            assert!(r.push_back(i).is_ok());
        }
        assert!(r.is_full());
        assert_eq!(r.push_back(99), Err(99));
        assert_eq!(r.pop_front(), Some(0));
        assert_eq!(r.pop_front(), Some(1));
        // Wrap around the end of the slots.
        assert!(r.push_back(4).is_ok());
        assert!(r.push_back(5).is_ok());
        assert_eq!(r.push_back(6), Err(6));
        let all: Vec<_> = std::iter::from_fn(|| r.pop_front()).collect();
        assert_eq!(all, [2, 3, 4, 5]);
        assert_eq!(r.pop_front(), None);
    }

    #[test]
    fn steal_takes_the_older_half_rounded_up() {
        let mut r = Ring::with_capacity(8);
        for i in 0..5 {
            r.push_back(i).expect("room");
        }
        assert_eq!(r.steal_half(), [0, 1, 2]);
        assert_eq!(r.len(), 2);
        assert_eq!(r.steal_half(), [3]);
        assert_eq!(r.steal_half(), [4]);
        assert!(r.steal_half().is_empty());
    }

    #[test]
    fn overflow_moves_half_out_with_the_new_entry() {
        let q = LocalQueue::new(8);
        let mut queued = 0;
        for i in 0..8 {
            assert!(q.push(i, || queued += 1).is_ok());
        }
        assert_eq!(queued, 8);
        assert_eq!(q.max_len(), 8);
        let Err((batch, not_called)) = q.push(8, || queued += 1) else { panic!("queue should be full") };
        not_called();
        assert_eq!(batch, [0, 1, 2, 3, 8]);
        assert_eq!(q.len(), 4);
        assert_eq!(q.pop(), Some(4));
        assert_eq!(q.steal_half(), [5, 6]);
        assert_eq!(q.drain(), [7]);
        assert_eq!(q.len(), 0);
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn concurrent_owner_and_thieves_lose_nothing() {
        use std::sync::Arc;
        let q = Arc::new(LocalQueue::new(LOCAL_QUEUE_CAP));
        let total = 20_000u64;
        let thieves: Vec<_> = (0..2)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    for _ in 0..20_000 {
                        got.extend(q.steal_half());
                    }
                    got
                })
            })
            .collect();
        let mut mine = Vec::new();
        let mut overflow = Vec::new();
        for i in 0..total {
            if let Err((batch, _)) = q.push(i, || ()) {
                overflow.extend(batch);
            }
            if i % 3 == 0 {
                mine.extend(q.pop());
            }
        }
        let mut all: Vec<u64> = thieves.into_iter().flat_map(|t| t.join().expect("thief")).collect();
        all.extend(mine);
        all.extend(overflow);
        all.extend(q.drain());
        all.sort_unstable();
        assert_eq!(all, (0..total).collect::<Vec<_>>());
    }
}
