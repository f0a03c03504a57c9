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

/// Every thread of every process.
pub fn scan_all(ts: u64) -> Vec<TaskEntry> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .flat_map(|pid| scan_process(pid, ts))
        .collect()
}

/// Process and name of thread `tid`, if it still exists.
pub fn lookup(tid: u32) -> Option<(u32, Comm)> {
    let dir = Path::new("/proc").join(tid.to_string());
    let status = fs::read_to_string(dir.join("status")).ok()?;
    let pid = status.lines().find_map(|l| l.strip_prefix("Tgid:"))?.trim().parse().ok()?;
    let comm = read_comm(&dir.join("comm"))?;
    Some((pid, comm))
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
    }
}
