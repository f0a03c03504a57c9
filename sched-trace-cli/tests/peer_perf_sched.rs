//! sched-trace against the peer everyone knows: `perf` records the same run at the same time
//! (system-wide, outside `sched-trace record`), and `perf sched latency`, `perf sched timehist`
//! and `perf script` must agree with sched-trace's report thread by thread.
//!
//! perf records `sched_wakeup` rather than `sched_waking` (what `perf sched record` picks when the
//! kernel has it): perf 6.1's latency analysis ignores `sched_waking`, and sched-trace times a
//! wake-up from `sched_wakeup`, the moment the thread is put on a run queue, as the kernel's own
//! `run_delay` does. Threads perf 6.1 is known to get wrong are left out of the comparison, each
//! for a reason it checks: the launched command's main thread (its first moments come before
//! sched-trace starts), a thread switched out as "R+" (preempted in the kernel: perf 6.1 reads
//! that state past the end of its state letters and calls it a sleep), and a thread whose
//! switch-ins are missing from one of the two recordings but not the other.

mod support;

use std::{collections::HashMap, path::Path, process::Command};

use serde_json::Value;
use support::*;

/// `perf sched latency -p` rows: tid → (delays counted, average, maximum), in ns.
fn perf_latency(data: &Path) -> HashMap<u32, (u64, f64, f64)> {
    let o = output(Command::new("perf").args(["sched", "latency", "-p", "-i"]).arg(data));
    assert!(o.status.success(), "perf sched latency: {}", stderr(&o));
    let ms = |s: &str| -> Option<f64> {
        s.trim().trim_end_matches("ms").trim().parse::<f64>().ok().map(|v| v * 1e6)
    };
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            // "  refrt-m0:7102 |  531.005 ms |  128 | avg:  3.642 ms | max:  20.023 ms | ..."
            let cols: Vec<&str> = l.split('|').collect();
            let tid = cols.first()?.trim().rsplit_once(':')?.1.parse().ok()?;
            let count = cols.get(2)?.trim().parse().ok()?;
            let avg = ms(cols.get(3)?.trim().strip_prefix("avg:")?)?;
            let max = ms(cols.get(4)?.trim().strip_prefix("max:")?)?;
            Some((tid, (count, avg, max)))
        })
        .collect()
}

/// From `perf script`: per tid, switch-outs, switch-ins and switch-outs in state "R+".
fn perf_switches(data: &Path) -> HashMap<u32, [u64; 3]> {
    let o = output(Command::new("perf").args(["script", "-i"]).arg(data));
    assert!(o.status.success(), "perf script: {}", stderr(&o));
    let field = |l: &str, key: &str| -> Option<String> {
        let at = l.find(key)? + key.len();
        Some(l[at..].split_whitespace().next()?.to_string())
    };
    let mut out: HashMap<u32, [u64; 3]> = HashMap::new();
    for l in String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.contains("sched:sched_switch:")) {
        let (Some(prev), Some(state), Some(next)) =
            (field(l, "prev_pid="), field(l, "prev_state="), field(l, "next_pid="))
        else {
            continue;
        };
        let (Ok(prev), Ok(next)) = (prev.parse::<u32>(), next.parse::<u32>()) else { continue };
        let p = out.entry(prev).or_default();
        p[0] += 1;
        if state == "R+" {
            p[2] += 1;
        }
        out.entry(next).or_default()[1] += 1;
    }
    out
}

/// `perf sched timehist -s`: per tid, its process and its run time in ns.
fn perf_run_time(data: &Path) -> HashMap<u32, (u32, f64)> {
    let o = output(Command::new("perf").args(["sched", "timehist", "-s", "-i"]).arg(data));
    assert!(o.status.success(), "perf sched timehist: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            // "           refrt-m0[7102/7100]    7100        128      531.005  ..."; a process's
            // main thread is "refrt[7100]".
            let f: Vec<&str> = l.split_whitespace().collect();
            let name = f.first()?;
            let ids = name.rsplit_once('[')?.1.strip_suffix(']')?;
            let (tid, pid) = ids.split_once('/').unwrap_or((ids, ids));
            let run_ms: f64 = f.get(3)?.parse().ok()?;
            Some((tid.parse().ok()?, (pid.parse().ok()?, run_ms * 1e6)))
        })
        .collect()
}

/// Per thread, how long its last run (switch-in to switch-out) lasted, from sched-trace's events.
fn last_runs(trace: &Path) -> HashMap<u32, f64> {
    let mut reader = sched_trace::trace::TraceReader::open(trace).unwrap();
    let (mut since, mut last) = (HashMap::new(), HashMap::new());
    while let Some(e) = reader.next_event().unwrap() {
        if let sched_trace::trace::EventKind::Switch(s) = e.kind {
            if let Some(start) = since.remove(&e.tid) {
                last.insert(e.tid, (e.ts - start) as f64);
            }
            since.insert(s.next_tid, e.ts);
        }
    }
    last
}

fn close(a: f64, b: f64, rel: f64, abs_ns: f64) -> bool {
    (a - b).abs() <= (rel * a.max(b)).max(abs_ns)
}

/// One recording by both tools, compared. Returns the number of contended threads compared, the
/// wake-up delays among them, and the threads left out with why; panics where they disagree.
fn record_and_compare() -> (usize, u64, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let (data, trace) = (dir.path().join("perf.data"), dir.path().join("st.trace"));
    let o = output(
        Command::new("perf")
            .args(["record", "-a", "-R", "-c", "1", "-m", "1024", "-o"])
            .arg(&data)
            .args(["-e", "sched:sched_switch", "-e", "sched:sched_wakeup", "-e", "sched:sched_wakeup_new"])
            .args(["-e", "sched:sched_migrate_task", "-e", "sched:sched_process_fork"])
            .args(["-e", "sched:sched_process_exit", "-e", "sched:sched_stat_runtime", "--"])
            .arg(env!("CARGO_BIN_EXE_sched-trace"))
            .args(["record", "--quiet", "-o"])
            .arg(&trace)
            .arg("--")
            .arg(refrt())
            .args(["cfs-contention", "--procs", "4", "--scale", "2"]),
    );
    assert!(o.status.success(), "perf record -- sched-trace record: {}", stderr(&o));
    let report = report_json(&trace);
    assert_eq!(report["lost"]["total"], 0, "sched-trace lost events: {}", report["lost"]);
    let (latency, switches, run_time) = (perf_latency(&data), perf_switches(&data), perf_run_time(&data));
    let last_run = last_runs(&trace);
    let main_tid = report["trace"]["target"]["pid"].as_u64().unwrap() as u32;

    let (mut compared, mut woken, mut failures, mut skipped) = (0, 0, Vec::new(), Vec::new());
    for t in report["threads"].as_array().unwrap() {
        let tid = t["tid"].as_u64().unwrap() as u32;
        let u = |v: &Value| v.as_u64().unwrap_or(0);
        let name = format!("{} ({tid})", t["comm"]);
        if tid == main_tid {
            skipped.push(format!("{name}: the command's main thread"));
            continue;
        }
        let rl = &t["runqueue_latency"];
        let (count, avg, max) = (u(&rl["count"]), u(&rl["avg_ns"]) as f64, u(&rl["max_ns"]) as f64);
        let outs = u(&t["switches"]["voluntary"]) + u(&t["switches"]["involuntary"]);
        let [perf_outs, perf_ins, r_plus] = switches.get(&tid).copied().unwrap_or_default();
        // Switch-outs come from the same tracepoint in both: exact.
        if outs != perf_outs {
            failures.push(format!("{name}: {outs} switch-outs, perf script {perf_outs}"));
        }
        // Switch-ins missing from the kernel's stream (tasks hidden from tracing ran before
        // them) are missing from both; any other difference is a loss of one tool.
        let (missed, perf_missed) = (u(&t["missed_switch_ins"]), perf_outs.saturating_sub(perf_ins));
        if missed > perf_missed {
            failures.push(format!("{name}: sched-trace misses {missed} switch-ins, perf {perf_missed}"));
        }
        if perf_missed > missed {
            skipped.push(format!("{name}: perf lost {} switch-ins sched-trace has", perf_missed - missed));
            continue;
        }
        if r_plus > 0 {
            skipped.push(format!("{name}: {r_plus} R+ switch-outs"));
            continue;
        }
        let Some(&(p_count, p_avg, p_max)) = latency.get(&tid) else {
            skipped.push(format!("{name}: not in perf sched latency"));
            continue;
        };
        let mut check = |what: &str, ok: bool, ours: f64, perf: f64| {
            if !ok {
                failures.push(format!("{name} {what}: sched-trace {ours:.0}, perf {perf:.0}"));
            }
        };
        check("delays", count.abs_diff(p_count) <= (count / 100).max(1), count as f64, p_count as f64);
        check("average delay", close(avg, p_avg, 0.05, 50_000.0), avg, p_avg);
        check("maximum delay", close(max, p_max, 0.05, 50_000.0), max, p_max);
        // timehist counts as run time the window before a switch-in nobody saw, which
        // sched-trace leaves unattributed; and it does not count the last run of a thread that
        // exited (its final switch-out is filed under no thread). 2%: a runtime thread was once
        // 1.06% short of perf over 300 ms on a busy VM, with no unaccounted window to explain it
        // (the cause is not known).
        match run_time.get(&tid) {
            Some(&(_, p_run)) => {
                let (mut on_cpu, gap) = (u(&t["on_cpu_ns"]) as f64, u(&t["unaccounted_ns"]) as f64);
                if t["exited"] == true {
                    on_cpu -= last_run.get(&tid).copied().unwrap_or(0.0);
                }
                let ok = close(on_cpu, p_run, 0.02, 100_000.0)
                    || (p_run >= on_cpu && p_run <= on_cpu + gap + 100_000.0);
                check("run time (timehist)", ok, on_cpu, p_run);
            }
            None => failures.push(format!("{name}: not in perf sched timehist -s")),
        }
        // A comparison that means something: a thread that waited for a CPU often and long.
        if count >= 50 && avg >= 1e6 && u(&rl["from_preemption"]) * 2 >= count {
            compared += 1;
        }
        woken += u(&rl["from_wakeup"]);
    }
    // And the other way round: every thread of the traced process that perf saw run is in
    // sched-trace's report (a thread sched-trace dropped would not show above).
    let ours: std::collections::HashSet<u64> =
        report["threads"].as_array().unwrap().iter().filter_map(|t| t["tid"].as_u64()).collect();
    let theirs: Vec<u32> =
        run_time.iter().filter(|(_, (pid, run))| *pid == main_tid && *run > 0.0).map(|(t, _)| *t).collect();
    assert!(theirs.len() >= 4, "perf saw only threads {theirs:?} of PID {main_tid}");
    for tid in theirs {
        if !ours.contains(&(tid as u64)) {
            failures.push(format!(
                "thread {tid} of PID {main_tid} ran according to perf but is not in sched-trace's report"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "sched-trace and perf disagree:\n{}\n(skipped: {skipped:?})",
        failures.join("\n")
    );
    (compared, woken, skipped)
}

#[test]
fn threads_agree_with_perf_sched_on_the_same_run() {
    let Some(_k) = kernel_probes() else { return };
    // perf now and then loses switch-ins (its "context switch bugs"); a thread it lost one of is
    // left out, and the run is made again when that leaves too few threads to compare.
    for attempt in 1..=3 {
        let (compared, woken, skipped) = record_and_compare();
        if compared >= 3 && woken > 0 {
            return;
        }
        eprintln!(
            "attempt {attempt}: {compared} contended threads compared, {woken} wake-up delays; skipped {skipped:?}"
        );
    }
    panic!("perf and sched-trace could not be compared on three contended threads in three runs");
}
