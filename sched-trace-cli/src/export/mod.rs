//! `sched-trace export`: the correlated timelines as tracks a trace viewer opens.
//!
//! One track per traced thread (its kernel state: running, runnable after a wake-up or a
//! preemption, sleeping, in epoll, blocked), one per CPU (which traced thread ran on it), and one
//! per user-level task under its process (runnable in a runtime queue, running on a thread, parked
//! and why; inside a run, the stretches where its thread was not on a CPU: CFS-stolen, blocked).
//! [`Tracks::build`] makes that model from a correlation; [`perfetto`] and [`chrome`] write it.

pub mod chrome;
pub mod perfetto;

use std::{collections::BTreeMap, path::PathBuf};

use crate::{
    correlate::{Correlation, OffCpu, Queue, RunSegment, SpanState, TaskSpanState, Waker},
    filter::Filter,
    trace::{TaskNames, TraceError},
};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding the Perfetto trace for {path}: {source}")]
    Protobuf {
        path: PathBuf,
        #[source]
        source: protobuf::Error,
    },
    #[error(transparent)]
    Trace(#[from] TraceError),
}

/// A slice argument (shown in the viewer's details pane).
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    Int(i64),
    Str(String),
}

/// One slice on a track. `depth` 1 is nested inside the depth-0 slice that contains it.
#[derive(Clone, Debug, PartialEq)]
pub struct Slice {
    pub start: u64,
    pub end: u64,
    pub name: String,
    pub depth: u8,
    pub args: Vec<(&'static str, Arg)>,
}

#[derive(Clone, Debug)]
pub struct ThreadTrack {
    pub tid: u32,
    pub pid: u32,
    pub name: String,
    pub slices: Vec<Slice>,
}

#[derive(Clone, Debug)]
pub struct CpuTrack {
    pub cpu: u16,
    pub slices: Vec<Slice>,
}

#[derive(Clone, Debug)]
pub struct TaskTrack {
    pub pid: u32,
    pub task: u64,
    /// Its name (`task 7`, `goroutine 31 main.worker`).
    pub label: String,
    pub slices: Vec<Slice>,
}

/// A cgroup's throttled stretches: while at least one of its threads was switched out
/// because the cgroup's CPU quota ran out, until they all ran again.
#[derive(Clone, Debug)]
pub struct CgroupTrack {
    /// `cgroup /app (throttled)`.
    pub name: String,
    pub slices: Vec<Slice>,
}

/// Everything an export shows.
#[derive(Clone, Debug, Default)]
pub struct Tracks {
    /// Processes of the traced threads and tasks: pid → name.
    pub processes: BTreeMap<u32, String>,
    pub threads: Vec<ThreadTrack>,
    pub cpus: Vec<CpuTrack>,
    pub tasks: Vec<TaskTrack>,
    pub cgroups: Vec<CgroupTrack>,
}

/// What an export wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExportSummary {
    pub processes: usize,
    pub threads: usize,
    pub cpus: usize,
    pub tasks: usize,
    pub slices: usize,
}

impl Tracks {
    /// The tracks of a correlation made with timelines
    /// ([`crate::correlate::correlate_with_timelines`]).
    pub fn build(c: &Correlation) -> Tracks {
        Self::build_filtered(c, &Filter::default())
    }

    /// The tracks of the threads, tasks and CPUs `filter` selects, clipped to its window.
    pub fn build_filtered(c: &Correlation, filter: &Filter) -> Tracks {
        let filter = &filter.with_cgroups(&c.tables.cgroups);
        let names = TaskNames::new(&c.tables.tasks);
        let window = filter.window(c.info.start_ns);
        // The part of a span inside the window, if any.
        let clip = |start: u64, end: u64| {
            let (s, e) = (start.max(window.from), end.min(window.to));
            (e > s).then_some((s, e))
        };
        let mut processes = BTreeMap::new();
        let mut cpus: BTreeMap<u16, Vec<Slice>> = BTreeMap::new();
        let mut threads = Vec::new();
        for t in &c.threads {
            if t.timeline.is_empty()
                || !filter.thread(t.tid, t.pid, &names)
                || filter.cpu.is_some_and(|cpu| !t.ran_on.contains(&cpu))
            {
                continue;
            }
            let name = names.display(t.tid);
            processes.entry(t.pid).or_insert_with(|| names.display(t.pid));
            let mut slices = Vec::with_capacity(t.timeline.len());
            for span in &t.timeline {
                let Some((start, end)) = clip(span.start, span.end) else { continue };
                let (label, args) = match span.state {
                    SpanState::Running { cpu, vruntime, weight } => {
                        cpus.entry(cpu).or_default().push(Slice {
                            start,
                            end,
                            name: format!("{name} {}", t.tid),
                            depth: 0,
                            args: vec![("tid", Arg::Int(t.tid as i64)), ("pid", Arg::Int(t.pid as i64))],
                        });
                        let mut args = vec![("cpu", Arg::Int(cpu as i64))];
                        if vruntime != 0 {
                            args.push(("vruntime at switch-out", Arg::Int(vruntime as i64)));
                        }
                        if weight != 0 {
                            args.push(("weight", Arg::Int(weight as i64)));
                        }
                        ("Running", args)
                    }
                    SpanState::Off { why, waker } => {
                        let args = match waker {
                            Some(w) => vec![("woken by", Arg::Str(format!("{} {w}", names.display(w))))],
                            None => Vec::new(),
                        };
                        (off_cpu_label(why), args)
                    }
                    SpanState::Unattributed => ("Unknown (switch-in not traced)", Vec::new()),
                };
                slices.push(Slice { start, end, name: label.into(), depth: 0, args });
            }
            threads.push(ThreadTrack { tid: t.tid, pid: t.pid, name, slices: well_nested(slices) });
        }
        let mut tasks = Vec::new();
        for t in &c.tasks {
            if t.timeline.is_empty() || !filter.task(t, &names) {
                continue;
            }
            processes.entry(t.pid).or_insert_with(|| names.display(t.pid));
            let mut slices = Vec::with_capacity(t.timeline.len());
            for span in &t.timeline {
                let Some((start, end)) = clip(span.start, span.end) else { continue };
                let (name, depth, args) = match span.state {
                    TaskSpanState::Runnable { queue, waker } => {
                        let q = match queue {
                            Queue::Local(p) => format!("P{p} queue"),
                            Queue::Global => "global queue".into(),
                            Queue::Unknown => "queue".into(),
                        };
                        let by = match waker {
                            Some(Waker::Task(id)) => Some(format!("task {id}")),
                            Some(Waker::Netpoller) => Some("the netpoller".into()),
                            Some(Waker::Timer) => Some("a timer".into()),
                            Some(Waker::Other) => Some("a thread outside the runtime".into()),
                            Some(Waker::Spawn) => Some("its spawn".into()),
                            None => None,
                        };
                        let args = by.map(|b| vec![("made runnable by", Arg::Str(b))]).unwrap_or_default();
                        (format!("Runnable ({q})"), 0, args)
                    }
                    TaskSpanState::Running { tid } => {
                        (format!("Running on {}", names.display(tid)), 0, vec![("tid", Arg::Int(tid as i64))])
                    }
                    // On CPU is what "Running" means: only the stretches off CPU are shown inside.
                    TaskSpanState::Segment { what: RunSegment::OnCpu, .. } => continue,
                    TaskSpanState::Segment { tid, what } => {
                        (segment_label(what).to_string(), 1, vec![("tid", Arg::Int(tid as i64))])
                    }
                    TaskSpanState::Parked { reason, fd } => {
                        let mut args = Vec::new();
                        if let Some(fd) = fd {
                            args.push(("fd", Arg::Int(fd as i64)));
                        }
                        (format!("Parked ({})", format!("{reason:?}").to_lowercase()), 0, args)
                    }
                };
                slices.push(Slice { start, end, name, depth, args });
            }
            tasks.push(TaskTrack { pid: t.pid, task: t.task, label: t.label(), slices: well_nested(slices) });
        }
        let cgroups = throttled_tracks(c, &threads);
        Tracks {
            processes,
            threads,
            cpus: cpus
                .into_iter()
                .filter(|(cpu, _)| filter.cpu.is_none_or(|c| c == *cpu))
                .map(|(cpu, slices)| CpuTrack { cpu, slices: well_nested(slices) })
                .collect(),
            tasks,
            cgroups,
        }
    }

    pub fn summary(&self) -> ExportSummary {
        ExportSummary {
            processes: self.processes.len(),
            threads: self.threads.len(),
            cpus: self.cpus.len(),
            tasks: self.tasks.len(),
            slices: self.threads.iter().map(|t| t.slices.len()).sum::<usize>()
                + self.cpus.iter().map(|c| c.slices.len()).sum::<usize>()
                + self.cgroups.iter().map(|c| c.slices.len()).sum::<usize>()
                + self.tasks.iter().map(|t| t.slices.len()).sum::<usize>(),
        }
    }
}

pub fn off_cpu_label(why: OffCpu) -> &'static str {
    match why {
        OffCpu::Woken => "Runnable (woken)",
        OffCpu::Preempted => "Runnable (preempted)",
        OffCpu::Throttled => "Runnable (throttled: out of CPU quota)",
        OffCpu::Sleeping => "Sleeping",
        OffCpu::Epoll => "Blocked in epoll",
        OffCpu::Blocked => "Blocked",
    }
}

pub fn segment_label(what: RunSegment) -> &'static str {
    match what {
        RunSegment::OnCpu => "On CPU",
        RunSegment::CfsStolen => "CFS-stolen (thread waiting for a CPU)",
        RunSegment::KernelBlocked => "Thread blocked in the kernel",
        RunSegment::BlockingCall => "Blocking call",
        RunSegment::Unaccounted => "Thread state unknown",
    }
}

/// Orders a track's slices so that viewers nest them: by start (outer first), top-level slices
/// never overlapping (a later one cuts the one before it short: only a trace that contradicts
/// itself has such) and nested ones clipped to the slice that contains them.
/// A track per cgroup (of the `cpu` controller's hierarchy) whose exported threads waited
/// throttled: the union of those waits, each stretch with how many thread waits it covers.
fn throttled_tracks(c: &Correlation, threads: &[ThreadTrack]) -> Vec<CgroupTrack> {
    let tables = &c.tables.cgroups;
    let Some(h) = tables.cpu_hierarchy() else { return Vec::new() };
    let membership = tables.membership();
    let throttled = off_cpu_label(OffCpu::Throttled);
    let mut waits: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    for t in threads {
        let Some(id) = membership.of(h, t.tid, t.pid) else { continue };
        waits
            .entry(id)
            .or_default()
            .extend(t.slices.iter().filter(|s| s.name == throttled).map(|s| (s.start, s.end)));
    }
    let mut out = Vec::new();
    for (id, mut w) in waits.into_iter().filter(|(_, w)| !w.is_empty()) {
        w.sort_unstable();
        let mut slices: Vec<Slice> = Vec::new();
        let mut held = 0i64;
        for (start, end) in w {
            match slices.last_mut() {
                Some(last) if start <= last.end => {
                    last.end = last.end.max(end);
                    held += 1;
                    last.args = vec![("thread waits", Arg::Int(held))];
                }
                _ => {
                    held = 1;
                    slices.push(Slice {
                        start,
                        end,
                        name: "Throttled (out of CPU quota)".into(),
                        depth: 0,
                        args: vec![("thread waits", Arg::Int(1))],
                    });
                }
            }
        }
        out.push(CgroupTrack { name: format!("cgroup {} (throttled)", tables.path((h, id))), slices });
    }
    out
}

fn well_nested(mut slices: Vec<Slice>) -> Vec<Slice> {
    slices.sort_by_key(|s| (s.start, s.depth, s.end));
    let mut out: Vec<Slice> = Vec::with_capacity(slices.len());
    let mut parent: Option<usize> = None;
    for mut s in slices {
        if s.depth == 0 {
            if let Some(prev) = parent.map(|i| &mut out[i])
                && prev.end > s.start
            {
                prev.end = s.start;
            }
            if s.end > s.start {
                parent = Some(out.len());
                out.push(s);
            }
        } else if let Some(p) = parent.map(|i| &out[i]) {
            s.start = s.start.max(p.start);
            s.end = s.end.min(p.end);
            if s.end > s.start {
                out.push(s);
            }
        }
    }
    // A parent cut short may now end before children pushed after it started.
    let mut last_end = 0;
    out.retain_mut(|s| {
        if s.depth == 0 {
            last_end = s.end;
            true
        } else {
            s.end = s.end.min(last_end);
            s.end > s.start
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(start: u64, end: u64, depth: u8) -> Slice {
        Slice { start, end, name: String::new(), depth, args: Vec::new() }
    }

    #[test]
    fn slices_nest_and_never_overlap() {
        let got = well_nested(vec![
            slice(20, 30, 1), // inside the second run
            slice(0, 15, 0),
            slice(10, 40, 0), // overlaps the first: the first is cut at 10
            slice(5, 12, 1),  // inside the first, clipped to its new end
            slice(35, 50, 1), // sticks out of the second: clipped
            slice(60, 60, 0), // empty: dropped
        ]);
        let spans: Vec<(u64, u64, u8)> = got.iter().map(|s| (s.start, s.end, s.depth)).collect();
        assert_eq!(spans, vec![(0, 10, 0), (5, 10, 1), (10, 40, 0), (20, 30, 1), (35, 40, 1)]);
    }
}
