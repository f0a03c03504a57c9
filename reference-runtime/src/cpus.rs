//! How many CPUs the process may use: its affinity mask and its cgroup v2 CPU quota.

use std::io;
use std::path::{Path, PathBuf};

/// Words of the affinity mask passed to the kernel (1024 CPUs, glibc's `cpu_set_t`).
const MASK_WORDS: usize = 16;

/// The CPUs in the calling thread's affinity mask (`sched_getaffinity`).
pub fn allowed_cpus() -> Vec<usize> {
    let mut mask = [0u64; MASK_WORDS];
    // SAFETY: `mask` is writable for the size passed; the kernel writes at most that many bytes.
    let r = unsafe { libc::sched_getaffinity(0, size_of_val(&mask), mask.as_mut_ptr().cast()) };
    if r != 0 {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        return (0..n).collect();
    }
    (0..MASK_WORDS * 64).filter(|&cpu| mask[cpu / 64] & (1 << (cpu % 64)) != 0).collect()
}

/// Pins the calling thread to one CPU (`sched_setaffinity`).
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= MASK_WORDS * 64 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("no CPU {cpu}")));
    }
    let mut mask = [0u64; MASK_WORDS];
    mask[cpu / 64] |= 1 << (cpu % 64);
    // SAFETY: `mask` is readable for the size passed.
    let r = unsafe { libc::sched_setaffinity(0, size_of_val(&mask), mask.as_ptr().cast()) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// The default number of Ps: the CPUs in the affinity mask, capped by the cgroup v2 CPU quota
/// (`ceil(quota / period)`, the smallest along the process's cgroup and its ancestors), at least 1.
pub fn available_procs() -> usize {
    let cpus = allowed_cpus().len().max(1);
    let quota = cgroup_cpu_limit(Path::new("/proc/self/cgroup"), Path::new("/sys/fs/cgroup"));
    quota.map_or(cpus, |q| cpus.min(q)).max(1)
}

/// The CPU limit of the cgroup v2 the process is in, from `cpu.max` of that cgroup and of its
/// ancestors (a parent's quota binds its children too).
fn cgroup_cpu_limit(proc_cgroup: &Path, root: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(proc_cgroup).ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mut dir: PathBuf = root.join(rel.trim().trim_start_matches('/'));
    let mut limit: Option<usize> = None;
    loop {
        if let Some(n) = std::fs::read_to_string(dir.join("cpu.max")).ok().and_then(|s| parse_cpu_max(&s)) {
            limit = Some(limit.map_or(n, |l| l.min(n)));
        }
        if dir == root || !dir.pop() || !dir.starts_with(root) {
            break;
        }
    }
    limit
}

/// `cpu.max` is `$MAX $PERIOD`, `$MAX` being `max` for no limit.
fn parse_cpu_max(s: &str) -> Option<usize> {
    let mut fields = s.split_whitespace();
    let quota = fields.next()?;
    if quota == "max" {
        return None;
    }
    let quota: u64 = quota.parse().ok()?;
    let period: u64 = match fields.next() {
        Some(p) => p.parse().ok()?,
        None => 100_000,
    };
    if period == 0 {
        return None;
    }
    usize::try_from(quota.div_ceil(period).max(1)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_rounds_up() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(2));
        assert_eq!(parse_cpu_max("100000 100000"), Some(1));
        assert_eq!(parse_cpu_max("1000 100000"), Some(1));
        assert_eq!(parse_cpu_max("400000 100000"), Some(4));
        assert_eq!(parse_cpu_max("junk"), None);
        assert_eq!(parse_cpu_max("100 0"), None);
    }

    #[test]
    fn cgroup_limit_is_the_smallest_along_the_path() {
        let root = std::env::temp_dir().join(format!("refrt-cgroup-{}", std::process::id()));
        let leaf = root.join("a/b");
        std::fs::create_dir_all(&leaf).expect("dirs");
        std::fs::write(root.join("cpu.max"), "max 100000\n").expect("write");
        std::fs::write(root.join("a/cpu.max"), "250000 100000\n").expect("write");
        std::fs::write(leaf.join("cpu.max"), "max 100000\n").expect("write");
        let proc_cgroup = root.join("proc-cgroup");
        std::fs::write(&proc_cgroup, "1:cpu:/ignored\n0::/a/b\n").expect("write");
        assert_eq!(cgroup_cpu_limit(&proc_cgroup, &root), Some(3));
        std::fs::write(leaf.join("cpu.max"), "50000 100000\n").expect("write");
        assert_eq!(cgroup_cpu_limit(&proc_cgroup, &root), Some(1));
        std::fs::write(&proc_cgroup, "0::/\n").expect("write");
        assert_eq!(cgroup_cpu_limit(&proc_cgroup, &root), None);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn at_least_one_proc_and_no_more_than_allowed_cpus() {
        let n = available_procs();
        assert!(n >= 1);
        assert!(n <= allowed_cpus().len().max(1));
    }
}
