//! The selection every analysis takes — `report`, `export`, `heatmap`, `flamegraph` — from the
//! same flags: processes, threads, user tasks, CPUs, names, and a window of time in seconds from
//! the start of the recording. One type, so that a selection made in one command (a heat map's
//! rectangle) is the same selection in another (that rectangle's flame graph).

use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::{
    correlate::{Sample, TaskStats, Window},
    trace::{
        TaskNames,
        cgroups::{CgroupId, CgroupTables, Membership, path_under},
    },
};

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Filter {
    /// A cgroup (a directory, or a path from its hierarchy's root): the threads that were in it
    /// or below it. Resolved against a trace's cgroup table by [`Filter::with_cgroups`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(skip)]
    pub cgroup_selection: Option<std::sync::Arc<CgroupSelection>>,
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    /// A user task id (with `pid` when several processes have one).
    pub task: Option<u64>,
    pub cpu: Option<u16>,
    /// A thread name, or the name of a process (all its threads).
    pub comm: Option<String>,
    /// Seconds from the start of the recording.
    pub from_s: Option<f64>,
    pub to_s: Option<f64>,
}

impl Filter {
    /// The time window, in the trace's clock, of a recording that started at `start_ns`.
    pub fn window(&self, start_ns: u64) -> Window {
        let at = |s: f64| start_ns.saturating_add((s.max(0.0) * 1e9).min(u64::MAX as f64) as u64);
        Window { from: self.from_s.map_or(0, at), to: self.to_s.map_or(u64::MAX, at) }
    }

    /// Whether thread `tid` of process `pid` is selected (CPUs and times aside).
    pub fn thread(&self, tid: u32, pid: u32, names: &TaskNames) -> bool {
        self.pid.is_none_or(|p| p == pid)
            && self.tid.is_none_or(|t| t == tid)
            && self.named(tid, pid, names)
            && self.in_cgroup(tid, pid)
    }

    /// This filter with its `--cgroup` resolved against a trace's cgroup table (a cgroup the
    /// trace does not have selects nothing; [`CgroupSelection::resolve`] tells why).
    pub fn with_cgroups(&self, tables: &CgroupTables) -> Filter {
        let mut f = self.clone();
        if let Some(c) = &self.cgroup {
            let selection = CgroupSelection::resolve(c, tables).unwrap_or_default();
            f.cgroup_selection = Some(std::sync::Arc::new(selection));
        }
        f
    }

    fn in_cgroup(&self, tid: u32, pid: u32) -> bool {
        match (&self.cgroup, &self.cgroup_selection) {
            (None, _) => true,
            (Some(_), Some(s)) => s.contains(tid, pid),
            // Not resolved against the trace: nothing is known to be in it.
            (Some(_), None) => false,
        }
    }

    /// Whether a user task is selected: its process, its id, and a thread it ran on.
    pub fn task(&self, t: &TaskStats, names: &TaskNames) -> bool {
        self.pid.is_none_or(|p| p == t.pid)
            && self.task.is_none_or(|id| id == t.task)
            && (self.cgroup.is_none() || t.run_intervals.iter().any(|r| self.in_cgroup(r.tid, t.pid)))
            && self.tid.is_none_or(|tid| t.run_intervals.iter().any(|r| r.tid == tid))
            && (self.comm.is_none()
                || self.named(t.pid, t.pid, names)
                || t.run_intervals.iter().any(|r| self.named(r.tid, t.pid, names)))
    }

    fn named(&self, tid: u32, pid: u32, names: &TaskNames) -> bool {
        match &self.comm {
            None => true,
            Some(c) => names.display(tid) == *c || names.display(pid) == *c,
        }
    }

    /// Whether nothing but the time is restricted.
    pub fn selects_everything(&self) -> bool {
        self.pid.is_none()
            && self.tid.is_none()
            && self.task.is_none()
            && self.cpu.is_none()
            && self.comm.is_none()
            && self.cgroup.is_none()
    }

    /// The command-line flags that make this selection.
    pub fn args(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut flag = |name: &str, v: Option<String>| {
            if let Some(v) = v {
                out.push(format!("--{name}"));
                out.push(v);
            }
        };
        flag("pid", self.pid.map(|v| v.to_string()));
        flag("tid", self.tid.map(|v| v.to_string()));
        flag("task", self.task.map(|v| v.to_string()));
        flag("cpu", self.cpu.map(|v| v.to_string()));
        flag("comm", self.comm.clone());
        flag("cgroup", self.cgroup.clone());
        flag("from", self.from_s.map(seconds));
        flag("to", self.to_s.map(seconds));
        out
    }
}

/// Seconds as the flags take them: to the nanosecond, without trailing zeros.
pub fn seconds(s: f64) -> String {
    let text = format!("{s:.9}");
    let text = text.trim_end_matches('0');
    text.strip_suffix('.').map(|t| format!("{t}.0")).unwrap_or_else(|| text.to_string())
}

/// The cgroups a `--cgroup` names, and which cgroup each thread was in.
#[derive(Clone, Debug, Default)]
pub struct CgroupSelection {
    /// The cgroups selected: the one named and those below it.
    pub cgroups: rustc_hash::FxHashSet<CgroupId>,
    /// The hierarchies of those cgroups, each once.
    hierarchies: Vec<u32>,
    membership: Membership,
}

impl PartialEq for CgroupSelection {
    fn eq(&self, other: &Self) -> bool {
        self.cgroups == other.cgroups
    }
}

impl CgroupSelection {
    /// The cgroups `name` selects: a directory under one of the recording's cgroup mounts
    /// (`/sys/fs/cgroup/cpu/app`), or a path from a hierarchy's root (`/app`, in every
    /// hierarchy), with the cgroups below it. An error says what the trace has instead.
    pub fn resolve(name: &str, tables: &CgroupTables) -> Result<CgroupSelection, String> {
        if tables.is_empty() {
            return Err(
                "the trace has no cgroup table (it was recorded by a sched-trace without cgroup support)"
                    .into(),
            );
        }
        let mount = tables
            .hierarchies
            .iter()
            .filter(|h| path_under(name, &h.mount) && h.mount != "/")
            .max_by_key(|h| h.mount.len());
        let (only, path) = match mount {
            Some(h) => (Some(h.id), format!("/{}", name[h.mount.len()..].trim_matches('/'))),
            None => (None, name.to_string()),
        };
        let cgroups: rustc_hash::FxHashSet<CgroupId> = tables
            .cgroups
            .values()
            .filter(|g| {
                only.is_none_or(|h| h == g.hierarchy) && !g.path.is_empty() && path_under(&g.path, &path)
            })
            .map(|g| (g.hierarchy, g.id))
            .collect();
        if cgroups.is_empty() {
            let mut known: Vec<String> = tables
                .cgroups
                .values()
                .filter(|g| !g.path.is_empty())
                .map(|g| match tables.hierarchy(g.hierarchy) {
                    Some(h) => format!("{}{}", h.mount.trim_end_matches('/'), g.path.trim_end_matches('/')),
                    None => g.path.clone(),
                })
                .collect();
            known.sort();
            known.dedup();
            return Err(format!("the trace has no cgroup {name}; its cgroups are: {}", known.join(", ")));
        }
        let mut hierarchies: Vec<u32> = cgroups.iter().map(|c| c.0).collect();
        hierarchies.sort_unstable();
        hierarchies.dedup();
        Ok(CgroupSelection { cgroups, hierarchies, membership: tables.membership() })
    }

    /// Whether thread `tid` of `pid` was in a selected cgroup (at the end of the trace).
    pub fn contains(&self, tid: u32, pid: u32) -> bool {
        self.hierarchies
            .iter()
            .any(|&h| self.membership.of(h, tid, pid).is_some_and(|id| self.cgroups.contains(&(h, id))))
    }
}

/// A [`Filter`] applied to samples in a hot loop: names are looked up once per thread.
pub struct SampleFilter<'a> {
    filter: &'a Filter,
    names: &'a TaskNames,
    named: FxHashMap<(u32, u32), bool>,
}

impl<'a> SampleFilter<'a> {
    pub fn new(filter: &'a Filter, names: &'a TaskNames) -> Self {
        SampleFilter { filter, names, named: FxHashMap::default() }
    }

    /// Whether `s` is selected (the window is the correlation's to apply).
    pub fn keep(&mut self, s: &Sample) -> bool {
        self.keep_at(s.pid, s.tid, s.cpu, s.task)
    }

    /// Whether something of thread `tid` of `pid`, on `cpu`, while `task` ran, is selected.
    pub fn keep_at(&mut self, pid: u32, tid: u32, cpu: u16, task: Option<u64>) -> bool {
        let f = self.filter;
        if f.pid.is_some_and(|p| p != pid)
            || f.tid.is_some_and(|t| t != tid)
            || f.cpu.is_some_and(|c| c != cpu)
            || f.task.is_some_and(|t| task != Some(t))
        {
            return false;
        }
        if f.comm.is_none() && f.cgroup.is_none() {
            return true;
        }
        let (filter, names) = (self.filter, self.names);
        *self
            .named
            .entry((tid, pid))
            .or_insert_with(|| filter.named(tid, pid, names) && filter.in_cgroup(tid, pid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_flags_say_the_same_selection() {
        let f = Filter { pid: Some(7), from_s: Some(2.0), to_s: Some(3.5), ..Default::default() };
        assert_eq!(f.window(1_000), Window { from: 2_000_001_000, to: 3_500_001_000 });
        assert_eq!(f.args(), ["--pid", "7", "--from", "2.0", "--to", "3.5"]);
        assert_eq!(Filter::default().window(5), Window::ALL);
        assert_eq!(
            (seconds(0.25), seconds(1.0), seconds(12.000125)),
            ("0.25".into(), "1.0".into(), "12.000125".into())
        );
        assert!(
            !f.selects_everything()
                && Filter { from_s: Some(1.0), ..Default::default() }.selects_everything()
        );
    }
}
