//! The scheduler: Ps (logical processors, each with a local run queue), Ms (worker threads), the
//! global queue, and the scheduling loop, after Go's `schedule`/`findRunnable`, `wakep`,
//! `startm`/`stopm` and `handoffp`.
//!
//! The probes fire where nothing can overtake them: `task_spawn` and `task_ready` inside the
//! critical section of the queue the task was put on (no M can take it before the event is
//! stamped), `task_park` before the park is committed (no wake-up can be reported before it). So
//! for every task the log, sorted by timestamp, reads spawn → run → (park → ready → run)* → exit.
//! A wake-up that arrives while the task is still being polled is not a second, early ready: the
//! task's state records who woke it, and the M reports that ready itself right after the park.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Poll, Waker};
use std::thread;

use crate::lock;
use crate::netpoll::Netpoller;
use crate::probes::{self, GroundTruth, NONE, ready_source};
use crate::queue::{LOCAL_QUEUE_CAP, LocalQueue};
use crate::stats::{MStats, PStats, Stats};
use crate::task::{self, JoinHandle, Task};
use crate::timer::TimerHeap;

/// Every this many task runs a P looks at the global queue (and the netpoller) first (Go: 61).
const FAIRNESS_TICK: u64 = 61;
/// Rounds over all Ps a spinning M makes looking for something to steal (Go: 4).
const STEAL_ROUNDS: usize = 4;
/// Shards of the live-task registry.
const TASK_SHARDS: usize = 16;

/// A shard of the live-task registry.
type TaskShard = Mutex<HashMap<u64, Arc<Task>>>;

/// Counters of one runtime instance (Runtime) that outlive its sessions.
pub(crate) struct Ids {
    next_task: AtomicU64,
    next_m: AtomicU64,
}

impl Ids {
    pub(crate) fn new() -> Self {
        Self { next_task: AtomicU64::new(1), next_m: AtomicU64::new(0) }
    }
}

/// A logical processor.
struct P {
    runq: LocalQueue<Arc<Task>>,
    schedtick: AtomicU64,
    tasks_run: AtomicU64,
    steal_ops: AtomicU64,
    steals: AtomicU64,
    stolen: AtomicU64,
}

/// What a parked M is woken with.
enum Handoff {
    /// Run with this P (as a spinning M or not).
    P { p: usize, spinning: bool },
    /// The runtime is shutting down.
    Shutdown,
}

/// The shared part of an M.
pub(crate) struct MShared {
    id: u64,
    tid: AtomicU64,
    parks: AtomicU64,
    tasks_run: AtomicU64,
    wakeup: Mutex<Option<Handoff>>,
    cv: Condvar,
}

impl MShared {
    fn new(id: u64) -> Self {
        Self {
            id,
            tid: AtomicU64::new(0),
            parks: AtomicU64::new(0),
            tasks_run: AtomicU64::new(0),
            wakeup: Mutex::new(None),
            cv: Condvar::new(),
        }
    }

    fn deliver(&self, h: Handoff) {
        *lock(&self.wakeup) = Some(h);
        self.cv.notify_one();
    }

    fn wait(&self) -> Handoff {
        let mut w = lock(&self.wakeup);
        loop {
            if let Some(h) = w.take() {
                return h;
            }
            w = self.cv.wait(w).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// State under the scheduler lock (Go's `sched.lock`): the global queue and the idle lists, so
/// that "is there global work?" and "put my P on the idle list" are one atomic step.
struct Sched {
    global: VecDeque<Arc<Task>>,
    idle_ps: Vec<usize>,
    idle_ms: Vec<Arc<MShared>>,
    /// Ms back from a blocking section, waiting for a P (first come, first served).
    p_waiters: VecDeque<Arc<MShared>>,
    all_ms: Vec<Arc<MShared>>,
    threads: Vec<thread::JoinHandle<()>>,
    /// M threads started and not yet exited.
    mcount: usize,
    spawn_error: Option<std::io::Error>,
}

#[derive(Default)]
struct Counters {
    spawned: AtomicU64,
    netpoll_readies: AtomicU64,
    timer_fires: AtomicU64,
    handoffs: AtomicU64,
}

/// One session of a runtime: everything `block_on` starts and tears down.
pub(crate) struct Shared {
    pub(crate) log: Option<Arc<GroundTruth>>,
    ps: Box<[P]>,
    /// Strides coprime with the number of Ps, to visit steal victims in random orders.
    coprimes: Vec<usize>,
    sched: Mutex<Sched>,
    global_len: AtomicUsize,
    npidle: AtomicUsize,
    nmspinning: AtomicUsize,
    p_waiters: AtomicUsize,
    shutdown: AtomicBool,
    pub(crate) netpoll: Netpoller,
    timers: Mutex<TimerHeap<Waker>>,
    /// Earliest timer deadline, [`NONE`] for none: lets the loop skip the heap lock.
    next_timer: AtomicU64,
    /// Every live task, so that shutdown can drop the ones still parked.
    tasks: Box<[TaskShard]>,
    ids: Arc<Ids>,
    max_ms: usize,
    counters: Counters,
}

/// The per-thread state of an M, reachable from the code it runs (spawn, wake-ups, leaves).
pub(crate) struct Context {
    pub(crate) shared: Arc<Shared>,
    m: Arc<MShared>,
    p: Cell<Option<usize>>,
    task: Cell<u64>,
    spinning: Cell<bool>,
    rng: Cell<u64>,
}

impl Context {
    /// The P this M holds, if any.
    pub(crate) fn p(&self) -> Option<usize> {
        self.p.get()
    }

    pub(crate) fn m_id(&self) -> u64 {
        self.m.id
    }
}

thread_local! {
    static CONTEXT: RefCell<Option<Rc<Context>>> = const { RefCell::new(None) };
    /// Set around wake-ups done by the netpoller or a timer (a `ready_source`), 0 otherwise.
    static WAKE_SOURCE: Cell<u64> = const { Cell::new(0) };
}

/// The M context of the calling thread, if it is an M.
pub(crate) fn current() -> Option<Rc<Context>> {
    CONTEXT.try_with(|c| c.borrow().clone()).ok().flatten()
}

/// The task being polled on the calling thread, 0 if none.
pub(crate) fn current_task_id() -> u64 {
    current().map_or(0, |c| c.task.get())
}

fn wake_as(source: u64, waker: Waker) {
    let _ = WAKE_SOURCE.try_with(|s| s.set(source));
    waker.wake();
    let _ = WAKE_SOURCE.try_with(|s| s.set(0));
}

/// Spawns a task on the current runtime: onto the current P's local queue, or the global queue
/// when the calling M holds no P (inside [`crate::blocking`]).
///
/// # Panics
/// When called outside a task of a reference runtime.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match current() {
        Some(ctx) => ctx.shared.spawn(Some(&ctx), future),
        None => panic!("reference_runtime::spawn called outside a reference-runtime task"),
    }
}

/// A wake-up of `task` (its waker's `wake`).
pub(crate) fn wake(task: &Arc<Task>) {
    let shared = &task.shared;
    if shared.shutdown.load(Ordering::Acquire) {
        return;
    }
    let ctx = current().filter(|c| Arc::ptr_eq(&c.shared, shared));
    let (source, waker_task) = match WAKE_SOURCE.try_with(Cell::get).unwrap_or(0) {
        0 => match ctx.as_ref().map(|c| c.task.get()) {
            Some(t) if t != 0 => (ready_source::TASK, t),
            _ => (ready_source::OTHER, 0),
        },
        s => (s, 0),
    };
    if task.wake_state(waker_task, source) {
        let log = shared.log.as_deref();
        let id = task.id;
        shared.enqueue(ctx.as_deref(), task.clone(), |p| probes::task_ready(log, id, waker_task, source, p));
    }
}

fn xorshift(state: &Cell<u64>) -> u64 {
    let mut x = state.get();
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    state.set(x);
    x
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl Shared {
    pub(crate) fn new(
        procs: usize,
        max_ms: usize,
        log: Option<Arc<GroundTruth>>,
        ids: Arc<Ids>,
    ) -> std::io::Result<Arc<Self>> {
        let procs = procs.max(1);
        let ps = (0..procs)
            .map(|_| P {
                runq: LocalQueue::new(LOCAL_QUEUE_CAP),
                schedtick: AtomicU64::new(0),
                tasks_run: AtomicU64::new(0),
                steal_ops: AtomicU64::new(0),
                steals: AtomicU64::new(0),
                stolen: AtomicU64::new(0),
            })
            .collect();
        Ok(Arc::new(Self {
            log,
            ps,
            coprimes: (1..=procs).filter(|&i| gcd(i, procs) == 1).collect(),
            sched: Mutex::new(Sched {
                global: VecDeque::new(),
                // Popped from the end: P0 is handed out first.
                idle_ps: (0..procs).rev().collect(),
                idle_ms: Vec::new(),
                p_waiters: VecDeque::new(),
                all_ms: Vec::new(),
                threads: Vec::new(),
                mcount: 0,
                spawn_error: None,
            }),
            global_len: AtomicUsize::new(0),
            npidle: AtomicUsize::new(procs),
            nmspinning: AtomicUsize::new(0),
            p_waiters: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            netpoll: Netpoller::new()?,
            timers: Mutex::new(TimerHeap::new()),
            next_timer: AtomicU64::new(NONE),
            tasks: (0..TASK_SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            ids,
            max_ms: max_ms.max(procs),
            counters: Counters::default(),
        }))
    }

    fn nprocs(&self) -> usize {
        self.ps.len()
    }

    fn log(&self) -> Option<&GroundTruth> {
        self.log.as_deref()
    }

    // ---- tasks -------------------------------------------------------------------------------

    pub(crate) fn spawn<F>(self: &Arc<Self>, ctx: Option<&Context>, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let id = self.ids.next_task.fetch_add(1, Ordering::Relaxed);
        let (future, handle) = task::wrap(id, future);
        let task = Task::new(id, future, self.clone());
        lock(&self.tasks[id as usize % TASK_SHARDS]).insert(id, task.clone());
        self.counters.spawned.fetch_add(1, Ordering::Relaxed);
        let parent = ctx.map_or(0, |c| c.task.get());
        let log = self.log();
        self.enqueue(ctx, task, |p| probes::task_spawn(log, id, parent, p));
        handle
    }

    /// Queues a runnable task: on the local queue of the calling M's P, else (no P, or a thread
    /// outside this runtime) on the global queue; a full local queue moves half of itself and the
    /// task to the global queue. `queued` fires the probe, with the queue's P, inside the queue's
    /// critical section. Then wakes an M if there is an idle P and no spinning M.
    fn enqueue(self: &Arc<Self>, ctx: Option<&Context>, task: Arc<Task>, queued: impl FnOnce(u64)) {
        let local = ctx.filter(|c| Arc::ptr_eq(&c.shared, self)).and_then(|c| c.p.get());
        match local {
            Some(p) => {
                let mut queued = Some(queued);
                let mut fire = |q: u64| {
                    if let Some(f) = queued.take() {
                        f(q);
                    }
                };
                let overflow = self.ps[p].runq.push(task, || fire(p as u64)).err().map(|(batch, _)| batch);
                if let Some(batch) = overflow {
                    self.global_put(batch, || fire(NONE));
                }
            }
            None => self.global_put(vec![task], || queued(NONE)),
        }
        self.wakep();
    }

    fn global_put(&self, batch: Vec<Arc<Task>>, queued: impl FnOnce()) {
        let mut s = lock(&self.sched);
        s.global.extend(batch);
        self.global_len.store(s.global.len(), Ordering::Release);
        queued();
    }

    /// Takes from the global queue for P `p` (Go's `globrunqget`): a fair share, at most `max`
    /// (0: no limit) and half a local queue; the first is returned, the rest go to `p`'s queue.
    fn global_get(&self, s: &mut Sched, p: usize, max: usize) -> Option<Arc<Task>> {
        let len = s.global.len();
        if len == 0 {
            return None;
        }
        let mut n = (len / self.nprocs() + 1).min(len).min(LOCAL_QUEUE_CAP / 2);
        if max > 0 {
            n = n.min(max);
        }
        let mut batch: Vec<_> = s.global.drain(..n).collect();
        let rest = batch.split_off(1);
        for t in rest {
            // Already reported ready (on the global queue): no event when they move.
            if let Some(overflow) = self.push_quiet(p, t) {
                s.global.extend(overflow);
            }
        }
        self.global_len.store(s.global.len(), Ordering::Release);
        batch.pop()
    }

    /// Moves an already-queued task to P `p`'s queue (no event); returns what overflowed.
    fn push_quiet(&self, p: usize, t: Arc<Task>) -> Option<Vec<Arc<Task>>> {
        self.ps[p].runq.push(t, || ()).err().map(|(overflow, _)| overflow)
    }

    fn global_get_locked(&self, p: usize, max: usize) -> Option<Arc<Task>> {
        if self.global_len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut s = lock(&self.sched);
        self.global_get(&mut s, p, max)
    }

    fn unregister(&self, id: u64) {
        lock(&self.tasks[id as usize % TASK_SHARDS]).remove(&id);
    }

    // ---- Ps and Ms ---------------------------------------------------------------------------

    /// Puts a P on the idle list, or gives it straight to an M waiting for one after a blocking
    /// section. Called with the scheduler lock held.
    fn pidleput(&self, s: &mut Sched, p: usize) {
        if let Some(m) = s.p_waiters.pop_front() {
            self.p_waiters.fetch_sub(1, Ordering::AcqRel);
            m.deliver(Handoff::P { p, spinning: false });
            return;
        }
        s.idle_ps.push(p);
        self.npidle.fetch_add(1, Ordering::SeqCst);
    }

    fn pidleget(&self, s: &mut Sched) -> Option<usize> {
        let p = s.idle_ps.pop()?;
        self.npidle.fetch_sub(1, Ordering::SeqCst);
        Some(p)
    }

    /// Go's `wakep`: if there is an idle P and no M spinning, start a spinning M on it.
    fn wakep(self: &Arc<Self>) {
        fence(Ordering::SeqCst);
        if self.npidle.load(Ordering::SeqCst) == 0 || self.nmspinning.load(Ordering::SeqCst) != 0 {
            return;
        }
        if self.nmspinning.compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            return;
        }
        self.startm(None, true);
    }

    /// Go's `startm`: runs P `p` (or an idle P) on an idle M, or on a new one while under the
    /// limit. `spinning`: the caller counted the M in `nmspinning` already.
    fn startm(self: &Arc<Self>, p: Option<usize>, spinning: bool) {
        let unspin = |s: &Self| {
            if spinning {
                s.nmspinning.fetch_sub(1, Ordering::SeqCst);
            }
        };
        let mut s = lock(&self.sched);
        let Some(p) = p.or_else(|| self.pidleget(&mut s)) else {
            drop(s);
            unspin(self);
            return;
        };
        if self.shutdown.load(Ordering::Acquire) || (s.mcount >= self.max_ms && s.idle_ms.is_empty()) {
            self.pidleput(&mut s, p);
            drop(s);
            unspin(self);
            // At the thread limit the M blocked in epoll_wait, if any, takes the work.
            if self.netpoll.is_polling() {
                self.netpoll.wake_poller();
            }
            return;
        }
        if let Some(m) = s.idle_ms.pop() {
            m.deliver(Handoff::P { p, spinning });
            return;
        }
        s.mcount += 1;
        let m = Arc::new(MShared::new(self.ids.next_m.fetch_add(1, Ordering::Relaxed)));
        s.all_ms.push(m.clone());
        drop(s);
        let shared = self.clone();
        let id = m.id;
        let spawned =
            thread::Builder::new().name(format!("refrt-m{id}")).spawn(move || m_main(shared, m, p, spinning));
        let mut s = lock(&self.sched);
        match spawned {
            Ok(handle) => s.threads.push(handle),
            Err(e) => {
                s.mcount -= 1;
                s.all_ms.retain(|m| m.id != id);
                s.spawn_error.get_or_insert(e);
                self.pidleput(&mut s, p);
                drop(s);
                unspin(self);
            }
        }
    }

    /// Go's `stopm`: parks the M (which holds no P) until it is handed a P or shut down.
    fn stopm(&self, ctx: &Context) {
        {
            let mut s = lock(&self.sched);
            if self.shutdown.load(Ordering::Acquire) {
                return;
            }
            s.idle_ms.push(ctx.m.clone());
        }
        self.park_m(ctx);
    }

    fn park_m(&self, ctx: &Context) {
        let log = self.log();
        probes::m_park(log, ctx.m.id);
        ctx.m.parks.fetch_add(1, Ordering::Relaxed);
        let handoff = ctx.m.wait();
        probes::m_unpark(log, ctx.m.id);
        if let Handoff::P { p, spinning } = handoff {
            ctx.p.set(Some(p));
            ctx.spinning.set(spinning);
        }
    }

    /// Go's `handoffp`, for a P whose M enters a blocking section: give it to another M if there
    /// is work for it (or nobody else is looking for work, or nobody would poll), else idle it.
    fn handoffp(self: &Arc<Self>, p: usize) {
        // An M back from its own blocking section gets it first.
        if self.p_waiters.load(Ordering::Acquire) > 0 {
            let mut s = lock(&self.sched);
            if let Some(m) = s.p_waiters.pop_front() {
                self.p_waiters.fetch_sub(1, Ordering::AcqRel);
                m.deliver(Handoff::P { p, spinning: false });
                return;
            }
        }
        if self.ps[p].runq.len() > 0 || self.global_len.load(Ordering::Acquire) > 0 {
            self.startm(Some(p), false);
            return;
        }
        if self.nmspinning.load(Ordering::SeqCst) + self.npidle.load(Ordering::SeqCst) == 0
            && self.nmspinning.compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst).is_ok()
        {
            self.startm(Some(p), true);
            return;
        }
        let mut s = lock(&self.sched);
        if !s.global.is_empty() {
            drop(s);
            self.startm(Some(p), false);
            return;
        }
        // The last running P, and nobody in epoll: start an M that will poll and run timers.
        if self.npidle.load(Ordering::SeqCst) == self.nprocs() - 1
            && !self.netpoll.is_polling()
            && (self.netpoll.has_waiters() || self.next_timer.load(Ordering::Acquire) != NONE)
        {
            drop(s);
            self.startm(Some(p), false);
            return;
        }
        self.pidleput(&mut s, p);
    }

    /// Before a blocking section: releases the M's P (handoffp). Returns the P released.
    pub(crate) fn enter_blocking(self: &Arc<Self>, ctx: &Context) -> Option<usize> {
        let p = ctx.p.take()?;
        if ctx.spinning.replace(false) {
            self.nmspinning.fetch_sub(1, Ordering::SeqCst);
        }
        self.counters.handoffs.fetch_add(1, Ordering::Relaxed);
        self.handoffp(p);
        Some(p)
    }

    /// After a blocking section: takes the old P if it is idle, else any idle P, else waits until
    /// one is handed over (the task is runnable meanwhile, waiting for a P). Returns the P, or
    /// None at shutdown.
    pub(crate) fn exit_blocking(&self, ctx: &Context, old_p: usize) -> Option<usize> {
        let mut s = lock(&self.sched);
        let p = match s.idle_ps.iter().position(|&q| q == old_p) {
            Some(i) => {
                s.idle_ps.swap_remove(i);
                self.npidle.fetch_sub(1, Ordering::SeqCst);
                Some(old_p)
            }
            None => self.pidleget(&mut s),
        };
        let p = match p {
            Some(p) => Some(p),
            None if self.shutdown.load(Ordering::Acquire) => None,
            None => {
                s.p_waiters.push_back(ctx.m.clone());
                self.p_waiters.fetch_add(1, Ordering::AcqRel);
                drop(s);
                match ctx.m.wait() {
                    Handoff::P { p, .. } => Some(p),
                    Handoff::Shutdown => None,
                }
            }
        };
        ctx.p.set(p);
        p
    }

    /// An M back from a blocking section waits for a P: the M calling this (between two tasks)
    /// gives it its own, with its local queue, and parks. True if it did.
    fn give_p_to_waiter(&self, ctx: &Context) -> bool {
        let Some(p) = ctx.p.get() else { return false };
        {
            let mut s = lock(&self.sched);
            let Some(w) = s.p_waiters.pop_front() else { return false };
            self.p_waiters.fetch_sub(1, Ordering::AcqRel);
            ctx.p.set(None);
            w.deliver(Handoff::P { p, spinning: false });
        }
        if ctx.spinning.replace(false) {
            self.nmspinning.fetch_sub(1, Ordering::SeqCst);
        }
        true
    }

    // ---- timers and the netpoller ------------------------------------------------------------

    pub(crate) fn add_timer(self: &Arc<Self>, deadline: u64, waker: Waker) {
        let (earliest, polling, poll_until) = {
            let mut t = lock(&self.timers);
            let earliest = t.push(deadline, waker);
            self.next_timer.store(t.next_deadline().unwrap_or(NONE), Ordering::Release);
            (earliest, self.netpoll.is_polling(), self.netpoll.poll_until())
        };
        if earliest {
            // Go's wakeNetPoller: make sure some M notices the new deadline.
            if polling {
                if deadline < poll_until {
                    self.netpoll.wake_poller();
                }
            } else {
                self.wakep();
            }
        }
    }

    /// Fires the expired timers: their tasks become ready (source timer) on this M's P, or the
    /// global queue when it holds none.
    fn run_timers(self: &Arc<Self>) {
        let next = self.next_timer.load(Ordering::Acquire);
        if next == NONE || probes::now_ns() < next {
            return;
        }
        let expired = {
            let mut t = lock(&self.timers);
            let now = probes::now_ns();
            let mut expired = Vec::new();
            while let Some(w) = t.pop_expired(now) {
                expired.push(w);
            }
            self.next_timer.store(t.next_deadline().unwrap_or(NONE), Ordering::Release);
            expired
        };
        for w in expired {
            self.counters.timer_fires.fetch_add(1, Ordering::Relaxed);
            wake_as(ready_source::TIMER, w);
        }
    }

    fn dispatch_events(&self, events: &[(u64, u32)]) -> usize {
        let mut woken = 0;
        for &(token, bits) in events {
            woken += self.netpoll.dispatch(self.log(), token, bits, |w| {
                self.counters.netpoll_readies.fetch_add(1, Ordering::Relaxed);
                wake_as(ready_source::NETPOLLER, w);
            });
        }
        woken
    }

    /// A look into the netpoller without blocking, by an M holding a P; true if it readied tasks.
    fn poll_network(&self) -> bool {
        if !self.netpoll.has_waiters() || self.netpoll.is_polling() {
            return false;
        }
        let events = self.netpoll.wait(0, false);
        !events.is_empty() && self.dispatch_events(&events) > 0
    }

    /// The M without work blocks in `epoll_wait` until an fd is ready, the next timer is due, or
    /// the poller is woken. Afterwards it takes an idle P if there is one (the tasks it readies
    /// go to that P, else to the global queue). True if it holds a P.
    fn block_in_netpoll(self: &Arc<Self>, ctx: &Context) -> bool {
        let timeout_ms = {
            let t = lock(&self.timers);
            let next = t.next_deadline();
            self.netpoll.set_poll_until(next.unwrap_or(NONE));
            match next {
                None => -1,
                Some(d) => {
                    let wait = d.saturating_sub(probes::now_ns());
                    i32::try_from(wait.div_ceil(1_000_000)).unwrap_or(i32::MAX)
                }
            }
        };
        let events = if self.shutdown.load(Ordering::Acquire) {
            Vec::new()
        } else {
            let log = self.log();
            probes::m_park(log, ctx.m.id);
            ctx.m.parks.fetch_add(1, Ordering::Relaxed);
            let events = self.netpoll.wait(timeout_ms, true);
            probes::m_unpark(log, ctx.m.id);
            events
        };
        self.netpoll.end_poll();
        let p = {
            let mut s = lock(&self.sched);
            if self.shutdown.load(Ordering::Acquire) { None } else { self.pidleget(&mut s) }
        };
        ctx.p.set(p);
        self.dispatch_events(&events);
        self.run_timers();
        p.is_some()
    }

    // ---- the scheduling loop -----------------------------------------------------------------

    /// Go's `findRunnable`: returns the next task for the M (which then holds a P), or None at
    /// shutdown. Parks the M when there is nothing to do.
    fn find_runnable(self: &Arc<Self>, ctx: &Context) -> Option<Arc<Task>> {
        'top: loop {
            if self.shutdown.load(Ordering::Acquire) {
                return None;
            }
            if self.p_waiters.load(Ordering::Acquire) > 0 && self.give_p_to_waiter(ctx) {
                self.stopm(ctx);
                continue 'top;
            }
            let Some(p) = ctx.p.get() else {
                self.stopm(ctx);
                continue 'top;
            };
            self.run_timers();
            if self.ps[p].schedtick.load(Ordering::Relaxed).is_multiple_of(FAIRNESS_TICK) {
                if let Some(t) = self.global_get_locked(p, 1) {
                    return Some(t);
                }
                // No sysmon here: the fairness tick also keeps the netpoller from starving
                // behind Ps that always have local work.
                self.poll_network();
            }
            if let Some(t) = self.ps[p].runq.pop() {
                return Some(t);
            }
            if let Some(t) = self.global_get_locked(p, 0) {
                return Some(t);
            }
            if self.poll_network() {
                continue 'top;
            }

            // Steal, as a spinning M, if fewer than half the busy Ps have one spinning already.
            let busy = self.nprocs() - self.npidle.load(Ordering::SeqCst);
            if ctx.spinning.get() || 2 * self.nmspinning.load(Ordering::SeqCst) < busy {
                if !ctx.spinning.get() {
                    ctx.spinning.set(true);
                    self.nmspinning.fetch_add(1, Ordering::SeqCst);
                }
                if let Some(t) = self.steal_work(ctx, p) {
                    return Some(t);
                }
            }

            // Nothing: release the P, unless global work arrived (checked under the same lock
            // that idles the P, so a task put there meanwhile cannot be missed).
            {
                let mut s = lock(&self.sched);
                if let Some(t) = self.global_get(&mut s, p, 0) {
                    return Some(t);
                }
                ctx.p.set(None);
                self.pidleput(&mut s, p);
            }

            // The last spinning M rechecks everything after it stopped counting as spinning:
            // a spawner that saw it spinning did not wake anyone (Go's "delicate dance").
            if ctx.spinning.replace(false) {
                self.nmspinning.fetch_sub(1, Ordering::SeqCst);
                fence(Ordering::SeqCst);
                let work =
                    self.global_len.load(Ordering::SeqCst) > 0 || self.ps.iter().any(|q| q.runq.len() > 0);
                if work {
                    let mut s = lock(&self.sched);
                    if let Some(p) = self.pidleget(&mut s) {
                        drop(s);
                        ctx.p.set(Some(p));
                        ctx.spinning.set(true);
                        self.nmspinning.fetch_add(1, Ordering::SeqCst);
                        continue 'top;
                    }
                }
            }

            // Block in the netpoller if something may come from there, else park. A poller that
            // finds no idle P afterwards left what it readied on the global queue, and parks.
            if (self.netpoll.has_waiters() || self.next_timer.load(Ordering::Acquire) != NONE)
                && self.netpoll.try_begin_poll()
                && self.block_in_netpoll(ctx)
            {
                continue 'top;
            }
            self.stopm(ctx);
        }
    }

    /// Rounds over the other Ps in random order, stealing half of the first non-empty queue.
    fn steal_work(self: &Arc<Self>, ctx: &Context, p: usize) -> Option<Arc<Task>> {
        let n = self.nprocs();
        for _ in 0..STEAL_ROUNDS {
            let r = xorshift(&ctx.rng) as usize;
            let stride = self.coprimes[r % self.coprimes.len()];
            let mut victim = (r >> 16) % n;
            for _ in 0..n {
                if victim != p
                    && let Some(t) = self.steal_from(ctx, p, victim)
                {
                    return Some(t);
                }
                victim = (victim + stride) % n;
            }
            if self.shutdown.load(Ordering::Acquire) {
                return None;
            }
            self.run_timers();
            if let Some(t) = self.ps[p].runq.pop() {
                return Some(t);
            }
            if let Some(t) = self.global_get_locked(p, 0) {
                return Some(t);
            }
            std::hint::spin_loop();
        }
        None
    }

    fn steal_from(&self, ctx: &Context, p: usize, victim: usize) -> Option<Arc<Task>> {
        let mut batch = self.ps[victim].runq.steal_half().into_iter();
        let first = batch.next()?;
        let count = 1 + batch.len() as u64;
        for t in batch {
            if let Some(overflow) = self.push_quiet(p, t) {
                self.global_put(overflow, || ());
            }
        }
        let (thief, victim_p) = (&self.ps[p], &self.ps[victim]);
        thief.steal_ops.fetch_add(1, Ordering::Relaxed);
        thief.steals.fetch_add(count, Ordering::Relaxed);
        victim_p.stolen.fetch_add(count, Ordering::Relaxed);
        probes::steal(self.log(), p as u64, victim as u64, count, ctx.m.id);
        Some(first)
    }

    /// Go's `resetspinning`: a spinning M found work; if it was the last spinner, wake another
    /// in case there is more.
    fn reset_spinning(self: &Arc<Self>, ctx: &Context) {
        ctx.spinning.set(false);
        self.nmspinning.fetch_sub(1, Ordering::SeqCst);
        self.wakep();
    }

    /// Runs one task: one poll, then exit or park (re-queueing it if it was woken meanwhile).
    fn execute(self: &Arc<Self>, ctx: &Context, task: Arc<Task>) {
        let log = self.log();
        let Some(p) = ctx.p.get() else { return };
        let pp = &self.ps[p];
        pp.schedtick.fetch_add(1, Ordering::Relaxed);
        pp.tasks_run.fetch_add(1, Ordering::Relaxed);
        ctx.m.tasks_run.fetch_add(1, Ordering::Relaxed);
        task.start_running();
        probes::task_run(log, task.id, ctx.m.id, p as u64, pp.runq.len() as u64);
        ctx.task.set(task.id);
        let _ = task::take_park_reason();
        let result = task.poll();
        // A blocking section inside the poll may have changed the P.
        let p_after = ctx.p.get().map_or(NONE, |p| p as u64);
        match result {
            Poll::Ready(()) => {
                task.set_done();
                probes::task_exit(log, task.id, ctx.m.id, p_after);
                // Dropped as the task: wake-ups its destructors do count as its.
                drop(task.take_future());
                ctx.task.set(0);
                self.unregister(task.id);
            }
            Poll::Pending => {
                ctx.task.set(0);
                let (reason, fd) = task::take_park_reason();
                probes::task_park(log, task.id, reason, fd);
                if let Some(n) = task.commit_park() {
                    let id = task.id;
                    self.enqueue(Some(ctx), task, |q| probes::task_ready(log, id, n.waker_task, n.source, q));
                }
            }
        }
    }

    // ---- sessions ----------------------------------------------------------------------------

    /// Queues the root task from outside and starts the first M. Fails if no M could start.
    pub(crate) fn start<F>(self: &Arc<Self>, future: F) -> Result<JoinHandle<F::Output>, std::io::Error>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handle = self.spawn(None, future);
        let mut s = lock(&self.sched);
        if s.mcount == 0
            && let Some(e) = s.spawn_error.take()
        {
            return Err(e);
        }
        Ok(handle)
    }

    /// Stops and joins every M, then drops every task left (their futures, queues, timers and
    /// registrations), breaking the reference cycles between tasks and the session.
    pub(crate) fn shutdown(&self) -> Vec<String> {
        self.shutdown.store(true, Ordering::SeqCst);
        let mut panics = Vec::new();
        loop {
            let threads = {
                let mut s = lock(&self.sched);
                for m in s.idle_ms.drain(..) {
                    m.deliver(Handoff::Shutdown);
                }
                for m in s.p_waiters.drain(..) {
                    m.deliver(Handoff::Shutdown);
                }
                self.p_waiters.store(0, Ordering::Release);
                if s.threads.is_empty() && s.mcount == 0 {
                    break;
                }
                std::mem::take(&mut s.threads)
            };
            self.netpoll.wake_poller();
            if threads.is_empty() {
                // An M is being started; its handle is about to be stored.
                thread::yield_now();
            }
            for t in threads {
                if let Err(payload) = t.join() {
                    panics.push(task::panic_message(&*payload));
                }
            }
        }
        let tasks: Vec<Arc<Task>> = self
            .tasks
            .iter()
            .flat_map(|shard| lock(shard).drain().map(|(_, t)| t).collect::<Vec<_>>())
            .collect();
        for t in &tasks {
            drop(t.take_future());
        }
        drop(tasks);
        drop(lock(&self.sched).global.drain(..).collect::<Vec<_>>());
        for p in self.ps.iter() {
            drop(p.runq.drain());
        }
        drop(lock(&self.timers).clear());
        self.netpoll.clear();
        panics
    }

    pub(crate) fn stats(&self) -> Stats {
        let s = lock(&self.sched);
        Stats {
            procs: self
                .ps
                .iter()
                .enumerate()
                .map(|(id, p)| PStats {
                    id,
                    tasks_run: p.tasks_run.load(Ordering::Relaxed),
                    steal_ops: p.steal_ops.load(Ordering::Relaxed),
                    steals: p.steals.load(Ordering::Relaxed),
                    stolen: p.stolen.load(Ordering::Relaxed),
                    max_local_len: p.runq.max_len() as u64,
                })
                .collect(),
            ms: s
                .all_ms
                .iter()
                .map(|m| MStats {
                    id: m.id,
                    tid: m.tid.load(Ordering::Relaxed),
                    parks: m.parks.load(Ordering::Relaxed),
                    tasks_run: m.tasks_run.load(Ordering::Relaxed),
                })
                .collect(),
            spawned: self.counters.spawned.load(Ordering::Relaxed),
            netpoll_readies: self.counters.netpoll_readies.load(Ordering::Relaxed),
            timer_fires: self.counters.timer_fires.load(Ordering::Relaxed),
            handoffs: self.counters.handoffs.load(Ordering::Relaxed),
        }
    }
}

/// The body of an M thread.
fn m_main(shared: Arc<Shared>, m: Arc<MShared>, p: usize, spinning: bool) {
    m.tid.store(probes::gettid(), Ordering::Relaxed);
    if let Some(log) = &shared.log {
        probes::attach_thread(log);
    }
    let ctx = Rc::new(Context {
        shared: shared.clone(),
        m: m.clone(),
        p: Cell::new(Some(p)),
        task: Cell::new(0),
        spinning: Cell::new(spinning),
        rng: Cell::new(
            0x9E37_79B9_7F4A_7C15 ^ (m.id + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9) ^ probes::now_ns(),
        ),
    });
    let _ = CONTEXT.try_with(|c| *c.borrow_mut() = Some(ctx.clone()));
    while let Some(task) = shared.find_runnable(&ctx) {
        if ctx.spinning.get() {
            shared.reset_spinning(&ctx);
        }
        shared.execute(&ctx, task);
        probes::flush_if_large();
    }
    if ctx.spinning.replace(false) {
        shared.nmspinning.fetch_sub(1, Ordering::SeqCst);
    }
    let _ = CONTEXT.try_with(|c| c.borrow_mut().take());
    drop(ctx);
    probes::detach_thread();
    lock(&shared.sched).mcount -= 1;
}
