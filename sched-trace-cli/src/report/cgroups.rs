//! The report's cgroup section: the selected threads grouped by their cgroup in the hierarchy
//! that has the `cpu` controller, with what the cgroup's CPU controls did to them.
//!
//! A thread counts in the cgroup it was in at the end of the trace (a thread moved during the
//! recording is all in its last cgroup).

use rustc_hash::FxHashMap;
use serde::Serialize;

use super::{Durations, Latency, latency, sum};
use crate::{
    correlate::{Correlation, ThreadStats, Window},
    trace::{
        TaskNames,
        cgroups::{CgroupId, CgroupTables},
    },
};

#[derive(Debug, Serialize)]
pub struct CgroupReport {
    pub hierarchy: u32,
    /// From the hierarchy's root.
    pub path: String,
    pub processes: u32,
    pub threads: u32,
    pub on_cpu_ns: u64,
    /// CPUs used on average over the report's time (on-CPU time / time).
    pub cpus_used: f64,
    /// Its part of the on-CPU time of every cgroup in the section.
    pub share: f64,
    /// Its own CPU quota in CPUs, and the tightest along its ancestry (what limits it).
    pub quota_cpus: Option<f64>,
    pub effective_quota_cpus: Option<f64>,
    pub period_us: Option<u64>,
    /// v1 `cpu.shares` / v2 `cpu.weight`.
    pub shares: Option<u64>,
    pub weight: Option<u64>,
    /// The CPUs of its cpuset, when the hierarchy has that controller.
    pub cpuset: Option<String>,
    /// Its `cpu.stat` over the report's time (when the recorder sampled it: it has a quota).
    pub throttling: Option<Throttling>,
    /// Its threads' waits after a throttled switch-out (the quota ran out while they ran).
    pub throttled_waits: Durations,
    /// Its threads that were throttled, most throttled time first.
    pub throttled_threads: Vec<ThrottledThread>,
    /// Its threads' run-queue latency (throttled waits not included).
    pub runqueue_latency: Latency,
    /// Preemptions of its threads, by the cgroup of the thread that took the CPU (`(untraced)`:
    /// a thread the trace did not follow), most first.
    pub preempted_by: Vec<(String, u64)>,
}

#[derive(Debug, Serialize)]
pub struct Throttling {
    /// Enforcement periods with runnable tasks, and how many of them ended throttled.
    pub periods: u64,
    pub throttled_periods: u64,
    /// Time its run queues were throttled (summed over CPUs).
    pub throttled_ns: u64,
    /// Samples of `cpu.stat` the figures come from, and the time between the first and last.
    pub samples: u64,
    pub sampled_ns: u64,
}

#[derive(Debug, Serialize)]
pub struct ThrottledThread {
    pub tid: u32,
    pub pid: u32,
    pub comm: String,
    pub waits: u64,
    pub throttled_ns: u64,
}

/// How many throttled threads a cgroup lists.
const TOP_THROTTLED: usize = 5;

/// The cgroup section of the threads `selected`, within `window`.
pub fn build(
    c: &Correlation,
    selected: &[&ThreadStats],
    names: &TaskNames,
    window: Window,
) -> Vec<CgroupReport> {
    let tables = &c.tables.cgroups;
    let Some(h) = tables.cpu_hierarchy() else { return Vec::new() };
    let membership = tables.membership();
    let cgroup_of = |tid: u32, pid: u32| membership.of(h, tid, pid).map(|id| (h, id));
    let mut groups: FxHashMap<CgroupId, Vec<&ThreadStats>> = FxHashMap::default();
    for t in selected {
        if let Some(g) = cgroup_of(t.tid, t.pid) {
            groups.entry(g).or_default().push(t);
        }
    }
    let from = c.first_ts.max(window.from);
    let to = c.last_ts.min(window.to);
    let span = to.saturating_sub(from);
    // The counters were sampled until the recording stopped, which may be after its last event.
    let samples_to = c.tables.end.as_ref().map_or(to, |e| e.end_ns.max(c.last_ts).min(window.to));
    let all_on_cpu = sum(groups.values().flatten().map(|t| t.on_cpu_ns));
    let mut out: Vec<CgroupReport> = groups
        .into_iter()
        .map(|(g, ts)| {
            let info = tables.cgroups.get(&g);
            let cpu = info.map(|i| i.cpu.clone()).unwrap_or_default();
            let on_cpu_ns = sum(ts.iter().map(|t| t.on_cpu_ns));
            let mut preempted_by: FxHashMap<String, u64> = FxHashMap::default();
            for t in &ts {
                for (&by, &n) in &t.preempted_by {
                    let pid = names.last(by).map(|(_, p)| p).unwrap_or(0);
                    let key = match cgroup_of(by, pid) {
                        Some(other) => tables.path(other),
                        None => "(untraced)".to_string(),
                    };
                    *preempted_by.entry(key).or_default() += n;
                }
            }
            let mut preempted_by: Vec<(String, u64)> = preempted_by.into_iter().collect();
            preempted_by.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            let mut throttled_threads: Vec<ThrottledThread> = ts
                .iter()
                .filter(|t| !t.throttled_waits_ns.is_empty())
                .map(|t| ThrottledThread {
                    tid: t.tid,
                    pid: t.pid,
                    comm: names.display(t.tid),
                    waits: t.throttled_waits_ns.len() as u64,
                    throttled_ns: t.throttled_ns,
                })
                .collect();
            throttled_threads.sort_by(|a, b| b.throttled_ns.cmp(&a.throttled_ns).then(a.tid.cmp(&b.tid)));
            throttled_threads.truncate(TOP_THROTTLED);
            let mut processes: Vec<u32> = ts.iter().map(|t| t.pid).collect();
            processes.sort_unstable();
            processes.dedup();
            CgroupReport {
                hierarchy: g.0,
                path: tables.path(g),
                processes: processes.len() as u32,
                threads: ts.len() as u32,
                on_cpu_ns,
                cpus_used: if span == 0 { 0.0 } else { on_cpu_ns as f64 / span as f64 },
                share: if all_on_cpu == 0 { 0.0 } else { on_cpu_ns as f64 / all_on_cpu as f64 },
                quota_cpus: cpu.quota_cpus(),
                effective_quota_cpus: tables.effective_quota_cpus(g),
                period_us: cpu.period_us,
                shares: cpu.shares,
                weight: cpu.weight,
                cpuset: cpuset_of(tables, &membership, &ts).or(cpu.cpus.clone()),
                throttling: throttling(tables, g, from, samples_to),
                throttled_waits: Durations::of(
                    ts.iter().flat_map(|t| t.throttled_waits_ns.iter().copied()).collect(),
                ),
                throttled_threads,
                runqueue_latency: latency(&ts),
                preempted_by,
            }
        })
        .collect();
    out.sort_by(|a, b| b.on_cpu_ns.cmp(&a.on_cpu_ns).then(a.path.cmp(&b.path)));
    out
}

/// The cpuset of the threads' `cpuset` cgroup (a hierarchy of its own on v1).
fn cpuset_of(
    tables: &CgroupTables,
    membership: &crate::trace::cgroups::Membership,
    ts: &[&ThreadStats],
) -> Option<String> {
    let h = tables.hierarchy_with("cpuset")?.id;
    let t = ts.first()?;
    let id = membership.of(h, t.tid, t.pid)?;
    tables.cgroups.get(&(h, id))?.cpu.cpus.clone()
}

/// The change of a cgroup's `cpu.stat` between its first and last samples in `[from, to]`.
fn throttling(tables: &CgroupTables, g: CgroupId, from: u64, to: u64) -> Option<Throttling> {
    let mine: Vec<_> =
        tables.samples.iter().filter(|s| (s.hierarchy, s.id) == g && s.ts >= from && s.ts <= to).collect();
    let (first, last) = (mine.first()?, mine.last()?);
    let n = mine.len();
    Some(Throttling {
        periods: last.nr_periods.saturating_sub(first.nr_periods),
        throttled_periods: last.nr_throttled.saturating_sub(first.nr_throttled),
        throttled_ns: last.throttled_ns.saturating_sub(first.throttled_ns),
        samples: n as u64,
        sampled_ns: last.ts.saturating_sub(first.ts),
    })
}

/// The CPUs process `pid` may use (its threads' affinities, last read) and its CPU quota in
/// CPUs (the tightest along its `cpu` cgroup's ancestry).
pub fn process_cpus(
    tables: &CgroupTables,
    membership: &crate::trace::cgroups::Membership,
    pid: u32,
) -> (Option<u32>, Option<f64>) {
    let usable = tables.processes.iter().rev().find(|p| p.pid == pid).map(|p| p.cpus_allowed.len() as u32);
    let quota = tables.cpu_hierarchy().and_then(|h| {
        let id = membership.of(h, pid, pid)?;
        tables.effective_quota_cpus((h, id))
    });
    (usable, quota)
}
