//! Tasks (G): their futures, run state, wakers and join handles.
//!
//! Tasks are stackless: a task is a boxed Rust future that an M polls. That is a deliberate
//! choice for this runtime. Stackful goroutines would need hand-written stack switching (unsafe
//! assembly, guard pages, stack growth) that has nothing to do with what sched-trace observes.
//! What it observes is the scheduling model, G on M on P, and that is the same either way: a task
//! runs on whatever M polls it, parks when its poll returns Pending, and is readied by whoever
//! wakes it. Stackless tasks also make the ground truth exact: the leaf future that returns
//! Pending (a socket, a timer, a channel) knows precisely why the task parks and says so.

use std::any::Any;
use std::cell::Cell;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;

use crate::lock;
use crate::probes::{self, park_reason};
use crate::sched::{self, Shared};

pub(crate) type TaskFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

// The run state of a task, one atomic word: the state in the low bits and, in NOTIFIED, who woke
// the task while it was running (source and waker task), so that the M can report that wake-up
// when it re-queues the task.
const STATE_MASK: u64 = 0b111;
/// Parked: not queued, not running; a wake-up queues it.
const IDLE: u64 = 0;
/// In a run queue (or being taken from one).
const SCHEDULED: u64 = 1;
/// Being polled by an M.
const RUNNING: u64 = 2;
/// Being polled, and woken meanwhile: re-queued when the poll returns Pending.
const NOTIFIED: u64 = 3;
/// Completed.
const DONE: u64 = 4;
const SOURCE_SHIFT: u32 = 3;
const WAKER_SHIFT: u32 = 6;

/// Who woke a task that was running at the time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Notified {
    pub(crate) waker_task: u64,
    pub(crate) source: u64,
}

pub(crate) struct Task {
    pub(crate) id: u64,
    state: AtomicU64,
    future: Mutex<Option<TaskFuture>>,
    pub(crate) shared: Arc<Shared>,
}

impl Task {
    /// A new task, already SCHEDULED: the spawner queues it.
    pub(crate) fn new(id: u64, future: TaskFuture, shared: Arc<Shared>) -> Arc<Self> {
        Arc::new(Self { id, state: AtomicU64::new(SCHEDULED), future: Mutex::new(Some(future)), shared })
    }

    /// A wake-up. IDLE → SCHEDULED returns true: the caller queues the task and reports it ready.
    /// RUNNING → NOTIFIED records who woke it. Anything else (already queued, already notified,
    /// done) is a no-op, like Go's `ready` of a runnable G.
    pub(crate) fn wake_state(&self, waker_task: u64, source: u64) -> bool {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            let next = match s & STATE_MASK {
                IDLE => SCHEDULED,
                RUNNING => NOTIFIED | (source << SOURCE_SHIFT) | (waker_task << WAKER_SHIFT),
                _ => return false,
            };
            match self.state.compare_exchange_weak(s, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return next == SCHEDULED,
                Err(actual) => s = actual,
            }
        }
    }

    /// SCHEDULED → RUNNING, by the M that took the task from a queue.
    pub(crate) fn start_running(&self) {
        self.state.store(RUNNING, Ordering::Release);
    }

    /// After a poll returned Pending (and `task_park` fired): RUNNING → IDLE, or, when the task
    /// was woken during the poll, NOTIFIED → SCHEDULED and who woke it (the M re-queues it).
    pub(crate) fn commit_park(&self) -> Option<Notified> {
        match self.state.compare_exchange(RUNNING, IDLE, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => None,
            Err(s) => {
                debug_assert_eq!(s & STATE_MASK, NOTIFIED);
                self.state.store(SCHEDULED, Ordering::Release);
                Some(Notified { waker_task: s >> WAKER_SHIFT, source: (s >> SOURCE_SHIFT) & STATE_MASK })
            }
        }
    }

    pub(crate) fn set_done(&self) {
        self.state.store(DONE, Ordering::Release);
    }

    /// Polls the task's future once with a waker that wakes this task.
    pub(crate) fn poll(self: &Arc<Self>) -> Poll<()> {
        let waker = Waker::from(self.clone());
        let mut cx = Context::from_waker(&waker);
        let mut slot = lock(&self.future);
        match slot.as_mut() {
            Some(f) => f.as_mut().poll(&mut cx),
            None => Poll::Ready(()),
        }
    }

    /// Takes the future out (to drop it outside the lock).
    pub(crate) fn take_future(&self) -> Option<TaskFuture> {
        lock(&self.future).take()
    }
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        sched::wake(&self);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        sched::wake(self);
    }
}

thread_local! {
    /// Why the task being polled on this thread parks; set by the leaf future that returns Pending.
    static PARK: Cell<(u64, u64)> = const { Cell::new((park_reason::OTHER, probes::NONE)) };
}

/// Records why the current task is about to park (`fd` for netpoll, else [`probes::NONE`]).
pub(crate) fn set_park_reason(reason: u64, fd: u64) {
    let _ = PARK.try_with(|p| p.set((reason, fd)));
}

/// The reason recorded during the last poll, resetting it to "other".
pub(crate) fn take_park_reason() -> (u64, u64) {
    PARK.try_with(|p| p.replace((park_reason::OTHER, probes::NONE)))
        .unwrap_or((park_reason::OTHER, probes::NONE))
}

/// Where a task's output (or its panic) waits for the join handle.
pub(crate) struct JoinState<T> {
    inner: Mutex<JoinInner<T>>,
}

struct JoinInner<T> {
    result: Option<thread::Result<T>>,
    finished: bool,
    waker: Option<Waker>,
}

impl<T> JoinState<T> {
    fn complete(&self, result: thread::Result<T>) {
        let waker = {
            let mut inner = lock(&self.inner);
            inner.result = Some(result);
            inner.finished = true;
            inner.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The outer future of every task: runs the user's future, catches its panic, and hands the
/// result to the join handle.
struct Wrapped<F: Future> {
    future: Pin<Box<F>>,
    join: Arc<JoinState<F::Output>>,
}

impl<F: Future> Future for Wrapped<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        match panic::catch_unwind(AssertUnwindSafe(|| this.future.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => {
                this.join.complete(Ok(v));
                Poll::Ready(())
            }
            Err(payload) => {
                this.join.complete(Err(payload));
                Poll::Ready(())
            }
        }
    }
}

/// Boxes a user future as a task future and returns its join handle.
pub(crate) fn wrap<F>(id: u64, future: F) -> (TaskFuture, JoinHandle<F::Output>)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let join =
        Arc::new(JoinState { inner: Mutex::new(JoinInner { result: None, finished: false, waker: None }) });
    let wrapped = Wrapped { future: Box::pin(future), join: join.clone() };
    (Box::pin(wrapped), JoinHandle { id, state: join })
}

/// Awaits a task's output. Awaiting it parks the awaiting task (reason "other") until the task
/// completes; if the task panicked, the panic resumes in the awaiting task. Dropping the handle
/// detaches the task.
#[must_use = "dropping a JoinHandle detaches the task"]
pub struct JoinHandle<T> {
    id: u64,
    state: Arc<JoinState<T>>,
}

impl<T> JoinHandle<T> {
    /// The task's id (as in the probes).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the task has completed.
    pub fn is_finished(&self) -> bool {
        lock(&self.state.inner).finished
    }

    pub(crate) fn poll_result(&mut self, cx: &mut Context<'_>) -> Poll<thread::Result<T>> {
        let mut inner = lock(&self.state.inner);
        if let Some(r) = inner.result.take() {
            return Poll::Ready(r);
        }
        assert!(!inner.finished, "JoinHandle polled after it returned the task's output");
        inner.waker = Some(cx.waker().clone());
        set_park_reason(park_reason::OTHER, probes::NONE);
        Poll::Pending
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.poll_result(cx) {
            Poll::Ready(Ok(v)) => Poll::Ready(v),
            Poll::Ready(Err(payload)) => panic::resume_unwind(payload),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> std::fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinHandle").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Gives the P to the other runnable tasks: the task parks (reason yield) and is immediately
/// readied again by itself, at the tail of the current P's local queue.
pub fn yield_now() -> YieldNow {
    YieldNow { yielded: false }
}

/// The future of [`yield_now`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        set_park_reason(park_reason::YIELD, probes::NONE);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Runs a future to completion on the calling thread, parking the thread while it is pending
/// (used by `block_on` to wait for the root task from outside the runtime).
pub(crate) fn park_on<T>(mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>) -> T {
    struct Unparker(thread::Thread);
    impl Wake for Unparker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unparker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = poll(&mut cx) {
            return v;
        }
        thread::park();
    }
}

/// The message of a panic payload, for reports.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}
