//! `sched-trace flamegraph`: the trace's stacks, joined with the correlation — which process,
//! thread and user task each belongs to, and why a thread was off CPU — and handed to the
//! `sched-trace-flamegraph` crate to symbolize, fold and draw.
//!
//! - **oncpu**: the CPU-clock samples. Weighted by time: each group's (process, thread or task)
//!   share is its exact on-CPU time from the scheduler events, split among its stacks as its
//!   samples are (`--weight samples` counts samples instead).
//! - **offcpu**: every wait of a traced thread, with the stacks it switched out with, weighted by
//!   its length and split by what it waited for: `[sleep]`, `[epoll]`, `[blocked]` up to its
//!   wake-up, then `[runq]` until it ran (`[cfs-stolen]` when the runtime had a task running on
//!   it). Grouped by task, the tasks' own waits join in: `[netpoll]`, `[task-queue]`.
//! - **wakeup**: the wakers' stacks, weighted by how long their wakees had been asleep.
//! - **offwake**: a wait's stack with its waker's stack on top (after a `--` frame).
//!
//! `--metric M --latency A..B` draws the stacks of exactly the samples a heat map's rectangle
//! selects: waits of metric M with a length in `[A, B)` that ended in the window.

use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;
use sched_trace_abi::NO_STACK;
use sched_trace_flamegraph::{FlameKind, Folder, Mapping, Stack, SymbolStats, Symbolizer};

use crate::{
    correlate::{self, Correlator, Metric, Sample, scope_of},
    filter::{Filter, SampleFilter},
    trace::{EventKind, TaskNames, TraceError, TraceReader, TraceTables},
};

#[derive(Debug, thiserror::Error)]
pub enum FlameError {
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("{path} has no {what}: {why}")]
    Unavailable { path: PathBuf, what: String, why: String },
}

/// What the root frames name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    Task,
    Thread,
    Process,
    None,
}

/// What the on-CPU weights are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weight {
    Samples,
    Time,
}

#[derive(Clone, Debug)]
pub struct Spec {
    pub kind: FlameKind,
    pub group_by: GroupBy,
    pub weight: Weight,
    pub filter: Filter,
    /// Only the waits of this metric with a length in `[lo, hi)`.
    pub selection: Option<(Metric, (u64, u64))>,
    /// Name user frames from the binaries (off: by file and offset, no file opened).
    pub read_binaries: bool,
}

impl Spec {
    pub fn new(kind: FlameKind) -> Spec {
        Spec {
            kind,
            group_by: GroupBy::Task,
            weight: Weight::Time,
            filter: Filter::default(),
            selection: None,
            read_binaries: true,
        }
    }
}

/// How the trace's stacks fared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StackStats {
    /// Samples or waits drawn...
    pub drawn: u64,
    /// ...whose user stack was not kept: a hash collision in the kernel's stack map, or the map
    /// full (their frames are `[stack lost]`)...
    pub user_lost: u64,
    /// ...or could not be walked (no frame pointers, a page not resident).
    pub user_unreadable: u64,
    pub kernel_lost: u64,
    /// Stacks as deep as the map holds: their root frames may be missing.
    pub truncated: u64,
    /// Groups (tasks, threads) whose on-CPU time no sample caught: drawn as `[unsampled]`.
    pub unsampled: u64,
}

/// A flame graph, ready to draw.
pub struct Flame {
    pub kind: FlameKind,
    /// Folded lines, root first.
    pub lines: Vec<(String, u64)>,
    pub unit: &'static str,
    pub title: String,
    pub subtitle: String,
    pub stacks: StackStats,
    pub symbols: SymbolStats,
}

/// Builds the flame graph of `path` that `spec` asks for.
pub fn build(path: &Path, spec: &Spec) -> Result<Flame, FlameError> {
    let pre = crate::trace::prescan(path)?;
    let spec = Spec { filter: spec.filter.with_cgroups(&pre.cgroups), ..spec.clone() };
    build_from(TraceReader::open(path)?, path, &spec, &pre.tasks)
}

/// [`build`] over an open reader, with the trace's task table (for `--comm`); a `--cgroup` in
/// the spec's filter must be resolved already ([`crate::filter::Filter::with_cgroups`]).
pub fn build_from<R: std::io::Read>(
    mut reader: TraceReader<R>,
    path: &Path,
    spec: &Spec,
    tasks: &[crate::trace::TaskEntry],
) -> Result<Flame, FlameError> {
    let info = reader.info().clone();
    let unavailable = |what: &str, why: String| FlameError::Unavailable {
        path: path.to_path_buf(),
        what: what.into(),
        why,
    };
    let capture = info.stacks.unwrap_or_default();
    let needs_offcpu = spec.kind != FlameKind::OnCpu || spec.selection.is_some();
    if spec.kind == FlameKind::OnCpu && spec.selection.is_none() && capture.oncpu_hz.is_none() {
        return Err(unavailable(
            "CPU samples",
            "it was recorded without them (record --stacks oncpu)".into(),
        ));
    }
    if needs_offcpu && !capture.offcpu && spec.kind != FlameKind::Wakeup {
        return Err(unavailable(
            "off-CPU stacks",
            "it was recorded without them (record --stacks offcpu)".into(),
        ));
    }
    if matches!(spec.kind, FlameKind::Wakeup | FlameKind::OffWake) && !capture.wakeup {
        return Err(unavailable(
            "wake-up stacks",
            "it was recorded without them (record --stacks wakeup)".into(),
        ));
    }
    let window = spec.filter.window(info.start_ns);
    let names = TaskNames::new(tasks);
    let mut keep = SampleFilter::new(&spec.filter, &names);
    let mut c = Correlator::new(scope_of(&info)).with_window(window).with_samples();
    for &pid in &info.asleep_at_start {
        c.threads.asleep(pid, pid, info.start_ns);
    }
    let mut g = Gather {
        spec,
        names: &names,
        folder: Folder::new(),
        prefixes: FxHashMap::default(),
        stats: StackStats::default(),
        sampled: FxHashMap::default(),
        // Exact times are per thread and task, not per CPU: with --cpu, a sample stands for the
        // sampling period.
        sample_weight: match (spec.weight, spec.filter.cpu, capture.oncpu_hz) {
            (Weight::Time, Some(_), Some(hz)) => 1_000_000_000 / hz.max(1),
            _ => 1,
        },
    };
    let mut execs = Vec::new();
    while let Some(e) = reader.next_event()? {
        if let EventKind::Exec { .. } = e.kind {
            execs.push((e.pid, e.ts));
        }
        let probe = match e.kind {
            EventKind::UserTask { probe, .. } => reader.user_probe(probe),
            _ => None,
        };
        c.event(&e, probe);
        if let EventKind::CpuSample { user_stack, kernel_stack, .. } = e.kind
            && spec.kind == FlameKind::OnCpu
            && spec.selection.is_none()
            && window.contains(e.ts)
        {
            let task = c.task_on(e.tid);
            if keep.keep_at(e.pid, e.tid, e.cpu, task) {
                g.on_cpu(e.pid, e.tid, task, e.ts, (user_stack, kernel_stack));
            }
        }
        c.take_samples(|s| {
            if keep.keep(s) {
                g.wait(s);
            }
        });
    }
    let tables = reader.into_tables()?;
    let mut finished = c.finish(tables.last_ts);
    correlate::name_tasks(&mut finished.tasks, &tables);
    if spec.kind == FlameKind::OnCpu
        && spec.weight == Weight::Time
        && spec.selection.is_none()
        && spec.filter.cpu.is_none()
    {
        g.weigh_by_time(&finished);
    }
    let mut sym = symbolizer(&tables).with_execs(execs);
    if !spec.read_binaries {
        sym = sym.without_files();
    }
    let mut lines = g.folder.fold(&mut sym, &tables.stacks);
    if spec.group_by == GroupBy::Task {
        rename_task_frames(&mut lines, &finished.tasks, &names);
    }
    let stats = g.stats;
    let (title, subtitle) = titles(path, spec, &stats, &tables, &info);
    Ok(Flame {
        kind: spec.kind,
        unit: if spec.kind == FlameKind::OnCpu && spec.weight == Weight::Samples { "samples" } else { "ns" },
        lines,
        title,
        subtitle,
        stacks: stats,
        symbols: sym.stats(),
    })
}

/// The root frame of a process.
fn process_frame(names: &TaskNames, pid: u32) -> String {
    format!("{} (pid {pid})", names.display(pid))
}

/// Task frames are `task N` while the trace is read (names of goroutines' start functions come
/// in tables later in the file): once it is read, those of named tasks take their labels
/// (`goroutine 31 main.worker`).
fn rename_task_frames(lines: &mut [(String, u64)], tasks: &[correlate::TaskStats], names: &TaskNames) {
    let renames: FxHashMap<String, String> = tasks
        .iter()
        .filter(|t| t.start_pc.is_some())
        .map(|t| {
            let process = process_frame(names, t.pid);
            (format!("{process};task {}", t.task), format!("{process};{}", t.label()))
        })
        .collect();
    if renames.is_empty() {
        return;
    }
    for (line, _) in lines.iter_mut() {
        // The first two frames: the process and the task.
        let end = line.match_indices(';').nth(1).map_or(line.len(), |(i, _)| i);
        if let Some(new) = renames.get(&line[..end]) {
            line.replace_range(..end, new);
        }
    }
}

fn symbolizer(tables: &TraceTables) -> Symbolizer {
    let snapshots = tables.mappings.iter().map(|m| {
        let maps = m
            .maps
            .iter()
            .map(|x| Mapping {
                start: x.start,
                end: x.end,
                offset: x.offset,
                path: x.path.clone().into(),
                build_id: x.build_id.clone(),
            })
            .collect();
        (m.pid, m.ts, maps)
    });
    Symbolizer::new(snapshots, tables.kernel_symbols.clone())
}

fn titles(
    path: &Path,
    spec: &Spec,
    st: &StackStats,
    tables: &TraceTables,
    info: &crate::trace::TraceInfo,
) -> (String, String) {
    let what = match (spec.kind, spec.selection) {
        (_, Some((m, (lo, hi)))) => format!(
            "Stacks of the {} samples from {} to {}",
            m.name(),
            crate::units::latency(lo),
            crate::units::latency(hi)
        ),
        (FlameKind::OnCpu, _) => "On-CPU".to_string(),
        (FlameKind::OffCpu, _) => "Off-CPU time".to_string(),
        (FlameKind::Wakeup, _) => "Wake-ups (weighted by the wakee's time asleep)".to_string(),
        (FlameKind::OffWake, _) => "Off-CPU time with the waker's stack".to_string(),
    };
    let title = format!("{what} — {}", path.display());
    let mut sub = vec![format!("{} drawn", crate::units::count(st.drawn))];
    if let Some(hz) = info.stacks.and_then(|s| s.oncpu_hz)
        && spec.kind == FlameKind::OnCpu
    {
        sub.push(format!("{hz} Hz sampling"));
    }
    if st.unsampled > 0 {
        sub.push(format!("{} too brief to be sampled ([unsampled])", crate::units::count(st.unsampled)));
    }
    let lost = st.user_lost + st.kernel_lost;
    if lost + st.user_unreadable + st.truncated > 0 {
        sub.push(format!(
            "stacks: {} not kept by the kernel (map full or collided), {} unreadable, {} maybe truncated",
            crate::units::count(lost),
            crate::units::count(st.user_unreadable),
            crate::units::count(st.truncated)
        ));
    }
    let drops = tables.drops.clone().unwrap_or_default();
    sub.push(format!("lost events: {}", crate::units::count(drops.lost_records())));
    let args = spec.filter.args();
    if !args.is_empty() {
        sub.push(args.join(" "));
    }
    (title, sub.join(" · "))
}

struct Gather<'a> {
    spec: &'a Spec,
    names: &'a TaskNames,
    folder: Folder,
    /// Prefix frames by group (so that they are built once).
    prefixes: FxHashMap<(u32, u32, Option<u64>), Vec<String>>,
    stats: StackStats,
    /// On-CPU samples by group: for weighing by time.
    sampled: FxHashMap<(u32, u32, Option<u64>), u64>,
    /// What one on-CPU sample weighs before any scaling.
    sample_weight: u64,
}

impl Gather<'_> {
    /// The root frames of a stack of thread `tid` of `pid` (running task `task`).
    fn prefix(&mut self, pid: u32, tid: u32, task: Option<u64>) -> (Vec<String>, (u32, u32, Option<u64>)) {
        let key = match self.spec.group_by {
            GroupBy::Task => (pid, if task.is_some() { 0 } else { tid }, task),
            GroupBy::Thread => (pid, tid, None),
            GroupBy::Process => (pid, 0, None),
            GroupBy::None => (0, 0, None),
        };
        let names = self.names;
        let frames = self
            .prefixes
            .entry(key)
            .or_insert_with(|| {
                let process = process_frame(names, pid);
                match self.spec.group_by {
                    GroupBy::Task => match task {
                        Some(t) => vec![process, format!("task {t}")],
                        None => vec![process, format!("{} (tid {tid}, no task)", names.display(tid))],
                    },
                    GroupBy::Thread => vec![process, format!("{} (tid {tid})", names.display(tid))],
                    GroupBy::Process => vec![process],
                    GroupBy::None => Vec::new(),
                }
            })
            .clone();
        (frames, key)
    }

    /// A stack id as the folder takes it, counting what was not kept.
    fn stack_id(&mut self, id: i32, user: bool) -> Option<u32> {
        if id >= 0 {
            return Some(id as u32);
        }
        const EFAULT: i32 = -14;
        match (id, user) {
            (NO_STACK, _) => {}
            // A sample in user mode has no kernel stack to walk: not a loss.
            (EFAULT, false) => {}
            (EFAULT, true) => self.stats.user_unreadable += 1,
            (_, true) => self.stats.user_lost += 1,
            (_, false) => self.stats.kernel_lost += 1,
        }
        None
    }

    /// Adds a stack of thread `who` (pid, tid, task) at `ts`; `above`: a waker's stack drawn on
    /// top of it (for offwake).
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        who: (u32, u32, Option<u64>),
        ts: u64,
        stacks: (i32, i32),
        leaf: Option<&str>,
        above: Option<(u32, (i32, i32))>,
        weight: u64,
    ) {
        let (prefix, _) = self.prefix(who.0, who.1, who.2);
        let (user, kernel) = (self.stack_id(stacks.0, true), self.stack_id(stacks.1, false));
        let above = above.map(|(pid, (u, k))| (pid, self.stack_id(u, true), self.stack_id(k, false)));
        self.stats.drawn += 1;
        self.folder.add(&Stack { pid: who.0, ts, user, kernel, prefix: &prefix, leaf, above, weight });
    }

    fn on_cpu(&mut self, pid: u32, tid: u32, task: Option<u64>, ts: u64, stacks: (i32, i32)) {
        let (_, key) = self.prefix(pid, tid, task);
        *self.sampled.entry(key).or_default() += 1;
        self.add((pid, tid, task), ts, stacks, None, None, self.sample_weight);
    }

    /// A completed wait (or a task's run, for CFS-stolen time).
    fn wait(&mut self, s: &Sample) {
        if let Some((metric, (lo, hi))) = self.spec.selection {
            if s.metric == metric && s.ns >= lo && s.ns < hi {
                self.add((s.pid, s.tid, s.task), s.end, s.stacks, Some(reason(s)), None, s.ns);
            }
            return;
        }
        let task_waits = self.spec.group_by == GroupBy::Task;
        let who = (s.pid, s.tid, s.task);
        match (self.spec.kind, s.metric) {
            (
                FlameKind::OffCpu,
                Metric::Sleep | Metric::Epoll | Metric::Blocked | Metric::Runq | Metric::Throttled,
            ) => {
                self.add(who, s.end, s.stacks, Some(reason(s)), None, s.ns);
            }
            (FlameKind::OffCpu, Metric::Netpoll | Metric::TaskQueue) if task_waits => {
                self.add(who, s.end, s.stacks, Some(reason(s)), None, s.ns);
            }
            (FlameKind::Wakeup, Metric::Sleep | Metric::Epoll | Metric::Blocked) => {
                if let Some(w) = s.waker {
                    // The waker's stack, under the waker's own process and thread.
                    let leaf = format!("[woke] {}", self.names.display(s.tid));
                    self.add((w.pid, w.tid, None), s.end, w.stacks, Some(&leaf), None, s.ns);
                }
            }
            (FlameKind::OffWake, Metric::Sleep | Metric::Epoll | Metric::Blocked) => {
                // The wait's stack, then `--`, then the waker's leaf first (as bcc's offwaketime
                // draws it).
                if let Some(w) = s.waker {
                    let leaf = format!("[woken by] {}", self.names.display(w.tid));
                    self.add(who, s.end, s.stacks, Some(&leaf), Some((w.pid, w.stacks)), s.ns);
                }
            }
            _ => {}
        }
    }

    /// Weighs each group (task, thread, process) by its exact on-CPU time from the scheduler
    /// events: its samples' shares scaled to it, or, for a group that ran too briefly to be
    /// sampled, one `[unsampled]` frame of that time (so that every group's total is its time).
    fn weigh_by_time(&mut self, f: &correlate::Finished) {
        let names = self.names;
        let filter = &self.spec.filter;
        let mut exact: FxHashMap<(u32, u32, Option<u64>), u64> = FxHashMap::default();
        let threads = f.threads.iter().filter(|t| filter.thread(t.tid, t.pid, names));
        for t in threads {
            let key = match self.spec.group_by {
                GroupBy::Task => (t.pid, t.tid, None),
                GroupBy::Thread => (t.pid, t.tid, None),
                GroupBy::Process => (t.pid, 0, None),
                GroupBy::None => (0, 0, None),
            };
            let mut ns = t.on_cpu_ns;
            // Grouped by task, a thread's own group is its time outside every task.
            if self.spec.group_by == GroupBy::Task {
                ns = ns.saturating_sub(f.on_cpu_in_tasks.get(&t.tid).copied().unwrap_or(0));
            }
            let sum = exact.entry(key).or_default();
            *sum = sum.saturating_add(ns);
        }
        if self.spec.group_by == GroupBy::Task {
            for t in f.tasks.iter().filter(|t| filter.task(t, names)) {
                exact.insert((t.pid, 0, Some(t.task)), t.on_cpu_ns);
            }
        }
        let mut scaled = Vec::new();
        for (key, ns) in exact {
            if self.sampled.contains_key(&key) {
                scaled.push((self.prefixes[&key].clone(), ns));
            } else if ns > 0 {
                let (pid, tid, task) = key;
                // The folder's `pid` keys user stacks only: none here.
                self.add((pid, tid, task), 0, correlate::samples::NO_STACKS, Some("[unsampled]"), None, ns);
                self.stats.unsampled += 1;
            }
        }
        self.folder.scale_prefixes(scaled.iter().map(|(p, ns)| (p.as_slice(), *ns)));
    }
}

/// The leaf frame that says what a wait was.
fn reason(s: &Sample) -> &'static str {
    match s.metric {
        Metric::Sleep => "[sleep]",
        Metric::Epoll => "[epoll]",
        Metric::Blocked => "[blocked]",
        Metric::Throttled => "[throttled]",
        Metric::Runq if s.task.is_some() => "[cfs-stolen]",
        Metric::Runq => "[runq]",
        Metric::Offcpu => "[off-cpu]",
        Metric::TaskQueue => "[task-queue]",
        Metric::Netpoll => "[netpoll]",
        Metric::CfsStolen => "[cfs-stolen]",
    }
}
