//! Shared helpers of the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

pub mod cgroups;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Mutex, MutexGuard},
};

use sched_trace::{
    correlate::{self, ThreadStats, ThreadTracker},
    trace::TraceReader,
};

/// Tests that load probes measure scheduling: they take this lock so they run one at a time.
static KERNEL: Mutex<()> = Mutex::new(());

/// Returns a guard when this process may load BPF programs. Without root the test is skipped
/// locally, but fails on CI (CI=true): a probe test must never pass by not running.
pub fn kernel_probes() -> Option<MutexGuard<'static, ()>> {
    let euid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    if euid != 0 {
        if std::env::var_os("CI").is_some() {
            panic!("this test loads kernel probes and must run as root on CI");
        }
        eprintln!("skipped: loading kernel probes needs root");
        return None;
    }
    Some(KERNEL.lock().unwrap_or_else(|e| e.into_inner()))
}

pub fn sched_trace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sched-trace"))
}

pub fn testload() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sched-trace-testload"))
}

/// Runs a command, panicking with its output if it cannot start.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `sched-trace report FILE --json`, parsed.
pub fn report_json(trace: &Path) -> serde_json::Value {
    let o = output(sched_trace().arg("report").arg(trace).arg("--json"));
    assert!(o.status.success(), "report failed: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("report --json is JSON")
}

/// Per-thread statistics from the events of `trace` up to `cut` (ns), every state closed at
/// `cut`: what the trace says about the threads at that moment.
pub fn stats_at(trace: &Path, cut: u64) -> Vec<ThreadStats> {
    let mut reader = TraceReader::open(trace).expect("trace opens");
    let mut tracker = ThreadTracker::new(correlate::scope_of(reader.info()));
    while let Some(e) = reader.next_event().expect("trace reads") {
        if e.ts > cut {
            break;
        }
        tracker.event(&e);
    }
    tracker.finish(cut)
}

/// A background load of context switches: `perf bench sched pipe` for `loops` round trips.
pub fn switch_storm(loops: u32) -> SwitchStorm {
    use std::os::unix::process::CommandExt;
    let child = Command::new("perf")
        .args(["bench", "sched", "pipe", "-l", &loops.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("perf (linux-perf) is installed by cargo xtask setup");
    SwitchStorm(child)
}

/// A running `perf bench sched pipe`, in a process group of its own. Dropping it kills the whole
/// group: killing perf alone leaves its two worker processes blocked on their pipes for good.
pub struct SwitchStorm(std::process::Child);

impl Drop for SwitchStorm {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: kill(2) on the process group this storm leads.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.0.wait();
    }
}

/// Names of the kernel programs sched-trace attaches, as `bpftool prog` lists them (truncated
/// to 15 characters), that are loaded right now.
pub fn loaded_sched_trace_programs() -> Vec<String> {
    let o = output(Command::new("bpftool").args(["-j", "prog", "show"]));
    assert!(o.status.success(), "bpftool prog show: {}", stderr(&o));
    let progs: serde_json::Value = serde_json::from_slice(&o.stdout).expect("bpftool -j is JSON");
    const OURS: &[&str] = &[
        "sched_switch",
        "sched_waking",
        "sched_wakeup",
        "sched_wakeup_n",
        "sched_migrate_t",
        "sched_process_f",
        "sched_process_e",
        "task_rename",
        "sys_enter_epoll",
        "sys_exit_epoll_",
        "sys_enter_mmap",
        "sys_exit_mmap",
        "cpu_sample",
        "usdt",
    ];
    progs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .filter(|n| OURS.iter().any(|o| n.starts_with(o)))
        .map(str::to_string)
        .collect()
}

/// A Python with the PyPI `perfetto` package (Perfetto's own protobuf classes), which `cargo
/// xtask setup` installs into /opt/sched-trace/venv. Missing: the test is skipped locally and
/// fails on CI.
pub fn python_with_perfetto() -> Option<PathBuf> {
    let python = std::env::var_os("SCHED_TRACE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/sched-trace/venv/bin/python"));
    let works = Command::new(&python)
        .args(["-c", "import perfetto.protos.perfetto.trace.perfetto_trace_pb2"])
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return Some(python);
    }
    let why =
        format!("{} cannot import Perfetto's protobuf classes (run `cargo xtask setup`)", python.display());
    if std::env::var_os("CI").is_some() {
        panic!("{why}");
    }
    eprintln!("skipped: {why}");
    None
}

/// The reference runtime's workload binary, built next to sched-trace.
pub fn refrt() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_sched-trace")).with_file_name("refrt");
    assert!(p.exists(), "{} is not built: run `cargo build --bins` (cargo xtask test does)", p.display());
    p
}

/// The header of a synthetic trace of `target`, recorded on a made-up two-CPU host.
pub fn synthetic_info(
    target: sched_trace::trace::TraceTarget,
    user_probes: Vec<sched_trace::trace::UserProbe>,
) -> sched_trace::trace::TraceInfo {
    sched_trace::trace::TraceInfo {
        abi_version: sched_trace_abi::ABI_VERSION,
        recorder: "sched-trace test".into(),
        hostname: "testhost".into(),
        kernel_release: "6.18.0-test".into(),
        possible_cpus: 2,
        online_cpus: vec![0, 1],
        clock: "CLOCK_MONOTONIC".into(),
        realtime_offset_ns: 1_795_000_000_000_000_000,
        realtime_offset_error_ns: 10,
        start_ns: 1_000,
        command_line: vec!["sched-trace".into(), "record".into()],
        recorder_pid: 1,
        target,
        ring_buffer_bytes: 1 << 20,
        probes: vec!["tp_btf:sched_switch".into()],
        task_fields: vec!["pid".into()],
        user_probes,
        skipped_user_probes: Vec::new(),
        asleep_at_start: Vec::new(),
        stacks: None,
    }
}

/// Records the reference runtime running `workload` (with `extra` arguments) under
/// `sched-trace record`, its ground-truth log on; returns the trace and the log, in `dir`.
pub fn record_refrt(dir: &Path, workload: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let trace = dir.join(format!("{workload}.trace"));
    let log = dir.join(format!("{workload}.log"));
    let o = output(
        sched_trace()
            .env("REFRUNTIME_GROUND_TRUTH", &log)
            .args(["record", "--quiet", "-o"])
            .arg(&trace)
            .arg("--")
            .arg(refrt())
            .arg(workload)
            .args(extra),
    );
    assert!(o.status.success(), "recording {workload}: {}", stderr(&o));
    (trace, log)
}

/// Headless Chromium (Debian's `chromium`, installed by `cargo xtask setup`), with the flags
/// this machine kind needs (no sandbox as root, no GPU, no network of its own). Missing: the
/// test is skipped locally and fails on CI.
pub fn chromium() -> Option<Command> {
    let exe = std::env::var_os("SCHED_TRACE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into());
    if !exe.exists() {
        let why = format!("{} is missing (run `cargo xtask setup`)", exe.display());
        if std::env::var_os("CI").is_some() {
            panic!("{why}");
        }
        eprintln!("skipped: {why}");
        return None;
    }
    let profile = std::env::temp_dir().join(format!("sched-trace-chromium-{}", std::process::id()));
    let mut cmd = Command::new(exe);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--no-first-run",
        "--window-size=1300,900",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    Some(cmd)
}

/// Where tests keep what a person should look at after a run (screenshots): CI keeps the
/// directory as an artefact.
pub fn artefacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artefacts");
    std::fs::create_dir_all(&dir).expect("creating target/test-artefacts");
    dir
}
