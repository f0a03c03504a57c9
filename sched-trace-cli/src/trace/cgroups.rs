//! The cgroup tables of a trace: hierarchies, cgroups with their CPU controls, which cgroup each
//! task was in, samples of CPU throttling, and the CPUs each process could use. Gathered from
//! the trace's `Cgroups` chunks as the reader meets them.

use rustc_hash::FxHashMap;

use super::format::{CgroupHierarchy, CgroupInfo, CgroupMember, CgroupsChunk, CpuStatSample, ProcessCpus};

/// A cgroup: (hierarchy id, cgroup id).
pub type CgroupId = (u32, u64);

#[derive(Clone, Debug, Default)]
pub struct CgroupTables {
    pub hierarchies: Vec<CgroupHierarchy>,
    /// The latest description of each cgroup.
    pub cgroups: FxHashMap<CgroupId, CgroupInfo>,
    /// In file order (each chunk's rows in time order).
    pub members: Vec<CgroupMember>,
    pub samples: Vec<CpuStatSample>,
    pub processes: Vec<ProcessCpus>,
}

impl CgroupTables {
    pub fn merge(&mut self, c: CgroupsChunk) {
        for h in c.hierarchies {
            self.hierarchies.retain(|k| k.id != h.id);
            self.hierarchies.push(h);
        }
        for g in c.cgroups {
            let key = (g.hierarchy, g.id);
            // A cgroup gone before it was read again keeps the name it had.
            match self.cgroups.get_mut(&key) {
                Some(old) if g.path.is_empty() => old.ts = g.ts,
                Some(old) => *old = g,
                None => {
                    self.cgroups.insert(key, g);
                }
            }
        }
        self.members.extend(c.members);
        self.samples.extend(c.samples);
        self.processes.extend(c.processes);
    }

    pub fn is_empty(&self) -> bool {
        self.hierarchies.is_empty() && self.members.is_empty()
    }

    /// The hierarchy a controller is bound to.
    pub fn hierarchy_with(&self, controller: &str) -> Option<&CgroupHierarchy> {
        self.hierarchies.iter().find(|h| h.controllers.iter().any(|c| c == controller))
    }

    /// The hierarchy per-cgroup figures are about: the one with the `cpu` controller (a v1
    /// `cpu` hierarchy on a hybrid system), else the v2 one.
    pub fn cpu_hierarchy(&self) -> Option<u32> {
        self.hierarchy_with("cpu").or_else(|| self.hierarchies.iter().find(|h| h.version == 2)).map(|h| h.id)
    }

    pub fn hierarchy(&self, id: u32) -> Option<&CgroupHierarchy> {
        self.hierarchies.iter().find(|h| h.id == id)
    }

    /// The cgroup's path from its hierarchy's root (`?id` when it was never named).
    pub fn path(&self, c: CgroupId) -> String {
        match self.cgroups.get(&c) {
            Some(g) if !g.path.is_empty() => g.path.clone(),
            _ => format!("?{}", c.1),
        }
    }

    /// The cgroup named by `path` in `hierarchy`.
    pub fn by_path(&self, hierarchy: u32, path: &str) -> Option<CgroupId> {
        self.cgroups
            .values()
            .find(|g| g.hierarchy == hierarchy && g.path == path)
            .map(|g| (g.hierarchy, g.id))
    }

    /// Which cgroup of each hierarchy every thread was in at the end of the trace: thread rows,
    /// and process rows for the threads of that process, the later one counting.
    pub fn membership(&self) -> Membership {
        let mut m = Membership::default();
        for r in &self.members {
            let slot = if r.tid == 0 { &mut m.processes } else { &mut m.threads };
            let e = slot.entry((r.hierarchy, if r.tid == 0 { r.pid } else { r.tid })).or_insert((r.ts, r.id));
            if r.ts >= e.0 {
                *e = (r.ts, r.id);
            }
        }
        m
    }

    /// The controls in force for a cgroup: its own, or for the quota the tightest of its
    /// ancestors' (a parent's quota limits every child).
    pub fn effective_quota_cpus(&self, c: CgroupId) -> Option<f64> {
        let mut path = self.cgroups.get(&c)?.path.clone();
        let mut best: Option<f64> = None;
        loop {
            if let Some(q) = self.by_path(c.0, &path).and_then(|k| self.cgroups.get(&k)?.cpu.quota_cpus()) {
                best = Some(best.map_or(q, |b: f64| b.min(q)));
            }
            match path.rfind('/') {
                Some(0) if path.len() > 1 => path = "/".into(),
                Some(i) if i > 0 => path.truncate(i),
                _ => break,
            }
        }
        best
    }
}

/// Thread → cgroup, per hierarchy, as [`CgroupTables::membership`] found it.
#[derive(Clone, Debug, Default)]
pub struct Membership {
    threads: FxHashMap<(u32, u32), (u64, u64)>,
    processes: FxHashMap<(u32, u32), (u64, u64)>,
}

impl Membership {
    /// The cgroup of thread `tid` of process `pid` in `hierarchy`.
    pub fn of(&self, hierarchy: u32, tid: u32, pid: u32) -> Option<u64> {
        let t = self.threads.get(&(hierarchy, tid));
        let p = self.processes.get(&(hierarchy, pid));
        match (t, p) {
            (Some(t), Some(p)) => Some(if t.0 >= p.0 { t.1 } else { p.1 }),
            (Some(t), None) => Some(t.1),
            (None, Some(p)) => Some(p.1),
            (None, None) => None,
        }
    }
}

/// Whether cgroup path `path` is `ancestor` or inside it.
pub fn path_under(path: &str, ancestor: &str) -> bool {
    let a = ancestor.trim_end_matches('/');
    a.is_empty() || path == a || path.strip_prefix(a).is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::format::CpuControls;

    fn cgroup(id: u64, path: &str, quota: Option<u64>) -> CgroupInfo {
        CgroupInfo {
            hierarchy: 1,
            id,
            path: path.into(),
            ts: 0,
            cpu: CpuControls { quota_us: quota, period_us: Some(100_000), ..Default::default() },
        }
    }

    #[test]
    fn membership_takes_the_latest_row_and_quotas_the_tightest_ancestor() {
        let mut t = CgroupTables::default();
        t.merge(CgroupsChunk {
            cgroups: vec![
                cgroup(1, "/", None),
                cgroup(2, "/a", Some(50_000)),
                cgroup(3, "/a/b", Some(80_000)),
            ],
            members: vec![
                CgroupMember { ts: 1, pid: 10, tid: 0, hierarchy: 1, id: 1 },
                CgroupMember { ts: 5, pid: 10, tid: 11, hierarchy: 1, id: 3 },
                CgroupMember { ts: 9, pid: 10, tid: 0, hierarchy: 1, id: 2 },
            ],
            ..Default::default()
        });
        let m = t.membership();
        assert_eq!(m.of(1, 11, 10), Some(2), "the later process row moved the thread too");
        assert_eq!(m.of(1, 12, 10), Some(2));
        assert_eq!(m.of(2, 11, 10), None);
        assert_eq!(t.effective_quota_cpus((1, 3)), Some(0.5));
        assert_eq!(t.effective_quota_cpus((1, 1)), None);
        assert!(path_under("/a/b", "/a") && path_under("/a", "/a/") && !path_under("/ab", "/a"));
        assert!(path_under("/x", "/"));
    }
}
