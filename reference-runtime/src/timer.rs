//! Timers: the heap the scheduling loop checks, and `sleep`.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::probes::{self, park_reason};
use crate::{sched, task};

/// A min-heap of deadlines (CLOCK_MONOTONIC nanoseconds); equal deadlines fire in insertion order.
pub(crate) struct TimerHeap<T> {
    heap: BinaryHeap<Entry<T>>,
    seq: u64,
}

struct Entry<T> {
    deadline: u64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    // Reversed: BinaryHeap is a max-heap and the earliest deadline must come out first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.deadline, other.seq).cmp(&(self.deadline, self.seq))
    }
}

impl<T> TimerHeap<T> {
    pub(crate) fn new() -> Self {
        Self { heap: BinaryHeap::new(), seq: 0 }
    }

    /// Adds a timer; true when it is now the earliest one.
    pub(crate) fn push(&mut self, deadline: u64, item: T) -> bool {
        let earliest = self.next_deadline().is_none_or(|d| deadline < d);
        self.seq += 1;
        self.heap.push(Entry { deadline, seq: self.seq, item });
        earliest
    }

    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.heap.peek().map(|e| e.deadline)
    }

    /// Removes and returns the earliest timer if it is due at `now`.
    pub(crate) fn pop_expired(&mut self, now: u64) -> Option<T> {
        if self.next_deadline()? > now {
            return None;
        }
        self.heap.pop().map(|e| e.item)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    pub(crate) fn clear(&mut self) -> Vec<T> {
        self.heap.drain().map(|e| e.item).collect()
    }
}

/// Waits until `duration` has passed (a timer in the runtime's heap; the task parks with reason
/// timer). Must be awaited inside a runtime task.
pub fn sleep(duration: Duration) -> Sleep {
    let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    Sleep { deadline: probes::now_ns().saturating_add(nanos), registered: false }
}

/// The future of [`sleep`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct Sleep {
    deadline: u64,
    registered: bool,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if probes::now_ns() >= self.deadline {
            return Poll::Ready(());
        }
        // One heap entry per sleep: a spurious poll keeps the entry it has (its waker wakes the
        // same task), so a timer never fires twice for one sleep.
        if !self.registered {
            let Some(ctx) = sched::current() else {
                panic!("reference_runtime::sleep must be awaited inside a reference-runtime task")
            };
            ctx.shared.add_timer(self.deadline, cx.waker().clone());
            self.registered = true;
        }
        task::set_park_reason(park_reason::TIMER, probes::NONE);
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_and_fifo_among_equals() {
        let mut h = TimerHeap::new();
        assert!(h.push(30, "c"));
        assert!(h.push(10, "a"));
        assert!(!h.push(20, "b"));
        assert!(!h.push(10, "a2"));
        assert_eq!(h.len(), 4);
        assert_eq!(h.next_deadline(), Some(10));
        assert_eq!(h.pop_expired(9), None);
        assert_eq!(h.pop_expired(10), Some("a"));
        assert_eq!(h.pop_expired(10), Some("a2"));
        assert_eq!(h.pop_expired(25), Some("b"));
        assert_eq!(h.pop_expired(25), None);
        assert_eq!(h.next_deadline(), Some(30));
        assert_eq!(h.clear(), ["c"]);
        assert_eq!(h.next_deadline(), None);
        assert!(h.push(50, "d"), "the first timer of an empty heap is the earliest");
    }

    #[test]
    fn many_timers_come_out_sorted() {
        let mut h = TimerHeap::new();
        let mut x = 12345u64;
        for i in 0..1000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            h.push(x % 10_000, i);
        }
        let mut last = 0;
        let mut n = 0;
        while let Some(d) = h.next_deadline() {
            assert!(d >= last);
            last = d;
            h.pop_expired(u64::MAX).expect("due");
            n += 1;
        }
        assert_eq!(n, 1000);
    }
}
