//! Cgroups of the traced tasks, for the trace's cgroup table: the mounted hierarchies, which
//! cgroup each traced task is in (read from /proc when recording starts, and from the probes'
//! cgroup records at every creation and move), the CPU controls of those cgroups, `cpu.stat`
//! samples of the ones with a CPU quota, and the CPUs each traced process may use.
//!
//! A cgroup is named in the kernel by its hierarchy's id and the id of its directory, which is
//! the directory's inode number; names are found by walking the mounted hierarchies, again
//! when a record names a cgroup not seen yet (the probes wake the recorder at once for those,
//! so a short-lived cgroup is usually still there to be named).

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rustc_hash::{FxHashMap, FxHashSet};
use sched_trace_abi::{CgroupKey, cgroup_slot};

use crate::trace::{
    cgroups::CgroupId,
    event::CgroupChange,
    format::{
        CgroupHierarchy, CgroupInfo, CgroupMember, CgroupsChunk, CpuControls, CpuStatSample, ProcessCpus,
    },
};

/// A cgroup named for `record --cgroup` that cannot be traced.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read cgroup {path}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a cgroup of the v2 hierarchy nor of the v1 `cpu` or `cpuset` hierarchy \
         (mounted here: {mounted})"
    )]
    NotTraceable { path: PathBuf, mounted: String },
}

/// Walk no deeper than this, nor more directories than that, when naming cgroups.
const MAX_WALK_DEPTH: usize = 32;
const MAX_WALK_DIRS: usize = 100_000;
/// Walk the hierarchies again for an unknown cgroup at most this often.
const REWALK_EVERY: Duration = Duration::from_millis(20);
/// Read the CPU controls of the known cgroups again this often (a quota can change).
const CONTROLS_EVERY: Duration = Duration::from_secs(1);

/// The mounted cgroup hierarchies and which of them the probes' slots read.
#[derive(Clone, Debug, Default)]
pub struct Hierarchies {
    pub list: Vec<CgroupHierarchy>,
    /// Hierarchy id of each slot of [`cgroup_slot`], when mounted.
    pub slots: [Option<u32>; cgroup_slot::COUNT],
}

impl Hierarchies {
    pub fn read() -> Hierarchies {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Self::parse(&mountinfo, &own, |mount| {
            fs::read_to_string(Path::new(mount).join("cgroup.controllers")).ok()
        })
    }

    /// From `/proc/self/mountinfo` and `/proc/self/cgroup` (which numbers the hierarchies);
    /// `v2_controllers` reads a v2 mount's `cgroup.controllers`.
    fn parse(mountinfo: &str, own: &str, v2_controllers: impl Fn(&str) -> Option<String>) -> Hierarchies {
        let numbered: Vec<(u32, Vec<&str>)> = own
            .lines()
            .filter_map(|l| {
                let mut it = l.splitn(3, ':');
                let id = it.next()?.parse().ok()?;
                Some((id, it.next()?.split(',').filter(|c| !c.is_empty()).collect()))
            })
            .collect();
        let mut list: Vec<CgroupHierarchy> = Vec::new();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else { continue };
            let Some(mount) = left.split(' ').nth(4) else { continue };
            let mut r = right.split(' ');
            let (fstype, options) = (r.next().unwrap_or(""), r.nth(1).unwrap_or(""));
            let h = match fstype {
                "cgroup2" => CgroupHierarchy {
                    id: 0,
                    version: 2,
                    controllers: v2_controllers(mount)
                        .unwrap_or_default()
                        .split_whitespace()
                        .map(String::from)
                        .collect(),
                    mount: mount.to_string(),
                },
                "cgroup" => {
                    let options: Vec<&str> = options.split(',').collect();
                    let Some((id, controllers)) =
                        numbered.iter().find(|(id, c)| *id != 0 && c.iter().all(|c| options.contains(c)))
                    else {
                        continue;
                    };
                    CgroupHierarchy {
                        id: *id,
                        version: 1,
                        controllers: controllers.iter().map(|c| c.to_string()).collect(),
                        mount: mount.to_string(),
                    }
                }
                _ => continue,
            };
            // A hierarchy mounted twice: the first mount names it.
            if !list.iter().any(|k| k.id == h.id) {
                list.push(h);
            }
        }
        let with = |controller: &str| {
            list.iter()
                .find(|h| h.version == 1 && h.controllers.iter().any(|c| c == controller))
                .or_else(|| {
                    list.iter().find(|h| h.version == 2 && h.controllers.iter().any(|c| c == controller))
                })
                .map(|h| h.id)
        };
        let mut slots = [None; cgroup_slot::COUNT];
        slots[cgroup_slot::V2] = list.iter().find(|h| h.version == 2).map(|h| h.id);
        slots[cgroup_slot::CPU] = with("cpu");
        slots[cgroup_slot::CPUSET] = with("cpuset");
        Hierarchies { list, slots }
    }

    fn get(&self, id: u32) -> Option<&CgroupHierarchy> {
        self.list.iter().find(|h| h.id == id)
    }

    /// The hierarchies the probes read, each once.
    fn traced(&self) -> impl Iterator<Item = &CgroupHierarchy> {
        self.list.iter().filter(|h| self.slots.contains(&Some(h.id)))
    }

    /// The kernel's key of the cgroup directory `path`, for the cgroup filter.
    pub fn filter_key(&self, path: &Path) -> Result<CgroupKey, CgroupError> {
        let unreadable = |source| CgroupError::Unreadable { path: path.to_path_buf(), source };
        let full = fs::canonicalize(path).map_err(unreadable)?;
        let meta = fs::metadata(&full).map_err(unreadable)?;
        let h = self
            .traced()
            .filter(|h| full.starts_with(&h.mount))
            .max_by_key(|h| h.mount.len())
            .filter(|_| meta.is_dir() && full.join("cgroup.procs").exists())
            .ok_or_else(|| CgroupError::NotTraceable {
                path: path.to_path_buf(),
                mounted: self
                    .list
                    .iter()
                    .map(|h| {
                        format!(
                            "{} ({})",
                            h.mount,
                            if h.version == 2 { "v2".into() } else { h.controllers.join(",") }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        Ok(CgroupKey { hierarchy: h.id, _pad: 0, id: meta.ino() })
    }
}

/// The processes in cgroup directory `dir` and every cgroup below it.
pub fn processes_under(dir: &Path) -> Vec<u32> {
    let mut out: Vec<u32> = cgroup_dirs(dir, &mut 0)
        .iter()
        .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|procs| procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()).collect::<Vec<_>>())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Cgroup directory `root` and those below it, depth first, no deeper than [`MAX_WALK_DEPTH`];
/// no directory's children are looked at once `seen` (counted across calls that share it)
/// reaches [`MAX_WALK_DIRS`].
fn cgroup_dirs(root: &Path, seen: &mut usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        *seen += 1;
        if depth < MAX_WALK_DEPTH && *seen < MAX_WALK_DIRS {
            stack.extend(subdirectories(&d).map(|s| (s, depth + 1)));
        }
        out.push(d);
    }
    out
}

fn subdirectories(dir: &Path) -> impl Iterator<Item = PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
}

/// What the recorder knows about cgroups, and what it has not written yet.
pub struct CgroupWatch {
    hierarchies: Hierarchies,
    /// Cgroup → its path, from the last walk of the hierarchies.
    names: FxHashMap<CgroupId, String>,
    walked_at: Option<Instant>,
    /// Cgroups described in the trace, with their directories.
    known: FxHashMap<CgroupId, (PathBuf, CpuControls)>,
    /// Cgroups of the `cpu` hierarchy that have a quota: their `cpu.stat` is sampled.
    sampled: Vec<(CgroupId, PathBuf)>,
    /// The last membership written per (hierarchy, pid, tid).
    members: FxHashMap<(u32, u32, u32), u64>,
    /// Processes whose CPUs were read.
    processes: FxHashSet<u32>,
    controls_read_at: Instant,
    pending: CgroupsChunk,
}

impl CgroupWatch {
    pub fn new(hierarchies: Hierarchies) -> CgroupWatch {
        let mut w = CgroupWatch {
            pending: CgroupsChunk { hierarchies: hierarchies.list.clone(), ..Default::default() },
            hierarchies,
            names: FxHashMap::default(),
            walked_at: None,
            known: FxHashMap::default(),
            sampled: Vec::new(),
            members: FxHashMap::default(),
            processes: FxHashSet::default(),
            controls_read_at: Instant::now(),
        };
        w.walk();
        w
    }

    /// Whether some cgroup's throttling is being sampled.
    pub fn sampling(&self) -> bool {
        !self.sampled.is_empty()
    }

    fn walk(&mut self) {
        self.walked_at = Some(Instant::now());
        let mut seen = 0;
        for h in self.hierarchies.traced() {
            let root = PathBuf::from(&h.mount);
            for d in cgroup_dirs(&root, &mut seen) {
                if let Ok(meta) = fs::metadata(&d) {
                    let rel = d.strip_prefix(&root).map(|r| format!("/{}", r.display())).unwrap_or_default();
                    self.names.insert((h.id, meta.ino()), rel);
                }
            }
        }
    }

    /// Describes cgroup `c` in the trace (once), with its ancestors, and samples it when it
    /// has a CPU quota.
    fn describe(&mut self, c: CgroupId, ts: u64) {
        if c.1 == 0 || self.known.contains_key(&c) {
            return;
        }
        if !self.names.contains_key(&c) && self.walked_at.is_none_or(|t| t.elapsed() >= REWALK_EVERY) {
            self.walk();
        }
        let Some(h) = self.hierarchies.get(c.0) else { return };
        let Some(path) = self.names.get(&c).cloned() else {
            // Gone before it could be named: described without a name, once.
            self.known.insert(c, (PathBuf::new(), CpuControls::default()));
            self.pending.cgroups.push(CgroupInfo {
                hierarchy: c.0,
                id: c.1,
                path: String::new(),
                ts,
                cpu: Default::default(),
            });
            return;
        };
        let dir = Path::new(&h.mount).join(path.trim_start_matches('/'));
        let cpu = read_controls(&dir);
        if Some(c.0) == self.hierarchies.slots[cgroup_slot::CPU] && cpu.quota_us.is_some() {
            self.sampled.push((c, dir.clone()));
        }
        self.known.insert(c, (dir.clone(), cpu.clone()));
        self.pending.cgroups.push(CgroupInfo { hierarchy: c.0, id: c.1, path: path.clone(), ts, cpu });
        // Its ancestors: a parent's quota or weight shapes its children.
        if let Some(parent) = dir.parent().filter(|_| path != "/")
            && let Ok(meta) = fs::metadata(parent)
        {
            self.describe((c.0, meta.ino()), ts);
        }
    }

    /// The cgroups of every thread of process `pid`, from /proc (when recording starts).
    pub fn scan_process(&mut self, pid: u32, ts: u64) {
        let Some(process) = self.read_task(pid, pid) else { return };
        self.note(ts, pid, 0, &process);
        let dir = Path::new("/proc").join(pid.to_string()).join("task");
        for tid in fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&t| t != pid)
        {
            // Only threads placed apart from their process (v1 `tasks`, v2 threaded cgroups).
            if let Some(own) = self.read_task(pid, tid)
                && own != process
            {
                self.note(ts, pid, tid, &own);
            }
        }
        self.process_cpus(pid, ts);
    }

    /// A cgroup record from the probes: a process created or moved.
    pub fn change(&mut self, ts: u64, tid: u32, pid: u32, c: &CgroupChange) {
        let cgroups: Vec<CgroupId> = c.cgroups.iter().copied().filter(|c| c.1 != 0).collect();
        let tid = if c.threadgroup || c.fork || tid == pid { 0 } else { tid };
        self.note(ts, pid, tid, &cgroups);
        if c.fork {
            self.processes.remove(&pid);
        }
        self.process_cpus(pid, ts);
    }

    fn read_task(&self, pid: u32, tid: u32) -> Option<Vec<CgroupId>> {
        let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/cgroup")).ok()?;
        let mut out = Vec::new();
        for line in text.lines() {
            let mut it = line.splitn(3, ':');
            let (Some(id), Some(_), Some(path)) = (it.next(), it.next(), it.next()) else { continue };
            let Ok(id) = id.parse::<u32>() else { continue };
            let Some(h) = self.hierarchies.traced().find(|h| h.id == id) else { continue };
            let dir = Path::new(&h.mount).join(path.trim_start_matches('/'));
            if let Ok(meta) = fs::metadata(dir) {
                out.push((id, meta.ino()));
            }
        }
        out.sort_unstable();
        out.dedup();
        Some(out)
    }

    fn note(&mut self, ts: u64, pid: u32, tid: u32, cgroups: &[CgroupId]) {
        for &c in cgroups {
            self.describe(c, ts);
            if self.members.insert((c.0, pid, tid), c.1) != Some(c.1) {
                self.pending.members.push(CgroupMember { ts, pid, tid, hierarchy: c.0, id: c.1 });
            }
        }
    }

    fn process_cpus(&mut self, pid: u32, ts: u64) {
        if !self.processes.insert(pid) {
            return;
        }
        if let Some(cpus_allowed) = super::procfs::cpus_allowed(pid) {
            self.pending.processes.push(ProcessCpus { pid, ts, cpus_allowed });
        }
    }

    /// Samples the throttling of the cgroups with a quota.
    pub fn sample(&mut self, ts: u64) {
        for (c, dir) in &self.sampled {
            if let Some(s) = read_cpu_stat(dir, *c, ts) {
                self.pending.samples.push(s);
            }
        }
    }

    /// What was learned since the last call, if anything; the controls of the known cgroups are
    /// read again now and then, and written when they changed.
    pub fn take(&mut self, ts: u64) -> Option<CgroupsChunk> {
        if self.controls_read_at.elapsed() >= CONTROLS_EVERY {
            self.controls_read_at = Instant::now();
            let mut changed = Vec::new();
            for (c, (dir, old)) in self.known.iter_mut() {
                if dir.as_os_str().is_empty() || !dir.exists() {
                    continue;
                }
                let now = read_controls(dir);
                if now != *old {
                    *old = now.clone();
                    changed.push(CgroupInfo {
                        hierarchy: c.0,
                        id: c.1,
                        path: self.names.get(c).cloned().unwrap_or_default(),
                        ts,
                        cpu: now,
                    });
                }
            }
            for g in &changed {
                let c = (g.hierarchy, g.id);
                let sampled = self.sampled.iter().any(|s| s.0 == c);
                if g.cpu.quota_us.is_some()
                    && !sampled
                    && Some(c.0) == self.hierarchies.slots[cgroup_slot::CPU]
                {
                    self.sampled.push((c, self.known[&c].0.clone()));
                }
            }
            self.pending.cgroups.extend(changed);
        }
        if self.pending.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut self.pending))
    }
}

/// A cgroup's CPU controls, from whichever of the v1 and v2 files its directory has.
fn read_controls(dir: &Path) -> CpuControls {
    let read = |f: &str| fs::read_to_string(dir.join(f)).ok().map(|s| s.trim().to_string());
    let number = |f: &str| read(f).and_then(|s| s.parse::<i64>().ok());
    let mut c = CpuControls::default();
    if let Some(max) = read("cpu.max") {
        let mut it = max.split_whitespace();
        c.quota_us = it.next().and_then(|q| q.parse().ok());
        c.period_us = it.next().and_then(|p| p.parse().ok());
    } else if let Some(period) = number("cpu.cfs_period_us") {
        c.period_us = u64::try_from(period).ok();
        c.quota_us = number("cpu.cfs_quota_us").and_then(|q| u64::try_from(q).ok());
    }
    c.weight = number("cpu.weight").and_then(|w| u64::try_from(w).ok());
    c.shares = number("cpu.shares").and_then(|w| u64::try_from(w).ok());
    c.cpus =
        read("cpuset.cpus.effective").or_else(|| read("cpuset.effective_cpus")).filter(|s| !s.is_empty());
    c
}

/// `cpu.stat` of a cgroup: v1 counts throttled time in ns, v2 in µs.
fn read_cpu_stat(dir: &Path, c: CgroupId, ts: u64) -> Option<CpuStatSample> {
    let text = fs::read_to_string(dir.join("cpu.stat")).ok()?;
    Some(parse_cpu_stat(&text, c, ts))
}

fn parse_cpu_stat(text: &str, c: CgroupId, ts: u64) -> CpuStatSample {
    let mut s = CpuStatSample { ts, hierarchy: c.0, id: c.1, ..Default::default() };
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next().and_then(|v| v.parse::<u64>().ok())) else { continue };
        match k {
            "nr_periods" => s.nr_periods = v,
            "nr_throttled" => s.nr_throttled = v,
            "throttled_time" => s.throttled_ns = v,
            "throttled_usec" => s.throttled_ns = v.saturating_mul(1000),
            "usage_usec" => s.usage_ns = Some(v.saturating_mul(1000)),
            _ => {}
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
30 24 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
33 30 0:29 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
34 30 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const OWN: &str = "9:name=systemd:/\n3:cpuset:/\n1:cpu:/\n0::/\n";

    #[test]
    fn hybrid_hierarchies_put_cpu_and_cpuset_on_v1() {
        let h = Hierarchies::parse(MOUNTINFO, OWN, |_| Some("hugetlb\n".into()));
        assert_eq!(h.list.len(), 4);
        assert_eq!(h.slots, [Some(0), Some(1), Some(3)]);
        assert_eq!(h.get(9).unwrap().controllers, ["name=systemd"]);
        assert_eq!(h.get(0).unwrap().controllers, ["hugetlb"]);
    }

    #[test]
    fn pure_v2_puts_every_slot_on_v2() {
        let mountinfo = "34 30 0:30 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n";
        let h =
            Hierarchies::parse(mountinfo, "0::/user.slice\n", |_| Some("cpuset cpu io memory pids".into()));
        assert_eq!(h.slots, [Some(0), Some(0), Some(0)]);
        assert_eq!(h.traced().count(), 1);
    }

    #[test]
    fn cpu_stat_of_either_version() {
        let v1 = parse_cpu_stat("nr_periods 20\nnr_throttled 15\nthrottled_time 1500000000\n", (1, 7), 5);
        assert_eq!(
            (v1.nr_periods, v1.nr_throttled, v1.throttled_ns, v1.usage_ns),
            (20, 15, 1_500_000_000, None)
        );
        let v2 = parse_cpu_stat(
            "usage_usec 1000\nuser_usec 900\nsystem_usec 100\nnr_periods 4\nnr_throttled 2\nthrottled_usec 30\n",
            (0, 7),
            5,
        );
        assert_eq!((v2.nr_throttled, v2.throttled_ns, v2.usage_ns), (2, 30_000, Some(1_000_000)));
    }
}
