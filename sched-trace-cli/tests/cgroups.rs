//! Cgroups: a CPU quota's throttling against the cgroup's own `cpu.stat`, CPU shares of two
//! weighted cgroups against their weights, and `record --cgroup` tracing exactly the processes
//! of a cgroup and its descendants (not a sibling's), on this machine's hierarchies: the
//! hierarchy that has the `cpu` controller (v1 on a hybrid system, v2 on a pure one) and the v2
//! hierarchy.

mod support;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use support::{cgroups::*, *};

fn burner() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sched-trace-burn"))
}

/// Sets the CPU weight of cgroup `dir` (v1 `cpu.shares`, v2 `cpu.weight`), `relative` to the
/// default: 1.0 is 1024 shares or weight 100.
fn set_weight(dir: &Path, v2: bool, relative: f64) {
    if v2 {
        std::fs::write(dir.join("cpu.weight"), ((100.0 * relative) as u64).to_string()).unwrap();
    } else {
        std::fs::write(dir.join("cpu.shares"), ((1024.0 * relative) as u64).to_string()).unwrap();
    }
}

/// `sched-trace record --cgroup …`, returned once its probes are attached.
fn record_cgroups(dirs: &[&Path], seconds: f64, out: &Path) -> Child {
    let mut cmd = sched_trace();
    cmd.args(["record", "-o"]).arg(out).args(["-d", &format!("{seconds}s")]);
    for d in dirs {
        cmd.arg("--cgroup").arg(d);
    }
    let mut child = cmd.stderr(Stdio::piped()).spawn().expect("sched-trace record starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("sched-trace: recording") {
                let _ = tx.send(());
            }
            eprintln!("{line}");
        }
    });
    rx.recv_timeout(Duration::from_secs(60)).expect("the recorder says it is recording");
    child
}

fn wait_ok(mut child: Child) {
    let status = child.wait().unwrap();
    assert!(status.success(), "sched-trace record: {status}");
}

/// The report's cgroup named `path` (from its hierarchy's root).
fn cgroup<'a>(report: &'a Value, path: &str) -> &'a Value {
    report["cgroups"]
        .as_array()
        .and_then(|v| v.iter().find(|g| g["path"] == path))
        .unwrap_or_else(|| panic!("no cgroup {path} in the report: {}", report["cgroups"]))
}

fn rel(h: &Hierarchy, dir: &Path) -> String {
    format!("/{}", dir.strip_prefix(&h.mount).unwrap().display())
}

/// Time the hypervisor stole from this machine's CPUs so far (`/proc/stat`, all CPUs).
fn steal_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cpu = stat.lines().next().unwrap();
    let ticks: u64 = cpu.split_whitespace().nth(8).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1_000_000_000 / hz
}

fn within(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance * b.abs().max(1e-9)
}

#[test]
fn a_cpu_quota_shows_as_throttling_counted_as_the_cgroup_counts_it() {
    let Some(_k) = kernel_probes() else { return };
    let h = cpu_hierarchy().expect("a hierarchy with the cpu controller");
    let g = TestCgroup::new(&h, "quota");
    // Half a CPU per 100 ms period, for two threads that want two CPUs.
    g.set_quota(50_000, 100_000);
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("quota.trace");
    let recorder = record_cgroups(&[&g.dir], 3.5, &trace);
    let (before, steal_before) = (g.cpu_stat(), steal_ns());
    let o = output(
        burner().args(["--threads", "2", "--seconds", "2", "--name", "quota-burn", "--cgroup"]).arg(&g.dir),
    );
    let (after, steal) = (g.cpu_stat(), steal_ns() - steal_before);
    assert!(o.status.success(), "burner: {}", stderr(&o));
    wait_ok(recorder);
    let truth: Vec<Value> =
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();

    let report = report_json(&trace);
    let c = cgroup(&report, &rel(&h, &g.dir));
    assert_eq!(c["quota_cpus"].as_f64(), Some(0.5), "{c}");
    assert_eq!(c["period_us"].as_u64(), Some(100_000), "{c}");
    let (periods, throttled, throttled_ns) = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    assert!(
        throttled >= 15,
        "two burners on half a CPU for 2 s are throttled in most periods: {after:?} - {before:?}"
    );
    let t = &c["throttling"];
    let traced_throttled = t["throttled_periods"].as_u64().unwrap();
    assert!(
        within(traced_throttled as f64, throttled as f64, 0.10),
        "throttled periods: the trace has {traced_throttled}, cpu.stat {throttled} (of {periods}): {t}"
    );
    // The burners' threads: off CPU, runnable but throttled, for the throttled time (which
    // cpu.stat sums over the CPUs the group was throttled on), not waiting in a run queue.
    let threads: Vec<&Value> = report["threads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["comm"].as_str().unwrap().starts_with("quota-burn"))
        .collect();
    assert_eq!(threads.len(), 2, "{}", report["threads"]);
    let throttled_waits: u64 = threads.iter().map(|t| t["off_cpu"]["throttled_ns"].as_u64().unwrap()).sum();
    assert!(
        within(throttled_waits as f64, throttled_ns as f64, 0.10),
        "the burners waited throttled {throttled_waits} ns; cpu.stat says {throttled_ns} ns"
    );
    for t in &threads {
        let (runq, thr) =
            (t["off_cpu"]["runqueue_ns"].as_u64().unwrap(), t["off_cpu"]["throttled_ns"].as_u64().unwrap());
        assert!(runq * 10 < thr, "throttling is not run-queue time: {t}");
        let tid = t["tid"].as_u64().unwrap();
        let kernel =
            truth.iter().find(|k| k["tid"].as_u64() == Some(tid)).expect("the burner reported the thread");
        // The kernel leaves the time the hypervisor stole out of a thread's run time
        // (PARAVIRT_TIME_ACCOUNTING); the trace cannot tell it apart.
        // A switch-in the kernel did not report leaves its time unattributed (see
        // correlate::threads), not on CPU.
        let (on, exec) = (t["on_cpu_ns"].as_u64().unwrap(), kernel["sum_exec_ns"].as_u64().unwrap());
        let unaccounted = t["unaccounted_ns"].as_u64().unwrap();
        assert!(
            on + unaccounted + 2_000_000 >= exec && on <= exec + steal + 20_000_000,
            "thread {tid}: on CPU {on} ns in the trace, {exec} ns by the kernel (steal {steal} ns)"
        );
    }
    // Two seconds at half a CPU (the quota is charged for the time the thread ran, which leaves
    // out what the hypervisor stole; the trace's on-CPU time does not).
    let used = c["on_cpu_ns"].as_u64().unwrap() as f64;
    assert!((0.9e9..1.15e9 + steal as f64).contains(&used), "steal {steal} ns: {c}");
    let text = output(sched_trace().arg("report").arg(&trace));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("THROTTLED") && text.contains("Running when the quota ran out"), "{text}");

    // The export's cgroup track: a throttled stretch per throttled period (two threads whose
    // waits do not overlap can make two).
    let json = dir.path().join("quota.json");
    let o =
        output(sched_trace().arg("export").arg(&trace).args(["--format", "chrome-json", "-o"]).arg(&json));
    assert!(o.status.success(), "{}", stderr(&o));
    let events: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let name = format!("cgroup {} (throttled)", rel(&h, &g.dir));
    let events = events["traceEvents"].as_array().unwrap();
    let track = events
        .iter()
        .find(|e| e["name"] == "thread_name" && e["args"]["name"] == name.as_str())
        .unwrap_or_else(|| panic!("no track {name}"));
    let stretches = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["pid"] == track["pid"] && e["tid"] == track["tid"])
        .count() as u64;
    assert!(
        stretches * 10 >= traced_throttled * 8 && stretches <= traced_throttled * 2,
        "{stretches} throttled stretches for {traced_throttled} throttled periods"
    );
}

#[test]
fn weighted_cgroups_share_a_cpu_in_the_ratio_of_their_weights() {
    let Some(_k) = kernel_probes() else { return };
    let h = cpu_hierarchy().expect("a hierarchy with the cpu controller");
    let mut parent = TestCgroup::new(&h, "weights");
    let (light, heavy) = (parent.child("light"), parent.child("heavy"));
    set_weight(&light, h.v2, 1.0);
    set_weight(&heavy, h.v2, 2.0);
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("weights.trace");
    let recorder = record_cgroups(&[&parent.dir], 4.0, &trace);
    // One thread each, both on CPU 1, for the same 2.5 s.
    let spawn = |g: &Path, name: &str| {
        burner()
            .args(["--threads", "1", "--seconds", "2.5", "--cpu", "1", "--name", name, "--cgroup"])
            .arg(g)
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (spawn(&light, "light"), spawn(&heavy, "heavy"));
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
    wait_ok(recorder);

    let report = report_json(&trace);
    let (l, hv) = (cgroup(&report, &rel(&h, &light)), cgroup(&report, &rel(&h, &heavy)));
    let ratio = hv["on_cpu_ns"].as_f64().unwrap() / l["on_cpu_ns"].as_f64().unwrap();
    assert!(within(ratio, 2.0, 0.10), "CPU time heavy/light = {ratio:.3}: {l}\n{hv}");
    let share_ratio = hv["share"].as_f64().unwrap() / l["share"].as_f64().unwrap();
    assert!(within(share_ratio, ratio, 0.001));
    // Each preempted the other.
    let by = |g: &Value, other: &str| {
        g["preempted_by"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p[0] == other)
            .and_then(|p| p[1].as_u64())
            .unwrap_or(0)
    };
    assert!(by(l, &rel(&h, &heavy)) > 10, "light was preempted by heavy: {l}");
    assert!(by(hv, &rel(&h, &light)) > 10, "heavy was preempted by light: {hv}");
    let text = String::from_utf8_lossy(&output(sched_trace().arg("report").arg(&trace)).stdout).into_owned();
    assert!(text.contains("Cgroups (of the cpu controller)") && text.contains(&rel(&h, &heavy)), "{text}");

    // --cgroup selects one of them (by directory, or by path from the hierarchy's root) ...
    for name in [light.display().to_string(), rel(&h, &light)] {
        let o = output(sched_trace().arg("report").arg(&trace).args(["--json", "--cgroup", &name]));
        assert!(o.status.success(), "{}", stderr(&o));
        let r: Value = serde_json::from_slice(&o.stdout).unwrap();
        let names: Vec<&str> =
            r["threads"].as_array().unwrap().iter().filter_map(|t| t["comm"].as_str()).collect();
        // The burner's main thread (waiting for the other) is in its cgroup too.
        assert!(
            names.contains(&"light-0") && !names.iter().any(|n| n.starts_with("heavy")),
            "--cgroup {name}: {names:?}"
        );
    }
    let o = output(sched_trace().arg("report").arg(&trace).args(["--cgroup", "/no-such-cgroup"]));
    assert!(!o.status.success() && stderr(&o).contains("its cgroups are"), "{}", stderr(&o));
    // ... in the flame graph too ...
    let o = output(
        sched_trace()
            .arg("flamegraph")
            .arg(&trace)
            .args(["--folded", "--group-by", "thread", "--cgroup"])
            .arg(&heavy),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let folded = String::from_utf8_lossy(&o.stdout);
    assert!(folded.lines().any(|l| l.contains("heavy-0")), "{folded}");
    assert!(!folded.lines().any(|l| l.contains("light-0")), "{folded}");
    // ... and the heat map draws one map per cgroup.
    let json = dir.path().join("runq.json");
    let o = output(
        sched_trace()
            .arg("heatmap")
            .arg(&trace)
            .args(["--per", "cgroup", "--format", "json", "-o"])
            .arg(&json),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let map: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let labels: Vec<&str> =
        map["panels"].as_array().unwrap().iter().filter_map(|p| p["label"].as_str()).collect();
    for g in [&light, &heavy] {
        let want = format!("cgroup {}", rel(&h, g));
        assert!(labels.contains(&want.as_str()), "{want} not in {labels:?}");
    }
}

/// `record --cgroup DIR` on hierarchy `h`: the processes of DIR and of a cgroup below it, those
/// there before and those started after the recording did, and no process of a sibling.
fn records_exactly_the_cgroup(h: &Hierarchy, label: &str) {
    let mut parent = TestCgroup::new(h, label);
    let traced = parent.child("traced");
    let sibling = parent.child("sibling");
    let below = parent.child("traced/below");
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("filter.trace");
    let spawn = |g: &Path, name: &str, seconds: &str| {
        burner()
            .args(["--threads", "2", "--seconds", seconds, "--name", name, "--cgroup"])
            .arg(g)
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    // Running before the recorder starts, and still after it is attached (which takes a debug
    // build a second or two).
    let mut early = spawn(&traced, "early", "6");
    std::thread::sleep(Duration::from_millis(200));
    let recorder = record_cgroups(&[&traced], 2.5, &trace);
    let mut kids =
        vec![spawn(&traced, "late", "1"), spawn(&below, "below", "1"), spawn(&sibling, "sibling", "1")];
    kids.push(
        burner()
            .args(["--threads", "1", "--seconds", "1", "--name", "outside"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pids: Vec<u32> = std::iter::once(&early).chain(&kids).map(|c| c.id()).collect();
    assert!(early.wait().unwrap().success());
    for k in &mut kids {
        assert!(k.wait().unwrap().success());
    }
    wait_ok(recorder);

    // The processes of the records about a thread of their own: its switch-outs, CPU samples,
    // process events. (A wake-up's or migration's record names the thread it ran on, which may
    // be any thread the interrupt hit; a switch names the next thread too: both are a traced
    // thread's events.)
    let o = output(sched_trace().arg("dump").arg(&trace));
    assert!(o.status.success(), "{}", stderr(&o));
    let dump = String::from_utf8_lossy(&o.stdout);
    let [early, late, below_pid, sibling_pid, outside] = pids[..] else { unreachable!() };
    let own = ["Switch", "CpuSample", "Fork", "Exec", "Exit", "Rename", "EpollEnter", "EpollExit", "Cgroup"];
    let mut seen = std::collections::BTreeMap::new();
    for line in dump.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(who), Some(what)) = (f.get(2), f.get(3)) else { continue };
        if !own.iter().any(|k| what.starts_with(k)) {
            continue;
        }
        // A switch to a traced thread is that thread's switch-in, whoever ran before.
        let next_pid = line.split("next_pid: ").nth(1).and_then(|r| r.split(',').next()?.parse::<u32>().ok());
        if next_pid.is_some_and(|p| [early, late, below_pid].contains(&p)) {
            continue;
        }
        if let Some(pid) = who.split('/').nth(1).and_then(|p| p.parse::<u32>().ok()) {
            seen.entry(pid).or_insert_with(|| line.to_string());
        }
    }
    for (name, pid) in [("early", early), ("late", late), ("below", below_pid)] {
        assert!(seen.contains_key(&pid), "{label}: the {name} burner (PID {pid}) is not in the trace");
    }
    for (name, pid) in [("sibling", sibling_pid), ("outside", outside)] {
        assert!(
            !seen.contains_key(&pid),
            "{label}: the {name} burner (PID {pid}) has events in the trace: {:?}",
            seen.get(&pid)
        );
    }
    let report = report_json(&trace);
    let names: Vec<&str> =
        report["threads"].as_array().unwrap().iter().filter_map(|t| t["comm"].as_str()).collect();
    for want in ["early-0", "early-1", "late-0", "late-1", "below-0", "below-1"] {
        assert!(names.contains(&want), "{label}: no thread {want} in {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with("sibling") || n.starts_with("outside")),
        "{label}: {names:?}"
    );
    // Each thread carries its cgroup.
    let groups: Vec<&str> = report["cgroups"]
        .as_array()
        .map(|v| v.iter().filter_map(|g| g["path"].as_str()).collect())
        .unwrap_or_default();
    if h.v2 == (cpu_hierarchy().is_some_and(|c| c.v2)) {
        for want in [rel(h, &traced), rel(h, &below)] {
            assert!(groups.contains(&want.as_str()), "{label}: no cgroup {want} in {groups:?}");
        }
    }
}

#[test]
fn record_cgroup_traces_exactly_a_cgroup_of_the_cpu_hierarchy() {
    let Some(_k) = kernel_probes() else { return };
    records_exactly_the_cgroup(&cpu_hierarchy().expect("a hierarchy with the cpu controller"), "cpu-filter");
}

#[test]
fn record_cgroup_traces_exactly_a_cgroup_of_the_v2_hierarchy() {
    let Some(_k) = kernel_probes() else { return };
    records_exactly_the_cgroup(&v2_hierarchy().expect("a v2 hierarchy"), "v2-filter");
}
