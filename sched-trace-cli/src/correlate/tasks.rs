//! User-level tasks (reference-runtime tasks, goroutines), joined with the kernel's view of the
//! thread under each one.
//!
//! The runtime's probes say when a task runs on a thread, parks (and why), is made runnable
//! (and by whom), enters a blocking call, and exits. While a task runs on thread `t`, every
//! change of `t`'s kernel state splits the task's running time: on a CPU; **CFS-stolen** (the
//! runtime had the task running, but its thread was waiting in a CFS run queue, woken or
//! preempted); blocked in the kernel (the thread slept: a page fault, a lock; or, inside a
//! blocking section, the blocking call itself). Outside running, a task is waiting in a runtime
//! queue (ready → run) or parked (park → ready, by reason).
//!
//! A runtime may instead only be *observed* (Go's identity level): at each switch-out and CPU
//! sample of a thread, which task it runs, and nothing about the runtime's own transitions. Then
//! the task observed owns the thread from the start of the stretch that ends there (the thread's
//! switch-in, or the last event on it) and keeps it through the thread's off-CPU time after it
//! (preempted: CFS-stolen; asleep in a syscall: blocked in the kernel) until another observation
//! names someone else (Go: asleep in a system call, the goroutine's status `_Gsyscall` at the
//! switch-out, is a blocking call). A thread seen running no task (in the scheduler, on its way
//! to sleep for lack of work, or handing a locked goroutine back) gives the stretch that ends
//! there to the task it ran before: the scheduler's search is short next to a task's run, and the task had
//! the thread until it left it somewhere in that stretch. Its time outside runs is not known
//! (neither queued nor parked).

use std::collections::{BTreeMap, HashMap};

use rustc_hash::FxHashMap;
use serde::Serialize;

use super::{
    samples::{Metric, NO_CPU, Sample, SampleCounts, Window},
    threads::{OffCpu, ThreadState},
};

/// Why a task parked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParkReason {
    Netpoll,
    Timer,
    Channel,
    Yield,
    Other,
}

impl ParkReason {
    pub const ALL: [ParkReason; 5] =
        [ParkReason::Netpoll, ParkReason::Timer, ParkReason::Channel, ParkReason::Yield, ParkReason::Other];
}

/// Who made a task runnable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case", tag = "by", content = "task")]
pub enum Waker {
    /// Another task (or the task itself, for a yield).
    Task(u64),
    /// The netpoller: an fd became ready.
    Netpoller,
    /// A timer fired.
    Timer,
    /// A thread outside the runtime, or a source the runtime does not say.
    Other,
    /// It was created (by the parent task, if any).
    Spawn,
}

/// Which runtime queue a runnable task waits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Queue {
    /// A logical processor's (P's) local run queue.
    Local(u64),
    Global,
    /// The runtime does not say.
    Unknown,
}

/// A runtime's scheduling transition, whatever the runtime. `p`: the logical processor whose
/// queue the task went to, or ran on, when the runtime says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Spawn {
        parent: Option<u64>,
        queue: Queue,
    },
    Run {
        p: Option<u64>,
    },
    Park {
        reason: ParkReason,
        fd: Option<u64>,
        /// The runtime's own wait reason (Go's `waitReason`), when it says one.
        wait: Option<u8>,
    },
    Ready {
        waker: Waker,
        queue: Queue,
    },
    Exit,
    BlockEnter,
    BlockExit,
    /// The task is the one running on the thread now (`task` 0: none is), as sampled from outside
    /// the runtime. `start_pc`: the function it started with; `in_system_call`: the runtime has
    /// it in a system call (Go's `_Gsyscall`).
    Observed {
        start_pc: u64,
        in_system_call: bool,
    },
}

/// What an observation saw running on a thread (see [`TaskTracker::observe`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    pub task: u64,
    pub start_pc: u64,
    pub in_system_call: bool,
}

/// Interprets a user-level probe hit as a task transition: `(task, transition)`, or `None` for
/// probes that are not about one task (steals, M parking) or of unknown runtimes.
pub fn transition(
    provider: &str,
    name: &str,
    reasons: &BTreeMap<u64, String>,
    args: &[u64],
) -> Option<(u64, Transition)> {
    const NONE: u64 = u64::MAX;
    let arg = |i: usize| args.get(i).copied().unwrap_or(0);
    if provider == "go" {
        return go_transition(name, reasons, args);
    }
    if provider != "refrt" {
        return None;
    }
    let queue = |p: u64| if p == NONE { Queue::Global } else { Queue::Local(p) };
    let t = match name {
        "task_spawn" => Transition::Spawn { parent: (arg(1) != 0).then_some(arg(1)), queue: queue(arg(2)) },
        "task_run" => Transition::Run { p: (arg(2) != NONE).then_some(arg(2)) },
        "task_park" => Transition::Park {
            wait: None,
            reason: match arg(1) {
                1 => ParkReason::Netpoll,
                2 => ParkReason::Timer,
                3 => ParkReason::Channel,
                4 => ParkReason::Yield,
                _ => ParkReason::Other,
            },
            fd: (arg(2) != NONE).then_some(arg(2)),
        },
        "task_ready" => Transition::Ready {
            waker: match arg(2) {
                1 if arg(1) != 0 => Waker::Task(arg(1)),
                2 => Waker::Netpoller,
                3 => Waker::Timer,
                _ => Waker::Other,
            },
            queue: queue(arg(3)),
        },
        "task_exit" => Transition::Exit,
        "block_enter" => Transition::BlockEnter,
        "block_exit" => Transition::BlockExit,
        _ => return None,
    };
    Some((arg(0), t))
}

/// The Go runtime's probes (`record::go`): the identity record, and the scheduler functions of
/// the full level, each with the goroutine's id first.
fn go_transition(name: &str, reasons: &BTreeMap<u64, String>, args: &[u64]) -> Option<(u64, Transition)> {
    let arg = |i: usize| args.get(i).copied().unwrap_or(0);
    match name {
        "goroutine" => {
            use sched_trace_abi::go_identity_arg as a;
            // The statuses are named in the probe's table entry (from the binary's DWARF).
            let in_system_call = go_status(reasons, arg(a::STATUS)) == Some("_Gsyscall");
            return Some((arg(a::GOID), Transition::Observed { start_pc: arg(a::STARTPC), in_system_call }));
        }
        // The goroutines parked on the fd for reading and for writing, and the mode ('r', 'w'
        // or both, 'r' + 'w'): the reader first.
        "netpollready" => {
            let (r, w, mode) = (arg(0), arg(1), arg(2));
            let g = if mode != u64::from(b'w') && r != 0 { r } else { w };
            let ready = Transition::Ready { waker: Waker::Netpoller, queue: Queue::Unknown };
            return (g != 0).then_some((g, ready));
        }
        _ => {}
    }
    let goid = arg(0);
    if goid == 0 {
        return None;
    }
    let t = match name {
        // A system call (`--go-casgstatus`), from its entry and exit functions, and from the
        // status changes into and out of one (before Go 1.26); the other status changes the
        // other probes say. Leaving one for the run queue (exitsyscall found no P) also leaves
        // the thread, like a yield.
        "syscall_enter" | "syscall_enter_block" => return Some((goid, Transition::BlockEnter)),
        "syscall_exit" => return Some((goid, Transition::BlockExit)),
        "syscall_exit_no_p" => Transition::Park { reason: ParkReason::Yield, fd: None, wait: None },
        "casgstatus" => {
            return match (go_status(reasons, arg(1)), go_status(reasons, arg(2))) {
                (_, Some("_Gsyscall")) => Some((goid, Transition::BlockEnter)),
                (Some("_Gsyscall"), Some("_Grunnable")) => {
                    Some((goid, Transition::Park { reason: ParkReason::Yield, fd: None, wait: None }))
                }
                (Some("_Gsyscall"), _) => Some((goid, Transition::BlockExit)),
                _ => None,
            };
        }
        "execute" => Transition::Run { p: None },
        "newproc" => Transition::Spawn { parent: None, queue: Queue::Unknown },
        // The waker is the goroutine its thread ran (none: a timer, the scheduler itself).
        "ready" => {
            let waker = match arg(1) {
                w if w != 0 && w != goid => Waker::Task(w),
                _ => Waker::Other,
            };
            Transition::Ready { waker, queue: Queue::Unknown }
        }
        "goroutine_ready" => Transition::Ready { waker: Waker::Timer, queue: Queue::Unknown },
        "goexit" => Transition::Exit,
        // Still runnable: back in a run queue.
        "gosched" => Transition::Park { reason: ParkReason::Yield, fd: None, wait: None },
        "preempt_park" => Transition::Park { reason: ParkReason::Other, fd: None, wait: None },
        "gopark" => {
            let wait = arg(1) as u8;
            Transition::Park { reason: go_park_reason(reasons.get(&arg(1))), fd: None, wait: Some(wait) }
        }
        _ => return None,
    };
    Some((goid, t))
}

/// The name of Go goroutine status `value` in `statuses` (by value), without the `_Gscan` bit
/// a garbage collection scanning the goroutine's stack adds to it.
fn go_status(statuses: &BTreeMap<u64, String>, value: u64) -> Option<&str> {
    const SCAN: u64 = 0x1000;
    statuses.get(&(value & !SCAN)).map(String::as_str)
}

/// The start pc a runtime probe's record carries (Go's `execute` and `newproc`: the second
/// argument).
pub fn start_pc_of(provider: &str, name: &str, args: &[u64]) -> Option<u64> {
    (provider == "go" && matches!(name, "execute" | "newproc"))
        .then(|| args.get(1).copied())
        .flatten()
        .filter(|&pc| pc != 0)
}

/// The class of a Go wait reason, by its constant's name (`waitReasonIOWait`).
fn go_park_reason(name: Option<&String>) -> ParkReason {
    let Some(n) = name.map(|n| n.trim_start_matches("waitReason")) else { return ParkReason::Other };
    match n {
        "IOWait" => ParkReason::Netpoll,
        "Sleep" | "TimerGoroutineIdle" | "SleepSynctest" => ParkReason::Timer,
        _ if n.starts_with("Chan") || n.starts_with("Select") => ParkReason::Channel,
        _ => ParkReason::Other,
    }
}

/// A task is identified by its process and the runtime's task id.
pub type TaskKey = (u32, u64);

/// One run of a task on a thread, from the runtime's `run` to its `park` or `exit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RunInterval {
    pub start: u64,
    pub end: u64,
    pub tid: u32,
}

/// What the thread under a running task was doing, over one stretch of the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunSegment {
    OnCpu,
    /// Its thread waited in a CFS run queue (woken, or preempted).
    CfsStolen,
    /// Its thread slept in the kernel outside a blocking section.
    KernelBlocked,
    /// In a blocking section, its thread off CPU.
    BlockingCall,
    /// The trace cannot tell (a missed switch-in).
    Unaccounted,
}

/// One stretch of a task's timeline (kept only when the tracker records timelines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskSpan {
    pub start: u64,
    pub end: u64,
    pub state: TaskSpanState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskSpanState {
    /// Waiting in `queue`, made runnable by `waker` (`None` after a yield).
    Runnable {
        queue: Queue,
        waker: Option<Waker>,
    },
    Running {
        tid: u32,
    },
    /// Inside a run: what its thread did (nested in the `Running` span).
    Segment {
        tid: u32,
        what: RunSegment,
    },
    Parked {
        reason: ParkReason,
        fd: Option<u64>,
    },
}

/// Totals for one task.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TaskStats {
    pub pid: u32,
    pub task: u64,
    pub parent: Option<u64>,
    /// The function it started with (a goroutine's `startpc`), when the runtime says.
    pub start_pc: Option<u64>,
    /// That function's name, from the trace's tables.
    pub name: Option<String>,
    /// Time parked by the runtime's wait reason, by name (from the trace's tables).
    pub parked_by_wait_name: BTreeMap<String, u64>,
    pub first_ts: u64,
    pub exited: bool,
    /// Running, with its thread on a CPU.
    pub on_cpu_ns: u64,
    /// Running as far as the runtime knew, while its thread waited in a CFS run queue.
    pub cfs_stolen_ns: u64,
    /// Running, while its thread slept in the kernel outside a blocking section.
    pub kernel_blocked_ns: u64,
    /// In a blocking section (the runtime handed its P off), with its thread off CPU.
    pub blocking_call_ns: u64,
    /// Running, with its thread in a state the trace cannot tell (missed switches).
    pub unaccounted_ns: u64,
    /// Runnable in a runtime queue (ready or spawned → run).
    pub queue_ns: u64,
    /// Parked, by reason.
    pub parked_ns: HashMap<ParkReason, u64>,
    /// Parked, by the runtime's own wait reason (Go's `waitReason` values; named by the trace's
    /// Go table).
    pub parked_by_wait: std::collections::BTreeMap<u8, u64>,
    /// Queue waits (ready → run), in order.
    #[serde(skip)]
    pub queue_latencies_ns: Vec<u64>,
    /// Waits in a P's local queue and in the global queue...
    pub local_queue_waits: u64,
    pub global_queue_waits: u64,
    /// ...and runs taken from another P's local queue than the one the task waited in (stolen).
    pub stolen: u64,
    pub runs: u64,
    /// Times it yielded (and stayed runnable).
    pub yields: u64,
    /// Runs on another thread than the task's previous run.
    pub thread_changes: u64,
    pub wakers: HashMap<Waker, u64>,
    #[serde(skip)]
    pub run_intervals: Vec<RunInterval>,
    /// Its timeline, when the tracker recorded one.
    #[serde(skip)]
    pub timeline: Vec<TaskSpan>,
    /// Its samples of each metric (see [`super::samples`]).
    #[serde(skip)]
    pub samples: SampleCounts,
}

impl TaskStats {
    /// Time the runtime considered the task running.
    pub fn running_ns(&self) -> u64 {
        [
            self.on_cpu_ns,
            self.cfs_stolen_ns,
            self.kernel_blocked_ns,
            self.blocking_call_ns,
            self.unaccounted_ns,
        ]
        .into_iter()
        .fold(0, u64::saturating_add)
    }

    /// How the analyses name it: `goroutine 31 main.worker` (a Go goroutine, by the function
    /// it started with), `task 7` otherwise.
    pub fn label(&self) -> String {
        match (&self.name, self.start_pc) {
            (Some(name), _) => format!("goroutine {} {name}", self.task),
            (None, Some(_)) => format!("goroutine {}", self.task),
            (None, None) => format!("task {}", self.task),
        }
    }

    pub fn parked_total_ns(&self) -> u64 {
        self.parked_ns.values().fold(0, |a, b| a.saturating_add(*b))
    }
}

#[derive(Clone, Copy, Debug)]
enum TaskState {
    Unknown,
    Runnable { since: u64, queue: Queue },
    Running { tid: u32, since: u64 },
    Parked { since: u64, reason: ParkReason, fd: Option<u64>, wait: Option<u8> },
    Exited,
}

struct Task {
    stats: TaskStats,
    state: TaskState,
    in_blocking_call: bool,
    last_tid: Option<u32>,
    record: bool,
    /// Who made it runnable, while it is (`None` after a yield).
    runnable_by: Option<Waker>,
    /// CFS-stolen time in the current run.
    run_stolen: u64,
    /// The time the statistics are about.
    window: Window,
}

/// Runtime transitions that contradict the ones before them (lost probe records, or a file
/// that contradicts itself). Each is counted and the model carries on from the new transition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TaskAnomalies {
    /// A run cut short by a transition that contradicts it: the task run on a thread that was
    /// running another task, run again while it ran on another thread, or spawned while it ran.
    pub conflicting_runs: u64,
    /// A park or exit from a thread the task was not running on.
    pub stray_ends: u64,
}

impl TaskAnomalies {
    pub fn total(&self) -> u64 {
        self.conflicting_runs + self.stray_ends
    }
}

/// Folds runtime transitions and the thread states under running tasks into per-task totals.
#[derive(Default)]
pub struct TaskTracker {
    tasks: FxHashMap<TaskKey, Task>,
    /// Per thread, the task running on it and when its current segment began. A task is in it
    /// under one thread at most.
    running: FxHashMap<u32, (TaskKey, u64)>,
    record_timelines: bool,
    anomalies: TaskAnomalies,
    window: Window,
    /// Samples completed so far (kept only when asked for).
    samples: Vec<Sample>,
    emit_samples: bool,
    /// Per thread, its on-CPU time (inside the window) while running a task.
    on_cpu_in_tasks: FxHashMap<u32, u64>,
}

impl TaskTracker {
    /// Counts only what happened inside `w` (intervals clipped to it).
    pub fn with_window(mut self, w: Window) -> Self {
        self.window = w;
        self
    }

    /// Also keep each completed sample until [`Self::take_samples`].
    pub fn with_samples(mut self) -> Self {
        self.emit_samples = true;
        self
    }

    /// The samples completed since the last call.
    pub fn take_samples(&mut self) -> std::vec::Drain<'_, Sample> {
        self.samples.drain(..)
    }

    fn emit(&mut self, sample: Option<Sample>) {
        if self.emit_samples
            && let Some(s) = sample
        {
            self.samples.push(s);
        }
    }

    /// Also keep every task's timeline (`TaskStats::timeline`), for exports.
    pub fn with_timelines(mut self) -> Self {
        self.record_timelines = true;
        self
    }

    /// The task running on thread `tid`, if any.
    pub fn running_task(&self, tid: u32) -> Option<u64> {
        if self.running.is_empty() {
            return None;
        }
        self.running.get(&tid).map(|((_, task), _)| *task)
    }

    /// How many tasks of process `pid` are running or runnable now: those a pause of the whole
    /// runtime holds back. (Walks every task: for rare events only.)
    pub fn active_in(&self, pid: u32) -> Vec<u64> {
        let active = |t: &Task| matches!(t.state, TaskState::Running { .. } | TaskState::Runnable { .. });
        let mut ids: Vec<u64> =
            self.tasks.iter().filter(|((p, _), t)| *p == pid && active(t)).map(|((_, id), _)| *id).collect();
        ids.sort_unstable();
        ids
    }

    /// Whether any task runs on thread `tid` (cheap, for the hot path).
    pub fn has_running(&self, tid: u32) -> bool {
        !self.running.is_empty() && self.running.contains_key(&tid)
    }

    /// Closes the current segment of the task running on `tid` (if any) at `ts`, attributing it
    /// by `state`, the thread's state over the segment. `proves_running`: the event at `ts`
    /// shows the thread running, so if the trace had it off CPU a switch-in was missed and the
    /// segment cannot be attributed.
    pub fn flush(&mut self, tid: u32, ts: u64, state: ThreadState, proves_running: bool) {
        let Some((key, since)) = self.running.get_mut(&tid) else { return };
        let dur = ts.saturating_sub(*since);
        *since = ts;
        let key = *key;
        let Some(task) = self.tasks.get_mut(&key) else { return };
        let what = match state {
            ThreadState::Running { .. } => RunSegment::OnCpu,
            ThreadState::Off { .. } if proves_running => RunSegment::Unaccounted,
            ThreadState::Off { why: OffCpu::Woken | OffCpu::Preempted | OffCpu::Throttled, .. } => {
                RunSegment::CfsStolen
            }
            ThreadState::Off { .. } if task.in_blocking_call => RunSegment::BlockingCall,
            ThreadState::Off { .. } => RunSegment::KernelBlocked,
            ThreadState::Unknown | ThreadState::Dead => RunSegment::Unaccounted,
        };
        if what == RunSegment::CfsStolen {
            task.run_stolen += dur;
        }
        let inside = task.window.clip(ts - dur, ts);
        if what == RunSegment::OnCpu {
            *self.on_cpu_in_tasks.entry(tid).or_default() += inside;
        }
        let s = &mut task.stats;
        *match what {
            RunSegment::OnCpu => &mut s.on_cpu_ns,
            RunSegment::CfsStolen => &mut s.cfs_stolen_ns,
            RunSegment::KernelBlocked => &mut s.kernel_blocked_ns,
            RunSegment::BlockingCall => &mut s.blocking_call_ns,
            RunSegment::Unaccounted => &mut s.unaccounted_ns,
        } += inside;
        task.span(ts - dur, ts, TaskSpanState::Segment { tid, what });
    }

    /// Applies a runtime transition of task `task` of process `pid`, fired on thread `tid` at
    /// `ts`. The thread's segment must have been flushed up to `ts`.
    pub fn apply(&mut self, ts: u64, pid: u32, tid: u32, task: u64, t: Transition) {
        let key = (pid, task);
        // A parked task that runs was made runnable by something the probes do not see (Go's
        // netpoller hands its goroutines straight to the run queues): a ready at the same
        // moment, by the netpoller for a netpoll park.
        // Its queue wait is not known: none is counted.
        let mut ready_unseen = false;
        if let Transition::Run { .. } = t
            && let Some(TaskState::Parked { reason, .. }) = self.tasks.get(&key).map(|e| e.state)
        {
            let waker = if reason == ParkReason::Netpoll { Waker::Netpoller } else { Waker::Other };
            self.apply(ts, pid, tid, task, Transition::Ready { waker, queue: Queue::Unknown });
            ready_unseen = true;
        }
        let (record, window) = (self.record_timelines, self.window);
        let counted = window.contains(ts);
        let entry = self.tasks.entry(key).or_insert_with(|| Task::new(key, ts, record, window));
        // Samples this transition completes, emitted once `entry` is done with.
        let mut completed: [Option<Sample>; 2] = [None, None];
        // A task runs on one thread at a time: any transition into running, or into runnable by
        // a spawn, ends the run the model has (a contradiction, counted).
        if matches!(t, Transition::Run { .. } | Transition::Spawn { .. })
            && let Some(elsewhere) = entry.running_on()
            && !matches!(t, Transition::Run { .. } if elsewhere == tid)
        {
            self.anomalies.conflicting_runs += 1;
            if self.running.get(&elsewhere).is_some_and(|(k, _)| *k == key) {
                self.running.remove(&elsewhere);
            }
        }
        match t {
            Transition::Spawn { parent, queue } => {
                entry.stats.parent = parent;
                if counted {
                    *entry.stats.wakers.entry(Waker::Spawn).or_default() += 1;
                }
                completed[0] = entry.set_state(ts, TaskState::Runnable { since: ts, queue });
                entry.runnable_by = Some(Waker::Spawn);
            }
            Transition::Ready { waker, queue } => {
                match entry.state {
                    TaskState::Parked { since, reason, wait, .. } => {
                        *entry.stats.parked_ns.entry(reason).or_default() += window.clip(since, ts);
                        if let Some(w) = wait {
                            *entry.stats.parked_by_wait.entry(w).or_default() += window.clip(since, ts);
                        }
                        if reason == ParkReason::Netpoll {
                            let on = entry.last_tid.unwrap_or(tid);
                            completed[1] = entry.sample(Metric::Netpoll, ts, ts.saturating_sub(since), on);
                        }
                    }
                    TaskState::Unknown => {}
                    // A yielded task is runnable already: the ready says where it was queued.
                    TaskState::Runnable { since, queue: Queue::Unknown } => {
                        entry.state = TaskState::Runnable { since, queue };
                        entry.runnable_by = Some(waker);
                        return;
                    }
                    // Already runnable or running: the runtime ignores a second wake-up.
                    _ => return,
                }
                if counted {
                    *entry.stats.wakers.entry(waker).or_default() += 1;
                }
                completed[0] = entry.set_state(ts, TaskState::Runnable { since: ts, queue });
                entry.runnable_by = Some(waker);
            }
            Transition::Run { p } => {
                if let TaskState::Runnable { since, queue } = entry.state
                    && !ready_unseen
                {
                    let wait = ts.saturating_sub(since);
                    entry.stats.queue_ns += window.clip(since, ts);
                    completed[1] = entry.sample(Metric::TaskQueue, ts, wait, tid);
                    if completed[1].is_some() {
                        entry.stats.queue_latencies_ns.push(wait);
                        match queue {
                            Queue::Local(q) => {
                                entry.stats.local_queue_waits += 1;
                                if p.is_some_and(|p| p != q) {
                                    entry.stats.stolen += 1;
                                }
                            }
                            Queue::Global => entry.stats.global_queue_waits += 1,
                            Queue::Unknown => {}
                        }
                    }
                }
                completed[0] = entry.start_run(ts, tid);
                if let Some((other, _)) = self.running.insert(tid, (key, ts))
                    && other != key
                {
                    // The thread was running another task: that run ends here, unfinished.
                    self.anomalies.conflicting_runs += 1;
                    if let Some(o) = self.tasks.get_mut(&other) {
                        let cut = o.set_state(ts, TaskState::Unknown);
                        self.emit(cut);
                    }
                }
            }
            Transition::Park { reason, fd, wait } => {
                // A yield leaves the task runnable (Go's Gosched queues it): its wait counts as
                // queue time, and the runtime's ready that follows changes nothing but the
                // queue it names.
                let next = if reason == ParkReason::Yield {
                    entry.stats.yields += counted as u64;
                    TaskState::Runnable { since: ts, queue: Queue::Unknown }
                } else {
                    TaskState::Parked { since: ts, reason, fd, wait }
                };
                let ran_on = entry.running_on();
                completed[0] = entry.set_state(ts, next);
                entry.runnable_by = None;
                entry.in_blocking_call = false;
                self.stop_running(key, tid, ran_on);
            }
            Transition::Exit => {
                entry.stats.exited = true;
                let ran_on = entry.running_on();
                completed[0] = entry.set_state(ts, TaskState::Exited);
                self.stop_running(key, tid, ran_on);
            }
            Transition::BlockEnter => entry.in_blocking_call = true,
            Transition::BlockExit => entry.in_blocking_call = false,
            // Observations go through `observe`.
            Transition::Observed { .. } => {}
        }
        for s in completed {
            self.emit(s);
        }
    }

    /// An observation (see the module's comment): thread `tid` of process `pid` runs task `task`
    /// (`None`: no task) at `ts`. `since`: where the stretch of the thread that ends at `ts`
    /// began (its switch-in), used when no task was on it. Call before the thread's segment is
    /// flushed to `ts`: a change of task gives the whole unflushed stretch to the new task.
    pub fn observe(&mut self, ts: u64, pid: u32, tid: u32, seen: Option<Observation>, since: u64) {
        let current = self.running.get(&tid).copied();
        let new = seen.map(|o| (pid, o.task));
        if current.map(|(k, _)| k) == new {
            // Still the same task: whether it is in a system call now decides what its thread's
            // off-CPU time after this is.
            if let Some(t) = new.and_then(|k| self.tasks.get_mut(&k)) {
                t.in_blocking_call = seen.is_some_and(|o| o.in_system_call);
            }
            return;
        }
        // The change happened somewhere in the unflushed stretch: at its start.
        let at = current.map_or(since, |(_, from)| from).min(ts);
        if let Some((old, _)) = current {
            self.running.remove(&tid);
            if let Some(o) = self.tasks.get_mut(&old) {
                let cut = o.set_state(at, TaskState::Unknown);
                self.emit(cut);
            }
        }
        let (Some(key), Some(seen)) = (new, seen) else { return };
        let (record, window) = (self.record_timelines, self.window);
        let entry = self.tasks.entry(key).or_insert_with(|| Task::new(key, at, record, window));
        if seen.start_pc != 0 {
            entry.stats.start_pc = Some(seen.start_pc);
        }
        entry.in_blocking_call = seen.in_system_call;
        // Seen on another thread until now: that run ends where this one starts.
        if let Some(elsewhere) = entry.running_on()
            && self.running.get(&elsewhere).is_some_and(|(k, _)| *k == key)
        {
            self.running.remove(&elsewhere);
        }
        let cut = entry.start_run(at, tid);
        self.running.insert(tid, (key, at));
        self.emit(cut);
    }

    /// Notes the function task `key` started with (when it is known).
    pub fn note_start_pc(&mut self, key: TaskKey, pc: u64) {
        if let Some(t) = self.tasks.get_mut(&key) {
            t.stats.start_pc = Some(pc);
        }
    }

    /// Task `key` stopped running (a park or an exit fired on `tid`); `ran_on`: the thread the
    /// model had it running on.
    fn stop_running(&mut self, key: TaskKey, tid: u32, ran_on: Option<u32>) {
        if ran_on != Some(tid) {
            self.anomalies.stray_ends += 1;
        }
        for t in [Some(tid), ran_on].into_iter().flatten() {
            if self.running.get(&t).is_some_and(|(k, _)| *k == key) {
                self.running.remove(&t);
            }
        }
    }

    /// Transitions that contradicted the ones before them, so far.
    pub fn anomalies(&self) -> TaskAnomalies {
        self.anomalies
    }

    /// Closes every running task's current segment at `end`, through its thread's state.
    pub fn flush_running(&mut self, end: u64, state_of: impl Fn(u32) -> ThreadState) {
        let tids: Vec<u32> = self.running.keys().copied().collect();
        for tid in tids {
            self.flush(tid, end, state_of(tid), false);
        }
    }

    /// Per thread, its on-CPU time while running a task (so far).
    pub fn on_cpu_in_tasks(&self) -> &FxHashMap<u32, u64> {
        &self.on_cpu_in_tasks
    }

    /// Closes every task at `end` (running ones through their thread's last state) and returns
    /// the totals, ordered by process and task id.
    pub fn finish(mut self, end: u64, state_of: impl Fn(u32) -> ThreadState) -> Vec<TaskStats> {
        self.flush_running(end, state_of);
        let mut out: Vec<TaskStats> = self
            .tasks
            .into_values()
            .map(|mut t| {
                let w = t.window;
                match t.state {
                    TaskState::Runnable { since, .. } => t.stats.queue_ns += w.clip(since, end),
                    TaskState::Parked { since, reason, wait, .. } => {
                        *t.stats.parked_ns.entry(reason).or_default() += w.clip(since, end);
                        if let Some(wait) = wait {
                            *t.stats.parked_by_wait.entry(wait).or_default() += w.clip(since, end);
                        }
                    }
                    TaskState::Running { .. } | TaskState::Unknown | TaskState::Exited => {}
                }
                // A run still going at the end is not a whole run: no sample.
                let _ = t.set_state(end, TaskState::Unknown);
                t.stats
            })
            .collect();
        out.sort_by_key(|t| (t.pid, t.task));
        out
    }
}

impl Task {
    /// A task first seen at `ts`, its state not known yet.
    fn new((pid, task): TaskKey, ts: u64, record: bool, window: Window) -> Task {
        Task {
            stats: TaskStats { pid, task, first_ts: ts, ..Default::default() },
            state: TaskState::Unknown,
            in_blocking_call: false,
            last_tid: None,
            record,
            runnable_by: None,
            run_stolen: 0,
            window,
        }
    }

    /// Starts a run on thread `tid` at `ts` (counted inside the window). Returns the sample of
    /// the state it leaves, as [`Self::set_state`].
    #[must_use]
    fn start_run(&mut self, ts: u64, tid: u32) -> Option<Sample> {
        if self.window.contains(ts) {
            self.stats.runs += 1;
            if self.last_tid.is_some_and(|last| last != tid) {
                self.stats.thread_changes += 1;
            }
        }
        self.last_tid = Some(tid);
        self.set_state(ts, TaskState::Running { tid, since: ts })
    }

    fn running_on(&self) -> Option<u32> {
        match self.state {
            TaskState::Running { tid, .. } => Some(tid),
            _ => None,
        }
    }

    /// A completed wait or run of this task, ending on `tid`: counted (inside the window) and
    /// returned for the tracker's sample list.
    fn sample(&mut self, metric: Metric, end: u64, ns: u64, tid: u32) -> Option<Sample> {
        if !self.window.contains(end) {
            return None;
        }
        self.stats.samples.add(metric);
        Some(Sample {
            metric,
            end,
            ns,
            tid,
            pid: self.stats.pid,
            cpu: NO_CPU,
            task: Some(self.stats.task),
            stacks: super::samples::NO_STACKS,
            waker: None,
        })
    }

    /// Moves to `new` at `ts`, closing the run interval or the timeline span of the state it
    /// leaves. Returns the CFS-stolen sample of a run that ends here, if it had any.
    #[must_use]
    fn set_state(&mut self, ts: u64, new: TaskState) -> Option<Sample> {
        let mut run_sample = None;
        let left = match self.state {
            TaskState::Running { tid, since } => {
                if self.window.clip(since, ts) > 0 || self.window.contains(ts) {
                    self.stats.run_intervals.push(RunInterval { start: since, end: ts, tid });
                }
                let stolen = std::mem::take(&mut self.run_stolen);
                if stolen > 0 {
                    run_sample = self.sample(Metric::CfsStolen, ts, stolen, tid);
                }
                Some((since, TaskSpanState::Running { tid }))
            }
            TaskState::Runnable { since, queue } => {
                Some((since, TaskSpanState::Runnable { queue, waker: self.runnable_by }))
            }
            TaskState::Parked { since, reason, fd, .. } => {
                Some((since, TaskSpanState::Parked { reason, fd }))
            }
            TaskState::Unknown | TaskState::Exited => None,
        };
        if let Some((start, state)) = left {
            self.span(start, ts, state);
        }
        self.state = new;
        run_sample
    }

    /// Adds a span to the timeline (when it is kept), merging a segment into the one before it
    /// when they are the same.
    fn span(&mut self, start: u64, end: u64, state: TaskSpanState) {
        if !self.record || end <= start {
            return;
        }
        if let TaskSpanState::Segment { .. } = state
            && let Some(last) = self.stats.timeline.last_mut()
            && last.state == state
            && last.end == start
        {
            last.end = end;
            return;
        }
        self.stats.timeline.push(TaskSpan { start, end, state });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNING: ThreadState = ThreadState::Running { since: 0, cpu: 0 };
    fn off(why: OffCpu) -> ThreadState {
        ThreadState::Off { since: 0, why }
    }

    #[test]
    fn a_task_life_splits_into_queue_running_and_parked_time() {
        let mut t = TaskTracker::default();
        t.apply(100, 1, 10, 7, Transition::Spawn { parent: None, queue: Queue::Local(0) });
        t.apply(150, 1, 10, 7, Transition::Run { p: Some(0) }); // queued 50
        // Its thread is preempted at 200 and back at 260: 60 CFS-stolen.
        t.flush(10, 200, RUNNING, false);
        t.flush(10, 260, off(OffCpu::Preempted), false);
        t.flush(10, 300, RUNNING, false);
        t.apply(300, 1, 10, 7, Transition::Park { reason: ParkReason::Netpoll, fd: Some(5), wait: None });
        t.apply(900, 1, 11, 7, Transition::Ready { waker: Waker::Netpoller, queue: Queue::Local(1) }); // parked 600
        t.apply(920, 1, 11, 7, Transition::Run { p: Some(0) }); // queued 20, on another thread
        t.flush(11, 1_000, RUNNING, false);
        t.apply(1_000, 1, 11, 7, Transition::Exit);
        let s = &t.finish(2_000, |_| RUNNING)[0];
        assert_eq!((s.on_cpu_ns, s.cfs_stolen_ns, s.queue_ns), (50 + 40 + 80, 60, 70));
        assert_eq!(s.parked_ns.get(&ParkReason::Netpoll), Some(&600));
        assert_eq!(s.queue_latencies_ns, vec![50, 20]);
        assert_eq!((s.runs, s.thread_changes, s.exited), (2, 1, true));
        assert_eq!(
            s.run_intervals,
            vec![
                RunInterval { start: 150, end: 300, tid: 10 },
                RunInterval { start: 920, end: 1_000, tid: 11 }
            ]
        );
        assert_eq!(s.running_ns(), 300 - 150 + 1_000 - 920);
    }

    #[test]
    fn blocking_sections_and_unknowable_windows() {
        let mut t = TaskTracker::default();
        t.apply(0, 1, 10, 3, Transition::Run { p: Some(0) });
        t.apply(10, 1, 10, 3, Transition::BlockEnter);
        t.flush(10, 20, RUNNING, false);
        t.flush(10, 70, off(OffCpu::Sleeping), false); // in the blocking read
        t.apply(70, 1, 10, 3, Transition::BlockExit);
        t.flush(10, 90, off(OffCpu::Sleeping), false); // a page fault outside the section
        t.flush(10, 95, off(OffCpu::Preempted), true); // a switch-in the trace missed
        let s = &t.finish(100, |_| RUNNING)[0];
        assert_eq!((s.blocking_call_ns, s.kernel_blocked_ns, s.unaccounted_ns), (50, 20, 5));
        assert_eq!(s.on_cpu_ns, 20 + 5);
    }

    #[test]
    fn a_second_wake_up_of_a_runnable_task_changes_nothing() {
        let mut t = TaskTracker::default();
        t.apply(0, 1, 10, 3, Transition::Spawn { parent: Some(1), queue: Queue::Global });
        t.apply(5, 1, 10, 3, Transition::Ready { waker: Waker::Task(2), queue: Queue::Global });
        t.apply(8, 1, 10, 3, Transition::Run { p: Some(0) });
        let s = &t.finish(8, |_| RUNNING)[0];
        assert_eq!(s.queue_latencies_ns, vec![8]);
        assert_eq!(s.wakers.get(&Waker::Task(2)), None);
        assert_eq!(s.parent, Some(1));
    }

    #[test]
    fn an_observed_task_owns_its_thread_from_the_stretch_it_was_seen_in() {
        let mut t = TaskTracker::default();
        // Goroutine 7 seen at a switch-out at 100, its thread on CPU since 50.
        let seen = |task, start_pc| Some(Observation { task, start_pc, in_system_call: false });
        t.observe(100, 1, 10, seen(7, 0xabc), 50);
        t.flush(10, 100, RUNNING, false);
        // Preempted at 100, back at 160: CFS-stolen, the runtime still has it running.
        t.flush(10, 160, off(OffCpu::Preempted), false);
        // At 200 the thread runs goroutine 8: it takes the stretch since 160.
        t.observe(200, 1, 10, seen(8, 0), 160);
        t.flush(10, 200, RUNNING, false);
        // At 250 no goroutine (the caller flushes first): 8 keeps the stretch to 250.
        t.flush(10, 250, RUNNING, false);
        t.observe(250, 1, 10, None, 250);
        t.flush(10, 270, RUNNING, false);
        // The same goroutine seen again on the same thread changes nothing.
        t.observe(300, 1, 11, seen(7, 0xabc), 280);
        t.observe(320, 1, 11, seen(7, 0xabc), 280);
        t.flush(11, 320, RUNNING, false);
        assert_eq!(t.anomalies().total(), 0, "observations never contradict each other");
        let all = t.finish(400, |_| RUNNING);
        let (seven, eight) = (&all[0], &all[1]);
        // On thread 11 from 280 to the end (400).
        assert_eq!((seven.task, seven.on_cpu_ns, seven.cfs_stolen_ns), (7, 50 + 120, 60));
        assert_eq!((seven.runs, seven.thread_changes, seven.start_pc), (2, 1, Some(0xabc)));
        assert_eq!((eight.task, eight.on_cpu_ns, eight.cfs_stolen_ns, eight.runs), (8, 90, 0, 1));
        assert_eq!(eight.run_intervals, vec![RunInterval { start: 160, end: 250, tid: 10 }]);
    }

    const NO_NAMES: BTreeMap<u64, String> = BTreeMap::new();

    #[test]
    fn reads_the_go_scheduler_probes() {
        let names: BTreeMap<u64, String> = [
            (2, "waitReasonIOWait"),
            (14, "waitReasonChanReceive"),
            (19, "waitReasonSleep"),
            (3, "waitReasonGCWorkerIdle"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
        let park = |reason| transition("go", "gopark", &names, &[9, reason]).map(|(_, t)| t);
        assert_eq!(park(2), Some(Transition::Park { reason: ParkReason::Netpoll, fd: None, wait: Some(2) }));
        assert_eq!(
            park(14),
            Some(Transition::Park { reason: ParkReason::Channel, fd: None, wait: Some(14) })
        );
        assert_eq!(park(19), Some(Transition::Park { reason: ParkReason::Timer, fd: None, wait: Some(19) }));
        assert_eq!(park(3), Some(Transition::Park { reason: ParkReason::Other, fd: None, wait: Some(3) }));
        assert_eq!(transition("go", "execute", &names, &[9, 0x4a0]), Some((9, Transition::Run { p: None })));
        assert_eq!(transition("go", "execute", &names, &[0, 0]), None, "goid 0 is no goroutine");
        let ready = |args: &[u64]| transition("go", "ready", &names, args).map(|(_, t)| t);
        assert_eq!(ready(&[9, 4]), Some(Transition::Ready { waker: Waker::Task(4), queue: Queue::Unknown }));
        assert_eq!(ready(&[9, 0]), Some(Transition::Ready { waker: Waker::Other, queue: Queue::Unknown }));
        let np = |args: &[u64]| transition("go", "netpollready", &names, args).map(|(g, _)| g);
        assert_eq!(
            (np(&[5, 6, b'r' as u64]), np(&[5, 6, b'w' as u64]), np(&[0, 6, 233])),
            (Some(5), Some(6), Some(6))
        );
        assert_eq!(np(&[0, 0, b'r' as u64]), None);
        // A netpoll park that runs again was readied by the netpoller, unseen.
        let mut t = TaskTracker::default();
        t.apply(0, 1, 10, 9, Transition::Run { p: None });
        t.apply(10, 1, 10, 9, park(2).unwrap());
        t.apply(50, 1, 11, 9, Transition::Run { p: None });
        let s = &t.finish(60, |_| RUNNING)[0];
        assert_eq!(s.parked_ns.get(&ParkReason::Netpoll), Some(&40));
        assert_eq!((s.parked_by_wait.get(&2), s.wakers.get(&Waker::Netpoller)), (Some(&40), Some(&1)));
        assert_eq!(s.samples.get(Metric::Netpoll), 1);
        // The ready unseen, its queue wait is not known: no zero-length one is counted.
        assert_eq!((s.samples.get(Metric::TaskQueue), s.queue_latencies_ns.len()), (0, 0));
    }

    #[test]
    fn go_status_changes_bracket_system_calls() {
        let statuses: BTreeMap<u64, String> =
            [(1, "_Grunnable"), (2, "_Grunning"), (3, "_Gsyscall"), (4, "_Gwaiting")]
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect();
        let cas =
            |old: u64, new: u64| transition("go", "casgstatus", &statuses, &[9, old, new]).map(|(_, t)| t);
        assert_eq!(cas(2, 3), Some(Transition::BlockEnter));
        assert_eq!(cas(3, 2), Some(Transition::BlockExit));
        // The scan bit (a GC scanning the stack) is not a status of its own.
        assert_eq!(cas(3 | 0x1000, 2), Some(Transition::BlockExit));
        assert_eq!(cas(3, 1), Some(Transition::Park { reason: ParkReason::Yield, fd: None, wait: None }));
        assert_eq!((cas(1, 2), cas(2, 4)), (None, None), "the other probes say those");
        // The system call probes (Go 1.26 changes the status for one without casgstatus).
        let call = |name| transition("go", name, &statuses, &[9]).map(|(_, t)| t);
        assert_eq!(
            (call("syscall_enter"), call("syscall_enter_block"), call("syscall_exit")),
            (Some(Transition::BlockEnter), Some(Transition::BlockEnter), Some(Transition::BlockExit))
        );
        assert_eq!(call("syscall_exit_no_p"), cas(3, 1));
        // Asleep in the kernel inside a system call: blocking-call time, not kernel-blocked.
        let mut t = TaskTracker::default();
        t.apply(0, 1, 10, 9, Transition::Run { p: None });
        t.flush(10, 10, RUNNING, false);
        t.apply(10, 1, 10, 9, cas(2, 3).unwrap());
        t.flush(10, 30, off(OffCpu::Sleeping), false);
        t.apply(30, 1, 10, 9, cas(3, 2).unwrap());
        t.flush(10, 35, RUNNING, false);
        t.flush(10, 45, off(OffCpu::Sleeping), false);
        let s = &t.finish(45, |_| RUNNING)[0];
        assert_eq!((s.on_cpu_ns, s.blocking_call_ns, s.kernel_blocked_ns), (15, 20, 10));
    }

    #[test]
    fn reads_the_go_identity_records() {
        let statuses: BTreeMap<u64, String> =
            [(2, "_Grunning"), (3, "_Gsyscall")].into_iter().map(|(k, v)| (k, v.to_string())).collect();
        let seen = |args: &[u64]| transition("go", "goroutine", &statuses, args);
        assert_eq!(
            seen(&[31, 0x4a0, 2, 0, 0]),
            Some((31, Transition::Observed { start_pc: 0x4a0, in_system_call: false }))
        );
        assert_eq!(
            seen(&[31, 0x4a0, 3, 0, 0]),
            Some((31, Transition::Observed { start_pc: 0x4a0, in_system_call: true }))
        );
        assert_eq!(
            seen(&[31, 0x4a0, 0x1003, 0, 0]),
            Some((31, Transition::Observed { start_pc: 0x4a0, in_system_call: true })),
            "scanned by the GC while in a system call"
        );
        assert_eq!(
            transition("go", "goroutine", &NO_NAMES, &[0, 0, 0, 0, 1]),
            Some((0, Transition::Observed { start_pc: 0, in_system_call: false }))
        );
        assert_eq!(transition("go", "other", &NO_NAMES, &[1, 2, 3, 4, 5]), None);
    }

    #[test]
    fn reads_the_reference_runtime_probes() {
        let a = [7, 3, 2, 0, 0];
        assert_eq!(
            transition("refrt", "task_ready", &NO_NAMES, &a),
            Some((7, Transition::Ready { waker: Waker::Netpoller, queue: Queue::Local(0) }))
        );
        let park = [7, 1, 9, 0, 0];
        assert_eq!(
            transition("refrt", "task_park", &NO_NAMES, &park),
            Some((7, Transition::Park { reason: ParkReason::Netpoll, fd: Some(9), wait: None }))
        );
        assert_eq!(transition("refrt", "steal", &NO_NAMES, &a), None);
        assert_eq!(transition("other", "task_run", &NO_NAMES, &a), None);
    }
}
