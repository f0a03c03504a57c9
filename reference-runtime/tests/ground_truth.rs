//! Runs every workload in-process with the ground-truth log on, parses the log and checks it:
//! the task lifecycle, which threads fire what, the netpoller's pairs, the workload's pathology,
//! and that the runtime's own counters agree with the events.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reference_runtime::probes::{NONE, PROBES, park_reason, ready_source};
use reference_runtime::workloads::{self, Options, Outcome};
use reference_runtime::{Runtime, Stats};

#[derive(Clone, Debug)]
struct Event {
    ts: u64,
    tid: u64,
    name: String,
    args: Vec<u64>,
}

impl Event {
    fn is(&self, name: &str) -> bool {
        self.name == name
    }
}

fn temp_log(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("refrt-gt-{}-{tag}.log", std::process::id()))
}

/// Parses the log, checking every line's shape against the probe table.
fn parse_log(path: &Path) -> Vec<Event> {
    let text = std::fs::read_to_string(path).expect("read the ground-truth log");
    let arity: HashMap<&str, usize> = PROBES.iter().map(|p| (p.name, p.args.len())).collect();
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let mut fields = line.split(' ');
            let mut num = |what: &str| -> u64 {
                let f = fields.next().unwrap_or_else(|| panic!("line {}: no {what}: {line:?}", i + 1));
                f.parse().unwrap_or_else(|_| panic!("line {}: bad {what} {f:?}", i + 1))
            };
            let (ts, tid) = (num("ts"), num("tid"));
            let name = fields.next().unwrap_or_else(|| panic!("line {}: no probe name", i + 1)).to_string();
            let args: Vec<u64> = fields
                .map(|f| f.parse().unwrap_or_else(|_| panic!("line {}: bad arg {f:?}", i + 1)))
                .collect();
            let want =
                arity.get(name.as_str()).unwrap_or_else(|| panic!("line {}: unknown probe {name}", i + 1));
            assert_eq!(args.len(), *want, "line {}: {name} has {} args: {line:?}", i + 1, args.len());
            Event { ts, tid, name, args }
        })
        .collect()
}

fn run_logged(workload: &str, procs: usize, millis: u64) -> (Outcome, Vec<Event>) {
    let path = temp_log(workload);
    let opts = Options {
        procs: Some(procs),
        scale: 1,
        duration: Duration::from_millis(millis),
        ground_truth: Some(path.clone()),
    };
    let outcome = workloads::run(workload, &opts).unwrap_or_else(|e| panic!("{workload}: {e}"));
    let events = parse_log(&path);
    let _ = std::fs::remove_file(&path);
    assert!(outcome.ops > 0, "{workload} did no work");
    (outcome, events)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Runnable,
    Running,
    Parked,
    Exited,
}

/// Everything that holds for any workload; returns the events sorted by time.
fn check_common(stats: &Stats, events: &[Event]) -> Vec<Event> {
    // Per thread, the file keeps the firing order, and time never goes back.
    let mut last_ts: HashMap<u64, u64> = HashMap::new();
    for e in events {
        let last = last_ts.entry(e.tid).or_insert(0);
        assert!(e.ts >= *last, "time went back on thread {}: {e:?}", e.tid);
        *last = e.ts;
    }

    // Tasks run, park, exit and steal only on M threads, each M on its own thread.
    let m_of_tid: HashMap<u64, u64> = stats.ms.iter().map(|m| (m.tid, m.id)).collect();
    assert_eq!(m_of_tid.len(), stats.ms.len(), "two Ms share a thread id: {stats:?}");
    for e in events {
        let m_arg = match e.name.as_str() {
            "task_run" | "task_exit" => Some(e.args[1]),
            "steal" => Some(e.args[3]),
            "m_park" | "m_unpark" => Some(e.args[0]),
            "block_enter" | "block_exit" => Some(e.args[1]),
            "task_park" => None,
            _ => continue,
        };
        let m = m_of_tid.get(&e.tid).unwrap_or_else(|| panic!("{e:?} fired on a thread that is no M"));
        if let Some(arg) = m_arg {
            assert_eq!(arg, *m, "{e:?} names another M than its thread's");
        }
    }

    // A yield is a park (reason yield) and, next on the same thread, the task readying itself.
    let mut by_thread: HashMap<u64, Vec<&Event>> = HashMap::new();
    for e in events {
        by_thread.entry(e.tid).or_default().push(e);
    }
    for list in by_thread.values() {
        for (i, e) in list.iter().enumerate() {
            if e.is("task_park") && e.args[1] == park_reason::YIELD {
                let next = list.get(i + 1).unwrap_or_else(|| panic!("nothing after the yield {e:?}"));
                assert!(
                    next.is("task_ready") && next.args[..3] == [e.args[0], e.args[0], ready_source::TASK],
                    "yield {e:?} followed by {next:?}"
                );
                assert_eq!(e.args[2], NONE);
            }
        }
    }

    // The lifecycle of every task, in time order.
    let mut sorted = events.to_vec();
    sorted.sort_by_key(|e| e.ts);
    let mut life: HashMap<u64, Life> = HashMap::new();
    // Per task: the fds it waits for since its last run, and those the netpoller readied.
    let mut blocked: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut polled_ready: HashMap<u64, HashSet<u64>> = HashMap::new();
    for e in &sorted {
        let task = e.args[0];
        let state = life.get(&task).copied();
        match e.name.as_str() {
            "task_spawn" => {
                assert_eq!(state, None, "task spawned twice: {e:?}");
                assert_ne!(task, 0);
                life.insert(task, Life::Runnable);
            }
            "task_run" => {
                assert_eq!(state, Some(Life::Runnable), "run of a task that is not runnable: {e:?}");
                assert_ne!(e.args[2], NONE, "a task ran without a P: {e:?}");
                if let Some(fds) = blocked.remove(&task) {
                    let ready = polled_ready.remove(&task).unwrap_or_default();
                    for fd in fds {
                        assert!(ready.contains(&fd), "task {task} ran again, never readied for fd {fd}");
                    }
                }
                life.insert(task, Life::Running);
            }
            "task_park" => {
                assert_eq!(state, Some(Life::Running), "park of a task that is not running: {e:?}");
                let (reason, fd) = (e.args[1], e.args[2]);
                assert!((1..=5).contains(&reason), "{e:?}");
                assert_eq!(fd == NONE, reason != park_reason::NETPOLL, "fd iff netpoll: {e:?}");
                life.insert(task, Life::Parked);
            }
            "task_ready" => {
                assert_eq!(state, Some(Life::Parked), "ready of a task that is not parked: {e:?}");
                let (waker, source) = (e.args[1], e.args[2]);
                match source {
                    ready_source::TASK => assert_ne!(waker, 0, "{e:?}"),
                    ready_source::NETPOLLER => {
                        assert_eq!(waker, 0, "{e:?}");
                        assert!(
                            polled_ready.get(&task).is_some_and(|s| !s.is_empty()),
                            "netpoller readied task {task} without a netpoll_ready: {e:?}"
                        );
                    }
                    ready_source::TIMER | ready_source::OTHER => assert_eq!(waker, 0, "{e:?}"),
                    _ => panic!("unknown source: {e:?}"),
                }
                life.insert(task, Life::Runnable);
            }
            "task_exit" => {
                assert_eq!(state, Some(Life::Running), "exit of a task that is not running: {e:?}");
                life.insert(task, Life::Exited);
            }
            "netpoll_block" => {
                assert_eq!(state, Some(Life::Running), "netpoll_block outside a poll: {e:?}");
                assert!(matches!(e.args[2], 1 | 2), "{e:?}");
                blocked.entry(task).or_default().push(e.args[1]);
            }
            "netpoll_ready" => {
                assert!(
                    blocked.get(&task).is_some_and(|fds| fds.contains(&e.args[1])),
                    "netpoll_ready without a netpoll_block for that task and fd: {e:?}"
                );
                polled_ready.entry(task).or_default().insert(e.args[1]);
            }
            _ => {}
        }
    }
    // Every workload winds down cleanly: all its tasks exited.
    let unfinished: Vec<_> = life.iter().filter(|(_, l)| **l != Life::Exited).collect();
    assert!(unfinished.is_empty(), "tasks that did not exit: {unfinished:?}");
    assert!(blocked.is_empty(), "netpoll waits never readied: {blocked:?}");

    // The runtime's counters agree with its events.
    let count = |name: &str| events.iter().filter(|e| e.is(name)).count() as u64;
    assert_eq!(stats.spawned, count("task_spawn"));
    assert_eq!(stats.netpoll_readies, count("netpoll_ready"));
    assert_eq!(stats.handoffs, count("block_enter"));
    assert_eq!(count("block_enter"), count("block_exit"));
    let timer_readies =
        events.iter().filter(|e| e.is("task_ready") && e.args[2] == ready_source::TIMER).count() as u64;
    assert_eq!(stats.timer_fires, timer_readies);
    for p in &stats.procs {
        let runs = events.iter().filter(|e| e.is("task_run") && e.args[2] == p.id as u64).count() as u64;
        assert_eq!(p.tasks_run, runs, "P{}", p.id);
        let stolen: u64 =
            events.iter().filter(|e| e.is("steal") && e.args[1] == p.id as u64).map(|e| e.args[2]).sum();
        let steals: u64 =
            events.iter().filter(|e| e.is("steal") && e.args[0] == p.id as u64).map(|e| e.args[2]).sum();
        assert_eq!((p.stolen, p.steals), (stolen, steals), "P{}", p.id);
        assert!(p.max_local_len <= 256);
    }
    for m in &stats.ms {
        let parks = events.iter().filter(|e| e.is("m_park") && e.args[0] == m.id).count() as u64;
        let unparks = events.iter().filter(|e| e.is("m_unpark") && e.args[0] == m.id).count() as u64;
        assert_eq!(m.parks, parks, "M{}", m.id);
        assert_eq!(parks, unparks, "M{}", m.id);
    }
    sorted
}

fn reasons(events: &[Event]) -> HashSet<u64> {
    events.iter().filter(|e| e.is("task_park")).map(|e| e.args[1]).collect()
}

fn sources(events: &[Event]) -> HashSet<u64> {
    events.iter().filter(|e| e.is("task_ready")).map(|e| e.args[2]).collect()
}

#[test]
fn pingpong_ground_truth() {
    let (out, events) = run_logged("pingpong", 2, 300);
    check_common(&out.stats, &events);
    assert!(reasons(&events).contains(&park_reason::CHANNEL));
    assert!(sources(&events).contains(&ready_source::TASK));
    assert!(reasons(&events).contains(&park_reason::TIMER), "the root task sleeps on a timer");
    assert!(events.iter().any(|e| e.is("task_ready") && e.args[2] == ready_source::TIMER));
}

#[test]
fn netpoll_ground_truth() {
    let (out, events) = run_logged("netpoll", 2, 300);
    check_common(&out.stats, &events);
    let blocks = events.iter().filter(|e| e.is("netpoll_block")).count();
    assert!(blocks >= 8, "only {blocks} netpoll waits");
    assert!(events.iter().any(|e| e.is("netpoll_block") && e.args[2] == 1));
    assert!(sources(&events).contains(&ready_source::NETPOLLER));
    assert!(out.stats.netpoll_readies > 0);
}

#[test]
fn imbalance_ground_truth() {
    let (out, events) = run_logged("imbalance", 3, 400);
    check_common(&out.stats, &events);
    assert!(events.iter().any(|e| e.is("steal")), "no steal events");
    assert!(out.stats.procs.iter().any(|p| p.steals > 0));
    let mut runs_per_p: HashMap<u64, u64> = HashMap::new();
    for e in events.iter().filter(|e| e.is("task_run")) {
        *runs_per_p.entry(e.args[2]).or_default() += 1;
    }
    assert!(runs_per_p.len() >= 2, "all tasks ran on one P: {runs_per_p:?}");
    let total: u64 = runs_per_p.values().sum();
    let busiest = runs_per_p.values().max().copied().unwrap_or(0);
    assert!(busiest < total * 9 / 10, "one P ran {busiest} of {total} tasks");
    // The spawner fills its own P's queue: the batch shows up there, not in the global queue.
    assert!(out.stats.procs.iter().any(|p| p.max_local_len >= 64), "{}", out.stats);
    let spawned_local = events.iter().filter(|e| e.is("task_spawn") && e.args[2] != NONE).count();
    assert!(spawned_local > 100, "{spawned_local} tasks spawned onto a local queue");
}

#[test]
fn cfs_contention_ground_truth() {
    let (out, events) = run_logged("cfs-contention", 2, 300);
    check_common(&out.stats, &events);
    let yields = events.iter().filter(|e| e.is("task_park") && e.args[1] == park_reason::YIELD).count();
    // Every yielder yields at least once (8 of them with 2 Ps), however loaded the machine.
    assert!(yields >= 8, "only {yields} yields");
}

#[test]
fn blocking_syscall_ground_truth() {
    let (out, events) = run_logged("blocking-syscall", 2, 300);
    let sorted = check_common(&out.stats, &events);
    assert!(out.stats.handoffs > 0);
    // Pair each block_enter with the block_exit that follows on its thread.
    let mut open: HashMap<u64, &Event> = HashMap::new();
    let mut sections = Vec::new();
    for e in &sorted {
        if e.is("block_enter") {
            assert!(open.insert(e.tid, e).is_none(), "nested block_enter {e:?}");
            assert_ne!(e.args[2], NONE);
        } else if e.is("block_exit") {
            let enter = open.remove(&e.tid).unwrap_or_else(|| panic!("block_exit without enter {e:?}"));
            assert_eq!(enter.args[..2], e.args[..2], "enter and exit of different tasks or Ms");
            assert_ne!(e.args[2], NONE, "no P after the blocking section: {e:?}");
            sections.push((enter.tid, enter.ts, e.ts));
        }
    }
    assert!(open.is_empty());
    assert!(sections.len() > 20, "only {} blocking sections", sections.len());
    // While a task blocks, another M runs tasks on the P it handed off (or another one).
    let overlapped = sections
        .iter()
        .filter(|(tid, from, to)| {
            sorted.iter().any(|e| e.is("task_run") && e.tid != *tid && e.ts > *from && e.ts < *to)
        })
        .count();
    // (A read whose byte is already there returns at once; the others leave time to others.)
    assert!(overlapped >= 5, "only {overlapped} of {} sections overlap other work", sections.len());
}

#[test]
fn mixed_ground_truth() {
    let (out, events) = run_logged("mixed", 2, 400);
    check_common(&out.stats, &events);
    let r = reasons(&events);
    for reason in [park_reason::NETPOLL, park_reason::TIMER, park_reason::CHANNEL, park_reason::YIELD] {
        assert!(r.contains(&reason), "no park with reason {reason}");
    }
    let s = sources(&events);
    for source in [ready_source::TASK, ready_source::NETPOLLER, ready_source::TIMER] {
        assert!(s.contains(&source), "no ready from source {source}");
    }
    assert!(events.iter().any(|e| e.is("block_enter")));
}

#[test]
fn one_runtime_runs_workloads_twice_into_one_log() {
    let path = temp_log("twice");
    let rt = Runtime::builder().procs(2).ground_truth(&path).build().expect("runtime");
    let opts = Options { duration: Duration::from_millis(150), ..Options::default() };
    let first = workloads::run_on(&rt, "pingpong", &opts).expect("first run");
    let second = workloads::run_on(&rt, "netpoll", &opts).expect("second run");
    assert!(first.ops > 0 && second.ops > 0);
    let events = parse_log(&path);
    let _ = std::fs::remove_file(&path);
    // One log, two sessions: task ids never repeat (check_common would see a second spawn).
    let mut stats = first.stats.clone();
    stats.ms.extend(second.stats.ms.iter().cloned());
    let spawned: Vec<u64> = events.iter().filter(|e| e.is("task_spawn")).map(|e| e.args[0]).collect();
    assert_eq!(spawned.len() as u64, first.stats.spawned + second.stats.spawned);
    assert_eq!(
        spawned.iter().collect::<HashSet<_>>().len(),
        spawned.len(),
        "task ids repeat across sessions"
    );
    assert_eq!(spawned.iter().min(), Some(&1), "task ids start at 1");
    let ids: HashSet<u64> = stats.ms.iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), stats.ms.len(), "M ids repeat across sessions");
}
