//! `sched-trace heatmap`: latency heat maps — time across, latency up (log-linear buckets),
//! colour for how many events fell in each cell — so that bimodal latencies, periodic stalls and
//! the moment things went wrong show at once where a histogram averages them away.
//!
//! A map is built in one pass over the correlation's samples ([`crate::correlate::samples`]) into
//! a grid whose size is fixed before the pass: columns from the recording's span (or the
//! window), rows in log-linear buckets. Memory is bounded by the grid, not by the number of
//! events. [`svg`], [`html`], [`term`] and [`json`] draw it.

pub mod grid;
pub mod html;
pub mod json;
pub mod svg;
pub mod term;

use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;

use crate::{
    correlate::{self, Correlation, Metric, NO_CPU, Sample, Unplaced},
    filter::{Filter, SampleFilter},
    trace::{Prescan, TaskNames, TraceError, TraceReader, prescan},
};
pub use grid::{Buckets, Columns, Grid, Who};

#[derive(Debug, thiserror::Error)]
pub enum HeatmapError {
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("{path} has no {metric} samples to draw: {why}")]
    MetricUnavailable { path: PathBuf, metric: &'static str, why: String },
    #[error("{0}")]
    Spec(String),
}

/// How to group events into small multiples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Per {
    Cpu,
    Thread,
    Process,
    Task,
    /// The cgroup of the hierarchy with the `cpu` controller.
    Cgroup,
}

impl Per {
    pub fn name(self) -> &'static str {
        match self {
            Per::Cpu => "cpu",
            Per::Thread => "thread",
            Per::Process => "process",
            Per::Task => "task",
            Per::Cgroup => "cgroup",
        }
    }
}

/// What to draw.
#[derive(Clone, Debug)]
pub struct Spec {
    pub metric: Metric,
    pub filter: Filter,
    /// Small multiples: one map per group, the `top` groups with the most events.
    pub per: Option<(Per, usize)>,
    /// Sub-buckets per power of two.
    pub sub_buckets: u32,
    /// Columns: a width, or a count, or about [`DEFAULT_COLUMNS`] of a round width.
    pub column_width_ns: Option<u64>,
    pub columns: Option<usize>,
    /// Rows shown: the latencies `[from, to)`; by default every row that has events.
    pub latency_range: Option<(u64, u64)>,
}

pub const DEFAULT_COLUMNS: usize = 240;
pub const DEFAULT_SUB_BUCKETS: u32 = 4;

impl Spec {
    pub fn new(metric: Metric) -> Spec {
        Spec {
            metric,
            filter: Filter::default(),
            per: None,
            sub_buckets: DEFAULT_SUB_BUCKETS,
            column_width_ns: None,
            columns: None,
            latency_range: None,
        }
    }
}

/// One map: all the selected events, or one group's.
#[derive(Clone, Debug)]
pub struct Panel {
    pub label: String,
    /// The flags that select this group's events besides the map's own filter.
    pub group_args: Vec<String>,
    pub grid: Grid,
}

/// Facts about the trace a map came from, shown on the picture.
#[derive(Clone, Debug)]
pub struct Source {
    pub path: String,
    pub start_ns: u64,
    pub events: u64,
    pub lost_events: u64,
    /// Whether the file has loss counters (when not, the loss is unknown).
    pub lost_counted: bool,
    /// The recording did not end cleanly: events after this were not recorded (ns into it).
    pub missing_after_ns: Option<u64>,
    pub unplaced: Unplaced,
}

/// A heat map (or a set of small multiples sharing one scale), ready to draw.
#[derive(Clone, Debug)]
pub struct Heatmap {
    pub metric: Metric,
    pub filter: Filter,
    pub per: Option<Per>,
    pub source: Source,
    /// The first of the panels holds every selected event; with `per`, the groups follow.
    pub panels: Vec<Panel>,
    /// The rows shown: `[first, last]` of the grid's buckets.
    pub rows: (usize, usize),
    /// Names of threads and tasks, for contributors.
    pub names: Vec<(Who, String)>,
}

impl Heatmap {
    pub fn columns(&self) -> Columns {
        self.panels[0].grid.columns
    }

    pub fn buckets(&self) -> Buckets {
        self.panels[0].grid.buckets
    }

    /// Whether there are group panels besides the whole.
    pub fn groups(&self) -> &[Panel] {
        &self.panels[1..]
    }

    /// The largest cell count of the panels drawn (the colour scale's top).
    pub fn max_cell(&self) -> u64 {
        let drawn =
            if self.per.is_some() && self.panels.len() > 1 { &self.panels[1..] } else { &self.panels[..1] };
        drawn.iter().map(|p| p.grid.max_cell()).max().unwrap_or(0)
    }

    /// The name of a contributor.
    pub fn name_of(&self, who: &Who) -> String {
        self.names
            .iter()
            .find(|(w, _)| w == who)
            .map(|(_, n)| n.clone())
            .unwrap_or_else(|| format!("{}", who.tid))
    }

    /// Seconds from the start of the recording at which column `col` starts.
    pub fn column_start_s(&self, col: usize) -> f64 {
        let c = self.columns();
        c.start_ns.saturating_add(c.width_ns.saturating_mul(col as u64)).saturating_sub(self.source.start_ns)
            as f64
            / 1e9
    }
}

/// Builds the heat map of `path` that `spec` asks for.
pub fn build(path: &Path, spec: &Spec) -> Result<Heatmap, HeatmapError> {
    let pre = prescan(path)?;
    build_from(TraceReader::open(path)?, path, spec, &pre)
}

/// [`build`] over an open reader of a trace whose [`Prescan`] is `pre`.
pub fn build_from<R: std::io::Read>(
    reader: TraceReader<R>,
    path: &Path,
    spec: &Spec,
    pre: &Prescan,
) -> Result<Heatmap, HeatmapError> {
    let resolved = Spec { filter: spec.filter.with_cgroups(&pre.cgroups), ..spec.clone() };
    let spec = &resolved;
    let span = (pre.start_ns, pre.end_ns);
    let window = spec.filter.window(span.0);
    let (from, to) = (window.from.max(span.0), window.to.min(span.1.max(span.0.saturating_add(1))));
    if from >= to {
        return Err(HeatmapError::Spec(format!(
            "the window {} is outside the recording, which lasts {:.3} s",
            spec.filter.args().join(" "),
            span.1.saturating_sub(span.0) as f64 / 1e9
        )));
    }
    if let Some((lo, hi)) = spec.latency_range
        && lo >= hi
    {
        return Err(HeatmapError::Spec(format!("the latency range {lo}..{hi} ns is empty")));
    }
    let columns = Columns::covering(from, to, spec.column_width_ns, spec.columns, DEFAULT_COLUMNS);
    let buckets = Buckets::new(spec.sub_buckets);
    // The task table, whole before the pass (the names a `--comm` filter looks up).
    let names = TaskNames::new(&pre.tasks);
    let mut all = Grid::new(columns, buckets, true);
    let mut groups: FxHashMap<(u64, u64), SparseGrid> = FxHashMap::default();
    let per = spec.per.map(|(p, _)| p);
    let cgroups = CgroupGroups::new(&pre.cgroups);
    let mut keep = SampleFilter::new(&spec.filter, &names);
    let metric = spec.metric;
    let mut add = |s: &Sample| {
        if s.metric != metric || !keep.keep(s) {
            return;
        }
        all.add(s);
        if let Some(p) = per {
            groups.entry(group_key(p, s, &cgroups)).or_default().add(&columns, buckets, s);
        }
    };
    let correlation = correlate::correlate_with(
        reader,
        correlate::Options { window, on_sample: Some(&mut add), ..Default::default() },
    )?;
    let names = TaskNames::new(&correlation.tables.tasks);
    if all.events == 0 {
        check_available(path, metric, &correlation)?;
    }
    let mut panels = vec![Panel { label: "all selected events".into(), group_args: Vec::new(), grid: all }];
    if let Some((p, top)) = spec.per {
        let mut ranked: Vec<((u64, u64), SparseGrid)> = groups.into_iter().collect();
        ranked.sort_by(|a, b| b.1.events.cmp(&a.1.events).then(a.0.cmp(&b.0)));
        for (key, g) in ranked.into_iter().take(top.max(1)) {
            panels.push(Panel {
                label: group_label(p, key, &names, &correlation.tasks, &cgroups),
                group_args: group_args(p, key, &cgroups),
                grid: g.dense(columns, buckets),
            });
        }
    }
    let rows = match spec.latency_range {
        Some((lo, hi)) => (buckets.row(lo), buckets.row(hi.saturating_sub(1)).max(buckets.row(lo))),
        None => {
            let (lo, hi) = panels[0].grid.used_rows().unwrap_or((buckets.row(1_000), buckets.row(1_000_000)));
            // Whole powers of two, so that the axis reads evenly.
            let sub = buckets.sub as usize;
            (lo / sub * sub, ((hi / sub) + 1) * sub - 1)
        }
    };
    let who: Vec<Who> = {
        let mut v: Vec<Who> = panels[0]
            .grid
            .details
            .iter()
            .flatten()
            .flatten()
            .flat_map(|d| {
                d.top.iter().map(|t| t.0).chain(d.longest.iter().map(|s| Who {
                    tid: s.tid,
                    pid: s.pid,
                    task: s.task,
                }))
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let name_list = who.into_iter().map(|w| (w, who_name(&w, &names))).collect();
    let drops = correlation.tables.drops.clone().unwrap_or_default();
    let source = Source {
        path: path.display().to_string(),
        start_ns: span.0,
        events: correlation.tables.events,
        lost_events: drops.lost_records(),
        lost_counted: correlation.tables.drops.is_some(),
        missing_after_ns: match &correlation.tables.end {
            Some(e) => e.write_failure.as_ref().map(|f| f.last_written_ns.saturating_sub(span.0)),
            None => Some(correlation.last_ts.saturating_sub(span.0)),
        },
        unplaced: correlation.unplaced(),
    };
    Ok(Heatmap { metric, filter: spec.filter.clone(), per, source, panels, rows, names: name_list })
}

/// Why a trace has no samples of `metric` at all, when that is because of what was recorded.
fn check_available(path: &Path, metric: Metric, c: &Correlation) -> Result<(), HeatmapError> {
    let unavailable = |why: String| {
        Err(HeatmapError::MetricUnavailable { path: path.to_path_buf(), metric: metric.name(), why })
    };
    if metric.of_tasks() && c.tasks.is_empty() {
        let why = if c.info.user_probes.is_empty() {
            "the recording has no user-level runtime probes (the traced program has no USDT probes sched-trace \
             knows, or it was recorded with --no-usdt), so it knows threads, not user tasks; the thread \
             metrics (runq, offcpu, sleep, epoll, blocked) work on it"
        } else {
            "its runtime probes fired no task transitions sched-trace knows (it reads the reference runtime's \
             `refrt` probes)"
        };
        return unavailable(why.into());
    }
    if c.threads.is_empty() {
        return unavailable("the trace holds no traced thread".into());
    }
    Ok(())
}

/// A group: (CPU, thread or process id, or process id) and the task id for tasks.
type GroupKey = (u64, u64);
const NO_TASK: GroupKey = (u64::MAX, u64::MAX);

/// What grouping by cgroup needs: the trace's cgroup table, who was where, and the hierarchy
/// the groups are of (the one with the `cpu` controller).
struct CgroupGroups<'a> {
    tables: &'a crate::trace::cgroups::CgroupTables,
    membership: crate::trace::cgroups::Membership,
    hierarchy: Option<u32>,
}

impl<'a> CgroupGroups<'a> {
    fn new(tables: &'a crate::trace::cgroups::CgroupTables) -> Self {
        CgroupGroups { tables, membership: tables.membership(), hierarchy: tables.cpu_hierarchy() }
    }
}

fn group_key(per: Per, s: &Sample, cgroups: &CgroupGroups) -> GroupKey {
    match per {
        Per::Cpu => (s.cpu as u64, 0),
        Per::Thread => (s.tid as u64, 0),
        Per::Process => (s.pid as u64, 0),
        Per::Task => s.task.map_or(NO_TASK, |t| (s.pid as u64, t)),
        Per::Cgroup => cgroups
            .hierarchy
            .and_then(|h| Some((h as u64, cgroups.membership.of(h, s.tid, s.pid)?)))
            .unwrap_or(NO_TASK),
    }
}

fn group_label(
    per: Per,
    key: GroupKey,
    names: &TaskNames,
    tasks: &[correlate::TaskStats],
    cgroups: &CgroupGroups,
) -> String {
    let id = key.0;
    match per {
        Per::Cgroup if key == NO_TASK => "cgroup not known".into(),
        Per::Cgroup => format!("cgroup {}", cgroups.tables.path((key.0 as u32, key.1))),
        Per::Cpu if id == NO_CPU as u64 => "CPU not known".into(),
        Per::Cpu => format!("CPU {id}"),
        Per::Thread => format!("{} (tid {id})", names.display(id as u32)),
        Per::Process => format!("{} (pid {id})", names.display(id as u32)),
        Per::Task if key == NO_TASK => "no task".into(),
        Per::Task => {
            let task = tasks.iter().find(|t| (t.pid as u64, t.task) == key);
            format!("{} (pid {id})", task.map_or_else(|| format!("task {}", key.1), |t| t.label()))
        }
    }
}

fn group_args(per: Per, key: GroupKey, cgroups: &CgroupGroups) -> Vec<String> {
    let pair = |flag: &str, v: u64| vec![flag.to_string(), v.to_string()];
    match per {
        Per::Cgroup if key == NO_TASK => Vec::new(),
        Per::Cgroup => {
            let c = (key.0 as u32, key.1);
            let mount = cgroups.tables.hierarchy(c.0).map(|h| h.mount.trim_end_matches('/').to_string());
            vec!["--cgroup".into(), format!("{}{}", mount.unwrap_or_default(), cgroups.tables.path(c))]
        }
        Per::Cpu if key.0 == NO_CPU as u64 => Vec::new(),
        Per::Cpu => pair("--cpu", key.0),
        Per::Thread => pair("--tid", key.0),
        Per::Process => pair("--pid", key.0),
        Per::Task if key == NO_TASK => Vec::new(),
        Per::Task => [pair("--pid", key.0), pair("--task", key.1)].concat(),
    }
}

fn who_name(w: &Who, names: &TaskNames) -> String {
    match w.task {
        Some(t) => format!("task {t} on {}/{}", names.display(w.tid), w.tid),
        None => format!("{}/{}", names.display(w.tid), w.tid),
    }
}

/// A group's cells while the pass runs: only the cells it has events in.
#[derive(Default)]
struct SparseGrid {
    cells: FxHashMap<u32, u64>,
    column_max: FxHashMap<u32, u64>,
    events: u64,
    sum_ns: u64,
    min_ns: u64,
    max_ns: u64,
}

impl SparseGrid {
    fn add(&mut self, columns: &Columns, buckets: Buckets, s: &Sample) {
        let (col, row) = (columns.column(s.end), buckets.row(s.ns));
        *self.cells.entry((col * buckets.rows() + row) as u32).or_default() += 1;
        let m = self.column_max.entry(col as u32).or_default();
        *m = (*m).max(s.ns);
        if self.events == 0 {
            self.min_ns = s.ns;
        }
        self.events += 1;
        self.sum_ns = self.sum_ns.saturating_add(s.ns);
        self.min_ns = self.min_ns.min(s.ns);
        self.max_ns = self.max_ns.max(s.ns);
    }

    fn dense(self, columns: Columns, buckets: Buckets) -> Grid {
        let mut g = Grid::new(columns, buckets, false);
        for (cell, n) in self.cells {
            g.counts[cell as usize] = n;
        }
        for (col, m) in self.column_max {
            g.column_max[col as usize] = m;
        }
        (g.events, g.sum_ns, g.min_ns, g.max_ns) = (self.events, self.sum_ns, self.min_ns, self.max_ns);
        g
    }
}

/// Two maps of the same metric over the same rows and columns (time from each one's start):
/// where their distributions differ.
#[derive(Clone, Debug)]
pub struct Diff {
    pub this: Heatmap,
    pub other: Heatmap,
}

impl Diff {
    /// `this − other` in a cell.
    pub fn delta(&self, col: usize, row: usize) -> i64 {
        let count = |h: &Heatmap| -> i64 {
            let g = &h.panels[0].grid;
            if col < g.columns.count { g.count(col, row) as i64 } else { 0 }
        };
        count(&self.this) - count(&self.other)
    }

    pub fn columns(&self) -> usize {
        self.this.columns().count.max(self.other.columns().count)
    }

    /// The largest difference in a cell, either way.
    pub fn max_delta(&self) -> u64 {
        let (lo, hi) = self.this.rows;
        (0..self.columns())
            .flat_map(|c| (lo..=hi).map(move |r| (c, r)))
            .map(|(c, r)| self.delta(c, r).unsigned_abs())
            .max()
            .unwrap_or(0)
    }
}

/// Builds the maps of `this` and `other` for a diff: same metric, rows, column width and count
/// (time from each recording's start).
pub fn diff(this: &Path, other: &Path, spec: &Spec) -> Result<Diff, HeatmapError> {
    let (a_pre, b_pre) = (prescan(this)?, prescan(other)?);
    let len = |p: &Prescan, f: &Filter| {
        let w = f.window(p.start_ns);
        w.to.min(p.end_ns).saturating_sub(w.from.max(p.start_ns))
    };
    let longest = len(&a_pre, &spec.filter).max(len(&b_pre, &spec.filter)).max(1);
    let mut shared = spec.clone();
    shared.per = None;
    let width = spec.column_width_ns.unwrap_or_else(|| {
        grid::round_width(longest.div_ceil(spec.columns.unwrap_or(DEFAULT_COLUMNS).max(1) as u64))
    });
    shared.column_width_ns = Some(width);
    shared.columns = None;
    let mut a = build_from(TraceReader::open(this)?, this, &shared, &a_pre)?;
    let mut b = build_from(TraceReader::open(other)?, other, &shared, &b_pre)?;
    let rows = (a.rows.0.min(b.rows.0), a.rows.1.max(b.rows.1));
    (a.rows, b.rows) = (rows, rows);
    Ok(Diff { this: a, other: b })
}
