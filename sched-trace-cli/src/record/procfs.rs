//! Names of threads from /proc, for the trace's task table: a scan when recording starts, and
//! look-ups of threads that first appear in events.

use std::{fs, path::Path};

use crate::trace::{Comm, TaskEntry, TaskSource};

/// Every thread of process `pid`.
pub fn scan_process(pid: u32, ts: u64) -> Vec<TaskEntry> {
    let dir = Path::new("/proc").join(pid.to_string()).join("task");
    let Ok(entries) = fs::read_dir(&dir) else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|tid| {
            let comm = read_comm(&dir.join(tid.to_string()).join("comm"))?;
            Some(TaskEntry { ts, tid, pid, comm, source: TaskSource::Scan })
        })
        .collect()
}

/// Every process.
pub fn all_pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).collect()
}

/// Process and name of thread `tid`, if it still exists.
pub fn lookup(tid: u32) -> Option<(u32, Comm)> {
    let dir = Path::new("/proc").join(tid.to_string());
    let status = fs::read_to_string(dir.join("status")).ok()?;
    let pid = status.lines().find_map(|l| l.strip_prefix("Tgid:"))?.trim().parse().ok()?;
    let comm = read_comm(&dir.join("comm"))?;
    Some((pid, comm))
}

/// The CPUs any thread of process `pid` may run on: the union of its threads'
/// `Cpus_allowed_list` (one thread may have pinned itself, as a goroutine under
/// `LockOSThread` does in the tests; the process as a whole may still use the rest).
pub fn cpus_allowed(pid: u32) -> Option<Vec<u32>> {
    let mut cpus: Vec<u32> = fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|s| parse_cpu_list(s.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?.trim()))
        .flatten()
        .collect();
    cpus.sort_unstable();
    cpus.dedup();
    (!cpus.is_empty()).then_some(cpus)
}

/// A CPU list as the kernel writes them (`0-3,8`); `None` when it is not one.
pub fn parse_cpu_list(list: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        // No list of a real machine's CPUs is longer than this.
        if b < a || b - a > 1 << 16 {
            return None;
        }
        out.extend(a..=b);
    }
    Some(out)
}

fn read_comm(path: &Path) -> Option<Comm> {
    let s = fs::read_to_string(path).ok()?;
    Some(Comm::new(s.trim_end_matches('\n')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_process_and_its_threads() {
        let me = std::process::id();
        let found = scan_process(me, 7);
        assert!(found.iter().any(|t| t.tid == me && t.pid == me && t.ts == 7));
        assert_eq!(lookup(me).map(|(pid, _)| pid), Some(me));
        assert!(lookup(u32::MAX - 1).is_none());
        assert!(cpus_allowed(me).is_some_and(|c| !c.is_empty()));
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8"), Some(vec![0, 1, 2, 3, 8]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }
}
