//! A bounded multi-producer, single-consumer channel whose `send` and `recv` park the task
//! (reason channel) when the buffer is full or empty.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::lock;
use crate::probes::{self, park_reason};
use crate::task::set_park_reason;

/// Creates a channel holding up to `capacity` messages (at least 1). With capacity 1, two tasks
/// exchanging messages over a pair of channels hand over every message, like an unbuffered Go
/// channel does.
pub fn channel<T: Send>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let chan = Arc::new(Chan {
        state: Mutex::new(State {
            buf: VecDeque::with_capacity(capacity.max(1)),
            capacity: capacity.max(1),
            rx_waker: None,
            tx_waiters: VecDeque::new(),
            next_ticket: 0,
            senders: 1,
            receiver_alive: true,
        }),
    });
    (Sender { chan: chan.clone() }, Receiver { chan })
}

struct Chan<T> {
    state: Mutex<State<T>>,
}

struct State<T> {
    buf: VecDeque<T>,
    capacity: usize,
    rx_waker: Option<Waker>,
    /// Senders waiting for room, oldest first.
    tx_waiters: VecDeque<(u64, Waker)>,
    next_ticket: u64,
    senders: usize,
    receiver_alive: bool,
}

/// The sending half; clone it for more producers. The receiver sees the end of the stream when
/// every sender is dropped.
pub struct Sender<T> {
    chan: Arc<Chan<T>>,
}

/// The receiving half.
pub struct Receiver<T> {
    chan: Arc<Chan<T>>,
}

/// The receiver is gone; the message comes back.
#[derive(PartialEq, Eq)]
pub struct SendError<T>(pub T);

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SendError(..)")
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the receiver of the channel is gone")
    }
}

impl<T> std::error::Error for SendError<T> {}

impl<T: Send> Sender<T> {
    /// Sends `value`, waiting while the buffer is full.
    pub fn send(&self, value: T) -> SendFuture<'_, T> {
        SendFuture { chan: &self.chan, value: Some(value), ticket: None }
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        lock(&self.chan.state).senders += 1;
        Self { chan: self.chan.clone() }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut s = lock(&self.chan.state);
            s.senders -= 1;
            if s.senders == 0 { s.rx_waker.take() } else { None }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sender { .. }")
    }
}

/// The future of [`Sender::send`].
#[must_use = "futures do nothing unless awaited"]
pub struct SendFuture<'a, T> {
    chan: &'a Chan<T>,
    value: Option<T>,
    /// Our place among the waiting senders, once we waited.
    ticket: Option<u64>,
}

impl<T> Future for SendFuture<'_, T> {
    type Output = Result<(), SendError<T>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SendFuture is Unpin: it holds a reference, an Option<T> and a ticket, none of them pinned.
        let this = self.get_mut();
        let Some(value) = this.value.take() else { panic!("SendFuture polled after completion") };
        let mut s = lock(&this.chan.state);
        if let Some(t) = this.ticket {
            s.tx_waiters.retain(|(ticket, _)| *ticket != t);
        }
        if !s.receiver_alive {
            this.ticket = None;
            return Poll::Ready(Err(SendError(value)));
        }
        if s.buf.len() < s.capacity {
            s.buf.push_back(value);
            this.ticket = None;
            let waker = s.rx_waker.take();
            drop(s);
            if let Some(w) = waker {
                w.wake();
            }
            return Poll::Ready(Ok(()));
        }
        this.value = Some(value);
        let ticket = s.next_ticket;
        s.next_ticket += 1;
        s.tx_waiters.push_back((ticket, cx.waker().clone()));
        this.ticket = Some(ticket);
        set_park_reason(park_reason::CHANNEL, probes::NONE);
        Poll::Pending
    }
}

impl<T> Unpin for SendFuture<'_, T> {}

impl<T> Drop for SendFuture<'_, T> {
    fn drop(&mut self) {
        let Some(t) = self.ticket else { return };
        // A sender that was woken for a free slot and is dropped before using it passes the
        // wake-up on, so the next waiting sender does not sleep with room in the buffer.
        let next = {
            let mut s = lock(&self.chan.state);
            let before = s.tx_waiters.len();
            s.tx_waiters.retain(|(ticket, _)| *ticket != t);
            let was_woken = s.tx_waiters.len() == before;
            if was_woken && s.buf.len() < s.capacity {
                s.tx_waiters.pop_front().map(|(_, w)| w)
            } else {
                None
            }
        };
        if let Some(w) = next {
            w.wake();
        }
    }
}

impl<T: Send> Receiver<T> {
    /// Receives the next message, waiting while the buffer is empty; None once every sender is
    /// dropped and the buffer is drained.
    pub fn recv(&mut self) -> RecvFuture<'_, T> {
        RecvFuture { chan: &self.chan }
    }

    /// Receives a message if one is buffered.
    pub fn try_recv(&mut self) -> Option<T> {
        let (value, waker) = {
            let mut s = lock(&self.chan.state);
            let v = s.buf.pop_front();
            let w = if v.is_some() { s.tx_waiters.pop_front().map(|(_, w)| w) } else { None };
            (v, w)
        };
        if let Some(w) = waker {
            w.wake();
        }
        value
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let (waiters, buffered) = {
            let mut s = lock(&self.chan.state);
            s.receiver_alive = false;
            (std::mem::take(&mut s.tx_waiters), std::mem::take(&mut s.buf))
        };
        drop(buffered);
        for (_, w) in waiters {
            w.wake();
        }
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Receiver { .. }")
    }
}

/// The future of [`Receiver::recv`].
#[must_use = "futures do nothing unless awaited"]
pub struct RecvFuture<'a, T> {
    chan: &'a Chan<T>,
}

impl<T> Future for RecvFuture<'_, T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut s = lock(&self.chan.state);
        if let Some(v) = s.buf.pop_front() {
            let waker = s.tx_waiters.pop_front().map(|(_, w)| w);
            drop(s);
            if let Some(w) = waker {
                w.wake();
            }
            return Poll::Ready(Some(v));
        }
        if s.senders == 0 {
            return Poll::Ready(None);
        }
        s.rx_waker = Some(cx.waker().clone());
        set_park_reason(park_reason::CHANNEL, probes::NONE);
        Poll::Pending
    }
}
