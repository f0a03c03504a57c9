//! The task-to-CFS join on a synthetic trace whose every number is known by construction: a
//! reference-runtime task that waits in a queue, runs on one M whose thread CFS preempts, parks
//! in the netpoller, is readied onto another P and finishes on another M. Also the report's
//! filters and its text form (golden file).

mod support;

use std::path::Path;

use sched_trace::{
    correlate,
    report::{self, Filter, Report},
    trace::{
        Comm, DropCounters, EndInfo, TraceInfo, TraceReader, TraceTarget, TraceWriter,
        format::{TaskEntry, TaskSource},
        synthetic as syn,
    },
};
use support::synthetic_info;

const P: u32 = 700;
const M0: (u32, u32) = (P + 1, P);
const M1: (u32, u32) = (P + 2, P);
const OTHER: (u32, u32) = (900, 900);
/// Indexes into the probe table below.
const SPAWN: u32 = 0;
const RUN: u32 = 1;
const PARK: u32 = 2;
const READY: u32 = 3;
const EXIT: u32 = 4;

fn info() -> TraceInfo {
    let probe = syn::refrt_probe;
    synthetic_info(
        TraceTarget::Command { argv: vec!["./refrt".into()], pid: P },
        vec![
            probe(SPAWN, "task_spawn"),
            probe(RUN, "task_run"),
            probe(PARK, "task_park"),
            probe(READY, "task_ready"),
            probe(EXIT, "task_exit"),
        ],
    )
}

/// Task 7 (µs): spawned onto P0 at 10, runs on M0 from 20; M0's thread is preempted at 30 and
/// back at 50; parks on the netpoller (fd 5) at 60; readied onto P1 at 100 by the netpoller;
/// runs on M1 from 105; exits at 115. Task 8 is spawned onto P0 at 12 and stolen: it runs on M1
/// (P1) from 40 to 45 and exits.
fn write(path: &Path) {
    let us = |t: u64| t * 1_000;
    let mut w = TraceWriter::create(path, &info()).unwrap();
    w.write_tasks(&[
        TaskEntry { ts: 1_000, tid: P, pid: P, comm: Comm::new("refrt"), source: TaskSource::Scan },
        TaskEntry { ts: 1_000, tid: M0.0, pid: P, comm: Comm::new("refrt-m0"), source: TaskSource::Scan },
        TaskEntry { ts: 1_000, tid: M1.0, pid: P, comm: Comm::new("refrt-m1"), source: TaskSource::Scan },
        TaskEntry { ts: 1_000, tid: OTHER.0, pid: OTHER.1, comm: Comm::new("hog"), source: TaskSource::Scan },
    ])
    .unwrap();
    let mut b = Vec::new();
    b.extend(syn::switch(us(5), 0, (0, 0), M0, 0, false));
    b.extend(syn::user_task(us(10), 0, M0, SPAWN, &[7, 0, 0]));
    b.extend(syn::user_task(us(12), 0, M0, SPAWN, &[8, 0, 0]));
    b.extend(syn::user_task(us(20), 0, M0, RUN, &[7, 0, 0, 1]));
    b.extend(syn::switch(us(30), 0, M0, OTHER, 0, true));
    b.extend(syn::switch(us(35), 1, (0, 0), M1, 0, false));
    b.extend(syn::user_task(us(40), 1, M1, RUN, &[8, 1, 1, 0]));
    b.extend(syn::user_task(us(45), 1, M1, EXIT, &[8, 1, 1]));
    b.extend(syn::switch(us(50), 0, OTHER, M0, 0, true));
    b.extend(syn::user_task(us(60), 0, M0, PARK, &[7, 1, 5]));
    b.extend(syn::user_task(us(100), 1, M1, READY, &[7, 0, 2, 1]));
    b.extend(syn::user_task(us(105), 1, M1, RUN, &[7, 1, 1, 0]));
    b.extend(syn::user_task(us(115), 1, M1, EXIT, &[7, 1, 1]));
    b.extend(syn::switch(us(120), 1, M1, (0, 0), 1, false));
    b.extend(syn::switch(us(121), 0, M0, (0, 0), 1, false));
    w.write_events(&b).unwrap();
    w.write_drops(&DropCounters {
        per_cpu: vec![vec![0; DropCounters::SLOTS]; 2],
        malformed: 0,
        unreceived: 0,
    })
    .unwrap();
    w.finish(&EndInfo {
        end_ns: us(121),
        events: 15,
        stop_reason: "the command exited (exit status 0)".into(),
        write_failure: None,
    })
    .unwrap();
}

fn report(filter: Filter) -> Report {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.trace");
    write(&path);
    let c = correlate::correlate(TraceReader::open(&path).unwrap()).unwrap();
    Report::build_filtered(Path::new("tasks.trace"), &c, &filter)
}

#[test]
fn the_join_splits_a_tasks_life_by_what_cfs_and_the_runtime_did() {
    let r = report(Filter::default());
    let s = r.tasks.as_ref().expect("a task section");
    assert_eq!(s.tasks_total, 2);
    let t7 = s.tasks.iter().find(|t| t.task == 7).unwrap();
    let c = &t7.costs;
    assert_eq!(c.on_cpu_ns, 30_000, "10 µs on M0 before the preemption, 10 after, 10 on M1");
    assert_eq!(c.cfs_stolen_ns, 20_000, "M0's thread waited 30 → 50 µs while running task 7");
    assert_eq!(c.running_ns, 50_000);
    assert_eq!(c.queue_ns, 15_000, "10 µs after the spawn, 5 after the netpoller's ready");
    assert_eq!(c.netpoll_ns, 40_000);
    assert_eq!((t7.runs, t7.threads.clone(), t7.stolen), (2, vec![M0.0, M1.0], 0));
    assert_eq!((t7.local_queue_waits, t7.global_queue_waits), (2, 0));
    let t8 = s.tasks.iter().find(|t| t.task == 8).unwrap();
    assert_eq!((t8.stolen, t8.costs.queue_ns, t8.costs.on_cpu_ns), (1, 28_000, 5_000), "task 8 ran off P1");
    // The preemption of M0 shows on CPU 0, by the other process's thread.
    let cpu0 = r.cpus.iter().find(|c| c.cpu == 0).unwrap();
    assert_eq!((cpu0.preemptions, cpu0.preempted_by[0].tid), (1, OTHER.0));
    let by_stolen = s.by_cost.iter().find(|b| b.cost == "cfs_stolen").unwrap();
    assert_eq!(by_stolen.top, vec![(P, 7, 20_000)]);
}

#[test]
fn filters_select_tasks_threads_and_processes() {
    let only7 = report(Filter { task: Some(7), ..Default::default() });
    let tasks: Vec<u64> = only7.tasks.as_ref().unwrap().tasks.iter().map(|t| t.task).collect();
    assert_eq!(tasks, vec![7]);

    // Tasks that ran on M0's thread: only 7; threads: only M0.
    let on_m0 = report(Filter { tid: Some(M0.0), ..Default::default() });
    let tasks: Vec<u64> = on_m0.tasks.as_ref().unwrap().tasks.iter().map(|t| t.task).collect();
    assert_eq!(tasks, vec![7]);
    let threads: Vec<u32> = on_m0.threads.iter().map(|t| t.tid).collect();
    assert_eq!(threads, vec![M0.0]);

    let other = report(Filter { pid: Some(P + 1000), ..Default::default() });
    assert!(other.tasks.is_none() && other.threads.is_empty() && other.processes.is_empty());
}

#[test]
fn text_report_with_tasks_matches_golden_file() {
    let text = report::text::render(&report(Filter::default()), 30);
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/report-tasks.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &text).unwrap();
    }
    let expected =
        std::fs::read_to_string(&golden).expect("tests/golden/report-tasks.txt (UPDATE_GOLDEN=1 writes it)");
    assert_eq!(text, expected, "the text report changed; rerun with UPDATE_GOLDEN=1 if that is intended");
}
