//! Correlation: rebuilds, from a trace file alone, what happened to every thread (and, with the
//! runtime probes, every user task) and folds it into statistics.

pub mod tasks;
pub mod threads;

use crate::trace::{EventKind, TraceError, TraceInfo, TraceReader, TraceTables, TraceTarget};
pub use tasks::{
    ParkReason, Queue, RunInterval, RunSegment, TaskSpan, TaskSpanState, TaskStats, TaskTracker, Transition,
    Waker,
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
    /// First and last event timestamps.
    pub first_ts: u64,
    pub last_ts: u64,
}

/// The threads a trace is about.
pub fn scope_of(info: &TraceInfo) -> Scope {
    match &info.target {
        TraceTarget::SystemWide => Scope::AllBut(info.recorder_pid),
        TraceTarget::Pids { pids } => Scope::Pids(pids.clone()),
        TraceTarget::Command { pid, .. } => Scope::Pids(vec![*pid]),
    }
}

/// Folds events, in timestamp order, into the thread, CPU and task views at once.
pub struct Correlator {
    pub threads: ThreadTracker,
    pub tasks: TaskTracker,
    pub user_probe_hits: std::collections::BTreeMap<u32, u64>,
}

impl Correlator {
    pub fn new(scope: Scope) -> Self {
        Correlator {
            threads: ThreadTracker::new(scope),
            tasks: TaskTracker::default(),
            user_probe_hits: Default::default(),
        }
    }

    /// Also keep the timelines of every thread and task (for exports).
    pub fn with_timelines(self) -> Self {
        Correlator {
            threads: self.threads.with_timelines(),
            tasks: self.tasks.with_timelines(),
            user_probe_hits: self.user_probe_hits,
        }
    }

    /// Takes one event. `probe` names the user-level probe of a `UserTask` event
    /// (provider, name), from the trace's probe table.
    pub fn event(&mut self, e: &crate::trace::Event, probe: Option<(&str, &str)>) {
        // Close the segments of tasks running on the threads this event concerns, with the
        // thread state that held until now.
        let proves_running =
            !matches!(e.kind, EventKind::Switch(_) | EventKind::Rename { .. } | EventKind::CpuSample { .. });
        if self.tasks.has_running(e.tid) {
            self.tasks.flush(e.tid, e.ts, self.threads.state(e.tid), proves_running);
        }
        for (tid, _) in e.other_tids() {
            if self.tasks.has_running(tid) {
                self.tasks.flush(tid, e.ts, self.threads.state(tid), false);
            }
        }
        self.threads.event(e);
        if let EventKind::UserTask { probe: index, args, .. } = e.kind {
            *self.user_probe_hits.entry(index).or_default() += 1;
            if let Some((task, t)) =
                probe.and_then(|(provider, name)| tasks::transition(provider, name, &args))
            {
                self.tasks.apply(e.ts, e.pid, e.tid, task, t);
            }
        }
    }

    pub fn finish(
        self,
        end: u64,
    ) -> (Vec<ThreadStats>, Vec<CpuStats>, Vec<TaskStats>, std::collections::BTreeMap<u32, u64>) {
        let threads = &self.threads;
        let tasks = self.tasks.finish(end, |tid| threads.state(tid));
        let (threads, cpus) = self.threads.finish_with_cpus(end);
        (threads, cpus, tasks, self.user_probe_hits)
    }
}

/// Reads the whole trace and correlates it.
pub fn correlate<R: std::io::Read>(reader: TraceReader<R>) -> Result<Correlation, TraceError> {
    run(reader, false)
}

/// Like [`correlate`], keeping every thread's and task's timeline too (`timeline` fields).
pub fn correlate_with_timelines<R: std::io::Read>(reader: TraceReader<R>) -> Result<Correlation, TraceError> {
    run(reader, true)
}

fn run<R: std::io::Read>(mut reader: TraceReader<R>, timelines: bool) -> Result<Correlation, TraceError> {
    let mut c = Correlator::new(scope_of(reader.info()));
    if timelines {
        c = c.with_timelines();
    }
    let info = reader.info();
    for &pid in &info.asleep_at_start {
        c.threads.asleep(pid, pid, info.start_ns);
    }
    let mut first_ts = None;
    while let Some(e) = reader.next_event()? {
        first_ts.get_or_insert(e.ts);
        let probe = match e.kind {
            EventKind::UserTask { probe, .. } => {
                reader.user_probe(probe).map(|p| (p.provider.as_str(), p.name.as_str()))
            }
            _ => None,
        };
        c.event(&e, probe);
    }
    let info = reader.info().clone();
    let tables = reader.into_tables()?;
    let last_ts = tables.last_ts;
    let (threads, cpus, tasks, user_probe_hits) = c.finish(last_ts);
    Ok(Correlation {
        threads,
        cpus,
        tasks,
        user_probe_hits,
        first_ts: first_ts.unwrap_or(info.start_ns),
        last_ts,
        info,
        tables,
    })
}
