//! The cgroup stages on a synthetic trace whose every figure is known: two tenants' threads on
//! one CPU, one of them throttled once by its quota. The report's cgroup section, the
//! `--cgroup` filter, the export's throttled track, and a cgroup table that does not parse.

mod support;

use std::path::Path;

use sched_trace::trace::{
    Comm, DropCounters, EndInfo, TaskEntry, TaskSource, TraceTarget, TraceWriter,
    format::{
        CgroupHierarchy, CgroupInfo, CgroupMember, CgroupsChunk, CpuControls, CpuStatSample, ProcessCpus,
    },
    synthetic as syn,
};
use sched_trace_abi::{cgroup_flags, switch_flags};
use serde_json::Value;
use support::*;

const A: (u32, u32) = (100, 100);
const B: (u32, u32) = (200, 200);
const IDLE: (u32, u32) = (0, 0);
const START: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
const CPU_H: u32 = 1;

fn throttled(mut record: Vec<u8>) -> Vec<u8> {
    let flags = u32::from_le_bytes(record[20..24].try_into().unwrap()) | switch_flags::THROTTLED;
    record[20..24].copy_from_slice(&flags.to_le_bytes());
    record
}

fn cgroup(id: u64, path: &str, quota_us: Option<u64>) -> CgroupInfo {
    CgroupInfo {
        hierarchy: CPU_H,
        id,
        path: path.into(),
        ts: START,
        cpu: CpuControls { quota_us, period_us: Some(100_000), shares: Some(1024), ..Default::default() },
    }
}

/// A (in /a, quota half a CPU) and B (in /b) on CPU 0:
/// +1 ms A runs; +11 A's quota runs out (B runs); +51 B is preempted by A; +61 A is preempted
/// by B; +66 B sleeps, A runs; +76 A sleeps. /a's cpu.stat sampled at +20 and +90 ms.
fn write(path: &Path, cgroups_chunk: Option<Vec<u8>>) {
    let mut info = synthetic_info(
        TraceTarget::Cgroups { paths: vec!["/sys/fs/cgroup/cpu/a".into(), "/sys/fs/cgroup/cpu/b".into()] },
        Vec::new(),
    );
    info.start_ns = START;
    let mut w = TraceWriter::create(path, &info).unwrap();
    w.write_tasks(&[
        TaskEntry { ts: START, tid: A.0, pid: A.1, comm: Comm::new("tenant-a"), source: TaskSource::Scan },
        TaskEntry { ts: START, tid: B.0, pid: B.1, comm: Comm::new("tenant-b"), source: TaskSource::Scan },
    ])
    .unwrap();
    let table = CgroupsChunk {
        hierarchies: vec![CgroupHierarchy {
            id: CPU_H,
            version: 1,
            controllers: vec!["cpu".into()],
            mount: "/sys/fs/cgroup/cpu".into(),
        }],
        cgroups: vec![cgroup(1, "/", None), cgroup(10, "/a", Some(50_000)), cgroup(20, "/b", None)],
        members: vec![
            CgroupMember { ts: START, pid: A.1, tid: 0, hierarchy: CPU_H, id: 10 },
            CgroupMember { ts: START, pid: B.1, tid: 0, hierarchy: CPU_H, id: 20 },
        ],
        samples: vec![
            CpuStatSample {
                ts: START + 20 * MS,
                hierarchy: CPU_H,
                id: 10,
                nr_periods: 5,
                nr_throttled: 1,
                throttled_ns: 30 * MS,
                usage_ns: None,
            },
            CpuStatSample {
                ts: START + 90 * MS,
                hierarchy: CPU_H,
                id: 10,
                nr_periods: 6,
                nr_throttled: 2,
                throttled_ns: 70 * MS,
                usage_ns: None,
            },
        ],
        processes: vec![ProcessCpus { pid: A.1, ts: START, cpus_allowed: vec![0, 1] }],
    };
    match cgroups_chunk {
        Some(raw) => w.write_chunk(sched_trace::trace::format::ChunkKind::Cgroups, &raw).unwrap(),
        None => w.write_cgroups(&table).unwrap(),
    }
    let scan = cgroup_flags::SCAN | cgroup_flags::FILTER_IN;
    let none = [(0, 0); sched_trace_abi::cgroup_slot::COUNT];
    let mut events = Vec::new();
    events.extend(syn::cgroup(START, A.0, A.1, scan, none));
    events.extend(syn::cgroup(START, B.0, B.1, scan, none));
    events.extend(syn::switch(START + MS, 0, IDLE, A, 0, false));
    events.extend(throttled(syn::switch(START + 11 * MS, 0, A, B, 0, true)));
    events.extend(syn::switch(START + 51 * MS, 0, B, A, 0, true));
    events.extend(syn::switch(START + 61 * MS, 0, A, B, 0, true));
    events.extend(syn::switch(START + 66 * MS, 0, B, A, 1, false));
    events.extend(syn::switch(START + 76 * MS, 0, A, IDLE, 1, false));
    w.write_events(&events).unwrap();
    w.write_drops(&DropCounters { per_cpu: vec![vec![0; DropCounters::SLOTS]; 2], ..Default::default() })
        .unwrap();
    w.finish(&EndInfo {
        end_ns: START + 100 * MS,
        events: 8,
        stop_reason: "test".into(),
        write_failure: None,
    })
    .unwrap();
}

fn report(trace: &Path, extra: &[&str]) -> Value {
    let o = output(sched_trace().arg("report").arg(trace).arg("--json").args(extra));
    assert!(o.status.success(), "report {extra:?}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn the_cgroup_section_holds_the_known_figures() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("tenants.trace");
    write(&trace, None);
    let r = report(&trace, &[]);
    let groups = r["cgroups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{groups:?}");
    let (b, a) = (&groups[0], &groups[1]);
    assert_eq!((a["path"].as_str(), b["path"].as_str()), (Some("/a"), Some("/b")));
    assert_eq!((a["on_cpu_ns"].as_u64(), b["on_cpu_ns"].as_u64()), (Some(30 * MS), Some(45 * MS)));
    assert!((a["share"].as_f64().unwrap() - 0.4).abs() < 1e-9, "{a}");
    assert_eq!(a["quota_cpus"].as_f64(), Some(0.5));
    assert_eq!(b["effective_quota_cpus"], Value::Null);
    let t = &a["throttling"];
    assert_eq!((t["periods"].as_u64(), t["throttled_periods"].as_u64()), (Some(1), Some(1)), "{t}");
    assert_eq!(t["throttled_ns"].as_u64(), Some(40 * MS));
    assert_eq!(a["throttled_waits"]["count"].as_u64(), Some(1));
    assert_eq!(a["throttled_waits"]["max_ns"].as_u64(), Some(40 * MS));
    assert_eq!(a["throttled_threads"][0]["tid"].as_u64(), Some(A.0 as u64));
    // The throttled switch-out is not a preemption by B; the later one is.
    assert_eq!(a["preempted_by"], serde_json::json!([["/b", 1]]));
    assert_eq!(b["preempted_by"], serde_json::json!([["/a", 1]]));
    assert_eq!(a["runqueue_latency"]["count"].as_u64(), Some(1));
    assert_eq!(b["runqueue_latency"]["max_ns"].as_u64(), Some(10 * MS));
    let pa = r["processes"].as_array().unwrap().iter().find(|p| p["pid"] == A.1).unwrap();
    assert_eq!((pa["usable_cpus"].as_u64(), pa["quota_cpus"].as_f64()), (Some(2), Some(0.5)));
    assert_eq!(pa["off_cpu"]["throttled_ns"].as_u64(), Some(40 * MS));
    assert_eq!(pa["off_cpu"]["runqueue_ns"].as_u64(), Some(5 * MS));

    let text = String::from_utf8_lossy(&output(sched_trace().arg("report").arg(&trace)).stdout).into_owned();
    assert!(text.contains("2 on 2 (quota 0.50)") || text.contains("1 on 2 (quota 0.50)"), "{text}");
    assert!(text.contains("tenant-a/100 1× 40.0 ms"), "{text}");
}

#[test]
fn the_cgroup_filter_selects_a_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("tenants.trace");
    write(&trace, None);
    for (name, want) in [("/a", A.0), ("/sys/fs/cgroup/cpu/b", B.0), ("/sys/fs/cgroup/cpu/b/", B.0)] {
        let r = report(&trace, &["--cgroup", name]);
        let tids: Vec<u64> =
            r["threads"].as_array().unwrap().iter().map(|t| t["tid"].as_u64().unwrap()).collect();
        assert_eq!(tids, [want as u64], "--cgroup {name}");
        assert_eq!(r["cgroups"].as_array().unwrap().len(), 1);
    }
    // The root selects both.
    assert_eq!(report(&trace, &["--cgroup", "/"])["threads"].as_array().unwrap().len(), 2);
    let o = output(sched_trace().arg("report").arg(&trace).args(["--cgroup", "/c"]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(
            "the trace has no cgroup /c; its cgroups are: /sys/fs/cgroup/cpu, /sys/fs/cgroup/cpu/a"
        ),
        "{}",
        stderr(&o)
    );

    // The export: A's throttled wait on /a's track, nothing for /b.
    let json = dir.path().join("t.json");
    let o =
        output(sched_trace().arg("export").arg(&trace).args(["--format", "chrome-json", "-o"]).arg(&json));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let events = v["traceEvents"].as_array().unwrap();
    let names: Vec<&str> = events
        .iter()
        .filter(|e| e["name"] == "thread_name")
        .filter_map(|e| e["args"]["name"].as_str())
        .collect();
    assert!(
        names.contains(&"cgroup /a (throttled)") && !names.iter().any(|n| n.contains("/b (throttled)")),
        "{names:?}"
    );
    let stretch: Vec<&Value> =
        events.iter().filter(|e| e["name"] == "Throttled (out of CPU quota)").collect();
    assert_eq!(stretch.len(), 1);
    assert_eq!(stretch[0]["dur"].as_f64(), Some(40_000.0));
}

#[test]
fn a_cgroup_table_that_does_not_parse_is_an_error_that_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("bad.trace");
    write(&trace, Some(b"{\"cgroups\": 7}".to_vec()));
    let o = output(sched_trace().arg("report").arg(&trace));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("the cgroup table does not parse"), "{}", stderr(&o));
}
