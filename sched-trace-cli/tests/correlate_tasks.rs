//! The task-to-CFS correlation against ground truth: the reference runtime's own log says when
//! each task ran, waited and parked, and on which thread; the kernel part of the same trace says
//! when those threads waited for a CPU.

mod support;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use sched_trace::{
    correlate::{self, Correlation, TaskStats},
    trace::{EventKind, TraceReader},
};
use support::*;

/// One task's life according to the runtime's log.
#[derive(Default, Debug)]
struct TruthTask {
    running_ns: u64,
    queue_ns: u64,
    parked_ns: u64,
    /// (run start, thread), in order.
    runs: Vec<(u64, u32)>,
    /// [start, end) on a thread.
    run_intervals: Vec<(u64, u64, u32)>,
    exited: bool,
    /// Timestamps of its transitions, in order.
    stamps: Vec<u64>,
}

fn ground_truth(log: &Path) -> BTreeMap<u64, TruthTask> {
    let mut lines: Vec<(u64, u32, String, Vec<u64>)> = std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].to_string(),
                f[3..].iter().map(|v| v.parse().unwrap()).collect(),
            )
        })
        .collect();
    lines.sort_by_key(|l| l.0); // stable: each thread's lines keep their order
    enum S {
        Runnable(u64),
        Running(u64, u32),
        Parked(u64),
        Done,
    }
    let mut state: HashMap<u64, S> = HashMap::new();
    let mut out: BTreeMap<u64, TruthTask> = BTreeMap::new();
    for (ts, tid, name, args) in lines {
        let task = args[0];
        if !["task_spawn", "task_ready", "task_run", "task_park", "task_exit"].contains(&name.as_str()) {
            continue;
        }
        let t = out.entry(task).or_default();
        t.stamps.push(ts);
        let st = state.remove(&task);
        let next = match (name.as_str(), st) {
            ("task_spawn", _) => S::Runnable(ts),
            ("task_ready", Some(S::Parked(since))) => {
                t.parked_ns += ts - since;
                S::Runnable(ts)
            }
            ("task_ready", Some(other)) => other,
            ("task_run", Some(S::Runnable(since))) => {
                t.queue_ns += ts - since;
                t.runs.push((ts, tid));
                S::Running(ts, tid)
            }
            ("task_park" | "task_exit", Some(S::Running(since, on))) => {
                t.running_ns += ts - since;
                t.run_intervals.push((since, ts, on));
                if name == "task_exit" {
                    t.exited = true;
                    S::Done
                } else if args[1] == 4 {
                    S::Runnable(ts) // a yield: runnable, waiting in a queue
                } else {
                    S::Parked(ts)
                }
            }
            (_, other) => panic!("task {task}: {name} at {ts} in an unexpected state ({})", other.is_some()),
        };
        state.insert(task, next);
    }
    out
}

struct Recorded {
    /// Per task, the timestamps of its transitions in the trace, in order.
    traced_stamps: HashMap<u64, Vec<u64>>,
    correlation: Correlation,
    truth: BTreeMap<u64, TruthTask>,
    trace: PathBuf,
    _dir: tempfile::TempDir,
}

fn record(workload: &str, extra: &[&str]) -> Recorded {
    let dir = tempfile::tempdir().unwrap();
    // SCHED_TRACE_KEEP_TRACES=1 leaves the trace and the log for a look after a failure.
    if std::env::var_os("SCHED_TRACE_KEEP_TRACES").is_some() {
        eprintln!("{workload}: {}", dir.path().display());
    }
    let (trace, log) = record_refrt(dir.path(), workload, extra);
    let correlation = correlate::correlate(TraceReader::open(&trace).unwrap()).unwrap();
    assert_eq!(correlation.tables.drops.as_ref().map(|d| d.lost_records()), Some(0), "{workload}: no loss");
    let truth = ground_truth(&log);
    let mut traced_stamps: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut reader = TraceReader::open(&trace).unwrap();
    while let Some(e) = reader.next_event().unwrap() {
        if let EventKind::UserTask { probe, args, .. } = e.kind
            && reader.user_probe(probe).is_some_and(|p| p.provider == "refrt" && p.name.starts_with("task_"))
        {
            traced_stamps.entry(args[0]).or_default().push(e.ts);
        }
    }
    if std::env::var_os("SCHED_TRACE_KEEP_TRACES").is_some() {
        let _ = dir.keep();
        let dir = tempfile::tempdir().unwrap();
        return Recorded { traced_stamps, correlation, truth, trace, _dir: dir };
    }
    Recorded { traced_stamps, correlation, truth, trace, _dir: dir }
}

fn within(a: u64, b: u64) -> bool {
    a.abs_diff(b) <= 100_000 || a.abs_diff(b) as f64 <= 0.02 * b as f64
}

/// How far each task's probe timestamps are from the runtime's own clock readings, beyond the
/// usual offset: the time between the runtime reading its clock and the probe program running.
/// Rarely that is long (the vCPU stolen by the hypervisor, a lock spun on in the probe's path)
/// and no scheduler event shows it; the correlation cannot be more exact than its inputs.
/// Returns the jitter per task, and how many transitions (of how many) were more than 50 µs
/// off.
fn probe_jitter(r: &Recorded) -> (HashMap<u64, u64>, usize, usize) {
    let mut diffs: Vec<i64> = Vec::new();
    for (id, truth) in &r.truth {
        if let Some(traced) = r.traced_stamps.get(id) {
            diffs.extend(truth.stamps.iter().zip(traced).map(|(g, t)| *t as i64 - *g as i64));
        }
    }
    diffs.sort_unstable();
    let offset = diffs.get(diffs.len() / 2).copied().unwrap_or(0);
    let late = diffs.iter().filter(|d| (**d - offset).unsigned_abs() > 50_000).count();
    // A task's allowance is the jitter of its own transitions, paired one to one; a task whose
    // trace has a transition more or fewer than its log gets none (pairing them up would add
    // the distance between unrelated transitions).
    let per_task = r
        .truth
        .iter()
        .map(|(id, truth)| {
            let traced = r.traced_stamps.get(id).map_or(&[][..], |v| v);
            let jitter = if traced.len() == truth.stamps.len() {
                truth
                    .stamps
                    .iter()
                    .zip(traced)
                    .map(|(g, t)| (*t as i64 - *g as i64 - offset).unsigned_abs())
                    .sum()
            } else {
                0
            };
            (*id, jitter)
        })
        .collect();
    (per_task, late, diffs.len())
}

fn check_against_truth(workload: &str, r: &Recorded) {
    let tasks: HashMap<u64, &TaskStats> = r.correlation.tasks.iter().map(|t| (t.task, t)).collect();
    let (jitter, late, transitions) = probe_jitter(r);
    // One in 200 may be late: the share seen on this VM under the hypervisor's steal reached
    // 0.11% (reference_runtime.rs says more); a probe clock that is wrong makes most of them late.
    assert!(
        late * 200 <= transitions,
        "{workload}: {late} of {transitions} probe timestamps more than 50 µs off the runtime's clock"
    );
    let (mut runs, mut right_thread, mut on_time) = (0usize, 0usize, 0usize);
    let (mut off, mut within_jitter, mut compared) = (Vec::new(), Vec::new(), 0usize);
    for (id, truth) in &r.truth {
        let t =
            tasks.get(id).unwrap_or_else(|| panic!("{workload}: task {id} is missing from the correlation"));
        // Run intervals: the n-th run of the task, on the same thread, starting within 50 µs
        // (as late as the probe that starts it, see `probe_jitter`).
        runs += truth.runs.len();
        for ((start, tid), got) in truth.runs.iter().zip(&t.run_intervals) {
            if got.tid == *tid {
                right_thread += 1;
                on_time += (got.start.abs_diff(*start) <= 50_000) as usize;
            }
        }
        if !truth.exited {
            continue; // its last interval is closed at different ends in the two views
        }
        compared += 1;
        let mut needed_jitter = false;
        for (what, got, want) in [
            ("running", t.running_ns(), truth.running_ns),
            ("queue wait", t.queue_ns, truth.queue_ns),
            ("parked", t.parked_total_ns(), truth.parked_ns),
        ] {
            if within(got, want) {
                continue;
            }
            let j = jitter.get(id).copied().unwrap_or(0);
            let line =
                format!("task {id} {what}: correlated {got} ns, runtime log {want} ns (probe jitter {j} ns)");
            if within(got.abs_diff(want).saturating_sub(j) + want, want) {
                needed_jitter = true;
            } else {
                off.push(line);
            }
        }
        if needed_jitter {
            within_jitter.push(*id);
        }
    }
    assert!(runs > 100, "{workload}: {runs} runs");
    // The totals must have been compared for most tasks (those that exited before the end).
    assert!(
        compared >= 10 && compared * 2 >= r.truth.len(),
        "{workload}: per-task totals compared for only {compared} of {} tasks",
        r.truth.len()
    );
    let share = right_thread as f64 / runs as f64;
    assert!(
        share >= 0.999,
        "{workload}: {right_thread} of {runs} runs on the right thread ({:.3}%)",
        share * 100.0
    );
    assert!(
        on_time * 200 >= right_thread * 199,
        "{workload}: {on_time} of {right_thread} runs start within 50 µs of the runtime's clock"
    );
    assert!(off.is_empty(), "{workload}: per-task totals off by more than 2% or 100 µs:\n{}", off.join("\n"));
    if !within_jitter.is_empty() {
        eprintln!(
            "{workload}: {} of {compared} tasks within tolerance only with their probes' jitter: {within_jitter:?}",
            within_jitter.len()
        );
    }
}

#[test]
fn task_timelines_agree_with_the_runtime_log() {
    let Some(_k) = kernel_probes() else { return };
    for workload in ["pingpong", "netpoll", "imbalance", "cfs-contention", "blocking-syscall", "mixed"] {
        let r = record(workload, &[]);
        check_against_truth(workload, &r);
    }
}

/// Per thread, the intervals it waited in a CFS run queue (woken or preempted → switched in),
/// rebuilt straight from the switch and wake-up events.
fn runqueue_intervals(trace: &Path) -> HashMap<u32, Vec<(u64, u64)>> {
    let mut reader = TraceReader::open(trace).unwrap();
    let mut since: HashMap<u32, u64> = HashMap::new();
    let mut sleeping: HashMap<u32, bool> = HashMap::new();
    let mut out: HashMap<u32, Vec<(u64, u64)>> = HashMap::new();
    while let Some(e) = reader.next_event().unwrap() {
        match e.kind {
            EventKind::Switch(s) => {
                if s.preempt || s.prev_state == 0 {
                    since.insert(e.tid, e.ts);
                } else {
                    sleeping.insert(e.tid, true);
                }
                if let Some(start) = since.remove(&s.next_tid) {
                    out.entry(s.next_tid).or_default().push((start, e.ts));
                }
                sleeping.insert(s.next_tid, false);
            }
            EventKind::Wakeup(w) | EventKind::WakeupNew(w)
                if sleeping.get(&w.tid) != Some(&false) && !since.contains_key(&w.tid) =>
            {
                since.insert(w.tid, e.ts);
            }
            _ => {}
        }
    }
    out
}

fn overlap(a: &[(u64, u64)], s: u64, e: u64) -> u64 {
    a.iter().map(|&(x, y)| y.min(e).saturating_sub(x.max(s))).sum()
}

#[test]
fn cfs_stolen_time_is_the_run_queue_time_of_threads_running_tasks() {
    let Some(_k) = kernel_probes() else { return };
    let r = record("cfs-contention", &[]);
    let queued = runqueue_intervals(&r.trace);
    // Expected: per task, the run-queue time of its thread during its runs (runtime log).
    let expected: HashMap<u64, u64> = r
        .truth
        .iter()
        .map(|(id, t)| {
            let stolen = t
                .run_intervals
                .iter()
                .map(|&(s, e, tid)| overlap(queued.get(&tid).map_or(&[][..], |v| v), s, e))
                .sum();
            (*id, stolen)
        })
        .collect();
    let total_expected: u64 = expected.values().sum();
    let total: u64 = r.correlation.tasks.iter().map(|t| t.cfs_stolen_ns).sum();
    let running: u64 = r.correlation.tasks.iter().map(|t| t.running_ns()).sum();
    let total_running_cfs = running;
    assert!(
        total_expected > running / 20,
        "the workload must make CFS preempt Ms: {total_expected} of {running} ns"
    );
    let diff = total.abs_diff(total_expected) as f64 / total_expected as f64;
    assert!(diff <= 0.05, "CFS-stolen {total} ns vs run-queue time under running tasks {total_expected} ns");
    for t in &r.correlation.tasks {
        if expected.get(&t.task).copied().unwrap_or(0) > 1_000_000 {
            assert!(t.cfs_stolen_ns > 0, "task {} had its M preempted but shows no CFS-stolen time", t.task);
        }
    }

    // Without contention (one M, a CPU left for everything else) it is near zero.
    let r = record("pingpong", &["--procs", "1"]);
    let stolen: u64 = r.correlation.tasks.iter().map(|t| t.cfs_stolen_ns).sum();
    let running: u64 = r.correlation.tasks.iter().map(|t| t.running_ns()).sum();
    eprintln!(
        "pingpong alone: {stolen} ns CFS-stolen of {running} ns running; cfs-contention {total} of {total_running_cfs}"
    );
    // Near zero next to cfs-contention: the one M still shares its CPU now and then with
    // everything else on the machine (the recorder included).
    assert!(
        stolen * 10 < running && stolen * total_running_cfs * 4 < total * running,
        "pingpong alone: {stolen} ns CFS-stolen of {running} ns running"
    );
}
