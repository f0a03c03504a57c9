//! The executable mappings of the processes whose stacks a recording captures: read from
//! `/proc/PID/maps` (with each file's build id), so that their addresses can be named after the
//! processes are gone. A process is read when its first stack is seen, again after it execs or
//! maps code (the probes report every `mmap` with `PROT_EXEC` as it returns, and wake the
//! recorder for it: ld.so maps a program's libraries just after its exec), and once more when the
//! recording ends.

use std::{collections::HashMap, os::unix::fs::MetadataExt, path::Path};

use rustc_hash::{FxHashMap, FxHashSet};

use crate::trace::format::{Mapping, MappingsChunk};

/// Reads mappings as processes turn up, and again as they change.
#[derive(Default)]
pub struct MappingScanner {
    /// Processes to read: their stacks were seen and they were never read, or they changed.
    wanted: FxHashSet<u32>,
    /// Processes read at least once, and when last.
    read: FxHashMap<u32, u64>,
    /// Build ids by file (device, inode).
    build_ids: HashMap<(u64, u64), Option<String>>,
    /// Processes gone before they could be read.
    pub missed: u64,
}

impl MappingScanner {
    /// A record with a stack of process `pid` was seen.
    pub fn saw(&mut self, pid: u32) {
        if pid != 0 && !self.read.contains_key(&pid) {
            self.wanted.insert(pid);
        }
    }

    /// Process `pid` exec'd or mapped code: its mappings are to be read (again).
    pub fn changed(&mut self, pid: u32) {
        if pid != 0 {
            self.wanted.insert(pid);
        }
    }

    /// Reads the processes waiting to be read.
    pub fn scan(&mut self, ts: u64) -> Vec<MappingsChunk> {
        let pids: Vec<u32> = self.wanted.drain().collect();
        pids.into_iter().filter_map(|pid| self.read_one(pid, ts)).collect()
    }

    /// Reads every process read so far once more (the recording is ending).
    pub fn rescan_all(&mut self, ts: u64) -> Vec<MappingsChunk> {
        let mut pids: Vec<u32> = self.read.keys().copied().chain(self.wanted.drain()).collect();
        pids.sort_unstable();
        pids.dedup();
        pids.into_iter().filter_map(|pid| self.read_one(pid, ts)).collect()
    }

    /// Reads process `pid`; one gone keeps the snapshot it has (only ones never read are missed).
    fn read_one(&mut self, pid: u32, ts: u64) -> Option<MappingsChunk> {
        let Some(maps) = read_maps(pid) else {
            if !self.read.contains_key(&pid) {
                self.missed += 1;
            }
            return None;
        };
        let maps = maps
            .into_iter()
            .map(|mut m| {
                m.build_id = self.build_id(pid, &m.path);
                m
            })
            .collect();
        self.read.insert(pid, ts);
        Some(MappingsChunk { pid, ts, maps })
    }

    /// The build id of a mapped file, read through the process (`/proc/PID/map_files` would
    /// need the address; the path works while the file exists, and each file is read once).
    fn build_id(&mut self, pid: u32, path: &str) -> Option<String> {
        let through =
            Path::new("/proc").join(pid.to_string()).join("root").join(path.trim_start_matches('/'));
        let meta = std::fs::metadata(&through).ok()?;
        self.build_ids
            .entry((meta.dev(), meta.ino()))
            .or_insert_with(|| {
                sched_trace_binaries::build_id(&through)
                    .ok()
                    .flatten()
                    .map(|id| sched_trace_binaries::hex(&id))
            })
            .clone()
    }
}

/// The executable, file-backed mappings of process `pid`, if it still exists.
pub fn read_maps(pid: u32) -> Option<Vec<Mapping>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    Some(text.lines().filter_map(parse_line).collect())
}

/// One line of `/proc/PID/maps`: `start-end perms offset dev inode path`.
fn parse_line(line: &str) -> Option<Mapping> {
    let mut f = line.split_whitespace();
    let (range, perms, offset) = (f.next()?, f.next()?, f.next()?);
    let (_dev, _inode) = (f.next()?, f.next()?);
    let path: String = f.collect::<Vec<_>>().join(" ");
    if !perms.contains('x') || !path.starts_with('/') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        // A file deleted since it was mapped: the name without the marker.
        path: path.strip_suffix(" (deleted)").unwrap_or(&path).to_string(),
        build_id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_with_its_build_id() {
        let me = std::process::id();
        let mut s = MappingScanner::default();
        s.saw(me);
        let got = s.scan(5);
        assert_eq!(got.len(), 1);
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let ours = got[0].maps.iter().find(|m| Path::new(&m.path) == exe).expect("the executable is mapped");
        assert!(ours.build_id.as_ref().is_some_and(|b| b.len() >= 32), "{ours:?}");
        assert!(s.scan(6).is_empty(), "read once");
        s.changed(me);
        assert_eq!(s.scan(7).len(), 1, "read again after an exec");
        assert_eq!(
            parse_line("7f00-7f80 r-xp 00001000 08:01 42 /usr/lib/lib a.so (deleted)"),
            Some(Mapping {
                start: 0x7f00,
                end: 0x7f80,
                offset: 0x1000,
                path: "/usr/lib/lib a.so".into(),
                build_id: None
            })
        );
        assert_eq!(parse_line("7f00-7f80 rw-p 00000000 00:00 0 [heap]"), None);
    }
}
