//! Correlation: rebuilds, from a trace file alone, what happened to every thread (and, with the
//! runtime probes, every user task) and folds it into statistics.

pub mod pauses;
pub mod samples;
pub mod tasks;
pub mod threads;

use crate::trace::{EventKind, TraceError, TraceInfo, TraceReader, TraceTables, TraceTarget};
pub use samples::{Metric, NO_CPU, Sample, Window};
pub use tasks::{
    ParkReason, Queue, RunInterval, RunSegment, TaskAnomalies, TaskSpan, TaskSpanState, TaskStats,
    TaskTracker, Transition, Waker,
};
pub use threads::{
    CpuStats, IRQ_WAKER, OffCpu, Scope, SpanState, ThreadSpan, ThreadState, ThreadStats, ThreadTracker,
};

/// Everything the analyses know about one trace.
#[derive(Debug)]
pub struct Correlation {
    pub info: TraceInfo,
    pub tables: TraceTables,
    pub threads: Vec<ThreadStats>,
    pub cpus: Vec<CpuStats>,
    /// User-level tasks, by process and task id.
    pub tasks: Vec<TaskStats>,
    /// Hits per user-level probe (index into `info.user_probes`).
    pub user_probe_hits: std::collections::BTreeMap<u32, u64>,
    /// Runtime transitions that contradicted the ones before them.
    pub task_anomalies: TaskAnomalies,
    /// Stop-the-world pauses of the traced runtimes (Go's full level).
    pub pauses: Vec<pauses::RuntimePause>,
    /// First and last event timestamps.
    pub first_ts: u64,
    pub last_ts: u64,
}

/// What a correlation could not place as the file had it: events the reader dropped or moved
/// (impossible CPUs or ids, time running backwards) and runtime transitions that contradicted
/// the ones before them. The report and the export state these counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Unplaced {
    pub rejected: crate::trace::validate::Rejected,
    pub task_anomalies: TaskAnomalies,
}

impl Unplaced {
    pub fn total(&self) -> u64 {
        self.rejected.total() + self.task_anomalies.total()
    }

    /// Each non-zero count, in words.
    pub fn describe(&self) -> Vec<String> {
        let (r, t) = (&self.rejected, &self.task_anomalies);
        [
            (r.backwards_time, "events earlier than events before them (moved forward in time)"),
            (r.bad_cpu, "events naming CPUs the host did not have (dropped)"),
            (r.bad_id, "events naming impossible thread ids (dropped)"),
            (t.conflicting_runs, "task runs that cut another run short"),
            (t.stray_ends, "task parks or exits off the task's thread"),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, text)| format!("{} {text}", crate::units::count(n)))
        .collect()
    }
}

impl Correlation {
    pub fn unplaced(&self) -> Unplaced {
        Unplaced { rejected: self.tables.rejected, task_anomalies: self.task_anomalies }
    }
}

/// The threads a trace is about.
pub fn scope_of(info: &TraceInfo) -> Scope {
    match &info.target {
        TraceTarget::SystemWide => Scope::AllBut(info.recorder_pid),
        TraceTarget::Pids { pids } => Scope::Pids(pids.clone()),
        TraceTarget::Command { pid, .. } => Scope::Pids(vec![*pid]),
        // Each process comes in by a cgroup record that says so (the recorder writes one for
        // those already there).
        TraceTarget::Cgroups { .. } => Scope::Pids(Vec::new()),
    }
}

/// Folds events, in timestamp order, into the thread, CPU and task views at once.
pub struct Correlator {
    pub threads: ThreadTracker,
    pub tasks: TaskTracker,
    pub pauses: pauses::PauseTracker,
    pub user_probe_hits: std::collections::BTreeMap<u32, u64>,
}

impl Correlator {
    pub fn new(scope: Scope) -> Self {
        Correlator {
            threads: ThreadTracker::new(scope),
            tasks: TaskTracker::default(),
            pauses: Default::default(),
            user_probe_hits: Default::default(),
        }
    }

    /// Also keep the timelines of every thread and task (for exports).
    pub fn with_timelines(self) -> Self {
        Correlator { threads: self.threads.with_timelines(), tasks: self.tasks.with_timelines(), ..self }
    }

    /// Counts only what happened inside `w`.
    pub fn with_window(self, w: Window) -> Self {
        Correlator {
            threads: self.threads.with_window(w),
            tasks: self.tasks.with_window(w),
            pauses: pauses::PauseTracker::with_window(w),
            ..self
        }
    }

    /// Also keep every completed sample until [`Self::take_samples`].
    pub fn with_samples(self) -> Self {
        Correlator { threads: self.threads.with_samples(), tasks: self.tasks.with_samples(), ..self }
    }

    /// Hands `f` the samples the events so far completed (threads', then tasks'), in place:
    /// this runs after every event, so it allocates nothing.
    pub fn take_samples(&mut self, mut f: impl FnMut(&Sample)) {
        let (threads, tasks) = (&mut self.threads, &mut self.tasks);
        // A thread's wait names the task the runtime had on it; a task's stolen time the stacks
        // its thread was preempted with.
        for mut s in threads.take_samples() {
            s.task = tasks.running_task(s.tid);
            f(&s);
        }
        for mut s in tasks.take_samples() {
            if s.metric == Metric::CfsStolen {
                s.stacks = threads.out_stacks(s.tid);
            }
            f(&s);
        }
    }

    /// The user task running on thread `tid` now, as the runtime's probes tell.
    pub fn task_on(&self, tid: u32) -> Option<u64> {
        self.tasks.running_task(tid)
    }

    /// Takes one event. `probe` is the user-level probe of a `UserTask` event, from the
    /// trace's probe table.
    pub fn event(&mut self, e: &crate::trace::Event, probe: Option<&crate::trace::UserProbe>) {
        let transition = match e.kind {
            EventKind::UserTask { args, .. } => {
                probe.and_then(|p| tasks::transition(&p.provider, &p.name, &p.reasons, &args))
            }
            _ => None,
        };
        // An observation of a task comes before the flush: a new task takes the stretch since
        // the last event on the thread. One of no task comes after it: the last task keeps the
        // stretch (see `tasks`).
        let observed = match transition {
            Some((task, Transition::Observed { start_pc, in_system_call })) => {
                Some((task != 0).then_some(tasks::Observation { task, start_pc, in_system_call }))
            }
            _ => None,
        };
        if let Some(Some(seen)) = observed {
            let since = match self.threads.state(e.tid) {
                ThreadState::Running { since, .. } => since,
                _ => e.ts,
            };
            self.tasks.observe(e.ts, e.pid, e.tid, Some(seen), since);
        }
        // Close the segments of tasks running on the threads this event concerns, with the
        // thread state that held until now.
        let proves_running = e.kind.proves_current();
        if self.tasks.has_running(e.tid) {
            self.tasks.flush(e.tid, e.ts, self.threads.state(e.tid), proves_running);
        }
        for (tid, _) in e.other_tids() {
            if self.tasks.has_running(tid) {
                self.tasks.flush(tid, e.ts, self.threads.state(tid), false);
            }
        }
        if let Some(None) = observed {
            self.tasks.observe(e.ts, e.pid, e.tid, None, e.ts);
        }
        self.threads.event(e);
        if let EventKind::UserTask { probe: index, args, .. } = e.kind {
            *self.user_probe_hits.entry(index).or_default() += 1;
            if let Some(p) = probe
                && pauses::PauseTracker::wants(&p.provider, &p.name)
            {
                let active = self.tasks.active_in(e.pid);
                self.pauses.probe(p, &args, e.ts, e.pid, active);
            }
            if let Some((task, t)) = transition
                && !matches!(t, Transition::Observed { .. })
            {
                self.tasks.apply(e.ts, e.pid, e.tid, task, t);
                if let (Some(p), EventKind::UserTask { args, .. }) = (probe, &e.kind)
                    && let Some(pc) = tasks::start_pc_of(&p.provider, &p.name, args)
                {
                    self.tasks.note_start_pc((e.pid, task), pc);
                }
            }
        }
    }

    /// Closes every timeline at `end`.
    pub fn finish(mut self, end: u64) -> Finished {
        let threads = &self.threads;
        let task_anomalies = self.tasks.anomalies();
        self.tasks.flush_running(end, |tid| threads.state(tid));
        let on_cpu_in_tasks = self.tasks.on_cpu_in_tasks().clone();
        let tasks = self.tasks.finish(end, |tid| threads.state(tid));
        let (threads, cpus) = self.threads.finish_with_cpus(end);
        Finished {
            threads,
            cpus,
            tasks,
            pauses: self.pauses.finish(),
            user_probe_hits: self.user_probe_hits,
            task_anomalies,
            on_cpu_in_tasks,
        }
    }
}

/// What a [`Correlator`] ends with.
pub struct Finished {
    pub threads: Vec<ThreadStats>,
    pub cpus: Vec<CpuStats>,
    pub tasks: Vec<TaskStats>,
    pub pauses: Vec<pauses::RuntimePause>,
    pub user_probe_hits: std::collections::BTreeMap<u32, u64>,
    pub task_anomalies: TaskAnomalies,
    /// Per thread, its on-CPU time while it ran a user task.
    pub on_cpu_in_tasks: rustc_hash::FxHashMap<u32, u64>,
}

/// Names what the trace's tables name of its tasks (goroutines): the function each started
/// with, and the wait reasons it parked for.
pub fn name_tasks(tasks: &mut [TaskStats], tables: &TraceTables) {
    if tables.go_start_functions.is_empty() && tables.go_processes.is_empty() {
        return;
    }
    for t in tasks {
        if let Some(pc) = t.start_pc {
            t.name = tables.go_start_functions.get(&(t.pid, pc)).cloned();
        }
        let Some(p) = tables.go_processes.iter().find(|p| p.pid == t.pid) else { continue };
        for (&wait, &ns) in &t.parked_by_wait {
            let name = p
                .wait_reasons
                .get(&u64::from(wait))
                .cloned()
                .unwrap_or_else(|| format!("waitReason({wait})"));
            *t.parked_by_wait_name.entry(name).or_default() += ns;
        }
    }
}

/// How to correlate a trace.
#[derive(Default)]
pub struct Options<'a> {
    /// Keep every thread's and task's timeline (`timeline` fields), for exports.
    pub timelines: bool,
    /// Count only this stretch of time.
    pub window: Window,
    /// Called with every sample, in the order they complete.
    pub on_sample: Option<&'a mut dyn FnMut(&Sample)>,
}

/// Reads the whole trace and correlates it.
pub fn correlate<R: std::io::Read>(reader: TraceReader<R>) -> Result<Correlation, TraceError> {
    correlate_with(reader, Options::default())
}

/// Like [`correlate`], keeping every thread's and task's timeline too (`timeline` fields).
pub fn correlate_with_timelines<R: std::io::Read>(reader: TraceReader<R>) -> Result<Correlation, TraceError> {
    correlate_with(reader, Options { timelines: true, ..Default::default() })
}

/// Reads the whole trace and correlates it as `opts` say.
pub fn correlate_with<R: std::io::Read>(
    mut reader: TraceReader<R>,
    mut opts: Options,
) -> Result<Correlation, TraceError> {
    let mut c = Correlator::new(scope_of(reader.info())).with_window(opts.window);
    if opts.timelines {
        c = c.with_timelines();
    }
    if opts.on_sample.is_some() {
        c = c.with_samples();
    }
    let info = reader.info();
    for &pid in &info.asleep_at_start {
        c.threads.asleep(pid, pid, info.start_ns);
    }
    let mut first_ts = None;
    while let Some(e) = reader.next_event()? {
        first_ts.get_or_insert(e.ts);
        let probe = match e.kind {
            EventKind::UserTask { probe, .. } => reader.user_probe(probe),
            _ => None,
        };
        c.event(&e, probe);
        if let Some(f) = opts.on_sample.as_mut() {
            c.take_samples(|s| f(s));
        }
    }
    let info = reader.info().clone();
    let tables = reader.into_tables()?;
    let last_ts = tables.last_ts;
    let Finished { threads, cpus, mut tasks, pauses, user_probe_hits, task_anomalies, .. } =
        c.finish(last_ts);
    name_tasks(&mut tasks, &tables);
    Ok(Correlation {
        threads,
        cpus,
        tasks,
        user_probe_hits,
        task_anomalies,
        pauses,
        first_ts: first_ts.unwrap_or(info.start_ns),
        last_ts,
        info,
        tables,
    })
}
