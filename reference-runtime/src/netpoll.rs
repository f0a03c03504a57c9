//! The netpoller: one epoll instance, fds registered edge-triggered once (like Go's), a poll
//! descriptor per fd with a read and a write slot, and an eventfd that breaks a blocking poll.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::lock;
use crate::probes::{self, GroundTruth, interest, park_reason};
use crate::{sched, task};

/// The epoll token of the eventfd.
const WAKE_TOKEN: u64 = 0;
/// Events returned by one `epoll_wait`.
const MAX_EVENTS: usize = 128;

/// Which side of an fd a task waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Interest {
    Read,
    Write,
}

impl Interest {
    fn slot(self) -> usize {
        match self {
            Interest::Read => 0,
            Interest::Write => 1,
        }
    }

    fn code(self) -> u64 {
        match self {
            Interest::Read => interest::READ,
            Interest::Write => interest::WRITE,
        }
    }
}

/// One side of a poll descriptor (Go's `pollDesc.rg`/`wg`).
#[derive(Default)]
enum Slot {
    /// Nothing known.
    #[default]
    Empty,
    /// An edge arrived while nobody waited: the next waiter retries its syscall at once.
    Ready,
    /// A task waits for the next edge.
    Waiting { waker: Waker, task: u64 },
}

pub(crate) struct PollDesc {
    fd: RawFd,
    token: u64,
    slots: Mutex<[Slot; 2]>,
}

pub(crate) struct Netpoller {
    epfd: OwnedFd,
    /// eventfd, registered level-triggered: writing it breaks a blocking `epoll_wait`.
    wake_fd: File,
    registry: Mutex<HashMap<u64, Arc<PollDesc>>>,
    next_token: AtomicU64,
    /// Tasks waiting in a slot.
    waiters: AtomicUsize,
    /// An M is blocked in (or about to enter) `epoll_wait` (Go: `sched.lastpoll == 0`).
    polling: AtomicBool,
    /// The deadline that blocked M will wake at, [`probes::NONE`] for none.
    poll_until: AtomicU64,
    wake_pending: AtomicBool,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

impl Netpoller {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; on success it returns a new fd that nothing
        // else owns, so OwnedFd may take it.
        let epfd = unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        // SAFETY: as above, for eventfd(2).
        let wake_fd =
            unsafe { OwnedFd::from_raw_fd(cvt(libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))?) };
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: WAKE_TOKEN };
        // SAFETY: both fds are open and `ev` is a valid epoll_event for the duration of the call.
        cvt(unsafe { libc::epoll_ctl(epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, wake_fd.as_raw_fd(), &mut ev) })?;
        Ok(Self {
            epfd,
            wake_fd: File::from(wake_fd),
            registry: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(WAKE_TOKEN + 1),
            waiters: AtomicUsize::new(0),
            polling: AtomicBool::new(false),
            poll_until: AtomicU64::new(probes::NONE),
            wake_pending: AtomicBool::new(false),
        })
    }

    /// Registers a non-blocking fd for both directions, edge-triggered.
    pub(crate) fn register(&self, fd: RawFd) -> io::Result<Arc<PollDesc>> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let pd = Arc::new(PollDesc { fd, token, slots: Mutex::new(Default::default()) });
        lock(&self.registry).insert(token, pd.clone());
        let flags = libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET;
        let mut ev = libc::epoll_event { events: flags as u32, u64: token };
        // SAFETY: the epoll fd is open, `fd` is the caller's open fd, `ev` is valid for the call.
        if let Err(e) =
            cvt(unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })
        {
            lock(&self.registry).remove(&token);
            return Err(e);
        }
        Ok(pd)
    }

    /// Removes an fd (before it is closed); waiters are dropped.
    pub(crate) fn deregister(&self, pd: &PollDesc) {
        // SAFETY: the epoll fd is open; a null event is allowed for EPOLL_CTL_DEL. An error
        // (the fd already gone) leaves nothing to undo.
        unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), libc::EPOLL_CTL_DEL, pd.fd, std::ptr::null_mut()) };
        lock(&self.registry).remove(&pd.token);
        let old: [Slot; 2] = std::mem::take(&mut *lock(&pd.slots));
        for s in &old {
            if matches!(s, Slot::Waiting { .. }) {
                self.waiters.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Drops every registration (at shutdown, after the tasks are gone).
    pub(crate) fn clear(&self) {
        let all: Vec<_> = lock(&self.registry).drain().map(|(_, pd)| pd).collect();
        for pd in all {
            let _old: [Slot; 2] = std::mem::take(&mut *lock(&pd.slots));
        }
        self.waiters.store(0, Ordering::Release);
    }

    /// Called by a leaf future after its syscall said EAGAIN: Ready when an edge arrived since
    /// (retry the syscall), else the current task waits in the slot and parks (reason netpoll).
    /// `netpoll_block` fires here, under the slot's lock, so it always precedes the matching
    /// `netpoll_ready`.
    pub(crate) fn poll_ready(
        &self,
        log: Option<&GroundTruth>,
        pd: &PollDesc,
        interest: Interest,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let mut slots = lock(&pd.slots);
        let slot = &mut slots[interest.slot()];
        match slot {
            Slot::Ready => {
                *slot = Slot::Empty;
                return Poll::Ready(());
            }
            Slot::Empty => {
                self.waiters.fetch_add(1, Ordering::AcqRel);
            }
            Slot::Waiting { .. } => {}
        }
        let task = sched::current_task_id();
        *slot = Slot::Waiting { waker: cx.waker().clone(), task };
        probes::netpoll_block(log, task, pd.fd as u64, interest.code());
        task::set_park_reason(park_reason::NETPOLL, pd.fd as u64);
        Poll::Pending
    }

    pub(crate) fn has_waiters(&self) -> bool {
        self.waiters.load(Ordering::Acquire) > 0
    }

    /// Becomes the blocking poller; false if another M is it.
    pub(crate) fn try_begin_poll(&self) -> bool {
        self.polling.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    pub(crate) fn end_poll(&self) {
        self.poll_until.store(probes::NONE, Ordering::Release);
        self.polling.store(false, Ordering::Release);
    }

    pub(crate) fn is_polling(&self) -> bool {
        self.polling.load(Ordering::Acquire)
    }

    pub(crate) fn set_poll_until(&self, deadline: u64) {
        self.poll_until.store(deadline, Ordering::Release);
    }

    pub(crate) fn poll_until(&self) -> u64 {
        self.poll_until.load(Ordering::Acquire)
    }

    /// Makes a blocking `epoll_wait` return (Go's `netpollBreak`); coalesced.
    pub(crate) fn wake_poller(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            let _ = (&self.wake_fd).write(&1u64.to_ne_bytes());
        }
    }

    /// `epoll_wait` with a timeout in milliseconds (-1: none, 0: just look). Returns the (token,
    /// events) of registered fds. Only the blocking poller consumes a pending break: the eventfd
    /// is level-triggered, so a non-blocking look by another M cannot steal it.
    pub(crate) fn wait(&self, timeout_ms: i32, blocking: bool) -> Vec<(u64, u32)> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
        // SAFETY: the epoll fd is open and `events` has room for MAX_EVENTS entries.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                events.as_mut_ptr(),
                MAX_EVENTS as libc::c_int,
                timeout_ms,
            )
        };
        // n < 0: EINTR (or a bug); the caller loops through the scheduler either way.
        let n = usize::try_from(n).unwrap_or(0);
        let mut out = Vec::new();
        for ev in &events[..n] {
            let (token, bits) = (ev.u64, ev.events);
            if token == WAKE_TOKEN {
                if blocking {
                    let _ = (&self.wake_fd).read(&mut [0u8; 8]);
                    self.wake_pending.store(false, Ordering::Release);
                }
                continue;
            }
            out.push((token, bits));
        }
        out
    }

    /// Readies the waiters an event concerns: for each, `netpoll_ready` fires and then `wake`
    /// (which queues the task and fires its `task_ready`). Returns how many it woke.
    pub(crate) fn dispatch(
        &self,
        log: Option<&GroundTruth>,
        token: u64,
        events: u32,
        mut wake: impl FnMut(Waker),
    ) -> usize {
        let Some(pd) = lock(&self.registry).get(&token).cloned() else { return 0 };
        let bits = |b: libc::c_int| events & (b as u32) != 0;
        let readable = bits(libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR);
        let writable = bits(libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR);
        let mut woken = 0;
        for (hit, side) in [(readable, Interest::Read), (writable, Interest::Write)] {
            if !hit {
                continue;
            }
            let waker = {
                let mut slots = lock(&pd.slots);
                let slot = &mut slots[side.slot()];
                match std::mem::replace(slot, Slot::Ready) {
                    Slot::Waiting { waker, task } => {
                        *slot = Slot::Empty;
                        self.waiters.fetch_sub(1, Ordering::AcqRel);
                        probes::netpoll_ready(log, task, pd.fd as u64, u64::from(events));
                        Some(waker)
                    }
                    _ => None,
                }
            };
            if let Some(w) = waker {
                woken += 1;
                wake(w);
            }
        }
        woken
    }
}
