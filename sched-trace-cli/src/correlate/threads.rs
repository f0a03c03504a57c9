//! Per kernel thread: a state machine rebuilt from the scheduler probes, folded into totals.
//!
//! States: running on a CPU; runnable (woken, or preempted: kept apart) waiting in a CFS run
//! queue; sleeping; blocked in an epoll wait; blocked otherwise (uninterruptible, stopped, ...).
//! A thread's time before its first event is unknown and not counted; at the end of the trace
//! each thread's last state is closed at the trace's end.
//!
//! Some switches never reach the trace: the kernel skips tracepoints in the context of tasks
//! hidden from tracing (seen on sandboxed machines: the switch *out of* such a task is never
//! reported), and a full ring buffer drops records. So a thread can be seen running (switching
//! out, firing a probe as the current task, or interrupted by a CPU sample) while its last
//! known state is off-CPU. Its switch-in happened between the latest moment it is known not to
//! have happened yet (its own off-CPU transition or the last switch seen on that CPU, whichever
//! is later) and the event that shows it running. That window is not guessed into either side: it is counted as
//! unaccounted time, so on-CPU and off-CPU totals stay lower bounds and the gap is visible.
//! Such missed switch-ins are counted, and give no run-queue latency sample. The other way round
//! happens too: a thread switched in while the trace has it running still (its switch-out was
//! not reported). Its run before that is left unattributed and counted as a missed switch-out.

use rustc_hash::FxHashMap;

use serde::Serialize;

use super::samples::{Metric, NO_STACKS, Sample, SampleCounts, SampleWaker, Window};
use crate::trace::{Event, EventKind, event::Switch, validate::PID_MAX_LIMIT};

/// `TASK_*` state bits (include/linux/sched.h); stable across kernels since 4.14.
pub mod task_state {
    pub const RUNNING: u32 = 0x0000;
    pub const INTERRUPTIBLE: u32 = 0x0001;
    pub const UNINTERRUPTIBLE: u32 = 0x0002;
    pub const EXIT_DEAD: u32 = 0x0010;
    pub const EXIT_ZOMBIE: u32 = 0x0020;
    pub const DEAD: u32 = 0x0080;
    pub const NOLOAD: u32 = 0x0400;
}

/// The waker recorded for wake-ups that ran in interrupt context.
pub const IRQ_WAKER: u32 = u32::MAX;

/// Why a thread is off CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OffCpu {
    /// Runnable, waiting for a CPU after a wake-up.
    Woken,
    /// Runnable, waiting for a CPU after being preempted (or yielding).
    Preempted,
    /// Runnable, but switched out because its cgroup ran out of CPU quota: waiting for the
    /// quota's next period, then for a CPU.
    Throttled,
    /// Interruptible sleep (not in epoll).
    Sleeping,
    /// Blocked in epoll_wait / epoll_pwait / epoll_pwait2.
    Epoll,
    /// Uninterruptible sleep, stopped, traced, or another state.
    Blocked,
}

/// One stretch of a thread's timeline (kept only when the tracker records timelines, for
/// exports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadSpan {
    pub start: u64,
    pub end: u64,
    pub state: SpanState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanState {
    /// On `cpu`; `vruntime` and `weight` as of its switch-out (0: not known).
    Running { cpu: u16, vruntime: u64, weight: u32 },
    /// Off CPU; for a wait after a wake-up, who woke it ([`IRQ_WAKER`] for an interrupt).
    Off { why: OffCpu, waker: Option<u32> },
    /// Around a switch-in the trace does not have: the state cannot be told.
    Unattributed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadState {
    Unknown,
    Running { since: u64, cpu: u16 },
    Off { since: u64, why: OffCpu },
    Dead,
}

/// Totals for one thread.
#[derive(Clone, Debug, Default)]
pub struct ThreadStats {
    pub tid: u32,
    pub pid: u32,
    pub on_cpu_ns: u64,
    /// Waiting in a run queue (woken or preempted).
    pub runqueue_ns: u64,
    /// Runnable but throttled: switched out when its cgroup ran out of CPU quota, until it ran
    /// again (not in `runqueue_ns`).
    pub throttled_ns: u64,
    /// Those waits, in order.
    pub throttled_waits_ns: Vec<u64>,
    pub sleeping_ns: u64,
    pub epoll_ns: u64,
    pub blocked_ns: u64,
    /// Run-queue latencies (runnable → running), in order.
    pub latencies_ns: Vec<u64>,
    /// How many of those started with a wake-up (the rest with a preemption), and their total.
    pub latencies_from_wakeup: u64,
    pub latencies_from_wakeup_ns: u64,
    /// Interruptible sleeps (outside epoll) that a wake-up ended: switch-out → wake-up, in order.
    pub sleeps_ns: Vec<u64>,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    /// Moves to another CPU: traced ones, and those the trace shows only by the thread turning
    /// up on another CPU (the migration's own record was not reported)...
    pub migrations: u64,
    /// ...of which inferred that way.
    pub inferred_migrations: u64,
    /// Switch-ins from a sleep with no wake-up in the trace (it was not reported): their sleep
    /// is in the sleep total, but not among `sleeps_ns`, and no run-queue latency is known.
    pub missed_wakeups: u64,
    /// Waker thread → number of wake-ups.
    pub wakers: FxHashMap<u32, u64>,
    /// Thread that took the CPU → number of preemptions of this thread.
    pub preempted_by: FxHashMap<u32, u64>,
    pub exited: bool,
    /// Switch-ins the trace did not contain (see the module docs)...
    pub missed_switch_ins: u64,
    /// Switch-ins while the trace had the thread running already: its switch-out is missing
    /// (lost, or a file that contradicts itself). The run before is not attributed...
    pub missed_switch_outs: u64,
    /// ...and the time around them that cannot be attributed to a state.
    pub unaccounted_ns: u64,
    pub first_ts: u64,
    pub last_ts: u64,
    /// `se.load.weight` at its last switch (0: not known), as the kernel keeps it: 1048576
    /// (1024, scaled by 2^10 on 64-bit kernels) is nice 0.
    pub weight: u32,
    /// Its timeline, when the tracker recorded one ([`ThreadTracker::with_timelines`]).
    pub timeline: Vec<ThreadSpan>,
    /// Its samples of each metric (see [`super::samples`]).
    pub samples: SampleCounts,
    /// The CPUs it ran on (inside the window), in the order it first did.
    pub ran_on: Vec<u16>,
}

impl ThreadStats {
    pub fn off_cpu_ns(&self) -> u64 {
        self.runqueue_ns + self.throttled_ns + self.sleeping_ns + self.epoll_ns + self.blocked_ns
    }

    /// Adds `[start, end)` off CPU for `why`, the part of it inside `w`.
    fn add_off(&mut self, w: Window, why: OffCpu, start: u64, end: u64) {
        let ns = w.clip(start, end);
        match why {
            OffCpu::Woken | OffCpu::Preempted => self.runqueue_ns += ns,
            OffCpu::Throttled => self.throttled_ns += ns,
            OffCpu::Sleeping => self.sleeping_ns += ns,
            OffCpu::Epoll => self.epoll_ns += ns,
            OffCpu::Blocked => self.blocked_ns += ns,
        }
    }
}

struct Thread {
    stats: ThreadStats,
    state: ThreadState,
    in_epoll: bool,
    /// Waker named by the last `sched_waking` for this thread, consumed by `sched_wakeup`...
    pending_waker: Option<u32>,
    /// ...with its process and stacks (when the trace has wake-up stacks).
    pending_waker_stacks: Option<SampleWaker>,
    /// Its stacks at its last switch-out, and the waker of the wait since then: what the
    /// samples of this off-CPU stretch carry.
    out_stacks: (i32, i32),
    woken_with: Option<SampleWaker>,
    /// `se.vruntime` at its last switch or wake-up (0: not known)...
    vruntime: u64,
    /// ...in this CFS run queue (0: not known, or a kernel without group scheduling).
    cfs_rq: u64,
    /// The CPU whose run queue it waits in, while runnable.
    queued_on: Option<u16>,
    /// Whether to keep its timeline.
    record: bool,
    /// Who woke it, while it waits for a CPU after that wake-up.
    woken_by: Option<u32>,
    /// The CPU it last ran on or was queued on, as far as the trace tells.
    last_cpu: Option<u16>,
    /// When it last switched out (while off CPU since then), for its off-CPU samples.
    switched_out_at: Option<u64>,
    /// The time the statistics are about.
    window: Window,
}

impl Thread {
    /// Moves to `new` at `ts`, closing the span of the state it leaves.
    fn set_state(&mut self, ts: u64, new: ThreadState) {
        if self.record {
            let left = match self.state {
                ThreadState::Running { since, cpu } => Some((
                    since,
                    SpanState::Running { cpu, vruntime: self.vruntime, weight: self.stats.weight },
                )),
                ThreadState::Off { since, why } => {
                    let waker = if why == OffCpu::Woken { self.woken_by } else { None };
                    Some((since, SpanState::Off { why, waker }))
                }
                ThreadState::Unknown | ThreadState::Dead => None,
            };
            if let Some((start, state)) = left {
                self.span(start, ts, state);
            }
        }
        self.state = new;
    }

    fn span(&mut self, start: u64, end: u64, state: SpanState) {
        if self.record && end > start {
            self.stats.timeline.push(ThreadSpan { start, end, state });
        }
    }

    /// The thread is on, or queued on, `cpu` now: a different CPU than the trace last had it on
    /// means a migration the trace did not report.
    fn on_cpu(&mut self, cpu: u16, ts: u64) {
        if self.last_cpu.is_some_and(|last| last != cpu) && self.window.contains(ts) {
            self.stats.migrations += 1;
            self.stats.inferred_migrations += 1;
        }
        self.last_cpu = Some(cpu);
    }

    /// A completed wait of this thread: counted (inside the window) and returned for the
    /// tracker's sample list.
    fn sample(&mut self, metric: Metric, end: u64, ns: u64, cpu: u16) -> Option<Sample> {
        if !self.window.contains(end) {
            return None;
        }
        self.stats.samples.add(metric);
        Some(Sample {
            metric,
            end,
            ns,
            tid: self.stats.tid,
            pid: self.stats.pid,
            cpu,
            task: None,
            stacks: self.out_stacks,
            waker: self.woken_with,
        })
    }

    /// The thread is seen running at `seen` but its switch-in is missing; it cannot have happened
    /// before `earliest`.
    fn missed_switch_in(&mut self, earliest: u64, seen: u64, cpu: u16) {
        if let ThreadState::Off { since, why } = self.state {
            // Times are in order after the reader; a caller's own events may not be.
            let seen = seen.max(since);
            let earliest = earliest.max(since).min(seen);
            self.stats.add_off(self.window, why, since, earliest);
            self.stats.unaccounted_ns += self.window.clip(earliest, seen);
            self.span(since, earliest, SpanState::Off { why, waker: None });
            self.span(earliest, seen, SpanState::Unattributed);
        }
        if self.window.contains(seen) {
            self.stats.missed_switch_ins += 1;
        }
        self.switched_out_at = None;
        self.state = ThreadState::Running { since: seen, cpu };
        self.on_cpu(cpu, seen);
    }
}

/// What CFS did on one CPU, as far as the traced threads are concerned.
#[derive(Clone, Debug, Default)]
pub struct CpuStats {
    pub cpu: u16,
    /// Switches seen on this CPU (to or from a traced thread).
    pub switches: u64,
    /// Traced threads preempted on this CPU...
    pub preemptions: u64,
    /// ...and by whom (thread taking the CPU → count).
    pub preempted_by: FxHashMap<u32, u64>,
    /// Run-queue latencies of traced threads that got this CPU.
    pub latencies_ns: Vec<u64>,
    /// Traced threads moved here from another CPU, and away from here.
    pub migrations_in: u64,
    pub migrations_out: u64,
    /// At each switch, the spread (max − min) of `se.vruntime` among the traced threads
    /// runnable on this CPU and the one picked (when two or more are known).
    pub vruntime_spreads: Vec<u64>,
    /// Time traced threads ran on this CPU.
    pub busy_ns: u64,
}

/// Which processes' threads get statistics.
#[derive(Clone, Debug)]
pub enum Scope {
    /// Every process but this one (the recorder of a system-wide trace).
    AllBut(u32),
    /// These processes, plus children the recorder followed.
    Pids(Vec<u32>),
}

/// The tracked threads, found by thread id through a dense index: ids stay below
/// [`PID_MAX_LIMIT`] (the reader drops events naming others), and a hash look-up for each thread
/// of each event was a tenth of a report's reading thread. The index holds one `u32` per id up
/// to the largest seen.
#[derive(Default)]
struct ThreadTable {
    /// Per thread id, 1 + its place in `threads` (0: not tracked).
    slot: Vec<u32>,
    threads: Vec<Thread>,
}

impl ThreadTable {
    fn get(&self, tid: u32) -> Option<&Thread> {
        self.threads.get(self.index(tid)?)
    }

    /// The place of thread `tid` in `threads`, if tracked.
    #[inline]
    fn index(&self, tid: u32) -> Option<usize> {
        let i = self.slot.get(tid as usize).copied().unwrap_or(0) as usize;
        i.checked_sub(1)
    }

    /// Tracks `t` (a thread not tracked yet); returns its place.
    #[cold]
    fn insert(&mut self, t: Thread) -> usize {
        let at = t.stats.tid as usize;
        if self.slot.len() <= at {
            self.slot.resize(at + 1, 0);
        }
        self.threads.push(t);
        self.slot[at] = self.threads.len() as u32;
        self.threads.len() - 1
    }
}

/// A set of process ids (below [`PID_MAX_LIMIT`]), one bit each up to the largest.
#[derive(Default)]
struct PidSet(Vec<u64>);

impl PidSet {
    fn contains(&self, pid: u32) -> bool {
        self.0.get(pid as usize / 64).is_some_and(|w| w & (1 << (pid % 64)) != 0)
    }

    fn insert(&mut self, pid: u32) {
        if pid > PID_MAX_LIMIT {
            return;
        }
        let at = pid as usize / 64;
        if self.0.len() <= at {
            self.0.resize(at + 1, 0);
        }
        self.0[at] |= 1 << (pid % 64);
    }
}

/// Folds events into per-thread and per-CPU totals.
pub struct ThreadTracker {
    threads: ThreadTable,
    /// `Some(recorder)`: every process but the recorder; `None`: only `pids`.
    all_but: Option<u32>,
    pids: PidSet,
    /// Per CPU, the time of the last switch seen there.
    last_switch: Vec<u64>,
    cpus: Vec<CpuStats>,
    /// Per CPU, the traced threads waiting in its run queue.
    runnable: Vec<Vec<u32>>,
    /// Keep every thread's timeline.
    record_timelines: bool,
    /// The time the statistics are about.
    window: Window,
    /// Samples completed by the events so far (kept only when asked for).
    samples: Vec<Sample>,
    emit_samples: bool,
}

impl ThreadTracker {
    pub fn new(scope: Scope) -> Self {
        let (all_but, pids) = match scope {
            Scope::AllBut(recorder) => (Some(recorder), Default::default()),
            Scope::Pids(p) => {
                let mut set = PidSet::default();
                p.into_iter().for_each(|pid| set.insert(pid));
                (None, set)
            }
        };
        ThreadTracker {
            threads: ThreadTable::default(),
            all_but,
            pids,
            last_switch: Vec::new(),
            cpus: Vec::new(),
            runnable: Vec::new(),
            record_timelines: false,
            window: Window::ALL,
            samples: Vec::new(),
            emit_samples: false,
        }
    }

    /// Counts only what happened inside `w` (intervals clipped to it).
    pub fn with_window(mut self, w: Window) -> Self {
        self.window = w;
        self
    }

    /// Also keep each completed sample (see [`super::samples`]) until [`Self::take_samples`].
    pub fn with_samples(mut self) -> Self {
        self.emit_samples = true;
        self
    }

    /// The samples completed since the last call.
    pub fn take_samples(&mut self) -> std::vec::Drain<'_, Sample> {
        self.samples.drain(..)
    }

    /// Starts with thread `tid` of process `pid` asleep since `since` (a thread the recorder knew
    /// to be parked when the probes were attached).
    pub fn asleep(&mut self, tid: u32, pid: u32, since: u64) {
        if self.in_scope(tid, pid) {
            self.thread(tid, pid, since).state = ThreadState::Off { since, why: OffCpu::Sleeping };
        }
    }

    /// Also keep every thread's timeline (`ThreadStats::timeline`), for exports.
    pub fn with_timelines(mut self) -> Self {
        self.record_timelines = true;
        self
    }

    /// The stacks thread `tid` last switched out with.
    pub fn out_stacks(&self, tid: u32) -> (i32, i32) {
        self.threads.get(tid).map_or(super::samples::NO_STACKS, |t| t.out_stacks)
    }

    /// The state of thread `tid` right now (`Unknown` for a thread not tracked).
    pub fn state(&self, tid: u32) -> ThreadState {
        self.threads.get(tid).map_or(ThreadState::Unknown, |t| t.state)
    }

    fn cpu(&mut self, cpu: u16) -> &mut CpuStats {
        let i = cpu as usize;
        if self.cpus.len() <= i {
            self.cpus.resize_with(i + 1, Default::default);
            self.runnable.resize_with(i + 1, Vec::new);
            self.last_switch.resize(i + 1, 0);
            for (n, c) in self.cpus.iter_mut().enumerate() {
                c.cpu = n as u16;
            }
        }
        &mut self.cpus[i]
    }

    /// Keeps the per-CPU run-queue membership of `tid` in step with its state: it was queued on
    /// `old` and is now on `on` (the caller has set the thread's `queued_on`, from the thread it
    /// holds: a second look-up per event would cost more than the rest of this).
    fn requeue(&mut self, tid: u32, old: Option<u16>, on: Option<u16>) {
        if old == on {
            return;
        }
        if let Some(c) = old
            && let Some(q) = self.runnable.get_mut(c as usize)
        {
            q.retain(|x| *x != tid);
        }
        if let Some(c) = on {
            self.cpu(c);
            self.runnable[c as usize].push(tid);
        }
    }

    /// Whether thread `tid` of process `pid` gets statistics (never an id no kernel hands out).
    fn in_scope(&self, tid: u32, pid: u32) -> bool {
        tid != 0
            && tid <= PID_MAX_LIMIT
            && match self.all_but {
                Some(recorder) => pid != recorder,
                None => self.pids.contains(pid),
            }
    }

    #[cold]
    fn new_thread(&self, tid: u32, pid: u32, ts: u64) -> Thread {
        Thread {
            stats: ThreadStats { tid, pid, first_ts: ts, ..Default::default() },
            state: ThreadState::Unknown,
            in_epoll: false,
            pending_waker: None,
            pending_waker_stacks: None,
            out_stacks: NO_STACKS,
            woken_with: None,
            vruntime: 0,
            cfs_rq: 0,
            queued_on: None,
            record: self.record_timelines,
            woken_by: None,
            last_cpu: None,
            switched_out_at: None,
            window: self.window,
        }
    }

    #[inline]
    fn thread(&mut self, tid: u32, pid: u32, ts: u64) -> &mut Thread {
        let i = match self.threads.index(tid) {
            Some(i) => i,
            None => self.threads.insert(self.new_thread(tid, pid, ts)),
        };
        let t = &mut self.threads.threads[i];
        t.stats.last_ts = ts;
        if t.stats.pid == 0 {
            t.stats.pid = pid;
        }
        t
    }

    pub fn event(&mut self, e: &Event) {
        if e.kind.proves_current() && self.in_scope(e.tid, e.pid) {
            let last = self.last_switch_on(e.cpu);
            let t = self.thread(e.tid, e.pid, e.ts);
            match t.state {
                ThreadState::Off { .. } => {
                    t.missed_switch_in(last, e.ts, e.cpu);
                    let old = t.queued_on.take();
                    self.requeue(e.tid, old, None);
                }
                ThreadState::Unknown => {
                    t.set_state(e.ts, ThreadState::Running { since: e.ts, cpu: e.cpu });
                    t.on_cpu(e.cpu, e.ts);
                }
                _ => {}
            }
        }
        match e.kind {
            EventKind::Switch(s) => self.switch(e, &s),
            EventKind::Waking(w) if self.in_scope(w.tid, w.pid) => {
                // A wake-up in interrupt context (a timer, a device) is not the interrupted
                // task's doing.
                let waker = if w.in_irq == Some(true) { IRQ_WAKER } else { e.tid };
                let with = SampleWaker {
                    tid: waker,
                    pid: if waker == IRQ_WAKER { 0 } else { e.pid },
                    stacks: w.waker_stacks,
                };
                let t = self.thread(w.tid, w.pid, e.ts);
                t.pending_waker = Some(waker);
                t.pending_waker_stacks = Some(with);
            }
            EventKind::Wakeup(w) | EventKind::WakeupNew(w) if self.in_scope(w.tid, w.pid) => {
                let new = matches!(e.kind, EventKind::WakeupNew(_));
                let t = self.thread(w.tid, w.pid, e.ts);
                // A new thread is woken by its creator, in whose context this fires.
                let waker = if new { Some(e.tid) } else { t.pending_waker.take() };
                let waker_stacks = t.pending_waker_stacks.take();
                let mut sample = None;
                match t.state {
                    ThreadState::Off {
                        since,
                        why: why @ (OffCpu::Sleeping | OffCpu::Epoll | OffCpu::Blocked),
                    } => {
                        t.woken_with = waker_stacks;
                        let ns = e.ts.saturating_sub(since);
                        t.stats.add_off(t.window, why, since, e.ts);
                        let metric = match why {
                            OffCpu::Sleeping => Metric::Sleep,
                            OffCpu::Epoll => Metric::Epoll,
                            _ => Metric::Blocked,
                        };
                        sample = t.sample(metric, e.ts, ns, w.cpu as u16);
                        if why == OffCpu::Sleeping && sample.is_some() {
                            t.stats.sleeps_ns.push(ns);
                        }
                    }
                    ThreadState::Unknown if new => {}
                    // Already running or runnable (woken before it got off the CPU), or of
                    // unknown state: nothing changes.
                    _ => return,
                }
                if new {
                    t.last_cpu = Some(w.cpu as u16); // placed, not migrated
                } else {
                    t.on_cpu(w.cpu as u16, e.ts);
                }
                t.set_state(e.ts, ThreadState::Off { since: e.ts, why: OffCpu::Woken });
                t.woken_by = waker;
                // Where CFS placed it; its vruntime from before the sleep says nothing now.
                t.vruntime = w.vruntime;
                t.cfs_rq = w.cfs_rq;
                if let Some(w) = waker
                    && t.window.contains(e.ts)
                {
                    *t.stats.wakers.entry(w).or_default() += 1;
                }
                let old = t.queued_on.replace(w.cpu as u16);
                self.emit(sample);
                self.requeue(w.tid, old, Some(w.cpu as u16));
            }
            EventKind::Migrate { tid, pid, orig_cpu, dest_cpu } if self.in_scope(tid, pid) => {
                let counted = self.window.contains(e.ts);
                let t = self.thread(tid, pid, e.ts);
                t.stats.migrations += counted as u64;
                t.last_cpu = Some(dest_cpu as u16);
                let old = t.queued_on;
                if old.is_some() {
                    // Placed anew in the other CPU's run queue: its vruntime is not known there.
                    t.vruntime = 0;
                    t.cfs_rq = 0;
                    t.queued_on = Some(dest_cpu as u16);
                }
                let queued = t.queued_on;
                self.cpu(orig_cpu as u16).migrations_out += counted as u64;
                self.cpu(dest_cpu as u16).migrations_in += counted as u64;
                self.requeue(tid, old, queued);
            }
            // A followed child's parent is traced, or (`record --cgroup`) the child was created
            // straight into a traced cgroup.
            EventKind::Fork { child_pid, thread, followed, .. }
                if self.all_but.is_none() && (followed || (thread && self.pids.contains(e.pid))) =>
            {
                self.pids.insert(child_pid);
            }
            EventKind::Cgroup(c) if c.filter_in && self.all_but.is_none() => self.pids.insert(e.pid),
            EventKind::Exit { .. } if self.in_scope(e.tid, e.pid) => {
                self.thread(e.tid, e.pid, e.ts).stats.exited = true;
            }
            EventKind::EpollEnter { .. } | EventKind::EpollExit { .. } if self.in_scope(e.tid, e.pid) => {
                self.thread(e.tid, e.pid, e.ts).in_epoll = matches!(e.kind, EventKind::EpollEnter { .. });
            }
            _ => {}
        }
    }

    fn emit(&mut self, sample: Option<Sample>) {
        if self.emit_samples
            && let Some(s) = sample
        {
            self.samples.push(s);
        }
    }

    fn last_switch_on(&self, cpu: u16) -> u64 {
        self.last_switch.get(cpu as usize).copied().unwrap_or(0)
    }

    fn switch(&mut self, e: &Event, s: &Switch) {
        let last = self.last_switch_on(e.cpu);
        let counted = self.window.contains(e.ts);
        self.cpu(e.cpu).switches += counted as u64;
        self.last_switch[e.cpu as usize] = e.ts;
        if self.in_scope(e.tid, e.pid) {
            let t = self.thread(e.tid, e.pid, e.ts);
            if let ThreadState::Off { .. } = t.state {
                t.missed_switch_in(last, e.ts, e.cpu);
            }
            let mut ran = 0;
            if let ThreadState::Running { since, .. } = t.state {
                ran = t.window.clip(since, e.ts);
                t.stats.on_cpu_ns += ran;
            }
            if s.prev_vruntime != 0 {
                t.vruntime = s.prev_vruntime;
                t.cfs_rq = s.prev_cfs_rq;
            }
            let still_runnable = s.preempt || s.prev_state == task_state::RUNNING;
            // A throttled switch-out is the quota's doing, not the next thread's.
            if still_runnable && counted {
                t.stats.involuntary_switches += 1;
                if s.next_tid != 0 && !s.throttled {
                    *t.stats.preempted_by.entry(s.next_tid).or_default() += 1;
                }
            } else if counted {
                t.stats.voluntary_switches += 1;
            }
            if s.prev_weight != 0 {
                t.stats.weight = s.prev_weight;
            }
            let new = if still_runnable {
                let why = if s.throttled { OffCpu::Throttled } else { OffCpu::Preempted };
                ThreadState::Off { since: e.ts, why }
            } else if s.prev_state & (task_state::DEAD | task_state::EXIT_DEAD | task_state::EXIT_ZOMBIE) != 0
            {
                ThreadState::Dead
            } else if t.in_epoll {
                ThreadState::Off { since: e.ts, why: OffCpu::Epoll }
            } else if s.prev_state & (task_state::INTERRUPTIBLE | task_state::NOLOAD) != 0 {
                ThreadState::Off { since: e.ts, why: OffCpu::Sleeping }
            } else {
                ThreadState::Off { since: e.ts, why: OffCpu::Blocked }
            };
            t.switched_out_at = matches!(new, ThreadState::Off { .. }).then_some(e.ts);
            (t.out_stacks, t.woken_with) = (s.prev_stacks, None);
            t.set_state(e.ts, new);
            let queued = still_runnable.then_some(e.cpu);
            let old = std::mem::replace(&mut t.queued_on, queued);
            let cpu = self.cpu(e.cpu);
            cpu.busy_ns = cpu.busy_ns.saturating_add(ran);
            if still_runnable && counted {
                cpu.preemptions += 1;
                if s.next_tid != 0 && !s.throttled {
                    *cpu.preempted_by.entry(s.next_tid).or_default() += 1;
                }
            }
            self.requeue(e.tid, old, queued);
        }
        if self.in_scope(s.next_tid, s.next_pid) {
            let t = self.thread(s.next_tid, s.next_pid, e.ts);
            if let ThreadState::Running { since, .. } = t.state {
                // Its switch-out is not in the trace: when the last run ended cannot be told.
                t.stats.missed_switch_outs += counted as u64;
                t.stats.unaccounted_ns += t.window.clip(since, e.ts);
                t.span(since, e.ts, SpanState::Unattributed);
                t.state = ThreadState::Unknown;
                t.switched_out_at = None;
            }
            let (mut latency, mut throttled_wait) = (None, None);
            if let ThreadState::Off { since, why } = t.state {
                let ns = e.ts.saturating_sub(since);
                t.stats.add_off(t.window, why, since, e.ts);
                if matches!(why, OffCpu::Sleeping | OffCpu::Epoll | OffCpu::Blocked) && counted {
                    t.stats.missed_wakeups += 1;
                }
                if why == OffCpu::Throttled
                    && let Some(sample) = t.sample(Metric::Throttled, e.ts, ns, e.cpu)
                {
                    t.stats.throttled_waits_ns.push(ns);
                    throttled_wait = Some(sample);
                }
                if matches!(why, OffCpu::Woken | OffCpu::Preempted)
                    && let Some(sample) = t.sample(Metric::Runq, e.ts, ns, e.cpu)
                {
                    t.stats.latencies_ns.push(ns);
                    latency = Some(sample);
                    if why == OffCpu::Woken {
                        t.stats.latencies_from_wakeup += 1;
                        t.stats.latencies_from_wakeup_ns += ns;
                    }
                }
            }
            let off_cpu =
                t.switched_out_at.take().and_then(|out| t.sample(Metric::Offcpu, e.ts, e.ts - out, e.cpu));
            t.set_state(e.ts, ThreadState::Running { since: e.ts, cpu: e.cpu });
            t.on_cpu(e.cpu, e.ts);
            if counted && !t.stats.ran_on.contains(&e.cpu) {
                t.stats.ran_on.push(e.cpu);
            }
            if s.next_weight != 0 {
                t.stats.weight = s.next_weight;
            }
            if s.next_vruntime != 0 {
                t.vruntime = s.next_vruntime;
                t.cfs_rq = s.next_cfs_rq;
            }
            let (next_vruntime, next_cfs_rq) = (t.vruntime, t.cfs_rq);
            let old = t.queued_on.take();
            self.requeue(s.next_tid, old, None);
            if let Some(sample) = latency {
                self.cpu(e.cpu).latencies_ns.push(sample.ns);
            }
            self.emit(latency);
            self.emit(throttled_wait);
            self.emit(off_cpu);
            if counted {
                self.sample_vruntime_spread(e.cpu, next_vruntime, next_cfs_rq);
            }
        }
    }

    /// Spread of `se.vruntime` among the traced threads waiting on `cpu` in the same CFS run
    /// queue as the one it picked, and that one. Vruntimes of different run queues (task
    /// groups) are on different scales and never compared.
    fn sample_vruntime_spread(&mut self, cpu: u16, picked: u64, cfs_rq: u64) {
        let (mut lo, mut hi, mut n) = (u64::MAX, 0u64, 0);
        let known = std::iter::once(picked).chain(
            self.runnable[cpu as usize]
                .iter()
                .filter_map(|tid| self.threads.get(*tid))
                .filter(|t| t.cfs_rq == cfs_rq)
                .map(|t| t.vruntime),
        );
        for v in known.filter(|v| *v != 0) {
            lo = lo.min(v);
            hi = hi.max(v);
            n += 1;
        }
        if n >= 2 {
            self.cpus[cpu as usize].vruntime_spreads.push(hi - lo);
        }
    }

    /// Closes every thread's last state at `end` and returns the per-thread totals (the
    /// per-CPU ones: [`Self::finish_with_cpus`]).
    pub fn finish(self, end: u64) -> Vec<ThreadStats> {
        self.finish_with_cpus(end).0
    }

    /// Closes every thread's last state at `end`; returns the per-thread and per-CPU totals.
    pub fn finish_with_cpus(self, end: u64) -> (Vec<ThreadStats>, Vec<CpuStats>) {
        let cpus = self.cpus;
        let mut out: Vec<ThreadStats> = self
            .threads
            .threads
            .into_iter()
            .map(|mut t| {
                match t.state {
                    ThreadState::Running { since, .. } => t.stats.on_cpu_ns += t.window.clip(since, end),
                    ThreadState::Off { since, why } => t.stats.add_off(t.window, why, since, end),
                    ThreadState::Unknown | ThreadState::Dead => {}
                }
                t.set_state(end, ThreadState::Unknown);
                t.stats
            })
            .collect();
        out.sort_by_key(|t| t.tid);
        (out, cpus)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::event::{Comm, EpollCall, Wake};

    const P: u32 = 100; // the traced process
    const T: u32 = 101; // its thread under test
    const W: u32 = 102; // another of its threads, the waker

    fn ev(ts: u64, cpu: u16, tid: u32, pid: u32, kind: EventKind) -> Event {
        Event { ts, cpu, tid, pid, kind }
    }

    fn switch(
        ts: u64,
        cpu: u16,
        prev: (u32, u32),
        next: (u32, u32),
        prev_state: u32,
        preempt: bool,
    ) -> Event {
        ev(
            ts,
            cpu,
            prev.0,
            prev.1,
            EventKind::Switch(Switch {
                preempt,
                throttled: false,
                prev_state,
                prev_prio: 120,
                next_tid: next.0,
                next_pid: next.1,
                next_prio: 120,
                prev_vruntime: 0,
                next_vruntime: 0,
                prev_weight: 1024,
                next_weight: 1024,
                prev_user_ip: 0,
                prev_cfs_rq: 0,
                next_cfs_rq: 0,
                prev_stacks: (-1, -1),
            }),
        )
    }

    fn wake(ts: u64, waker: (u32, u32), target: u32) -> Vec<Event> {
        let w = Wake {
            tid: target,
            pid: P,
            cpu: 0,
            prio: 120,
            vruntime: 0,
            cfs_rq: 0,
            in_irq: Some(false),
            waker_stacks: (-1, -1),
        };
        vec![
            ev(ts, 1, waker.0, waker.1, EventKind::Waking(w)),
            ev(ts, 1, waker.0, waker.1, EventKind::Wakeup(w)),
        ]
    }

    fn run(events: &[Event], end: u64) -> ThreadStats {
        let mut t = ThreadTracker::new(Scope::Pids(vec![P]));
        for e in events {
            t.event(e);
        }
        t.finish(end).into_iter().find(|s| s.tid == T).expect("thread tracked")
    }

    const IDLE: (u32, u32) = (0, 0);

    #[test]
    fn threads_are_found_by_any_possible_id_and_never_by_an_impossible_one() {
        // Ids at both ends of what a kernel hands out, in processes followed from the start and
        // added by a fork, are tracked apart; an id beyond the limit (no reader hands one out)
        // is not tracked at all.
        const BIG: u32 = PID_MAX_LIMIT;
        let fork = ev(
            50,
            0,
            T,
            P,
            EventKind::Fork {
                child_tid: BIG,
                child_pid: BIG,
                thread: false,
                followed: true,
                comm: Comm::new("c"),
            },
        );
        let mut t = ThreadTracker::new(Scope::Pids(vec![P]));
        for e in [
            fork,
            switch(100, 0, IDLE, (1, P), 0, false),
            switch(200, 0, (1, P), (BIG, BIG), task_state::INTERRUPTIBLE, false),
            switch(350, 0, (BIG, BIG), (BIG + 1, P), task_state::INTERRUPTIBLE, false),
            switch(400, 0, (BIG + 1, P), (T, P), task_state::INTERRUPTIBLE, false),
        ] {
            t.event(&e);
        }
        let stats = t.finish(1_000);
        let on_cpu: Vec<(u32, u64)> = stats.iter().map(|s| (s.tid, s.on_cpu_ns)).collect();
        assert_eq!(on_cpu, vec![(1, 100), (T, 600), (BIG, 150)]);
        let mut pids = PidSet::default();
        for pid in [0, 63, 64, BIG, BIG + 1] {
            pids.insert(pid);
        }
        let held: Vec<u32> =
            [0, 1, 63, 64, 65, BIG - 1, BIG, BIG + 1].into_iter().filter(|p| pids.contains(*p)).collect();
        assert_eq!(held, vec![0, 63, 64, BIG]);
    }

    #[test]
    fn vruntimes_are_compared_only_within_one_cfs_run_queue() {
        let sw = |ts, prev: (u32, u32), next: (u32, u32), (pv, pq): (u64, u64), (nv, nq): (u64, u64)| {
            let mut e = switch(ts, 0, prev, next, 0, true);
            if let EventKind::Switch(s) = &mut e.kind {
                (s.prev_vruntime, s.prev_cfs_rq, s.next_vruntime, s.next_cfs_rq) = (pv, pq, nv, nq);
            }
            e
        };
        let (a, b, c) = ((T, P), (W, P), (T + 2, P));
        let mut t = ThreadTracker::new(Scope::Pids(vec![P]));
        for e in [
            sw(100, IDLE, a, (0, 0), (5_000, 1)),
            sw(200, a, b, (5_100, 1), (9_000, 2)), // a waits in run queue 1; b is in group 2
            sw(300, b, c, (9_050, 2), (5_040, 1)), // c, in a's group: spread 60 against a
        ] {
            t.event(&e);
        }
        let (_, cpus) = t.finish_with_cpus(400);
        assert_eq!(cpus[0].vruntime_spreads, vec![60]);
    }

    #[test]
    fn unreported_migrations_and_wake_ups_are_counted_not_guessed() {
        let w = |cpu: u32| Wake {
            tid: T,
            pid: P,
            cpu,
            prio: 120,
            vruntime: 0,
            cfs_rq: 0,
            in_irq: Some(true),
            waker_stacks: (-1, -1),
        };
        let e = vec![
            switch(100, 0, IDLE, (T, P), 0, false),
            switch(200, 0, (T, P), IDLE, 1, false), // sleeps on CPU 0
            // Woken onto CPU 1 without a migration record: a migration the trace missed.
            ev(300, 1, 0, 0, EventKind::Wakeup(w(1))),
            switch(310, 1, IDLE, (T, P), 0, false),
            switch(400, 1, (T, P), IDLE, 1, false),
            // Back on CPU 0 with neither the migration nor the wake-up reported.
            switch(600, 0, IDLE, (T, P), 0, false),
        ];
        let s = run(&e, 700);
        assert_eq!((s.migrations, s.inferred_migrations), (2, 2));
        assert_eq!(s.missed_wakeups, 1);
        assert_eq!(s.sleeps_ns, vec![100], "only the sleep whose wake-up was seen");
        assert_eq!(s.sleeping_ns, 100 + 200, "both sleeps count in the total");
        assert_eq!(s.latencies_ns, vec![10], "no latency for the wake-up not seen");
    }

    #[test]
    fn sleeping_runnable_and_running_add_up() {
        let mut e = vec![switch(100, 0, IDLE, (T, P), 0, false)]; // T runs from 100
        e.push(switch(300, 0, (T, P), IDLE, task_state::INTERRUPTIBLE, false)); // sleeps 300..
        e.extend(wake(1_300, (W, P), T)); // ..woken at 1300 by W
        e.push(switch(1_350, 0, IDLE, (T, P), 0, false)); // runs after 50 in the run queue
        e.push(switch(1_500, 0, (T, P), (W, P), task_state::RUNNING, true)); // preempted by W
        e.push(switch(1_900, 0, (W, P), (T, P), task_state::INTERRUPTIBLE, false)); // back after 400
        let s = run(&e, 2_000);
        assert_eq!(s.on_cpu_ns, 200 + 150 + 100);
        assert_eq!(s.sleeping_ns, 1_000);
        assert_eq!(s.runqueue_ns, 50 + 400);
        assert_eq!(s.latencies_ns, vec![50, 400]);
        assert_eq!((s.latencies_from_wakeup, s.latencies_from_wakeup_ns), (1, 50));
        assert_eq!((s.voluntary_switches, s.involuntary_switches), (1, 1));
        assert_eq!(s.wakers.get(&W), Some(&1));
        assert_eq!(s.preempted_by.get(&W), Some(&1));
        assert_eq!((s.missed_switch_ins, s.unaccounted_ns), (0, 0));
    }

    #[test]
    fn a_throttled_switch_out_is_throttling_not_run_queue_time_nor_a_preemption() {
        let throttled = |e: Event| match e.kind {
            EventKind::Switch(s) => Event { kind: EventKind::Switch(Switch { throttled: true, ..s }), ..e },
            _ => e,
        };
        let e = vec![
            switch(0, 0, IDLE, (T, P), 0, false),
            // The quota runs out: switched out still runnable, another cgroup's thread runs.
            throttled(switch(100, 0, (T, P), (W, P + 1), 0, true)),
            switch(180, 0, (W, P + 1), (T, P), 0, false),
            // An ordinary preemption.
            switch(200, 0, (T, P), (W, P + 1), 0, true),
            switch(230, 0, (W, P + 1), (T, P), 0, false),
        ];
        let s = run(&e, 300);
        assert_eq!((s.on_cpu_ns, s.throttled_ns, s.runqueue_ns), (100 + 20 + 70, 80, 30));
        assert_eq!(s.throttled_waits_ns, vec![80]);
        assert_eq!(s.latencies_ns, vec![30], "a throttled wait is not a run-queue latency");
        assert_eq!(s.involuntary_switches, 2);
        assert_eq!(s.preempted_by.get(&W), Some(&1), "the quota, not W, took the CPU the first time");
        assert_eq!(s.off_cpu_ns(), 110);
    }

    #[test]
    fn epoll_waits_are_kept_apart_from_sleeps() {
        let epoll = |ts, enter: bool| {
            let kind = if enter {
                EventKind::EpollEnter { call: EpollCall::Wait, epfd: 3, maxevents: 8, timeout_ns: -1 }
            } else {
                EventKind::EpollExit { call: EpollCall::Wait, ret: 1 }
            };
            ev(ts, 0, T, P, kind)
        };
        let mut e = vec![switch(0, 0, IDLE, (T, P), 0, false), epoll(10, true)];
        e.push(switch(20, 0, (T, P), IDLE, task_state::INTERRUPTIBLE, false));
        e.extend(wake(520, (W, P), T));
        e.push(switch(530, 0, IDLE, (T, P), 0, false));
        e.push(epoll(540, false));
        e.push(switch(600, 0, (T, P), IDLE, task_state::INTERRUPTIBLE, false)); // a plain sleep
        let s = run(&e, 700);
        assert_eq!((s.epoll_ns, s.sleeping_ns, s.runqueue_ns), (500, 100, 10));
    }

    #[test]
    fn uninterruptible_and_dead_states() {
        let mut e = vec![switch(0, 0, IDLE, (T, P), 0, false)];
        e.push(switch(10, 0, (T, P), IDLE, task_state::UNINTERRUPTIBLE, false));
        e.extend(wake(60, (W, P), T));
        e.push(switch(70, 0, IDLE, (T, P), 0, false));
        e.push(ev(80, 0, T, P, EventKind::Exit { group_dead: false }));
        e.push(switch(90, 0, (T, P), IDLE, task_state::DEAD, false));
        let s = run(&e, 1_000);
        assert_eq!((s.blocked_ns, s.on_cpu_ns, s.runqueue_ns), (50, 30, 10));
        assert!(s.exited);
    }

    #[test]
    fn a_missing_switch_in_leaves_its_window_unaccounted() {
        // T is preempted by a task hidden from tracing at 100; the switch back is never reported,
        // and T is next seen switching out at 400. On that CPU nothing else was seen after 100.
        let mut e = vec![switch(0, 0, IDLE, (T, P), 0, false)];
        e.push(switch(100, 0, (T, P), (9999, 1), task_state::RUNNING, true));
        e.push(switch(400, 0, (T, P), IDLE, task_state::INTERRUPTIBLE, false));
        let s = run(&e, 500);
        assert_eq!((s.on_cpu_ns, s.runqueue_ns, s.unaccounted_ns), (100, 0, 300));
        assert_eq!(s.missed_switch_ins, 1);
        assert!(s.latencies_ns.is_empty(), "a missed switch-in is not a latency sample");
        // Another switch on that CPU bounds the window: T cannot have run before it.
        let mut e2 = e.clone();
        e2.insert(2, switch(250, 0, (W, P), IDLE, task_state::INTERRUPTIBLE, false));
        let s = run(&e2, 500);
        assert_eq!((s.runqueue_ns, s.unaccounted_ns), (150, 150));
        // A CPU sample of T at 300 shows it running by then: only 100..300 is unaccounted, and
        // the run from 300 to its switch-out is on-CPU time.
        let mut e3 = e.clone();
        e3.insert(2, ev(300, 0, T, P, EventKind::CpuSample { user_stack: -1, kernel_stack: -1, user_ip: 0 }));
        let s = run(&e3, 500);
        assert_eq!((s.on_cpu_ns, s.runqueue_ns, s.unaccounted_ns), (200, 0, 200));
        assert_eq!(s.missed_switch_ins, 1);
    }

    #[test]
    fn only_threads_of_traced_processes_and_followed_children_count() {
        let child = (201, 201);
        let mut e = vec![switch(0, 0, IDLE, (T, P), 0, false)];
        e.push(ev(
            5,
            0,
            T,
            P,
            EventKind::Fork {
                child_tid: 201,
                child_pid: 201,
                thread: false,
                followed: true,
                comm: Comm::new("c"),
            },
        ));
        e.push(switch(10, 0, (T, P), (300, 300), task_state::INTERRUPTIBLE, false)); // 300: outsider
        e.push(switch(20, 0, (300, 300), child, task_state::INTERRUPTIBLE, false));
        let mut t = ThreadTracker::new(Scope::Pids(vec![P]));
        for x in &e {
            t.event(x);
        }
        let tids: Vec<u32> = t.finish(30).iter().map(|s| s.tid).collect();
        assert_eq!(tids, vec![T, 201]);
    }
}
