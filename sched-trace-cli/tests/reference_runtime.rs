//! The built-in reference runtime traced from outside, against its own ground-truth log: every
//! scheduling transition the runtime logged must be in the trace (by task, kind and thread, within
//! 50 µs), and nothing else. Plus the pathologies the workloads reproduce, seen in the trace.

mod support;

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    process::Command,
};

use sched_trace::trace::{EventKind, TraceReader};
use support::*;

/// One runtime transition: from the ground-truth log, or from the trace.
#[derive(Clone, Debug, PartialEq)]
struct Transition {
    ts: u64,
    tid: u32,
    name: String,
    args: Vec<u64>,
}

/// Parses the runtime's log: `<ts_ns> <tid> <probe> <args...>` per line.
fn ground_truth(path: &Path) -> Vec<Transition> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|l| {
            let mut f = l.split_whitespace();
            let ts = f.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("bad line {l:?}"));
            let tid = f.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("bad line {l:?}"));
            let name = f.next().unwrap_or_else(|| panic!("bad line {l:?}")).to_string();
            let args = f.map(|v| v.parse().unwrap_or_else(|_| panic!("bad line {l:?}"))).collect();
            Transition { ts, tid, name, args }
        })
        .collect()
}

/// The `refrt` provider's events of a trace, with as many arguments as the log has.
fn traced_transitions(trace: &Path, arity: &HashMap<String, usize>) -> Vec<Transition> {
    let mut r = TraceReader::open(trace).unwrap();
    let names: HashMap<u32, String> = r
        .info()
        .user_probes
        .iter()
        .filter(|p| p.provider == "refrt")
        .map(|p| (p.index, p.name.clone()))
        .collect();
    assert!(!names.is_empty(), "no refrt probes were attached: {:?}", r.info().skipped_user_probes);
    let mut out = Vec::new();
    while let Some(e) = r.next_event().unwrap() {
        if let EventKind::UserTask { probe, args, .. } = e.kind
            && let Some(name) = names.get(&probe)
        {
            let n = arity.get(name).copied().unwrap_or(args.len());
            out.push(Transition { ts: e.ts, tid: e.tid, name: name.clone(), args: args[..n].to_vec() });
        }
    }
    out
}

struct Recorded {
    truth: Vec<Transition>,
    traced: Vec<Transition>,
    /// Per thread, the times it was switched out.
    switched_out: HashMap<u32, Vec<u64>>,
    report: serde_json::Value,
}

fn record_workload(workload: &str) -> Recorded {
    let dir = tempfile::tempdir().unwrap();
    let (trace, log) = record_refrt(dir.path(), workload, &[]);
    let truth = ground_truth(&log);
    let arity: HashMap<String, usize> = truth.iter().map(|t| (t.name.clone(), t.args.len())).collect();
    let traced = traced_transitions(&trace, &arity);
    let mut switched_out: HashMap<u32, Vec<u64>> = HashMap::new();
    let mut reader = TraceReader::open(&trace).unwrap();
    while let Some(e) = reader.next_event().unwrap() {
        if let EventKind::Switch(_) = e.kind {
            switched_out.entry(e.tid).or_default().push(e.ts);
        }
    }
    Recorded { truth, traced, switched_out, report: report_json(&trace) }
}

/// The log against the trace: per (kind, thread, first argument), the n-th event of one paired
/// with the n-th of the other.
struct Matching {
    /// Pairs whose arguments differ, and keys with more events on one side: none is allowed.
    identity_problems: Vec<String>,
    /// Pairs compared.
    pairs: usize,
    /// Pairs whose timestamps are more than 50 µs apart, not counting time the thread spent
    /// switched out between the two (the runtime takes its timestamp, then the probe traps into
    /// the kernel, where the thread can be preempted before the probe program runs: that delay
    /// is the scheduler's, not the probe's).
    late: Vec<String>,
    /// The median distance of a pair's timestamps.
    median_ns: u64,
}

fn match_transitions(
    truth: &[Transition],
    traced: &[Transition],
    switched_out: &HashMap<u32, Vec<u64>>,
) -> Matching {
    let preempted_between = |tid: u32, a: u64, b: u64| {
        let (lo, hi) = (a.min(b), a.max(b));
        switched_out.get(&tid).is_some_and(|v| {
            let i = v.partition_point(|t| *t < lo);
            v.get(i).is_some_and(|t| *t <= hi)
        })
    };
    type Key = (String, u32, u64);
    let key = |t: &Transition| (t.name.clone(), t.tid, t.args.first().copied().unwrap_or(0));
    let mut by_key: BTreeMap<Key, (Vec<&Transition>, Vec<&Transition>)> = BTreeMap::new();
    for t in truth {
        by_key.entry(key(t)).or_default().0.push(t);
    }
    for t in traced {
        by_key.entry(key(t)).or_default().1.push(t);
    }
    let (mut identity_problems, mut late, mut distances) = (Vec::new(), Vec::new(), Vec::new());
    for (k, (a, b)) in &by_key {
        if a.len() != b.len() {
            identity_problems.push(format!("{k:?}: {} in the log, {} in the trace", a.len(), b.len()));
        }
        for (x, y) in a.iter().zip(b) {
            if x.args != y.args {
                identity_problems.push(format!("log {x:?} vs trace {y:?}"));
                continue;
            }
            let distance = x.ts.abs_diff(y.ts);
            distances.push(distance);
            if distance > 50_000 && !preempted_between(x.tid, x.ts, y.ts) {
                late.push(format!("log {x:?} vs trace {y:?}"));
            }
        }
    }
    distances.sort_unstable();
    let median_ns = distances.get(distances.len() / 2).copied().unwrap_or(u64::MAX);
    Matching { identity_problems, pairs: distances.len(), late, median_ns }
}

/// Every logged transition is in the trace with its thread and arguments, and nothing else is:
/// exactly. Its timestamp is within 50 µs of the runtime's for all but one in 200: rarely the
/// vCPU is taken away by the hypervisor (this machine's steal time runs at about 1% in bursts)
/// between the runtime reading its clock and the probe firing, which no scheduler event shows;
/// 0.15% of transitions were seen late that way in one CI run. A probe clock that is wrong, or
/// events stamped when they are drained, fails the median or the share.
fn assert_matches_ground_truth(workload: &str, r: &Recorded) {
    assert_eq!(r.report["lost"]["total"], 0, "{workload}: lost events {}", r.report["lost"]);
    assert!(r.truth.len() > 100, "{workload}: the runtime logged only {} transitions", r.truth.len());
    let m = match_transitions(&r.truth, &r.traced, &r.switched_out);
    let shown = |v: &[String]| v.iter().take(20).cloned().collect::<Vec<_>>().join("\n");
    assert!(
        m.identity_problems.is_empty(),
        "{workload}: {} of {} logged transitions are not in the trace as logged:\n{}",
        m.identity_problems.len(),
        r.truth.len(),
        shown(&m.identity_problems)
    );
    assert_eq!(m.pairs, r.truth.len(), "{workload}: every logged transition is paired");
    assert!(
        m.late.len() * 200 <= m.pairs,
        "{workload}: {} of {} transitions more than 50 µs off the runtime's clock:\n{}",
        m.late.len(),
        m.pairs,
        shown(&m.late)
    );
    assert!(
        m.median_ns <= 10_000,
        "{workload}: probe timestamps {} ns off the runtime's clock (median)",
        m.median_ns
    );
    if !m.late.is_empty() {
        eprintln!("{workload}: {} of {} transitions late", m.late.len(), m.pairs);
    }
}

#[test]
fn every_workload_is_traced_exactly_as_the_runtime_logged_it() {
    let Some(_k) = kernel_probes() else { return };
    for workload in ["pingpong", "netpoll", "imbalance", "cfs-contention", "blocking-syscall", "mixed"] {
        let r = record_workload(workload);
        assert_matches_ground_truth(workload, &r);
        match workload {
            "netpoll" => {
                // Every task parked on the netpoller was readied by it, for the same fd.
                let mut parked: HashMap<(u64, u64), i64> = HashMap::new();
                for t in &r.traced {
                    match t.name.as_str() {
                        "netpoll_block" => *parked.entry((t.args[0], t.args[1])).or_default() += 1,
                        "netpoll_ready" => *parked.entry((t.args[0], t.args[1])).or_default() -= 1,
                        _ => {}
                    }
                }
                let blocks = r.traced.iter().filter(|t| t.name == "netpoll_block").count();
                assert!(blocks > 50, "the echo server parked on the netpoller ({blocks} times)");
                let open: Vec<_> = parked.iter().filter(|(_, n)| **n != 0).collect();
                assert!(open.is_empty(), "netpoll parks without a matching ready: {open:?}");
            }
            "imbalance" => check_imbalance_converges(&r.traced),
            "blocking-syscall" => {
                let handoffs = r.traced.iter().filter(|t| t.name == "block_enter").count();
                assert!(handoffs > 0, "blocking calls handed their P off");
            }
            _ => {}
        }
    }
}

/// `imbalance`: work spawned onto one P. The trace must show steals of half a queue, and the
/// per-P local run queue lengths (reported by every `task_run`) going from one P holding the work
/// while the others hold none, to the queues within a factor of two of each other while much
/// work is still queued: stealing spread it. (Without stealing the other Ps would never run a
/// task; stealing one task at a time would leave their queues empty.)
fn check_imbalance_converges(traced: &[Transition]) {
    let steals: Vec<&Transition> = traced.iter().filter(|t| t.name == "steal").collect();
    assert!(!steals.is_empty(), "no steal in the trace");
    assert!(steals.iter().any(|t| t.args[2] >= 2), "no steal took more than one task");
    let runs: Vec<&Transition> = traced.iter().filter(|t| t.name == "task_run").collect();
    assert!(runs.len() > 100, "{} task runs", runs.len());
    let procs: std::collections::HashSet<u64> = runs.iter().map(|t| t.args[2]).collect();
    assert!(procs.len() >= 2, "tasks ran on {} P(s)", procs.len());
    // Per P, the local queue length it reported last.
    let mut queued: HashMap<u64, u64> = HashMap::new();
    let (mut imbalanced, mut converged) = (None, None);
    for (i, t) in runs.iter().enumerate() {
        queued.insert(t.args[2], t.args[3]);
        let max = queued.values().copied().max().unwrap_or(0);
        let min = if queued.len() == procs.len() { queued.values().copied().min().unwrap_or(0) } else { 0 };
        if max >= 16 && min * 4 <= max && imbalanced.is_none() {
            imbalanced = Some((i, min, max));
        }
        if max >= 16 && min * 2 >= max && imbalanced.is_some() {
            converged = Some((i, min, max));
            break;
        }
    }
    let (at, min, max) = imbalanced.expect("the run queues never start out imbalanced");
    assert!(
        converged.is_some(),
        "the run queues never converge while loaded (imbalanced at run {at}: shortest {min}, longest {max})"
    );
}

#[test]
fn bpftrace_lists_and_attaches_to_the_runtime_probes() {
    let Some(_k) = kernel_probes() else { return };
    let bin = refrt();
    let o = output(Command::new("bpftrace").arg("-l").arg(format!("usdt:{}:*", bin.display())));
    let listed = String::from_utf8_lossy(&o.stdout);
    for probe in ["task_spawn", "task_run", "task_park", "task_ready", "task_exit", "steal", "netpoll_block"]
    {
        assert!(
            listed.contains(&format!("refrt:{probe}")),
            "bpftrace -l lists refrt:{probe}:\n{listed}{}",
            stderr(&o)
        );
    }
    let script = format!("usdt:{}:refrt:task_run {{ @runs = count(); }}", bin.display());
    let o = output(
        Command::new("bpftrace").arg("-e").arg(&script).arg("-c").arg(format!("{} pingpong", bin.display())),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    let runs: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("@runs: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("bpftrace counted no task_run: {out}{}", stderr(&o)));
    assert!(runs > 1000, "bpftrace saw {runs} task runs");
}

#[test]
fn a_runtime_started_by_a_wrapper_is_probed_from_its_exec_on() {
    let Some(_k) = kernel_probes() else { return };
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("wrapped.trace");
    // The shell forks and execs the runtime: its probes are found and attached on that exec.
    let script = format!("{} pingpong; true", refrt().display());
    let o =
        output(sched_trace().args(["record", "--quiet", "-o"]).arg(&trace).args(["--", "sh", "-c", &script]));
    assert!(o.status.success(), "{}", stderr(&o));
    let mut r = TraceReader::open(&trace).unwrap();
    assert!(r.info().user_probes.is_empty(), "the shell itself has no probes");
    let mut runs = 0u64;
    while let Some(e) = r.next_event().unwrap() {
        if let EventKind::UserTask { probe, .. } = e.kind {
            let p = r.user_probe(probe).expect("every probe a record names is in the table before it");
            if p.name == "task_run" {
                runs += 1;
            }
        }
    }
    assert!(runs > 1000, "{runs} task runs probed after the exec");
}
