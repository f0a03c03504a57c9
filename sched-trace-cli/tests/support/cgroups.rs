//! Cgroups the tests make: which hierarchy has the `cpu` controller, and a cgroup whose
//! processes are killed and which is removed when dropped.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

/// A mounted hierarchy: where, and whether it is v2.
#[derive(Clone, Debug)]
pub struct Hierarchy {
    pub mount: PathBuf,
    pub v2: bool,
}

/// The hierarchy of the `cpu` controller (`None` when none is mounted).
pub fn cpu_hierarchy() -> Option<Hierarchy> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let Some(mount) = left.split(' ').nth(4).map(PathBuf::from) else { continue };
        let mut r = right.split(' ');
        let (fstype, options) = (r.next().unwrap_or(""), r.nth(1).unwrap_or(""));
        if fstype == "cgroup" && options.split(',').any(|o| o == "cpu") {
            return Some(Hierarchy { mount, v2: false });
        }
        if fstype == "cgroup2"
            && std::fs::read_to_string(mount.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"))
        {
            return Some(Hierarchy { mount, v2: true });
        }
    }
    None
}

/// The v2 hierarchy, wherever it is mounted.
pub fn v2_hierarchy() -> Option<Hierarchy> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount = PathBuf::from(left.split(' ').nth(4)?);
        (right.split(' ').next()? == "cgroup2").then_some(Hierarchy { mount, v2: true })
    })
}

/// A cgroup the test made; its processes are killed and it is removed when dropped.
pub struct TestCgroup {
    pub dir: PathBuf,
    pub v2: bool,
    children: Vec<TestCgroup>,
}

impl TestCgroup {
    pub fn new(h: &Hierarchy, name: &str) -> TestCgroup {
        let dir = h.mount.join(format!("sched-trace-test-{}-{name}", std::process::id()));
        Self::make(dir, h.v2)
    }

    fn make(dir: PathBuf, v2: bool) -> TestCgroup {
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let g = TestCgroup { dir, v2, children: Vec::new() };
        if v2 {
            // Let its children have the cpu controller too (ignored where it has none).
            let _ = std::fs::write(g.dir.join("cgroup.subtree_control"), "+cpu");
        }
        g
    }

    pub fn child(&mut self, name: &str) -> PathBuf {
        let c = Self::make(self.dir.join(name), self.v2);
        let dir = c.dir.clone();
        self.children.push(c);
        dir
    }

    pub fn set_quota(&self, quota_us: u64, period_us: u64) {
        if self.v2 {
            std::fs::write(self.dir.join("cpu.max"), format!("{quota_us} {period_us}")).unwrap();
        } else {
            std::fs::write(self.dir.join("cpu.cfs_period_us"), period_us.to_string()).unwrap();
            std::fs::write(self.dir.join("cpu.cfs_quota_us"), quota_us.to_string()).unwrap();
        }
    }

    /// `cpu.stat`: (periods, throttled periods, throttled ns).
    pub fn cpu_stat(&self) -> (u64, u64, u64) {
        let text = std::fs::read_to_string(self.dir.join("cpu.stat")).unwrap();
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ')?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let throttled_ns = if self.v2 { get("throttled_usec") * 1000 } else { get("throttled_time") };
        (get("nr_periods"), get("nr_throttled"), throttled_ns)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Innermost first.
        while let Some(c) = self.children.pop() {
            drop(c);
        }
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<i32> = procs.lines().filter_map(|l| l.trim().parse().ok()).collect();
            if pids.is_empty() || Instant::now() > end {
                break;
            }
            for p in pids {
                // SAFETY: kill(2) of the test's own burners.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
